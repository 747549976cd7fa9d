"""A model on an RPC worker elsewhere, with the real binaries: what the estimate says
the worker holds against llama-server's own report, and the budget counting only what
stays on this machine.

"Elsewhere" is a worker bound to this machine's outward address, which bodhi-trio
cannot tell from another machine's (it is neither loopback nor one of the workers it
runs): the placement is the same as over a network.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import trio

from bodhi_trio import open_context
from bodhi_trio._config._alias_store import AliasStore
from bodhi_trio._config._aliases import Alias
from bodhi_trio._config._demo import DEMO_FILENAME, DEMO_REPO
from bodhi_trio._config._settings import load_settings
from bodhi_trio._exceptions import InsufficientMemoryError
from bodhi_trio._llama._memory import MiB, estimate_model_memory
from bodhi_trio._llama._rpc_worker import serve_rpc_worker
from net import free_ports, outward_address

pytestmark = pytest.mark.llama

# "load_tensors: RPC0[10.0.0.5:50052] model buffer size =     0.38 MiB",
# "llama_kv_cache: RPC0[10.0.0.5:50052] KV buffer size =    32.00 MiB" (at -lv 4)
WORKER_BUFFER = re.compile(r"RPC0\[[^\]]+\] (model|KV) buffer size = +([\d.]+) MiB")
# 32 MiB of KV cache: the part a worker takes off this machine dwarfs what stays.
CONTEXT = ("--ctx-size", "131072", "--threads", "1")


async def test_a_model_on_a_worker_elsewhere_counts_what_stays_here(
    tmp_path: Path,
    hub_cache: Path,
    demo_model_path: Path,
    llama_server_binary: Path,
    rpc_server_binary: Path,
) -> None:
    host = outward_address()
    (port,) = free_ports(1, host)
    worker = f"{host}:{port}"
    far = ("--rpc", worker, *CONTEXT)
    estimate = estimate_model_memory(demo_model_path, far)
    here = estimate_model_memory(demo_model_path, CONTEXT)
    assert estimate.total == here.total
    assert estimate.elsewhere_bytes > 30 * MiB  # the KV cache and both blocks
    budget = (estimate.here + estimate.total) // 2  # the model fits only if it is elsewhere
    env = {
        "HF_HUB_CACHE": str(hub_cache),
        "BODHI_KEEP_ALIVE_SECS": "-1",
        "BODHI_MEMORY_BUDGET": str(budget),
        "BODHI_ALLOWED_RPC_SERVERS": worker,
        # llama-server reports its buffers at -lv 4 (refused unless the operator allows)
        "BODHI_ALLOWED_CONTEXT_FLAGS": "--verbosity",
    }
    settings = load_settings(home=tmp_path, env=env)
    store = AliasStore.for_settings(settings)
    store.create(Alias("tiny:far", DEMO_REPO, DEMO_FILENAME, context_params=(*far, "-lv", "4")))
    store.create(Alias("tiny:here", DEMO_REPO, DEMO_FILENAME, context_params=CONTEXT))
    request = {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 4}
    with trio.fail_after(120):  # liveness bound: the demo model loads in about a second
        async with trio.open_nursery() as nursery:
            await nursery.start(
                lambda task_status: serve_rpc_worker(
                    rpc_server_binary, host, port, log=None, threads=1, task_status=task_status
                )
            )
            async with open_context(settings) as ctx:
                with pytest.raises(InsufficientMemoryError, match="budget"):
                    async with ctx.forward(
                        "/v1/chat/completions", {**request, "model": "tiny:here"}
                    ):
                        pass
                async with ctx.forward(
                    "/v1/chat/completions", {**request, "model": "tiny:far"}
                ) as response:
                    body = json.loads(await response.aread())
                    assert response.status_code == 200, body
                model = ctx.state.model("tiny:far")
                assert model is not None
                assert model.memory is not None
                # Counted for what stays here: the estimate's, or the RSS measured since.
                assert model.memory <= estimate.here
            nursery.cancel_scope.cancel()
    log = (tmp_path / "logs" / "llama-server-tiny--far.log").read_text()
    reported = {kind: float(mib) for kind, mib in WORKER_BUFFER.findall(log)}
    assert set(reported) == {"model", "KV"}, log[-3000:]
    # llama-server prints MiB to two decimals; our tensor sizes carry their padding.
    assert estimate.elsewhere_bytes / MiB == pytest.approx(sum(reported.values()), abs=0.011)
