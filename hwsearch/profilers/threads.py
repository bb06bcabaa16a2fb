"""How many threads a kernel may be timed with: the one bound every profiling entry point checks.

A module of its own (no torch, no Ray) so `hwsearch worker`, the cluster and the local profiler
check it before anything heavy loads, and none of them imports another for it.
"""

from __future__ import annotations

from hwsearch.errors import check_range

MAX_THREADS = 1024


def check_threads(threads: int | None) -> int | None:
    """Threads per kernel a user asked for (None: the node's cores), within `MAX_THREADS`."""
    if threads is not None:
        check_range("threads", threads, 1, MAX_THREADS, "threads per kernel; more than any machine has cores")
    return threads
