"""The machine's state while it is measured: load from others, and the CPU frequency policy.

A timing taken while another program is busy on the same cores is a timing of both. The
profiler samples how much CPU *other* processes used (all CPU time in /proc/stat less this
process's own) before and during a run, warns when it is more than `BUSY`, and stores it with
the run, beside the load average and the frequency governor (where the OS exposes them).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BUSY = 0.15  # share of the machine's CPU time used by other processes that earns a warning
CPUFREQ = Path("/sys/devices/system/cpu/cpu0/cpufreq")


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _cpu_ticks() -> tuple[int, int] | None:
    """(busy, total) clock ticks of all CPUs since boot."""
    line = _read(Path("/proc/stat"))
    if not line or not line.startswith("cpu "):
        return None
    values = [int(v) for v in line.splitlines()[0].split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    total = sum(values[:8])  # guest time is already inside user time
    return total - idle, total


def _ticks_of(which: str) -> int | None:
    """utime + stime of every thread of the process `which` ("self" or a pid), None if unreadable."""
    text = _read(Path(f"/proc/{which}/stat"))
    if not text:
        return None
    fields = text.rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def _own_ticks(pids: Sequence[int] = ()) -> int | None:
    """This process's CPU ticks, and those of the processes `pids` while they run."""
    own = _ticks_of("self")
    return None if own is None else own + sum(t for p in pids if (t := _ticks_of(str(p))) is not None)


def frequency_policy() -> dict[str, Any]:
    """Governor and frequencies (MHz) where readable; VMs often expose none."""
    out: dict[str, Any] = {}
    governor = _read(CPUFREQ / "scaling_governor")
    if governor:
        out["governor"] = governor
    for key, name in (("cur_mhz", "scaling_cur_freq"), ("min_mhz", "scaling_min_freq"), ("max_mhz", "scaling_max_freq")):
        value = _read(CPUFREQ / name)
        if value and value.isdigit():
            out[key] = int(value) / 1000
    boost = _read(Path("/sys/devices/system/cpu/cpufreq/boost"))
    if boost is not None:
        out["boost"] = boost == "1"
    return out


@dataclass
class LoadMonitor:
    """Samples other processes' share of the CPU between calls to `sample`."""

    samples: list[float] = field(default_factory=list)
    own_pids: list[int] = field(default_factory=list)  # children doing this process's work (their CPU is ours)
    _last: tuple[int, int, int] | None = None

    def _now(self) -> tuple[int, int, int] | None:
        ticks, own = _cpu_ticks(), _own_ticks(self.own_pids)
        return None if ticks is None or own is None else (ticks[0], ticks[1], own)

    def start(self) -> None:
        self._last = self._now()

    def sample(self) -> float | None:
        """Other processes' share of all CPU time since the last sample (0..1)."""
        now = self._now()
        last, self._last = self._last, now
        if now is None or last is None or now[1] <= last[1]:
            return None
        other = (now[0] - last[0]) - (now[2] - last[2])
        share = max(0.0, other / (now[1] - last[1]))
        self.samples.append(share)
        return share

    def idle_share(self, seconds: float = 0.5) -> float | None:
        """Other processes' share over a short wait (taken before measuring anything)."""
        self.start()
        time.sleep(seconds)
        return self.sample()

    @property
    def peak(self) -> float | None:
        return max(self.samples) if self.samples else None


def settle(quiet: float = 0.05, window: float = 0.05, limit: float = 2.0) -> float | None:
    """Wait (up to `limit` s) until other processes and the kernel use under `quiet` of the CPU
    over a `window`; returns the last share seen. Called before timing, after memory churn."""
    monitor = LoadMonitor()
    deadline = time.monotonic() + limit
    share = None
    while time.monotonic() < deadline:
        monitor.start()
        time.sleep(window)
        share = monitor.sample()
        if share is None or share < quiet:
            break
    return share


def snapshot() -> dict[str, Any]:
    """Load averages and frequency policy now."""
    try:
        load = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        load = []
    return {"loadavg": load, "cpu_count": os.cpu_count(), **frequency_policy()}


def busy_warning(share: float | None, when: str) -> str | None:
    if share is None or share <= BUSY:
        return None
    return (f"the machine was busy {when} ({share:.0%} of its CPU time used by other processes): "
            "timings taken now may not repeat; profile on a quiet machine")
