"""``parley serve --upstream URL``: the kind found, the engine chosen.

Tokens mode where parley has the GGUF (a real llama-server whose model path
is readable here; vLLM given ``--model``), chat mode otherwise; the fakes of
``tests/fake_upstream.py`` stand in for the kinds this machine cannot run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import anthropic
import pytest

from parley.engines.upstream.auto import choose
from tests.conftest import Server, free_port, start_server
from tests.fake_upstream import Fake

HI = [{"role": "user", "content": "Say hello."}]


def test_the_engine_follows_the_kind_and_the_gguf(tmp_path: Path) -> None:
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    assert choose("llamaserver", None, str(gguf)) == "llamaserver"  # its own path, readable
    assert choose("llamaserver", None, "/elsewhere/m.gguf") == "openai"
    assert choose("llamaserver", str(gguf), None) == "llamaserver"
    assert choose("vllm", str(gguf), None) == "vllm"
    assert choose("vllm", None, None) == "openai"
    for kind in ("sglang", "ollama", "openai"):
        assert choose(kind, str(gguf), None) == "openai"


def _served(server: Server) -> anthropic.types.ModelInfo:
    return server.client().models.list().data[0]


def test_a_llama_server_is_served_in_tokens_mode(
    llama_server: str, server_factory: Callable[..., Server]
) -> None:
    server = server_factory("--upstream", llama_server, "--model-name", "auto")
    model = _served(server)
    assert model.id == "auto" and model.display_name.endswith("(llama-server)")
    client = server.client()
    message = client.messages.create(model="auto", max_tokens=5, messages=HI)  # type: ignore[arg-type]
    counted = client.messages.count_tokens(model="auto", messages=HI)  # type: ignore[arg-type]
    assert message.usage.input_tokens == counted.input_tokens


def test_a_llama_server_can_be_asked_for_chat_mode(
    llama_server: str, server_factory: Callable[..., Server]
) -> None:
    server = server_factory(
        "--upstream", llama_server, "--upstream-kind", "openai", "--model-name", "chat"
    )
    assert _served(server).display_name.endswith("(openai upstream)")


@pytest.fixture(scope="module")
def ollama() -> Iterator[Fake]:
    with Fake("ollama").serve() as fake:
        yield fake


def test_ollama_is_found_and_served_in_chat_mode(
    ollama: Fake, server_factory: Callable[..., Server]
) -> None:
    server = server_factory("--upstream", ollama.url, "--upstream-model", "llama3.2")
    model = _served(server)
    assert model.display_name.endswith("(ollama upstream)")
    message = server.client().messages.create(
        model=model.id,
        max_tokens=5,
        messages=HI,  # type: ignore[arg-type]
    )
    assert message.content
    assert ollama.bodies()[-1]["model"] == "llama3.2"


def test_a_gguf_for_a_chat_mode_upstream_is_refused(ollama: Fake, tmp_path: Path) -> None:
    server = start_server(
        ["--upstream", ollama.url, "--model", str(tmp_path / "m.gguf")], tmp_path, may_exit=True
    )
    assert server.process.wait(30) != 0
    assert "served in chat mode: name its model with --upstream-model" in server.log()


def test_nothing_listening_stops_start_up_naming_the_url(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    server = start_server(
        ["--upstream", url, "--engine-opt", "startup_timeout=0"], tmp_path, may_exit=True
    )
    assert server.process.wait(30) != 0
    assert f"--upstream {url}: no answer to learn what it is" in server.log()
