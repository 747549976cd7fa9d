"""Request fields that would make llama-server abort, or take memory outside the budget:
refused or cut before they reach the child (``_llama/_request_fields``), checked here
alone and against the real llama-server with the demo model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from bodhi_trio._config._demo import DEMO_ALIAS
from bodhi_trio._exceptions import InvalidRequestError
from bodhi_trio._llama._request_fields import MAX_PENALTY_WINDOW, guard_request_fields
from httpserver import one_model, running_server

BAD_TRIGGERS: list[Any] = [
    [{"type": 99, "value": "a"}],
    [{"type": -1, "value": "a"}],
    [{"type": 4.5, "value": "a"}],
    [{"type": "1", "value": "a"}],
    [{"type": True, "value": "a"}],
    [{"value": "a"}],
    [{"type": 1}],
    [{"type": 2, "value": 7}],
    [{"type": 0, "value": "a"}],  # a token trigger without its token
    ["a word"],
    [{"type": 1, "value": "ok"}, {"type": 99, "value": "a"}],
]


@pytest.mark.parametrize("triggers", BAD_TRIGGERS)
def test_a_trigger_llama_server_would_abort_on_is_refused(triggers: Any) -> None:
    with pytest.raises(InvalidRequestError) as refused:
        guard_request_fields({"prompt": "hi", "grammar_triggers": triggers})
    assert refused.value.param == "grammar_triggers"


@pytest.mark.parametrize(
    "triggers",
    [
        [],
        [
            {"type": 1, "value": "w"},
            {"type": 3.0, "value": "p.*"},
            {"type": 0, "value": "t", "token": 5},
        ],
    ],
)
def test_triggers_llama_server_knows_pass_unchanged(triggers: Any) -> None:
    body = {"prompt": "hi", "grammar_triggers": triggers}
    assert guard_request_fields(body) is body


def test_penalty_windows_past_any_context_are_cut() -> None:
    body = {"prompt": "hi", "repeat_last_n": 1 << 28, "dry_penalty_last_n": 2**31 - 1}
    cut = {"repeat_last_n": MAX_PENALTY_WINDOW, "dry_penalty_last_n": MAX_PENALTY_WINDOW}
    assert guard_request_fields(body) == {"prompt": "hi", **cut}
    assert body["repeat_last_n"] == 1 << 28  # the caller's body is left as it was
    usual = {"prompt": "hi", "repeat_last_n": 64, "dry_penalty_last_n": -1}
    assert guard_request_fields(usual) is usual


def peak_rss_kib(pid: int) -> int:
    """The most memory the process has held (``VmHWM``): a window allocated and freed
    between two looks is still seen. 0 once it has exited."""
    status = Path(f"/proc/{pid}/status")
    if not status.exists():
        return 0
    for line in status.read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmHWM for {pid}")


@pytest.mark.llama
async def test_the_child_survives_what_would_abort_it_and_keeps_its_memory(
    tmp_path: Path, hub_cache: Path
) -> None:
    """With the real llama-server: a trigger of an unknown type aborted the child
    (``GGML_ASSERT``), ending every stream on the model, as often as any key holder sent
    it; two requests with ``repeat_last_n`` of 2**28 took it from 20 MiB to 2 GiB, outside
    the memory budget. Now the first is a 400 and the second is served with its window cut:
    the same child, and its memory as it was."""
    bomb = {"model": DEMO_ALIAS, "prompt": "hi", "max_tokens": 2,
            "grammar_triggers": [{"type": 99, "value": "a"}]}  # fmt: skip
    window = {"model": DEMO_ALIAS, "prompt": "hi", "max_tokens": 2, "repeat_penalty": 1.1,
              "repeat_last_n": 1 << 28, "dry_penalty_last_n": 1 << 28,
              "dry_multiplier": 0.5}  # fmt: skip
    with trio.fail_after(120):
        async with (
            running_server(tmp_path, hub_cache) as server,
            httpx.AsyncClient(base_url=server.url, timeout=60) as client,
        ):
            ok = await client.post("/v1/completions", json={**window, "repeat_last_n": 8})
            assert ok.status_code == 200
            pid = one_model((await client.get("/bodhi/v1/state")).json())["pid"]
            peak_before = peak_rss_kib(pid)
            refused = await client.post("/v1/completions", json=bomb)
            served = [await client.post("/v1/completions", json=window) for _ in range(2)]
            after = one_model((await client.get("/bodhi/v1/state")).json())
            peak_after = peak_rss_kib(pid)
    assert refused.status_code == 400
    assert refused.json()["error"]["param"] == "grammar_triggers"
    assert [answer.status_code for answer in served] == [200, 200]
    assert (after["pid"], after["state"]) == (pid, "ready")
    assert peak_after - peak_before < 256 * 1024  # KiB: before, 2 GiB
