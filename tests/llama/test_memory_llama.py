"""The memory estimate against the real llama-server on the demo model: its own KV
cache report, and the measured RSS of the running child."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import trio

from bodhi_trio._config._demo import DEMO_ALIAS
from bodhi_trio._llama._child import LaunchSpec, LlamaServer, serve_llama_server
from bodhi_trio._llama._group_rss import process_group_rss
from bodhi_trio._llama._memory import MiB, estimate_model_memory
from procs import child_client

pytestmark = pytest.mark.llama

# "llama_kv_cache: size =    0.38 MiB (   512 cells,   2 layers,  3/3 seqs), K (f16): ...":
# the size of all streams together, the cells of one, slots/streams.
KV_REPORT = re.compile(
    r"llama_kv_cache: size = +([\d.]+) MiB \( *(\d+) cells, +\d+ layers, +\d+/(\d+) seqs\)"
)


def spec_for(binary: Path, model: Path, tmp_path: Path, name: str, *args: str) -> LaunchSpec:
    return LaunchSpec(
        binary=binary,
        model=model,
        alias=DEMO_ALIAS,
        # -lv 4: llama.cpp logs the KV cache it allocated at info level only from 4 up
        server_args=("--threads", "1", "-lv", "4", *args),
        log_path=tmp_path / f"{name}.log",
    )


async def run_and_measure(spec: LaunchSpec) -> int:
    """Start the child, answer one chat (so a batch has run), return its group's RSS."""
    with trio.fail_after(60):  # liveness bound: the demo model loads in well under a second
        async with trio.open_nursery() as nursery:
            server: LlamaServer = await nursery.start(serve_llama_server, spec)
            async with child_client(server.address, timeout=30) as client:
                body = {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 8}
                reply = await client.post("/v1/chat/completions", json=body)
                assert reply.status_code == 200
            rss = process_group_rss(server.pid)
            nursery.cancel_scope.cancel()
    assert rss is not None
    assert process_group_rss(server.pid) is None  # stopped: nothing left to count
    return rss


@pytest.mark.parametrize(
    "args",
    [
        ("--ctx-size", "512"),
        (),  # the training context
        ("-c", "1000", "--parallel", "3"),  # 3 separate streams round it up to 1536
        ("--kv-unified-per-slot", "300"),
    ],
)
async def test_kv_cache_matches_llama_servers_own_report(
    llama_server_binary: Path, demo_model_path: Path, tmp_path: Path, args: tuple[str, ...]
) -> None:
    spec = spec_for(llama_server_binary, demo_model_path, tmp_path, "kv", *args)
    with trio.fail_after(60):  # liveness bound, as above
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_llama_server, spec)
            nursery.cancel_scope.cancel()
    assert spec.log_path is not None
    reports = KV_REPORT.findall(spec.log_path.read_text())
    assert len(reports) == 1, reports
    reported_mib, cells, streams = float(reports[0][0]), int(reports[0][1]), int(reports[0][2])
    estimate = estimate_model_memory(demo_model_path, spec.server_args)
    assert estimate.n_ctx == cells * streams
    assert estimate.kv_bytes / MiB == pytest.approx(reported_mib, abs=0.0051)  # "%.2f MiB"


async def test_measured_rss_against_the_estimate(
    llama_server_binary: Path, demo_model_path: Path, tmp_path: Path
) -> None:
    small_spec = spec_for(llama_server_binary, demo_model_path, tmp_path, "small", "-c", "512")
    large_spec = spec_for(llama_server_binary, demo_model_path, tmp_path, "large", "-c", "131072")
    small, large = await run_and_measure(small_spec), await run_and_measure(large_spec)
    small_estimate = estimate_model_memory(demo_model_path, small_spec.server_args)
    large_estimate = estimate_model_memory(demo_model_path, large_spec.server_args)
    print(  # the numbers for the docs (pytest -s)
        f"demo -c 512: estimate {small_estimate.description}, measured {small / MiB:.1f} MiB;"
        f" -c 131072: estimate {large_estimate.description}, measured {large / MiB:.1f} MiB"
    )
    # Measured on the pinned build: about 21 MiB at 512 tokens, 60 MiB at 131072.
    assert 5 * MiB < small < 200 * MiB
    assert 5 * MiB < large < 400 * MiB
    # The same order of magnitude: the fixed overhead dominates for this tiny model.
    for estimate, measured in ((small_estimate, small), (large_estimate, large)):
        assert 0.5 < estimate.total / measured < 5, (estimate.description, measured)
    # The 32 MiB of KV cache that the larger context adds is resident from the start
    # (llama.cpp clears the buffer), plus a little of the larger compute buffer.
    kv_growth = large_estimate.kv_bytes - small_estimate.kv_bytes
    assert 0.9 * kv_growth < large - small < 2 * kv_growth
