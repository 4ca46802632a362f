"""Settings precedence: defaults < config file < PARLEY_* environment < flags."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from parley.config import ConfigError, Settings, load_settings


def test_defaults() -> None:
    settings = load_settings(environ={})
    assert settings == Settings()


def test_precedence(tmp_path: Path) -> None:
    config = tmp_path / "parley.toml"
    config.write_text('port = 7000\nhost = "0.0.0.0"\napi_keys = ["from-file"]\nn_ctx = 4096\n')
    env = {"PARLEY_CONFIG": str(config), "PARLEY_PORT": "7100", "PARLEY_ALIASES": "a=b, c=d"}
    settings = load_settings({"port": 7200}, environ=env)
    assert settings.port == 7200  # flag beats environment
    assert settings.host == "0.0.0.0"  # file beats default
    assert settings.api_keys == ("from-file",)
    assert settings.n_ctx == 4096
    assert settings.aliases == {"a": "b", "c": "d"}
    from_env = load_settings(environ=env)
    assert from_env.port == 7100  # environment beats file


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"PARLEY_PORT": "eighty"}, "setting 'port'"),
        ({"PARLEY_ALIASES": "nonsense"}, "NAME=MODEL"),
        ({"PARLEY_N_CTX": "12"}, "n_ctx"),
        ({"PARLEY_KV_TYPE": "q7"}, "'kv_type' must be one of f16, bf16, q8_0"),
        ({"PARLEY_URL_MAX_DOCUMENTS": "0"}, "'url_max_documents' must be more than 0"),
        ({"PARLEY_URL_MAX_TOTAL_BYTES": "-1"}, "'url_max_total_bytes' must be more than 0"),
    ],
)
def test_bad_values(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(environ=env)


@pytest.mark.parametrize(
    ("line", "says"),
    [
        ("prot = 1", "unknown setting 'prot' (did you mean 'port'?)"),
        ('api_key = ["k"]', "unknown setting 'api_key' (did you mean 'api_keys'?)"),
        ("zzz = 1", "unknown setting 'zzz'"),
        ('log_level = "loud"', "setting 'log_level' must be one of debug, info, warning, error"),
        ('redact_thinking = "maybe"', "setting 'redact_thinking': cannot use 'maybe'"),
    ],
)
def test_a_bad_file_is_a_one_line_error_with_a_hint(tmp_path: Path, line: str, says: str) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(line + "\n")
    with pytest.raises(ConfigError) as raised:
        load_settings(config_file=config, environ={})
    message = str(raised.value)
    assert says in message and "\n" not in message
    if "log_level" not in says:  # (checked once all sources are merged)
        assert message.startswith(str(config))  # names the file


def test_keys_may_be_spelled_as_the_flags_are(tmp_path: Path) -> None:
    config = tmp_path / "flags.toml"
    config.write_text('n-ctx = 4096\nrope-scaling = "none"\n')
    settings = load_settings(config_file=config, environ={})
    assert settings.n_ctx == 4096 and settings.rope_scaling == "none"


def test_the_example_config_loads_and_names_every_flag() -> None:
    from parley.serve_flags import FLAGS

    example = Path(__file__).parent.parent / "parley.example.toml"
    text = example.read_text()
    assert load_settings(config_file=example, environ={}) == Settings()  # it shows the defaults
    for flag in FLAGS:
        if flag.setting is not None:
            assert f"{flag.setting} = " in text, flag.setting  # commented out, with its default
            assert flag.flag in text, flag.flag  # and the flag it maps to


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (None, "cannot read the model file"),
        (b"\x00not a model at all", "is not a GGUF model file"),
        (b"GGUF" + bytes(64), "could not load"),  # the right magic, then garbage
    ],
    ids=["missing", "not-gguf", "corrupt-gguf"],
)
def test_a_model_that_cannot_load_is_a_clear_start_up_error(
    tmp_path: Path, content: bytes | None, needle: str
) -> None:
    model = tmp_path / "model.gguf"
    if content is not None:
        model.write_bytes(content)
    done = subprocess.run(
        [sys.executable, "-m", "parley", "serve", "--model", str(model), "--port", "0"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PARLEY_DATA_DIR": str(tmp_path / "data")},
    )
    assert done.returncode != 0
    assert needle in done.stdout + done.stderr
