"""``hemocount count --ray``: the same run on a Ray cluster (Ray Data stages, models loaded once per worker).

Ray is optional (``pip install "hemocount[ray]"``): nothing here imports it until a Ray run starts, and
``import hemocount`` never does. The driver keeps everything a run writes (journal, CSVs, COCO, run records,
report) on the shared path of :mod:`hemocount.run`; workers decode, detect, classify and encode the
annotated images.

- :mod:`hemocount.cluster.session`: joining a cluster, or starting a quiet local instance.
- :mod:`hemocount.cluster.stages`: what a worker runs (decode, detect, classify) and what it must agree on
  with the driver (weights, engine, precision, version).
- :mod:`hemocount.cluster.counter`: the Ray Data pipeline, streaming each field's record to the driver.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hemocount.errors import HemocountError

if TYPE_CHECKING:
    from hemocount.cluster.counter import RayCounter

#: The one line a ``--ray`` run without Ray prints.
RAY_MISSING = '--ray needs Ray, which is not installed: pip install "hemocount[ray]"'


def require_ray() -> None:
    """Raise the one-line install hint unless Ray (with Ray Data) can be imported.

    Raises:
        HemocountError: Ray is missing.
    """
    try:
        import ray.data  # noqa: F401 - Ray Data is what --ray runs on
    except ImportError:
        raise HemocountError(RAY_MISSING) from None


def ray_counter(address: str | None = None) -> RayCounter:
    """The field counter of a Ray run (see :class:`hemocount.cluster.counter.RayCounter`).

    Args:
        address: ``None`` or ``local`` (start a local Ray instance on this machine's cores), ``auto`` (the
            cluster this machine belongs to), ``HOST:PORT`` or ``ray://HOST:PORT``.

    Raises:
        HemocountError: Ray is not installed, or the address is not one of the forms above.
    """
    from hemocount.cluster.session import parse_address

    address = parse_address(address)
    require_ray()
    from hemocount.cluster.counter import RayCounter

    return RayCounter(address)


__all__ = ["RAY_MISSING", "ray_counter", "require_ray"]
