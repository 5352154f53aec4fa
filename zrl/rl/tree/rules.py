"""The TreePO branching arithmetic and per-segment checks, as pure functions."""

from __future__ import annotations

import math
import numbers
from collections.abc import Collection, Sequence


def branch_total(width: int, n_done: int, n_active: int, n_finished_this_round: int, branching: int) -> int:
    """Children to create for a prompt's active paths after a round.

    remaining = max(w - n_done, 0); total = max(min(remaining, b * (|P| + n_finished_this_round)), |P|).
    """
    remaining = max(width - n_done, 0)
    return max(min(remaining, branching * (n_active + n_finished_this_round)), n_active)


def even_split(total: int, n_paths: int) -> list[int]:
    """total // n children per path, the remainder to the last, at least one each."""
    if n_paths <= 0:
        return []
    counts = [total // n_paths] * n_paths
    counts[-1] += total % n_paths
    return [max(1, c) for c in counts]


def softmax_split(total: int, path_logprobs: Sequence[float], temperature: float) -> list[int]:
    """One child per path, the rest by largest remainder of softmax(logprob / T) shares."""
    n = len(path_logprobs)
    if n == 0:
        return []
    extra = max(total - n, 0)
    scaled = [lp / temperature for lp in path_logprobs]
    top = max(scaled)
    weights = [math.exp(s - top) for s in scaled]
    norm = sum(weights)
    quotas = [extra * w / norm for w in weights]
    counts = [math.floor(q) for q in quotas]
    left = extra - sum(counts)
    # Ties go to the earlier path so the split is deterministic.
    order = sorted(range(n), key=lambda i: (-(quotas[i] - counts[i]), i))
    for i in order[:left]:
        counts[i] += 1
    return [c + 1 for c in counts]


def cut_at_eos(token_ids: Sequence[int], eos_token_id: int | Collection[int]) -> tuple[int, bool]:
    """Tokens to keep (through the first EOS, at any index including 0) and whether EOS was seen.

    `eos_token_id` is one id or several; the first token that is any of them ends the sequence.
    """
    eos_ids = {eos_token_id} if isinstance(eos_token_id, numbers.Integral) else set(eos_token_id)
    for i, tok in enumerate(token_ids):
        if tok in eos_ids:
            return i + 1, True
    return len(token_ids), False


def has_repetition(text: str, substring_chars: int, count: int) -> bool:
    """Whether some substring of `substring_chars` characters occurs `count` times without overlapping."""
    if len(text) < substring_chars * count:
        return False
    positions: dict[str, list[int]] = {}
    for i in range(len(text) - substring_chars + 1):
        positions.setdefault(text[i:i + substring_chars], []).append(i)
    for starts in positions.values():
        if len(starts) < count:
            continue
        seen, next_free = 0, -1
        for s in starts:
            if s >= next_free:
                seen += 1
                next_free = s + substring_chars
                if seen >= count:
                    return True
    return False
