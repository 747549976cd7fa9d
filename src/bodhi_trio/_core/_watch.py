"""The watch on a loaded child: is it alive, and is anything waiting on it for nothing?

One task per loaded child, in the root nursery, cancelled with the child
(``Slot.watch``). Every ``interval`` seconds it asks the child's ``/health``
(answered by llama-server's HTTP threads, not its inference loop, so a busy
child still answers) and looks at how long the oldest read of a response from
this child has waited for a byte (the upstream pool keeps that time per read:
nothing is timed per read on the relay's hot path).

- ``/health`` has not answered for ``timeout`` seconds: the child is **hung**
  (``kill -STOP``, a wedged process). ``on_hung`` ends its responses with an
  error, kills it and marks it ``hung``; the next request loads a fresh one.
- A read has waited ``timeout`` seconds: if the child says (``/slots``, which
  its inference loop answers) that no slot is processing, the response will
  never come, so those reads end with an error. A slot that is processing, a
  long prompt for instance, is not a hang; neither is a ``/slots`` that does not
  answer in time (the loop answers it between batches, and one batch of a long
  prompt can take a while on a CPU): those reads go on waiting, and a child that
  is truly gone is caught by ``/health``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from bodhi_trio._core._slot import Slot
    from bodhi_trio._transport._loopback import Sender

__all__ = ["watch_child"]

_MIN_INTERVAL = 0.25
_MAX_INTERVAL = 5.0


def _interval(timeout: float) -> float:
    """A quarter of the timeout, so a hang is seen within about 1.25 timeouts."""
    return min(max(timeout / 4, _MIN_INTERVAL), _MAX_INTERVAL)


def _slots_busy(body: bytes) -> bool | None:
    """Whether ``/slots`` says a slot is processing; ``None`` if the answer is unreadable."""
    try:
        slots = json.loads(body)
    except ValueError:
        return None
    if not isinstance(slots, list):
        return None
    return any(isinstance(slot, dict) and slot.get("is_processing") for slot in slots)


async def watch_child(
    slot: Slot,
    sender: Sender,
    idle_timeout: float,
    on_hung: Callable[[Slot, str], None],
    on_healthy: Callable[[], None] | None = None,
) -> None:
    """Watch ``slot``'s child until ``slot.watch`` is cancelled or the child is hung.

    Args:
        slot: The loaded child.
        sender: Asks the child (``probe``) and knows its reads (``waiting_since``).
        idle_timeout: ``BODHI_UPSTREAM_IDLE_TIMEOUT_SECS``.
        on_hung: Called once, with a message, when ``/health`` stopped answering.
        on_healthy: Called after each healthy answer (the scheduler measures the
            child's memory then).

    Cancellation: the way it ends; nothing to clean up.
    """
    address = slot.server.address
    timeout = idle_timeout
    interval = _interval(timeout)
    with slot.watch:
        last_healthy = trio.current_time()
        while True:
            await trio.sleep(interval)
            health = await sender.probe(address, "/health", within=interval)
            now = trio.current_time()
            if health is not None and health.status == 200:
                last_healthy = now
                if on_healthy is not None:
                    on_healthy()
            elif now - last_healthy >= timeout:
                on_hung(
                    slot,
                    f"llama-server for {slot.alias.alias!r} (pid {slot.server.pid}) has not"
                    f" answered its health check for {now - last_healthy:.0f} s"
                    " (BODHI_UPSTREAM_IDLE_TIMEOUT_SECS): it was killed, and the next"
                    " request loads it again",
                )
                return
            waiting_since = sender.waiting_since(address)
            if waiting_since is None or now - waiting_since < timeout:
                continue
            slots = await sender.probe(address, "/slots", within=interval)
            busy = None if slots is None or slots.status != 200 else _slots_busy(slots.body)
            if busy is False:
                await sender.abort_waiting(
                    address,
                    since_before=now - timeout,
                    reason=f"llama-server sent nothing for {timeout:g} s"
                    " (BODHI_UPSTREAM_IDLE_TIMEOUT_SECS) and is not working on the request",
                )
