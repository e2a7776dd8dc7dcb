"""vision-gateway application factory."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from common.app import POOL_KEY, REGISTRY_KEY, SETTINGS_KEY, TRACING_KEY, create_service_app
from common.background import in_background
from common.content_disposition import ignore_aiohttp_disposition_warnings
from common.health import READINESS_KEY
from common.http.cors import enable_cors
from common.http.error_middleware import API_ERROR_OBSERVER_KEY
from common.tracing.http import client_trace_configs
from services.vision_gateway.admission import PrepBudget, StreamAdmission
from services.vision_gateway.capabilities import VisionModelService
from services.vision_gateway.chat import ChatService
from services.vision_gateway.chat.image_source import ImageSource
from services.vision_gateway.chat.pending import PendingAnswers
from services.vision_gateway.chat.progress import AnswerProgress
from services.vision_gateway.conversation_handlers import CONVERSATION_SERVICE_KEY, add_conversation_routes
from services.vision_gateway.conversations import ConversationService
from services.vision_gateway.demo import add_demo_routes
from services.vision_gateway.fleet.backend import Backend
from services.vision_gateway.fleet.fleet import OllamaFleet
from services.vision_gateway.fleet.registry import BackendRegistry
from services.vision_gateway.handlers import CHAT_SERVICE_KEY, HISTORY_IMAGES_KEY, add_routes
from services.vision_gateway.history import HistoryImages
from services.vision_gateway.image_prep import ImagePreparer
from services.vision_gateway.image_store_client import ImageStoreClient
from services.vision_gateway.metrics import GatewayMetrics
from services.vision_gateway.ollama_client import OllamaClient
from services.vision_gateway.openai_compat.handlers import RETINA_HEADERS, create_openai_app
from services.vision_gateway.repository import ConversationRepository
from services.vision_gateway.settings import GatewaySettings
from services.vision_gateway.sse import HEARTBEAT_KEY, Heartbeat
from services.vision_gateway.stop_catchup import StopCatchUp
from services.vision_gateway.streams import StreamLiveness, StreamRegistry, listen_for_stops
from services.vision_gateway.sweeper import sweeping

SERVICE_NAME = "vision_gateway"
GATEWAY_SETTINGS_KEY = web.AppKey("gateway_settings", GatewaySettings)
PREP_BUDGET_KEY = web.AppKey("prep_budget", PrepBudget)


def create_app(settings: GatewaySettings) -> web.Application:
    app = create_service_app(service=SERVICE_NAME, settings=settings.common)
    ignore_aiohttp_disposition_warnings()
    app[GATEWAY_SETTINGS_KEY] = settings
    app.cleanup_ctx.append(_chat_service)
    app.on_shutdown.append(_end_open_streams)
    add_routes(app)
    v1 = create_openai_app()
    app.add_subapp("/v1", v1)
    add_conversation_routes(app)
    if settings.demo_page_enabled:
        add_demo_routes(app, settings.allowed_types)
    # Browsers call the API directly only in deployments without a chat backend in front.
    enable_cors(
        app,
        settings.cors_allowed_origins,
        [*(r for r in app.router.resources() if r.canonical.startswith("/api/")), *v1.router.resources()],
        allow_methods=("GET", "POST", "DELETE"),
        allow_headers=("Authorization", "Content-Type", "X-User-Id", "X-Request-ID", "Accept"),
        expose_headers=("X-Request-ID", "Retry-After", "X-Stream-Id", "X-Conversation-Id", *RETINA_HEADERS),
    )
    return app


async def _chat_service(app: web.Application) -> AsyncIterator[None]:
    settings = app[GATEWAY_SETTINGS_KEY]
    metrics = GatewayMetrics(app[REGISTRY_KEY])
    metrics.known_models.update(settings.known_models)
    app[API_ERROR_OBSERVER_KEY] = lambda _request, error: metrics.rejections.labels(error.code).inc()
    preparer = ImagePreparer(
        max_edge=settings.max_image_edge,
        workers=settings.encode_workers,
        cache_entries=settings.image_cache_entries,
        cache_bytes=settings.image_cache_bytes,
    )
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, ttl_dns_cache=60)
    try:
        async with aiohttp.ClientSession(
            connector=connector, raise_for_status=False, trace_configs=client_trace_configs(app.get(TRACING_KEY))
        ) as session:
            registry, repository, pending, backends, progress = _install_services(app, session, metrics, preparer)
            common = app[SETTINGS_KEY]
            dsn = common.database_url.get_secret_value()
            sweep_after = settings.stream_sweep_after_seconds
            liveness = StreamLiveness(
                dsn,
                registry.held,
                interval=sweep_after / 3,
                progress=progress,
                transaction_pooler=common.transaction_pooler,
            )
            heartbeat = app[HEARTBEAT_KEY] = Heartbeat(settings.heartbeat_seconds)
            # Left in reverse order: answers waiting for the database get their last attempts while
            # their rows are still kept alive, and before the pool closes.
            catch_up = StopCatchUp(registry, repository.ended_streams)
            async with (
                in_background(backends.run(), name="ollama-backends"),
                catch_up.running(),
                listen_for_stops(registry, common.direct_url, catch_up.on_listener_state) as listening,
                liveness.running(),
                pending.running(),
                heartbeat.running(),
                sweeping(repository, metrics, liveness, after_seconds=sweep_after),
            ):

                async def stop_listener() -> None:
                    if not listening.is_set():
                        raise RuntimeError("the stream-stop listener is not connected")

                async def stream_liveness() -> None:
                    if not liveness.touched.is_set():
                        raise RuntimeError("this replica cannot mark its streams alive (other replicas may sweep them)")

                app[READINESS_KEY].add("stop_listener", stop_listener)
                app[READINESS_KEY].add("stream_liveness", stream_liveness)
                yield
    finally:
        preparer.close()


def _install_services(
    app: web.Application, session: aiohttp.ClientSession, metrics: GatewayMetrics, preparer: ImagePreparer
) -> tuple[StreamRegistry, ConversationRepository, PendingAnswers, BackendRegistry, AnswerProgress]:
    """Build the upstream clients and the services over them, put the services in app state.

    Returns what the background tasks (stop listener, liveness and progress saves, pending answers,
    sweeper, backend refresh) of `_chat_service` work on.
    """
    settings = app[GATEWAY_SETTINGS_KEY]
    backends = BackendRegistry(
        [
            Backend(
                OllamaClient(
                    session,
                    url,
                    retries=settings.upstream_retries,
                    metrics=metrics,
                    connect_timeout=settings.ollama_connect_timeout_seconds,
                    read_timeout=settings.ollama_read_timeout_seconds,
                    list_timeout=settings.ollama_list_timeout_seconds,
                ),
                url,
                index,
            )
            for index, url in enumerate(settings.ollama_urls)
        ],
        metrics.fleet,
        refresh_seconds=settings.ollama_refresh_seconds,
        cooldown_seconds=settings.ollama_backend_cooldown_seconds,
    )
    ollama = OllamaFleet(backends, metrics, retries=settings.upstream_retries)
    store = ImageStoreClient(
        session,
        settings.image_store_url,
        settings.image_store_token.get_secret_value(),
        retries=settings.upstream_retries,
        metrics=metrics,
        endpoint=settings.serve_endpoint,
        upload_deadline_seconds=settings.upload_deadline_seconds,
    )
    budget = app[PREP_BUDGET_KEY] = PrepBudget(settings.prep_budget_bytes)
    registry = StreamRegistry()
    repository = ConversationRepository(app[POOL_KEY])
    pending = PendingAnswers(
        repository,
        registry,
        metrics,
        keep_seconds=settings.stream_save_queue_seconds,
        max_bytes=settings.stream_save_queue_bytes,
    )
    progress = AnswerProgress()
    models = VisionModelService(
        ollama, metrics, ttl_seconds=settings.capability_ttl_seconds, detection_enabled=settings.model_detection_enabled
    )
    service = ChatService(
        settings,
        ollama=ollama,
        models=models,
        store=store,
        images=ImageSource(store, preparer, budget, metrics),
        repository=repository,
        registry=registry,
        pending=pending,
        progress=progress,
        metrics=metrics,
        admission=StreamAdmission(
            max_streams=settings.max_streams_per_user, rate_per_minute=settings.stream_rate_per_minute
        ),
        budget=budget,
    )
    app[HISTORY_IMAGES_KEY] = HistoryImages(store)
    app[CHAT_SERVICE_KEY] = service
    app[CONVERSATION_SERVICE_KEY] = ConversationService(repository, store, registry)
    return registry, repository, pending, backends, progress


async def _end_open_streams(app: web.Application) -> None:
    """on_shutdown: every open stream sends its final event and stores its partial answer."""
    service = app.get(CHAT_SERVICE_KEY)
    if service is not None:
        service.registry.stop_all("shutdown")
