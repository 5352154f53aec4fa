"""Name service: memory, file (shared filesystem) and redis backends behind one interface.

Pick a backend by URL with `make_name_resolver`; build every key with `zrl.nameresolve.names`.
"""

from __future__ import annotations

from .base import NameResolver, NameWatch
from .errors import (
    NameEntryExistsError,
    NameEntryNotFoundError,
    NameResolveError,
    NameServiceAuthError,
    NameServiceUnavailableError,
)
from .factory import SUPPORTED_SCHEMES, make_name_resolver
from .subtree_view import SubtreeView

__all__ = [
    "SUPPORTED_SCHEMES",
    "NameEntryExistsError",
    "NameEntryNotFoundError",
    "NameResolveError",
    "NameResolver",
    "NameServiceAuthError",
    "NameServiceUnavailableError",
    "NameWatch",
    "SubtreeView",
    "make_name_resolver",
]
