"""``parley serve --upstream URL``: which upstream engine serves it.

A probe of the URL finds the kind as the chat engine does
(``openai_chat.dialects.detect``: llama-server's ``/props``, ``owned_by`` in
``/v1/models``, Ollama's ``/api/version``), waiting while nothing answers or
the upstream says 503 (still loading), for at most ``startup_timeout`` s.
``kind`` (``--upstream-kind``) skips the probe. Then, by ``choose``:

* llama-server with its GGUF readable here (``--model``, or the
  ``model_path`` its ``/props`` gives): the ``llamaserver`` engine, tokens
  mode (parley renders, counts and constrains);
* vLLM with ``--model`` (the GGUF its weights came from): the ``vllm``
  engine, tokens mode;
* anything else: the ``openai`` engine (chat mode) of that kind.

``--upstream-model`` names the upstream's model (vLLM's served model, or the
chat model); ``--upstream-api-key`` is the upstream's own key. Every other
option given for ``upstream`` goes to the engine chosen, which checks it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from parley.engines.openai_chat.dialects import KINDS, detect

if TYPE_CHECKING:
    from parley.config import Settings
    from parley.engines.base import Engine

log = logging.getLogger("parley.engine.upstream")

OWN = ("url", "kind", "served_model", "api_key")  # read here; the rest go to the engine chosen
PROGRESS_EVERY = 10.0


def choose(kind: str, gguf: str | None, served_path: str | None) -> str:
    """The engine for an upstream of ``kind``: tokens mode where parley has the
    GGUF (``gguf`` given, or llama-server's own ``served_path`` readable here)."""
    if kind == "llamaserver" and (gguf or (served_path and Path(served_path).is_file())):
        return "llamaserver"
    if kind == "vllm" and gguf:
        return "vllm"
    return "openai"


def probe(url: str, api_key: str | None, wait: float) -> tuple[str, dict[str, Any] | None]:
    """The upstream's kind and, for llama-server, its ``/props``."""
    from parley.config import ConfigError

    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
    started = time.monotonic()
    next_log = started + PROGRESS_EVERY
    with httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=5.0) as http:
        while True:
            try:
                return _probe_once(http)
            except (httpx.TransportError, _NotReady) as exc:
                seen = f"{type(exc).__name__}: {exc}"
            now = time.monotonic()
            if now - started >= wait:
                raise ConfigError(
                    f"--upstream {url}: no answer to learn what it is after {wait:g} s "
                    f"({seen}); start it first, or give --upstream-kind"
                )
            if now >= next_log:
                log.info("waiting for the upstream", extra={"upstream": url, "state": seen})
                next_log = now + PROGRESS_EVERY
            time.sleep(min(1.0, max(0.0, wait - (now - started))))


class _NotReady(Exception):
    """The upstream answered 503 (loading)."""


def _probe_once(http: httpx.Client) -> tuple[str, dict[str, Any] | None]:
    def json_of(path: str) -> dict[str, Any] | None:
        response = http.get(path)
        if response.status_code == 503:
            raise _NotReady(f"{path} answered 503")
        if response.status_code != 200:
            return None
        try:
            data = response.json()
        except ValueError:
            return None
        return data if isinstance(data, dict) else None

    props = json_of("/props")
    models = json_of("/v1/models")
    ollama = json_of("/api/version") is not None
    kind = detect(models, props, ollama)
    return kind, props if kind == "llamaserver" else None


def from_settings(settings: Settings) -> Engine:
    from parley.config import ConfigError
    from parley.engines import registry

    raw = dict(settings.engine_options.get("upstream", {}))
    url = str(raw.get("url") or "")
    if not url.startswith(("http://", "https://")):
        raise ConfigError("--upstream: give the upstream's http(s) URL")
    kind = raw.get("kind") or None
    if kind is not None and kind not in KINDS:
        raise ConfigError(f"--upstream-kind is one of {', '.join(KINDS)}, not {kind!r}")
    api_key = raw.get("api_key") or None
    served = raw.get("served_model") or None
    rest = {k: v for k, v in raw.items() if k not in OWN}
    props = None
    if kind is None or kind == "llamaserver":
        wait = float(rest.get("startup_timeout", 120.0))
        found, props = probe(url, api_key, wait)
        kind = kind or found
    served_path = (props or {}).get("model_path")
    engine = choose(kind, settings.model, served_path)
    options: dict[str, Any] = {"url": url, **rest}
    if api_key:
        options["api_key"] = api_key
    if engine == "openai":
        if settings.model:
            raise ConfigError(
                f"--model gives the GGUF for tokens mode; this {kind} upstream is served in "
                "chat mode: name its model with --upstream-model"
            )
        options["kind"] = kind
        if served:
            options["model"] = served
    elif engine == "vllm" and served:
        options["served_model"] = served
    log.info("upstream chosen", extra={"upstream": url, "kind": kind, "engine": engine})
    tables = {**settings.engine_options, engine: options}
    return registry.load(engine)(replace(settings, engine=engine, engine_options=tables))
