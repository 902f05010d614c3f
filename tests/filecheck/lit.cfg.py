# lit configuration of stepc's filecheck tests: `lit -v tests/filecheck`.
#
# Each `.mlir` file under this directory holds `// RUN:` lines run by lit's internal shell,
# which provides `not` (exit status inverted) itself. `stepc` and `filecheck` are found in
# the bin directory of the Python running lit (the project's .venv), ahead of PATH.

import hashlib
import os
import sys
import tempfile

import lit.formats

config.name = "stepc"
config.test_format = lit.formats.ShTest(execute_external=False)
config.suffixes = [".mlir"]
config.test_source_root = os.path.dirname(__file__)
config.excludes = ["lit.cfg.py", "Output"]
# Temporary files (`%t`) go outside the source tree.
# (one folder per checkout, so that two checkouts can run their suites at once)
config.test_exec_root = os.path.join(
    tempfile.gettempdir(), f"stepc-lit-{os.getuid()}-{hashlib.sha1(os.path.realpath(config.test_source_root).encode()).hexdigest()[:8]}"
)

bin_dir = os.path.dirname(sys.executable)
config.environment["PATH"] = os.pathsep.join([bin_dir, os.environ.get("PATH", "")])
for name in ("HOME", "TMPDIR", "XLA_FLAGS", "JAX_PLATFORMS", "STEPC_MAX_BYTES", "PYTHONPATH"):
    if name in os.environ:
        config.environment[name] = os.environ[name]
config.environment.setdefault("JAX_PLATFORMS", "cpu")
# `%stepc` for RUN lines that want to name the command explicitly.
config.substitutions.append(("%stepc", os.path.join(bin_dir, "stepc")))
