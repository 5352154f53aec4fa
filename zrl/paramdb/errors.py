"""Errors raised by the parameter DB; each names the model, version and file involved."""

from __future__ import annotations


class ParamDBError(Exception):
    """Base class of every parameter DB error."""


class InvalidNameError(ParamDBError, ValueError):
    """An experiment, trial, model or tag name that cannot be used as one path component."""


class VersionNotFoundError(ParamDBError, LookupError):
    """The requested version, tag or `latest` pointer does not exist (or was garbage-collected)."""


class VersionExistsError(ParamDBError):
    """A push tried to write a version that is already stored."""


class CorruptVersionError(ParamDBError):
    """A stored version failed verification: missing, truncated or altered file, or a bad manifest."""

    def __init__(self, message: str, path: str):
        super().__init__(message)
        self.path = path


class PushError(ParamDBError, OSError):
    """Writing a version failed (disk full, permission denied, ...); the partial version was removed."""
