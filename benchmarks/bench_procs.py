"""Processes the benchmark runs: bodhi-trio servers, LiteLLM's proxy, a fake upstream of its
own, and what /proc says.

Every process is started in its own session (``start_new_session``), so :func:`stop` reaches
its whole process group; callers stop what they start in a ``finally``.

bodhi-trio's children listen on a Unix socket in a private directory, never on a TCP port:
the harness finds a child's socket in bodhi-trio's log (:meth:`Bodhi.child`) and talks to it
over that socket (:func:`http_json` with ``unix_socket``; the bench client's ``unix_socket``).

:func:`running_router` starts llama.cpp's own router mode (``llama-server --models-preset
INI --models-max N``, the binary bodhi-trio runs) on a TCP port; :func:`pin` binds every
thread of a process to some cores (``sched_setaffinity`` per thread, as ``taskset -a`` does).
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
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs
import httpx

__all__ = [
    "CHILD_URL",
    "DEMO_FILENAME",
    "DEMO_REPO",
    "FAKE",
    "LITELLM_KEY",
    "Bodhi",
    "ChildStart",
    "child_starts",
    "cpu_between",
    "cpu_reading",
    "cpu_seconds",
    "free_port",
    "http_json",
    "hub_file",
    "llama_server_path",
    "newest_model",
    "pin",
    "rss_mib",
    "threads",
    "running_bodhi",
    "running_fake",
    "running_floor",
    "running_litellm",
    "running_router",
    "start_bodhi",
    "start_litellm",
    "stop",
    "switches_reading",
]

HERE = Path(__file__).resolve().parent
FAKE = HERE / "fake_upstream.py"
LITELLM_VENV = HERE / ".venv-litellm"
LITELLM_KEY = "sk-bench-litellm"
DEMO_REPO = "bodhi-trio/tiny-random-llama"
DEMO_FILENAME = "tiny-random-llama.gguf"
_LISTENING = re.compile(rb"listening on (http://[0-9.]+:[0-9]+)")
# A child's root URL over its Unix socket: only the path and the Host header come from it.
CHILD_URL = "http://localhost"
# bodhi-trio's own lines about each start of a child (see bodhi_trio._llama._child)
_STARTING = re.compile(r"\[bodhi-trio\] starting: (.+?)\s*$")
_SPAWNED = re.compile(r"\[bodhi-trio\] spawned pid (\d+)\s*$")
_READY = re.compile(r"\[bodhi-trio\] ready on unix:(.+?) after ([0-9.]+) s\s*$")
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


def threads(pid: int) -> int:
    """How many threads ``pid`` has now (0 if it is gone)."""
    try:
        return sum(1 for _ in Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return 0


def cpu_reading(pid: int, precise: bool = True) -> dict[int, float] | None:
    """What :func:`cpu_between` compares: ``precise``, thread id → CPU seconds of each live
    thread of ``pid``, to the nanosecond (``/proc/PID/task/TID/schedstat``; ``cpu_seconds``
    counts 10 ms ticks, too coarse for a few seconds of a slow stream, but reading a file per
    thread takes a while for a process of hundreds); else, or without schedstat,
    ``{0: cpu_seconds(pid)}``. None if the process is gone."""
    if precise:
        times: dict[int, float] = {}
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{pid}/task").iterdir():
                with contextlib.suppress(OSError, ValueError, IndexError):
                    times[int(task.name)] = int((task / "schedstat").read_text().split()[0]) / 1e9
        if times:
            return times
    total = cpu_seconds(pid)
    return None if total is None else {0: total}


def cpu_between(
    before: Mapping[int, float] | None, after: Mapping[int, float] | None
) -> float | None:
    """CPU seconds between two :func:`cpu_reading`s of one process taken the same way: per
    thread, after - before; a thread started in between counts whole, one that ended counts
    nothing (its time since ``before`` is lost: a few short-lived helper threads at most)."""
    if before is None or after is None or (0 in before) != (0 in after):
        return None
    return sum(t - before.get(tid, 0.0) for tid, t in after.items())


def switches_reading(pid: int) -> dict[int, int] | None:
    """Thread id → context switches so far (voluntary and not: each one a wake-up, or the
    thread taken off its core) of each live thread of ``pid``, from
    ``/proc/PID/task/TID/status``; None if the process is gone. Compared by
    :func:`cpu_between` as CPU readings are."""
    counts: dict[int, int] = {}
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError, ValueError):
                status = (task / "status").read_text()
                counts[int(task.name)] = sum(
                    int(line.split()[1])
                    for line in status.splitlines()
                    if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches"))
                )
    return counts or None


def pin(pid: int, cpus: set[int]) -> bool:
    """Bind every thread of ``pid`` to ``cpus`` (threads it starts later inherit it from the
    thread that starts them); False if the process is gone or the system refuses."""
    try:
        tids = [int(t.name) for t in Path(f"/proc/{pid}/task").iterdir()]
    except OSError:
        return False
    done = False
    for tid in tids:
        with contextlib.suppress(OSError):  # a thread may end meanwhile
            os.sched_setaffinity(tid, cpus)
            done = True
    return done


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
    url: str,
    method: str = "GET",
    body: object = None,
    key: str | None = None,
    timeout: float = 5,
    unix_socket: str | None = None,
) -> object:
    """One small JSON request, to ``url`` or over ``unix_socket`` (then ``url`` gives only the
    path and Host, e.g. ``http://localhost/slots``); raises OSError (HTTPError included) on
    failure."""
    if unix_socket is not None:
        return _http_json_unix(unix_socket, url, method, body, key, timeout)
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        raw = response.read()
    return json.loads(raw) if raw else None


def _http_json_unix(
    path: str, url: str, method: str, body: object, key: str | None, timeout: float
) -> object:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    transport = httpx.HTTPTransport(uds=path)
    try:
        with httpx.Client(transport=transport, timeout=timeout) as client:
            response = client.request(method, url, json=body, headers=headers)
    except httpx.HTTPError as exc:
        raise OSError(f"{method} {url} over {path}: {exc!r}") from exc
    if response.status_code >= 400:
        raise OSError(f"{method} {url} over {path}: status {response.status_code}")
    return response.json() if response.content else None


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


@attrs.define
class ChildStart:
    """One start of a child, from bodhi-trio's log: ``starting: ARGV``, ``spawned pid N``,
    ``ready on unix:PATH after X s``."""

    argv: list[str]
    socket: str | None  # the --host it was given: its Unix socket
    pid: int | None = None
    ready_s: float | None = None  # bodhi-trio's spawn-to-ready time


def child_starts(lines: list[str]) -> list[ChildStart]:
    """Every start of a child that ``lines`` show, oldest first (the ring may have lost the
    start of the oldest one)."""
    starts: list[ChildStart] = []
    for line in lines:
        if m := _STARTING.search(line):
            argv = m.group(1).split(" ")  # bodhi-trio joins the argv with spaces
            host = argv[argv.index("--host") + 1] if "--host" in argv[:-1] else None
            starts.append(ChildStart(argv, host))
        elif (m := _SPAWNED.search(line)) and starts:
            starts[-1].pid = int(m.group(1))
        elif m := _READY.search(line):
            for start in reversed(starts):
                if start.socket == m.group(1):
                    start.ready_s = float(m.group(2))
                    break
    return starts


def newest_model(doc: dict[str, Any], alias: str | None = None) -> dict[str, Any]:
    """From ``GET /bodhi/v1/state``: ``alias``'s entry (``None``: the newest one)."""
    models = [m for m in doc.get("models", []) if alias is None or m.get("alias") == alias]
    if not models:
        return {"state": "stopped", "alias": None, "pid": None, "in_flight": 0}
    newest: dict[str, Any] = max(models, key=lambda m: m.get("since") or 0)
    return newest


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
        """Load ``alias``; its entry of ``GET /bodhi/v1/state``'s ``models``."""
        doc = self.api("/bodhi/v1/server/load", "POST", {"alias": alias}, 120)
        state = newest_model(doc, alias)
        if state.get("state") != "ready":
            raise RuntimeError(f"{self.name}: loading {alias} gave {doc}")
        return state

    def state(self) -> dict[str, Any]:
        """The newest model's entry of ``GET /bodhi/v1/state`` (the suites run one at a time);
        ``{"state": "stopped"}`` when there is none."""
        return newest_model(self.api("/bodhi/v1/state", timeout=10))

    def logs(self, lines: int = 200) -> list[str]:
        doc: dict[str, list[str]] = self.api(f"/bodhi/v1/server/logs?lines={lines}", timeout=10)
        return doc["lines"]

    def create_alias(self, alias: dict[str, Any]) -> dict[str, Any]:
        """``POST /bodhi/v1/aliases`` (the harness's servers have no admin key): the
        alias as the server stored it."""
        created: dict[str, Any] = self.api("/bodhi/v1/aliases", "POST", alias, timeout=10)
        return created

    def child(self, pid: int) -> ChildStart:
        """The start of the child ``pid`` (``GET /bodhi/v1/state``'s ``pid``), once ready:
        its argv, Unix socket and spawn-to-ready time."""
        for start in reversed(child_starts(self.logs(1000))):
            if start.pid == pid and start.socket and start.ready_s is not None:
                return start
        raise RuntimeError(f"{self.name}: no ready start of child pid {pid} in the log")

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
    max_loaded: int = 1,
    files: dict[str, tuple[str, str]] | None = None,
    pythonpath: str | None = None,
) -> Bodhi:
    """``bodhi-trio serve --demo --port 0`` with its own BODHI_HOME and HF_HOME under
    ``workdir/name``, every alias in ``aliases`` (name → context params) on the demo model
    (or on the ``(repo, filename)`` that ``files`` gives for it: ``serve --demo`` also places
    ``demo:smol``'s), ``BODHI_KEEP_ALIVE_SECS=-1``, ``BODHI_MAX_LOADED_MODELS=max_loaded``,
    ``PYTHONPATH=pythonpath`` if given (another tree's ``src``: its bodhi-trio runs)
    and, if given, ``BODHI_LLAMA_SERVER=llama_server``.
    Its output goes to ``workdir/name/serve.log`` (a file: it can never block).
    """
    root = workdir / name
    home, log = root / "home", root / "serve.log"
    home.mkdir(parents=True, exist_ok=True)
    extra = {"BODHI_HOME": str(home), "HF_HOME": str(root / "hf"), "BODHI_KEEP_ALIVE_SECS": "-1"}
    # One model at a time unless told: the suites compare one child against its direct arm,
    # and the swap suite measures swaps (several resident models would make them loads beside).
    extra["BODHI_MAX_LOADED_MODELS"] = str(max_loaded)
    # The memory suite holds 1000 streams on one model: above the default per-model queue
    # bound (512), which would answer the rest 429. The harness measures relaying, not that.
    extra["BODHI_MAX_QUEUE"] = "100000"
    if llama_server is not None:
        extra["BODHI_LLAMA_SERVER"] = str(llama_server)
    if pythonpath is not None:
        extra["PYTHONPATH"] = pythonpath
    env = _clean_env(**extra)
    for alias, params in aliases.items():
        argv = [*_bodhi_argv(), "--home", str(home), "alias", "create", alias]
        repo, filename = (files or {}).get(alias, (DEMO_REPO, DEMO_FILENAME))
        argv += ["--repo", repo, "--filename", filename]
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
    max_loaded: int = 1,
    files: dict[str, tuple[str, str]] | None = None,
    pythonpath: str | None = None,
) -> Iterator[Bodhi]:
    """:func:`start_bodhi`, stopped (and its children with it) on leaving."""
    bodhi = start_bodhi(
        workdir,
        name,
        aliases,
        llama_server,
        max_loaded=max_loaded,
        files=files,
        pythonpath=pythonpath,
    )
    try:
        yield bodhi
    finally:
        stop(bodhi.proc, grace=15.0)


@contextlib.contextmanager
def running_fake(
    argv: list[str], workdir: Path, timeout: float = 30.0
) -> Iterator[tuple[str, int]]:
    """A fake upstream started as ``argv`` (a child's, from :meth:`Bodhi.child`) but listening
    on a free TCP port of 127.0.0.1 instead of a Unix socket: a twin of that child for clients
    that cannot reach a Unix socket. Yields its root URL and pid, stops it on leaving.
    """
    args = list(argv[1:])
    for flag in ("--host", "--port"):
        while flag in args[:-1]:
            at = args.index(flag)
            del args[at : at + 2]
    argv = [argv[0], *args, "--host", "127.0.0.1", "--port", "0"]
    with _listening(argv, workdir / "twin.log", "the twin fake upstream", timeout) as started:
        yield started


@contextlib.contextmanager
def running_floor(upstream: str, workdir: Path, timeout: float = 30.0) -> Iterator[tuple[str, int]]:
    """``floor_relay.py`` (a bare Trio relay) in front of ``upstream`` (a child's Unix socket):
    the ``trio-floor`` arm. Yields its root URL and pid, stops it on leaving."""
    argv = [sys.executable, str(HERE / "floor_relay.py"), "--upstream", upstream]
    with _listening(argv, workdir / "floor.log", "the floor relay", timeout) as started:
        yield started


@contextlib.contextmanager
def _listening(argv: list[str], log: Path, what: str, timeout: float) -> Iterator[tuple[str, int]]:
    """``argv`` started with its output in ``log``, once it printed ``listening on URL``:
    yields that URL and its pid, stops it on leaving."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=_clean_env(),
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + timeout
        while not (m := _LISTENING.search(log.read_bytes())):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not start; see {log}")
            time.sleep(0.05)
        yield m.group(1).decode(), proc.pid
    finally:
        stop(proc)


def hub_file(bodhi: Bodhi, repo: str, filename: str) -> Path | None:
    """Where ``bodhi``'s HF cache holds ``repo``'s ``filename`` (``serve --demo`` put it
    there), or None."""
    repo_dir = bodhi.home.parent / "hf" / "hub" / ("models--" + repo.replace("/", "--"))
    return next(iter(sorted(repo_dir.glob(f"snapshots/*/{filename}"))), None)


def llama_server_path() -> str:
    """The llama-server binary bodhi-trio runs (``bodhi-trio llama-server path``)."""
    return subprocess.run(
        [*_bodhi_argv(), "llama-server", "path"], capture_output=True, text=True, check=True
    ).stdout.strip()


_ROUTER_LISTENING = re.compile(rb"listening on http://127\.0\.0\.1:(\d+)")


@contextlib.contextmanager
def running_router(
    root: Path, preset: str, max_models: int, timeout: float = 60.0
) -> Iterator[tuple[int, int, Path]]:
    """llama.cpp's router mode: ``llama-server --models-preset INI --models-max N`` (INI:
    ``preset``, one section per model, keys as the long options without ``--``) on a free
    TCP port of 127.0.0.1. Yields its port, pid and log; stops it and the children it
    started (its session) on leaving."""
    root.mkdir(parents=True, exist_ok=True)
    ini, log = root / "models.ini", root / "router.log"
    ini.write_text(preset)
    argv = [llama_server_path(), "--models-preset", str(ini), "--models-max", str(max_models)]
    argv += ["--host", "127.0.0.1", "--port", str(free_port()), "--no-webui"]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + timeout
        while not (m := _ROUTER_LISTENING.search(log.read_bytes())):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"llama-server's router did not start; see {log}")
            time.sleep(0.05)
        yield int(m.group(1)), proc.pid, log
    finally:
        stop(proc, grace=15.0)


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
