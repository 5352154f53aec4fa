"""Reward arithmetic on response text: the last \\boxed{...} answer, +1/-1 correctness and the DAPO overlong penalty."""

from __future__ import annotations

_BOXED = ("\\boxed{", "\\fbox{")


def last_boxed(text: str) -> str | None:
    """The content of the last complete \\boxed{...} (or \\fbox{...}) in `text`, nested braces included."""
    best_start = -1
    for marker in _BOXED:
        pos = text.rfind(marker)
        while pos != -1:
            if _closing_brace(text, pos + len(marker)) is not None:
                break
            pos = text.rfind(marker, 0, pos)
        if pos > best_start:
            best_start, best_marker = pos, marker
    if best_start < 0:
        return None
    open_at = best_start + len(best_marker)
    close_at = _closing_brace(text, open_at)
    assert close_at is not None
    return text[open_at:close_at]


def has_boxed_answer(text: str) -> bool:
    """Whether `text` holds a complete \\boxed{...} answer."""
    return last_boxed(text) is not None


def _closing_brace(text: str, start: int) -> int | None:
    depth = 1
    for i in range(start, len(text)):
        ch = text[i]
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return i
    return None


def correctness_reward(correct: bool) -> float:
    """+1 for a correct final answer, -1 otherwise (wrong, missing, timed out or failed)."""
    return 1.0 if correct else -1.0


def overlong_penalty(length: int, cap: int, buffer: int) -> float:
    """DAPO soft overlong penalty: min(-(length - (cap - buffer)) / buffer, 0) beyond cap - buffer; 0 if buffer is 0."""
    if buffer <= 0 or length <= cap - buffer:
        return 0.0
    return min(-(length - (cap - buffer)) / buffer, 0.0)
