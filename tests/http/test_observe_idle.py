"""A finished request is recorded (counted and logged) once the server has nothing else to
run, not before the next request: :meth:`Observer.serve`."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import pytest
import trio
import trio.testing

from bodhi_trio._core._state import ServerState
from bodhi_trio._http import _observe
from bodhi_trio._http._observe import RECORD_WITHIN, Observer
from bodhi_trio._http._request_scope import note_request

CHAT = "/v1/chat/completions"


async def _app(scope: object, receive: object, send: Callable[[object], Awaitable[None]]) -> None:
    note_request(route=CHAT, alias="a:1")
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"{}", "more_body": False})


async def _send(message: object) -> None:
    pass


async def _one_request(observer: Observer) -> None:
    scope = {"type": "http", "method": "POST", "path": CHAT}
    await observer.middleware(_app)(scope, None, _send)


def _counted(observer: Observer) -> float:
    value = observer.registry.get_sample_value(
        "bodhi_requests_total", {"alias": "a:1", "route": CHAT, "status": "200"}
    )
    return value or 0.0


def _observer() -> Observer:
    return Observer(lambda: ServerState("cpu"), lambda alias: alias == "a:1")


def test_the_idle_wait_is_trios() -> None:
    """The observer's idle wait is trio.testing's, taken from where it does not import
    pytest: a trio that moved it fails here, not in a server."""
    assert vars(_observe)["wait_all_tasks_blocked"] is trio.testing.wait_all_tasks_blocked


async def test_recorded_once_idle_not_while_a_task_runs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="bodhi_trio.access")
    observer = _observer()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(observer.serve)
            await _one_request(observer)
            assert _counted(observer) == 0  # this task still runs: nothing recorded yet
            assert not caplog.records
            # A longer cushion than the observer's: it records first, then this wakes.
            await trio.testing.wait_all_tasks_blocked(0.01)
            assert _counted(observer) == 1
            assert [r.getMessage().split(" ttfb=")[0] for r in caplog.records] == [
                f"POST {CHAT} a:1 200"
            ]
            nursery.cancel_scope.cancel()


async def test_a_server_never_idle_records_within_the_bound() -> None:
    """A task that is always runnable keeps the server from idling: the record comes
    after :data:`RECORD_WITHIN` all the same."""
    observer = _observer()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(observer.serve)
            await _one_request(observer)
            ended = trio.current_time()
            while _counted(observer) == 0:
                await trio.lowlevel.checkpoint()  # runnable again at once: never idle
            assert trio.current_time() - ended >= RECORD_WITHIN
            nursery.cancel_scope.cancel()


async def test_a_scrape_and_a_stop_record_what_waits() -> None:
    observer = _observer()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(observer.serve)
            await _one_request(observer)
            assert 'status="200"} 1.0' in observer.render().decode()  # recorded first
            await _one_request(observer)
            nursery.cancel_scope.cancel()  # the second is recorded as serve() stops
    assert _counted(observer) == 2
    await _one_request(observer)  # no longer served: recorded as it ends
    assert _counted(observer) == 3


async def test_a_record_that_fails_is_logged_and_the_rest_go_on(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    observer = _observer()
    original = observer._record
    calls: list[str] = []

    def failing_once(*args: object) -> None:
        if not calls:
            calls.append("failed")
            raise RuntimeError("a bug")
        original(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(observer, "_record", failing_once)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(observer.serve)
            await _one_request(observer)
            await _one_request(observer)
            await trio.testing.wait_all_tasks_blocked(0.01)
            nursery.cancel_scope.cancel()
    assert _counted(observer) == 1
    assert any("could not be recorded" in r.getMessage() for r in caplog.records)
