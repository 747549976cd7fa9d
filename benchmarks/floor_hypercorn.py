#!/usr/bin/env python3
"""The floor of our stack: what one ASGI ``send`` per event costs under Hypercorn on Trio.

A raw ASGI app (no Quart, no upstream) answers every POST with ``max_tokens`` SSE
events, one ``http.response.body`` message each, either back to back (``--hot``:
only a checkpoint between events) or after a ``trio.sleep`` (a wake-up per event,
as when relaying a model's tokens). Drive it with ``bodhi-trio bench`` and read
its CPU per event from ``/proc``:

    python benchmarks/floor_hypercorn.py --port 18777 [--hot] &
    bodhi-trio bench --base-url http://127.0.0.1:18777/v1 --model x -d 8 --max-tokens 1000

Nothing here is part of bodhi-trio; it bounds what any relay on this stack can reach.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import hypercorn.config
import hypercorn.trio
import trio

EVENT = b'data: {"choices":[{"index":0,"delta":{"content":"tok"}}]}\n\n'


def make_app(hot: bool) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        count = int(json.loads(body or b"{}").get("max_tokens", 100))
        headers = [(b"content-type", b"text/event-stream")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for _ in range(count):
            if hot:
                await trio.lowlevel.checkpoint()
            else:
                await trio.sleep(0.0002)  # epoll's 1 ms resolution makes it about 1 ms
            await send({"type": "http.response.body", "body": EVENT, "more_body": True})
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=18777)
    parser.add_argument("--hot", action="store_true", help="no wait between events")
    args = parser.parse_args()
    config = hypercorn.config.Config()
    config.bind = [f"127.0.0.1:{args.port}"]
    trio.run(hypercorn.trio.serve, make_app(args.hot), config)


if __name__ == "__main__":
    main()
