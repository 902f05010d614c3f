"""Threefry-2x32 on NumPy: the random bits and the dropout mask of a `tensor<2xui32>` key.

The reference meaning of `step.dropout`'s keep mask is `jax.random.bernoulli(key, p, shape)`
with `p = float32(1 - rate)` for the threefry key data `key`
(`jax.random.wrap_key_data(key, impl="threefry2x32")`), in JAX's default configuration
(`jax_threefry_partitionable` on, the default since JAX 0.5): element `i` (row-major) of the
bits is `a ^ b` for `(a, b) = threefry2x32(key, (i >> 32, i & 0xFFFFFFFF))`, and an element is
kept where the float32 in [0, 1) made of its 23 high bits is below `p`. Nothing here depends on
`jax_enable_x64`. `tests/test_threefry.py` checks both bit for bit against JAX.
"""

from __future__ import annotations

import numpy as np

Array = np.ndarray

ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
PARITY = 0x1BD11BDA  # Threefry's key-schedule constant (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3")
MANTISSA_BITS = 23  # float32's: a uniform float32 in [0, 1) is (bits >> 9) * 2**-23


def _rotate_left(x: Array, d: int) -> Array:
    return (x << np.uint32(d)) | (x >> np.uint32(32 - d))


def threefry2x32(key: Array, x0: Array, x1: Array) -> tuple[Array, Array]:
    """The Threefry-2x32 hash (20 rounds) of the counter words `(x0, x1)` under `key`
    (two uint32 words), as JAX's `threefry2x32_p`; uint32 arithmetic wraps."""
    k0, k1 = (np.uint32(w) for w in np.asarray(key, dtype=np.uint32))
    schedule = (k0, k1, k0 ^ k1 ^ np.uint32(PARITY))
    with np.errstate(over="ignore"):
        x = [np.asarray(x0, dtype=np.uint32) + schedule[0], np.asarray(x1, dtype=np.uint32) + schedule[1]]
        for block in range(5):
            for r in ROTATIONS[block % 2]:
                x[0] = x[0] + x[1]
                x[1] = _rotate_left(x[1], r) ^ x[0]
            x[0] = x[0] + schedule[(block + 1) % 3]
            x[1] = x[1] + schedule[(block + 2) % 3] + np.uint32(block + 1)
    return x[0], x[1]


def random_bits(key: Array, shape: tuple[int, ...]) -> Array:
    """`jax.random.bits(key, shape, uint32)`: one hash per element of a row-major 64-bit
    counter, its two words xor-ed."""
    count = np.arange(int(np.prod(shape, dtype=np.int64)), dtype=np.uint64)
    a, b = threefry2x32(key, (count >> np.uint64(32)).astype(np.uint32), count.astype(np.uint32))
    return (a ^ b).reshape(shape)


def keep_threshold(rate: float) -> int:
    """The keep mask as an integer test: `bits >> 9 < keep_threshold(rate)`. JAX keeps an element
    where `m * 2**-23 < p` (m = bits >> 9, exact in float32), that is where `m < ceil(p * 2**23)`."""
    p = float(np.float32(1.0 - rate))
    scaled = p * 2.0**MANTISSA_BITS  # exact: a power-of-two scaling of a float32
    return int(np.ceil(scaled))


def keep_mask(key: Array, rate: float, shape: tuple[int, ...]) -> Array:
    """`jax.random.bernoulli(key, float32(1 - rate), shape)` for threefry key data `key`."""
    bits = random_bits(key, shape)
    return (bits >> np.uint32(32 - MANTISSA_BITS)) < np.uint32(keep_threshold(rate))


def dropout_scale(rate: float) -> float:
    """What kept elements are multiplied by: 1 / (1 - rate) (inf at rate 1, where none is kept)."""
    return 1.0 / (1.0 - rate) if rate < 1.0 else float("inf")
