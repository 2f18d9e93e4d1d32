"""Errors about what a user gives that are raised beside torch, defined without it: the command line catches
them without importing torch."""

__all__ = ["CheckpointError"]


class CheckpointError(ValueError):
    """A checkpoint or state dict does not match the model; the message lists every problem at once."""
