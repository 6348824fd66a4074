"""The errors of the engine-folder contract, shared by build time and run time.

They live here, not with the code that raises them, so that catching one never imports the
builder or a backend: the CLI maps each to a one-line message and exit code 2.
"""
from __future__ import annotations


class EngineFolderError(ValueError):
    """An engine folder is missing, incomplete, tampered with, or from an incompatible cmrt."""


class BackendUnavailableError(RuntimeError):
    """The requested backend (or device) cannot run on this machine, or this folder cannot feed it."""


class EngineValidationError(RuntimeError):
    """A freshly built engine disagrees with its reference (or produced NaN/Inf)."""


class ModelUnavailableError(RuntimeError):
    """The model could not be fetched (for example the hub is unreachable)."""


class CheckpointError(ValueError):
    """A checkpoint cannot be built from: a config out of range, a missing or damaged weight file."""
