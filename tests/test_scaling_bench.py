"""`benchmarks/scaling.py --quick`: the smallest size of the scaling benchmark runs end to end
(a generated 1M-parameter transformer step compiled with contracts, XLA, and timed beside its
hand-written JAX twin), prints its row, and stepc's first losses agree with hand JAX's.
No timing assertions: this machine is shared."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "scaling.py"


def test_scaling_quick(tmp_path: Path) -> None:
    out = tmp_path / "scaling.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--json", str(out)], capture_output=True,
                          text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = proc.stdout
    assert "| size " in text and "contracts/XLA" in text and "stepc/JAX" in text
    rows = [line for line in text.splitlines() if line.startswith("| 1M ")]
    assert len(rows) == 1, text
    assert "failed" not in rows[0] and "timed out" not in rows[0], rows[0]

    results = json.loads(out.read_text())
    (row,) = results["sizes"]
    assert row["size"] == "1M" and row["params"] > 1_000_000
    assert row["contract_failure"] is None
    for key in ("parse_s", "passes_s", "contracts_s", "xla_s", "maxrss_after_compile"):
        assert row[key] > 0, key
    assert any(name.startswith("contract ") for name in row["stages"])
    assert {"stepc", "jax"} <= set(row["xla_costs"])
    stepc, jax = row["first_losses"]["stepc"], row["first_losses"]["jax"]
    assert len(stepc) == len(jax) == 3
    assert abs(stepc[0] - jax[0]) <= 1e-5 * abs(jax[0])
    assert all(abs(a - b) <= 1e-4 * abs(b) for a, b in zip(stepc, jax))
    assert set(row["step_s"]) == {"stepc", "jax"}
