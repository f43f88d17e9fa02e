"""Telegram end to end, offline: the real `kesu serve` app and python-telegram-bot against a fake Bot API.

Updates go in through POST /telegram/webhook (or long polling); what Kesu did is read from the
fake's record of Bot API calls and from the database.
"""

from __future__ import annotations

import asyncio
import faulthandler
import itertools
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fakes.telegram_api import BOT_USER, Call, FakeBotAPI
from starlette.testclient import TestClient
from typer.testing import CliRunner

from bot.app import ConfigurationError, build_server
from bot.config import Settings
from bot.dispatch import RetryLater, Throttled, Undeliverable
from bot.outbound import Button, OutboundMessage
from handlers.telegram import TelegramSender, keyboard, make_bot, split_text
from storage.repository import CaseRecord, Store

TOKEN = "123:abc"
SECRET = "s3cret"
PUBLIC_URL = "https://kesu.example"
NOW = datetime(2026, 11, 22, 6, 30, tzinfo=UTC)  # 14:30 in Shanghai
TEST_SECONDS = 90  # no test may take longer: a hang dumps the stacks and ends the run

# PTB warns about its own RetryAfter.retry_after type change whenever it builds a 429 error.
pytestmark = pytest.mark.filterwarnings("ignore::telegram.warnings.PTBDeprecationWarning")

CUSTOMER = {"id": 5550001, "is_bot": False, "first_name": "丽", "last_name": "王", "language_code": "zh-hans"}
OTHER_CUSTOMER = {"id": 5550002, "is_bot": False, "first_name": "强", "last_name": "张"}
MANAGER = {"id": 777, "is_bot": False, "first_name": "李经理"}
COLLEAGUE = {"id": 888, "is_bot": False, "first_name": "王主管"}
ZHENBEI_GROUP = -1001000000001  # sh-zhenbei's staff group in the demo catalog
UNRELATED_GROUP = -1009999999999
FALLBACK_GROUP = -1002000000000
PHONE = "13812345678"
MASKED = "138****5678"
OPENING = f"我叫王丽，电话{PHONE}，去年12月8号在真北店顾家买的沙发，12800，扶手开裂了，要求换货"
FOLLOW_UPS = ("11月20号送的", "上海市普陀区真北路1号", "没有")
CASE_NUMBER = re.compile(r"KS\d{10,13}")


@pytest.fixture(autouse=True)
def time_bound() -> Iterator[None]:
    faulthandler.dump_traceback_later(TEST_SECONDS, exit=True)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the settings a test passes apply, whatever KESU_* the developer has exported."""
    import os

    for key in list(os.environ):
        if key.startswith("KESU_"):
            monkeypatch.delenv(key)


@pytest.fixture
def fake() -> Iterator[FakeBotAPI]:
    with FakeBotAPI(TOKEN).running() as api:
        yield api


def moving_clock() -> Callable[[], datetime]:
    """Starts at NOW (so "去年12月8号" is 2025-12-08) and runs at real speed (so backoffs fall due)."""
    start = time.monotonic()
    return lambda: NOW + timedelta(seconds=time.monotonic() - start)


ROUTED_CATALOG = Path(__file__).parent / "data" / "routed_catalog.yaml"  # the demo malls, 真北 with staff groups


def make_settings(tmp_path: Path, fake: FakeBotAPI, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": f"sqlite:///{tmp_path / 'kesu.db'}",
        "telegram_token": TOKEN,
        "telegram_webhook_secret": SECRET,
        "public_url": PUBLIC_URL,
        "telegram_api_url": fake.base_url,
        "fallback_telegram_chat": FALLBACK_GROUP,
        "wecom_api_url": "http://127.0.0.1:9/cgi-bin/webhook/send",  # nothing listens: never the internet
        "catalog": ROUTED_CATALOG,
        **overrides,
    }
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


# --------------------------------------------------------------------------- driving kesu serve


@dataclass
class Kesu:
    client: TestClient
    fake: FakeBotAPI
    store: Store
    _updates: Iterator[int] = field(default_factory=lambda: itertools.count(10_001))
    _messages: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    # ------------------------------------------------------------------ updates in

    def post(self, update: dict[str, Any], secret: str | None = SECRET) -> httpx.Response:
        headers = {"X-Telegram-Bot-Api-Secret-Token": secret} if secret is not None else {}
        return self.client.post("/telegram/webhook", json=update, headers=headers)

    def deliver(self, update: dict[str, Any]) -> dict[str, Any]:
        response = self.post(update)
        assert response.status_code == 200, response.text
        return update

    def message(self, content: dict[str, Any], *, user: dict[str, Any] = CUSTOMER,
                chat: dict[str, Any] | None = None) -> dict[str, Any]:
        chat = chat or {"id": user["id"], "type": "private", "first_name": user["first_name"]}
        return {"update_id": next(self._updates), "message": {
            "message_id": next(self._messages), "date": int(time.time()), "chat": chat, "from": user, **content}}

    def say(self, text: str, *, user: dict[str, Any] = CUSTOMER) -> dict[str, Any]:
        return self.deliver(self.message({"text": text}, user=user))

    def press(self, data: str, *, user: dict[str, Any], chat: dict[str, Any], message_id: int,
              text: str = "") -> dict[str, Any]:
        update_id = next(self._updates)
        return self.deliver({"update_id": update_id, "callback_query": {
            "id": f"cbq-{update_id}", "from": user, "chat_instance": "ci-1", "data": data,
            "message": {"message_id": message_id, "date": int(time.time()), "chat": chat, "from": BOT_USER,
                        "text": text}}})

    # ------------------------------------------------------------------ what went out

    def settle(self, timeout: float = 15.0) -> None:
        """Wait until every queued Telegram message is sent (or failed for good)."""
        deadline = time.monotonic() + timeout
        while True:
            open_items = [i for i in self.store.outbox_items(limit=1000)
                          if i.channel == "telegram" and i.state in ("pending", "sending", "attempting")]
            if not open_items:
                return
            assert time.monotonic() < deadline, f"outbox not delivered: {open_items}"
            time.sleep(0.02)

    def to_customer(self, user: dict[str, Any] = CUSTOMER) -> list[Call]:
        return self.fake.of("sendMessage", chat_id=user["id"])

    def turn(self, text: str, *, user: dict[str, Any] = CUSTOMER) -> list[Call]:
        """Say something and return the messages Kesu pushed back for it."""
        before = len(self.to_customer(user))
        self.say(text, user=user)
        self.settle()
        replies = self.to_customer(user)[before:]
        assert replies, f"no reply to {text!r}"
        return replies

    def intake_until_summary(self, user: dict[str, Any] = CUSTOMER) -> Call:
        self.turn(OPENING, user=user)
        for text in FOLLOW_UPS:
            replies = self.turn(text, user=user)
        summary = next(c for c in replies if c.buttons)
        return summary

    def confirm(self, summary: Call, user: dict[str, Any] = CUSTOMER) -> CaseRecord:
        before = len(self.to_customer(user))
        self.press("确认", user=user, chat=private_chat(user), message_id=summary.result["message_id"],
                   text=summary.text)
        self.settle()
        opened = "\n".join(c.text for c in self.to_customer(user)[before:])
        found = CASE_NUMBER.search(opened)
        assert found, opened
        case = self.store.get_case(found.group())
        assert case is not None
        return case

    def open_case(self, user: dict[str, Any] = CUSTOMER) -> tuple[CaseRecord, Call]:
        """A complete intake; returns the case and its notification in the Zhenbei staff group."""
        case = self.confirm(self.intake_until_summary(user), user)
        notice = self.fake.wait_for("sendMessage", chat_id=ZHENBEI_GROUP,
                                    where=lambda c: case.number in c.text)[-1]
        return case, notice


def private_chat(user: dict[str, Any]) -> dict[str, Any]:
    return {"id": user["id"], "type": "private", "first_name": user["first_name"]}


def group_chat(chat_id: int) -> dict[str, Any]:
    return {"id": chat_id, "type": "supergroup", "title": "真北商场客诉群"}


def start(tmp_path: Path, fake: FakeBotAPI, catalog: Path = ROUTED_CATALOG, *,
          clock: Callable[[], datetime] | None = None, **overrides: Any) -> Iterator[Kesu]:
    """`kesu serve` on Telegram; `overrides` add settings (another channel, the database), `clock` replaces
    the moving one."""
    settings = make_settings(tmp_path, fake, catalog=catalog, **overrides)
    app = build_server(settings, clock=clock or moving_clock())
    store = Store.from_url(settings.database_url, migrate=False)
    try:
        with TestClient(app) as client:
            yield Kesu(client, fake, store)
    finally:
        store.close()


@pytest.fixture
def kesu(tmp_path: Path, fake: FakeBotAPI) -> Iterator[Kesu]:
    yield from start(tmp_path, fake)


def answers(fake: FakeBotAPI, update: dict[str, Any]) -> list[Call]:
    query_id = update["callback_query"]["id"]
    return [c for c in fake.of("answerCallbackQuery") if c.params["callback_query_id"] == query_id]


# --------------------------------------------------------------------------- customers


def test_opening_in_a_private_chat_is_answered_in_that_chat(kesu: Kesu) -> None:
    replies = kesu.turn(OPENING)
    text = "\n".join(c.text for c in replies)
    assert "王丽" in text and "顾家家居" in text  # the facts it noted
    assert "送货" in text  # and the next question: the delivery date
    assert {c.chat_id for c in replies} == {CUSTOMER["id"]}
    assert kesu.fake.of("sendMessage", chat_id=ZHENBEI_GROUP) == []  # nothing for staff before a case


def test_summary_has_an_inline_keyboard_and_confirming_opens_a_case_for_the_staff_group(kesu: Kesu) -> None:
    summary = kesu.intake_until_summary()
    assert "确认提交" in summary.labels and "修改信息" in summary.labels
    assert {"text": "确认提交", "callback_data": "确认"} in [b for row in summary.buttons for b in row]

    case = kesu.confirm(summary)
    assert case.status == "new" and case.channel == "telegram" and case.customer_id == str(CUSTOMER["id"])
    assert case.fields["mall"] == "sh-zhenbei" and case.fields["phone"] == PHONE
    confirmation = next(c.text for c in kesu.to_customer() if case.number in c.text)
    assert "24小时内" in confirmation

    notice = kesu.fake.wait_for("sendMessage", chat_id=ZHENBEI_GROUP)[-1]
    assert case.number in notice.text
    assert MASKED in notice.text and PHONE not in notice.text
    assert notice.buttons == [[{"text": "认领", "callback_data": f"claim:{case.number}"},
                               {"text": "查看详情", "callback_data": f"view:{case.number}"}]]
    # the pressed summary lost its buttons, and the press was acknowledged
    assert kesu.fake.of("answerCallbackQuery")
    edited = kesu.fake.of("editMessageReplyMarkup", chat_id=CUSTOMER["id"])
    assert [c.params["message_id"] for c in edited] == [summary.result["message_id"]]


def test_photo_and_document_are_kept_as_evidence_of_the_case(kesu: Kesu) -> None:
    photo = kesu.message({"caption": "扶手裂开的照片", "photo": [
        {"file_id": "small-id", "file_unique_id": "s", "width": 90, "height": 67, "file_size": 1000},
        {"file_id": "large-id", "file_unique_id": "l", "width": 1280, "height": 960, "file_size": 90000},
        {"file_id": "medium-id", "file_unique_id": "m", "width": 320, "height": 240, "file_size": 9000}]})
    kesu.deliver(photo)
    kesu.settle()
    assert any("已作为凭证保存" in c.text for c in kesu.to_customer())

    kesu.deliver(kesu.message({"document": {"file_id": "receipt-id", "file_unique_id": "r",
                                            "file_name": "发票.pdf", "mime_type": "application/pdf"}}))
    kesu.settle()
    case, _ = kesu.open_case()
    evidence = kesu.store.evidence_for_case(case.id)
    assert [(e.kind, e.file_ref, e.file_name, e.mime) for e in evidence] == [
        ("photo", "large-id", None, "image/jpeg"), ("document", "receipt-id", "发票.pdf", "application/pdf")]
    assert evidence[0].caption == "扶手裂开的照片"


def test_stickers_and_locations_get_a_polite_answer(kesu: Kesu) -> None:
    before = len(kesu.to_customer())
    kesu.deliver(kesu.message({"sticker": {"file_id": "st", "file_unique_id": "st", "type": "regular",
                                           "width": 512, "height": 512, "is_animated": False,
                                           "is_video": False}}))
    kesu.settle()
    assert any("没能看懂" in c.text for c in kesu.to_customer()[before:])
    before = len(kesu.to_customer())
    kesu.deliver(kesu.message({"location": {"latitude": 31.23, "longitude": 121.4}}))
    kesu.settle()
    assert any("没能看懂" in c.text for c in kesu.to_customer()[before:])


def test_voice_message_is_kept_and_acknowledged(kesu: Kesu) -> None:
    kesu.deliver(kesu.message({"voice": {"file_id": "voice-id", "file_unique_id": "v", "duration": 7,
                                         "mime_type": "audio/ogg"}}))
    kesu.settle()
    assert any("已作为凭证保存" in c.text for c in kesu.to_customer())
    case, _ = kesu.open_case()
    assert [(e.kind, e.file_ref) for e in kesu.store.evidence_for_case(case.id)] == [("voice", "voice-id")]


def test_the_same_update_sent_again_is_processed_once(kesu: Kesu) -> None:
    update = kesu.message({"text": OPENING})
    kesu.deliver(update)
    kesu.settle()
    sent = len(kesu.to_customer())
    kesu.deliver(update)  # Telegram's webhook retry
    # ... or the same message after a restart forgot the update id
    kesu.deliver({**update, "update_id": update["update_id"] + 500})
    kesu.settle()
    assert len(kesu.to_customer()) == sent
    inbound = [m for m in kesu.store.messages("telegram", str(CUSTOMER["id"])) if m.direction == "in"]
    assert [m.text for m in inbound] == [OPENING]


def test_a_button_pressed_twice_counts_once(kesu: Kesu) -> None:
    summary = kesu.intake_until_summary()
    update = kesu.press("确认", user=CUSTOMER, chat=private_chat(CUSTOMER),
                        message_id=summary.result["message_id"], text=summary.text)
    kesu.settle()
    kesu.deliver({**update, "update_id": update["update_id"] + 500})
    kesu.settle()
    assert len(kesu.store.list_cases()) == 1
    assert len(kesu.fake.of("sendMessage", chat_id=ZHENBEI_GROUP)) == 1


def test_customers_in_groups_and_staff_chatter_are_never_complaints(kesu: Kesu) -> None:
    kesu.deliver(kesu.message({"text": "这个客户我来跟进"}, user=MANAGER, chat=group_chat(ZHENBEI_GROUP)))
    kesu.deliver(kesu.message({"text": OPENING}, user=OTHER_CUSTOMER, chat=group_chat(UNRELATED_GROUP)))
    kesu.deliver(kesu.message({"new_chat_members": [BOT_USER]}, user=MANAGER, chat=group_chat(ZHENBEI_GROUP)))
    time.sleep(0.2)
    assert kesu.store.load_conversation("telegram", str(MANAGER["id"])) is None
    assert kesu.store.load_conversation("telegram", str(OTHER_CUSTOMER["id"])) is None
    assert [m for m in kesu.fake.methods() if m not in ("getMe", "setMyCommands")] == []  # start-up calls


# --------------------------------------------------------------------------- staff groups


def test_claim_in_the_staff_group_owns_the_case_and_updates_the_notification(kesu: Kesu) -> None:
    case, notice = kesu.open_case()
    message_id = notice.result["message_id"]
    press = kesu.press(f"claim:{case.number}", user=MANAGER, chat=group_chat(ZHENBEI_GROUP),
                       message_id=message_id, text=notice.text)

    claimed = kesu.store.get_case(case.number)
    assert claimed is not None
    assert (claimed.owner, claimed.owner_name, claimed.status) == ("telegram:777", "李经理", "claimed")
    edit = kesu.fake.wait_for("editMessageText", chat_id=ZHENBEI_GROUP)[-1]
    assert edit.params["message_id"] == message_id
    assert notice.text in edit.text and "已由 李经理 认领" in edit.text
    assert MASKED in edit.text and PHONE not in edit.text
    assert edit.buttons == [[{"text": "查看详情", "callback_data": f"view:{case.number}"},
                             {"text": "开始核实", "callback_data": f"verify:{case.number}"}]]
    [answer] = answers(kesu.fake, press)
    assert "李经理" in answer.params["text"]

    second = kesu.press(f"claim:{case.number}", user=COLLEAGUE, chat=group_chat(ZHENBEI_GROUP),
                        message_id=message_id, text=notice.text)
    [refusal] = answers(kesu.fake, second)
    assert "已由 李经理 认领" in refusal.params["text"] and refusal.params.get("show_alert") is True
    after = kesu.store.get_case(case.number)
    assert after is not None and after.owner_name == "李经理"
    assert len(kesu.fake.of("editMessageText")) == 1


@pytest.mark.parametrize("where", ["private chat", "unrelated group"])
def test_claim_from_outside_the_malls_staff_group_is_refused(kesu: Kesu, where: str) -> None:
    case, notice = kesu.open_case()
    chat = private_chat(CUSTOMER) if where == "private chat" else group_chat(UNRELATED_GROUP)
    user = CUSTOMER if where == "private chat" else MANAGER
    press = kesu.press(f"claim:{case.number}", user=user, chat=chat, message_id=notice.result["message_id"])
    [refusal] = answers(kesu.fake, press)
    assert "只有负责该商场的员工群成员" in refusal.params["text"] and refusal.params["show_alert"] is True
    unchanged = kesu.store.get_case(case.number)
    assert unchanged is not None and unchanged.owner is None and unchanged.status == "new"
    assert kesu.fake.of("editMessageText") == []
    # and it never became a customer message either
    texts = [m.text for m in kesu.store.messages("telegram", str(user["id"])) if m.direction == "in"]
    assert f"claim:{case.number}" not in texts


def test_typing_a_staff_payload_as_a_customer_reaches_no_staff_action(kesu: Kesu) -> None:
    case, _ = kesu.open_case()
    kesu.turn(f"claim:{case.number}", user=OTHER_CUSTOMER)
    kesu.turn(f"/case {case.number}", user=OTHER_CUSTOMER)
    stored = kesu.store.get_case(case.number)
    assert stored is not None and stored.owner is None
    assert all(PHONE not in c.text and MASKED not in c.text for c in kesu.to_customer(OTHER_CUSTOMER))


def test_view_button_and_case_command_show_the_brief_in_the_group_only(kesu: Kesu) -> None:
    case, notice = kesu.open_case()
    press = kesu.press(f"view:{case.number}", user=COLLEAGUE, chat=group_chat(ZHENBEI_GROUP),
                       message_id=notice.result["message_id"], text=notice.text)
    brief = kesu.fake.wait_for("sendMessage", chat_id=ZHENBEI_GROUP, where=lambda c: "问题：" in c.text)[-1]
    assert brief.text.startswith(case.number)
    assert MASKED in brief.text and PHONE not in brief.text and "扶手开裂" in brief.text
    assert brief.params["reply_parameters"]["message_id"] == notice.result["message_id"]
    assert answers(kesu.fake, press)

    kesu.deliver(kesu.message({"text": f"/case@kesu_test_bot {case.number.lower()}"}, user=MANAGER,
                              chat=group_chat(ZHENBEI_GROUP)))
    kesu.fake.wait_for("sendMessage", chat_id=ZHENBEI_GROUP, count=2, where=lambda c: "问题：" in c.text)

    elsewhere = kesu.press(f"view:{case.number}", user=CUSTOMER, chat=private_chat(CUSTOMER),
                           message_id=notice.result["message_id"])
    [refusal] = answers(kesu.fake, elsewhere)
    assert refusal.params["show_alert"] is True and case.number not in refusal.params["text"]
    kesu.deliver(kesu.message({"text": f"/case {case.number}"}, user=MANAGER, chat=group_chat(UNRELATED_GROUP)))
    [refused] = kesu.fake.wait_for("sendMessage", chat_id=UNRELATED_GROUP)
    assert refused.text == "只有负责该商场的员工群成员可以操作这个案件。"
    assert not any(case.number in c.text for c in kesu.to_customer() if "问题：" in c.text)


def test_case_command_for_an_unknown_number_or_without_one(kesu: Kesu) -> None:
    kesu.deliver(kesu.message({"text": "/case KS2611220027"}, user=MANAGER, chat=group_chat(ZHENBEI_GROUP)))
    kesu.deliver(kesu.message({"text": "/case"}, user=MANAGER, chat=group_chat(ZHENBEI_GROUP)))
    replies = kesu.fake.wait_for("sendMessage", chat_id=ZHENBEI_GROUP, count=2)
    assert "KS2611220027" in replies[0].text
    assert "/case KS" in replies[1].text


# --------------------------------------------------------------------------- webhook authentication


@pytest.mark.parametrize("secret", [None, "wrong", "", "s3cret-but-longer"])
def test_webhook_without_the_right_secret_is_refused_and_touches_nothing(kesu: Kesu, secret: str | None) -> None:
    response = kesu.post(kesu.message({"text": OPENING}), secret=secret)
    assert response.status_code == 403
    time.sleep(0.2)
    assert [m for m in kesu.fake.methods() if m not in ("getMe", "setMyCommands")] == []  # start-up calls
    assert kesu.store.messages("telegram", str(CUSTOMER["id"])) == []
    assert set(kesu.store.outbox_counts().values()) == {0}


def test_webhook_rejects_what_is_not_an_update(kesu: Kesu) -> None:
    headers = {"X-Telegram-Bot-Api-Secret-Token": SECRET}
    assert kesu.client.post("/telegram/webhook", content=b"not json", headers=headers).status_code == 400
    assert kesu.client.post("/telegram/webhook", json=[1, 2], headers=headers).status_code == 400
    assert kesu.client.get("/telegram/webhook").status_code == 405


# --------------------------------------------------------------------------- rate limits and failures


def test_a_429_is_retried_after_retry_after_and_delivered(kesu: Kesu) -> None:
    kesu.fake.fail("sendMessage", times=1, retry_after=1)
    started = time.monotonic()
    replies = kesu.turn(OPENING)
    assert len(kesu.fake.rejected) == 1
    assert replies[0].at - kesu.fake.rejected[0].at >= 1.0
    assert time.monotonic() - started < 10
    assert {i.state for i in kesu.store.outbox_items() if i.channel == "telegram"} == {"sent"}


def test_a_429_outlasting_the_limiters_retries_goes_back_to_the_outbox_and_is_still_delivered(kesu: Kesu) -> None:
    kesu.fake.fail("sendMessage", times=3, retry_after=1)  # the limiter tries 3 times, then the outbox retries
    replies = kesu.turn(OPENING)
    assert len(kesu.fake.rejected) == 3 and replies
    items = [i for i in kesu.store.outbox_items() if i.channel == "telegram"]
    assert {i.state for i in items} == {"sent"}
    assert max(i.attempts for i in items) == 2 and any("429" in (i.last_error or "") for i in items)


def test_a_customer_who_blocked_the_bot_fails_the_item_for_good(kesu: Kesu) -> None:
    kesu.fake.fail("sendMessage", times=10, status=403, description="Forbidden: bot was blocked by the user")
    kesu.say(OPENING)
    kesu.settle()
    items = [i for i in kesu.store.outbox_items() if i.channel == "telegram"]
    assert items and {i.state for i in items} == {"failed"}
    assert all(i.attempts == 1 and "blocked" in (i.last_error or "") for i in items)


def _sender_call(fake: FakeBotAPI, tmp_path: Path, target: str, message: OutboundMessage,
                 **sender_args: Any) -> str | None:
    async def go() -> str | None:
        async with make_bot(make_settings(tmp_path, fake), max_retries=0) as bot:
            return await TelegramSender(bot, **sender_args).send(target, message)
    return asyncio.run(asyncio.wait_for(go(), 20))


@pytest.mark.parametrize(("status", "description", "expected"), [
    (429, None, RetryLater),
    (400, "Bad Request: chat not found", Undeliverable),
    (403, "Forbidden: bot was kicked from the supergroup chat", Undeliverable),
    (502, "Bad Gateway", RetryLater),
    (500, "Internal Server Error", RetryLater),
])
def test_sender_maps_bot_api_errors_to_the_dispatchers_terms(fake: FakeBotAPI, tmp_path: Path, status: int,
                                                              description: str | None, expected: type) -> None:
    fake.fail("sendMessage", status=status, description=description, retry_after=7 if status == 429 else None)
    with pytest.raises(expected) as raised:
        _sender_call(fake, tmp_path, "5550001", OutboundMessage("您好"))
    if status == 429:
        assert isinstance(raised.value, RetryLater) and raised.value.after == 7


def test_sender_splits_long_messages_and_puts_the_buttons_on_the_last_piece(fake: FakeBotAPI, tmp_path: Path) -> None:
    text = "\n".join(f"第{i}行：沙发扶手开裂，坐垫塌陷，要求换货。" * 3 for i in range(200))
    assert len(text) > 4096
    external = _sender_call(fake, tmp_path, "5550001",
                            OutboundMessage(text, ((Button("确认提交", "确认"), Button("修改信息", "修改")),)))
    sent = fake.of("sendMessage")
    assert len(sent) == len(split_text(text)) >= 2
    assert all(len(c.text) <= 4096 for c in sent)
    assert "".join(c.text for c in sent).replace("\n", "") == text.replace("\n", "")
    assert [bool(c.buttons) for c in sent] == [False] * (len(sent) - 1) + [True]
    assert external == str(sent[-1].result["message_id"])


def test_sender_edits_when_asked_to(fake: FakeBotAPI, tmp_path: Path) -> None:
    external = _sender_call(fake, tmp_path, str(ZHENBEI_GROUP), OutboundMessage("已处理", extra={"edit_of": "4242"}))
    [edit] = fake.of("editMessageText")
    assert (edit.chat_id, edit.params["message_id"], edit.text, external) == (ZHENBEI_GROUP, 4242, "已处理", "4242")


def test_sender_keeps_a_full_group_waiting_without_blocking_others(fake: FakeBotAPI, tmp_path: Path) -> None:
    async def go() -> None:
        async with make_bot(make_settings(tmp_path, fake), max_retries=0) as bot:
            sender = TelegramSender(bot, group_per_minute=2)
            await sender.send(str(ZHENBEI_GROUP), OutboundMessage("一"))
            await sender.send(str(ZHENBEI_GROUP), OutboundMessage("二"))
            with pytest.raises(Throttled) as throttled:
                await sender.send(str(ZHENBEI_GROUP), OutboundMessage("三"))
            assert 0 < throttled.value.after <= 60
            await sender.send(str(FALLBACK_GROUP), OutboundMessage("别的群"))
            await sender.send(str(CUSTOMER["id"]), OutboundMessage("顾客"))
    asyncio.run(asyncio.wait_for(go(), 20))
    assert [c.text for c in fake.of("sendMessage")] == ["一", "二", "别的群", "顾客"]


def test_keyboard_leaves_out_payloads_over_64_bytes() -> None:
    markup = keyboard(((Button("确认提交", "确认"),), (Button("太长", "红星美凯龙" * 5),)))
    assert markup is not None
    assert [[b.callback_data for b in row] for row in markup.inline_keyboard] == [["确认"]]
    assert keyboard(()) is None


def test_split_text_counts_emoji_as_two_units() -> None:
    pieces = split_text("😀" * 3000)
    assert [len(p) for p in pieces] == [2048, 952]
    assert split_text("短消息") == ["短消息"]


# --------------------------------------------------------------------------- long polling, CLI, settings


def test_polling_mode_handles_updates_without_a_webhook(tmp_path: Path, fake: FakeBotAPI) -> None:
    settings = make_settings(tmp_path, fake, telegram_mode="polling", telegram_webhook_secret=None, public_url=None)
    assert settings.channel_problems() == []
    app = build_server(settings, clock=moving_clock())
    fake.push_update({"update_id": 500, "message": {
        "message_id": 1, "date": int(time.time()), "chat": private_chat(CUSTOMER), "from": CUSTOMER,
        "text": OPENING}})
    with TestClient(app) as client:
        fake.wait_for("sendMessage", chat_id=CUSTOMER["id"], where=lambda c: "王丽" in c.text)
        fake.wait_for("getUpdates", where=lambda c: c.params.get("offset") == 501)
        assert client.post("/telegram/webhook", json={}).status_code in (404, 405)
        assert "deleteWebhook" in fake.methods()
    polls = len(fake.of("getUpdates"))
    time.sleep(0.5)
    assert len(fake.of("getUpdates")) == polls  # stopped with the server
    store = Store.from_url(settings.database_url, migrate=False)
    try:
        assert [m.text for m in store.messages("telegram", str(CUSTOMER["id"])) if m.direction == "in"] == [OPENING]
    finally:
        store.close()


def _cli_env(fake: FakeBotAPI, **extra: str) -> dict[str, str]:
    return {"KESU_TELEGRAM_TOKEN": TOKEN, "KESU_TELEGRAM_API_URL": fake.base_url, "KESU_PUBLIC_URL": PUBLIC_URL,
            "KESU_TELEGRAM_WEBHOOK_SECRET": SECRET, **extra}


def test_cli_sets_and_deletes_the_webhook(fake: FakeBotAPI) -> None:
    from bot.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["telegram", "set-webhook"], env=_cli_env(fake))
    assert result.exit_code == 0, result.output
    assert f"{PUBLIC_URL}/telegram/webhook" in result.output
    [call] = fake.of("setWebhook")
    assert call.params["url"] == f"{PUBLIC_URL}/telegram/webhook"
    assert call.params["secret_token"] == SECRET
    assert call.params["allowed_updates"] == ["message", "callback_query"]

    result = runner.invoke(app, ["telegram", "delete-webhook"], env=_cli_env(fake))
    assert result.exit_code == 0, result.output
    assert len(fake.of("deleteWebhook")) == 1


def test_cli_set_webhook_names_the_missing_setting(fake: FakeBotAPI) -> None:
    from bot.cli import app

    result = CliRunner().invoke(app, ["telegram", "set-webhook"], env=_cli_env(fake, KESU_PUBLIC_URL=""))
    assert result.exit_code == 2
    assert "KESU_PUBLIC_URL" in result.output
    assert fake.of("setWebhook") == []


def test_cli_reports_telegrams_refusal(fake: FakeBotAPI) -> None:
    from bot.cli import app

    fake.fail("setWebhook", status=400, description="Bad Request: bad webhook: HTTPS url must be provided")
    result = CliRunner().invoke(app, ["telegram", "set-webhook"], env=_cli_env(fake))
    assert result.exit_code == 1
    assert "https url must be provided" in result.output.lower()


@pytest.mark.parametrize(("overrides", "missing"), [
    ({"telegram_webhook_secret": None}, "KESU_TELEGRAM_WEBHOOK_SECRET"),
    ({"public_url": None}, "KESU_PUBLIC_URL"),
    ({"telegram_token": None}, "KESU_TELEGRAM_TOKEN"),
])
def test_half_configured_telegram_is_refused_by_name(tmp_path: Path, fake: FakeBotAPI, overrides: dict[str, Any],
                                                     missing: str) -> None:
    with pytest.raises(ConfigurationError, match=missing):
        build_server(make_settings(tmp_path, fake, **overrides))


def test_claim_footer_survives_a_notification_at_telegrams_limit() -> None:
    from handlers.telegram import _with_footer

    text = _with_footer("投" * 5000, "✅ KS2611220019 已由 李经理 认领")
    assert len(text) <= 4096 and text.endswith("已由 李经理 认领")
    assert _with_footer("短", "尾") == "短\n\n尾"
