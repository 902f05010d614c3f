"""Backends: StableHLO, the JAX function, the XLA text path and the emitted Python module."""
