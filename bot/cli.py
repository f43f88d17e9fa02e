"""`kesu` command line: the entry point where settings are built and the app is wired."""

from __future__ import annotations

import getpass
import json
import sys
import uuid
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from bot.config import Settings

app = typer.Typer(help="Kesu (客诉): complaint intake for home-furnishing malls.", no_args_is_help=True,
                  add_completion=False, pretty_exceptions_enable=False)
cases_app = typer.Typer(help="Look at cases as staff would.", no_args_is_help=True)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
case_app = typer.Typer(help="Work a case as staff: claim, classify, note, ask, progress, propose, approve, resolve, …",
                       no_args_is_help=True)
app.add_typer(cases_app, name="cases")
app.add_typer(case_app, name="case")
app.add_typer(db_app, name="db")
telegram_app = typer.Typer(help="Telegram bot: webhook registration or long polling.", no_args_is_help=True)
app.add_typer(telegram_app, name="telegram")
deadlines_app = typer.Typer(help="Deadlines on cases: warnings before, escalations after.", no_args_is_help=True)
app.add_typer(deadlines_app, name="deadlines")

NowOption = Annotated[str | None, typer.Option(
    "--now", help="The conversation's clock, ISO-8601 (e.g. 2026-11-22T14:30:00+08:00); default: real time.")]
CatalogOption = Annotated[Path | None, typer.Option(
    "--catalog", help="Catalog YAML (malls and brands); default: KESU_CATALOG or the demo catalog.")]
DbOption = Annotated[str | None, typer.Option(
    "--db", help="Database URL; default: KESU_DATABASE_URL or sqlite:///var/kesu.db.")]


def _settings(catalog: Path | None = None, db: str | None = None) -> Settings:
    overrides: dict[str, object] = {}
    if catalog is not None:
        overrides["catalog"] = catalog
    if db is not None:
        overrides["database_url"] = db
    return Settings(**overrides)  # type: ignore[arg-type]


def _parse_now(now: str | None) -> datetime | None:
    if now is None:
        return None
    try:
        moment = datetime.fromisoformat(now)
    except ValueError as error:
        raise typer.BadParameter(f"not an ISO-8601 time: {now}", param_hint="--now") from error
    if moment.tzinfo is None:
        raise typer.BadParameter("give a UTC offset, e.g. +08:00", param_hint="--now")
    return moment


@app.command()
def chat(
    jsonl: Annotated[bool, typer.Option("--jsonl", help="Machine interface: one JSON string per input line, "
                                        "one JSON object per output line.")] = False,
    now: NowOption = None,
    catalog: CatalogOption = None,
    db: DbOption = None,
    customer: Annotated[str | None, typer.Option(
        "--customer", help="Customer id; the same id resumes its conversation. Default: your user name "
        "(interactive) or a new id per run (--jsonl).")] = None,
) -> None:
    """Talk to Kesu as a customer in the terminal."""
    from bot.app import build_service
    from handlers.console import run_interactive, run_jsonl

    fixed_now = _parse_now(now)
    service = build_service(_settings(catalog, db), clock=(lambda: fixed_now) if fixed_now else None)
    if jsonl:
        run_jsonl(service, customer or f"jsonl-{uuid.uuid4().hex[:12]}", sys.stdin, sys.stdout)
        return
    renderer = service.renderer
    run_interactive(service, customer or f"user-{getpass.getuser()}",
                    renderer.render("console_banner", {}), renderer.render("console_prompt", {}) + " ")


@app.command()
def extract(now: NowOption = None, catalog: CatalogOption = None) -> None:
    """Read one customer message on stdin and print the fields found, as JSON with the public field keys."""
    from dialogs.catalog import load_catalog
    from dialogs.extraction import extract_fields

    moment = _parse_now(now) or datetime.now(UTC)
    fields = extract_fields(sys.stdin.read(), now=moment, catalog=load_catalog(_settings(catalog).catalog))
    typer.echo(json.dumps(fields, ensure_ascii=False, indent=2))


@cases_app.command("list")
def cases_list(
    db: DbOption = None,
    catalog: CatalogOption = None,
    mall: Annotated[str | None, typer.Option("--mall", help="Only this mall id.")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000)] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines with the public field keys.")] = False,
) -> None:
    """Newest cases first; the table masks phones, --json gives the full record."""
    from bot.app import build_renderer, build_store
    from dialogs.catalog import load_catalog

    settings = _settings(catalog, db)
    records = build_store(settings).list_cases(limit=limit, mall=mall)
    if as_json:
        for record in records:
            typer.echo(json.dumps(record.public_dict(), ensure_ascii=False))
        return
    malls = {m.id: m.name for m in load_catalog(settings.catalog).malls}
    rows = [{"number": r.number, "created_at": r.created_at, "fields": r.fields,
             "mall_name": malls.get(r.fields.get("mall") or "", r.fields.get("mall"))} for r in records]
    typer.echo(build_renderer(settings).render("cases_list", {"cases": rows}))


@cases_app.command("show")
def cases_show(
    number: Annotated[str, typer.Argument(help="Case number, e.g. KS2611220015 (dashes and lower case are fine).")],
    db: DbOption = None,
    catalog: CatalogOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="The case as JSON with the public field keys.")] = False,
) -> None:
    """Everything about one case: fields, timeline and the conversation it came from."""
    from bot.app import build_renderer, build_store
    from dialogs.catalog import load_catalog
    from dialogs.fields import FIELD_KEYS

    settings = _settings(catalog, db)
    store = build_store(settings)
    record = store.get_case(number)
    renderer = build_renderer(settings)
    if record is None:
        typer.echo(renderer.render("case_not_found", {"number": number}), err=True)
        raise typer.Exit(1)
    if as_json:
        typer.echo(json.dumps(record.public_dict(), ensure_ascii=False, indent=2))
        return
    mall = load_catalog(settings.catalog).mall(record.fields.get("mall") or "")
    typer.echo(renderer.render("case_detail", {
        "case": record, "field_keys": FIELD_KEYS, "mall_name": mall.name if mall else None,
        "events": store.get_case_events(record.id), "deliveries": store.outbox_items(case_id=record.id)}))


@app.command()
def outbox(
    state: Annotated[str | None, typer.Option(
        "--state", help="pending, sending, attempting, sent, failed or uncertain.")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000)] = 50,
    db: DbOption = None,
) -> None:
    """Messages waiting to go out, or that went out or failed: staff notifications and pushed replies."""
    from bot.app import build_renderer, build_store
    from storage.models import OUTBOX_STATES

    if state is not None and state not in OUTBOX_STATES:
        raise typer.BadParameter(f"one of {', '.join(OUTBOX_STATES)}", param_hint="--state")
    settings = _settings(db=db)
    store = build_store(settings)
    typer.echo(build_renderer(settings).render("outbox_list", {
        "items": store.outbox_items(state=state, limit=limit), "counts": store.outbox_counts()}))


@app.command()
def report(
    month: Annotated[str, typer.Option("--month", help="The month, YYYY-MM (cases opened then, Shanghai time).")],
    csv_path: Annotated[Path | None, typer.Option("--csv", help="Also write the figures as CSV (UTF-8 with BOM).")
                        ] = None,
    xlsx_path: Annotated[Path | None, typer.Option("--xlsx", help="Also write them as an Excel workbook.")] = None,
    now: Annotated[str | None, typer.Option(
        "--now", help="Count deadlines as of this ISO-8601 time (default: now).")] = None,
    catalog: CatalogOption = None,
    db: DbOption = None,
) -> None:
    """Monthly statistics: by mall, brand, nature, grade and outcome; SLAs kept; satisfaction; escalations."""
    from bot.app import build_renderer, build_store
    from bot.report import ReportLabels, build_report, parse_month, write_csv, write_xlsx
    from dialogs.catalog import load_catalog

    try:
        year, number = parse_month(month)
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--month") from error
    moment = _parse_now(now) or datetime.now(UTC)
    settings = _settings(catalog, db)
    renderer = build_renderer(settings)
    labels = ReportLabels.from_renderer(renderer)
    mall_names = {m.id: m.name for m in load_catalog(settings.catalog).malls}
    figures = build_report(build_store(settings), year=year, month=number, now=moment, labels=labels,
                           mall_names=mall_names)
    typer.echo(renderer.render("report/monthly", {"report": figures}))
    for kind, path, write in (("csv", csv_path, write_csv), ("xlsx", xlsx_path, write_xlsx)):
        if path is None:
            continue
        try:
            write(figures, labels, path)
        except OSError as error:
            typer.echo(f"kesu report: cannot write {path}: {error.strerror or error}", err=True)
            raise typer.Exit(1) from error
        typer.echo(renderer.render("report/written", {"kind": kind, "path": str(path)}))


@app.command()
def serve(
    host: Annotated[str | None, typer.Option("--host", help="Default: KESU_HOST or 127.0.0.1.")] = None,
    port: Annotated[int | None, typer.Option("--port", help="Default: KESU_PORT or 8080.")] = None,
    catalog: CatalogOption = None,
    db: DbOption = None,
) -> None:
    """Run the service: web chat at /, Telegram and WeChat webhooks when configured, staff notifications."""
    import uvicorn

    from bot.app import ConfigurationError, build_server

    settings = _settings(catalog, db)
    try:
        server = build_server(settings)
    except ConfigurationError as problem:
        typer.echo(f"kesu serve: {problem}", err=True)
        raise typer.Exit(2) from problem
    uvicorn.run(server, host=host or settings.host, port=port or settings.port, log_level="info",
                proxy_headers=True)


@db_app.command("upgrade")
def db_upgrade(db: DbOption = None) -> None:
    """Create or upgrade the schema (Alembic migrations). Kesu also does this at start-up."""
    from storage.db import upgrade_schema

    upgrade_schema(_settings(db=db).database_url)
    typer.echo("ok")


DropPendingOption = Annotated[bool, typer.Option(
    "--drop-pending", help="Discard the updates Telegram is still holding for the bot.")]


T = TypeVar("T")


def _telegram_call(action: str, call: Callable[[Settings], Coroutine[object, object, T]], settings: Settings) -> T:
    import asyncio

    from telegram.error import TelegramError

    try:
        return asyncio.run(call(settings))
    except ValueError as problem:  # a setting is missing
        typer.echo(f"kesu telegram {action}: {problem}", err=True)
        raise typer.Exit(2) from problem
    except TelegramError as problem:
        typer.echo(f"kesu telegram {action}: Telegram said: {problem}", err=True)
        raise typer.Exit(1) from problem


@telegram_app.command("set-webhook")
def telegram_set_webhook(drop_pending: DropPendingOption = False) -> None:
    """Register KESU_PUBLIC_URL/telegram/webhook with Telegram, with KESU_TELEGRAM_WEBHOOK_SECRET, and the "/" menu."""
    from bot.app import build_renderer
    from handlers.telegram import set_webhook

    url, menu_set = _telegram_call(
        "set-webhook", lambda s: set_webhook(s, build_renderer(s), drop_pending_updates=drop_pending), _settings())
    typer.echo(f"webhook set: {url}")
    if menu_set:
        typer.echo("command menu set")
    else:  # the webhook works without it
        typer.echo("kesu telegram set-webhook: command menu not set (Telegram refused or was unreachable); "
                   "`kesu serve` sets it again when it starts", err=True)


@telegram_app.command("delete-webhook")
def telegram_delete_webhook(drop_pending: DropPendingOption = False) -> None:
    """Remove the webhook (needed before long polling; `kesu telegram poll` also does it)."""
    from handlers.telegram import delete_webhook

    _telegram_call("delete-webhook", lambda s: delete_webhook(s, drop_pending_updates=drop_pending), _settings())
    typer.echo("webhook deleted")


@telegram_app.command("poll")
def telegram_poll(catalog: CatalogOption = None, db: DbOption = None) -> None:
    """Run Kesu on Telegram long polling (no public URL needed), with the outbox dispatcher; Ctrl-C stops."""
    import asyncio
    import contextlib

    from bot.app import ConfigurationError, build_server

    settings = _settings(catalog, db).model_copy(update={"telegram_mode": "polling"})
    if not settings.telegram_enabled:
        typer.echo("kesu telegram poll: set KESU_TELEGRAM_TOKEN", err=True)
        raise typer.Exit(2)
    try:
        server = build_server(settings)
    except ConfigurationError as problem:
        typer.echo(f"kesu telegram poll: {problem}", err=True)
        raise typer.Exit(2) from problem

    async def run() -> None:
        async with server.router.lifespan_context(server):
            await asyncio.Event().wait()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())


ActorOption = Annotated[str | None, typer.Option(
    "--as", help="Your staff id as in the catalog's staff list (e.g. telegram:123456); default cli:<user name>.")]
NameOption = Annotated[str | None, typer.Option("--name", help="Your name as customers and colleagues see it.")]
RoleOption = Annotated[str | None, typer.Option(
    "--role", help="Your role when the catalog has no staff list (it decides approval limits): specialist, "
    "front_desk_manager, deputy_store_manager, store_manager, operations_vp.")]
NatureOption = Annotated[str | None, typer.Option(
    "--nature", help="Classify the case: quality, service, sales or delivery.")]
PriorityOption = Annotated[str | None, typer.Option(
    "--priority", help="Grade the case: normal, important or major (major alerts the escalation groups at once).")]


def _act(action_name: str, number: str, text: str, actor: str | None, name: str | None, nature: str | None,
         db: str | None, role: str | None = None, **extra: Any) -> None:
    """Run one staff action and print what happened; a refusal exits 1 with the reason."""
    from bot.app import build_renderer, build_staff_service, build_store
    from bot.lifecycle import ROLES, Action
    from bot.staff import StaffMember, split_promise
    from dialogs.catalog import load_catalog
    from storage.models import NATURES, PRIORITIES

    if role is not None and role not in ROLES:
        raise typer.BadParameter(f"one of {', '.join(ROLES)}", param_hint="--role")
    if nature is not None and nature not in NATURES:
        raise typer.BadParameter(f"one of {', '.join(NATURES)}", param_hint="--nature")
    if extra.get("priority") is not None and extra["priority"] not in PRIORITIES:
        raise typer.BadParameter(f"one of {', '.join(PRIORITIES)}", param_hint="--priority")
    settings = _settings(db=db)
    renderer = build_renderer(settings)
    staff = build_staff_service(settings, build_store(settings), load_catalog(settings.catalog), renderer,
                                clock=lambda: datetime.now(UTC))
    identity = actor or f"cli:{getpass.getuser()}"
    member = StaffMember(identity, name or identity, role)
    if action_name == "claim":
        claimed = staff.claim(number, member, telegram_chat=None)
        if not claimed.allowed or claimed.case is None:
            typer.echo(renderer.render("staff/not_allowed" if claimed.case else "staff/case_not_found", {}), err=True)
            raise typer.Exit(1)
        typer.echo(renderer.render("staff/claimed", {"case": claimed.case, "won": claimed.won}))
        return
    if action_name in (Action.PROGRESS, Action.ASK):  # "48h 品牌方已安排检测": the next update is promised
        promise, text = split_promise(text)
        extra["next_update"] = staff.clock() + promise if promise else None
    result = staff.act(number, Action(action_name), member, telegram_chat=None, text=text, nature=nature, **extra)
    if not result.ok or result.case is None:
        typer.echo(renderer.render(result.refusal or "staff/case_not_found", result.detail), err=True)
        raise typer.Exit(1)
    typer.echo(renderer.render("staff/action_done", {"case": result.case, "action": action_name}))


def _text_command(action_name: str, summary: str) -> None:
    """One `kesu case <action> NUMBER [TEXT]` command; the actions differ only in name and help."""

    def command(number: Annotated[str, typer.Argument(help="Case number.")],
                text: Annotated[str, typer.Argument(help="What to record or tell the customer.")] = "",
                actor: ActorOption = None, name: NameOption = None, nature: NatureOption = None,
                role: RoleOption = None, db: DbOption = None) -> None:
        _act(action_name, number, text, actor, name, nature, db, role)

    command.__doc__ = summary
    case_app.command(action_name)(command)


for _name, _summary in (
    ("claim", "Take ownership of a new case (first claimer owns it)."),
    ("verify", "Start verifying: receipts, photos, the order."),
    ("note", "Add an internal note; the customer does not see it."),
    ("ask", "Ask the customer a question; their answer comes back to the case. A leading '48h ' or '3天 ' "
            "promises the next update within that time."),
    ("progress", "Tell the customer about progress. A leading '48h ' or '3天 ' promises the next update within "
                 "that time (default: KESU_NEXT_UPDATE_HOURS)."),
    ("approve", "Approve a proposed refund/compensation within your limit; the customer is then told."),
    ("agree", "Record that the customer agreed to the proposed solution."),
    ("resolve", "Mark the case resolved; the customer gets the result and the satisfaction question."),
    ("reject", "Answer that the complaint is not upheld, with the reason the customer will read."),
    ("close", "Close a resolved case."),
    ("reopen", "Reopen a resolved, closed or rejected case."),
):
    _text_command(_name, _summary)


@case_app.command("propose")
def case_propose(
    number: Annotated[str, typer.Argument(help="Case number.")],
    text: Annotated[str, typer.Argument(help="The solution as the customer will read it.")] = "",
    codes: Annotated[str, typer.Option("--codes", help="Comma-separated: return, exchange, repair, refund, "
                                       "compensation, apology, inspection, deliver, other.")] = "",
    amount: Annotated[str | None, typer.Option("--amount", help="Yuan, for refund/compensation.")] = None,
    actor: ActorOption = None, name: NameOption = None, nature: NatureOption = None, role: RoleOption = None,
    db: DbOption = None,
) -> None:
    """Propose a solution; money beyond your limit waits for approval by the role the amount needs."""
    try:
        value = Decimal(amount) if amount is not None else None
    except ArithmeticError as error:
        raise typer.BadParameter("a number of yuan", param_hint="--amount") from error
    _act("propose", number, text, actor, name, nature, db, role,
         codes=tuple(code for code in codes.split(",") if code), amount=value)


@case_app.command("classify")
def case_classify(
    number: Annotated[str, typer.Argument(help="Case number.")],
    nature: NatureOption = None, priority: PriorityOption = None,
    actor: ActorOption = None, name: NameOption = None, role: RoleOption = None, db: DbOption = None,
) -> None:
    """Classify the case by nature and/or grade it 一般/重要/重大; the status stays as it is."""
    _act("classify", number, "", actor, name, nature, db, role, priority=priority)


@case_app.command("reassign")
def case_reassign(
    number: Annotated[str, typer.Argument(help="Case number.")],
    to: Annotated[str, typer.Option("--to", help="The colleague's staff id.")],
    actor: ActorOption = None, name: NameOption = None, db: DbOption = None,
) -> None:
    """Hand the case over; the whole history stays with it."""
    _act("reassign", number, "", actor, name, None, db, to=to)


@deadlines_app.command("scan")
def deadlines_scan(
    now: Annotated[str | None, typer.Option(
        "--now", help="Scan as of this ISO-8601 time (e.g. 2026-11-23T15:00:00+08:00); default: now.")] = None,
    catalog: CatalogOption = None,
    db: DbOption = None,
) -> None:
    """One pass (for cron): warn owners before deadlines and escalate missed ones, each exactly once.

    Safe beside running `kesu serve` processes, which scan every KESU_DEADLINE_SCAN_SECONDS themselves.
    """
    from bot.app import build_renderer, build_scanner, build_store
    from dialogs.catalog import load_catalog

    settings = _settings(catalog, db)
    renderer = build_renderer(settings)
    moment = _parse_now(now) or datetime.now(UTC)
    scanner = build_scanner(settings, build_store(settings), load_catalog(settings.catalog), renderer,
                            clock=lambda: moment)
    result = scanner.scan(moment)
    typer.echo(renderer.render("deadline/scan_done", {"now": moment, "actions": result.actions,
                                                      "conflicts": result.conflicts}))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
