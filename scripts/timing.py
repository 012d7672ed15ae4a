"""Timing methods inside a run, for the bench scripts' ``--parts``: ``perf_counter`` around every call of a method,
added up per label, so that each part pays the cache misses the rest of the run causes, as it does in a real run."""

from __future__ import annotations

import time


def time_calls(spent: dict[str, float], label: str, owner: object, name: str) -> None:
    """Replace the method ``owner.name`` (on this object only) by a wrapper that adds each call's seconds to
    ``spent[label]``."""
    method = getattr(owner, name)

    def call(*args, **kwargs):
        started = time.perf_counter()
        try:
            return method(*args, **kwargs)
        finally:
            spent[label] += time.perf_counter() - started

    setattr(owner, name, call)
