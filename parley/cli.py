"""The ``parley`` command line."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from parley import __version__, batch_cli
from parley.config import ConfigError, load_settings, parse_aliases
from parley.errors import ParleyError
from parley.logs import configure

log = logging.getLogger("parley")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="parley", description=__doc__)
    parser.add_argument("--version", action="version", version=f"parley {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve the Anthropic Messages API")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--model", help="a GGUF file (default: the embedded SmolLM2-135M)")
    serve.add_argument("--model-name", help="the model id clients use for --model")
    serve.add_argument("--chat-template", help="a Jinja chat template file replacing the model's")
    serve.add_argument("--engine", help="engine name: llamacpp (default), scripted, ...")
    serve.add_argument("--script", help="rules file of the scripted engine (YAML or JSON)")
    serve.add_argument(
        "--engine-opt",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an option the served engine declares (repeatable; see README)",
    )
    serve.add_argument(
        "--alias", action="append", default=[], metavar="NAME=MODEL", help="extra model alias"
    )
    serve.add_argument(
        "--no-claude-aliases",
        action="store_true",
        help="do not map Claude model ids to the default model",
    )
    serve.add_argument(
        "--api-key",
        action="append",
        default=[],
        metavar="KEY",
        help="accepted API key (repeatable); none configured = open server",
    )
    serve.add_argument("--data-dir", type=Path)
    serve.add_argument("--config", type=Path, help="a TOML file of settings")
    serve.add_argument("--n-ctx", type=int, help="context window in tokens")
    serve.add_argument(
        "--rope-scaling",
        choices=["auto", "none", "linear", "yarn"],
        help="context extension past the trained context (auto: YaRN when --n-ctx exceeds it)",
    )
    serve.add_argument("--rope-scale", type=float, help="context multiplier for --rope-scaling")
    serve.add_argument("--threads", type=int)
    serve.add_argument("--parallel", type=int, help="sequences decoded together")
    serve.add_argument("--prefill-chunk", type=int, help="prompt tokens per batch step")
    serve.add_argument("--max-queue", type=int, help="waiting requests before 529")
    serve.add_argument(
        "--queue-timeout", type=float, help="seconds a request may wait for capacity (then 529)"
    )
    serve.add_argument(
        "--stream-interval-ms",
        type=float,
        help="milliseconds between a stream's deltas (the tokens of an interval share one)",
    )
    serve.add_argument(
        "--cache-budget-mb", type=int, help="memory for prompt-cache KV state (0: no caching)"
    )
    serve.add_argument("--cache-min-tokens", type=int, help="shortest prompt prefix that is cached")
    serve.add_argument(
        "--idle-cache-mb",
        type=int,
        help="memory for idle sequences' KV state moved out of the context (0: kept in it)",
    )
    serve.add_argument(
        "--grammar-step-timeout",
        type=float,
        help="seconds one token may take under a tool grammar before that request fails",
    )
    for kind in ("requests", "input-tokens", "output-tokens"):
        serve.add_argument(
            f"--rate-{kind}", type=int, help=f"{kind.replace('-', ' ')} per API key a minute"
        )
    serve.add_argument(
        "--rate-count-tokens",
        type=int,
        help="count_tokens requests per API key a minute (default: twice --rate-requests)",
    )
    serve.add_argument(
        "--shutdown-grace", type=float, help="seconds open streams may go on after SIGTERM"
    )
    serve.add_argument(
        "--header-timeout",
        type=float,
        help="seconds a connection may take to send a request's headers (then it is closed)",
    )
    serve.add_argument(
        "--body-timeout",
        type=float,
        help="seconds a request body may go without data (then 408)",
    )
    serve.add_argument(
        "--max-connections",
        type=int,
        help="open connections; beyond them a new one is answered 529 and closed",
    )
    serve.add_argument(
        "--allow-url-sources", action="store_true", help="fetch documents given by URL"
    )
    serve.add_argument(
        "--url-allow",
        action="append",
        default=[],
        metavar="HOST|CIDR",
        help="exempt from the private-address guard (repeatable)",
    )
    serve.add_argument("--batch-workers", type=int, help="batch requests processed at once")
    serve.add_argument(
        "--default-temperature", type=float, help="temperature of requests that send none"
    )
    serve.add_argument("--ping-interval", type=float, help="seconds between stream pings")
    serve.add_argument(
        "--upstream",
        metavar="URL",
        help="serve the model of the inference server at URL (llama-server, vLLM, SGLang, "
        "Ollama or any OpenAI-compatible one; its kind is detected). With the GGUF it serves "
        "(--model, or llama-server's own path when readable here) parley renders and counts "
        "itself (tokens mode), else it speaks chat completions",
    )
    serve.add_argument(
        "--upstream-kind",
        choices=["vllm", "sglang", "llamaserver", "ollama", "openai"],
        help="the upstream's kind, when it cannot be detected",
    )
    serve.add_argument("--upstream-model", metavar="NAME", help="the upstream's model name")
    serve.add_argument("--upstream-api-key", metavar="KEY", help="the upstream's own API key")
    serve.add_argument(
        "--redact-thinking",
        action="store_true",
        help="return thinking as encrypted redacted_thinking blocks",
    )
    serve.add_argument("--log-level")
    batch_cli.add_parser(sub)
    return parser


def _upstream_opts(args: argparse.Namespace) -> list[str]:
    given = {
        "url": args.upstream,
        "kind": args.upstream_kind,
        "served_model": args.upstream_model,
        "api_key": args.upstream_api_key,
    }
    if args.upstream is None and any(given.values()):
        raise SystemExit("parley serve: --upstream-kind/-model/-api-key need --upstream URL")
    return [f"{key}={value}" for key, value in given.items() if value]


def _engine_opts(items: list[str]) -> dict[str, str] | None:
    from parley.config import parse_pairs

    return parse_pairs(items, "--engine-opt") or None


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "batch":
        return batch_cli.run(args)
    overrides: dict[str, Any] = {
        "host": args.host,
        "port": args.port,
        "model": args.model,
        "model_name": args.model_name,
        "chat_template": args.chat_template,
        "engine": args.engine or ("upstream" if args.upstream else None),
        "engine_opts": _engine_opts(args.engine_opt + _upstream_opts(args)),
        "script": args.script,
        "data_dir": args.data_dir,
        "n_ctx": args.n_ctx,
        "threads": args.threads,
        "rope_scaling": args.rope_scaling,
        "rope_scale": args.rope_scale,
        "parallel": args.parallel,
        "prefill_chunk": args.prefill_chunk,
        "max_queue": args.max_queue,
        "queue_timeout": args.queue_timeout,
        "stream_interval_ms": args.stream_interval_ms,
        "cache_budget_mb": args.cache_budget_mb,
        "cache_min_tokens": args.cache_min_tokens,
        "idle_cache_mb": args.idle_cache_mb,
        "grammar_step_timeout": args.grammar_step_timeout,
        "batch_workers": args.batch_workers,
        "shutdown_grace": args.shutdown_grace,
        "header_timeout": args.header_timeout,
        "body_timeout": args.body_timeout,
        "max_connections": args.max_connections,
        "rate_requests": args.rate_requests,
        "rate_input_tokens": args.rate_input_tokens,
        "rate_output_tokens": args.rate_output_tokens,
        "rate_count_tokens": args.rate_count_tokens,
        "default_temperature": args.default_temperature,
        "ping_interval": args.ping_interval,
        "log_level": args.log_level,
        "claude_aliases": False if args.no_claude_aliases else None,
        "redact_thinking": True if args.redact_thinking else None,
        "url_sources": True if args.allow_url_sources else None,
    }
    try:
        if args.alias:
            overrides["aliases"] = parse_aliases(args.alias)
        if args.api_key:
            overrides["api_keys"] = tuple(args.api_key)
        if args.url_allow:
            overrides["url_allow"] = tuple(args.url_allow)
        settings = load_settings(overrides, config_file=args.config)
    except ConfigError as exc:
        print(f"parley: {exc}", file=sys.stderr)
        return 2
    configure(settings.log_level)
    return _serve(settings)


def _serve(settings: Any) -> int:
    import uvicorn

    from parley.api.app import create_app
    from parley.api.protocol import ConnectionLimits, connection_cap, protocol_class

    try:
        app = create_app(settings)
    except ParleyError as exc:
        log.error("cannot start", extra={"error": exc.message})
        return 1
    except ConfigError as exc:
        log.error("cannot start", extra={"error": str(exc)})
        return 1
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        # uvicorn's httptools protocol, with a header timeout and a connection cap.
        http=protocol_class(
            ConnectionLimits(
                header_timeout=settings.header_timeout,
                max_connections=connection_cap(settings.max_connections),
            )
        ),
        # Open streams get shutdown_grace to finish, then an error event; this
        # leaves them time to send it before uvicorn gives up on connections.
        timeout_graceful_shutdown=settings.shutdown_grace + 5,
    )
    draining = app.state.draining

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            draining.begin(settings.shutdown_grace)
            super().handle_exit(sig, frame)

    server = Server(config)
    server.run()
    return 0 if server.started else 1


if __name__ == "__main__":
    sys.exit(main())
