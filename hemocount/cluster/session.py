"""Joining a Ray cluster, or starting a quiet local Ray instance, for the length of one run."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from hemocount.errors import HemocountError

log = logging.getLogger("hemocount")

#: ``--ray`` without an address.
LOCAL = "local"
#: Bytes of shared memory a local instance may use for batches in flight (images of a few batches;
#: Ray's default, 30 % of RAM, is far more than a run needs on a machine shared with other work).
LOCAL_OBJECT_STORE = 2 * 1024**3
_HOST_PORT = re.compile(r"^[A-Za-z0-9_.\-\[\]:]+:\d+$")


def parse_address(address: str | None) -> str:
    """Check a ``--ray`` address: ``local`` (or None), ``auto``, ``HOST:PORT`` or ``ray://HOST:PORT``.

    A path here is a slip of ``--ray SRC`` (``--ray`` takes an optional value), so it is refused with a hint.

    Raises:
        HemocountError: Anything else.
    """
    if address is None or address == LOCAL:
        return LOCAL
    if address == "auto" or address.startswith("ray://") or _HOST_PORT.match(address):
        return address
    raise HemocountError(f"--ray {address}: not a Ray address (give none, 'local', 'auto', HOST:PORT or "
                         "ray://HOST:PORT; put --ray after SRC, or write --ray local)")


def quiet_ray_env() -> None:
    """Environment of a Ray run started by hemocount (set only where the user has not set it)."""
    # Ray reports usage statistics unless told not to: hemocount sends nothing anywhere.
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Ray's C++ core writes operational notes (e.g. on actors restartable from the object store) to the
    # driver's stderr; errors that matter reach the driver as exceptions.
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")


@contextmanager
def ray_session(address: str, cpus: int | None = None) -> Iterator[dict[str, Any]]:
    """Connect to Ray for a run; yields what run.json records of it (address, nodes, CPUs, version).

    ``local`` starts an instance on this machine, limited to ``cpus`` (default: the cores hemocount may
    use), reachable on the loopback address only, without dashboard, and stops it afterwards. A Ray
    connection the caller already opened (``ray.init`` in a script or test) is used as it is and left open.
    Worker output goes to Ray's log files, never to this process's stdout.

    Raises:
        HemocountError: No cluster at ``address``.
    """
    import ray

    from hemocount.io import _native_stderr
    from hemocount.runtime import core_count

    owned = not ray.is_initialized()
    if owned:
        quiet_ray_env()
        common: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.ERROR}
        chatter: list[str] = []
        try:
            # Ray's C++ core announces its log level on fd 2 as it starts: kept off the user's stderr.
            with _native_stderr(chatter):
                if address == LOCAL:
                    ray.init(num_cpus=cpus or core_count(), include_dashboard=False, _node_ip_address="127.0.0.1",
                             object_store_memory=LOCAL_OBJECT_STORE, **common)
                else:
                    ray.init(address=address, **common)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise HemocountError(f"--ray {address}: cannot connect to a Ray cluster ({exc})") from None
        for line in chatter:
            log.debug("ray: %s", line)
    # Ray prints the cluster's error messages (a task retried, a worker died) on the driver's stdout, which
    # holds hemocount's results: they go to the debug log instead (Ray's log files keep them too).
    worker_module = ray._private.worker
    printer = getattr(worker_module, "print_to_stdstream", None)
    if printer is not None:
        worker_module.print_to_stdstream = _to_debug_log
    try:
        # Ray Data's own progress bars and execution logs would interleave with hemocount's single bar, and it
        # logs a worker's failure with a traceback: hemocount reports it in one line (and Ray's log files keep it).
        logging.getLogger("ray.data").setLevel(logging.CRITICAL)
        alive = [n for n in ray.nodes() if n.get("Alive")]
        yield {"runner": "ray", "address": address, "ray": ray.__version__, "nodes": len(alive),
               "cpus": int(ray.cluster_resources().get("CPU", 0)),
               "largest_node_cpus": max((float(n.get("Resources", {}).get("CPU", 0)) for n in alive), default=0.0)}
    finally:
        if owned:
            ray.shutdown()
        if printer is not None:
            worker_module.print_to_stdstream = printer


def _to_debug_log(data: dict[str, Any], ignore_prefix: bool = False) -> None:
    for line in data.get("lines", []):
        log.debug("ray (%s): %s", data.get("pid", "?"), line)


__all__ = ["LOCAL", "parse_address", "quiet_ray_env", "ray_session"]
