"""Explicit factories: settings in, a wired service out. Nothing is built at import time."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from bot.config import Settings
from bot.service import IntakeService
from bot.templating import Renderer
from dialogs.catalog import load_catalog
from storage.repository import Store


def build_renderer(settings: Settings) -> Renderer:
    overrides = [settings.templates_dir] if settings.templates_dir else []
    return Renderer(overrides, locale=settings.locale)


def build_store(settings: Settings) -> Store:
    return Store.from_url(settings.database_url, migrate=True)


def build_service(settings: Settings, *, clock: Callable[[], datetime] | None = None) -> IntakeService:
    return IntakeService(
        store=build_store(settings),
        catalog=load_catalog(settings.catalog),
        renderer=build_renderer(settings),
        clock=clock or (lambda: datetime.now(UTC)),
    )
