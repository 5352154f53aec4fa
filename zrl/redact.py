"""Masking secrets before a config, a summary or a launch plan is shown or stored.

Two rules: the credentials of any URL (`redis://user:password@host` -> `redis://***@host`), and the value of any
field whose name ends in a word that says it is a secret (`password`, `redis_password`, `access_token`, `secret`,
`api_key`; not `password_file`, which says where a secret is).
"""

from __future__ import annotations

import re
from typing import Any

MASK = "***"
_URL_CREDENTIALS = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)[^/@\s'\"]*@")
_SECRET_FIELD = re.compile(r"(^|_)(password|passwd|secret|token|api_?key|credentials?)$", re.IGNORECASE)


def redact_text(text: str) -> str:
    """`text` with the credentials of every URL in it replaced by MASK."""
    return _URL_CREDENTIALS.sub(rf"\1{MASK}@", text)


def is_secret_field(name: str) -> bool:
    return bool(_SECRET_FIELD.search(name))


def redact_plain(value: Any, field: str = "") -> Any:
    """A copy of plain data (dicts, lists, scalars, as `zrl.config.to_plain` gives) with every secret masked."""
    if isinstance(value, dict):
        return {key: redact_plain(item, str(key)) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_plain(item, field) for item in value]
    if isinstance(value, str):
        return MASK if value and is_secret_field(field) else redact_text(value)
    return value
