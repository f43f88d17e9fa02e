"""Explicit factories: settings in, a wired service or server out. Nothing is built at import time."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from bot.config import Settings
from bot.deadlines import DeadlinePolicy, DeadlineScanner
from bot.notify import StaffNotifier
from bot.service import IntakeService
from bot.staff import StaffService
from bot.templating import Renderer
from dialogs.catalog import Catalog, load_catalog
from storage.repository import Store

if TYPE_CHECKING:
    from starlette.applications import Starlette


class ConfigurationError(Exception):
    """The deployment's settings cannot work; the message says which setting to fix."""


def build_renderer(settings: Settings) -> Renderer:
    overrides = [settings.templates_dir] if settings.templates_dir else []
    return Renderer(overrides, locale=settings.locale,
                    promises=DeadlinePolicy.from_settings(settings).promises_by_grade())


def build_store(settings: Settings) -> Store:
    return Store.from_url(settings.database_url, migrate=True)


def build_service(settings: Settings, *, clock: Callable[[], datetime] | None = None,
                  store: Store | None = None, catalog: Catalog | None = None,
                  on_outbox: Callable[[], None] = lambda: None) -> IntakeService:
    catalog = catalog or load_catalog(settings.catalog)
    renderer = build_renderer(settings)
    store = store or build_store(settings)
    clock = clock or (lambda: datetime.now(UTC))
    return IntakeService(
        store=store,
        catalog=catalog,
        renderer=renderer,
        clock=clock,
        notifier=StaffNotifier(catalog, renderer, settings),
        on_outbox=on_outbox,
        casework=build_staff_service(settings, store, catalog, renderer, clock=clock, on_outbox=on_outbox),
    )


def build_staff_service(settings: Settings, store: Store, catalog: Catalog, renderer: Renderer, *,
                        clock: Callable[[], datetime], on_outbox: Callable[[], None] = lambda: None) -> StaffService:
    return StaffService(store, catalog, settings, renderer, clock=clock, on_outbox=on_outbox)


def build_scanner(settings: Settings, store: Store, catalog: Catalog, renderer: Renderer, *,
                  clock: Callable[[], datetime], on_outbox: Callable[[], None] = lambda: None) -> DeadlineScanner:
    return DeadlineScanner(store, catalog, settings, renderer, clock=clock, on_outbox=on_outbox)


def build_server(settings: Settings, *, clock: Callable[[], datetime] | None = None) -> Starlette:
    """The `kesu serve` application with every configured channel; refuses half-configured ones."""
    from bot.dispatch import CaseDeliveryReports, Dispatcher
    from bot.server import create_app
    from handlers.web import web_adapter

    problems = settings.channel_problems()
    if problems:
        raise ConfigurationError("; ".join(problems))
    store = build_store(settings)
    dispatcher = Dispatcher(store, senders={}, clock=clock or (lambda: datetime.now(UTC)))
    service = build_service(settings, clock=clock, store=store, on_outbox=dispatcher.wake)
    dispatcher.reports = CaseDeliveryReports(service.renderer,
                                             StaffNotifier(service.catalog, service.renderer, settings))
    staff = service.casework or build_staff_service(settings, store, service.catalog, service.renderer,
                                                    clock=service.clock, on_outbox=dispatcher.wake)
    adapters = [web_adapter(service, service.renderer)]
    # Channel adapters register below, one block each (keep edits to your own block).
    # --- telegram ---
    if settings.telegram_enabled:
        from handlers.telegram import telegram_adapter

        adapters.append(telegram_adapter(settings, service, staff))
    # --- wechat ---
    if settings.wechat_enabled:
        from handlers.wechat import wechat_adapter

        adapters.append(wechat_adapter(settings, service))
    # --- wecom ---
    from handlers.wecom import wecom_adapter  # always on: robot keys come from the catalog

    adapters.append(wecom_adapter(settings, clock=service.clock))
    # --- rasa ---
    if settings.rasa_actions:  # Rasa's action server, in-process: POST /rasa/webhook
        from handlers.rasa_actions import rasa_adapter

        adapters.append(rasa_adapter(service, token=settings.rasa_token))
    for adapter in adapters:
        if adapter.sender is not None:
            dispatcher.senders[adapter.name] = adapter.sender
        dispatcher.senders.update(adapter.senders)
    scanner = (build_scanner(settings, store, service.catalog, service.renderer, clock=service.clock,
                             on_outbox=dispatcher.wake) if settings.deadline_scan_seconds > 0 else None)
    return create_app(service, dispatcher, adapters, scanner)
