"""`stepc import FILE.py:FUNCTION [-o STEP.ir]`: a PyTorch training step as step IR, checked.

`FUNCTION()` returns `(model, loss_fn, batch, optimizer)` (the spec's contract, as
`stepc.from_torch` takes them). The program goes to `-o` (atomically) or stdout; the import's
check row goes to stdout after the program is written to a file, to stderr when the program
itself is on stdout. A file that cannot be run, a function that is missing or returns something
else, and an op that cannot be imported are located errors (exit 1, no traceback unless --debug).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from typing import Any

from stepc.check.contract import format_table
from stepc.frontends.torch import from_torch  # torch: the optional `torch` extra (the CLI says so when it is missing)
from stepc.ir.diagnostics import SourceLoc, StepcError, remember_source
from stepc.tools.files import atomic_write


def run(args: argparse.Namespace) -> int:
    path, function = _split_target(args.target)
    made = _call(path, function)
    model, loss_fn, batch, optimizer = made
    filename = args.output or f"{os.path.splitext(os.path.basename(path))[0]}.{function}.ir"
    imported = from_torch(model, loss_fn, batch, optimizer, check=not args.no_check, trials=args.trials,
                          seed=args.seed, filename=filename)  # fmt: skip
    seconds = imported.seconds
    timing = (f"import: export {seconds['export']:.2f} s, translation {seconds['translate']:.3f} s, "
              f"check {seconds.get('check', 0.0):.2f} s")  # fmt: skip
    if args.output and args.output != "-":
        atomic_write(args.output, imported.text, protect=[path])
        out = sys.stdout
        print(f"wrote {args.output}: {len(imported.names)} parameters, {len(imported.inputs)} batch inputs"
              + (f", {len(imported.dropout)} dropout keys" if imported.dropout else ""), file=out)  # fmt: skip
    else:
        sys.stdout.write(imported.text)
        out = sys.stderr
    if imported.report is not None:
        print(format_table([imported.report]), file=out)
    print(timing, file=out)
    return 0


def _split_target(target: str) -> tuple[str, str]:
    path, sep, function = target.rpartition(":")
    if not sep or not path or not function.isidentifier():
        raise StepcError(f"expected FILE.py:FUNCTION, found {target!r} (say: stepc import models.py:make_step)")
    if not os.path.isfile(path):
        raise StepcError(f"no such file: {path}")
    return path, function


def _call(path: str, function: str) -> tuple[Any, Any, Any, Any]:
    """Run the file as a module (its folder first on sys.path, as `python FILE.py` would) and
    call the function; a Python error in either is located at the user's line."""
    directory = os.path.dirname(os.path.abspath(path))
    sys.path.insert(0, directory)
    name = "_stepc_import_" + os.path.splitext(os.path.basename(path))[0].replace("-", "_")
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise StepcError(f"cannot load {path} as Python")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
        fn = getattr(module, function, None)
        if not callable(fn):
            raise StepcError(f"{path} defines no function {function!r}")
        made = fn()
    except StepcError:
        raise
    except Exception as error:
        raise _located(path, error) from None
    if not isinstance(made, tuple) or len(made) != 4:
        what = f"a tuple of {len(made)}" if isinstance(made, tuple) else type(made).__name__
        raise StepcError(f"{function}() returned {what}; it must return (model, loss_fn, batch, optimizer)")
    return made


def _located(path: str, error: BaseException) -> StepcError:
    import traceback

    frames = [f for f in traceback.extract_tb(error.__traceback__) if os.path.abspath(f.filename) == os.path.abspath(path)]
    message = f"running {path} failed: {type(error).__name__}: {error}"
    if not frames:
        return StepcError(message)
    frame = frames[-1]
    try:
        with open(path, encoding="utf-8") as f:
            remember_source(path, f.read())
    except OSError:
        pass
    code = frame.line or ""
    return StepcError(message, SourceLoc(path, frame.lineno or 1, 1 + len(code) - len(code.lstrip()) if code else 1))
