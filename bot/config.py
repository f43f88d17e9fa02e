"""Settings, read once at the entry point and passed down (no import-time globals)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Everything a deployment configures; environment variables are prefixed KESU_ (or a .env file)."""

    model_config = SettingsConfigDict(env_prefix="KESU_", env_file=".env", extra="ignore")

    database_url: str = Field(
        default="sqlite:///var/kesu.db",
        description="SQLAlchemy URL: sqlite:///path/to/file.db or postgresql+psycopg://user@host/db",
    )
    catalog: Path | None = Field(default=None, description="Catalog YAML; the demo catalog when unset")
    templates_dir: Path | None = Field(
        default=None, description="Directory with a zh-CN/ folder of templates that override the built-in ones")
    locale: str = "zh-CN"
