"""Reading and writing users' files without ever losing one or trusting one.

Writing: every output goes to a temporary file in the same directory, then `os.replace` puts it
in place: a reader sees the old file or the new one, never half of one, and a failure midway
(an error, a full disk, Ctrl-C) leaves what was there before. No output may land on an input
(`stepc compile a.ir -o a.ir`, a dump directory holding the input, a hard or symbolic link to
it): that is refused before anything is written.

Reading data: `.npz` files are untrusted. They are opened with `allow_pickle=False` (an object
array is refused, never unpickled), their headers are read before their data (a hostile header
cannot make stepc allocate beyond the memory limit), and `check_arrays` validates keys, shapes,
dtypes and label ranges against the program before anything runs.
"""

from __future__ import annotations

import io
import os
import stat
import tempfile
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from stepc.ir.diagnostics import StepcError
from stepc.ir.limits import human_bytes, memory_limit

PathLike = str | Path


# ---------------------------------------------------------------------------------------------
# Writing


def atomic_write(path: PathLike, data: str | bytes, *, protect: Iterable[PathLike] = ()) -> None:
    """Write `data` to `path` atomically; refuse to overwrite any file in `protect` (the inputs).

    A symbolic link is followed (the file it points at is replaced, the link kept); a device or
    FIFO (`-o /dev/null`) is written in place, since it cannot be renamed over.
    """
    target = Path(path)
    refuse_to_overwrite(target, protect)
    if target.is_symlink():
        target = target.resolve()
    if target.is_dir():
        raise StepcError(f"cannot write {path}: it is a directory")
    payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    if target.exists() and not target.is_file():
        _write_in_place(target, payload, str(path))
        return
    parent = target.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StepcError(f"cannot create the directory {parent} for {path}: {_reason(e)}") from None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=parent)
    except OSError as e:
        raise StepcError(f"cannot write {path}: {_reason(e)}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        mode = stat.S_IMODE(target.stat().st_mode) if target.exists() else 0o666 & ~_umask()
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise StepcError(f"cannot write {path}: {_reason(e)} (the previous file, if any, is unchanged)") from None
        raise


def _write_in_place(target: Path, payload: bytes, shown: str) -> None:
    try:
        with open(target, "wb") as f:
            f.write(payload)
    except OSError as e:
        raise StepcError(f"cannot write {shown}: {_reason(e)}") from None


def atomic_write_npz(path: PathLike, arrays: Mapping[str, np.ndarray], *, protect: Iterable[PathLike] = ()) -> None:
    """`np.savez` into memory, then `atomic_write`: a failing save leaves the old file intact."""
    refuse_to_overwrite(Path(path), protect)
    buffer = io.BytesIO()
    named: dict[str, Any] = {key: np.asarray(value) for key, value in arrays.items()}  # keys are array names, not savez's keyword options
    np.savez(buffer, **named)
    atomic_write(path, buffer.getvalue(), protect=protect)


def same_file(a: PathLike, b: PathLike) -> bool:
    """Whether two paths name one file (through `..`, symbolic and hard links)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def refuse_to_overwrite(target: Path, protect: Iterable[PathLike]) -> None:
    """A `StepcError` when writing `target` would replace one of the `protect`ed inputs."""
    for p in protect:
        if str(p) in ("-", ""):
            continue
        if same_file(target, p):
            raise StepcError(f"refusing to overwrite the input file {p} with the output {target}")


def check_output_dir(directory: PathLike, names: Iterable[str], *, protect: Iterable[PathLike] = (), option: str) -> Path:
    """Before a run: `directory` may hold the outputs `names` without replacing an input.

    Refusing up front, not at the first write, means a run that would clobber its input writes
    nothing at all.
    """
    d = Path(directory)
    if d.exists() and not d.is_dir():
        raise StepcError(f"{option} {directory} exists and is not a directory")
    protect = tuple(protect)
    for name in names:
        refuse_to_overwrite(d / name, protect)
    return d


def _reason(e: OSError) -> str:
    return e.strerror or str(e)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ---------------------------------------------------------------------------------------------
# Reading untrusted arrays


@dataclass(frozen=True)
class ArraySpec:
    """What a program expects under one key: shape, dtype, and for labels the class count."""

    shape: tuple[int, ...]
    dtype: np.dtype
    classes: int | None = None  # i32 labels must lie in [0, classes)


def load_npz(path: PathLike, *, option: str = "--inputs", max_bytes: int | None = None) -> dict[str, np.ndarray]:
    """The arrays of an untrusted `.npz`, every failure a clear `StepcError`.

    Headers are read first: object arrays (which only pickle can load) and arrays whose
    declared size exceeds the memory limit are refused before any data is read.
    """
    p = Path(path)
    if not p.exists():
        raise StepcError(f"{option} {path}: no such file")
    if p.is_dir():
        raise StepcError(f"{option} {path} is a directory, expected an .npz file")
    limit = memory_limit() if max_bytes is None else max_bytes
    try:
        archive = zipfile.ZipFile(p)
    except (zipfile.BadZipFile, OSError) as e:
        raise StepcError(f"{option} {path} is not an .npz file (a zip of .npy arrays): {e}") from None
    arrays: dict[str, np.ndarray] = {}
    total = 0
    with archive:
        for info in archive.infolist():
            if info.is_dir():
                continue
            key = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
            where = f"{option} {path}: array '{key}'"
            try:
                with archive.open(info) as f:
                    shape, dtype = _read_npy_header(f, where)
                    if dtype.hasobject:
                        raise StepcError(
                            f"{where} holds Python objects (dtype {dtype}); stepc loads numeric arrays only "
                            "and never unpickles (allow_pickle=False)"
                        )
                    size = int(np.prod(shape, dtype=object)) * dtype.itemsize
                    total += size
                    if total > limit:
                        raise StepcError(
                            f"{where} declares shape {shape} ({human_bytes(size)}): the arrays exceed the memory "
                            f"limit of {human_bytes(limit)} (STEPC_MAX_BYTES)"
                        )
                with archive.open(info) as f:
                    arrays[key] = np.lib.format.read_array(f, allow_pickle=False)
            except StepcError:
                raise
            except (ValueError, OSError, EOFError, zipfile.BadZipFile, RuntimeError, NotImplementedError) as e:
                raise StepcError(f"{where} cannot be read: {e}") from None
    return arrays


def _read_npy_header(f, where: str) -> tuple[tuple[int, ...], np.dtype]:  # type: ignore[no-untyped-def]
    fmt = np.lib.format
    try:
        version = fmt.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = fmt.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, _, dtype = fmt.read_array_header_2_0(f)
        else:
            raise StepcError(f"{where} has an unsupported .npy format version {version}")
    except StepcError:
        raise
    except (ValueError, OSError, EOFError, SyntaxError, TypeError) as e:
        raise StepcError(f"{where} is not a valid .npy array: {e}") from None
    return tuple(int(d) for d in shape), np.dtype(dtype)


def check_arrays(
    arrays: Mapping[str, np.ndarray],
    expected: Mapping[str, ArraySpec],
    *,
    source: str,
    optional: Iterable[str] = (),
    allow_extra: bool = False,
) -> dict[str, np.ndarray]:
    """Validate named arrays against what the program expects; return them cast to its dtypes.

    Every key in `expected` must be present unless listed in `optional`; unknown keys are an
    error (a typo would otherwise be ignored) unless `allow_extra`. Shapes must match exactly;
    floats may come in any float dtype (cast), labels must be integers within their classes.
    """
    optional = set(optional)
    missing = [k for k in expected if k not in arrays and k not in optional]
    if missing:
        raise StepcError(
            f"{source} lacks {_plural('key', missing)} {', '.join(missing)}; expected: {', '.join(expected)}"
        )
    extra = [k for k in arrays if k not in expected]
    if extra and not allow_extra:
        raise StepcError(
            f"{source} has unknown {_plural('key', extra)} {', '.join(map(repr, extra))}; expected: {', '.join(expected)}"
        )
    out: dict[str, np.ndarray] = {}
    for key, spec in expected.items():
        if key not in arrays:
            continue
        out[key] = check_array(key, arrays[key], spec, source=source)
    return out


def check_array(key: str, value: np.ndarray, spec: ArraySpec, *, source: str) -> np.ndarray:
    value = np.asarray(value)
    where = f"{source}: '{key}'"
    if value.dtype.hasobject:
        raise StepcError(f"{where} holds Python objects; expected {spec.dtype}")
    if tuple(value.shape) != tuple(spec.shape):
        raise StepcError(f"{where} has shape {tuple(value.shape)}, the program expects {tuple(spec.shape)}")
    if np.issubdtype(spec.dtype, np.integer):
        if not np.issubdtype(value.dtype, np.integer):
            raise StepcError(f"{where} has dtype {value.dtype}, the program expects integer labels ({spec.dtype})")
        if spec.classes is not None and value.size:
            low, high = int(value.min()), int(value.max())
            if low < 0 or high >= spec.classes:
                bad = low if low < 0 else high
                raise StepcError(
                    f"{where} holds label {bad}, outside [0, {spec.classes}) for {spec.classes} classes"
                )
        info = np.iinfo(spec.dtype)
        if value.size and (int(value.min()) < info.min or int(value.max()) > info.max):
            raise StepcError(f"{where} holds values outside the range of {spec.dtype}")
        return value.astype(spec.dtype)
    if not (np.issubdtype(value.dtype, np.floating) or value.dtype.name == "bfloat16"):
        raise StepcError(f"{where} has dtype {value.dtype}, the program expects floats ({spec.dtype})")
    return value.astype(spec.dtype)


def _plural(word: str, items: list[str]) -> str:
    return word if len(items) == 1 else word + "s"
