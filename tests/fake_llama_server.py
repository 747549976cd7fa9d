#!/usr/bin/env python3
"""A stand-in for llama-server that injects the faults the real one can't.

Only for fault tests: behaviour tests use the real llama-server. It accepts
llama-server's ``--alias --model --host --port`` (and ignores other llama-server
flags), answers ``/health`` like llama-server (503 while "loading", then 200),
streams ``/v1/chat/completions`` in llama-server's SSE shape, and takes these
extra flags:

``--fake-load-delay S``      ``/health`` answers 503 for S seconds after binding
``--fake-load-chatter S``    while loading, print a progress line every S seconds
``--fake-hang-at-start``     print one line, then never listen and never exit
``--fake-die-while-loading S`` exit with code 1 S seconds into the "load"
``--fake-ignore-sigterm``    SIGTERM does nothing (only SIGKILL stops it)
``--fake-crash-after S``     exit with code 3 S seconds after it became ready
``--fake-exit-at-start C``   print an error and exit with code C before binding
``--fake-bind-fail-file F``  while F holds a number > 0: decrement it and fail
                             to bind like llama-server does
``--fake-fork-grandchild``   fork a helper that sleeps in the same process group
``--fake-tokens N``          tokens per completion (default 8)
``--fake-token-delay S``     pause between streamed tokens (default 0)
``--fake-stall-after N``     after N streamed tokens, send nothing more (connection open);
                             the generation counts as ended, like a child whose slot went
                             idle without finishing the response
``--fake-busy``              ``/slots`` always says a slot is processing

``/slots`` tells the truth otherwise: a slot is processing while a completion is being
generated (from the request until its last token is sent or the client is found gone),
idle when none is. Every ``/slots`` request logs "slots asked".

Like llama-server, a ``--host`` ending in ``.sock`` is a Unix socket to listen on.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socketserver
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def log(message: str) -> None:
    print(message, flush=True)


class State:
    ready_at = 0.0
    args: argparse.Namespace
    # Completions being generated now (one handler thread each), for /slots.
    generating = 0
    lock = threading.Lock()


class Generation:
    """One completion's turn on a slot, for ``/slots``: from the request until
    :meth:`end` (its last token, a client found gone, a stall), at most once."""

    def __init__(self) -> None:
        self.running = False

    def __enter__(self) -> Generation:
        with State.lock:
            State.generating += 1
        self.running = True
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.end()

    def end(self) -> None:
        if self.running:
            self.running = False
            with State.lock:
                State.generating -= 1


def any_generating() -> bool:
    with State.lock:
        return State.generating > 0


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _json(self, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            # The health probe reads the status line and closes. Like llama-server, say
            # nothing: a traceback here would be output, which counts as progress.
            self.close_connection = True

    def do_GET(self) -> None:
        if self.path == "/health":
            if time.monotonic() < State.ready_at:
                self._json(
                    503,
                    {
                        "error": {
                            "code": 503,
                            "message": "Loading model",
                            "type": "unavailable_error",
                        }
                    },
                )
            else:
                self._json(200, {"status": "ok"})
        elif self.path == "/slots":
            log("slots asked")
            busy = bool(State.args.fake_busy) or any_generating()
            self._json(200, [{"id": 0, "is_processing": busy}])
        else:
            self._json(
                404,
                {"error": {"code": 404, "message": "File Not Found", "type": "not_found_error"}},
            )

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except ValueError:
            self._json(
                400,
                {"error": {"code": 400, "message": "bad json", "type": "invalid_request_error"}},
            )
            return
        if self.path not in ("/v1/chat/completions", "/v1/completions"):
            self._json(
                404,
                {"error": {"code": 404, "message": "File Not Found", "type": "not_found_error"}},
            )
            return
        with Generation() as generation:
            self._generate(body, generation)

    def _generate(self, body: dict[str, Any], generation: Generation) -> None:
        n = int(body.get("max_tokens") or State.args.fake_tokens)
        n = min(n, State.args.fake_tokens) if not body.get("ignore_eos") else n
        created = int(time.time())
        model = State.args.alias
        if not body.get("stream"):
            text = "".join(f"tok{i} " for i in range(n))
            generation.end()
            self._json(
                200,
                {
                    "id": "chatcmpl-fake",
                    "object": "chat.completion",
                    "created": created,
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "finish_reason": "length",
                            "message": {"role": "assistant", "content": text},
                        }
                    ],
                    "usage": {"prompt_tokens": 3, "completion_tokens": n, "total_tokens": n + 3},
                },
            )
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

        def event(obj: object) -> None:
            data = b"data: " + (obj if isinstance(obj, bytes) else json.dumps(obj).encode())
            data += b"\n\n"
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()

        def chunk(delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
            return {
                "id": "chatcmpl-fake",
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }

        try:
            event(chunk({"role": "assistant", "content": None}, None))
            for i in range(n):
                if i == State.args.fake_stall_after:
                    generation.end()  # the slot goes idle; the response never ends
                    log("stalling the stream")
                    while True:
                        time.sleep(3600)
                if State.args.fake_token_delay:
                    time.sleep(State.args.fake_token_delay)
                event(chunk({"content": f"tok{i} "}, None))
            generation.end()  # the last token: the slot is free before the tail is sent
            event(chunk({}, "length"))
            if (body.get("stream_options") or {}).get("include_usage"):
                usage = {"prompt_tokens": 3, "completion_tokens": n, "total_tokens": n + 3}
                event(
                    {
                        "id": "chatcmpl-fake",
                        "object": "chat.completion.chunk",
                        "created": created,
                        "model": model,
                        "choices": [],
                        "usage": usage,
                    }
                )
            event(b"[DONE]")
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            generation.end()
            log("client disconnected; generation stopped")


class UnixHTTPServer(socketserver.ThreadingUnixStreamServer):
    request_queue_size = 128

    def get_request(self) -> tuple[Any, Any]:
        request, _ = super().get_request()
        return request, ("unix", 0)  # http.server wants a (host, port) client address


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--alias", default="fake")
    parser.add_argument("--model", "-m", default="")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--fake-load-delay", type=float, default=0.0)
    parser.add_argument("--fake-load-chatter", type=float, default=0.0)
    parser.add_argument("--fake-hang-at-start", action="store_true")
    parser.add_argument("--fake-die-while-loading", type=float, default=None)
    parser.add_argument("--fake-ignore-sigterm", action="store_true")
    parser.add_argument("--fake-crash-after", type=float, default=None)
    parser.add_argument("--fake-exit-at-start", type=int, default=None)
    parser.add_argument("--fake-bind-fail-file", default=None)
    parser.add_argument("--fake-fork-grandchild", action="store_true")
    parser.add_argument("--fake-tokens", type=int, default=8)
    parser.add_argument("--fake-token-delay", type=float, default=0.0)
    parser.add_argument("--fake-stall-after", type=int, default=None)
    parser.add_argument("--fake-busy", action="store_true")
    args, _unknown = parser.parse_known_args()
    State.args = args
    log(f"fake llama-server pid {os.getpid()} alias {args.alias} model {args.model}")

    if args.fake_ignore_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:

        def on_term(signum: int, frame: object) -> None:
            log("received SIGTERM, shutting down")
            os._exit(0)

        signal.signal(signal.SIGTERM, on_term)

    if args.fake_fork_grandchild:
        helper = os.fork()
        if helper == 0:
            while True:  # stays in our process group until the group is killed
                time.sleep(3600)
        log(f"grandchild pid {helper}")
    if args.fake_hang_at_start:
        log("loading model (hanging forever)")
        while True:
            time.sleep(3600)
    if args.fake_exit_at_start is not None:
        log("error: fake failure to load model: corrupt file")
        sys.exit(args.fake_exit_at_start)
    if args.fake_bind_fail_file:
        with open(args.fake_bind_fail_file) as f:
            left = int(f.read().strip() or 0)
        if left > 0:
            with open(args.fake_bind_fail_file, "w") as f:
                f.write(str(left - 1))
            log(
                f"srv    start: couldn't bind HTTP server socket, hostname: {args.host}, "
                f"port: {args.port}"
            )
            sys.exit(1)

    # llama-server listens with a backlog of 128; http.server's default of 5 would drop
    # SYNs under 64 concurrent connects (each retried only after 1 s, 3 s, 7 s...).
    ThreadingHTTPServer.request_queue_size = 128
    server: socketserver.TCPServer | socketserver.UnixStreamServer
    if args.host.endswith(".sock"):
        server = UnixHTTPServer(args.host, Handler)
        log(f"listening on unix://{args.host}")
    else:
        server = ThreadingHTTPServer((args.host, args.port), Handler)
        log(f"listening on http://{args.host}:{args.port}")
    server.daemon_threads = True
    State.ready_at = time.monotonic() + args.fake_load_delay
    if args.fake_load_chatter:

        def chatter() -> None:
            while time.monotonic() < State.ready_at:
                log("loading tensors ...")
                time.sleep(args.fake_load_chatter)

        threading.Thread(target=chatter, daemon=True).start()
    if args.fake_die_while_loading is not None:

        def die() -> None:
            time.sleep(args.fake_die_while_loading)
            log("error: failed to load model: fake out of memory")
            os._exit(1)

        threading.Thread(target=die, daemon=True).start()
    if args.fake_crash_after is not None:

        def crash() -> None:
            time.sleep(max(0.0, State.ready_at - time.monotonic()) + args.fake_crash_after)
            log("fake crash: segmentation fault in the model")
            os._exit(3)

        threading.Thread(target=crash, daemon=True).start()
    server.serve_forever()


if __name__ == "__main__":
    main()
