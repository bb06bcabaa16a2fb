"""Ray token authentication: one token per installation, in the hwsearch data folder.

A Ray cluster runs any code a client sends it, so every cluster hwsearch starts (`hwsearch
cluster start`, `hwsearch worker`, the local cluster of `hw.Client()`) requires Ray's token
authentication (Ray 2.5x: `RAY_AUTH_MODE=token`). The token is generated on first use and kept
in the data folder with mode 0600; every Ray process finds it through `RAY_AUTH_TOKEN_PATH`, so
the token itself is never on a command line. Other machines of the cluster need a copy of that
file at the same place in their own data folder (or `RAY_AUTH_TOKEN_PATH` naming it).

Opting out is explicit: `--insecure`, or `RAY_AUTH_MODE=disabled` in the environment (Ray's own
switch); a token the user already gave Ray (`RAY_AUTH_TOKEN` or `RAY_AUTH_TOKEN_PATH`) is used
as it is.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

from hwsearch.errors import HwsearchError

MODE_ENV = "RAY_AUTH_MODE"
TOKEN_ENV = "RAY_AUTH_TOKEN"
TOKEN_PATH_ENV = "RAY_AUTH_TOKEN_PATH"
TOKEN_FILE = "ray-auth-token"
SECRET_ENVS = ("HWSEARCH_DB",)  # what Ray's processes must not inherit (a database URL may hold a password)
INSECURE_WARNING = (
    "warning: Ray token authentication is off ({why}): anyone who reaches this node's ports can run code on "
    "every machine of the cluster; use it only on a network you trust"
)


def token_path() -> Path:
    """Where this installation keeps its Ray token."""
    from hwsearch.config import data_dir

    return data_dir() / TOKEN_FILE


def token_in_use() -> str:
    """The token Ray's processes started from here use: RAY_AUTH_TOKEN_PATH, the environment's
    RAY_AUTH_TOKEN, or this installation's file."""
    if os.environ.get(TOKEN_PATH_ENV):
        return os.environ[TOKEN_PATH_ENV]
    return f"${TOKEN_ENV}" if os.environ.get(TOKEN_ENV) else str(token_path())


def ensure_token() -> Path:
    """The token file, created (256 random bits, mode 0600) when there is none yet."""
    path = token_path()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        check_token_file(path)
        return path
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_hex(32))
    return path


def check_token_file(path: Path) -> None:
    """A token file others cannot read, holding something."""
    try:
        info = path.stat()
    except OSError as err:
        raise HwsearchError(f"cannot read the Ray token {path} ({err.strerror or err}); accepted: a token file "
                            "readable by this user") from None
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise HwsearchError(f"the Ray token {path} is readable by other users (mode {stat.S_IMODE(info.st_mode):04o}); "
                            f"accepted: mode 0600 (chmod 600 {path})")
    if info.st_size == 0:
        raise HwsearchError(f"the Ray token {path} is empty; accepted: the token file of the cluster's head")


def opted_out(insecure: bool = False) -> str | None:
    """Why authentication is off (`--insecure` or RAY_AUTH_MODE=disabled), or None when it is on."""
    if insecure:
        return "--insecure"
    if os.environ.get(MODE_ENV, "").strip().lower() == "disabled":
        return f"{MODE_ENV}=disabled"
    return None


def ray_env(insecure: bool = False, create: bool = True) -> dict[str, str]:
    """The environment variables that make a Ray process (node or driver) use token authentication.

    `create`: generate the token when there is none (a head, a local cluster); a node or driver
    joining another machine's cluster needs that machine's token and is refused without one.
    """
    if opted_out(insecure):
        return {MODE_ENV: "disabled"}
    if os.environ.get(TOKEN_ENV) or os.environ.get(TOKEN_PATH_ENV):
        return {MODE_ENV: "token"}  # the user handed Ray a token already
    path = token_path()
    if create:
        ensure_token()
    elif not path.exists():
        raise HwsearchError(
            f"no Ray token at {path}, and the cluster requires the token of its head; accepted: copy the head's "
            f"token file (`{TOKEN_FILE}` in its hwsearch data folder) to {path} with mode 0600, set {TOKEN_PATH_ENV} "
            f"to a copy, or {MODE_ENV}=disabled for a cluster started with --insecure"
        )
    else:
        check_token_file(path)
    return {MODE_ENV: "token", TOKEN_PATH_ENV: str(path)}


def node_env(insecure: bool = False, create: bool = True) -> dict[str, str]:
    """The whole environment for `ray start`: this one, less secrets, plus `ray_env`."""
    env = {k: v for k, v in os.environ.items() if k not in SECRET_ENVS}
    env.update(ray_env(insecure, create))
    return env


_applied: dict[str, str] = {}


def apply_to_driver(create: bool) -> None:
    """Make this process a Ray driver with the token (before `ray.init`), unless the user chose a
    mode in the environment. Ray's token cache is reset, so a process that changed its data
    folder (tests) uses the new token."""
    ours = all(os.environ.get(k) == v for k, v in _applied.items()) and bool(_applied)
    if MODE_ENV in os.environ and not ours:
        return
    for key in _applied:
        os.environ.pop(key, None)
    env = ray_env(False, create)
    os.environ.update(env)
    _applied.clear()
    _applied.update(env)
    try:
        from ray._raylet import AuthenticationTokenLoader, Config

        Config.initialize("")  # Ray reads RAY_AUTH_MODE into its config once; read it again
        AuthenticationTokenLoader.instance().reset_cache()
    except (ImportError, AttributeError):  # pragma: no cover - a Ray without token authentication
        pass
