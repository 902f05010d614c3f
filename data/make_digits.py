"""Convert scikit-learn's bundled copy of the UCI handwritten digits into data/digits.npz.

Run once, by hand, where scikit-learn is installed; stepc itself never imports scikit-learn:

    python data/make_digits.py            # writes data/digits.npz next to this file

The archive holds `images` (1797 x 64, uint8, pixel counts 0..16, row-major 8x8) and
`labels` (1797, int32, 0..9), in scikit-learn's order. See data/README.md for the source.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np


def convert() -> dict[str, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.asarray(digits.data)
    labels = np.asarray(digits.target)
    if images.shape != (1797, 64) or labels.shape != (1797,):
        raise SystemExit(f"unexpected shapes from load_digits: {images.shape}, {labels.shape}")
    if images.min() < 0 or images.max() > 16 or not np.array_equal(images, np.round(images)):
        raise SystemExit("unexpected pixel values: expected integer counts 0..16")
    return {"images": images.astype(np.uint8), "labels": labels.astype(np.int32)}


def main() -> int:
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).with_name("digits.npz")
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **convert())
    target.write_bytes(buffer.getvalue())
    print(f"wrote {target} ({target.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
