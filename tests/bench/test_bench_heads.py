"""The bench client reads response heads with ``split_head``: odd but valid answers."""

from __future__ import annotations

from functools import partial

import trio

from bodhi_trio._bench._client import BenchConfig, run_bench


async def answer_each_request(answer: bytes, stream: trio.SocketStream) -> None:
    """Answer every request on the connection with ``answer``; keep the connection open."""
    data = b""
    async with stream:
        while True:
            while b"\r\n\r\n" not in data:
                more = await stream.receive_some(65536)
                if not more:
                    return
                data += more
            head, _, data = data.partition(b"\r\n\r\n")
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            while len(data) < length:
                data += await stream.receive_some(65536)
            data = data[length:]
            await stream.send_all(answer)


async def bench_against(answer: bytes) -> tuple[int, int, dict[str, int]]:
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            partial(trio.serve_tcp, partial(answer_each_request, answer), 0, host="127.0.0.1")
        )
        port = listeners[0].socket.getsockname()[1]
        config = BenchConfig(f"http://127.0.0.1:{port}/v1", requests=3, timeout=5.0)
        with trio.fail_after(10):
            result = await run_bench(config)
        nursery.cancel_scope.cancel()
    return result.requests_done, result.errors, result.error_kinds


async def test_an_empty_body_with_content_length_zero_ends_at_once() -> None:
    # No body bytes to wait for: the request must not wait for the per-request timeout.
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
    assert await bench_against(answer) == (3, 0, {})


async def test_a_malformed_head_is_counted_as_broken() -> None:
    done, errors, kinds = await bench_against(b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n")
    assert (done, errors, kinds) == (0, 3, {"broken": 3})
