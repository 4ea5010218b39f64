"""Start Python processes that import this checkout: local gloo ranks and one-off probes.

The distributed benchmark, the overhead benchmark's memory probes and the distributed tests
start workers as ``python -m benchmarks.perf.NAME`` or ``python tests/FILE.py``; with the repository
root on ``PYTHONPATH`` those import ``benchmarks`` and ``tools`` from any working directory.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Sequence

from tools import ROOT

__all__ = ["checkout_env", "exit_worker", "launch_ranks", "local_gloo_env",
           "loopback_interface"]


def checkout_env() -> dict[str, str]:
    """This process's environment with the repository root first on ``PYTHONPATH``."""
    path = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    return {**os.environ, "PYTHONPATH": path}


def loopback_interface() -> str | None:
    """This machine's loopback network interface (for ``GLOO_SOCKET_IFNAME``), if it has one."""
    try:
        names = [name for _, name in socket.if_nameindex()]
    except (OSError, AttributeError):
        return None
    return next((n for n in names if n.startswith("lo")), None)


def local_gloo_env() -> dict[str, str]:
    """The environment for gloo ranks on this machine: this checkout importable, one torch thread
    each, loopback only."""
    env = {**checkout_env(), "OMP_NUM_THREADS": "1"}
    lo = loopback_interface()
    if lo is not None:
        env["GLOO_SOCKET_IFNAME"] = lo
    return env


def exit_worker() -> None:
    """End a rank's process now that its results are saved and its process group destroyed.

    A process group that outlives ``destroy_process_group()`` (see docs/getting-started.md,
    "Several processes") keeps gloo threads that may still be releasing the last collective's
    tensors when the interpreter shuts down; one that then needs the interpreter aborts the
    process ("terminate called without an active exception") after its work is done.
    ``os._exit`` ends the process without that shutdown.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def launch_ranks(args: Sequence[str], world: int, timeout: float
                 ) -> list[subprocess.CompletedProcess]:
    """Run ``python <args> <rank> <world>`` for each rank, gloo on loopback; bounded.

    Every wait has ``timeout``, so a hung rank fails its caller instead of blocking it; the
    processes left running are killed.
    """
    env = local_gloo_env()
    procs = [subprocess.Popen([sys.executable, *args, str(r), str(world)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for r in range(world)]
    done = []
    try:
        for p in procs:
            out, _ = p.communicate(timeout=timeout)
            done.append(subprocess.CompletedProcess(p.args, p.returncode, out))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return done
