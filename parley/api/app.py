"""The ASGI application: routers, error handling, and the engines' lifespan."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace

from fastapi import FastAPI

from parley import __version__, datadir
from parley.api import batches, errors, health, messages, models, openapi
from parley.api.deps import AppState
from parley.api.middleware import RequestIdMiddleware, SlowReaders
from parley.batches.store import BatchStore
from parley.batches.worker import BatchWorker
from parley.catalog import Catalog
from parley.config import CLAUDE_MODEL_IDS, ConfigError, Settings
from parley.db.buckets import SharedBuckets
from parley.engines import registry
from parley.engines.base import Engine
from parley.engines.registry import UnknownEngineError
from parley.errors import ParleyError
from parley.fetch import FetchPolicy
from parley.ratelimit import RateLimiter
from parley.service import Draining, MessagesService
from parley.thinking import Signer

log = logging.getLogger("parley")


def build_engines(settings: Settings) -> list[Engine]:
    """The served engines: the one of ``settings.engine``, or one per ``[[models]]``
    entry (its options over the ``[engines.NAME]`` table of its engine; the flat
    ``model``/``model_name``/``chat_template``/``script`` settings, meant for the
    one-engine case, do not apply to entries)."""
    if not settings.models:
        return [registry.load(settings.engine)(settings)]
    engines = []
    for entry in settings.models:
        tables = dict(settings.engine_options)
        tables[entry.engine] = {**tables.get(entry.engine, {}), **entry.options}
        own = replace(
            settings, engine=entry.engine, engine_options=tables,
            model=None, model_name=None, chat_template=None, script=None,
        )  # fmt: skip
        try:
            engines.append(registry.load(entry.engine)(own))
        except (ConfigError, UnknownEngineError) as exc:
            raise ConfigError(f"{entry.where}: {exc}") from exc
    return engines


def _check_unique(engines: Sequence[Engine]) -> None:
    seen: set[str] = set()
    for engine in engines:
        if engine.card.id in seen:
            raise ConfigError(
                f"two models are served as '{engine.card.id}': give one another model_name"
            )
        seen.add(engine.card.id)


def aliases_for(settings: Settings, default_model: str) -> dict[str, str]:
    aliases = {name: default_model for name in CLAUDE_MODEL_IDS} if settings.claude_aliases else {}
    aliases.update(settings.aliases)
    return aliases


def create_app(settings: Settings, engines: Sequence[Engine] | None = None) -> FastAPI:
    """The app; raises ``ParleyError`` or ``ConfigError`` for what stops it starting
    (a model that does not load, an unusable data dir or thinking key)."""
    chosen = list(engines) if engines is not None else build_engines(settings)
    # Checked before serving, so a bad data dir is a one-line start-up error.
    data_dir = datadir.prepare(settings.data_dir.expanduser())
    # Opened (and migrated) now: an unreachable database is a one-line start-up error.
    store = BatchStore.open(
        settings.database_url,
        data_dir,
        max_attempts=settings.batch_max_attempts,
        lease=settings.batch_lease,
    )
    try:
        # In a shared database every replica signs with the same key.
        signer = (
            Signer.from_database(store, data_dir)
            if settings.database_url
            else Signer.from_data_dir(data_dir)
        )
    except BaseException:
        store.close()
        raise
    slow_readers = SlowReaders(settings.slow_reader_timeout)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        for engine in chosen:
            try:
                await engine.start()
            except ParleyError as exc:  # one line saying why, above uvicorn's traceback
                log.error("cannot start", extra={"error": exc.message})
                raise
        _check_unique(chosen)  # ids are known once started (an upstream's from its /props)
        default = chosen[0].card.id
        catalog = Catalog(
            chosen,
            aliases_for(settings, default),
            claude_default=default if settings.claude_aliases else None,
        )
        service = MessagesService(
            catalog,
            ping_interval=settings.ping_interval,
            signer=signer,
            redact_thinking=settings.redact_thinking,
            draining=app.state.draining,
            default_temperature=settings.default_temperature,
            alias_max_tokens=settings.alias_max_tokens,
            fetch=FetchPolicy(
                enabled=settings.url_sources,
                allow=settings.url_allow,
                max_bytes=settings.url_max_bytes,
                max_total_bytes=settings.url_max_total_bytes,
                max_documents=settings.url_max_documents,
                timeout=settings.url_timeout,
            ),
        )
        # Replicas sharing a database share their buckets; else each has its own.
        shared = (
            [SharedBuckets(store, "messages"), SharedBuckets(store, "count_tokens")]
            if store.shared
            else []
        )
        limiter = RateLimiter(
            requests=settings.rate_requests,
            input_tokens=settings.rate_input_tokens,
            output_tokens=settings.rate_output_tokens,
            buckets=shared[0] if shared else None,
        )
        count_rpm = settings.rate_count_tokens
        count_limiter = RateLimiter(
            requests=2 * settings.rate_requests if count_rpm is None else count_rpm,
            label="token counting ",
            buckets=shared[1] if shared else None,
        )
        worker = BatchWorker(
            store,
            service,
            limiter=limiter,  # batch requests spend their owner's Messages allowance
            concurrency=settings.batch_workers or settings.parallel,
            retention=settings.batch_retention,
            tick=min(1.0, settings.batch_expiry / 4),
        )
        app.state.parley = AppState(
            settings=settings,
            catalog=catalog,
            messages=service,
            batches=store,
            worker=worker,
            limiter=limiter,
            count_limiter=count_limiter,
        )
        worker.start()
        slow_readers.start()
        if not settings.api_keys:
            log.warning("no API keys configured: parley accepts every request")
        # (the CLI logs "ready" with the URL and the models once it listens)
        try:
            yield
        finally:
            log.info("shutting down")
            await slow_readers.stop()
            await worker.stop()
            for buckets in shared:
                buckets.close()
            store.close()
            for engine in chosen:
                await engine.close()

    # No trailing-slash redirects: Starlette builds their Location from the
    # client's Host header; /v1/messages/ is a 404 like any unknown path.
    app = FastAPI(
        title="parley",
        version=__version__,
        lifespan=lifespan,
        # ``--docs``: FastAPI's interactive page (Swagger UI, whose scripts load from
        # a CDN) at /docs over the OpenAPI document at /openapi.json.
        docs_url="/docs" if settings.docs else None,
        redoc_url=None,
        redirect_slashes=False,
    )
    app.state.draining = Draining()  # the CLI's server starts it on SIGTERM
    errors.install(app)
    openapi.install(app)
    app.include_router(health.router)
    app.include_router(messages.router)
    app.include_router(models.router)
    app.include_router(batches.router)
    app.add_middleware(RequestIdMiddleware, slow_readers=slow_readers)
    return app
