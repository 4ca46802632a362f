"""Several models served side by side from one config file (``[[models]]``).

Each entry is an engine name and that engine's options; ``/v1/models`` lists
them all with their real context sizes, each id routes to its own engine, and
the Claude aliases go to the first. Served for real: the embedded llama.cpp
model, parley in front of a real llama-server, and the scripted engine.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from parley.config import ConfigError, load_settings
from tests.conftest import RULES, Server, embedded_gguf, start_server

HI = [{"role": "user", "content": "Say hello."}]


def _config(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def trio(
    server_factory: Callable[..., Server],
    llama_server: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Server:
    folder = tmp_path_factory.mktemp("models")
    config = _config(
        folder / "parley.toml",
        f"""
[[models]]
engine = "llamaserver"
url = "{llama_server}"
model = "{embedded_gguf()}"
model_name = "smollm2-upstream"

[[models]]
engine = "llamacpp"
n_ctx = 2048
parallel = 2

[[models]]
engine = "scripted"
script = "{RULES}"
model_name = "rules"
context_length = 5000
""",
    )
    return server_factory(env={"PARLEY_CONFIG": str(config)})


def test_models_lists_every_model_with_its_own_context(trio: Server) -> None:
    client = trio.client()
    listed = {m.id: m for m in client.models.list(limit=100).data}
    assert {"smollm2-upstream", "smollm2-135m-instruct", "rules"} <= set(listed)
    assert listed["smollm2-upstream"].max_input_tokens == 8192  # llama-server -c 8192 -kvu
    assert listed["smollm2-135m-instruct"].max_input_tokens == 2048
    assert listed["rules"].max_input_tokens == 5000
    # The Claude aliases go to the first entry.
    alias = client.models.retrieve("claude-sonnet-4-6")
    assert alias.display_name.endswith("→ smollm2-upstream")


@pytest.mark.parametrize("model", ["smollm2-upstream", "smollm2-135m-instruct", "rules"])
def test_each_model_answers_and_counts_on_its_own_engine(trio: Server, model: str) -> None:
    client = trio.client()
    message = client.messages.create(
        model=model,
        max_tokens=8,
        messages=HI,
        extra_body={"temperature": 0.0},  # type: ignore[arg-type]
    )
    assert message.model == model
    counted = client.messages.count_tokens(model=model, messages=HI)  # type: ignore[arg-type]
    assert message.usage.input_tokens == counted.input_tokens > 0
    assert 0 < message.usage.output_tokens <= 8
    assert model in trio.stats()  # an engine of its own


def test_an_entry_needs_an_engine_and_its_options_are_checked(tmp_path: Path) -> None:
    config = _config(tmp_path / "a.toml", '[[models]]\nmodel_name = "x"\n')
    with pytest.raises(ConfigError, match=r"models\.0: 'engine' is required"):
        load_settings(config_file=config, environ={})
    config = _config(
        tmp_path / "b.toml",
        f'[[models]]\nengine = "scripted"\nscript = "{RULES}"\n\n'
        '[[models]]\nengine = "scripted"\nmodel_nme = "y"\n',
    )
    settings = load_settings(config_file=config, environ={})
    from parley.api.app import build_engines

    with pytest.raises(
        ConfigError, match=r"models\.1: engine 'scripted' has no option 'model_nme'"
    ):
        build_engines(settings)


def test_two_models_under_one_id_stop_start_up(tmp_path: Path) -> None:
    config = _config(
        tmp_path / "dup.toml",
        '[[models]]\nengine = "scripted"\nmodel_name = "same"\n\n'
        '[[models]]\nengine = "scripted"\nmodel_name = "same"\n',
    )
    server = start_server([], tmp_path, {"PARLEY_CONFIG": str(config)}, may_exit=True)
    assert server.process.wait(30) != 0
    assert "two models are served as 'same'" in server.log()
