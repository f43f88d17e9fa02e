"""Telegram: customers in private chats, staff in notification groups (python-telegram-bot 22).

Updates arrive by webhook (``POST /telegram/webhook``, authenticated by the secret-token header
Telegram sends) or, for deployments without a public URL, by long polling inside ``kesu serve``
(``KESU_TELEGRAM_MODE=polling``). Either way each update goes through ``TelegramUpdates.process``:

- a private chat is a customer: text, photos, documents, voice and button presses become one
  ``InboundMessage`` for the shared intake service, with ``push_to`` set, so the replies are
  written to the outbox in the turn's transaction and delivered by the dispatcher through
  ``TelegramSender`` (never lost when Telegram is slow or says 429);
- a group is staff: the 认领 / 查看详情 buttons on new-case notifications and the ``/case`` command.
  Whether a chat may act on a case is ``StaffService``'s decision, so a customer's private chat
  never reaches a staff action; other group messages are ignored, never taken as a complaint.

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
from datetime import timedelta
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from telegram import (
    CallbackQuery,
    Chat,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    MaybeInaccessibleMessage,
    Message,
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
from bot.dispatch import RetryLater, Throttled, Undeliverable
from bot.notify import CLAIM, VIEW, mask_mobiles, staff_action
from bot.outbound import Button, OutboundMessage
from bot.server import ChannelAdapter
from bot.service import Attachment, InboundMessage, IntakeService
from bot.staff import StaffMember, StaffService
from bot.templating import Renderer
from storage.case_numbers import find_case_number
from storage.repository import CaseRecord

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

_CASE_COMMAND = re.compile(r"^/case(?:@\w+)?(?:\s+(?P<arg>.*))?$", re.DOTALL | re.IGNORECASE)


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


# --------------------------------------------------------------------------- the outbox sender


class TelegramSender:
    """Delivers outbox items: ``send_message`` (split above 4096 characters, buttons on the last
    piece), or ``edit_message_text`` when the item carries ``extra["edit_of"]``.

    Failures are reported in the dispatcher's terms: 429 still there after the limiter's own
    retries, network errors, timeouts and server errors → ``RetryLater``; a blocked bot, an unknown
    chat or a request Telegram rejects → ``Undeliverable``.
    """

    def __init__(self, bot: ExtBot[int], *, group_per_minute: int = GROUP_PER_MINUTE) -> None:
        self.bot = bot
        self.group_per_minute = group_per_minute
        self._group_windows: dict[str, deque[float]] = {}  # send times per group, last minute
        # Replies of one turn are taken together and sent concurrently: one lock per chat keeps
        # them in the order they were queued.
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
            sent = await self.bot.send_message(chat_id, piece, reply_markup=markup if last else None)
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
        command = _CASE_COMMAND.match(message.text or "")
        if command is None or not self.staff.is_staff_chat(chat_id):
            return  # staff chatting, members joining, unrelated groups: never a complaint
        number = find_case_number(command.group("arg") or "")
        if number is None:
            text = self.renderer.render("staff/case_usage", {})
        else:
            text, _ = await self._brief_or_refusal(chat_id, number)
        await self._quietly(self.bot.send_message(
            chat_id, text, reply_parameters=ReplyParameters(message.message_id, allow_sending_without_reply=True)))

    # ------------------------------------------------------------------ buttons

    async def _callback(self, query: CallbackQuery) -> None:
        message = query.message
        action = staff_action(query.data or "")
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
        if message is None:
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
        assert action == CLAIM
        user = query.from_user
        member = StaffMember(f"telegram:{user.id}", user.full_name)
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
        view = InlineKeyboardMarkup([[InlineKeyboardButton(self.renderer.button_label(VIEW),
                                                           callback_data=f"{VIEW}:{case.number}")]])
        await self._quietly(self.bot.edit_message_text(
            _with_footer(original, claimed), chat_id=chat_id, message_id=message.message_id,
            reply_markup=view))

    # ------------------------------------------------------------------ staff texts

    def _brief(self, case: CaseRecord) -> str:
        mall = self.service.catalog.mall(case.fields.get("mall") or "")
        return mask_mobiles(self.renderer.render("staff/case_brief",
                                                 {"case": case, "mall_name": mall.name if mall else None}))

    async def _brief_or_refusal(self, chat_id: int, number: str) -> tuple[str, bool]:
        """(the case brief, True) for a group serving the case; otherwise (why not, False)."""
        if not self.staff.is_staff_chat(chat_id):
            return self.renderer.render("staff/not_allowed", {}), False
        case = await asyncio.to_thread(self.staff.find, number)
        if case is None:
            return self.renderer.render("case_not_found", {"number": number}), False
        if not self.staff.telegram_chat_serves(chat_id, case):
            return self.renderer.render("staff/not_allowed", {}), False
        return self._brief(case), True

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
    polling: list[asyncio.Task[None]] = []

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
        if settings.telegram_mode == "polling":
            polling.append(asyncio.create_task(Poller(bot, updates).run(), name="telegram-polling"))

    async def stop() -> None:
        while polling:
            task = polling.pop()
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


async def set_webhook(settings: Settings, *, drop_pending_updates: bool = False) -> str:
    """Point Telegram at ``kesu serve``; returns the URL registered."""
    if not settings.telegram_webhook_secret:
        raise ValueError("KESU_TELEGRAM_WEBHOOK_SECRET is not set")
    url = webhook_url(settings)
    async with make_bot(settings) as bot:
        await bot.set_webhook(url=url, secret_token=settings.telegram_webhook_secret,
                              allowed_updates=list(ALLOWED_UPDATES), drop_pending_updates=drop_pending_updates)
    return url


async def delete_webhook(settings: Settings, *, drop_pending_updates: bool = False) -> None:
    async with make_bot(settings) as bot:
        await bot.delete_webhook(drop_pending_updates=drop_pending_updates)
