"""Reading and writing users' files without ever losing one or trusting one.

Writing: every output goes to a temporary file in the same directory, then `os.replace` puts it
in place: a reader sees the old file or the new one, never half of one, and a failure midway
(an error, a full disk, Ctrl-C) leaves what was there before. No output may land on an input
(`stepc compile a.ir -o a.ir`, a dump directory holding the input, a hard or symbolic link to
it): that is refused before anything is written.

Several files that belong together (the `params.npz`, `loss.png` and `summary.json` of one
`stepc run --out`) go through `write_together`: every one is written to its temporary and
synced first; only then are they renamed into place, one after the other, with Ctrl-C held
off meanwhile; a rename that fails puts back the files already renamed (from hard links to
the old ones made beforehand). The directory ends holding the new set or the old one, never a
mix.

Archives are written member by member (`numpy.lib.format.write_array` into a zip), never
through `np.savez(file, **arrays)`, whose own arguments (`file`, `allow_pickle`) would swallow
arrays of those names.

Reading data: `.npz` files are untrusted. `NpzArchive` reads the headers of their members
before any data: object arrays (which only pickle can load) are refused, never unpickled,
and each caller compares the declared keys, shapes and dtypes with the program before reading
a byte of data, so that a small file declaring gigabytes is refused from its header. Data is
then read in bounded chunks (`CHUNK_BYTES`), converted to the program's dtype chunk by chunk:
the file's own dtype is never held whole beside the converted copy.
"""

from __future__ import annotations

import io
import math
import os
import secrets
import signal
import stat
import tempfile
import threading
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

import numpy as np

from stepc.ir.diagnostics import SourceLoc, StepcError
from stepc.ir.limits import MAX_ELEMENTS, human_bytes, memory_limit

PathLike = str | Path
Writer = Callable[[IO[bytes]], None]
NAME_MAX = 255  # bytes in one file name (Linux, macOS)
CHUNK_BYTES = 4 * 1024**2  # what one step of a chunked read holds of the file's bytes
LISTED = 10  # names listed in a message before "and N more"


# ---------------------------------------------------------------------------------------------
# Writing


def atomic_write(path: PathLike, data: str | bytes, *, protect: Iterable[PathLike] = ()) -> None:
    """Write `data` to `path` atomically; refuse to overwrite any file in `protect` (the inputs).

    A symbolic link is followed (the file it points at is replaced, the link kept); a device or
    FIFO (`-o /dev/null`) is written in place, since it cannot be renamed over.
    """
    payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    write_together([(path, payload)], protect=protect)


def atomic_write_npz(path: PathLike, arrays: Mapping[str, Any], *, protect: Iterable[PathLike] = ()) -> None:
    """An `.npz` of `arrays`, any key kept (see `npz_writer`), written atomically."""
    write_together([(path, npz_writer(arrays))], protect=protect)


def npz_writer(arrays: Mapping[str, Any]) -> Writer:
    """Writes an `.npz` that `np.load` reads back as `arrays`: one `KEY.npy` member per array,
    written with `numpy.lib.format.write_array` (no pickles). Unlike `np.savez(f, **arrays)`,
    no key is taken for one of its keyword arguments."""
    named = {str(key): np.asarray(value) for key, value in arrays.items()}

    def write(stream: IO[bytes]) -> None:
        with zipfile.ZipFile(stream, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
            for key, value in named.items():
                member = io.BytesIO()
                np.lib.format.write_array(member, value, allow_pickle=False)
                archive.writestr(zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0)), member.getvalue())

    return write


def write_together(outputs: Sequence[tuple[PathLike, bytes | Writer]], *, protect: Iterable[PathLike] = ()) -> None:
    """Write each `(path, bytes or writer)` so that all of them land or none does (see the
    module's docstring); refuse any path that is one of the `protect`ed inputs. A writer is
    called with the temporary file, opened for binary writing."""
    protect = tuple(protect)
    staged: list[_Staged] = []
    in_place: list[tuple[Path, bytes | Writer, str]] = []
    try:
        targets = [(_output_target(path, protect), content, str(path)) for path, content in outputs]
        for target, content, shown in targets:
            if _is_special(target):
                in_place.append((target, content, shown))
            else:
                staged.append(_stage(target, content, shown))
        _commit(staged)
    except BaseException:
        for s in staged:
            s.discard()
        raise
    for target, content, shown in in_place:  # devices and FIFOs: no temporary can replace them
        _write_in_place(target, content, shown)


@dataclass
class _Staged:
    target: Path
    shown: str
    temporary: Path
    backup: Path | None = None  # a hard link to the file `target` held, for putting it back
    existed: bool = False
    done: bool = False  # renamed into place

    def discard(self) -> None:
        for p in (self.temporary, self.backup):
            if p is not None:
                with suppress(OSError):
                    p.unlink(missing_ok=True)


def _output_target(path: PathLike, protect: Sequence[PathLike]) -> Path:
    """The file an output replaces: a symbolic link's target; a directory is an error."""
    shown = str(path)
    if shown == "":
        raise StepcError("cannot write to an empty path")
    target = Path(path)
    refuse_to_overwrite(target, protect)
    try:
        if target.is_symlink():
            target = target.resolve()
        if target.is_dir():
            raise StepcError(f"cannot write {shown}: it is a directory")
    except OSError as e:
        raise StepcError(f"cannot write {shown}: {_reason(e)}") from None
    return target


def _is_special(target: Path) -> bool:
    try:
        return target.exists() and not target.is_file()
    except OSError:
        return False


def _stage(target: Path, content: bytes | Writer, shown: str) -> _Staged:
    """`content` in a synced temporary file beside `target`, with `target`'s mode."""
    parent = target.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StepcError(f"cannot create the directory {parent} for {shown}: {_reason(e)}") from None
    try:
        fd, name = tempfile.mkstemp(prefix=_temporary_prefix(target.name), suffix=".tmp", dir=parent)
    except OSError as e:
        raise StepcError(f"cannot write {shown}: {_reason(e)}") from None
    staged = _Staged(target, shown, Path(name))
    try:
        with os.fdopen(fd, "wb") as f:
            if isinstance(content, bytes | bytearray | memoryview):
                f.write(content)
            else:
                content(f)
            f.flush()
            os.fsync(f.fileno())
        staged.existed = target.exists()
        mode = stat.S_IMODE(target.stat().st_mode) if staged.existed else 0o666 & ~_umask()
        os.chmod(staged.temporary, mode)
    except BaseException as e:
        staged.discard()
        if isinstance(e, OSError):
            raise StepcError(f"cannot write {shown}: {_reason(e)} (the previous file, if any, is unchanged)") from None
        raise
    return staged


def _commit(staged: list[_Staged]) -> None:
    """Rename every staged temporary into place, or (a rename failing) none: the ones already
    renamed are put back from their backups. Ctrl-C waits until the renames are over."""
    if len(staged) > 1:
        for s in staged:
            if s.existed:
                s.backup = _hard_link_beside(s.target)
    with _interrupts_deferred():
        try:
            for s in staged:
                os.replace(s.temporary, s.target)
                s.done = True
        except BaseException as e:
            failed = next(s for s in staged if not s.done)
            restored = _roll_back(staged)
            if not isinstance(e, OSError):
                raise
            note = ("the previous file, if any, is unchanged" if restored
                    else "some of the new files could not be taken back")  # fmt: skip
            raise StepcError(f"cannot write {failed.shown}: {_reason(e)} ({note})") from None
        finally:
            for s in staged:
                s.discard()


def _roll_back(staged: list[_Staged]) -> bool:
    """Undo the renames done: the old file back from its backup, or a new file removed where
    there was none. True when everything was restored."""
    whole = True
    for s in staged:
        if not s.done:
            continue
        try:
            if s.backup is not None:
                os.replace(s.backup, s.target)
                s.backup = None
            elif not s.existed:
                s.target.unlink()
            else:
                whole = False
        except OSError:
            whole = False
    return whole


def _hard_link_beside(target: Path) -> Path | None:
    """A second name for the file at `target` (None where hard links are not supported)."""
    for _ in range(10):
        backup = target.with_name(f"{_temporary_prefix(target.name)}{secrets.token_hex(4)}.old")
        try:
            os.link(target, backup)
            return backup
        except FileExistsError:
            continue
        except OSError:
            return None
    return None


@contextmanager
def _interrupts_deferred() -> Iterator[None]:
    """Hold Ctrl-C (SIGINT) until the block ends, then raise it (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    if previous is None:  # a handler not installed from Python: leave it alone
        yield
        return
    received: list[Any] = []
    signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        raise KeyboardInterrupt


def _temporary_prefix(name: str) -> str:
    """`.NAME.`, NAME cut so that the temporary's name (8 random characters and a 4-character
    suffix added) stays within `NAME_MAX` bytes, as a legal target's does."""
    room = NAME_MAX - 2 - 8 - 4
    encoded = name.encode("utf-8", "surrogateescape")
    if len(encoded) > room:
        name = encoded[:room].decode("utf-8", "ignore")
    return f".{name}."


def _write_in_place(target: Path, content: bytes | Writer, shown: str) -> None:
    try:
        with open(target, "wb") as f:
            if isinstance(content, bytes | bytearray | memoryview):
                f.write(content)
            else:  # a device's position means nothing (/dev/null's is always 0): write as a stream
                content(cast(IO[bytes], _StreamOnly(f)))
    except OSError as e:
        raise StepcError(f"cannot write {shown}: {_reason(e)}") from None


class _StreamOnly:
    """A file seen as a pure stream, without `tell` or `seek`: a writer such as `zipfile`
    then counts the bytes it wrote itself rather than trust the device's position."""

    def __init__(self, f: IO[bytes]):
        self._f = f

    def write(self, data: bytes) -> int:
        return self._f.write(data)

    def flush(self) -> None:
        self._f.flush()


def same_file(a: PathLike, b: PathLike) -> bool:
    """Whether two paths name one file (through `..`, symbolic and hard links)."""
    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError):
        return False


def refuse_to_overwrite(target: Path, protect: Iterable[PathLike]) -> None:
    """A `StepcError` when writing `target` would replace one of the `protect`ed inputs."""
    for p in protect:
        if str(p) in ("-", ""):
            continue
        if same_file(target, p):
            raise StepcError(f"refusing to overwrite the input file {p} with the output {target}")


def check_output_dir(directory: PathLike, names: Iterable[str], *, protect: Iterable[PathLike] = (), option: str) -> Path:
    """Before a run: `directory` can take the outputs `names`, without replacing an input.

    Everything that would fail the writes is found here, before any work: an empty path, a
    file where the directory (or one of its parents) should be, an output name taken by a
    directory or a device, and a directory where no file can be created (a probe file is
    created and removed in the directory, or in its nearest existing parent when it does not
    exist yet). Refusing up front, not at the first write, means a run that would clobber its
    input or could not save its results writes nothing at all and trains for nothing.
    """
    shown = str(directory)
    if shown == "":
        raise StepcError(f"{option} '': an empty path; give a directory")
    d = Path(directory)
    protect = tuple(protect)
    try:
        if d.exists() and not d.is_dir():
            raise StepcError(f"{option} {shown} exists and is not a directory")
        existing = d
        while not existing.exists() and not existing.is_symlink():
            if existing.parent == existing:
                break
            existing = existing.parent
        if existing.exists() and not existing.is_dir():
            raise StepcError(f"{option} {shown}: {existing} is not a directory")
        if existing.is_symlink() and not existing.exists():
            raise StepcError(f"{option} {shown}: {existing} is a broken symbolic link")
        for name in names:
            target = d / name
            refuse_to_overwrite(target, protect)
            if target.is_dir():
                raise StepcError(f"{option} {shown}: {name} is a directory; the run writes a file there")
            if target.exists() and not target.is_file():
                raise StepcError(f"{option} {shown}: {name} is not a regular file; the run writes a file there")
        fd, probe = tempfile.mkstemp(prefix=".stepc-probe.", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise StepcError(f"{option} {shown}: cannot write there: {_reason(e)}") from None
    return d


def _reason(e: OSError) -> str:
    return e.strerror or str(e)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ---------------------------------------------------------------------------------------------
# Messages


def name_list(names: Iterable[str], quote: bool = False, most: int = LISTED) -> str:
    """`a, b, c` for a message, at most `most` names then `and N more` (a file may hold
    100,000 keys: the message stays a line)."""
    names = list(names)
    shown = [repr(n) if quote or not n or not n.isprintable() or "," in n or " " in n else n for n in names[:most]]
    if len(names) > most:
        return f"{', '.join(shown)} and {len(names) - most} more"
    return ", ".join(shown)


# ---------------------------------------------------------------------------------------------
# Reading untrusted arrays


@dataclass(frozen=True)
class Member:
    """One array of an `.npz` as its header declares it; nothing of its data read."""

    key: str
    info: zipfile.ZipInfo
    shape: tuple[int, ...]
    dtype: np.dtype
    fortran_order: bool

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize


class NpzArchive:
    """An untrusted `.npz`, opened for its member names; `member(key)` reads one header,
    `read` and `read_as` its data. Every failure is a `StepcError` naming the file."""

    def __init__(self, path: PathLike, option: str = "--inputs"):
        self.path = path
        self.option = option
        p = Path(path)
        try:
            if not p.exists():
                raise StepcError(f"{option} {path}: no such file")
            if p.is_dir():
                raise StepcError(f"{option} {path} is a directory, expected an .npz file")
            self._zip = zipfile.ZipFile(p)
        except StepcError:
            raise
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
            raise StepcError(f"{option} {path} is not an .npz file (a zip of .npy arrays): {_oneline(e)}") from None
        self._infos: dict[str, zipfile.ZipInfo] = {}
        for info in self._zip.infolist():
            if info.filename.endswith("/"):  # a folder entry (`ZipInfo.is_dir` fails on an empty name)
                continue
            key = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
            if key in self._infos:
                self.close()
                raise StepcError(f"{option} {path} holds the array '{key}' twice")
            self._infos[key] = info
        self._members: dict[str, Member] = {}

    def __enter__(self) -> NpzArchive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._zip.close()

    @property
    def keys(self) -> list[str]:
        return list(self._infos)

    def __contains__(self, key: object) -> bool:
        return key in self._infos

    def where(self, key: str) -> str:
        return f"{self.option} {self.path}: array '{key}'"

    def member(self, key: str) -> Member:
        """The header of `key`: shape, dtype and order. An object array is refused here."""
        if key in self._members:
            return self._members[key]
        info = self._infos[key]
        where = self.where(key)
        try:
            with self._zip.open(info) as f:
                shape, fortran_order, dtype = _read_npy_header(f, where)
        except StepcError:
            raise
        except (ValueError, OSError, EOFError, zipfile.BadZipFile, RuntimeError, NotImplementedError) as e:
            raise StepcError(f"{where} cannot be read: {_oneline(e)}") from None
        member = Member(key, info, shape, dtype, fortran_order)
        self._members[key] = member
        return member

    def check_headers(self, keys: Iterable[str]) -> None:
        """Read the headers of `keys`: object arrays and broken headers are refused."""
        for key in keys:
            self.member(key)

    def read(self, key: str) -> np.ndarray:
        """The array as stored (its own dtype), read in bounded chunks, never unpickled."""
        member = self.member(key)
        try:
            with self._zip.open(member.info) as f:
                return np.lib.format.read_array(f, allow_pickle=False)
        except (ValueError, OSError, EOFError, zipfile.BadZipFile, RuntimeError, NotImplementedError) as e:
            raise StepcError(f"{self.where(key)} cannot be read: {_oneline(e)}") from None

    def read_as(
        self,
        key: str,
        dtype: np.dtype,
        *,
        rows: np.ndarray | None = None,
        check: Callable[[np.ndarray, np.ndarray], None] | None = None,
    ) -> np.ndarray:
        """The array converted to `dtype` chunk by chunk (`CHUNK_BYTES` of the file at a time):
        memory is the result plus a chunk, never the file's dtype whole beside it.

        `rows`, when given, places row `r` of the file at row `rows[r]` of the result (a
        permutation, for a split made while reading). `check(converted, original)` sees every
        chunk; it raises to refuse the data (non-finite values, labels out of range). NumPy's
        warnings about the conversion (overflow to inf) are silenced: `check` says it."""
        member = self.member(key)
        out = np.empty(member.shape, dtype)
        if out.size == 0:
            return out
        if member.fortran_order:  # column-major on disk: the reversed shape row-major, transposed
            staging = np.empty(member.shape[::-1], dtype)
            self._read_stream(member, staging.reshape(1, -1), None, check)
            if rows is None:
                out[...] = staging.T
            else:
                out[rows] = staging.T
            return out
        n = member.shape[0] if member.shape else 1
        self._read_stream(member, out.reshape(n, -1), rows, check)
        return out

    def _read_stream(
        self,
        member: Member,
        dest: np.ndarray,
        rows: np.ndarray | None,
        check: Callable[[np.ndarray, np.ndarray], None] | None,
    ) -> None:
        where = self.where(member.key)
        itemsize = member.dtype.itemsize
        total = member.size
        per_chunk = max(1, CHUNK_BYTES // max(1, itemsize))
        try:
            with self._zip.open(member.info) as f:
                _read_npy_header(f, where)
                done = 0
                while done < total:
                    count = min(per_chunk, total - done)
                    raw = _read_exactly(f, count * itemsize, where)
                    values = np.frombuffer(raw, dtype=member.dtype, count=count)
                    with np.errstate(all="ignore"):
                        converted = values.astype(dest.dtype)
                    if check is not None:
                        check(converted, values)
                    _place(dest, rows, done, converted)
                    done += count
        except StepcError:
            raise
        except (ValueError, OSError, EOFError, zipfile.BadZipFile, RuntimeError, NotImplementedError) as e:
            raise StepcError(f"{where} cannot be read: {_oneline(e)}") from None


def _place(dest: np.ndarray, rows: np.ndarray | None, start: int, values: np.ndarray) -> None:
    """Put `values`, the elements `start...` of the file's row-major stream, into the rows of
    `dest` (2-D: rows x elements per row) that `rows` maps them to."""
    width = dest.shape[1]
    i, position, count = 0, start, len(values)
    while i < count:
        r, c = divmod(position, width)
        if c == 0 and count - i >= width:  # whole rows
            k = (count - i) // width
            block = values[i : i + k * width].reshape(k, width)
            if rows is None:
                dest[r : r + k] = block
            else:  # each row as one opaque element: a scatter of rows, not of numbers (8x faster)
                _as_rows(dest)[rows[r : r + k]] = _as_rows(block)
            taken = k * width
        else:  # the start or end of one row
            taken = min(width - c, count - i)
            dest[r if rows is None else int(rows[r]), c : c + taken] = values[i : i + taken]
        i += taken
        position += taken


def _as_rows(a: np.ndarray) -> np.ndarray:
    """A C-contiguous 2-D array as a 1-D array of its rows (each an opaque `void` element)."""
    return a.view(np.dtype((np.void, a.shape[1] * a.dtype.itemsize))).reshape(a.shape[0])


def _read_exactly(f: IO[bytes], n: int, where: str) -> bytes:
    parts: list[bytes] = []
    got = 0
    while got < n:
        chunk = f.read(n - got)
        if not chunk:
            raise StepcError(f"{where} cannot be read: the file ends {n - got} bytes early (truncated)")
        parts.append(chunk)
        got += len(chunk)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def check_finite(key: str, value: np.ndarray, where: str, loc: SourceLoc | None = None) -> None:
    """A `StepcError` naming `key` when a float array holds NaN or inf (checked in chunks)."""
    if value.dtype.kind != "f" and value.dtype.name != "bfloat16":
        return
    flat = value.reshape(-1)
    step = max(1, CHUNK_BYTES // max(1, value.dtype.itemsize))
    for start in range(0, flat.size, step):
        block = flat[start : start + step]
        if not np.all(np.isfinite(block)):
            bad = start + int(np.flatnonzero(~np.isfinite(block))[0])
            index = [int(i) for i in np.unravel_index(bad, value.shape)] if value.ndim else []
            raise StepcError(
                f"{where}: '{key}'{index} is {float(flat[bad])}: non-finite values (NaN or inf) are refused",
                loc,
            )


def load_npz(path: PathLike, *, option: str = "--inputs", max_bytes: int | None = None) -> dict[str, np.ndarray]:
    """Every array of an untrusted `.npz` (for files read whole, such as the bundled digits).

    Headers are read first: object arrays (which only pickle can load) and arrays whose
    declared size exceeds the memory limit are refused before any data is read.
    """
    limit = memory_limit() if max_bytes is None else max_bytes
    with NpzArchive(path, option) as archive:
        total = 0
        for key in archive.keys:
            member = archive.member(key)
            total += member.nbytes
            if total > limit:
                raise StepcError(
                    f"{archive.where(key)} declares shape {member.shape} ({human_bytes(member.nbytes)}): the arrays "
                    f"exceed the memory limit of {human_bytes(limit)} (STEPC_MAX_BYTES)"
                )
        return {key: archive.read(key) for key in archive.keys}


def _read_npy_header(f: IO[bytes], where: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    fmt = np.lib.format
    try:
        version = fmt.read_magic(f)
        if version == (1, 0):
            shape, fortran_order, dtype = fmt.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran_order, dtype = fmt.read_array_header_2_0(f)
        else:
            raise StepcError(f"{where} has an unsupported .npy format version {version}")
    except StepcError:
        raise
    except Exception as e:  # NumPy's header parser raises what the tokenizer, ast or dtype raise
        raise StepcError(f"{where} is not a valid .npy array: {type(e).__name__}: {_oneline(e)}") from None
    dims = tuple(int(d) for d in shape)
    dtype = np.dtype(dtype)
    if dtype.hasobject:
        raise StepcError(
            f"{where} holds Python objects (dtype {dtype}); stepc loads numeric arrays only "
            "and never unpickles (allow_pickle=False)"
        )
    if any(d < 0 for d in dims):
        raise StepcError(f"{where} is not a valid .npy array: its shape {_dims_text(dims)} has a negative dimension")
    if math.prod(dims) > MAX_ELEMENTS:
        raise StepcError(
            f"{where} is not a valid .npy array: its shape {_dims_text(dims)} declares more than 2**63 - 1 elements"
        )
    return dims, bool(fortran_order), dtype


def _dims_text(dims: tuple[int, ...]) -> str:
    """A shape for a message, any dimension of more than 20 digits abbreviated."""
    shown = [str(d) if len(str(d)) <= 20 else f"<{len(str(d))} digits>" for d in dims]
    return f"({', '.join(shown)}{',' if len(shown) == 1 else ''})"


def _oneline(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= 300 else text[:297] + "..."


# ---------------------------------------------------------------------------------------------
# Checking arrays against what a program expects


@dataclass(frozen=True)
class ArraySpec:
    """What a program expects under one key: shape, dtype, and for labels the class count."""

    shape: tuple[int, ...]
    dtype: np.dtype
    classes: int | None = None  # i32 labels must lie in [0, classes)


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
            f"{source} lacks {_plural('key', missing)} {name_list(missing)}; expected: {name_list(expected)}"
        )
    extra = [k for k in arrays if k not in expected]
    if extra and not allow_extra:
        raise StepcError(
            f"{source} has unknown {_plural('key', extra)} {name_list(extra, quote=True)}; "
            f"expected: {name_list(expected)}"
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


def _plural(word: str, items: Sequence[object] | Mapping[str, object]) -> str:
    return word if len(items) == 1 else word + "s"
