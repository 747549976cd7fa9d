#!/usr/bin/env python3
"""The child's transport, measured: Unix socket vs TCP loopback to the same llama-server.

    python benchmarks/child_transport.py

Starts the pinned llama-server on the demo model twice per round (once on a Unix
socket in a private directory, once on 127.0.0.1), and drives each through our own
upstream client: 2000 ``/health`` round trips on one keep-alive connection, then the
best of 4 streams of 1500 tokens. Prints wall and client CPU per round trip and per
streamed event. Results are quoted in docs/benchmarks.md ("The child's transport").
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import trio

from bodhi_trio._transport._loopback import UpstreamPool, send_upstream
from bodhi_trio.lowlevel import Address, ensure_demo_model, find_llama_server

_TCP_PORT = 18765


async def _wait_up(address: Address) -> None:
    while True:
        try:
            async with (
                UpstreamPool() as pool,
                send_upstream(pool, address, "/health", b"", method="GET") as response,
            ):
                if response.status_code == 200:
                    return
        except Exception:
            pass
        await trio.sleep(0.05)


async def _round_trips(address: Address, count: int = 2000) -> tuple[float, float]:
    async with UpstreamPool() as pool:
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(count):
            async with send_upstream(pool, address, "/health", b"", method="GET") as response:
                await response.aread()
        return (time.perf_counter() - wall) / count * 1e6, (time.process_time() - cpu) / count * 1e6


async def _stream(address: Address, tokens: int = 1500, reps: int = 4) -> tuple[float, float]:
    request = {"model": "x", "messages": [{"role": "user", "content": "hi"}], "stream": True,
               "max_tokens": tokens, "ignore_eos": True}  # fmt: skip
    body = json.dumps(request).encode()
    rates, cpus = [], []
    async with UpstreamPool() as pool:
        for _ in range(reps):
            wall, cpu, events = time.perf_counter(), time.process_time(), 0
            async with send_upstream(pool, address, "/v1/chat/completions", body) as response:
                async for chunk in response:
                    events += chunk.count(b"data: ")
            rates.append(events / (time.perf_counter() - wall))
            cpus.append((time.process_time() - cpu) / events * 1e6)
    return max(rates), min(cpus)


async def main() -> None:
    binary = find_llama_server("cpu")
    hub = Path(tempfile.mkdtemp(prefix="bodhi-transport-hub-"))
    model = ensure_demo_model(hub).path
    try:
        for mode in ("unix", "tcp", "unix", "tcp"):
            folder = tempfile.mkdtemp(prefix="bodhi-trio-")
            if mode == "unix":
                address = Address.unix(folder + "/llama.sock")
                listen = ["--host", folder + "/llama.sock"]
            else:
                address = Address.tcp("127.0.0.1", _TCP_PORT)
                listen = ["--host", "127.0.0.1", "--port", str(_TCP_PORT)]
            argv = [str(binary), "--model", str(model), "--ctx-size", "2048", *listen]
            # A plain Popen: this harness owns the child for a few seconds and waits for it.
            child = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # noqa: ASYNC220
            try:
                with trio.fail_after(60):
                    await _wait_up(address)
                with trio.fail_after(300):
                    rt_wall, rt_cpu = await _round_trips(address)
                    rate, per_event = await _stream(address)
                print(
                    f"{mode:5} /health round trip {rt_wall:6.1f} us wall, {rt_cpu:5.1f} us client"
                    f" CPU | stream {rate:7.0f} events/s, {per_event:5.1f} us client CPU/event",
                    flush=True,
                )
            finally:
                child.terminate()
                child.wait()
                shutil.rmtree(folder, ignore_errors=True)
    finally:
        shutil.rmtree(hub, ignore_errors=True)


if __name__ == "__main__":
    trio.run(main)
