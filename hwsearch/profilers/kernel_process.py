"""A child process that measures kernels, so the process that asked for them stays as it was.

A process that has built and run hundreds of kernels runs a whole model slower afterwards, while
the kernels themselves do not move: on a 2-vCPU AMX Xeon, vit_tiny uncompressed took 16.5 ms
end to end in a fresh process and 19.7 ms in the same process after the quick sweep's 272
kernels (those kernels, timed again there, at a median 0.98 of their first timing), and
`profile --for` four ViTs stored it at 28.3 ms against 17-19 ms timed anywhere else. Anchors,
a job's verification after `profile_missing` and the demo's calibration all time whole models
after measuring kernels; so `profile_local` measures them here (`KernelWorker`) and its caller
times models in the state a deployed model meets. A kernel that kills the process kills this
child, not the caller: the chunks already stored stay stored and the run is marked failed.

The protocol: `multiprocessing` connections (pickles, framed) over the child's stdin and a
private copy of its stdout (stray prints in the child go to stderr), one request
(`measure_many`'s arguments) and one reply (("ok", fields) or ("error", message)) at a time.
"""

from __future__ import annotations

import os
import subprocess
import sys
from multiprocessing.connection import Connection
from typing import Any

from hwsearch.errors import HwsearchError

CLOSE_S = 10.0  # how long a worker told to stop may take before it is killed


class KernelWorker:
    """`measure_many` in a child process (`python -m hwsearch.profilers.kernel_process`), started once and
    reused for every chunk; a context manager that stops it."""

    def __init__(self) -> None:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        self.process = subprocess.Popen([sys.executable, "-m", "hwsearch.profilers.kernel_process"], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, env=env)
        assert self.process.stdin is not None and self.process.stdout is not None
        self._requests = Connection(os.dup(self.process.stdin.fileno()), readable=False)
        self._replies = Connection(os.dup(self.process.stdout.fileno()), writable=False)
        self.process.stdin.close()  # the connections own the pipes now: closing requests is the child's EOF
        self.process.stdout.close()

    @property
    def pid(self) -> int:
        return self.process.pid

    def measure_many(self, tasks: list[tuple[str, dict[str, Any], str]], **kwargs: Any) -> list[dict[str, Any]]:
        """`measure.measure_many(tasks, **kwargs)`, run in the child."""
        try:
            self._requests.send({"tasks": tasks, **kwargs})
            reply = self._replies.recv()
        except (EOFError, OSError):
            reply = None
        if reply is None:
            code = self.process.wait(timeout=CLOSE_S)
            names = ", ".join(sorted({impl for _, _, impl in tasks}))
            raise HwsearchError(f"the kernel-measuring process died (exit code {code}) while measuring {len(tasks)} "
                                f"kernel(s) of {names}; the kernels measured before it are stored")
        status, value = reply
        if status != "ok":
            raise HwsearchError(f"measuring kernels failed in the kernel-measuring process: {value}")
        return value

    def close(self) -> None:
        self._requests.close()
        try:
            self.process.wait(timeout=CLOSE_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._replies.close()

    def __enter__(self) -> KernelWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def main() -> None:
    """The child's loop: a request in, `measure_many`'s fields (or the error) out, until stdin closes."""
    requests, replies = Connection(0, writable=False), Connection(os.dup(1), readable=False)
    os.dup2(2, 1)  # a print anywhere below goes to stderr, not into the replies
    try:  # Linux: die with the parent (a killed profile leaves no child timing kernels beside its rerun)
        import ctypes
        import signal

        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    from hwsearch.profilers.measure import measure_many

    while True:
        try:
            request = requests.recv()
        except EOFError:  # the parent is done
            return
        try:
            reply: tuple[str, Any] = ("ok", measure_many(request.pop("tasks"), **request))
        except Exception as err:  # noqa: BLE001 - any failure is reported to the parent, which raises it
            reply = ("error", f"{type(err).__name__}: {err}")
        try:
            replies.send(reply)
        except BrokenPipeError:  # the parent is gone
            return


if __name__ == "__main__":
    main()
