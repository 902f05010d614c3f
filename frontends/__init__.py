"""Importers: other frameworks' training steps as step programs (`torch.py`: `stepc.from_torch`;
`jax.py`: `stepc.from_jax`), written as text through `writer.py` and checked like a pass."""
