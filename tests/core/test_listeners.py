"""The state-listener hub: departed consumers are removed quietly, buggy listeners log once.

Issue 10: 300 ``GET /bodhi/v1/events`` clients that never read, 300 requests,
then all clients closed — the log got a ``BrokenResourceError`` traceback for
every event still queued for every client (47,936 tracebacks, 25.6 MB in 8 s).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, cast

import attrs
import pytest
import trio
import trio.testing

from bodhi_trio._context._open import SharedContext
from bodhi_trio._core._listeners import ListenerHub, StateListener
from bodhi_trio._core._state import EventKind, ServerEvent
from bodhi_trio._http._request_scope import request_scope
from bodhi_trio._http._routes import Routes
from bodhi_trio._http._sse import DirectStream

LOGGER = "bodhi_trio.listeners"


@attrs.define
class _Settings:
    sse_keepalive_secs: float = 15.0


@attrs.define
class _EventsOnlyContext:
    """What ``Routes.events`` uses of a context: its settings and listener hub."""

    hub: ListenerHub
    settings: _Settings = attrs.field(factory=_Settings)

    def add_state_listener(
        self, listener: StateListener, *, buffer: int = 256, name: str | None = None
    ) -> Callable[[], None]:
        return self.hub.add(listener, buffer=buffer, name=name)


def event(seq: int) -> ServerEvent:
    return ServerEvent(EventKind.RESPONSE, "a", "cpu", seq=seq)


def listener_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER]


async def test_event_clients_that_left_are_removed_without_tracebacks(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    clients = 5
    with trio.fail_after(10):
        # The route registers its body with the request, as it does under the app's middleware.
        async with trio.open_nursery() as nursery, request_scope():
            hub = ListenerHub(nursery)
            routes = Routes(cast(SharedContext, _EventsOnlyContext(hub)), nursery)
            streams: list[Any] = []
            for _ in range(clients):
                reply = await routes.events()  # the real route: a body nobody reads
                assert isinstance(reply.body, DirectStream)
                streams.append(reply.body)
            for seq in range(300):  # more than a listener's queue (256) holds
                hub.notify(event(seq))
            await trio.testing.wait_all_tasks_blocked()
            for stream in streams:
                await stream.aclose()  # each client closes its connection
            for seq in range(300, 310):
                hub.notify(event(seq))
            await trio.testing.wait_all_tasks_blocked()
            assert hub.statistics() == []
            nursery.cancel_scope.cancel()
    records = listener_records(caplog)
    assert [r for r in records if r.exc_info is not None] == []
    # Per client: at most its "too slow" warning while it did not read, and one debug line
    # when it left — not one record per event that was still queued for it.
    assert len([r for r in records if r.levelno >= logging.WARNING]) <= clients
    removed = [r for r in records if r.levelno == logging.DEBUG]
    assert len(removed) == clients
    assert all("consumer has left" in r.getMessage() for r in removed)


async def test_a_listener_whose_consumer_left_is_removed_without_remove_being_called(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            hub = ListenerHub(nursery)
            send, receive = trio.open_memory_channel[ServerEvent](0)
            hub.add(send.send, name="forwarder")
            hub.add(_ignore, name="steady")
            receive.close()  # the consumer is gone; nobody calls the remove function
            for seq in range(50):
                hub.notify(event(seq))
            await trio.testing.wait_all_tasks_blocked()
            stats = hub.statistics()
            nursery.cancel_scope.cancel()
    assert [(s.name, s.delivered, s.failed) for s in stats] == [("steady", 50, 0)]
    records = listener_records(caplog)
    assert [(r.levelno, r.exc_info) for r in records] == [(logging.DEBUG, None)]
    assert "forwarder" in records[0].getMessage()


async def _ignore(event: ServerEvent) -> None:
    pass


async def test_a_failing_listener_is_logged_once_with_its_traceback_then_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    calls = 0

    async def buggy(event: ServerEvent) -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError(f"listener bug on event {event.seq}")

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            hub = ListenerHub(nursery)
            hub.add(buggy, name="buggy")
            for seq in range(250):
                hub.notify(event(seq))
                if seq % 100 == 99:
                    await trio.testing.wait_all_tasks_blocked()  # keep within the queue
            await trio.testing.wait_all_tasks_blocked()
            (stats,) = hub.statistics()
            nursery.cancel_scope.cancel()
    assert calls == 250  # it keeps receiving
    assert (stats.delivered, stats.dropped, stats.failed, stats.queued) == (0, 0, 250, 0)
    records = listener_records(caplog)
    with_traceback = [r for r in records if r.exc_info is not None]
    assert len(with_traceback) == 1
    assert "listener bug on event 0" in caplog.text
    counted = [r.getMessage() for r in records if r.exc_info is None]
    assert len(counted) == 2
    assert "failed 100 times" in counted[0]
    assert "failed 200 times" in counted[1]
    assert "listener bug on event 199" in counted[1]


async def test_notify_after_a_listeners_task_was_cancelled_neither_raises_nor_keeps_it() -> None:
    # CI found this at shutdown: the root nursery's cancellation ended the delivery tasks,
    # then stopping a model emitted STOP into a channel whose receive side had closed,
    # and BrokenResourceError escaped from the scheduler's close.
    with trio.fail_after(10):
        async with trio.open_nursery() as outer:
            hub = ListenerHub(outer)
            async with trio.open_nursery() as delivery:
                hub._nursery = delivery  # the listener's task runs where we can cancel it
                hub.add(_ignore, name="cancelled")
                await trio.testing.wait_all_tasks_blocked()
                delivery.cancel_scope.cancel()
            hub._nursery = outer
            hub.notify(event(1))  # raised BrokenResourceError before the fix
            assert hub.statistics() == []
            outer.cancel_scope.cancel()


async def test_a_listener_of_some_kinds_is_not_woken_by_the_others() -> None:
    """The metrics listener reads lifecycle events only; the per-request RESPONSE events
    must neither reach it nor wake its task (a task step per request)."""
    received: list[EventKind] = []

    async def listener(event: ServerEvent) -> None:
        received.append(event.kind)

    steps: list[str] = []

    class _Steps(trio.abc.Instrument):
        def before_task_step(self, task: trio.lowlevel.Task) -> None:
            steps.append(task.name)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            hub = ListenerHub(nursery)
            hub.add(listener, name="lifecycle", kinds={EventKind.START, EventKind.STOP})
            await trio.testing.wait_all_tasks_blocked()
            trio.lowlevel.add_instrument(_Steps())
            for seq in range(50):
                hub.notify(event(seq))  # RESPONSE
            await trio.testing.wait_all_tasks_blocked()
            woken = steps.count("listener:lifecycle")
            hub.notify(ServerEvent(EventKind.START, "a", "cpu", seq=50))
            hub.notify(ServerEvent(EventKind.CRASHED, "a", "cpu", seq=51))
            hub.notify(ServerEvent(EventKind.STOP, "a", "cpu", seq=52))
            await trio.testing.wait_all_tasks_blocked()
            # the name counted is the listener's task: it did wake for START and STOP
            assert steps.count("listener:lifecycle") > woken
            (stats,) = hub.statistics()
            nursery.cancel_scope.cancel()
    assert woken == 0
    assert received == [EventKind.START, EventKind.STOP]
    assert (stats.delivered, stats.dropped) == (2, 0)
