"""Settings, read once at the entry point and passed down (no import-time globals)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class PrioritySla(BaseModel):
    """One grade's promises where they differ from the deployment's defaults."""

    model_config = ConfigDict(extra="forbid")

    first_contact_hours: float | None = Field(default=None, gt=0)
    next_update_hours: float | None = Field(default=None, gt=0)
    resolution_days: float | None = Field(default=None, gt=0)


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

    # kesu serve
    host: str = "127.0.0.1"
    port: int = 8080
    public_url: str | None = Field(default=None, description="https://… where WeChat and Telegram reach kesu serve")

    # Telegram: customers in private chats, staff in groups
    telegram_token: str | None = None
    telegram_mode: Literal["webhook", "polling"] = "webhook"
    telegram_webhook_secret: str | None = Field(
        default=None, description="Sent by Telegram as X-Telegram-Bot-Api-Secret-Token; required for webhooks")
    telegram_api_url: str = Field(default="https://api.telegram.org/bot", description="Bot API base (tests: a fake)")

    # WeChat Official Account (customers)
    wechat_token: str | None = None
    wechat_app_id: str | None = None
    wechat_app_secret: str | None = None
    wechat_aes_key: str | None = Field(default=None, description="EncodingAESKey: set it for safe mode")
    wechat_api_url: str = Field(default="https://api.weixin.qq.com/cgi-bin/", description="API base (tests: a fake)")
    wechat_template_id: str | None = Field(
        default=None, description="Template message used when the 48-hour customer-service window has closed")

    # WeCom group robots (staff, one-way)
    wecom_api_url: str = Field(default="https://qyapi.weixin.qq.com/cgi-bin/webhook/send",
                               description="Robot webhook endpoint (tests: a fake)")
    wecom_per_minute: int = Field(default=20, description="Messages per minute per robot (WeCom's limit)")

    # Staff routing beyond the catalog: malls without groups, and 重大 cases everywhere
    fallback_telegram_chat: int | None = None
    fallback_wecom_key: str | None = None
    escalation_telegram_chat: int | None = None
    escalation_wecom_key: str | None = None

    # Rasa action server, in-process at /rasa/webhook
    rasa_actions: bool = True
    rasa_token: str | None = Field(
        default=None, description="When set, /rasa/webhook needs ?token=… (Rasa's action_endpoint `token:`)")

    # Deadlines on cases and their escalation (bot/deadlines.py). A clock is "calendar" (runs through
    # weekends and holidays: the service keeps running on them) or "business" (working days only, China's
    # calendar with working weekends, from the holidays file).
    first_contact_hours: float = Field(default=24, gt=0, description="The script's promise: contact within 24 h")
    next_update_hours: float = Field(default=24, gt=0, description="After each message to the customer, the next")
    resolution_days: float = Field(default=7, gt=0, description="From opening (and from a reopening) to resolved")
    first_contact_clock: Literal["calendar", "business"] = "calendar"
    next_update_clock: Literal["calendar", "business"] = "calendar"
    resolution_clock: Literal["calendar", "business"] = "calendar"
    holidays: Path | None = Field(
        default=None, description="Holiday YAML (format: bot/data/holidays_cn.yaml); the built-in one when unset")
    sla_by_priority: dict[Literal["normal", "important", "major"], PrioritySla] = Field(
        default_factory=dict, description='Shorter (or longer) promises per grade, e.g. KESU_SLA_BY_PRIORITY='
        '\'{"major": {"first_contact_hours": 2, "resolution_days": 3}}\'; unset ones use the values above')
    deadline_warning_hours: float = Field(default=2, ge=0, description="Warn the owner this long before a deadline")
    escalation_step_hours: float = Field(
        default=8, gt=0, description="After an escalation, the next level hears it if the promise is still unkept")
    escalation_repeat_hours: float = Field(
        default=24, gt=0, description="At the top level, the escalation group is reminded this often")
    deadline_scan_seconds: float = Field(
        default=60, ge=0, description="How often kesu serve scans deadlines; 0: not at all (cron runs the scan)")

    def channel_problems(self) -> list[str]:
        """Half-configured channels, named by the setting that is missing; empty when all is well."""
        problems = []
        telegram = {"KESU_TELEGRAM_TOKEN": self.telegram_token}
        if self.telegram_mode == "webhook":
            telegram |= {"KESU_TELEGRAM_WEBHOOK_SECRET": self.telegram_webhook_secret,
                         "KESU_PUBLIC_URL": self.public_url}
        wechat = {"KESU_WECHAT_TOKEN": self.wechat_token, "KESU_WECHAT_APP_ID": self.wechat_app_id,
                  "KESU_WECHAT_APP_SECRET": self.wechat_app_secret}
        for name, group in (("Telegram", telegram), ("WeChat", wechat)):
            if not self._telegram_or_wechat_touched(name):
                continue
            missing = [key for key, value in group.items() if not value]
            if missing:
                problems.append(f"{name} is half-configured: set {', '.join(missing)}")
        return problems

    def _telegram_or_wechat_touched(self, name: str) -> bool:
        if name == "Telegram":
            return bool(self.telegram_token or self.telegram_webhook_secret)
        return bool(self.wechat_token or self.wechat_app_id or self.wechat_app_secret or self.wechat_aes_key)

    @property
    def telegram_enabled(self) -> bool:
        return bool(self.telegram_token)

    @property
    def wechat_enabled(self) -> bool:
        return bool(self.wechat_token and self.wechat_app_id and self.wechat_app_secret)
