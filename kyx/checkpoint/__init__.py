"""Checkpointing: Orbax manager and ExCP residual compression."""
