"""Errors raised by every name-service backend."""

from __future__ import annotations


class NameResolveError(Exception):
    """Base class of every name-service error."""


class NameEntryNotFoundError(NameResolveError, KeyError):
    """The name is not registered (or its keepalive TTL has passed)."""

    def __str__(self) -> str:
        # KeyError.__str__ would repr() the message and wrap it in quotes.
        return str(self.args[0]) if self.args else "name entry not found"


class NameEntryExistsError(NameResolveError):
    """`add` without `replace=True` found the name already registered."""


class NameServiceUnavailableError(NameResolveError):
    """The backing service stayed unreachable for longer than the operation's retry budget."""


class NameServiceAuthError(NameResolveError):
    """The backing service refused this process's credentials (a missing or wrong password); not retried."""
