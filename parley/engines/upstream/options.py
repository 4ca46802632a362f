"""The options every upstream engine takes, and reading them from the settings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from parley.config import Settings


@dataclass(frozen=True)
class UpstreamOptions:
    """Options of an upstream engine (``[engines.NAME]``, ``--engine-opt``);
    an engine's own options extend these."""

    url: tuple[str, ...] = ()  # the upstream; several: replicas of one model (backends.py)
    model: str | None = None  # the GGUF the upstream serves (its vocabulary renders here)
    model_name: str | None = None  # the id parley serves it under
    api_key: str | None = None  # the upstream's own key
    chat_template: str | None = None  # a Jinja file overriding the model's template
    concurrency: int = 0  # requests sent at once; 0: the upstream's own figure
    max_queue: int = 64
    queue_timeout: float = 300.0
    timeout: float = 600.0  # seconds without a byte from the upstream
    connect_timeout: float = 5.0
    startup_timeout: float = 120.0  # seconds to wait at start for the upstream's /health
    retries: int = 2  # resends of a request the upstream did not answer (upstream.http)
    stream_interval_ms: int = 20  # text merged into one event per interval (upstream.generation)
    # Several backends (upstream.backends):
    affinity_slack: int = 4  # in-flight requests beyond the least loaded before affinity yields
    breaker_failures: int = 3  # failures in a row that open a backend's circuit
    breaker_cooldown: float = 30.0  # seconds open before one trial request
    health_interval: float = 2.0  # seconds between /health probes of open backends


OptionsT = TypeVar("OptionsT", bound=UpstreamOptions)


def read_options(settings: Settings, engine: str, kind: type[OptionsT], example: str) -> OptionsT:
    """The engine's options; ``--model``, ``--model-name`` and ``--chat-template``
    mean the same as for the embedded engine. ``example`` is a URL for the error."""
    from parley.config import ConfigError
    from parley.engines.options import engine_options

    base = {"model": settings.model, "model_name": settings.model_name}
    base["chat_template"] = settings.chat_template
    o = engine_options(settings, engine, kind, base)
    if not o.url or not all(u.startswith(("http://", "https://")) for u in o.url):
        raise ConfigError(
            f"{engine}: the option 'url' must be the upstream's http(s) URL, or several "
            f"comma-separated (--engine-opt url={example})"
        )
    if len(set(o.url)) != len(o.url):
        raise ConfigError(f"{engine}: the option 'url' names a backend twice")
    counts = (o.concurrency, o.max_queue, o.retries, o.affinity_slack, o.stream_interval_ms)
    if min(counts) < 0 or o.startup_timeout < 0:
        raise ConfigError(
            f"{engine}: concurrency, max_queue, retries, affinity_slack, stream_interval_ms "
            "and startup_timeout ≥ 0 required"
        )
    if min(o.timeout, o.connect_timeout, o.breaker_cooldown, o.health_interval) <= 0:
        raise ConfigError(
            f"{engine}: timeout, connect_timeout, breaker_cooldown and health_interval > 0 required"
        )
    if o.breaker_failures < 1:
        raise ConfigError(f"{engine}: breaker_failures ≥ 1 required")
    return o
