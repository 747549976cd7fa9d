"""The load of one benchmark run: workers sending streaming requests back to back.

Each worker keeps one HTTP/1.1 keep-alive connection and sends its next request as
soon as the last response ended. The hot path reads raw socket bytes: the response
head is parsed once (:func:`bodhi_trio._core._http1.split_head`), chunked framing is
removed by :class:`ChunkedDecoder`, and events are counted by :class:`._scan._Scan`
with ``bytes.count`` on what arrived.

Reads go into one buffer of the load's (``readv``), copied out at once: a ``recv(256 KiB)``
allocates 256 KiB per call and costs ~9 µs where the copy of a small event costs ~1 µs (a
paced stream brings one event per read). After a short read, the socket was drained: the next
read waits for it to be readable first, instead of failing once with EAGAIN (Trio's
``recv`` tries first, then waits).
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import time
from typing import TYPE_CHECKING

import attrs
import trio

from bodhi_trio._bench._scan import FRAMINGS, _Scan, _Totals
from bodhi_trio._core._http1 import ChunkedDecoder, FramingError, ResponseHead, split_head

if TYPE_CHECKING:
    from bodhi_trio._bench._client import BenchConfig
    from bodhi_trio._core._address import Address

__all__ = ["BenchLoad"]

_RECV = 262144
_SHORT = 4096  # a read below this drained the socket: the next one waits first


@attrs.define(eq=False)
class BenchLoad:
    """The requests of one run: built once, sent by :meth:`worker` tasks, counted in ``totals``.

    Attributes:
        config: What to run.
        address: Where to connect.
        path: The request path (``/v1/chat/completions``, ``/v1/completions`` under the
            base, or ``/api/chat``).
        totals: What every worker counted so far.
        run_id: Random, so that each request's ``user`` is unique across runs.
    """

    config: BenchConfig
    address: Address
    path: str
    totals: _Totals = attrs.field(factory=_Totals)
    run_id: str = attrs.field(factory=lambda: os.urandom(4).hex())
    _ids: itertools.count[int] = attrs.field(factory=itertools.count)
    _body: tuple[bytes, bytes] = attrs.field(init=False)
    _head: bytes = attrs.field(init=False)
    _buffer: memoryview = attrs.field(init=False, factory=lambda: memoryview(bytearray(_RECV)))

    def __attrs_post_init__(self) -> None:
        cfg = self.config
        body: dict[str, object] = {"model": cfg.model, "stream": True}
        if cfg.endpoint == "ollama":  # Ollama's /api/chat: its own names, no usage option
            body["options"] = {"num_predict": cfg.max_tokens}
        else:
            body["max_tokens"] = cfg.max_tokens
        if cfg.endpoint == "completions":
            body["prompt"] = cfg.prompt
        else:
            body["messages"] = [{"role": "user", "content": cfg.prompt}]
        if cfg.ignore_eos and cfg.endpoint != "ollama":
            body["ignore_eos"] = True
        if cfg.include_usage and cfg.endpoint != "ollama":
            body["stream_options"] = {"include_usage": True}
        body.update(cfg.extra_body or {})
        body["user"] = "@@USER@@"
        before, _, after = json.dumps(body, separators=(",", ":")).encode().partition(b"@@USER@@")
        self._body = (before, after)
        auth = f"Authorization: Bearer {cfg.api_key}\r\n" if cfg.api_key else ""
        self._head = (
            f"POST {self.path} HTTP/1.1\r\nHost: {self.address.host_header}\r\n"
            f"Content-Type: application/json\r\nAccept: text/event-stream\r\n{auth}"
        ).encode()

    async def _read(self, sock: trio.socket.SocketType, wait: bool) -> tuple[bytes, float]:
        """The next bytes from ``sock`` (b"" at its end) and when they were read; ``wait``:
        wait until it is readable before the first try. A checkpoint either way.

        The time is taken as the read returns, not once its bytes were decoded: a read that
        brings 100 KiB of a fast stream takes the client most of a millisecond to de-chunk,
        and the first event's time must not depend on how much came with it.

        Raises:
            OSError: The read failed.
        """
        fd, buffer = sock.fileno(), self._buffer
        if not wait:
            try:
                n = os.readv(fd, [buffer])
            except BlockingIOError:
                pass
            else:
                read_at = time.perf_counter()
                data = bytes(buffer[:n])  # before the checkpoint: the buffer is shared
                await trio.lowlevel.checkpoint()
                return data, read_at
        while True:
            await trio.lowlevel.wait_readable(fd)
            try:
                n = os.readv(fd, [buffer])
            except BlockingIOError:
                continue
            return bytes(buffer[:n]), time.perf_counter()

    def _request(self, user: str) -> bytes:
        body = self._body[0] + user.encode() + self._body[1]
        return self._head + b"Content-Length: %d\r\n\r\n%s" % (len(body), body)

    def _ticket(self) -> bool:
        if self.config.requests is not None and self.totals.started >= self.config.requests:
            return False
        self.totals.started += 1
        return True

    async def _connect(self) -> trio.SocketStream | None:
        try:
            with trio.fail_after(self.config.timeout):
                stream = await self.address.connect()
        except (OSError, trio.TooSlowError) as exc:
            self.totals.error("connect", repr(exc))
            await trio.sleep(0.05)  # a down server must not become a busy loop
            return None
        if self.address.unix_socket is None:
            stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return stream

    async def worker(self, start_after: float = 0.0) -> None:
        """Send requests one after another until the run's request count is reached, the
        first ``start_after`` seconds from now."""
        stream: trio.SocketStream | None = None
        if start_after > 0:
            await trio.sleep(start_after)
        try:
            while self._ticket():
                reused = stream is not None
                if stream is None and (stream := await self._connect()) is None:
                    continue
                keep: bool | None = False
                with trio.move_on_after(self.config.timeout) as scope:
                    user = f"bench-{self.run_id}-{next(self._ids)}"
                    keep = await self._one(stream, user, reused)
                if scope.cancelled_caught:
                    self.totals.error("timeout", f"no end after {self.config.timeout} s")
                if not keep:
                    stream.socket.close()
                    stream = None
                if keep is None:  # a stale kept-alive connection: again on a new one
                    self.totals.started -= 1
        finally:
            if stream is not None:
                stream.socket.close()

    async def _one(self, stream: trio.SocketStream, user: str, reused: bool) -> bool | None:
        """One request: whether the connection can be reused (None: it was stale)."""
        totals, sock = self.totals, stream.socket
        start = time.perf_counter()
        data = b""
        read_at = start
        try:
            await stream.send_all(self._request(user))
            while (found := split_head(data)) is None:
                more, read_at = await self._read(sock, True)
                if not more:
                    break
                data += more
        except (OSError, trio.BrokenResourceError) as exc:
            if reused and not data:
                return None
            totals.error("broken", repr(exc))
            return False
        except FramingError as exc:
            totals.error("broken", f"bad response head: {exc}")
            return False
        if found is None:
            if reused and not data:
                return None
            totals.error("broken", f"no response head: {data[:80]!r}")
            return False
        head, body = found
        scan = _Scan(start, FRAMINGS[self.config.endpoint], self.config.pace)
        try:
            return await self._body_loop(sock, body, read_at, head, scan, user)
        except trio.Cancelled:
            if head.status == 200:
                totals.cut += 1
            raise
        except (OSError, ValueError) as exc:
            totals.error("broken", repr(exc))
            return False

    async def _body_loop(
        self,
        sock: trio.socket.SocketType,
        data: bytes,
        read_at: float,
        head: ResponseHead,
        scan: _Scan,
        user: str,
    ) -> bool:
        totals, cfg = self.totals, self.config
        dechunk = ChunkedDecoder() if head.chunked else None
        left = -1 if head.length is None else head.length  # -1: until the connection closes
        keep = head.keep_alive and head.delimited
        limit = cfg.disconnect_after
        error_body = b""
        while True:
            if data:
                totals.bytes += len(data)
                if dechunk is not None:
                    payload = dechunk.feed(data)
                else:
                    payload = data[:left] if left >= 0 else data
                    left = left - len(payload) if left >= 0 else -1
                if head.status != 200:
                    error_body = (error_body + payload)[:500]
                elif payload:
                    scan.feed(payload, read_at, totals)
                    if limit is not None and scan.events >= limit:
                        totals.closed[user] = time.monotonic()
                        sock.close()
                        totals.disconnects += 1
                        totals.done += 1
                        return False
            # Checked before reading again: a body of length 0 has no bytes to wait for.
            if (dechunk is not None and dechunk.done) or left == 0:
                break
            data, read_at = await self._read(sock, len(data) < _SHORT)
            if not data:
                if dechunk is None and left < 0:
                    keep = False
                    break
                raise ValueError("connection closed before the end of the body")
        if head.status != 200:
            totals.error(f"status {head.status}", error_body.decode("utf-8", "replace"))
        elif scan.errors:
            totals.error("error event", scan.end().decode("utf-8", "replace")[-300:])
        else:
            totals.done += 1
            usage = scan.usage_tokens()
            if usage is not None:
                totals.token_fix += usage - scan.content
        return keep
