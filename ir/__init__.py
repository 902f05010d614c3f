"""The step dialect: ops, attributes, shape rules, diagnostics and reference semantics."""
