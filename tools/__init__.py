"""The `stepc` command."""
