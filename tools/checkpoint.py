"""The files that let `stepc run` resume: the arguments of a run and its checkpoints.

    record = RunRecord.start(program_text, name, options)   # DIR/run.json, before training
    write_checkpoint(out, Checkpoint(step, params, state, losses, position, record.run_id))
    checkpoint = read_checkpoint(out)                       # None when the run wrote none yet

`DIR/run.json` holds what the run was started with (the program's text and hash, the resolved
options, the data and `--init` files' hashes); `stepc run --resume DIR` reads it and trains the
same program on the same data with the same options. `DIR/checkpoint.npz` is a zip that
`np.load` reads: one `params/NAME.npy` per parameter, one `state/KEY.npy` per optimizer state
(`momentum.w1`, `exp_avg.w1`, `step`, ...), `losses.npy` (float64, one per step done) and
`checkpoint.json` (the step, the data position and shuffle generator's state, the run's id).
Every write goes through `files.atomic_write` (a temporary, synced, then renamed over the old
checkpoint): a reader, or a run killed at any moment, finds the previous checkpoint whole or
the new one whole, never a part of one. The format: docs/training.md.

`STEPC_TEST_CHECKPOINT_DELAY=SECONDS` (for tests) sleeps inside each checkpoint write, after
the temporary is written and before it is renamed into place, so that a test can kill the
process there.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import secrets
import time
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from stepc.ir.diagnostics import StepcError
from stepc.tools.files import atomic_write, write_together

CHECKPOINT = "checkpoint.npz"
RECORD = "run.json"
CHECKPOINT_FORMAT = "stepc-checkpoint-1"
RECORD_FORMAT = "stepc-run-1"
TEST_DELAY = "STEPC_TEST_CHECKPOINT_DELAY"
PARAMS, STATE = "params/", "state/"


def sha256_of_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_of_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# ---------------------------------------------------------------------------------------------
# The arguments of a run: DIR/run.json


@dataclass(frozen=True)
class RunRecord:
    """What a run was started with: enough to train it again exactly (`--resume`)."""

    run_id: str
    program_name: str
    program_text: str
    options: dict[str, Any]  # the resolved options: steps, seed, data, init, lr_schedule, devices, ...

    @staticmethod
    def start(program_text: str, program_name: str, options: Mapping[str, Any]) -> RunRecord:
        return RunRecord(secrets.token_hex(8), program_name, program_text, dict(options))

    def to_json(self) -> str:
        return json.dumps({
            "format": RECORD_FORMAT,
            "run_id": self.run_id,
            "program": {"name": self.program_name, "sha256": sha256_of_text(self.program_text), "text": self.program_text},
            "options": self.options,
        }, indent=2) + "\n"  # fmt: skip

    def write(self, directory: str | Path, protect: tuple[str | Path, ...] = ()) -> None:
        atomic_write(Path(directory) / RECORD, self.to_json(), protect=protect)

    @staticmethod
    def read(directory: str | Path) -> RunRecord:
        path = Path(directory) / RECORD
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            if raw.get("format") != RECORD_FORMAT:
                raise ValueError(f"format {raw.get('format')!r}, expected {RECORD_FORMAT!r}")
            program = raw["program"]
            text = str(program["text"])
            if sha256_of_text(text) != program["sha256"]:
                raise ValueError("the program's text does not match its sha256")
            return RunRecord(str(raw["run_id"]), str(program["name"]), text, dict(raw["options"]))
        except FileNotFoundError:
            raise StepcError(
                f"--resume {directory}: no {RECORD} there (a directory that `stepc run --out` wrote holds one)"
            ) from None
        except OSError as e:
            raise StepcError(f"--resume {directory}: cannot read {RECORD}: {e.strerror or e}") from None
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise StepcError(f"--resume {directory}: {RECORD} is not a stepc run record: {e}") from None


# ---------------------------------------------------------------------------------------------
# Checkpoints: DIR/checkpoint.npz


@dataclass
class Checkpoint:
    """The state of a run after `step` steps: everything the next step depends on."""

    step: int
    params: dict[str, np.ndarray]
    state: dict[str, np.ndarray]
    losses: list[float]
    position: dict[str, Any]  # the data stream's (`data.BatchStream.position`)
    run_id: str
    train_seconds: float = 0.0  # training time spent up to here, over every session


def checkpoint_writer(checkpoint: Checkpoint) -> Any:
    """A `files.write_together` writer of the checkpoint's zip (members as the module's docstring)."""
    meta = {
        "format": CHECKPOINT_FORMAT,
        "run_id": checkpoint.run_id,
        "step": checkpoint.step,
        "data": checkpoint.position,
        "train_seconds": checkpoint.train_seconds,
        "params": list(checkpoint.params),
        "state": list(checkpoint.state),
    }
    arrays = {
        **{PARAMS + k: np.asarray(v) for k, v in checkpoint.params.items()},
        **{STATE + k: np.asarray(v) for k, v in checkpoint.state.items()},
        "losses": np.asarray(checkpoint.losses, dtype=np.float64),
    }

    def write(stream: IO[bytes]) -> None:
        with zipfile.ZipFile(stream, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
            stamp = (1980, 1, 1, 0, 0, 0)
            archive.writestr(zipfile.ZipInfo("checkpoint.json", date_time=stamp), json.dumps(meta, indent=1))
            for key, value in arrays.items():
                member = io.BytesIO()
                np.lib.format.write_array(member, value, allow_pickle=False)
                archive.writestr(zipfile.ZipInfo(f"{key}.npy", date_time=stamp), member.getvalue())
        delay = os.environ.get(TEST_DELAY)
        if delay:  # a test kills the process here: the temporary written, not yet renamed
            stream.flush()
            time.sleep(float(delay))

    return write


def write_checkpoint(directory: str | Path, checkpoint: Checkpoint, protect: tuple[str | Path, ...] = ()) -> None:
    """`DIR/checkpoint.npz`, atomically: the previous one stays until this one is whole."""
    write_together([(Path(directory) / CHECKPOINT, checkpoint_writer(checkpoint))], protect=protect)


def read_checkpoint(directory: str | Path, run_id: str) -> Checkpoint | None:
    """The checkpoint in `directory` (None when there is none); a StepcError for a file that is
    not one, or one of another run than `run_id`."""
    path = Path(directory) / CHECKPOINT
    if not path.exists():
        return None
    where = f"--resume {directory}: {CHECKPOINT}"
    try:
        with zipfile.ZipFile(path) as archive:
            meta = json.loads(archive.read("checkpoint.json"))
            if meta.get("format") != CHECKPOINT_FORMAT:
                raise ValueError(f"format {meta.get('format')!r}, expected {CHECKPOINT_FORMAT!r}")

            def array(key: str) -> np.ndarray:
                with archive.open(f"{key}.npy") as member:
                    return np.lib.format.read_array(io.BytesIO(member.read()), allow_pickle=False)

            checkpoint = Checkpoint(
                step=int(meta["step"]),
                params={k: array(PARAMS + k) for k in meta["params"]},
                state={k: array(STATE + k) for k in meta["state"]},
                losses=[float(v) for v in array("losses")],
                position=dict(meta["data"]),
                run_id=str(meta["run_id"]),
                train_seconds=float(meta.get("train_seconds", 0.0)),
            )
    except (OSError, zipfile.BadZipFile, ValueError, KeyError, TypeError) as e:
        raise StepcError(f"{where} cannot be read: {e}") from None
    if checkpoint.run_id != run_id:
        raise StepcError(f"{where} belongs to another run (id {checkpoint.run_id}; {RECORD} names {run_id})")
    if len(checkpoint.losses) != checkpoint.step:
        raise StepcError(f"{where} is inconsistent: step {checkpoint.step} with {len(checkpoint.losses)} losses")
    return checkpoint


def remove_stale(directory: str | Path) -> None:
    """A fresh run into `directory`: the checkpoint of an earlier run there is removed (so that
    `--resume` never continues another run), and so are temporaries a killed write left."""
    d = Path(directory)
    for path in [d / CHECKPOINT, *d.glob(f".{CHECKPOINT}.*.tmp")]:
        path.unlink(missing_ok=True)


def remove_temporaries(directory: str | Path) -> None:
    """The temporaries of checkpoint writes that a killed run left behind (never renamed)."""
    for path in Path(directory).glob(f".{CHECKPOINT}.*.tmp"):
        path.unlink(missing_ok=True)
