"""Processes hwsearch starts and stops later: knowing a recorded process is still ours, and
passing signals on to a child that serves in the foreground.

A recorded pid (or process group) can be reused by an unrelated process once ours has exited,
so a record keeps each process's start time too, and only a process with the same pid *and*
start time is ever signalled.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

FORWARDED = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)
SAME_START_S = 0.05  # psutil's start times are rounded to the clock tick


def group_members(pgid: int) -> list[dict[str, Any]]:
    """{pid, created, name} of each process now in the process group `pgid`."""
    import psutil

    found = []
    for proc in psutil.process_iter(["pid", "create_time", "name"]):
        try:
            if os.getpgid(proc.pid) == pgid:
                found.append({"pid": proc.pid, "created": proc.info["create_time"], "name": proc.info["name"]})
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return found


def still_ours(records: Sequence[dict[str, Any]]) -> list[Any]:
    """The recorded processes still running as the same process (pid and start time), with the
    processes they have started since (Ray's workers leave the group), as psutil handles."""
    import psutil

    found: dict[int, Any] = {}
    for rec in records:
        try:
            proc = psutil.Process(int(rec["pid"]))
            if abs(proc.create_time() - float(rec["created"])) > SAME_START_S:
                continue  # the pid now belongs to another process
            found[proc.pid] = proc
            for child in proc.children(recursive=True):
                found[child.pid] = child
        except (psutil.Error, KeyError, TypeError, ValueError):
            continue
    return list(found.values())


@contextmanager
def forwarding_signals(proc: subprocess.Popen, signals: Sequence[int] = FORWARDED) -> Iterator[None]:
    """While the block runs, SIGTERM / SIGHUP / SIGINT sent to this process go to `proc` too, so a
    child serving in the foreground (Streamlit) stops with its parent instead of living on."""
    def forward(signum: int, _frame: Any) -> None:
        if proc.poll() is None:
            proc.send_signal(signum)

    before = {s: signal.signal(s, forward) for s in signals}
    try:
        yield
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)
