"""Telegram: customers in private chats, staff in notification groups (python-telegram-bot 22).

Updates arrive by webhook (``POST /telegram/webhook``, authenticated by the secret-token header
Telegram sends) or, for deployments without a public URL, by long polling inside ``kesu serve``
(``KESU_TELEGRAM_MODE=polling``). Either way each update goes through ``TelegramUpdates.process``:

- a private chat is a customer: text, photos, documents, voice and button presses become one
  ``InboundMessage`` for the shared intake service, with ``push_to`` set, so the replies are
  written to the outbox in the turn's transaction and delivered by the dispatcher through
  ``TelegramSender`` (never lost when Telegram is slow or says 429);
- a group is staff: the buttons on staff messages (认领 / 查看详情 on new-case notifications, 开始核实
  after a claim, 审批通过 on an approval request) and the commands ``/case``, ``/help`` and one per
  staff action (``/classify``, ``/note``, ``/ask``, ``/progress``, ``/verify``, ``/propose``,
  ``/approve``, ``/agree``, ``/resolve``, ``/reject``, ``/reassign``, ``/close``, ``/reopen``; syntax
  in ``parse_case_command`` / ``parse_proposal`` / ``parse_classification`` and in
  templates/…/staff/_commands.j2). Each calls
  ``StaffService``, which decides who may do what; on top of that a command or button only counts
  in a staff group serving the case's mall, so a customer's private chat never reaches a staff
  action (a customer typing "/resolve …" is just a customer message). Other group messages are
  ignored, never taken as a complaint.

Telegram's "/" menu lists the staff commands in groups and /start in private chats; it is set at
start-up and by ``kesu telegram set-webhook`` (``set_command_menu``).

Every Bot API call goes through one ``ExtBot`` with ``AIORateLimiter``: ~30 messages/s overall and
~20/min per group, and a 429 is retried after Telegram's ``retry_after``. Staff groups also have
a per-group window in the sender that hands a full group's outbox item back to the dispatcher
(``Throttled``) instead of making every other chat wait behind it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import re
import time
import warnings
import weakref
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

import httpx
from jinja2 import TemplateError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from telegram import (
    BotCommand,
    BotCommandScope,
    BotCommandScopeAllGroupChats,
    BotCommandScopeAllPrivateChats,
    CallbackQuery,
    Chat,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    MaybeInaccessibleMessage,
    Message,
    MessageEntity,
    ReplyParameters,
    Update,
)
from telegram.error import (
    BadRequest,
    ChatMigrated,
    Forbidden,
    InvalidToken,
    NetworkError,
    RetryAfter,
    TelegramError,
)
from telegram.ext import AIORateLimiter, ExtBot
from telegram.request import HTTPXRequest
from telegram.warnings import PTBDeprecationWarning

from bot.config import Settings
from bot.dispatch import MaybeDelivered, RetryLater, Throttled, Undeliverable
from bot.lifecycle import MONEY_CODES, SOLUTION_CODES, Action, Status
from bot.notify import CLAIM, VIEW, mask_mobiles
from bot.outbound import Button, OutboundMessage
from bot.server import ChannelAdapter
from bot.service import Attachment, InboundMessage, IntakeService
from bot.staff import ActionResult, StaffMember, StaffService, split_promise
from bot.templating import Renderer
from storage.case_numbers import find_case_number, normalize_case_number
from storage.repository import CaseEventRecord, CaseRecord

log = logging.getLogger(__name__)

CHANNEL = "telegram"
WEBHOOK_PATH = "/telegram/webhook"
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
ALLOWED_UPDATES = ("message", "callback_query")
GROUP_TYPES = (Chat.GROUP, Chat.SUPERGROUP)

MAX_TEXT = 4096  # characters (UTF-16 code units) per message
MAX_CALLBACK_DATA = 64  # bytes of callback_data per inline button
MAX_CALLBACK_ANSWER = 200  # characters in an answerCallbackQuery notification / alert
MAX_UPDATE_BYTES = 1_000_000  # a Telegram update is a few KB; anything this large is not one

RATE_LIMIT_RETRIES = 2  # 429s retried inline after retry_after; then the outbox backs off
OVERALL_PER_SECOND = 30
GROUP_PER_MINUTE = 20
GROUP_WINDOW_SECONDS = 60.0
POLL_TIMEOUT = 25  # seconds a getUpdates long poll may hang
POLL_BACKOFF_MAX = 60.0
POLL_MAX_FAILURES = 5  # an update that keeps failing is skipped after this many tries
REMEMBERED_UPDATES = 2048
BRIEF_EVENTS = 8  # timeline entries a case brief shows, newest last

# "/note@KesuBot KS2611220019 已电话联系": the command, the bot it is addressed to, the rest.
_COMMAND = re.compile(r"^/(?P<name>[A-Za-z_]+)(?:@(?P<bot>\w+))?(?:\s+(?P<rest>.*))?$", re.DOTALL)
_FIRST_WORD = re.compile(r"\s*(?P<word>\S+)(?:\s+(?P<rest>.*))?$", re.DOTALL)
_LOOKS_LIKE_NUMBER = re.compile(r"^(?:KS)?[\d\-_.]{6,}$", re.IGNORECASE)
_AMOUNT = re.compile(r"^[¥￥]?(?P<value>\d{1,9}(?:\.\d{1,2})?)(?:元|块)?$")
_CODE_SEPARATORS = re.compile(r"[,，、/+]")

CASE = "case"
HELP = ("help", "start")
# One command per staff action, named as the action (the CLI's `kesu case <action>` too).
ACTION_COMMANDS: dict[str, Action] = {action.value: action for action in (
    Action.CLASSIFY, Action.VERIFY, Action.NOTE, Action.ASK, Action.PROGRESS, Action.PROPOSE, Action.APPROVE,
    Action.AGREE, Action.RESOLVE, Action.REJECT, Action.REASSIGN, Action.CLOSE, Action.REOPEN)}
# Telegram's "/" menu: staff commands in groups, /start in private chats (customers write in their own
# words; the intake recognises "查询投诉" and a case number without a command). Descriptions: telegram_menu.j2.
STAFF_MENU = (CASE, *ACTION_COMMANDS, HELP[0])
CUSTOMER_MENU = ("start",)
# Staff buttons: "<action>:<case number>" (≤ 64 bytes). Claim and view come with new-case notifications;
# verify follows a claim, approve an approval request.
VERIFY = Action.VERIFY.value
APPROVE = Action.APPROVE.value
BUTTON_ACTIONS: dict[str, Action] = {VERIFY: Action.VERIFY, APPROVE: Action.APPROVE}

# Solution codes for /propose: the expectation codes (bot.lifecycle.SOLUTION_CODES) or the words staff use.
SOLUTION_WORDS: dict[str, str] = {
    "退款": "refund", "退钱": "refund", "退货": "return", "换货": "exchange", "换新": "exchange", "维修": "repair",
    "赔偿": "compensation", "补偿": "compensation", "道歉": "apology", "上门检测": "inspection", "检测": "inspection",
    "鉴定": "inspection", "送货": "deliver", "安装": "deliver", "其他": "other"}
# /classify: the words staff use for a case's nature (storage.models.NATURES) and grade (PRIORITIES);
# the codes themselves work too. A refusal lists them (staff/classify_words).
NATURE_WORDS: dict[str, tuple[str, ...]] = {
    "quality": ("质量", "产品质量"), "service": ("服务",), "sales": ("销售", "价格", "宣传"),
    "delivery": ("送货", "安装", "物流", "送货安装")}
PRIORITY_WORDS: dict[str, tuple[str, ...]] = {"normal": ("一般",), "important": ("重要",), "major": ("重大",)}
_CLASSIFY_CODES: dict[str, tuple[str, str]] = {
    word.lower(): (kind, code) for kind, table in (("nature", NATURE_WORDS), ("priority", PRIORITY_WORDS))
    for code, words in table.items() for word in (code, *words)}
# Longest first, so words typed together ("送货安装重大") split into the longest words they contain.
_CLASSIFY_WORD = re.compile("|".join(sorted(map(re.escape, _CLASSIFY_CODES), key=len, reverse=True)), re.IGNORECASE)


# --------------------------------------------------------------------------- the Bot


def make_bot(settings: Settings, *, max_retries: int = RATE_LIMIT_RETRIES,
             group_per_minute: int = GROUP_PER_MINUTE) -> ExtBot[int]:
    """One Bot API client per deployment: the configured base URL and the rate limiter."""
    if not settings.telegram_token:
        raise ValueError("KESU_TELEGRAM_TOKEN is not set")
    return ExtBot(
        settings.telegram_token,
        base_url=settings.telegram_api_url,
        request=HTTPXRequest(connection_pool_size=64),
        get_updates_request=HTTPXRequest(connection_pool_size=2),
        rate_limiter=AIORateLimiter(overall_max_rate=OVERALL_PER_SECOND, group_max_rate=group_per_minute,
                                    max_retries=max_retries),
    )


def retry_after_seconds(error: RetryAfter) -> float:
    """Telegram's hint, whether PTB hands it over as int seconds or as a timedelta."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PTBDeprecationWarning)
        value: Any = error.retry_after
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


def _chat_id(target: str) -> int | str:
    try:
        return int(target)
    except ValueError:
        return target  # "@channelusername"


def _utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def split_text(text: str, limit: int = MAX_TEXT) -> list[str]:
    """Pieces of at most ``limit`` UTF-16 units, cut at a line break when there is one."""
    pieces: list[str] = []
    rest = text
    while _utf16_len(rest) > limit:
        cut = 0
        units = 0
        for index, char in enumerate(rest):
            units += 2 if ord(char) > 0xFFFF else 1
            if units > limit:
                cut = index
                break
        newline = rest.rfind("\n", 0, cut)
        if newline > 0:
            pieces.append(rest[:newline].rstrip())
            rest = rest[newline + 1:]
        else:
            pieces.append(rest[:cut])
            rest = rest[cut:]
    if rest.strip() or not pieces:
        pieces.append(rest)
    return [piece for piece in pieces if piece.strip()] or [text[:1] or " "]


def keyboard(rows: Sequence[Sequence[Button]]) -> InlineKeyboardMarkup | None:
    """Inline buttons whose callback_data is the payload; a payload over Telegram's 64 bytes is left
    out (the message text still says what the customer can answer)."""
    built: list[list[InlineKeyboardButton]] = []
    for row in rows:
        buttons = []
        for button in row:
            if len(button.payload.encode("utf-8")) > MAX_CALLBACK_DATA:
                log.warning("button %r left out: payload over %d bytes", button.label, MAX_CALLBACK_DATA)
                continue
            buttons.append(InlineKeyboardButton(button.label, callback_data=button.payload))
        if buttons:
            built.append(buttons)
    return InlineKeyboardMarkup(built) if built else None


def _with_footer(text: str, footer: str) -> str:
    """``text`` with ``footer`` below it, ``text`` shortened if both would not fit one message."""
    room = MAX_TEXT - _utf16_len(footer) - 3
    if _utf16_len(text) > room:
        text = split_text(text, room - 1)[0] + "…"
    return f"{text}\n\n{footer}"


def _short(text: str, limit: int = MAX_CALLBACK_ANSWER) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --------------------------------------------------------------------------- staff commands


@dataclass(frozen=True)
class CaseCommand:
    """A staff command as typed: ``/<name>[@bot] [KS… [arguments]]``."""

    name: str
    bot: str | None
    number: str | None  # canonical, when the first word is a valid case number
    number_given: bool  # the first word looked like a case number (valid or not)
    rest: str  # what follows the number (or the whole argument when there is no number)


def parse_case_command(text: str) -> CaseCommand | None:
    """``/note KS2611220019 已电话联系顾客`` → note, KS2611220019, "已电话联系顾客"; None if not a command.

    The case number is the first word after the command (lower case and dashes accepted, no
    spaces inside); everything after it is the command's argument, line breaks kept.
    """
    found = _COMMAND.match(text.strip())
    if found is None:
        return None
    argument = found.group("rest") or ""
    first = _FIRST_WORD.match(argument)
    number = normalize_case_number(first.group("word")) if first else None
    if first is None or (number is None and not _LOOKS_LIKE_NUMBER.match(first.group("word"))):
        return CaseCommand(found.group("name").lower(), found.group("bot"), None, False, argument.strip())
    return CaseCommand(found.group("name").lower(), found.group("bot"), number, True,
                       (first.group("rest") or "").strip())


def _solution_codes(word: str) -> list[str] | None:
    """["refund", "compensation"] for "退款,赔偿" or "refund+compensation"; None if any part is no code."""
    codes = []
    for part in _CODE_SEPARATORS.split(word):
        if not part:
            continue
        code = part.lower() if part.lower() in SOLUTION_CODES else SOLUTION_WORDS.get(part)
        if code is None:
            return None
        codes.append(code)
    return codes or None


def parse_proposal(argument: str) -> tuple[tuple[str, ...], Decimal | None, str]:
    """``[codes] [amount] text`` → (codes, amount, text).

    Codes come first, as one or more words, each a code or a comma-separated list of codes
    (退款 退货 换货 维修 赔偿 道歉 上门检测 …, or refund, return, exchange, repair, compensation,
    apology, inspection, deliver, other); then the amount in yuan ("300", "300元", "¥300.50");
    the rest is the solution as the customer will read it: ``赔偿 300 赔偿300元，三个工作日内到账``.
    """
    codes: list[str] = []
    amount: Decimal | None = None
    rest = argument.strip()
    while rest:
        first = _FIRST_WORD.match(rest)
        if first is None:
            break
        word = first.group("word")
        found = _solution_codes(word) if amount is None else None
        money = _AMOUNT.match(word) if amount is None else None
        if found is not None:
            codes += [code for code in found if code not in codes]
        elif money is not None:
            try:
                amount = Decimal(money.group("value"))
            except InvalidOperation:  # pragma: no cover - the pattern only lets numbers through
                break
        else:
            break
        rest = (first.group("rest") or "").strip()
    return tuple(codes), amount, rest


@dataclass(frozen=True)
class Classification:
    """What ``/classify KS… <words>`` asks for: a nature and/or a grade, or why it cannot be read."""

    nature: str | None
    priority: str | None
    unknown: tuple[str, ...] = ()  # words that are neither
    conflicting: bool = False  # two different natures or two different grades


def parse_classification(argument: str) -> Classification:
    """``送货 重大``, ``major quality``, ``产品质量，一般`` or ``送货安装重要``: in any order, either or both.

    Words are separated by spaces or commas, or typed together; 送货 and 安装 both mean delivery,
    so writing both is no conflict.
    """
    found: dict[str, list[str]] = {"nature": [], "priority": []}
    unknown: list[str] = []
    for token in _CODE_SEPARATORS.sub(" ", argument).split():
        words = [match.group() for match in _CLASSIFY_WORD.finditer(token)]
        if "".join(words) != token:
            unknown.append(token)
            continue
        for word in words:
            kind, code = _CLASSIFY_CODES[word.lower()]
            if code not in found[kind]:
                found[kind].append(code)
    natures, priorities = found["nature"], found["priority"]
    return Classification(natures[0] if natures else None, priorities[0] if priorities else None, tuple(unknown),
                          len(natures) > 1 or len(priorities) > 1)


def staff_button(payload: str) -> tuple[str, str] | None:
    """("claim", "KS…") from a staff button's payload; None for anything else (customers' buttons)."""
    action, _, number = payload.partition(":")
    return (action, number) if action in (CLAIM, VIEW, *BUTTON_ACTIONS) and number else None


def _member(message: Message) -> StaffMember | None:
    """Who typed a command; None for messages sent as the group or a channel, and for bots."""
    user = message.from_user
    if user is None or user.is_bot or message.sender_chat is not None:
        return None
    return StaffMember(f"telegram:{user.id}", user.full_name)


# --------------------------------------------------------------------------- the command menu


Menus = list[tuple[BotCommandScope, list[BotCommand]]]


def command_menus(renderer: Renderer) -> Menus:
    """What Telegram's "/" menu offers: staff commands in every group, /start in private chats.

    Telegram has no scope for "our staff groups only"; a command typed in any other group is
    refused there (staff/not_allowed), so showing it costs nothing. A command whose description
    does not render (a deployer's older copy of staff/_commands.j2 without it) is left out of the
    menu, with a warning, rather than keeping Kesu from starting: it still works when typed.
    """
    def commands(names: Sequence[str]) -> list[BotCommand]:
        menu = []
        for name in names:
            try:
                menu.append(BotCommand(name, renderer.render("telegram_menu", {"command": name})))
            except TemplateError as error:
                log.warning("Telegram menu: /%s left out, its description does not render: %s", name, error)
        return menu

    return [(BotCommandScopeAllGroupChats(), commands(STAFF_MENU)),
            (BotCommandScopeAllPrivateChats(), commands(CUSTOMER_MENU))]


async def set_command_menu(bot: ExtBot[int], menus: Menus) -> bool:
    """Register the menus; False (and a warning in the log) if Telegram refused or was unreachable.

    Never raises for Telegram: the menu only helps people type commands, which work without it, so
    it must not keep Kesu from starting. The menus are rendered before, so a broken template shows
    at once instead of in the background.
    """
    try:
        for scope, commands in menus:
            await bot.set_my_commands(commands, scope=scope)
    except TelegramError as error:
        log.warning("Telegram command menu not set: %s", error)
        return False
    return True


# --------------------------------------------------------------------------- the outbox sender


class TelegramSender:
    """Delivers outbox items: ``send_message`` (split above 4096 characters, buttons on the last
    piece), or ``edit_message_text`` when the item carries ``extra["edit_of"]``.

    Failures are reported in the dispatcher's terms: 429 still there after the limiter's own
    retries, failing to connect and server errors → ``RetryLater``; a blocked bot, an unknown
    chat or a request Telegram rejects → ``Undeliverable``; a request that got no answer (read
    timeout, connection dropped) or a long text cut off after its first pieces → ``MaybeDelivered``
    (Telegram may have it: a customer's message is then not sent again).
    """

    def __init__(self, bot: ExtBot[int], *, group_per_minute: int = GROUP_PER_MINUTE) -> None:
        self.bot = bot
        self.group_per_minute = group_per_minute
        self._group_windows: dict[str, deque[float]] = {}  # send times per group, last minute
        # The dispatcher sends one chat's items one at a time (its lanes); the lock per chat keeps
        # the pieces of messages in order for any other caller of this sender too.
        self._chat_locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    async def send(self, target: str, message: OutboundMessage) -> str | None:
        if not message.text.strip():
            raise Undeliverable("empty message: Telegram refuses empty text")
        edit_of = message.extra.get("edit_of")
        pieces = split_text(message.text)[:1] if edit_of else split_text(message.text)
        self._take_group_slots(target, len(pieces))
        lock = self._chat_locks.get(target)
        if lock is None:
            lock = self._chat_locks[target] = asyncio.Lock()
        async with lock:
            try:
                return await self._send(_chat_id(target), message, pieces, edit_of)
            except ChatMigrated as moved:
                log.warning("Telegram chat %s became supergroup %s: update the catalog / settings",
                            target, moved.new_chat_id)
                try:
                    return await self._send(moved.new_chat_id, message, pieces, edit_of)
                except TelegramError as error:
                    raise _dispatch_error(error) from error
            except TelegramError as error:
                raise _dispatch_error(error) from error

    async def _send(self, chat_id: int | str, message: OutboundMessage, pieces: list[str],
                    edit_of: object) -> str:
        markup = keyboard(message.buttons)
        if edit_of:
            try:
                await self.bot.edit_message_text(pieces[0], chat_id=chat_id, message_id=int(str(edit_of)),
                                                 reply_markup=markup)
            except BadRequest as error:
                if "not modified" not in error.message.lower():
                    raise
            return str(edit_of)
        sent: Message | None = None
        for index, piece in enumerate(pieces):
            last = index == len(pieces) - 1
            try:
                sent = await self.bot.send_message(chat_id, piece, reply_markup=markup if last else None)
            except TelegramError as error:
                if index == 0:
                    raise
                raise MaybeDelivered(f"{index} of {len(pieces)} pieces delivered, then: "
                                     f"{_dispatch_error(error)}") from error
        assert sent is not None
        return str(sent.message_id)

    def _take_group_slots(self, target: str, count: int) -> None:
        """Groups take ~20 messages a minute: a full group's item goes back to the dispatcher untried."""
        if not target.startswith("-") or self.group_per_minute <= 0:
            return
        now = time.monotonic()
        window = self._group_windows.setdefault(target, deque())
        while window and now - window[0] >= GROUP_WINDOW_SECONDS:
            window.popleft()
        count = min(count, self.group_per_minute)
        if window and len(window) + count > self.group_per_minute:
            after = window[len(window) + count - self.group_per_minute - 1] + GROUP_WINDOW_SECONDS - now
            raise Throttled(f"group {target} is at {self.group_per_minute} messages a minute", after=max(after, 0.1))
        window.extend([now] * count)


def _dispatch_error(error: TelegramError) -> Exception:
    if _may_have_arrived(error):
        return MaybeDelivered(f"no answer from Telegram after sending: {error} ({type(error.__cause__).__name__})")
    if isinstance(error, RetryAfter):
        return RetryLater(f"Telegram 429: {error}", after=retry_after_seconds(error))
    if isinstance(error, Forbidden):
        return Undeliverable(f"Telegram refused: {error}")  # bot blocked / kicked from the group
    if isinstance(error, BadRequest):
        return Undeliverable(f"Telegram rejected the message: {error}")  # chat not found, bad markup, …
    if isinstance(error, InvalidToken):
        return RetryLater(f"Telegram rejected the bot token (fix KESU_TELEGRAM_TOKEN): {error}")
    if isinstance(error, NetworkError):
        return RetryLater(f"Telegram unreachable: {error}")  # includes TimedOut and 5xx answers
    return RetryLater(f"Telegram error: {error}")


def _may_have_arrived(error: TelegramError) -> bool:
    """The request went out whole and its answer was lost: Telegram may have delivered the message.

    PTB wraps httpx's error (``TimedOut``/``NetworkError`` from it). Failing to connect, waiting for
    a pooled connection or not finishing the request's upload mean nothing was sent.
    """
    return isinstance(error, NetworkError) and isinstance(
        error.__cause__, httpx.ReadTimeout | httpx.ReadError | httpx.RemoteProtocolError)


# --------------------------------------------------------------------------- incoming updates


class TelegramUpdates:
    """One update in, the right thing done: the same code for webhook and long polling."""

    def __init__(self, bot: ExtBot[int], service: IntakeService, staff: StaffService) -> None:
        self.bot = bot
        self.service = service
        self.staff = staff
        self.renderer: Renderer = service.renderer
        self._done: OrderedDict[int, None] = OrderedDict()  # update ids already handled here

    async def process(self, update: Update) -> None:
        """Handle once; an exception means "not handled" (the webhook answers 500, polling retries)."""
        if update.update_id in self._done:
            return  # Telegram re-sent an update this process already handled
        if update.callback_query is not None:
            await self._callback(update.callback_query)
        elif update.message is not None:
            await self._message(update.message)
        self._done[update.update_id] = None
        while len(self._done) > REMEMBERED_UPDATES:
            self._done.popitem(last=False)

    # ------------------------------------------------------------------ messages

    async def _message(self, message: Message) -> None:
        if message.chat.type == Chat.PRIVATE:
            await self._customer(message)
        elif message.chat.type in GROUP_TYPES:
            await self._group_message(message)
        # channels and anything else: not ours

    async def _customer(self, message: Message) -> None:
        text, attachments = _content(message)
        user = message.from_user
        inbound = InboundMessage(CHANNEL, str(user.id if user else message.chat.id), text,
                                 message_id=str(message.message_id), attachments=attachments,
                                 push_to=str(message.chat.id))
        await asyncio.to_thread(self.service.handle, inbound)

    async def _group_message(self, message: Message) -> None:
        chat_id = message.chat.id
        if message.migrate_to_chat_id and self.staff.is_staff_chat(chat_id):
            log.warning("staff group %s became supergroup %s: update its chat id in the catalog",
                        chat_id, message.migrate_to_chat_id)
        command = parse_case_command(message.text or "")
        if command is None or self._addressed_elsewhere(command.bot):
            return  # staff chatting, members joining, another bot's commands: never a complaint
        if command.name in HELP:
            if self.staff.is_staff_chat(chat_id):  # elsewhere /help belongs to whoever else is there
                await self._reply(message, self.renderer.render("staff/help", {}))
            return
        if command.name == CASE:
            await self._case_command(message, command)
        elif command.name in ACTION_COMMANDS:
            await self._action_command(message, command, ACTION_COMMANDS[command.name])
        # any other command is not ours

    async def _case_command(self, message: Message, command: CaseCommand) -> None:
        chat_id = message.chat.id
        if not self.staff.is_staff_chat(chat_id):
            text = self.renderer.render("staff/not_allowed", {})
        else:
            number = command.number or find_case_number(command.rest)
            if number is None and command.number_given:
                text = self.renderer.render("staff/case_not_found", {})
            elif number is None:
                text = self.renderer.render("staff/case_usage", {})
            else:
                text, _ = await self._brief_or_refusal(chat_id, number)
        await self._reply(message, text)

    async def _action_command(self, message: Message, command: CaseCommand, action: Action) -> None:
        """One staff action typed in a group; the answer (done, or why not) replies to the command."""
        chat_id = message.chat.id
        member = _member(message)
        if not self.staff.is_staff_chat(chat_id) or member is None:
            await self._reply(message, self.renderer.render("staff/not_allowed", {}))
            return
        if command.number is None:
            template = "staff/case_not_found" if command.number_given else "staff/command_usage"
            await self._reply(message, self.renderer.render(template, {"command": command.name}))
            return
        arguments: dict[str, Any] = {"text": command.rest}
        if action in (Action.PROGRESS, Action.ASK):
            promise, text = split_promise(command.rest)
            arguments = {"text": text, "next_update": self.staff.clock() + promise if promise else None}
        elif action is Action.PROPOSE:
            codes, amount, text = parse_proposal(command.rest)
            if (not codes and not text) or (MONEY_CODES & set(codes) and amount is None):
                await self._reply(message, self.renderer.render("staff/command_usage", {"command": command.name}))
                return
            arguments = {"text": text, "codes": codes, "amount": amount}
        elif action is Action.CLASSIFY:
            wanted = parse_classification(command.rest)
            if wanted.unknown or wanted.conflicting:
                await self._reply(message, self.renderer.render("staff/classify_words", {
                    "unknown": list(wanted.unknown), "natures": NATURE_WORDS, "priorities": PRIORITY_WORDS}))
                return
            arguments = {"nature": wanted.nature, "priority": wanted.priority}
        elif action is Action.REASSIGN:
            to, word = self._reassign_target(message, command.rest)
            if to is None:
                await self._reply(message, self.renderer.render("staff/unknown_member", {"to": word}))
                return
            arguments = {"to": to}
        result = await self._act(chat_id, command.number, action, member, **arguments)
        buttons: InlineKeyboardMarkup | None = None
        if result.ok and result.case is not None and result.case.status == Status.AWAITING_APPROVAL:
            buttons = self._buttons(result.case.number, APPROVE, VIEW)  # for whoever may approve it
        await self._reply(message, self._result_text(action, result), buttons)

    async def _act(self, chat_id: int, number: str, action: Action, member: StaffMember,
                   **arguments: Any) -> ActionResult:
        """``StaffService.act`` for a staff group serving the case; refused for any other chat."""
        case = await asyncio.to_thread(self.staff.find, number)
        if case is None:
            return ActionResult(None, "staff/case_not_found")
        if not self.staff.telegram_chat_serves(chat_id, case):
            return ActionResult(case, "staff/not_allowed")
        return await asyncio.to_thread(self.staff.act, number, action, member, telegram_chat=chat_id,
                                       **arguments)

    def _result_text(self, action: Action, result: ActionResult) -> str:
        if result.ok and result.case is not None:
            return self.renderer.render("staff/action_done",
                                        {**result.detail, "case": result.case, "action": action.value})
        return self.renderer.render(result.refusal or "staff/not_allowed", result.detail)

    def _reassign_target(self, message: Message, argument: str) -> tuple[str | None, str | None]:
        """(staff id, None) for ``telegram:<id>``, ``@<id>``, a directory id, a mention of a user or a
        command sent in reply to a colleague's message; (None, what was written) otherwise."""
        word = argument.split()[0] if argument.split() else None
        if word is not None:
            digits = re.fullmatch(r"(?:telegram:|@)?(\d{1,20})", word, re.IGNORECASE)
            if digits:
                return f"telegram:{digits.group(1)}", None
            if self.staff.catalog.staff_member(word) is not None:
                return word, None
        for entity in message.entities:
            if entity.type == MessageEntity.TEXT_MENTION and entity.user is not None:
                return f"telegram:{entity.user.id}", None
        replied = message.reply_to_message
        if word is None and replied is not None and replied.from_user is not None and not replied.from_user.is_bot:
            return f"telegram:{replied.from_user.id}", None
        return None, word

    def _addressed_elsewhere(self, bot_name: str | None) -> bool:
        """"/note@OtherBot …" is for another bot in the same group."""
        if not bot_name:
            return False
        try:
            mine = self.bot.username
        except RuntimeError:  # not initialised (getMe failed at start-up): take it as ours
            return False
        return bot_name.lower() != mine.lower()

    async def _reply(self, message: Message, text: str, buttons: InlineKeyboardMarkup | None = None) -> None:
        """Answer a command in its group, as a reply to it; customers' phones never show in full."""
        await self._quietly(self.bot.send_message(
            message.chat.id, split_text(mask_mobiles(text))[0], reply_markup=buttons,
            reply_parameters=ReplyParameters(message.message_id, allow_sending_without_reply=True)))

    def _buttons(self, number: str, *actions: str) -> InlineKeyboardMarkup:
        return InlineKeyboardMarkup([[InlineKeyboardButton(self.renderer.button_label(action),
                                                           callback_data=f"{action}:{number}")
                                      for action in actions]])

    # ------------------------------------------------------------------ buttons

    async def _callback(self, query: CallbackQuery) -> None:
        message = query.message
        action = staff_button(query.data or "")
        if action is not None:
            await self._staff_action(query, message, *action)
        elif message is not None and message.chat.type == Chat.PRIVATE and query.data:
            inbound = InboundMessage(CHANNEL, str(query.from_user.id), query.data, message_id=f"cb:{query.id}",
                                     push_to=str(message.chat.id))
            await asyncio.to_thread(self.service.handle, inbound)
            await self._quietly(self.bot.answer_callback_query(query.id))
            # The answer is given: its buttons would only invite a second, stale press.
            await self._quietly(self.bot.edit_message_reply_markup(chat_id=message.chat.id,
                                                                   message_id=message.message_id))
        else:
            await self._quietly(self.bot.answer_callback_query(query.id))

    async def _staff_action(self, query: CallbackQuery, message: MaybeInaccessibleMessage | None,
                            action: str, number: str) -> None:
        if message is None or message.chat.type not in GROUP_TYPES:
            await self._alert(query, self.renderer.render("staff/not_allowed", {}))
            return
        chat_id = message.chat.id
        if action == VIEW:
            text, shown = await self._brief_or_refusal(chat_id, number)
            if shown:  # in the group the button was pressed in, for everyone there
                await self._quietly(self.bot.answer_callback_query(query.id))
                await self._quietly(self.bot.send_message(
                    chat_id, text,
                    reply_parameters=ReplyParameters(message.message_id, allow_sending_without_reply=True)))
            else:
                await self._alert(query, text)
            return
        user = query.from_user
        member = StaffMember(f"telegram:{user.id}", user.full_name)
        if action in BUTTON_ACTIONS:
            await self._button_action(query, message, BUTTON_ACTIONS[action], number, member)
            return
        assert action == CLAIM
        found = await asyncio.to_thread(self.staff.find, number)
        if found is None or not self.staff.telegram_chat_serves(chat_id, found):
            await self._alert(query, self.renderer.render("staff/not_allowed", {}))
            return
        result = await asyncio.to_thread(self.staff.claim, number, member, telegram_chat=chat_id)
        if not result.allowed or result.case is None:
            await self._alert(query, self.renderer.render("staff/not_allowed", {}))
            return
        case = result.case
        claimed = self.renderer.render("staff/claimed", {"case": case, "won": result.won})
        if not result.won:
            await self._alert(query, claimed)
            return
        await self._quietly(self.bot.answer_callback_query(query.id, _short(claimed)))
        original = message.text if isinstance(message, Message) and message.text else self._brief(case)
        await self._quietly(self.bot.edit_message_text(
            _with_footer(original, claimed), chat_id=chat_id, message_id=message.message_id,
            reply_markup=self._buttons(case.number, VIEW, VERIFY)))

    async def _button_action(self, query: CallbackQuery, message: MaybeInaccessibleMessage, action: Action,
                             number: str, member: StaffMember) -> None:
        """开始核实 / 审批通过: done → the message says so and keeps only 查看详情; refused → an alert."""
        result = await self._act(message.chat.id, number, action, member)
        text = self._result_text(action, result)
        if not result.ok or result.case is None:
            await self._alert(query, text)
            return
        await self._quietly(self.bot.answer_callback_query(query.id, _short(text)))
        original = message.text if isinstance(message, Message) and message.text else self._brief(result.case)
        await self._quietly(self.bot.edit_message_text(
            _with_footer(original, text), chat_id=message.chat.id, message_id=message.message_id,
            reply_markup=self._buttons(result.case.number, VIEW)))

    # ------------------------------------------------------------------ staff texts

    def _brief(self, case: CaseRecord, events: Sequence[CaseEventRecord] = ()) -> str:
        """The case at a glance: facts, solution (and who must approve it), the latest timeline entries."""
        mall = self.service.catalog.mall(case.fields.get("mall") or "")
        amount = Decimal(str((case.solution or {}).get("amount") or 0))
        return mask_mobiles(self.renderer.render("staff/case_brief", {
            "case": case, "mall_name": mall.name if mall else None, "events": list(events)[-BRIEF_EVENTS:],
            "approver_role": self.staff.approval.approver_for(amount)}))

    async def _brief_or_refusal(self, chat_id: int, number: str) -> tuple[str, bool]:
        """(the case brief, True) for a group serving the case; otherwise (why not, False)."""
        if not self.staff.is_staff_chat(chat_id):
            return self.renderer.render("staff/not_allowed", {}), False
        case = await asyncio.to_thread(self.staff.find, number)
        if case is None:
            return self.renderer.render("case_not_found", {"number": number}), False
        if not self.staff.telegram_chat_serves(chat_id, case):
            return self.renderer.render("staff/not_allowed", {}), False
        events = await asyncio.to_thread(self.staff.store.get_case_events, case.id)
        return split_text(self._brief(case, events))[0], True

    async def _alert(self, query: CallbackQuery, text: str) -> None:
        await self._quietly(self.bot.answer_callback_query(query.id, _short(text), show_alert=True))

    @staticmethod
    async def _quietly(call: Any) -> None:
        """Answers to staff and button acknowledgements: the state change is already stored, so a
        refused or failed courtesy call is logged, not retried by making Telegram re-send the update."""
        try:
            await call
        except TelegramError as error:
            log.warning("Telegram call failed: %s", error)


def _content(message: Message) -> tuple[str, tuple[Attachment, ...]]:
    """What a customer's message says and carries, in channel-neutral terms."""
    caption = message.caption or ""
    if message.text is not None:
        return message.text, ()
    if message.photo:
        largest = max(message.photo, key=lambda size: (size.width * size.height, size.file_size or 0))
        return caption, (Attachment("photo", largest.file_id, None, "image/jpeg"),)
    if message.document is not None:
        document = message.document
        return caption, (Attachment("document", document.file_id, document.file_name, document.mime_type),)
    if message.voice is not None:
        return caption, (Attachment("voice", message.voice.file_id, None, message.voice.mime_type),)
    if message.audio is not None:
        audio = message.audio
        return caption, (Attachment("voice", audio.file_id, audio.file_name, audio.mime_type),)
    if message.video is not None:
        video = message.video
        return caption, (Attachment("video", video.file_id, video.file_name, video.mime_type),)
    if message.video_note is not None:
        return "", (Attachment("video", message.video_note.file_id, None, "video/mp4"),)
    if message.contact is not None:
        return message.contact.phone_number, ()  # a shared contact card is the customer's phone
    return "", ()  # stickers, locations, polls, dice…: the core answers "not understood"


# --------------------------------------------------------------------------- long polling


class Poller:
    """getUpdates in a loop (for deployments Telegram cannot reach), the same handling as the webhook.

    The offset moves past an update only once it is handled, so a database hiccup re-fetches it;
    one that keeps failing is skipped after POLL_MAX_FAILURES tries, and logged.
    """

    def __init__(self, bot: ExtBot[int], updates: TelegramUpdates, *, timeout: int = POLL_TIMEOUT) -> None:
        self.bot = bot
        self.updates = updates
        self.timeout = timeout
        self.offset: int | None = None
        self._failures: dict[int, int] = {}

    async def run(self) -> None:
        await self._drop_webhook()
        pause = 1.0
        while True:
            try:
                batch = await self.bot.get_updates(offset=self.offset, timeout=self.timeout,
                                                   allowed_updates=list(ALLOWED_UPDATES))
            except RetryAfter as error:
                await asyncio.sleep(retry_after_seconds(error))
                continue
            except TelegramError as error:
                log.warning("getUpdates failed (%s); trying again in %.0f s", error, pause)
                await asyncio.sleep(pause)
                pause = min(pause * 2, POLL_BACKOFF_MAX)
                continue
            pause = 1.0
            for update in batch:
                if not await self._handle(update):
                    await asyncio.sleep(min(2.0 ** self._failures.get(update.update_id, 1), POLL_BACKOFF_MAX))
                    break
                self.offset = update.update_id + 1

    async def _handle(self, update: Update) -> bool:
        try:
            await self.updates.process(update)
        except Exception:
            failures = self._failures[update.update_id] = self._failures.get(update.update_id, 0) + 1
            if failures < POLL_MAX_FAILURES:
                log.exception("Telegram update %s failed (try %d); fetching it again", update.update_id, failures)
                return False
            log.exception("Telegram update %s failed %d times; skipping it", update.update_id, failures)
        self._failures.pop(update.update_id, None)
        return True

    async def _drop_webhook(self) -> None:
        """getUpdates answers 409 while a webhook is set: polling mode means no webhook."""
        try:
            await self.bot.delete_webhook()
        except TelegramError as error:
            log.warning("could not delete the Telegram webhook before polling: %s", error)


# --------------------------------------------------------------------------- the adapter


def telegram_adapter(settings: Settings, service: IntakeService, staff: StaffService, *,
                     bot: ExtBot[int] | None = None) -> ChannelAdapter:
    bot = bot or make_bot(settings)
    updates = TelegramUpdates(bot, service, staff)
    sender = TelegramSender(bot)
    secret = (settings.telegram_webhook_secret or "").encode("utf-8")
    tasks: list[asyncio.Task[Any]] = []
    menus = command_menus(service.renderer)

    async def webhook(request: Request) -> Response:
        given = request.headers.get(SECRET_HEADER, "").encode("utf-8", "surrogateescape")
        if not secret or not hmac.compare_digest(given, secret):
            return Response(status_code=403)
        if int(request.headers.get("content-length") or 0) > MAX_UPDATE_BYTES:
            return Response(status_code=413)
        body = await request.body()
        try:
            data = json.loads(body)
            update = Update.de_json(data, bot) if isinstance(data, dict) else None
        except (ValueError, TypeError, KeyError):
            update = None
        if update is None:
            return Response(status_code=400)
        try:
            await updates.process(update)
        except Exception:
            log.exception("Telegram update %s failed; Telegram will send it again", update.update_id)
            return Response(status_code=500)
        return Response(status_code=200)

    async def start() -> None:
        try:
            await bot.initialize()  # getMe: checks the token; Kesu still starts if Telegram is unreachable
        except TelegramError as error:
            log.error("Telegram bot could not be initialised: %s", error)
        # In the background: a slow Telegram must not hold up start-up for a convenience.
        tasks.append(asyncio.create_task(set_command_menu(bot, menus), name="telegram-menu"))
        if settings.telegram_mode == "polling":
            tasks.append(asyncio.create_task(Poller(bot, updates).run(), name="telegram-polling"))

    async def stop() -> None:
        while tasks:
            task = tasks.pop()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await bot.shutdown()

    routes = [Route(WEBHOOK_PATH, webhook, methods=["POST"])] if settings.telegram_mode == "webhook" else []
    return ChannelAdapter(CHANNEL, routes=routes, sender=sender, start=start, stop=stop)


# --------------------------------------------------------------------------- `kesu telegram …`


def webhook_url(settings: Settings) -> str:
    if not settings.public_url:
        raise ValueError("KESU_PUBLIC_URL is not set")
    return settings.public_url.rstrip("/") + WEBHOOK_PATH


async def set_webhook(settings: Settings, renderer: Renderer, *,
                      drop_pending_updates: bool = False) -> tuple[str, bool]:
    """Point Telegram at ``kesu serve`` and register the command menu; returns the URL registered and
    whether the menu was (a refused menu leaves the webhook in place)."""
    if not settings.telegram_webhook_secret:
        raise ValueError("KESU_TELEGRAM_WEBHOOK_SECRET is not set")
    url = webhook_url(settings)
    async with make_bot(settings) as bot:
        await bot.set_webhook(url=url, secret_token=settings.telegram_webhook_secret,
                              allowed_updates=list(ALLOWED_UPDATES), drop_pending_updates=drop_pending_updates)
        return url, await set_command_menu(bot, command_menus(renderer))


async def delete_webhook(settings: Settings, *, drop_pending_updates: bool = False) -> None:
    async with make_bot(settings) as bot:
        await bot.delete_webhook(drop_pending_updates=drop_pending_updates)
