"""Start workers at the same moment: how the tests make races (two claims, two turns) actually happen."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


def run_together(count: int, work: Callable[[int], T], *, timeout: float = 120) -> list[T]:
    """``work(0) … work(count-1)`` in threads released by one barrier; results in index order.

    A worker's exception is raised here, not lost in its thread.
    """
    barrier = threading.Barrier(count)

    def start(index: int) -> T:
        barrier.wait(timeout=timeout)
        return work(index)

    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(start, range(count), timeout=timeout))
