"""Customers on a WeChat Official Account, end to end and offline.

The real ``kesu serve`` app (``bot.app.build_server``) receives XML signed exactly as WeChat signs
it (plaintext and AES safe mode, built here with wechatpy's ``WeChatCrypto``), and the outbox is
delivered by wechatpy's real client to a local fake of the WeChat API (``tests/fake_wechat.py``).
Nothing leaves 127.0.0.1 (pytest-socket).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import xmltodict
from fake_wechat import FakeWeChatAPI
from starlette.applications import Starlette
from starlette.testclient import TestClient
from wechatpy.crypto import WeChatCrypto

import handlers.wechat as wechat
from bot.app import build_server, build_service
from bot.config import Settings
from bot.dispatch import Dispatcher
from bot.outbound import Button, OutboundMessage
from bot.service import InboundMessage, IntakeService
from bot.templating import Renderer
from storage.case_numbers import find_case_number
from storage.repository import OutboxItem, Store

SHANGHAI = ZoneInfo("Asia/Shanghai")
NOW = datetime(2026, 11, 22, 14, 30, tzinfo=SHANGHAI)
TOKEN = "kesuWeChatToken2026"
APP_ID = "wx1234567890abcdef"
SECRET = "0123456789abcdef0123456789abcdef"
AES_KEY = base64.b64encode(bytes(range(32))).decode().rstrip("=")  # EncodingAESKey: 43 characters
TEMPLATE_ID = "ngqIpbwh8bUfcSsECmogfXcV14J0tQlEpBO27izEYtY"
ACCOUNT = "gh_3f2a5d8c1b7e"  # the Official Account's original id (ToUserName)
OPENID = "o6_bmjrPTlm6_2sgVt7hMZOPfL2M"
OTHER_OPENID = "o6_bmjrPTlm6_2sgVt7hMZOPfXYZ"

OPENING = "我叫王丽，电话13812345678，去年12月8号在真北店顾家买的沙发，12800，扶手开裂了，要求换货"
FOLLOW_UPS = ("11月20号送的", "上海市普陀区真北路1号", "没有")


# --------------------------------------------------------------------------- WeChat's side


def sign(*parts: str) -> str:
    return hashlib.sha1("".join(sorted(parts)).encode()).hexdigest()


class WeChatServer:
    """Builds requests the way WeChat's servers do, and reads the answers the way they do."""

    def __init__(self, client: TestClient) -> None:
        self.client = client
        self.crypto = WeChatCrypto(TOKEN, AES_KEY, APP_ID)
        self._msg_id = 24_000_000_000_000_000
        self._nonce = 1_000_000

    def next_msg_id(self) -> str:
        self._msg_id += 1
        return str(self._msg_id)

    def query(self, *, token: str = TOKEN) -> dict[str, str]:
        self._nonce += 1
        timestamp, nonce = str(int(time.time())), str(self._nonce)
        return {"signature": sign(token, timestamp, nonce), "timestamp": timestamp, "nonce": nonce}

    def post(self, xml: str, *, encrypted: bool = False, query: dict[str, str] | None = None) -> Any:
        params = {**(query or self.query()), "openid": OPENID}
        body = xml
        if encrypted:
            envelope = xmltodict.parse(self.crypto.encrypt_message(xml, params["nonce"], params["timestamp"]))["xml"]
            params |= {"encrypt_type": "aes", "msg_signature": envelope["MsgSignature"]}
            body = (f"<xml><ToUserName><![CDATA[{ACCOUNT}]]></ToUserName>"
                    f"<Encrypt><![CDATA[{envelope['Encrypt']}]]></Encrypt></xml>")
        return self.client.post("/wechat", params=params, content=body.encode(),
                                headers={"Content-Type": "text/xml"})

    def reply(self, response: Any, *, encrypted: bool = False) -> dict[str, str]:
        """The passive reply as WeChat reads it (decrypted and its signature checked in safe mode)."""
        assert response.status_code == 200, response.text
        xml = response.text
        if encrypted:
            envelope = xmltodict.parse(xml)["xml"]
            assert set(envelope) == {"Encrypt", "MsgSignature", "TimeStamp", "Nonce"}
            xml = self.crypto.decrypt_message(xml, envelope["MsgSignature"], envelope["TimeStamp"], envelope["Nonce"])
        parsed: dict[str, str] = xmltodict.parse(xml)["xml"]
        return parsed

    def say(self, text: str, *, openid: str = OPENID, msg_id: str | None = None, encrypted: bool = False) -> str:
        response = self.post(text_xml(text, msg_id or self.next_msg_id(), openid=openid), encrypted=encrypted)
        reply = self.reply(response, encrypted=encrypted)
        assert reply["ToUserName"] == openid and reply["FromUserName"] == ACCOUNT
        assert reply["MsgType"] == "text"
        return reply["Content"]


def _xml(openid: str, msg_type: str, fields: str) -> str:
    return (f"<xml><ToUserName><![CDATA[{ACCOUNT}]]></ToUserName><FromUserName><![CDATA[{openid}]]></FromUserName>"
            f"<CreateTime>{int(time.time())}</CreateTime><MsgType><![CDATA[{msg_type}]]></MsgType>{fields}</xml>")


def text_xml(content: str, msg_id: str, *, openid: str = OPENID) -> str:
    return _xml(openid, "text", f"<Content><![CDATA[{content}]]></Content><MsgId>{msg_id}</MsgId>")


def image_xml(media_id: str, msg_id: str, *, openid: str = OPENID) -> str:
    return _xml(openid, "image", f"<PicUrl><![CDATA[http://mmbiz.qpic.cn/mmbiz_jpg/{media_id}/0]]></PicUrl>"
                f"<MediaId><![CDATA[{media_id}]]></MediaId><MsgId>{msg_id}</MsgId>")


def voice_xml(msg_id: str, recognition: str | None = None) -> str:
    extra = f"<Recognition><![CDATA[{recognition}]]></Recognition>" if recognition is not None else ""
    return _xml(OPENID, "voice", f"<MediaId><![CDATA[voice-media-1]]></MediaId><Format><![CDATA[amr]]></Format>"
                f"{extra}<MsgId>{msg_id}</MsgId>")


def event_xml(event: str, extra: str = "") -> str:
    return _xml(OPENID, "event", f"<Event><![CDATA[{event}]]></Event>{extra}")


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def fake_api() -> Iterator[FakeWeChatAPI]:
    with FakeWeChatAPI(APP_ID, SECRET).serve() as fake:
        yield fake


@pytest.fixture
def settings(tmp_path: Path, fake_api: FakeWeChatAPI) -> Settings:
    return Settings(  # type: ignore[call-arg]
        _env_file=None,
        database_url=f"sqlite:///{tmp_path / 'kesu.db'}",
        wechat_token=TOKEN,
        wechat_app_id=APP_ID,
        wechat_app_secret=SECRET,
        wechat_aes_key=AES_KEY,
        wechat_api_url=fake_api.base_url,
        wechat_template_id=TEMPLATE_ID,
        rasa_actions=False,
    )


@pytest.fixture
def app(settings: Settings) -> Starlette:
    return build_server(settings, clock=lambda: NOW)


@pytest.fixture
def store(settings: Settings, app: Starlette) -> Iterator[Store]:
    """A second handle on the app's database, to look at what was (not) stored."""
    instance = Store.from_url(settings.database_url, migrate=False)
    yield instance
    instance.close()


@pytest.fixture
def wx(app: Starlette) -> WeChatServer:
    return WeChatServer(TestClient(app))


@pytest.fixture(scope="module")
def renderer() -> Renderer:
    return Renderer()


def inbound(store: Store, openid: str = OPENID) -> list[str]:
    return [m.text for m in store.messages("wechat", openid) if m.direction == "in"]


def complete_intake(wx: WeChatServer, *, encrypted: bool = False) -> list[str]:
    replies = [wx.say(OPENING, encrypted=encrypted)]
    replies += [wx.say(text, encrypted=encrypted) for text in FOLLOW_UPS]
    replies.append(wx.say("确认", encrypted=encrypted))
    return replies


# --------------------------------------------------------------------------- URL verification, signatures


def test_url_verification_echoes_echostr(wx: WeChatServer) -> None:
    response = wx.client.get("/wechat", params={**wx.query(), "echostr": "5837395217329457153"})
    assert response.status_code == 200
    assert response.text == "5837395217329457153"


def test_url_verification_with_a_forged_signature_is_refused(wx: WeChatServer) -> None:
    forged = wx.query(token="not-the-token")
    assert wx.client.get("/wechat", params={**forged, "echostr": "123"}).status_code == 403
    assert wx.client.get("/wechat", params={"echostr": "123"}).status_code == 403


def test_forged_plaintext_post_is_refused_and_nothing_is_stored(wx: WeChatServer, store: Store) -> None:
    xml = text_xml("沙发坏了", wx.next_msg_id())
    assert wx.post(xml, query=wx.query(token="not-the-token")).status_code == 403
    assert wx.client.post("/wechat", content=xml.encode()).status_code == 403  # unsigned
    query = wx.query()
    query["timestamp"] = str(int(query["timestamp"]) + 1)  # signed for another moment
    assert wx.post(xml, query=query).status_code == 403
    assert inbound(store) == []
    assert store.load_conversation("wechat", OPENID) is None


def test_forged_or_undecryptable_safe_mode_post_is_refused(wx: WeChatServer, store: Store) -> None:
    xml = text_xml("沙发坏了", wx.next_msg_id())
    body = f"<xml><ToUserName><![CDATA[{ACCOUNT}]]></ToUserName><Encrypt><![CDATA[{{}}]]></Encrypt></xml>"
    real = xmltodict.parse(wx.crypto.encrypt_message(xml, "1", "2"))["xml"]["Encrypt"]
    query = wx.query()
    # a msg_signature that does not sign this ciphertext
    forged = {**query, "encrypt_type": "aes", "msg_signature": sign(TOKEN, query["timestamp"], query["nonce"], "x")}
    assert wx.client.post("/wechat", params=forged, content=body.format(real).encode()).status_code == 403
    # correctly signed garbage, and a message encrypted for another account (other app id)
    garbage = base64.b64encode(b"not an AES block at all, sorry").decode()
    other = xmltodict.parse(WeChatCrypto(TOKEN, AES_KEY, "wx0000000000000000").encrypt_message(xml, "1", "2"))
    for ciphertext in (garbage, other["xml"]["Encrypt"]):
        signed = {**query, "encrypt_type": "aes",
                  "msg_signature": sign(TOKEN, query["timestamp"], query["nonce"], ciphertext)}
        assert wx.client.post("/wechat", params=signed, content=body.format(ciphertext).encode()).status_code == 403
    assert inbound(store) == []


def test_signed_but_unreadable_body_is_a_bad_request(wx: WeChatServer, store: Store) -> None:
    assert wx.post("this is not xml").status_code == 400
    assert wx.post("<xml><ToUserName>x</ToUserName></xml>").status_code == 400  # no MsgType
    assert inbound(store) == []


# --------------------------------------------------------------------------- passive replies


def test_text_message_gets_a_passive_reply_with_greeting_and_question(wx: WeChatServer, store: Store) -> None:
    reply = wx.say("你好")
    assert reply.startswith("您好，我是商场客诉登记助手")
    assert "请问您遇到了什么问题" in reply
    assert "\n\n" in reply  # the turn's two replies in one passive message, a blank line apart
    assert inbound(store) == ["你好"]


def test_encrypted_message_gets_an_encrypted_reply(wx: WeChatServer, store: Store) -> None:
    response = wx.post(text_xml("你好", wx.next_msg_id()), encrypted=True)
    assert "<Encrypt>" in response.text and "请问" not in response.text
    reply = wx.reply(response, encrypted=True)
    assert reply["ToUserName"] == OPENID and reply["FromUserName"] == ACCOUNT and reply["MsgType"] == "text"
    assert "请问您遇到了什么问题" in reply["Content"]
    assert inbound(store) == ["你好"]


def test_full_intake_over_wechat_opens_a_case(wx: WeChatServer, store: Store) -> None:
    replies = complete_intake(wx, encrypted=True)
    assert "确认" in replies[-2]  # the summary asks for confirmation
    number = find_case_number(replies[-1])
    assert number is not None, replies[-1]
    case = store.get_case(number)
    assert case is not None
    assert case.channel == "wechat" and case.customer_id == OPENID
    assert case.fields["name"] == "王丽" and case.fields["phone"] == "13812345678"
    assert store.cases_for_customer("wechat", OTHER_OPENID) == []


def test_a_retried_msg_id_gets_the_same_answer_and_is_processed_once(wx: WeChatServer, store: Store) -> None:
    wx.say("你好")
    msg_id = wx.next_msg_id()
    first = wx.say(OPENING, msg_id=msg_id)
    again = wx.say(OPENING, msg_id=msg_id)
    third = wx.say(OPENING, msg_id=msg_id, encrypted=True)  # WeChat retries the way it sent it; both work
    assert first == again == third
    assert "王丽" in first
    assert inbound(store) == ["你好", OPENING]


def test_customers_are_kept_apart(wx: WeChatServer, store: Store) -> None:
    wx.say(OPENING)
    reply = wx.say("你好", openid=OTHER_OPENID)
    assert "王丽" not in reply
    assert inbound(store, OTHER_OPENID) == ["你好"]


def test_image_is_stored_as_evidence_and_acknowledged(wx: WeChatServer, store: Store) -> None:
    wx.say("你好")
    response = wx.post(image_xml("MEDIA_ID_receipt_001", wx.next_msg_id()))
    reply = wx.reply(response)
    assert reply["ToUserName"] == OPENID
    assert "已作为凭证保存" in reply["Content"]
    replies = complete_intake(wx)
    number = find_case_number(replies[-1])
    assert number is not None
    case = store.get_case(number)
    assert case is not None
    evidence = store.evidence_for_case(case.id)
    assert [(e.kind, e.file_ref) for e in evidence] == [("photo", "MEDIA_ID_receipt_001")]


def test_subscribe_gets_the_greeting_and_stores_nothing(wx: WeChatServer, store: Store, renderer: Renderer) -> None:
    for event in (event_xml("subscribe"),
                  event_xml("subscribe", "<EventKey><![CDATA[qrscene_123]]></EventKey><Ticket>TICKET</Ticket>")):
        reply = wx.reply(wx.post(event))
        assert reply["Content"] == renderer.render("greeting", {"has_content": False})
        assert reply["ToUserName"] == OPENID and reply["FromUserName"] == ACCOUNT
    assert inbound(store) == []


@pytest.mark.parametrize("event", ["unsubscribe", "LOCATION", "VIEW", "TEMPLATESENDJOBFINISH", "some_new_event"])
def test_platform_notices_are_answered_success(wx: WeChatServer, event: str) -> None:
    response = wx.post(event_xml(event, "<EventKey><![CDATA[x]]></EventKey>"))
    assert response.status_code == 200
    assert response.text == "success"


def test_voice_gets_a_polite_reply_asking_for_text(wx: WeChatServer, store: Store, renderer: Renderer) -> None:
    reply = wx.reply(wx.post(voice_xml(wx.next_msg_id())))
    assert reply["Content"] == renderer.render("wechat/unsupported", {"kind": "voice"})
    assert "文字" in reply["Content"]
    assert inbound(store) == []


def test_voice_with_speech_recognition_is_read_as_text(wx: WeChatServer, store: Store) -> None:
    reply = wx.reply(wx.post(voice_xml(wx.next_msg_id(), recognition="你好")))
    assert "请问您遇到了什么问题" in reply["Content"]
    assert inbound(store) == ["你好"]


@pytest.mark.parametrize(("xml", "kind"), [
    (_xml(OPENID, "location", "<Location_X>31.24</Location_X><Location_Y>121.40</Location_Y><Scale>15</Scale>"
          "<Label><![CDATA[上海市普陀区真北路]]></Label><MsgId>1</MsgId>"), "location"),
    (_xml(OPENID, "link", "<Title><![CDATA[商品详情]]></Title><Description><![CDATA[沙发]]></Description>"
          "<Url><![CDATA[https://example.com/p/1]]></Url><MsgId>2</MsgId>"), "link"),
    (_xml(OPENID, "miniprogrampage", "<AppId><![CDATA[wx1]]></AppId><Title><![CDATA[订单]]></Title><MsgId>3</MsgId>"),
     "other"),
    (_xml(OPENID, "brandnewtype", "<MsgId>4</MsgId>"), "other"),
    (event_xml("CLICK", "<EventKey><![CDATA[MENU_COMPLAIN]]></EventKey>"), "other"),
])
def test_other_messages_get_a_polite_reply(wx: WeChatServer, store: Store, renderer: Renderer, xml: str,
                                           kind: str) -> None:
    reply = wx.reply(wx.post(xml))
    assert reply["ToUserName"] == OPENID and reply["MsgType"] == "text"
    assert reply["Content"] == renderer.render("wechat/unsupported", {"kind": kind})
    assert inbound(store) == []


def test_suggested_answers_are_named_when_the_text_does_not(renderer: Renderer) -> None:
    ask = renderer.message("ask/over_warranty", {"again": False, "attempt": 1}, [("是", None), ("不是", None),
                                                                                ("不清楚", None)])
    text = wechat.with_options(ask, renderer)
    assert text.startswith(ask.text) and "“是”、“不是”、“不清楚”" in text
    summary = OutboundMessage("内容无误请回复“确认”提交；需要修改直接告诉我；回复“取消”放弃登记。", (
        (Button("确认提交", "确认"),), (Button("修改信息", "修改"),), (Button("取消登记", "取消"),)))
    assert wechat.with_options(summary, renderer) == summary.text
    choose = OutboundMessage(
        "请问是哪一家？\n1. 红星美凯龙南京江北商场\n2. 红星美凯龙重庆江北商场\n回复序号或名称就可以。",
        ((Button("红星美凯龙南京江北商场", "1"),), (Button("红星美凯龙重庆江北商场", "2"),)))
    assert wechat.with_options(choose, renderer) == choose.text


def test_long_replies_are_split_within_wechats_limit() -> None:
    texts = ["您好" * 50, "\n".join(f"· 第{i}行：" + "沙发扶手开裂" * 10 for i in range(40)), "好的"]
    passive, rest = wechat.pack_replies(texts)
    assert len(passive.encode()) <= wechat.TEXT_LIMIT_BYTES
    assert rest and all(len(piece.encode()) <= wechat.TEXT_LIMIT_BYTES for piece in rest)
    assert "".join([passive, *rest]).replace("\n", "") == "".join(texts).replace("\n", "")
    assert wechat.pack_replies(["短", "回复"]) == ("短\n\n回复", [])
    one_line = "开裂" * 2000
    pieces = wechat.split_text(one_line)
    assert "".join(pieces) == one_line and all(len(p.encode()) <= wechat.TEXT_LIMIT_BYTES for p in pieces)


# --------------------------------------------------------------------------- a turn slower than the passive reply


def _wait_for(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_a_slow_turn_answers_success_and_pushes_the_replies_later(
        settings: Settings, fake_api: FakeWeChatAPI, monkeypatch: pytest.MonkeyPatch) -> None:
    slow = {"on": True}
    original = IntakeService.handle

    def handle(self: IntakeService, message: InboundMessage) -> Any:
        if slow["on"]:
            time.sleep(0.5)
        return original(self, message)

    monkeypatch.setattr(IntakeService, "handle", handle)
    monkeypatch.setattr(wechat, "PASSIVE_REPLY_TIMEOUT", 0.1)
    app = build_server(settings, clock=lambda: NOW)
    store = Store.from_url(settings.database_url, migrate=False)
    try:
        with TestClient(app) as client:  # runs the lifespan: the outbox dispatcher is live
            wx = WeChatServer(client)
            msg_id = wx.next_msg_id()
            response = wx.post(text_xml("你好", msg_id))
            assert response.status_code == 200 and response.text == "success"
            retry = wx.post(text_xml("你好", msg_id))  # had WeChat retried anyway: still one answer
            assert retry.text == "success"
            _wait_for(lambda: bool(fake_api.sent("message/custom/send")))
            _wait_for(lambda: all(i.state == "sent" for i in store.outbox_items()) and bool(store.outbox_items()))
            slow["on"] = False
            (send,) = fake_api.sent("message/custom/send")  # the turn's replies, in order, in one message
            assert send.body["touser"] == OPENID and send.body["msgtype"] == "text"
            content = send.body["text"]["content"]
            assert content.startswith("您好，我是商场客诉登记助手") and "\n\n请问您遇到了什么问题" in content
            (item,) = store.outbox_items()
            assert (item.kind, item.channel, item.target, item.state) == ("customer_reply", "wechat", OPENID, "sent")
            assert item.external_id and item.external_id.startswith("kf:")
            assert inbound(store) == ["你好"]
            # the next message, in time, is answered passively as usual
            assert "王丽" in wx.say(OPENING)
    finally:
        store.close()


# --------------------------------------------------------------------------- the sender (outbox → WeChat API)


class Outbox:
    """The WeChat adapter's sender behind a real dispatcher, on the app's database."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.service = build_service(settings, clock=lambda: NOW)
        self.store = self.service.store
        self.adapter = wechat.wechat_adapter(settings, self.service)
        assert self.adapter.sender is not None
        self.dispatcher = Dispatcher(self.store, {"wechat": self.adapter.sender}, clock=lambda: NOW)

    def enqueue(self, text: str, *, target: str = OPENID, case_id: int | None = None,
                buttons: tuple[tuple[Button, ...], ...] = ()) -> int:
        with self.store.unit_of_work() as uow:
            return uow.enqueue(kind="customer_reply", channel="wechat", target=target,
                               payload=OutboundMessage(text, buttons).as_payload(), case_id=case_id, at=NOW)

    def deliver(self) -> None:
        asyncio.run(self.dispatcher.run_once())

    def item(self, item_id: int) -> OutboxItem:
        return next(i for i in self.store.outbox_items(limit=1000) if i.id == item_id)


@pytest.fixture
def outbox(settings: Settings) -> Iterator[Outbox]:
    box = Outbox(settings)
    yield box
    box.store.close()


PROGRESS = "您的投诉 KS2611220019 已由商场客服专员接手，预计明天下午三点前给您回电。"


def test_outbox_message_goes_out_as_a_customer_service_message(outbox: Outbox, fake_api: FakeWeChatAPI) -> None:
    item_id = outbox.enqueue(PROGRESS)
    outbox.deliver()
    assert [call.endpoint for call in fake_api.calls] == ["token", "message/custom/send"]
    send = fake_api.sent("message/custom/send")[0]
    assert send.body == {"touser": OPENID, "msgtype": "text", "text": {"content": PROGRESS}}
    assert send.query["access_token"] == "ACCESS_TOKEN_1"
    item = outbox.item(item_id)
    assert item.state == "sent" and item.external_id == "kf:ok"
    # the token is held: a second push does not fetch another one
    outbox.enqueue("第二条进度")
    outbox.deliver()
    assert fake_api.tokens_issued == 1


def test_buttons_become_words_in_the_text(outbox: Outbox, fake_api: FakeWeChatAPI) -> None:
    buttons = ((Button("是，已过保", "是"),), (Button("没有过保", "不是"),))
    outbox.enqueue("请问商品买了有没有超过一年？", buttons=buttons)
    outbox.deliver()
    content = fake_api.sent("message/custom/send")[0].body["text"]["content"]
    assert content.startswith("请问商品买了有没有超过一年？\n") and "“是”、“不是”" in content


def test_after_48_hours_the_template_message_reaches_the_customer_and_the_case_records_it(
        outbox: Outbox, fake_api: FakeWeChatAPI) -> None:
    fake_api.kf_errcode = 45015
    # a real case, opened over WeChat, and a progress update for it
    for text in (OPENING, *FOLLOW_UPS):
        outbox.service.handle(InboundMessage("wechat", OPENID, text))
    case = outbox.service.handle(InboundMessage("wechat", OPENID, "确认")).case
    assert case is not None
    text = f"您的投诉 {case.number} 已由商场客服专员接手。\n预计明天下午三点前给您回电，请保持电话畅通。"
    item_id = outbox.enqueue(text, case_id=case.id)
    outbox.deliver()
    refused = fake_api.sent("message/custom/send")
    assert len(refused) == 1 and refused[0].answer["errcode"] == 45015
    (template,) = fake_api.sent("message/template/send")
    assert template.body["touser"] == OPENID and template.body["template_id"] == TEMPLATE_ID
    data = template.body["data"]
    assert data["first"]["value"] == f"您的投诉 {case.number} 已由商场客服专员接手。"
    assert data["keyword1"]["value"] == case.number
    assert data["keyword2"]["value"] == "预计明天下午三点前给您回电，请保持电话畅通。"
    assert data["remark"]["value"]
    # whether (and how) the customer was reached is on the case's outbox item
    (item,) = [i for i in outbox.store.outbox_items(case_id=case.id) if i.channel == "wechat"]
    assert item.id == item_id
    assert item.state == "sent" and item.external_id == f"tpl:{template.answer['msgid']}"


def test_after_48_hours_without_a_template_the_item_fails(settings: Settings, fake_api: FakeWeChatAPI) -> None:
    fake_api.kf_errcode = 45015
    box = Outbox(settings.model_copy(update={"wechat_template_id": None}))
    try:
        item_id = box.enqueue(PROGRESS)
        box.deliver()
        item = box.item(item_id)
        assert item.state == "failed"
        assert item.last_error and "45015" in item.last_error and "KESU_WECHAT_TEMPLATE_ID" in item.last_error
        assert fake_api.sent("message/template/send") == []
    finally:
        box.store.close()


def test_a_refused_template_message_fails_the_item(outbox: Outbox, fake_api: FakeWeChatAPI) -> None:
    fake_api.kf_errcode = 45015
    fake_api.template_errcode = 43004  # the customer unfollowed the account
    item_id = outbox.enqueue(PROGRESS)
    outbox.deliver()
    item = outbox.item(item_id)
    assert item.state == "failed" and item.last_error and "43004" in item.last_error


@pytest.mark.parametrize("errcode", [-1, 45009])
def test_busy_or_over_quota_is_retried_later(outbox: Outbox, fake_api: FakeWeChatAPI, errcode: int) -> None:
    fake_api.kf_errcode = errcode
    item_id = outbox.enqueue(PROGRESS)
    outbox.deliver()
    item = outbox.item(item_id)
    assert item.state == "pending" and item.last_error and str(errcode) in item.last_error
    assert item.next_attempt_at > NOW
    fake_api.kf_errcode = 0
    outbox.dispatcher.clock = lambda: NOW + timedelta(hours=2)
    outbox.deliver()
    assert outbox.item(item_id).state == "sent"


def test_an_unknown_openid_fails_for_good(outbox: Outbox, fake_api: FakeWeChatAPI) -> None:
    fake_api.kf_errcode = 40003
    item_id = outbox.enqueue(PROGRESS)
    outbox.deliver()
    assert outbox.item(item_id).state == "failed"


def test_a_superseded_access_token_is_refreshed_once(outbox: Outbox, fake_api: FakeWeChatAPI) -> None:
    outbox.enqueue("第一条")
    outbox.deliver()
    # someone else fetched a token for the same account: ours stops working
    rival = wechat.OfficialAccountClient(APP_ID, SECRET, api_base_url=fake_api.base_url)
    rival.fetch_access_token()
    item_id = outbox.enqueue("第二条")
    outbox.deliver()
    assert outbox.item(item_id).state == "sent"
    sends = fake_api.sent("message/custom/send")
    assert [call.answer["errcode"] for call in sends] == [0, 40001, 0]
    assert fake_api.tokens_issued == 3


def test_network_trouble_is_retried_later(settings: Settings) -> None:
    box = Outbox(settings.model_copy(update={"wechat_api_url": "http://127.0.0.1:9/cgi-bin/"}))  # nobody listens
    try:
        item_id = box.enqueue(PROGRESS)
        box.deliver()
        item = box.item(item_id)
        assert item.state == "pending" and item.last_error
    finally:
        box.store.close()


def test_wechat_is_only_served_when_configured(tmp_path: Path) -> None:
    app = build_server(Settings(_env_file=None, database_url=f"sqlite:///{tmp_path / 'k.db'}",  # type: ignore[call-arg]
                                rasa_actions=False))
    assert TestClient(app).get("/wechat").status_code == 404


def test_an_oversized_body_is_refused_unread(wx: WeChatServer, store: Store) -> None:
    huge = text_xml("沙发" * 40_000, wx.next_msg_id())
    assert wx.post(huge).status_code == 413
    assert wx.post(huge, encrypted=True).status_code == 413
    assert inbound(store) == []
