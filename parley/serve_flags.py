"""The flags of ``parley serve``: each one's setting, environment variable,
default and help, declared once.

The CLI's parser, its help (every option says its default and environment
variable) and the mapping of flags onto ``Settings`` are all built from
``FLAGS``; ``parley.example.toml`` shows the same settings as config keys.
A flag whose ``setting`` is None is not a setting (``--config``, the
``--upstream`` family, ``--engine-opt``): ``cli.py`` handles it.
"""

from __future__ import annotations

import argparse
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Any

from parley.config import KV_TYPES, LOG_LEVELS, ROPE_SCALINGS, Settings


@dataclass(frozen=True)
class Flag:
    flag: str
    help: str
    setting: str | None = None  # the Settings field it sets (None: handled by the CLI)
    type: Any = str
    metavar: str | None = None
    choices: tuple[str, ...] | None = None
    repeat: bool = False  # may be given several times (a list)
    switch: bool | None = None  # a flag without a value: sets the setting to this
    default: str | None = None  # the default as shown, when Settings' own says too little
    env: str | None = None  # the environment variable, when not PARLEY_<SETTING>

    @property
    def dest(self) -> str:
        return self.flag.removeprefix("--").replace("-", "_")

    def env_name(self) -> str | None:
        if self.env is not None:
            return self.env or None
        return f"PARLEY_{self.setting.upper()}" if self.setting else None

    def shown_default(self) -> str | None:
        if self.default is not None:
            return self.default
        if self.setting is None:
            return None
        value = _DEFAULTS[self.setting]
        if isinstance(value, bool):
            return "on" if value else "off"
        if isinstance(value, tuple | dict) and not value:
            return "none"
        return f"{value:g}" if isinstance(value, float) else str(value)

    def help_text(self) -> str:
        extra = []
        if (default := self.shown_default()) is not None:
            extra.append(f"default: {default}")
        if (env := self.env_name()) is not None:
            extra.append(f"env: {env}")
        text = f"{self.help} ({'; '.join(extra)})" if extra else self.help
        return text.replace("%", "%%")  # argparse formats help with %

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        options: dict[str, Any] = {"help": self.help_text(), "dest": self.dest}
        if self.switch is not None:
            options["action"] = "store_true"
        else:
            options["metavar"] = self.metavar
            if self.repeat:
                options.update(action="append", default=[])
            if self.type is not str:
                options["type"] = self.type
            if self.choices:
                options["choices"] = self.choices
        parser.add_argument(self.flag, **options)


_DEFAULTS = {f.name: f.default for f in fields(Settings) if f.default is not MISSING}
_DEFAULTS.update(aliases={}, api_keys=(), url_allow=())


FLAGS: tuple[Flag, ...] = (
    Flag("--host", "address to listen on", "host", metavar="ADDR"),
    Flag("--port", "port to listen on, bound before the model loads", "port", int, "N"),
    Flag(
        "--model",
        "a GGUF model file to serve",
        "model",
        metavar="PATH",
        default="the embedded SmolLM2-135M-Instruct",
    ),
    Flag(
        "--model-name",
        "the model id clients send",
        "model_name",
        metavar="ID",
        default="smollm2-135m-instruct, or the GGUF file's stem",
    ),
    Flag(
        "--chat-template",
        "a Jinja chat template file replacing the model's",
        "chat_template",
        metavar="FILE",
        default="the GGUF's own",
    ),
    Flag(
        "--engine",
        "engine: llamacpp, scripted, llamaserver, vllm, openai or a plugin",
        "engine",
        metavar="NAME",
    ),
    Flag(
        "--script",
        "rules file of the scripted engine (YAML or JSON)",
        "script",
        metavar="FILE",
        default="echo the last user text",
    ),
    Flag(
        "--engine-opt",
        "an option the served engine declares, repeatable (see README)",
        metavar="KEY=VALUE",
        repeat=True,
        env="PARLEY_ENGINE_OPTS",
    ),
    Flag(
        "--alias",
        "an extra model id for a served model, repeatable",
        "aliases",
        metavar="NAME=MODEL",
        repeat=True,
    ),
    Flag(
        "--no-claude-aliases",
        "do not map Claude model ids to the default model",
        "claude_aliases",
        switch=False,
        default="Claude ids are mapped",
        env="PARLEY_CLAUDE_ALIASES=false",
    ),
    Flag(
        "--api-key",
        "an accepted API key, repeatable; sha256:HEX gives one by its hash",
        "api_keys",
        metavar="KEY",
        repeat=True,
        default="none: every request is accepted",
    ),
    Flag(
        "--data-dir",
        "where state lives (batches, thinking key) without --database-url",
        "data_dir",
        Path,
        "DIR",
    ),
    Flag(
        "--database-url",
        "the database of batches, rate limits and the thinking key: postgresql://USER@HOST/DB "
        "for several replicas sharing one",
        "database_url",
        metavar="URL",
        default="SQLite in --data-dir",
    ),
    Flag(
        "--batch-lease",
        "seconds a replica's claim on a batch request lasts without renewal; another "
        "replica takes the request over after that",
        "batch_lease",
        float,
        "S",
    ),
    Flag(
        "--config",
        "a TOML file of settings (see parley.example.toml)",
        type=Path,
        metavar="FILE",
        env="PARLEY_CONFIG",
    ),
    Flag("--n-ctx", "context window in tokens, shared by all sequences", "n_ctx", int, "N"),
    Flag(
        "--rope-scaling",
        "context extension past the trained context (auto: YaRN when --n-ctx exceeds it)",
        "rope_scaling",
        metavar="MODE",
        choices=ROPE_SCALINGS,
    ),
    Flag(
        "--rope-scale",
        "context multiplier for --rope-scaling",
        "rope_scale",
        float,
        "F",
        default="--n-ctx / the trained context",
    ),
    Flag(
        "--kv-type",
        "element type of the KV cache (f16: fastest here; q8_0: half the memory)",
        "kv_type",
        metavar="TYPE",
        choices=tuple(KV_TYPES),
    ),
    Flag("--threads", "llama.cpp threads", "threads", int, "N", default="all cores"),
    Flag("--parallel", "sequences decoded together", "parallel", int, "N"),
    Flag("--prefill-chunk", "prompt tokens per batch step", "prefill_chunk", int, "N"),
    Flag("--max-queue", "waiting requests before 529", "max_queue", int, "N"),
    Flag(
        "--queue-timeout",
        "seconds a request may wait for capacity, then 529",
        "queue_timeout",
        float,
        "S",
    ),
    Flag(
        "--stream-interval-ms",
        "milliseconds of tokens a stream sends as one delta (0: one per token)",
        "stream_interval_ms",
        float,
        "MS",
    ),
    Flag(
        "--cache-budget-mb",
        "memory for prompt-cache KV state (0: no caching)",
        "cache_budget_mb",
        int,
        "N",
    ),
    Flag(
        "--cache-min-tokens",
        "shortest prompt prefix that is cached",
        "cache_min_tokens",
        int,
        "N",
    ),
    Flag(
        "--idle-cache-mb",
        "memory for idle sequences' KV state moved out of the context (0: kept in it)",
        "idle_cache_mb",
        int,
        "N",
    ),
    Flag(
        "--grammar-step-timeout",
        "seconds one token may take under a tool grammar before that request fails",
        "grammar_step_timeout",
        float,
        "S",
    ),
    Flag(
        "--rate-requests", "requests per API key a minute (0: no limit)", "rate_requests", int, "N"
    ),
    Flag(
        "--rate-input-tokens",
        "input tokens per API key a minute (0: no limit)",
        "rate_input_tokens",
        int,
        "N",
    ),
    Flag(
        "--rate-output-tokens",
        "output tokens per API key a minute (0: no limit)",
        "rate_output_tokens",
        int,
        "N",
    ),
    Flag(
        "--rate-count-tokens",
        "count_tokens requests per API key a minute (0: no limit)",
        "rate_count_tokens",
        int,
        "N",
        default="twice --rate-requests",
    ),
    Flag(
        "--shutdown-grace",
        "seconds open streams may go on after SIGTERM",
        "shutdown_grace",
        float,
        "S",
    ),
    Flag(
        "--header-timeout",
        "seconds a connection may take to send a request's headers, then it is closed",
        "header_timeout",
        float,
        "S",
    ),
    Flag(
        "--body-timeout",
        "seconds a request body may go without data, then 408",
        "body_timeout",
        float,
        "S",
    ),
    Flag(
        "--max-connections",
        "open connections; beyond them a new one is answered 529 and closed",
        "max_connections",
        int,
        "N",
    ),
    Flag(
        "--allow-url-sources",
        "fetch documents given by URL (SSRF-guarded)",
        "url_sources",
        switch=True,
        env="PARLEY_URL_SOURCES=true",
    ),
    Flag(
        "--url-allow",
        "a host or network exempt from the private-address guard, repeatable",
        "url_allow",
        metavar="HOST|CIDR",
        repeat=True,
    ),
    Flag(
        "--batch-workers",
        "batch requests processed at once",
        "batch_workers",
        int,
        "N",
        default="--parallel",
    ),
    Flag(
        "--docs",
        "serve the interactive API docs at /docs (Swagger UI; its scripts load from a CDN)",
        "docs",
        switch=True,
    ),
    Flag(
        "--alias-max-tokens",
        "cap max_tokens of requests under a Claude model id (Claude Code asks for 32,000 "
        "or more); the answer ends with stop_reason max_tokens there",
        "alias_max_tokens",
        int,
        "N",
        default="none",
    ),
    Flag(
        "--default-temperature",
        "temperature of requests that send none",
        "default_temperature",
        float,
        "T",
    ),
    Flag("--ping-interval", "seconds between stream pings", "ping_interval", float, "S"),
    Flag(
        "--upstream",
        "serve the model of the inference server at URL (llama-server, vLLM, SGLang, "
        "Ollama or any OpenAI-compatible one; its kind is detected)",
        metavar="URL",
        env="",
    ),
    Flag(
        "--upstream-kind",
        "the upstream's kind, when it cannot be detected",
        choices=("vllm", "sglang", "llamaserver", "ollama", "openai"),
        metavar="KIND",
        default="detected",
        env="",
    ),
    Flag(
        "--upstream-model",
        "the upstream's model name",
        metavar="NAME",
        default="the first it lists",
        env="",
    ),
    Flag("--upstream-api-key", "the upstream's own API key", metavar="KEY", env=""),
    Flag(
        "--redact-thinking",
        "return thinking as encrypted redacted_thinking blocks",
        "redact_thinking",
        switch=True,
        env="PARLEY_REDACT_THINKING=true",
    ),
    Flag("--log-level", "log level", "log_level", metavar="LEVEL", choices=LOG_LEVELS),
)


def add_flags(parser: argparse.ArgumentParser) -> None:
    for flag in FLAGS:
        flag.add_to(parser)


def overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The settings the flags in ``args`` give (None where a flag was not given)."""
    out: dict[str, Any] = {}
    for flag in FLAGS:
        if flag.setting is None:
            continue
        value = getattr(args, flag.dest)
        if flag.switch is not None:
            out[flag.setting] = flag.switch if value else None
        elif flag.repeat:
            out[flag.setting] = value or None
        else:
            out[flag.setting] = value
    return out
