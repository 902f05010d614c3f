"""Writing outputs without ever losing a user's file.

Every output goes to a temporary file in the same directory, then `os.replace` puts it in
place: a reader sees the old file or the new one, never half of one, and a failure midway
leaves what was there before.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from stepc.ir.diagnostics import StepcError


def atomic_write(path: str | Path, data: str | bytes, *, protect: tuple[str | Path, ...] = ()) -> None:
    """Write `data` to `path` atomically; refuse to overwrite any file in `protect` (the inputs)."""
    target = Path(path)
    refuse_to_overwrite(target, protect)
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.exists():
        parent.mkdir(parents=True, exist_ok=True)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        if target.exists():
            os.chmod(tmp, target.stat().st_mode & 0o777)
        else:
            os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def refuse_to_overwrite(target: Path, protect: tuple[str | Path, ...]) -> None:
    for p in protect:
        if str(p) == "-":
            continue
        try:
            if target.exists() and Path(p).exists() and target.resolve() == Path(p).resolve():
                raise StepcError(f"refusing to overwrite the input file {p} with an output")
        except OSError:
            continue


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
