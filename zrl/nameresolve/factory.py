"""`make_name_resolver(url)`: the backend is chosen by the URL's scheme."""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

from .base import NameResolver

SUPPORTED_SCHEMES = ("memory", "file", "redis", "rediss")


def make_name_resolver(url: str) -> NameResolver:
    """Build a resolver from `memory://[NAME]`, `file:///abs/dir` or `redis[s]://[user:pass@]host:port/db`.

    `memory://NAME` resolvers in one process share the store NAME (`memory://` is the store "").
    """
    if not isinstance(url, str) or "://" not in url:
        raise ValueError(f"name service URL must look like scheme://..., got {url!r}; "
                         f"supported schemes: {', '.join(SUPPORTED_SCHEMES)}")
    scheme = url.split("://", 1)[0].lower()
    if scheme == "memory":
        from .memory import MemoryNameResolver, shared_store
        return MemoryNameResolver(shared_store(url.split("://", 1)[1]))
    if scheme == "file":
        from .file import FileNameResolver
        parts = urlsplit(url)
        if parts.netloc not in ("", "localhost"):
            raise ValueError(f"file name service URL must be file:///absolute/dir (no host), got host "
                             f"{parts.netloc!r}")
        return FileNameResolver(unquote(parts.path))
    if scheme in ("redis", "rediss"):
        from .redis_backend import RedisNameResolver
        return RedisNameResolver(url)
    raise ValueError(f"unknown name service scheme {scheme!r} in URL; supported schemes: "
                     f"{', '.join(SUPPORTED_SCHEMES)}")
