"""Processes the benchmark runs: bodhi-trio servers, LiteLLM's proxy, and what /proc says.

Every process is started in its own session (``start_new_session``), so :func:`stop` reaches
its whole process group; callers stop what they start in a ``finally``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs

__all__ = [
    "DEMO_FILENAME",
    "DEMO_REPO",
    "FAKE",
    "LITELLM_KEY",
    "Bodhi",
    "cpu_seconds",
    "free_port",
    "http_json",
    "rss_mib",
    "running_bodhi",
    "running_litellm",
    "start_bodhi",
    "start_litellm",
    "stop",
]

HERE = Path(__file__).resolve().parent
FAKE = HERE / "fake_upstream.py"
LITELLM_VENV = HERE / ".venv-litellm"
LITELLM_KEY = "sk-bench-litellm"
DEMO_REPO = "bodhi-trio/tiny-random-llama"
DEMO_FILENAME = "tiny-random-llama.gguf"
_LISTENING = re.compile(rb"listening on (http://[0-9.]+:[0-9]+)")
_TICK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def stop(proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """TERM the process group, KILL it after ``grace`` seconds."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    except ProcessLookupError:
        pass


def _stat_fields(pid: int) -> list[str]:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2 :].split()  # fields from the 3rd (state) on


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of one process (all its threads), in seconds."""
    try:
        fields = _stat_fields(pid)
    except (OSError, ValueError):
        return None
    return (int(fields[11]) + int(fields[12])) / _TICK


def _vm_rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def rss_mib(pid: int, group: bool = False) -> float | None:
    """Resident memory of one process, or of every process in its group, in MiB."""
    if not group:
        kib = _vm_rss_kib(pid)
        return None if kib is None else kib / 1024
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if int(_stat_fields(int(entry.name))[2]) != pid:
                continue
        except (OSError, ValueError, IndexError):
            continue
        total += _vm_rss_kib(int(entry.name)) or 0
    return total / 1024 if total else None


def http_json(
    url: str, method: str = "GET", body: object = None, key: str | None = None, timeout: float = 5
) -> object:
    """One small JSON request; raises OSError (HTTPError included) on failure."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        raw = response.read()
    return json.loads(raw) if raw else None


def _status(url: str, key: str | None = None) -> int:
    try:
        http_json(url, key=key, timeout=2)
    except urllib.error.HTTPError as exc:
        return exc.code
    except (OSError, ValueError):
        return 0
    return 200


def _bodhi_argv() -> list[str]:
    return [sys.executable, "-m", "bodhi_trio"]


def _clean_env(**extra: str) -> dict[str, str]:
    """The environment without the caller's bodhi-trio and HF settings, plus ``extra``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("BODHI_") and k not in ("HF_HOME", "HF_HUB_CACHE")
    }
    env.update(extra)
    return env


@attrs.define(eq=False)
class Bodhi:
    """A running ``bodhi-trio serve`` and its control API."""

    name: str
    proc: subprocess.Popen[bytes]
    url: str
    home: Path
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def api(self, path: str, method: str = "GET", body: object = None, timeout: float = 60) -> Any:
        return http_json(self.url + path, method, body, timeout=timeout)

    def load(self, alias: str) -> dict[str, Any]:
        state: dict[str, Any] = self.api("/bodhi/v1/server/load", "POST", {"alias": alias}, 120)
        if state.get("state") != "ready":
            raise RuntimeError(f"{self.name}: loading {alias} gave {state}")
        return state

    def state(self) -> dict[str, Any]:
        state: dict[str, Any] = self.api("/bodhi/v1/state", timeout=10)
        return state

    def logs(self, lines: int = 200) -> list[str]:
        doc: dict[str, list[str]] = self.api(f"/bodhi/v1/server/logs?lines={lines}", timeout=10)
        return doc["lines"]

    def stop_model(self) -> None:
        self.api("/bodhi/v1/server/stop", "POST", timeout=120)

    def rss_mib(self) -> float | None:
        return rss_mib(self.pid)

    def cpu_seconds(self) -> float | None:
        return cpu_seconds(self.pid)

    def log_tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def start_bodhi(
    workdir: Path,
    name: str,
    aliases: dict[str, list[str]],
    llama_server: Path | None = None,
    timeout: float = 120.0,
) -> Bodhi:
    """``bodhi-trio serve --demo --port 0`` with its own BODHI_HOME and HF_HOME under
    ``workdir/name``, every alias in ``aliases`` (name → context params) on the demo model,
    ``BODHI_KEEP_ALIVE_SECS=-1`` and, if given, ``BODHI_LLAMA_SERVER=llama_server``.
    Its output goes to ``workdir/name/serve.log`` (a file: it can never block).
    """
    root = workdir / name
    home, log = root / "home", root / "serve.log"
    home.mkdir(parents=True, exist_ok=True)
    extra = {"BODHI_HOME": str(home), "HF_HOME": str(root / "hf"), "BODHI_KEEP_ALIVE_SECS": "-1"}
    if llama_server is not None:
        extra["BODHI_LLAMA_SERVER"] = str(llama_server)
    env = _clean_env(**extra)
    for alias, params in aliases.items():
        argv = [*_bodhi_argv(), "--home", str(home), "alias", "create", alias]
        argv += ["--repo", DEMO_REPO, "--filename", DEMO_FILENAME]
        argv += [f"--context-param={p}" for p in params]
        subprocess.run(argv, env=env, check=True, capture_output=True, timeout=60)
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*_bodhi_argv(), "serve", "--demo", "--port", "0"],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    deadline = time.monotonic() + timeout
    try:
        while True:
            if m := _LISTENING.search(log.read_bytes()):
                url = m.group(1).decode()
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"bodhi-trio ({name}) did not start; see {log}")
            time.sleep(0.05)
    except BaseException:
        stop(proc)
        raise
    return Bodhi(name, proc, url, home, log)


@contextlib.contextmanager
def running_bodhi(
    workdir: Path,
    name: str,
    aliases: dict[str, list[str]],
    llama_server: Path | None = None,
) -> Iterator[Bodhi]:
    """:func:`start_bodhi`, stopped (and its child with it) on leaving."""
    bodhi = start_bodhi(workdir, name, aliases, llama_server)
    try:
        yield bodhi
    finally:
        stop(bodhi.proc, grace=15.0)


@contextlib.contextmanager
def running_litellm(upstream_port: int, workdir: Path) -> Iterator[tuple[str, int]]:
    """LiteLLM's proxy (its own venv, created on first use) with one model ``fake`` that
    points at ``upstream_port``; yields its base URL and pid, stops it on leaving.
    """
    proc, url = start_litellm(upstream_port, workdir)
    try:
        yield url, proc.pid
    finally:
        stop(proc)


def start_litellm(upstream_port: int, workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    """Install LiteLLM's proxy into its own venv (first time), start it, wait until ready."""
    litellm = LITELLM_VENV / "bin" / "litellm"
    if not litellm.exists():
        print(f"creating {LITELLM_VENV} and installing litellm[proxy] (large) ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(LITELLM_VENV)], check=True)
        pip = [str(LITELLM_VENV / "bin" / "python"), "-m", "pip", "install", "-q"]
        subprocess.run([*pip, "litellm[proxy]"], check=True)
    config = {
        "model_list": [
            {
                "model_name": "fake",
                "litellm_params": {
                    "model": "openai/fake",
                    "api_base": f"http://127.0.0.1:{upstream_port}/v1",
                    "api_key": "sk-none",
                },
            }
        ],
        "litellm_settings": {"drop_params": True},
    }
    workdir.mkdir(parents=True, exist_ok=True)
    config_path, log = workdir / "litellm-config.yaml", workdir / "litellm.log"
    config_path.write_text(json.dumps(config, indent=2))  # JSON is YAML
    port = free_port()
    env = dict(
        os.environ,
        LITELLM_MASTER_KEY=LITELLM_KEY,
        LITELLM_LOCAL_MODEL_COST_MAP="True",
        LITELLM_TELEMETRY_DISABLED="true",
    )
    argv = [str(litellm), "--config", str(config_path), "--host", "127.0.0.1", "--port", str(port)]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    deadline = time.monotonic() + 90
    url = f"http://127.0.0.1:{port}"
    while _status(f"{url}/health/liveliness", LITELLM_KEY) != 200:
        if proc.poll() is not None or time.monotonic() > deadline:
            stop(proc)
            raise RuntimeError(f"LiteLLM did not become ready in 90 s; see {log}")
        time.sleep(0.5)
    return proc, f"{url}/v1"
