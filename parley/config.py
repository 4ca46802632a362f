"""Settings: defaults < config file (TOML) < ``PARLEY_*`` environment < CLI flags."""

from __future__ import annotations

import difflib
import os
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

DEFAULT_DATA_DIR = Path("~/.local/share/parley")
LOG_LEVELS = ("debug", "info", "warning", "error")
ROPE_SCALINGS = ("auto", "none", "linear", "yarn")
# KV cache element types (llama.cpp's names) and ggml's numbers for them (ggml.h);
# quantised V needs flash attention (on).
KV_TYPES = {"f16": 1, "bf16": 30, "q8_0": 8, "q5_1": 7, "q5_0": 6, "q4_1": 3, "q4_0": 2, "f32": 0}

# Claude model ids that clients hard-code; each reaches the default local model
# unless an --alias says otherwise. Kept in sync with the SDK's ModelParam.
CLAUDE_MODEL_IDS = (
    "claude-opus-4-8",
    "claude-opus-4-7",
    "claude-opus-4-6",
    "claude-sonnet-4-6",
    "claude-opus-4-5",
    "claude-opus-4-5-20251101",
    "claude-sonnet-4-5",
    "claude-sonnet-4-5-20250929",
    "claude-haiku-4-5",
    "claude-haiku-4-5-20251001",
    "claude-opus-4-1",
    "claude-opus-4-1-20250805",
    "claude-opus-4-0",
    "claude-opus-4-20250514",
    "claude-sonnet-4-0",
    "claude-sonnet-4-20250514",
    "claude-3-7-sonnet-latest",
    "claude-3-7-sonnet-20250219",
    "claude-3-5-haiku-latest",
    "claude-3-5-haiku-20241022",
    "claude-3-haiku-20240307",
)


class ConfigError(ValueError):
    """Start-up error: a setting has a value parley cannot use."""


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8000
    engine: str = "llamacpp"
    model: str | None = None  # a GGUF path; None serves the embedded default
    model_name: str | None = None  # the id clients use; derived when None
    chat_template: str | None = None  # a Jinja file replacing the GGUF's template
    aliases: dict[str, str] = field(default_factory=dict)
    claude_aliases: bool = True
    api_keys: tuple[str, ...] = ()
    data_dir: Path = DEFAULT_DATA_DIR
    script: str | None = None  # rules file of the scripted engine
    n_ctx: int = 8192
    n_batch: int = 512
    rope_scaling: str = "auto"  # auto (YaRN past the trained context), none, linear, yarn
    kv_type: str = "q8_0"  # the KV cache's element type (KV_TYPES)
    rope_scale: float | None = None  # context multiplier; None: n_ctx / trained context
    parallel: int = 8  # sequences decoded together (continuous batching)
    prefill_chunk: int = 128  # prompt tokens per step while other sequences decode
    threads: int | None = None
    max_queue: int = 64
    queue_timeout: float = 300.0  # seconds a request may wait for capacity before a 529
    stream_interval_ms: float = 20.0  # a stream's deltas are grouped into one per interval
    cache_budget_mb: int = 1024  # host memory for prompt-cache KV state; 0 turns caching off
    cache_min_tokens: int = 1024  # shorter prefixes are not cached (the API's minimum)
    idle_cache_mb: int = 1024  # host memory for idle slots' KV state; 0 keeps it in the context
    grammar_step_timeout: float = 3.0  # seconds one constrained sampling step may take
    rate_requests: int = 0  # per API key and minute; 0: no limit
    rate_input_tokens: int = 0  # per API key and minute; 0: no limit
    rate_output_tokens: int = 0  # per API key and minute; 0: no limit
    # count_tokens requests per API key and minute, metered apart from Messages;
    # None: twice rate_requests (the API's ratio at most tiers), 0: no limit
    rate_count_tokens: int | None = None
    slow_reader_timeout: float = 60.0  # seconds a response may wait for a client to read
    header_timeout: float = 10.0  # seconds a connection may take to send a request's headers
    body_timeout: float = 30.0  # seconds a request body may go without data (and see http.py)
    max_connections: int = 1000  # open connections; beyond them new ones get 529 and close
    shutdown_grace: float = 8.0  # seconds open streams may go on after SIGTERM
    url_sources: bool = False  # fetch documents given by URL (SSRF-guarded)
    url_allow: tuple[str, ...] = ()  # hosts or networks exempt from the SSRF guard
    url_max_bytes: int = 10 * 1024 * 1024  # one document fetched by URL
    url_max_total_bytes: int = 32 * 1024 * 1024  # all of one request's URL documents
    url_max_documents: int = 20  # URL documents in one request
    url_timeout: float = 10.0  # seconds for one document's whole fetch
    default_temperature: float = 1.0  # for requests without one (the API default is 1)
    # Caps max_tokens of requests made under a Claude id (an alias here): clients
    # written for Claude ask for 32,000-64,000, which a small model may write
    # until its context is full. None: no cap (the context bounds the answer).
    alias_max_tokens: int | None = None
    docs: bool = False  # the interactive API docs page at /docs
    ping_interval: float = 5.0
    redact_thinking: bool = False  # return thinking as sealed redacted_thinking blocks
    max_body_bytes: int = 32 * 1024 * 1024
    max_batch_bytes: int = 256 * 1024 * 1024
    batch_workers: int | None = None  # batch requests in flight; None: as many as --parallel
    batch_expiry: float = 24 * 3600.0  # seconds from creation until unfinished requests expire
    batch_retention: float = 29 * 24 * 3600.0  # seconds from creation until a batch is deleted
    batch_max_attempts: int = 3  # times a batch request is started before it ends errored
    # Where batches (and, when given, rate limits and the thinking key) live:
    # None is SQLite in the data dir; postgresql://... is shared by replicas.
    database_url: str | None = None
    batch_lease: float = 30.0  # seconds a replica's claim on a batch request lasts unrenewed
    log_level: str = "info"
    # Options engines declare for themselves (parley.engines.options), by engine name:
    # the config file's [engines.NAME] tables, --engine-opt and PARLEY_ENGINE_OPTS.
    engine_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    # The config file's [[models]]: several models served side by side, each an
    # engine name and that engine's options. Empty: the one engine above.
    models: tuple[ModelEntry, ...] = ()


@dataclass(frozen=True)
class ModelEntry:
    """One ``[[models]]`` table: ``engine`` and its options (``where`` names it in errors)."""

    engine: str
    options: dict[str, Any]
    where: str


def model_entries(path: Path, raw: Any) -> tuple[ModelEntry, ...]:
    if not isinstance(raw, list) or not all(isinstance(t, dict) for t in raw):
        raise ConfigError(f"{path}: [[models]] must be tables, one per model")
    entries = []
    for i, table in enumerate(raw):
        where = f"{path}: models.{i}"
        options = dict(table)
        engine = options.pop("engine", None)
        if not isinstance(engine, str) or not engine:
            raise ConfigError(f"{where}: 'engine' is required (e.g. engine = \"llamaserver\")")
        entries.append(ModelEntry(engine, options, where))
    return tuple(entries)


_ENV_PREFIX = "PARLEY_"


def _coerce(name: str, raw: Any) -> Any:
    kind = {f.name: f.type for f in fields(Settings)}[name]
    try:
        if name == "aliases":
            if isinstance(raw, dict):
                return {str(k): str(v) for k, v in raw.items()}
            items = raw if isinstance(raw, list | tuple) else str(raw).split(",")
            return parse_aliases([str(item) for item in items])
        if name in ("api_keys", "url_allow"):
            items = raw if isinstance(raw, list | tuple) else str(raw).split(",")
            return tuple(str(k).strip() for k in items if str(k).strip())
        if name == "data_dir":
            return Path(str(raw)).expanduser()
        if name in ("claude_aliases", "redact_thinking", "url_sources"):
            if isinstance(raw, bool):
                return raw
            word = str(raw).strip().lower()
            if word not in _TRUE | _FALSE:
                raise ValueError("expected true or false")
            return word in _TRUE
        if kind in ("int", "int | None"):
            return int(raw)
        if kind in ("float", "float | None"):
            return float(raw)
        return str(raw)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"setting '{name}': cannot use {raw!r}: {exc}") from exc


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices``, or nothing."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def parse_pairs(items: list[str], where: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        if not item.strip():
            continue
        key, sep, value = item.strip().partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{where}: '{item}' is not of the form KEY=VALUE")
        out[key.strip()] = value.strip()
    return out


def parse_aliases(items: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        item = item.strip()
        if not item:
            continue
        name, sep, target = item.partition("=")
        if not sep or not name.strip() or not target.strip():
            raise ConfigError(f"alias '{item}' is not of the form NAME=MODEL")
        out[name.strip()] = target.strip()
    return out


def load_settings(
    overrides: dict[str, Any] | None = None,
    *,
    environ: dict[str, str] | None = None,
    config_file: Path | None = None,
) -> Settings:
    env = dict(os.environ if environ is None else environ)
    names = {f.name for f in fields(Settings)}
    values: dict[str, Any] = {}
    path = config_file or (Path(env["PARLEY_CONFIG"]) if env.get("PARLEY_CONFIG") else None)
    if path is not None:
        try:
            data = tomllib.loads(path.expanduser().read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config file {path}: {exc}") from exc
        tables = data.pop("engines", {})
        if not isinstance(tables, dict) or not all(isinstance(t, dict) for t in tables.values()):
            raise ConfigError(f"{path}: [engines.NAME] must be tables of engine options")
        values["engine_options"] = {name: dict(t) for name, t in tables.items()}
        if "models" in data:
            values["models"] = model_entries(path, data.pop("models"))
        # Keys may be spelled as the flags are (n-ctx for n_ctx).
        data = {key.replace("-", "_"): value for key, value in data.items()}
        for key in sorted(set(data) - names):
            hint = did_you_mean(key, names - {"engine_options", "models"})
            raise ConfigError(f"{path}: unknown setting '{key}'{hint}")
        try:
            values.update({k: _coerce(k, v) for k, v in data.items()})
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from exc
    for name in names - {"engine_options", "models"}:
        raw = env.get(_ENV_PREFIX + name.upper())
        if raw is not None and raw != "":
            values[name] = _coerce(name, raw)
    for name, raw in (overrides or {}).items():
        if raw is not None:
            values[name] = _coerce(name, raw) if name in names else raw
    # --engine-opt / PARLEY_ENGINE_OPTS: options of the engine being served.
    chosen = (overrides or {}).get("engine") or values.get("engine") or Settings.engine
    pairs = dict(parse_pairs(env.get("PARLEY_ENGINE_OPTS", "").split(","), "PARLEY_ENGINE_OPTS"))
    pairs.update((overrides or {}).get("engine_opts") or {})
    if pairs:
        tables = dict(values.get("engine_options", {}))
        tables[chosen] = {**tables.get(chosen, {}), **pairs}
        values["engine_options"] = tables
    values.pop("engine_opts", None)
    settings = replace(Settings(), **values)
    if settings.n_ctx < 256:
        raise ConfigError("setting 'n_ctx' must be at least 256")
    if not 1 <= settings.parallel <= 64:
        raise ConfigError("setting 'parallel' must be between 1 and 64")
    if settings.rope_scaling not in ROPE_SCALINGS:
        raise ConfigError("setting 'rope_scaling' must be auto, none, linear or yarn")
    if settings.kv_type not in KV_TYPES:
        raise ConfigError(f"setting 'kv_type' must be one of {', '.join(KV_TYPES)}")
    if settings.log_level.lower() not in LOG_LEVELS:
        raise ConfigError(f"setting 'log_level' must be one of {', '.join(LOG_LEVELS)}")
    if settings.rope_scale is not None and settings.rope_scale < 1.0:
        raise ConfigError("setting 'rope_scale' must be at least 1")
    if settings.grammar_step_timeout <= 0:
        raise ConfigError("setting 'grammar_step_timeout' must be more than 0")
    if settings.idle_cache_mb < 0:
        raise ConfigError("setting 'idle_cache_mb' must be 0 or more")
    if settings.cache_budget_mb < 0 or settings.cache_min_tokens < 1:
        raise ConfigError("settings 'cache_budget_mb' ≥ 0 and 'cache_min_tokens' ≥ 1 are required")
    if settings.alias_max_tokens is not None and settings.alias_max_tokens < 1:
        raise ConfigError("setting 'alias_max_tokens' must be at least 1")
    if settings.max_queue < 1:
        raise ConfigError("setting 'max_queue' must be at least 1")
    if settings.batch_max_attempts < 1:
        raise ConfigError("setting 'batch_max_attempts' must be at least 1")
    if settings.batch_lease < 1:
        raise ConfigError("setting 'batch_lease' must be at least 1 (seconds)")
    if settings.database_url is not None:
        from parley.db.database import resolve_url

        resolve_url(settings.database_url)  # a ConfigError naming what is wrong
    if settings.rate_count_tokens is not None and settings.rate_count_tokens < 0:
        raise ConfigError("setting 'rate_count_tokens' must be 0 or more")
    for name in ("url_max_bytes", "url_max_total_bytes", "url_max_documents", "url_timeout"):
        if getattr(settings, name) <= 0:
            raise ConfigError(f"setting '{name}' must be more than 0")
    if settings.header_timeout <= 0 or settings.body_timeout <= 0:
        raise ConfigError("settings 'header_timeout' and 'body_timeout' must be more than 0")
    if settings.max_connections < 1:
        raise ConfigError("setting 'max_connections' must be at least 1")
    return settings
