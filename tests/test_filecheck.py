"""The lit + filecheck tests (tests/filecheck/**/*.mlir): round trips, verifier messages and
one file per pass. This runs `lit -v tests/filecheck` and fails when lit does."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

FILECHECK_DIR = Path(__file__).parent / "filecheck"


def test_lit_filecheck_suite() -> None:
    bin_dir = Path(sys.executable).parent
    env = dict(os.environ, PATH=os.pathsep.join([str(bin_dir), os.environ.get("PATH", "")]))
    workers = str(max(1, min(4, os.cpu_count() or 1)))
    result = subprocess.run(
        # (lit has no `__main__`; its console script is this call)
        [sys.executable, "-c", "from lit.main import main; main()", "-v", "-j", workers, str(FILECHECK_DIR)],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert result.returncode == 0, f"lit failed:\n{result.stdout[-20000:]}\n{result.stderr[-5000:]}"
    assert "Passed" in result.stdout
