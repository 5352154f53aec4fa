"""Registration of a bound socket's address in the name service, for the NameResolving variants."""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)


class NameRegistration:
    """`address` registered under a new key below `root`, kept alive every ttl/3 until `release()`."""

    def __init__(self, resolver: Any, root: str, address: str, keepalive_ttl: float):
        self.resolver = resolver
        self.address = address
        self.key: str = resolver.add_subentry(root, address, keepalive_ttl=keepalive_ttl)

    def release(self) -> None:
        """Delete the entry; an entry that has already expired is not an error."""
        try:
            self.resolver.delete(self.key)
        except Exception as exc:  # noqa: BLE001 - closing must go on whatever the name service says
            logger.debug("could not delete name %s of %s: %s", self.key, self.address, exc)


class RegisteredMixin:
    """Mixed into a bound server or consumer class: `_register` publishes its `address`; `close` withdraws it."""

    address: str
    registration: NameRegistration | None = None

    def _register(self, resolver: Any, root: str, keepalive_ttl: float) -> None:
        try:
            self.registration = NameRegistration(resolver, root, self.address, keepalive_ttl)
        except Exception:
            self.close()
            raise

    def close(self) -> None:
        registration, self.registration = self.registration, None
        if registration is not None:
            registration.release()
        super().close()  # type: ignore[misc]
