"""Fault-injection drills that workers run when a config field asks for one, to test failure handling."""

from __future__ import annotations

import ctypes


def deadlock_in_native_code() -> None:
    """Block this thread for good inside C code, as a deadlocked library would: it holds no GIL, and it never
    returns to the interpreter, so Python signal handlers of this (main) thread never run."""
    libc = ctypes.CDLL(None, use_errno=True)
    mutex = ctypes.create_string_buffer(64)  # all zeros: a default (non-recursive) pthread mutex
    libc.pthread_mutex_lock(mutex)
    libc.pthread_mutex_lock(mutex)
