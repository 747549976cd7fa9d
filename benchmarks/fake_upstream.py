#!/usr/bin/env python3
"""A fast fake llama-server for proxy benchmarks (stdlib only; runs under a plain python3).

It answers like llama-server: ``GET /health``, ``GET /slots`` and streaming or plain
``POST /v1/chat/completions`` and ``/v1/completions``, with the same SSE shape (one
``data: <json>\\n\\n`` event per HTTP chunk, ``text/event-stream``, chunked encoding, a
final chunk with ``finish_reason`` and ``timings``, a usage chunk when
``stream_options.include_usage`` is set, then ``data: [DONE]``), over HTTP/1.1 keep-alive.

Like llama-server, it listens on a Unix socket when ``--host`` ends in ``.sock`` (as
bodhi-trio starts its children), else on ``--host``/``--port`` over TCP.

Speed: one thread per connection with blocking ``sendall`` and ``TCP_NODELAY``; each event
is spliced from bytes built once per request (only a fixed-width token counter changes), and
written with exactly one ``send`` per event. ``--batch N`` joins N events per write, to show
what batching would buy (never for the "one write per event" numbers).

Pacing: ``--token-delay S`` (or a request's ``"bench_token_delay": S``, which wins) waits S
seconds between events: below 10 ms with ``time.sleep`` (a client that left is seen at the
next send), from 10 ms on with ``poll`` on the socket (seen at once) on a fixed schedule: event
k is due S·k after the first, whatever the sends before it cost (a late one goes out at once,
never shifting the rest), so a stream delivers exactly 1/S events per second. With
``"bench_token_align": true`` the schedule is the process's clock ticks (multiples of S on
``time.monotonic()``): every such stream sends in the same instants, as a GPU server's batch
step gives every sequence its next token at once.

Tokens per streamed request: the request's ``max_tokens`` (or ``max_completion_tokens``,
``n_predict``), default ``--default-tokens`` (100). With ``--eos-after N`` a request without
``"ignore_eos": true`` stops after N tokens with ``finish_reason: "stop"``, as a model hitting
EOS does.

For the harness, ``GET /bench/stats`` reports counters and, per disconnected stream, the
request's ``user`` field, the ``time.monotonic()`` at which the disconnect was seen (the same
clock in every process on Linux) and the events sent before it.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import select
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator

__all__ = ["main"]

_DIGITS = [b"%04d" % i for i in range(10000)]
_MARK = "@@COUNTER@@"  # stands for the 4-digit counter in the pre-encoded event
_MAX_HEAD = 65536
_MAX_BODY = 32 * 1024 * 1024
_DISCONNECT_LOG = 10000
_TIMINGS = {
    "cache_n": 0,
    "prompt_n": 3,
    "prompt_ms": 0.1,
    "prompt_per_token_ms": 0.033,
    "prompt_per_second": 30000.0,
    "predicted_n": 0,
    "predicted_ms": 1.0,
    "predicted_per_token_ms": 0.01,
    "predicted_per_second": 100000.0,
}


class _Stop(Exception):
    """Raised in the main thread by SIGTERM or SIGINT."""


class _Gone(Exception):
    """The client left after ``sent`` events."""

    def __init__(self, sent: int) -> None:
        super().__init__(sent)
        self.sent = sent


class _Stats:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests = 0
        self.streams = 0
        self.completed = 0
        self.events = 0
        self.gone = 0
        self.disconnects: collections.deque[tuple[str, float, int]] = collections.deque(
            maxlen=_DISCONNECT_LOG
        )

    def as_json(self) -> dict[str, object]:
        with self.lock:
            return {
                "requests": self.requests,
                "streams": self.streams,
                "completed": self.completed,
                "events": self.events,
                "active": self.streams - self.completed - self.gone,
                "disconnects": [list(d) for d in self.disconnects],
            }


def _frame(payload: bytes) -> bytes:
    data = b"data: " + payload + b"\n\n"
    return b"%x\r\n%s\r\n" % (len(data), data)


def _dumps(obj: object) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


class _Stream:
    """The pre-encoded events of one streamed request."""

    def __init__(self, chat: bool, model: str, n: int, finish: str, usage: bool) -> None:
        self.n = n
        created = int(time.time())
        rid = "chatcmpl-" + os.urandom(16).hex()
        tail = {"created": created, "id": rid, "model": model, "system_fingerprint": "b0-unknown"}
        counts = {"completion_tokens": n, "prompt_tokens": 3, "total_tokens": n + 3}
        timings = dict(_TIMINGS, predicted_n=n)
        first: list[bytes] = []
        last: list[bytes] = []
        if chat:
            tail["object"] = "chat.completion.chunk"

            def choice(delta: dict[str, object], reason: str | None) -> dict[str, object]:
                return {"finish_reason": reason, "index": 0, "delta": delta}

            role: dict[str, object] = {"role": "assistant", "content": None}
            first.append(_frame(_dumps({"choices": [choice(role, None)], **tail}).encode()))
            token = {"choices": [choice({"content": " t" + _MARK}, None)], **tail}
            end: dict[str, object] = {"choices": [choice({}, finish)], **tail}
            if usage:
                last.append(_frame(_dumps(end).encode()))
                end = {"choices": [], **tail, "usage": counts}
            end["timings"] = timings
            last.append(_frame(_dumps(end).encode()))
        else:
            tail["object"] = "text_completion"

            def text(value: str, reason: str | None) -> dict[str, object]:
                return {"text": value, "index": 0, "logprobs": None, "finish_reason": reason}

            token = {"choices": [text(" t" + _MARK, None)], **tail}
            end = {"choices": [text("", finish)], **tail, "usage": counts, "timings": timings}
            last.append(_frame(_dumps(end).encode()))
        last.append(_frame(b"[DONE]") + b"0\r\n\r\n")
        head, _, rest = _dumps(token).encode().partition(_MARK.encode())
        size = len(b"data: ") + len(head) + 4 + len(rest) + 2
        head, rest = b"%x\r\ndata: %s" % (size, head), rest + b"\n\n\r\n"
        self.first, self.last, self.head, self.rest = first, last, head, rest

    def events(self) -> Iterator[bytes]:
        """Every event, fully framed; the last one also carries the terminating chunk."""
        yield from self.first
        head, rest = self.head, self.rest
        for i in range(self.n):
            yield head + _DIGITS[i % 10000] + rest
        yield from self.last


class _Connection:
    def __init__(self, sock: socket.socket, args: argparse.Namespace, stats: _Stats) -> None:
        self.sock = sock
        self.args = args
        self.stats = stats
        self.buf = b""

    def _recv(self) -> bytes:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionResetError("peer closed")
        return data

    def _read_request(self) -> tuple[str, str, dict[str, str], bytes] | None:
        while b"\r\n\r\n" not in self.buf:
            if len(self.buf) > _MAX_HEAD:
                raise ConnectionResetError("header too large")
            data = self.sock.recv(65536)
            if not data:
                return None
            self.buf += data
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, target, _version = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if "chunked" in headers.get("transfer-encoding", "").lower():
            body = self._read_chunked()
        else:
            length = int(headers.get("content-length") or 0)
            if length > _MAX_BODY:
                raise ConnectionResetError("body too large")
            while len(self.buf) < length:
                self.buf += self._recv()
            body, self.buf = self.buf[:length], self.buf[length:]
        return method, target, headers, body

    def _read_chunked(self) -> bytes:
        body = b""
        while True:
            while b"\r\n" not in self.buf:
                self.buf += self._recv()
            line, _, self.buf = self.buf.partition(b"\r\n")
            size = int(line.split(b";")[0], 16)
            while len(self.buf) < size + 2:
                self.buf += self._recv()
            body += self.buf[:size]
            self.buf = self.buf[size + 2 :]
            if size == 0:
                return body  # (trailers are not supported: a bare CRLF ends the body)
            if len(body) > _MAX_BODY:
                raise ConnectionResetError("body too large")

    def _json(self, status: int, body: object, close: bool = False) -> None:
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found"}.get(status, "Error")
        data = _dumps(body).encode()
        extra = b"Connection: close\r\n" if close else b"Keep-Alive: timeout=5, max=100\r\n"
        self.sock.sendall(
            b"HTTP/1.1 %d %s\r\nServer: llama.cpp\r\nContent-Type: application/json; "
            b"charset=utf-8\r\nContent-Length: %d\r\n%s\r\n%s"
            % (status, reason.encode(), len(data), extra, data)
        )

    def _error(self, status: int, message: str, kind: str) -> None:
        self._json(status, {"error": {"code": status, "message": message, "type": kind}}, True)

    def serve(self) -> None:
        try:
            while True:
                request = self._read_request()
                if request is None:
                    return
                with self.stats.lock:
                    self.stats.requests += 1
                method, target, headers, body = request
                if not self._handle(method, target.split("?")[0], body):
                    return
                if headers.get("connection", "").lower() == "close":
                    return
        except (OSError, ValueError, UnicodeDecodeError):
            return
        finally:
            self.sock.close()

    def _handle(self, method: str, path: str, raw: bytes) -> bool:
        """Answer one request; False when the connection must be closed."""
        if method == "GET" and path == "/health":
            self._json(200, {"status": "ok"})
        elif method == "GET" and path == "/slots":
            self._json(
                200, [{"id": 0, "n_ctx": 4096, "speculative": False, "is_processing": False}]
            )
        elif method == "GET" and path == "/bench/stats":
            self._json(200, self.stats.as_json())
        elif method == "POST" and path in ("/v1/chat/completions", "/v1/completions"):
            try:
                body = json.loads(raw or b"{}")
                if not isinstance(body, dict):
                    raise ValueError("not an object")
                return self._complete(path == "/v1/chat/completions", body)
            except (ValueError, TypeError) as exc:
                self._error(400, f"bad request: {exc}", "invalid_request_error")
                return False
        else:
            self._error(404, "File Not Found", "not_found_error")
            return False
        return True

    def _complete(self, chat: bool, body: dict[str, object]) -> bool:
        args = self.args
        limit = body.get("max_tokens") or body.get("max_completion_tokens") or body.get("n_predict")
        n = int(limit) if isinstance(limit, (int, float)) and limit > 0 else args.default_tokens
        finish = "length"
        if args.eos_after and not body.get("ignore_eos") and n > args.eos_after:
            n, finish = args.eos_after, "stop"
        model = str(body.get("model") or args.alias)
        options = body.get("stream_options")
        usage = isinstance(options, dict) and bool(options.get("include_usage"))
        stream = _Stream(chat, model, n, finish, usage)
        if not body.get("stream"):
            self._json(200, _plain(chat, stream, model, n, finish))
            return True
        delay = body.get("bench_token_delay")
        if not isinstance(delay, (int, float)) or isinstance(delay, bool) or delay < 0:
            delay = args.token_delay
        align = body.get("bench_token_align") is True
        return self._stream(stream, str(body.get("user") or ""), float(delay), align)

    def _stream(self, stream: _Stream, user: str, delay: float, align: bool = False) -> bool:
        sock, args = self.sock, self.args
        with self.stats.lock:
            self.stats.streams += 1
        events = stream.events()
        try:
            try:
                sock.sendall(
                    b"HTTP/1.1 200 OK\r\nServer: llama.cpp\r\nX-Accel-Buffering: no\r\n"
                    b"Content-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n"
                    b"Keep-Alive: timeout=5, max=100\r\n\r\n"
                )
            except OSError:
                # A client gone before the head is a stream that ended too: uncounted,
                # it stayed "active" and the harness waited for it until its limit.
                raise _Gone(0) from None
            if args.batch > 1:
                sent = _send_batched(sock, events, args.batch)
            elif delay >= 0.01:
                sent = _send_paced(sock, events, delay, align)
            elif delay > 0:
                sent = _send_slept(sock, events, delay)
            else:
                sent = _send_each(sock, events)
        except _Gone as gone:
            sent = gone.sent
            with self.stats.lock:
                self.stats.events += sent
                self.stats.gone += 1
                self.stats.disconnects.append((user, time.monotonic(), sent))
            if args.verbose:
                print(f"client disconnected after {sent} events", flush=True)
            return False
        with self.stats.lock:
            self.stats.events += sent
            self.stats.completed += 1
        return True


def _send_each(sock: socket.socket, events: Iterator[bytes]) -> int:
    """The benchmark mode: one ``send`` per event."""
    sent = 0
    send = sock.sendall
    try:
        for event in events:
            send(event)
            sent += 1
    except OSError:
        raise _Gone(sent) from None
    return sent


def _send_batched(sock: socket.socket, events: Iterator[bytes], batch: int) -> int:
    sent = 0
    pending: list[bytes] = []
    try:
        for event in events:
            pending.append(event)
            if len(pending) >= batch:
                sock.sendall(b"".join(pending))
                sent += len(pending)
                pending.clear()
        if pending:
            sock.sendall(b"".join(pending))
            sent += len(pending)
    except OSError:
        raise _Gone(sent) from None
    return sent


def _send_slept(sock: socket.socket, events: Iterator[bytes], delay: float) -> int:
    """One event, then sleep ``delay`` (below ``poll``'s 1 ms resolution): a model that
    generates at a steady pace, so that a proxy reads one event at a time. A client that
    left is noticed at the next send."""
    sent = 0
    try:
        for event in events:
            if sent:
                time.sleep(delay)
            sock.sendall(event)
            sent += 1
    except OSError:
        raise _Gone(sent) from None
    return sent


def _send_paced(sock: socket.socket, events: Iterator[bytes], delay: float, align: bool) -> int:
    """One event, then wait until the next is due while watching for the client leaving.

    Event k is due ``delay * k`` after the first (``align``: after the clock tick before the
    first), so the waits absorb what each send and wake-up cost instead of adding it up.
    ``poll`` waits in whole milliseconds (rounded up): it waits until about a millisecond
    before the due time, ``time.sleep`` the rest.
    """
    sent = 0
    poller = select.poll()
    poller.register(sock, select.POLLIN | select.POLLRDHUP)
    watch = True  # False once the client sent bytes: poll would return at once from then on
    origin = 0.0
    try:
        for event in events:
            if sent:
                due = origin + delay * sent
                while (left := due - time.monotonic()) > 0:
                    if watch and left > 0.002:
                        if poller.poll(int((left - 0.001) * 1000.0)):
                            if not sock.recv(1, socket.MSG_PEEK):
                                raise ConnectionResetError("client left")
                            watch = False
                    else:
                        time.sleep(left)
            else:
                origin = time.monotonic()
                if align:
                    origin -= origin % delay
            sock.sendall(event)
            sent += 1
    except OSError:
        raise _Gone(sent) from None
    return sent


def _plain(chat: bool, stream: _Stream, model: str, n: int, finish: str) -> dict[str, object]:
    text = "".join(f" t{i % 10000:04d}" for i in range(n))
    choice: dict[str, object] = {"finish_reason": finish, "index": 0}
    if chat:
        choice["message"] = {"role": "assistant", "content": text}
    else:
        choice.update(text=text, logprobs=None)
    return {
        "choices": [choice],
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": "b0-unknown",
        "object": "chat.completion" if chat else "text_completion",
        "usage": {"completion_tokens": n, "prompt_tokens": 3, "total_tokens": n + 3},
        "id": "chatcmpl-" + os.urandom(16).hex(),
        "timings": dict(_TIMINGS, predicted_n=n),
    }


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--host", default="127.0.0.1", help="bind address (127.0.0.1); PATH.sock: a Unix socket"
    )
    parser.add_argument("--port", type=int, default=8080, help="port; 0 picks a free one")
    parser.add_argument("--alias", "-a", default="fake", help="model name when none is sent")
    parser.add_argument("--model", "-m", default="", help="accepted and ignored")
    parser.add_argument("--default-tokens", type=int, default=100, help="without max_tokens")
    parser.add_argument("--eos-after", type=int, default=0, help="EOS after N (0: never)")
    parser.add_argument("--token-delay", type=float, default=0.0, help="seconds between events")
    parser.add_argument("--batch", type=int, default=1, help="events per write (1)")
    parser.add_argument("--verbose", action="store_true", help="print each disconnect")
    args, _unknown = parser.parse_known_args(argv)  # other llama-server flags are ignored
    return args


_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGTERM or SIGINT; returns the exit code."""
    args = _parse_args(argv)
    stats = _Stats()
    unix = args.host.endswith(".sock")
    if unix:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    else:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind(args.host if unix else (args.host, args.port))
    except OSError as exc:
        listener.close()
        print(f"couldn't bind HTTP server socket, hostname: {args.host}, port: {args.port}: {exc}")
        return 1
    listener.listen(1024)

    def stop(signum: int, frame: object) -> None:
        raise _Stop

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)  # also when started with SIGINT ignored (shell `&`)
    open_sockets: set[socket.socket] = set()
    try:
        # only now: whoever waits for this line may send SIGTERM at once
        where = f"unix://{args.host}" if unix else f"http://{args.host}:{listener.getsockname()[1]}"
        print(f"listening on {where}", flush=True)
        while True:
            sock, _addr = listener.accept()
            if not unix:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            open_sockets.add(sock)
            conn = _Connection(sock, args, stats)
            thread = threading.Thread(target=_run, args=(conn.serve, open_sockets, sock))
            thread.daemon = True
            # The thread starts with the stop signals blocked (it inherits this mask), so
            # they reach this thread: one delivered to a connection's thread would only
            # set a flag, and accept() here would never return to act on it.
            before = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
            try:
                thread.start()
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, before)
    except _Stop:
        pass
    finally:
        listener.close()
        if unix:
            with contextlib.suppress(OSError):
                os.unlink(args.host)
        for sock in list(open_sockets):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
    print("stopped", flush=True)
    return 0


def _run(serve: Callable[[], None], open_sockets: set[socket.socket], sock: socket.socket) -> None:
    try:
        serve()
    finally:
        open_sockets.discard(sock)


if __name__ == "__main__":
    sys.exit(main())
