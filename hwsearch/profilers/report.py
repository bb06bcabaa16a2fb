"""Showing devices and the cluster to a person: the tables `hwsearch devices` and `hwsearch cluster status` print."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from hwsearch.console import wide_console


def device_caption(dev: dict[str, Any]) -> str:
    """Limits and the machine's state during its last profile, in a line or two."""
    parts = []
    limits = (dev.get("fingerprint") or {}).get("limits")
    if limits:
        peaks = ", ".join(f"{k} {v:.0f}" for k, v in limits.get("peak_gflops", {}).items())
        parts.append(f"memory {limits['memory_gbs']:.0f} GB/s, cache {limits['cache_gbs']:.0f} GB/s, peak GFLOP/s: {peaks}")
    state = dev.get("last_profile") or {}
    if state:
        before = (state.get("before") or {})
        load = before.get("loadavg") or []
        other = before.get("other_share")
        peak = state.get("during_peak_other_share")
        text = f"last profile: load {'/'.join(str(x) for x in load) or '?'}"
        if other is not None:
            text += f", others used {other:.0%} of the CPU before"
        if peak is not None:
            text += f" and at most {peak:.0%} during"
        if before.get("governor"):
            text += f", governor {before['governor']}"
        parts.append(text)
        parts += [f"[red]warning: {w}" for w in state.get("warnings") or []]
    if dev.get("unstable"):
        parts.append(f"{dev['unstable']} measurements flagged unstable")
    return "\n".join(parts)


def print_device_table(table: list[dict[str, Any]], console: Console | None = None) -> None:
    """Each device (`coverage.device_table`) with its measurement counts per op/format, native and emulated."""
    console = console or wide_console()
    if not table:
        console.print("No devices yet. Profile this machine with [bold]hwsearch profile --local[/bold].")
        return
    for dev in table:
        grid = Table(title=f"{dev['name']} ({dev['kind']}: {dev['hardware']}, {dev['threads']} threads)", title_justify="left",
                     caption=device_caption(dev))
        grid.add_column("op/format")
        grid.add_column("measured", justify="right")
        grid.add_column("native", justify="right")
        grid.add_column("emulated", justify="right")
        for family, counts in dev["by_op"].items():
            grid.add_row(family, str(counts["total"]), str(counts["native"]), str(counts["total"] - counts["native"]))
        grid.add_row("[bold]all", f"[bold]{dev['measurements']}", f"[bold]{dev['native']}", f"[bold]{dev['emulated']}")
        console.print(grid)


def print_cluster_status(doc: dict[str, Any], console: Console | None = None) -> None:
    """The cluster's nodes (`worker.cluster_status`) and the devices they offer."""
    grid = Table(title=f"Ray cluster at {doc['address']}", title_justify="left")
    for col in ("node", "address", "alive", "devices", "CPUs"):
        grid.add_column(col)
    for node in doc["nodes"]:
        grid.add_row(node["node_id"][:12], node["address"], "yes" if node["alive"] else "[red]no",
                     ", ".join(node["devices"]) or "-", f"{node['cpus']:g}")
    (console or wide_console()).print(grid)
    if not doc["devices"]:
        print("no node offers a device yet; on the device run: "
              f"hwsearch worker --device NAME --address {doc['address']}")
