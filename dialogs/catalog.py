"""Malls and brands a deployment knows: the YAML catalog deployers edit (format in README.md)."""

from __future__ import annotations

from decimal import Decimal
from functools import cached_property
from importlib import resources
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from dialogs.extraction.entities import AliasIndex


class StaffGroups(BaseModel):
    """Where a mall's staff are notified: Telegram group chat ids and WeCom group-robot keys."""

    model_config = ConfigDict(frozen=True)

    telegram: tuple[int, ...] = ()
    wecom: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.telegram or self.wecom)


class Mall(BaseModel):
    # Further deployment data ride along untouched; later features read them.
    model_config = ConfigDict(extra="allow", frozen=True)

    id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    city: str = Field(min_length=1)
    aliases: tuple[str, ...] = ()
    staff: StaffGroups = StaffGroups()  # new cases go here; none: the deployment's fallback group
    escalation: StaffGroups = StaffGroups()  # 重大 cases go here too, at once

    def serves_telegram_chat(self, chat_id: int) -> bool:
        return chat_id in self.staff.telegram or chat_id in self.escalation.telegram


class Brand(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    name: str = Field(min_length=1)
    aliases: tuple[str, ...] = ()
    # Aliases that are also everyday words ("老板", "左右"): matched only in brand context.
    weak_aliases: tuple[str, ...] = ()


class StaffEntry(BaseModel):
    """A staff member who may act on cases: identity as the channel knows them, role, malls served."""

    model_config = ConfigDict(frozen=True)

    id: str = Field(min_length=1)  # "telegram:123456", or any id the CLI operator uses
    name: str = Field(min_length=1)
    role: str = "specialist"  # specialist | front_desk_manager | deputy_store_manager | store_manager | operations_vp
    malls: tuple[str, ...] = ("*",)  # mall ids, or "*" for every mall

    def serves(self, mall_id: str | None) -> bool:
        return "*" in self.malls or (mall_id is not None and mall_id in self.malls)


class Catalog(BaseModel):
    model_config = ConfigDict(frozen=True, ignored_types=(cached_property,))

    malls: tuple[Mall, ...]
    brands: tuple[Brand, ...]
    # Optional staff directory. Without it, whoever can see a mall's staff group may act on its
    # cases (the group is the directory); with it, only listed staff may, and only for their malls.
    staff: tuple[StaffEntry, ...] = ()
    # Refund/compensation approval limits per role in yuan (null: no limit); the seeds' defaults apply otherwise.
    approval_limits: dict[str, Decimal | None] = Field(default_factory=dict)

    def staff_member(self, staff_id: str) -> StaffEntry | None:
        return next((s for s in self.staff if s.id == staff_id), None)

    @model_validator(mode="after")
    def _unique_keys(self) -> Catalog:
        for label, keys in (("mall id", [m.id for m in self.malls]), ("brand name", [b.name for b in self.brands])):
            seen: set[str] = set()
            for key in keys:
                if key in seen:
                    raise ValueError(f"duplicate {label}: {key}")
                seen.add(key)
        return self

    def mall(self, mall_id: str) -> Mall | None:
        return next((m for m in self.malls if m.id == mall_id), None)

    def brand(self, name: str) -> Brand | None:
        return next((b for b in self.brands if b.name == name), None)

    @cached_property
    def cities(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(m.city for m in self.malls))

    @cached_property
    def mall_index(self) -> AliasIndex:
        return AliasIndex.build({m.id: (m.name, *m.aliases) for m in self.malls}, weak={})

    @cached_property
    def brand_index(self) -> AliasIndex:
        return AliasIndex.build(
            {b.name: (b.name, *b.aliases) for b in self.brands},
            weak={b.name: b.weak_aliases for b in self.brands},
        )


def demo_catalog_path() -> Path:
    return Path(str(resources.files("bot").joinpath("data/demo_catalog.yaml")))


def load_catalog(path: str | Path | None = None) -> Catalog:
    """Read and validate a catalog file; None means the demo catalog shipped with Kesu."""
    source = Path(path) if path is not None else demo_catalog_path()
    data = yaml.safe_load(source.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{source}: expected a mapping with 'malls' and 'brands'")
    return Catalog.model_validate(data)
