"""The background writer of per-image outputs: order, bounded queue, errors never lost or swallowed."""

from __future__ import annotations

import threading
import time

import pytest

from hemocount.writeback import OrderedWriter


def test_jobs_run_in_order_on_one_thread() -> None:
    done: list[tuple[int, str]] = []
    w = OrderedWriter(depth=3)
    for k in range(20):
        w.submit(lambda k=k: (time.sleep(0.001 * (k % 3)), done.append((k, threading.current_thread().name))))
    w.drain()
    w.close()
    assert [k for k, _ in done] == list(range(20))
    assert len({name for _, name in done}) == 1 and done[0][1] != threading.current_thread().name


def test_queue_is_bounded() -> None:
    gate = threading.Event()
    w = OrderedWriter(depth=2)
    w.submit(gate.wait)
    w.submit(lambda: None)
    blocked = threading.Thread(target=w.submit, args=(lambda: None,))
    blocked.start()
    blocked.join(0.2)
    assert blocked.is_alive()  # a third job waits for the first to finish
    gate.set()
    blocked.join(2)
    assert not blocked.is_alive()
    w.close()


def test_failure_is_raised_at_drain_and_later_jobs_still_run() -> None:
    done: list[int] = []
    w = OrderedWriter()

    def fail() -> None:
        raise OSError(28, "No space left on device")

    w.submit(done.append, 1)
    w.submit(fail)
    w.submit(done.append, 2)
    with pytest.raises(OSError, match="No space"):
        w.drain()
    w.close()
    assert done == [1, 2]


def test_close_finishes_queued_jobs_without_raising() -> None:
    done: list[int] = []
    w = OrderedWriter()
    w.submit(lambda: (_ for _ in ()).throw(RuntimeError("boom")))
    for k in range(5):
        w.submit(done.append, k)
    w.close()  # as in a finally block while another error propagates
    assert done == list(range(5))
    with pytest.raises(ValueError):
        OrderedWriter(depth=0)
