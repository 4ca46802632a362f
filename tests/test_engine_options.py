"""Engines declare their own options: ``[engines.NAME]``, ``--engine-opt``, ``PARLEY_ENGINE_OPTS``."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from parley.config import ConfigError, Settings, load_settings
from parley.engines.options import engine_options
from tests.conftest import MODEL, RULES, Server

SERVE = [sys.executable, "-m", "parley", "serve", "--port", "0"]


@dataclass(frozen=True)
class Options:
    size: int = 3
    name: str | None = None
    fast: bool = False


def test_sources_in_order(tmp_path: Path) -> None:
    config = tmp_path / "parley.toml"
    config.write_text('[engines.demo]\nsize = 5\nname = "file"\n\n[engines.other]\nsize = 9\n')
    settings = load_settings(
        {"engine": "demo", "engine_opts": {"name": "flag"}},
        environ={"PARLEY_ENGINE_OPTS": "fast=yes,size=6"},
        config_file=config,
    )
    assert engine_options(settings, "demo", Options) == Options(size=6, name="flag", fast=True)
    assert engine_options(settings, "other", Options, {"size": 1}) == Options(size=9)
    assert engine_options(Settings(), "demo", Options, {"size": 1}) == Options(size=1)


@pytest.mark.parametrize(
    ("opts", "message"),
    [
        ({"sise": "4"}, "engine 'demo' has no option 'sise'; did you mean 'size'?"),
        ({"size": "four"}, "engine 'demo' option 'size': cannot use 'four'"),
        ({"fast": "maybe"}, "option 'fast': cannot use 'maybe': expected true or false"),
    ],
)
def test_bad_options_are_named(opts: dict[str, str], message: str) -> None:
    settings = load_settings({"engine": "demo", "engine_opts": opts}, environ={})
    with pytest.raises(ConfigError, match=message.replace("?", r"\?")):
        engine_options(settings, "demo", Options)


def test_the_scripted_engine_reads_its_options(server_factory: Callable[..., Server]) -> None:
    server = server_factory(
        "--engine", "scripted", "--script", str(RULES), "--engine-opt", "context_length=4321"
    )
    models = {m.id: m for m in server.client().models.list().data}
    assert models["scripted"].max_input_tokens == 4321


@pytest.mark.model
def test_the_llama_engine_reads_its_options_and_old_flags_still_work(
    server_factory: Callable[..., Server],
) -> None:
    server = server_factory("--n-ctx", "1024", "--engine-opt", "parallel=2")
    models = {m.id: m for m in server.client().models.list().data}
    assert models[MODEL].max_input_tokens == 1024
    assert len(server.stats()[MODEL]["slots"]) == 2


@pytest.mark.model
def test_the_kv_type_reaches_llama_cpp() -> None:
    """``kv_type`` is the KV cache's element type: a sequence's saved KV state is
    about twice as big in f16 (2 bytes a value) as in q8_0 (34 bytes a 32)."""
    from parley.engines.llamacpp import embedded_model_path
    from parley.engines.llamacpp.native import LlamaNative, NativeConfig
    from parley.engines.llamacpp.ops import BatchEntry

    sizes = {}
    for kind in ("f16", "q8_0"):
        config = NativeConfig(n_ctx=256, n_seq_max=1, n_batch=64, n_threads=1, kv_type=kind)
        native = LlamaNative(embedded_model_path(), config)
        try:
            native.decode([BatchEntry(t, t, 0, False) for t in range(1, 33)])
            sizes[kind] = native.save_seq(0)[1]
        finally:
            native.close()
    assert 1.7 < sizes["f16"] / sizes["q8_0"] < 2.0, sizes


def test_an_unknown_engine_option_stops_start_up(tmp_path: Path) -> None:
    done = subprocess.run(
        [*SERVE, "--engine", "scripted", "--engine-opt", "contxt_length=5"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PARLEY_DATA_DIR": str(tmp_path / "data")},
    )
    assert done.returncode != 0
    assert "did you mean 'context_length'?" in done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr


@dataclass(frozen=True)
class Listed:
    url: tuple[str, ...] = ()
    ports: tuple[int, ...] = (1,)


def test_a_list_option_takes_a_toml_array_or_comma_separated_items(tmp_path: Path) -> None:
    config = tmp_path / "parley.toml"
    config.write_text('[engines.demo]\nurl = ["http://a:1", "http://b:2"]\n')
    from_file = load_settings({"engine": "demo"}, environ={}, config_file=config)
    assert engine_options(from_file, "demo", Listed).url == ("http://a:1", "http://b:2")
    flag = load_settings(
        {"engine": "demo", "engine_opts": {"url": "http://a:1, http://b:2,", "ports": "8,9"}},
        environ={},
    )
    assert engine_options(flag, "demo", Listed) == Listed(("http://a:1", "http://b:2"), (8, 9))
    bad = load_settings({"engine": "demo", "engine_opts": {"ports": "8,x"}}, environ={})
    with pytest.raises(ConfigError, match="option 'ports'"):
        engine_options(bad, "demo", Listed)


def test_an_upstream_url_list_is_checked(tmp_path: Path) -> None:
    from parley.engines.upstream.options import UpstreamOptions, read_options

    def read(url: str) -> UpstreamOptions:
        settings = load_settings({"engine": "vllm", "engine_opts": {"url": url}}, environ={})
        return read_options(settings, "vllm", UpstreamOptions, "http://h:1")

    assert read("http://a:1,https://b:2").url == ("http://a:1", "https://b:2")
    for wrong in ["", "http://a:1,b:2", "http://a:1,http://a:1"]:
        with pytest.raises(ConfigError, match="'url'"):
            read(wrong)
