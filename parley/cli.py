"""parley serves the Anthropic Messages API for models you run yourself: the
embedded SmolLM2-135M out of the box, any GGUF file with --model, or the model
of an inference server with --upstream. Point an Anthropic SDK, Claude Code or
any agent at it with ANTHROPIC_BASE_URL=http://127.0.0.1:8000."""

from __future__ import annotations

import argparse
import errno
import logging
import socket
import sys
from typing import Any, NoReturn

from parley import __version__, batch_cli, db_cli, serve_flags
from parley.config import ConfigError, did_you_mean, load_settings, parse_pairs
from parley.errors import ParleyError
from parley.logs import configure

log = logging.getLogger("parley")

_EPILOG = """\
examples:
  parley serve                                 the embedded model on 127.0.0.1:8000
  parley serve --model model.gguf --n-ctx 32768
  parley serve --config parley.toml            settings from a file (parley.example.toml)
  parley batch submit requests.jsonl --wait -o results.jsonl
  parley db status --database-url postgresql://parley@db/parley

Settings: defaults < config file < PARLEY_* environment < flags.
'parley serve --help' lists every option with its default and environment variable."""


class Parser(argparse.ArgumentParser):
    """argparse, with a "did you mean" for a mistyped option or command."""

    def error(self, message: str) -> NoReturn:
        prefix = "unrecognized arguments: "
        if message.startswith(prefix):
            words = message.removeprefix(prefix).split()
            hint = did_you_mean(words[0].split("=")[0], _option_strings(self))
            message += hint
        super().error(message)


def _option_strings(parser: argparse.ArgumentParser) -> set[str]:
    found: set[str] = set()
    for action in parser._actions:
        found.update(s for s in action.option_strings if s.startswith("--"))
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                found |= _option_strings(child)
    return found


def _parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="parley",
        description=__doc__,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"parley {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = sub.add_parser(
        "serve",
        help="serve the Anthropic Messages API",
        description="Serve the Anthropic Messages API on --host:--port. Every option can "
        "also come from a config file (--config) or the environment variable it names.",
    )
    serve_flags.add_flags(serve)
    batch_cli.add_parser(sub)
    db_cli.add_parser(sub)
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
    return parse_pairs(items, "--engine-opt") or None


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "batch":
        return batch_cli.run(args)
    if args.command == "db":
        return db_cli.run(args)
    try:
        overrides = serve_flags.overrides(args)
        if args.upstream and not overrides["engine"]:
            overrides["engine"] = "upstream"
        overrides["engine_opts"] = _engine_opts(args.engine_opt + _upstream_opts(args))
        settings = load_settings(overrides, config_file=args.config)
    except ConfigError as exc:
        print(f"parley: {exc}", file=sys.stderr)
        return 2
    configure(settings.log_level)
    return _serve(settings)


def _serve(settings: Any) -> int:
    # Bound now, listened on once the model is loaded: a port in use fails at
    # once, not after a long load.
    try:
        sock = _bind(settings.host, settings.port)
    except OSError as exc:
        why = exc.strerror or str(exc)
        if exc.errno == errno.EADDRINUSE:
            why += " (another server is there: stop it, or choose another with --port)"
        log.error(
            "cannot start",
            extra={"error": f"cannot listen on {settings.host}:{settings.port}: {why}"},
        )
        return 1
    with sock:
        return _run(settings, sock)


def _run(settings: Any, sock: socket.socket) -> int:
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

        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            if self.started:
                log.info("ready", extra=_ready(app, sock))

    server = Server(config)
    server.run(sockets=[sock])
    return 0 if server.started else 1


def _ready(app: Any, sock: socket.socket) -> dict[str, str]:
    """The ready line's fields: where to send requests and what is served there."""
    host, port = sock.getsockname()[:2]
    host = f"[{host}]" if ":" in host else host
    catalog = app.state.parley.catalog
    models = ", ".join(f"{e.card.id} ({e.card.context_length} tokens)" for e in catalog.engines)
    return {"url": f"http://{host}:{port}", "models": models}


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


if __name__ == "__main__":
    sys.exit(main())
