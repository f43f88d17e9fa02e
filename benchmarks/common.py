"""Helpers shared by the benchmark scripts (run as `python benchmarks/NAME.py`, so this folder is on sys.path)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator


def machine_line() -> str:
    """CPU count and load: other processes on the box skew every figure below."""
    one, five, _ = os.getloadavg()
    return f"machine: {os.cpu_count()} CPUs, load average {one:.2f} (1 min) {five:.2f} (5 min) at start"


@contextlib.contextmanager
def unless_postgres_unreachable(backend: str, pg_url: str) -> Iterator[None]:
    """A missing PostgreSQL server should not hide the SQLite figures: say so and go on."""
    try:
        yield
    except Exception as error:
        if backend != "postgres" or "connect" not in str(error).lower():
            raise
        print(f"  skipped: cannot reach PostgreSQL at {pg_url}: {error}")
