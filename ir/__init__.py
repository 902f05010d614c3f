"""The step dialect: ops, attributes, shape rules, diagnostics and reference semantics."""

from stepc.ir.names import keep_whole_names

keep_whole_names()  # `%w_1` stays `w_1` through parsing, clones and rewrites (see ir/names.py)
