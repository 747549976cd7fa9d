"""A deadline in wall-clock time, for tests on pytest-trio's ``mock_clock``.

The mock clock's time moves only when a test jumps it, so ``trio.fail_after`` under it
never fires: a relay that stops making progress would hang the suite instead of failing
its test. :func:`wall_deadline` cancels its block from a timer thread after ``seconds`` of
real time and fails the test.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import pytest
import trio


@contextlib.contextmanager
def wall_deadline(seconds: float) -> Iterator[None]:
    """Run the block; fail the test if it takes over ``seconds`` of wall-clock time."""
    token = trio.lowlevel.current_trio_token()
    with trio.CancelScope() as scope:

        def expire() -> None:
            with contextlib.suppress(trio.RunFinishedError):  # over: nothing to cancel
                token.run_sync_soon(scope.cancel)

        timer = threading.Timer(seconds, expire)
        timer.daemon = True
        timer.start()
        try:
            yield
        finally:
            timer.cancel()
    if scope.cancelled_caught:
        pytest.fail(f"no end within {seconds:g} s of wall-clock time (the mock clock stood)")
