"""Which of several per-(block, t, cond) items serves a call: one rule for SAEs, dictionaries
and ITDA dictionaries alike."""
from __future__ import annotations

from typing import Callable, Sequence, TypeVar

T = TypeVar("T")


def nearest(items: Sequence[T], t: float | None, cond: str, t_of: Callable[[T], float | None],
            cond_of: Callable[[T], str]) -> T:
    """Among items of one block: those whose condition fits (`cond` or "both"; else all), then
    the one whose t bucket is nearest to t (items without a bucket fit every t; ties: first)."""
    if not items:
        raise ValueError("nothing to choose from")
    fitting = [x for x in items if cond_of(x) in (cond, "both")] or list(items)
    if t is None:
        return fitting[0]
    return min(fitting, key=lambda x: abs((t_of(x) if t_of(x) is not None else t) - t))
