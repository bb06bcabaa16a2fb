"""`hwsearch worker` and `hwsearch cluster`: the Ray cluster devices are profiled in."""

from __future__ import annotations

import typer

from hwsearch.cli.common import emit_json
from hwsearch.cli.root import app
from hwsearch.errors import HwsearchError

cluster_app = typer.Typer(help="The Ray cluster devices are profiled in: start or stop its head, see its nodes.",
                          no_args_is_help=True)
app.add_typer(cluster_app, name="cluster")


RAY_EXTRA = {"allow_extra_args": True, "ignore_unknown_options": True}


@app.command("worker", context_settings=RAY_EXTRA)
def worker(
    ctx: typer.Context,
    device: str = typer.Option(..., "--device", help="Name this machine offers, as device:NAME (e.g. orin)."),
    address: str = typer.Option(..., "--address", help="The head's HOST:PORT (printed by `hwsearch cluster start`)."),
    threads: int | None = typer.Option(None, "--threads", min=1, help="Threads per kernel (default: all cores of this machine)."),
    backend: str = typer.Option("cpu", "--backend", help="cpu | cuda: which kernels this device runs."),
    num_cpus: int = typer.Option(0, "--num-cpus", min=0, help="CPU slots offered to other Ray work (0: only profiling runs here)."),
    detach: bool = typer.Option(False, "--detach", help="Return once the node runs (stop it with `hwsearch cluster stop`)."),
    node_ip: str | None = typer.Option(None, "--node-ip-address", help="Address other nodes reach this one on (default: this machine's interface toward the head)."),
    temp_dir: str | None = typer.Option(None, "--temp-dir", help="Ray's folder for this node (default: Ray's, /tmp/ray)."),
    insecure: bool = typer.Option(False, "--insecure", help="Join a head started with --insecure (no token authentication)."),
) -> None:
    """Join a Ray cluster as a node offering device:NAME, after checking that every kernel runs here.

    The node authenticates with the head's token: a copy of the head's `ray-auth-token` in this
    machine's hwsearch data folder (or RAY_AUTH_TOKEN_PATH). Options after `--` go to `ray start`
    unchanged (ports, object store size ...).
    """
    from hwsearch import ray_auth
    from hwsearch.profilers.cluster import check_device_name, check_reachable
    from hwsearch.profilers.threads import check_threads
    from hwsearch.profilers.worker import self_check, start_worker

    check_device_name(device)
    check_threads(threads)
    check_reachable(address)
    ray_auth.ray_env(insecure, create=False)  # no token: one line now, not after the self-check
    typer.echo(f"self-check: every {backend} kernel against the fp64 reference ...", err=True)
    report = self_check(backend, threads)
    typer.echo(f"self-check passed: {len(report.kernels)} implementations on {report.cases} shapes", err=True)
    typer.echo(f"joining {address} as device:{device}" + ("" if detach else " (Ctrl+C stops this node)"), err=True)
    code = start_worker(device, address, threads=threads, num_cpus=num_cpus, backend=backend, block=not detach,
                        node_ip=node_ip, temp_dir=temp_dir, extra_args=list(ctx.args), insecure=insecure)
    if code != 0:
        raise HwsearchError(f"`ray start` exited with status {code} (its output is above); accepted: a reachable head "
                            "and a Ray version equal to the head's")
    if detach:
        typer.echo(f"device:{device} is offered; profile it with `hwsearch profile --device {device} --address {address}`")
    else:
        typer.echo(f"device:{device} left the cluster", err=True)


@cluster_app.command("start", context_settings=RAY_EXTRA)
def cluster_start(
    ctx: typer.Context,
    port: int = typer.Option(6379, "--port", min=1, max=65535, help="Port workers and drivers connect to."),
    num_cpus: int | None = typer.Option(None, "--num-cpus", min=0, help="CPU slots of the head (default: its cores)."),
    node_ip: str | None = typer.Option(None, "--node-ip-address", help="Address workers reach the head on (default: this machine's outgoing interface)."),
    block: bool = typer.Option(False, "--block", help="Stay in the foreground (Ctrl+C stops the head)."),
    dashboard: bool = typer.Option(False, "--dashboard", help="Also start Ray's dashboard."),
    temp_dir: str | None = typer.Option(None, "--temp-dir", help="Ray's folder for this node (default: Ray's, /tmp/ray)."),
    insecure: bool = typer.Option(False, "--insecure", help="No token authentication (only on a network you trust)."),
) -> None:
    """Start the head of a Ray cluster on this machine (`ray start --head`).

    Clients and workers must present this installation's Ray token (generated on first use in the
    hwsearch data folder, mode 0600) unless --insecure. Options after `--` go to `ray start`
    unchanged (ports, object store size ...).
    """
    from hwsearch import ray_auth
    from hwsearch.profilers.worker import reachable_ip, start_head

    node_ip = node_ip or reachable_ip()
    code = start_head(port=port, num_cpus=num_cpus, node_ip=node_ip, block=block, temp_dir=temp_dir, dashboard=dashboard,
                      extra_args=list(ctx.args), insecure=insecure)
    if code != 0:
        raise HwsearchError(f"`ray start --head` exited with status {code} (its output is above); accepted: a free --port")
    if not block:
        typer.echo(f"head running at {node_ip}:{port}; on each device run: "
                   f"hwsearch worker --device NAME --address {node_ip}:{port}")
        if not ray_auth.opted_out(insecure):
            typer.echo(f"token: {ray_auth.token_in_use()} (copy it, mode 0600, to `{ray_auth.TOKEN_FILE}` in each "
                       "device's hwsearch data folder, or point RAY_AUTH_TOKEN_PATH at a copy)")


@cluster_app.command("stop")
def cluster_stop() -> None:
    """Stop the Ray nodes this machine started with `hwsearch cluster start` or `hwsearch worker --detach`."""
    from hwsearch.profilers.worker import stop_recorded

    stopped = stop_recorded()
    if not stopped:
        typer.echo("no Ray node started by hwsearch runs on this machine")
    for node in stopped:
        what = f"device:{node['device']}" if node.get("role") == "worker" else "head"
        typer.echo(f"stopped {node.get('role')} ({what}, {node['processes']} processes)")


@cluster_app.command("status")
def cluster_status(
    address: str | None = typer.Option(None, "--address", help="The head's HOST:PORT (default: RAY_ADDRESS or the local cluster)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document."),
) -> None:
    """The cluster's nodes and the devices they offer."""
    from hwsearch.profilers.worker import cluster_status as status

    doc = status(address)
    if as_json:
        emit_json(doc)
        return
    from hwsearch.profilers.report import print_cluster_status

    print_cluster_status(doc)
