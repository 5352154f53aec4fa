"""Authenticity of control messages: an HMAC-SHA256 signature with the trial's key, and a guard against old or
replayed messages.

The signature covers the header frame and every body frame, each preceded by its length as 8 bytes big-endian, so
no byte can move from one frame to another without breaking it. The ROUTER's identity frame and the empty delimiter
are transport and are not signed. A receiver checks the signature (`hmac.compare_digest`) before it decodes
anything.

A signed header names its `recipient`, its sender's Unix `time` and a random `nonce`. `ReplayGuard` takes a message
only when its time lies within `max_age_s` of the receiver's clock and its nonce is new; a nonce is kept until its
message would be refused as stale anyway, so the store stays small.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections.abc import Callable, Sequence
from typing import Any

KEY_BYTES = 32
"""Length of a generated key (the HMAC-SHA256 block input; shorter keys are refused)."""
MAX_MESSAGE_AGE_S = 60.0
"""A message sent longer ago than this, or this far in the future, is stale (bounds clock skew between hosts)."""


class ControlKey:
    """The trial's shared secret for signing control messages. Its repr never shows the secret."""

    __slots__ = ("_secret",)

    def __init__(self, secret: bytes):
        if not isinstance(secret, bytes) or len(secret) < KEY_BYTES:
            raise ValueError(f"a control key needs at least {KEY_BYTES} bytes")
        self._secret = secret

    @classmethod
    def generate(cls) -> ControlKey:
        return cls(secrets.token_bytes(KEY_BYTES))

    @classmethod
    def from_hex(cls, text: str) -> ControlKey:
        try:
            return cls(bytes.fromhex(text.strip()))
        except ValueError:
            raise ValueError(f"a control key must be at least {KEY_BYTES} bytes written as hex digits") from None

    def hex(self) -> str:
        return self._secret.hex()

    def sign(self, frames: Sequence[Any]) -> bytes:
        """The signature of `frames` (bytes-like)."""
        parts = []
        for frame in frames:
            parts.append(memoryview(frame).nbytes.to_bytes(8, "big"))
            parts.append(frame)
        return hmac.digest(self._secret, b"".join(parts), "sha256")  # one call into OpenSSL

    def verify(self, signature: bytes, frames: Sequence[Any]) -> bool:
        return hmac.compare_digest(signature, self.sign(frames))

    def derive(self, purpose: str) -> bytes:
        """A 32-byte secret for `purpose`, derived from this key (HMAC-SHA256 of a label, as HKDF-Expand does): the
        trial's other secrets follow from its one key, and none of them reveals the key or another."""
        return hmac.digest(self._secret, f"zrl derived key: {purpose}".encode(), "sha256")

    def __repr__(self) -> str:
        return "ControlKey(***)"


def new_nonce() -> str:
    return secrets.token_bytes(16).hex()


class ReplayGuard:
    """Refuses messages that are stale or whose nonce was seen before. Not thread-safe."""

    def __init__(self, max_age_s: float = MAX_MESSAGE_AGE_S, clock: Callable[[], float] = time.time):
        self.max_age_s = max_age_s
        self._clock = clock
        self._seen: dict[str, float] = {}
        """Nonce -> the time its message was sent."""
        self._pruned_at = clock()

    def check(self, sent_at: float, nonce: str) -> tuple[str, str] | None:
        """None when the message is fresh and new (its nonce is then remembered), else (kind, detail) with kind
        `stale` or `replayed`."""
        now = self._clock()
        if not abs(now - sent_at) <= self.max_age_s:  # written so that a NaN time is stale too
            return "stale", (f"sent {now - sent_at:+.1f} s from this host's clock; more than {self.max_age_s:g} s "
                             "apart (clocks out of sync, or an old message sent again)")
        if nonce in self._seen:
            return "replayed", f"nonce {nonce} was used by an earlier message"
        self._prune(now)
        self._seen[nonce] = sent_at
        return None

    def _prune(self, now: float) -> None:
        if now - self._pruned_at < 1.0:
            return
        self._pruned_at = now
        self._seen = {nonce: sent for nonce, sent in self._seen.items() if now - sent <= self.max_age_s}
