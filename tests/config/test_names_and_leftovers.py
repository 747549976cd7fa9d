"""Overlong variant names and temp files of interrupted alias writes (issue 10, item 7a-b)."""

from __future__ import annotations

import os
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest
import trio

from bodhi_trio._config._alias_store import AliasStore
from bodhi_trio._config._aliases import Alias
from bodhi_trio._config._demo import DEMO_ALIAS, DEMO_FILENAME, DEMO_REPO
from bodhi_trio._config._settings import load_settings
from bodhi_trio._exceptions import SettingsError
from httpserver import running_server


async def test_an_overlong_variant_is_a_400_and_is_not_logged_whole(
    tmp_path: Path, hub_cache: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A 300-character variant used to reach the file system: 500 "File name too long",
    with the whole name in the log."""
    with trio.fail_after(30):
        async with (
            running_server(tmp_path, hub_cache) as server,
            httpx.AsyncClient(base_url=server.url, timeout=10) as client,
        ):
            response = await client.put("/bodhi/v1/server/variant", json={"variant": "a" * 300})
            spaced = await client.put("/bodhi/v1/server/variant", json={"variant": "Bad Name"})
            state = await client.get("/bodhi/v1/state")
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["code"], error["param"]) == ("invalid_request", "variant")
    assert "300 characters" in error["message"]
    assert "a" * 64 not in error["message"]
    assert "a" * 64 not in caplog.text
    assert spaced.status_code == 400
    assert "invalid variant 'Bad Name'" in spaced.json()["error"]["message"]  # as written
    assert state.json()["variant"] == "cpu"


def test_variant_names_are_capped_at_64_characters_in_settings_too(tmp_path: Path) -> None:
    assert load_settings(home=tmp_path, env={"BODHI_EXEC_VARIANT": "a" * 64}).exec_variant
    with pytest.raises(SettingsError, match="at most 64 characters"):
        load_settings(home=tmp_path, env={"BODHI_EXEC_VARIANT": "a" * 65})


async def test_a_write_killed_half_way_leaves_a_temp_file_the_next_load_sweeps(
    tmp_path: Path,
) -> None:
    """A process that dies between writing the temp file and renaming it leaves a
    dotfile; the next load removes it once it is old enough not to be a write in
    progress, and leaves young temp files and other dotfiles alone."""
    directory = tmp_path / "aliases"
    store = AliasStore(directory)
    store.put(Alias(DEMO_ALIAS, DEMO_REPO, DEMO_FILENAME))
    script = textwrap.dedent(
        f"""
        import os
        from pathlib import Path
        from bodhi_trio._config._alias_store import AliasStore
        from bodhi_trio._config._aliases import Alias

        os.replace = lambda *args: os._exit(3)  # dies after the temp file is written
        AliasStore(Path({str(directory)!r})).put(Alias("other", "org/repo", "m.gguf"))
        """
    )
    with trio.fail_after(60):
        killed = await trio.run_process([sys.executable, "-c", script], check=False)
    assert killed.returncode == 3
    leftovers = [path for path in directory.iterdir() if path.name.startswith(".other.yaml.")]
    assert len(leftovers) == 1, sorted(directory.iterdir())
    an_hour_ago = time.time() - 3600
    os.utime(leftovers[0], (an_hour_ago, an_hour_ago))
    in_progress = directory / ".third.yaml.abcd1234"  # another process writing right now
    in_progress.write_text("alias: third\n")
    unrelated = directory / ".keep"
    unrelated.write_text("")

    aliases, problems = store.load()

    assert [alias.alias for alias in aliases] == [DEMO_ALIAS]
    assert problems == []
    assert not leftovers[0].exists()
    assert in_progress.exists()
    assert unrelated.exists()
