"""WeCom group robots: the sender against a fake robot, and `kesu serve` end to end.

Sender tests talk to ``FakeRobot`` through httpx's ASGI transport; the end-to-end tests start
``build_server`` with the web chat, open a case like a customer would and watch the fake robot,
served over real HTTP on 127.0.0.1, receive the staff notification from the running dispatcher.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import threading
from collections.abc import Coroutine, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import httpx
import pytest
import uvicorn
from fake_wecom import FakeRobot, ManualClock

from bot.app import build_server
from bot.config import Settings
from bot.dispatch import RetryLater, Throttled, Undeliverable
from bot.outbound import Button, OutboundMessage
from handlers.wecom import (
    MARKDOWN_MAX_BYTES,
    RATE_LIMITED_PAUSE,
    TEXT_MAX_BYTES,
    TRUNCATED_NOTE,
    RobotRateLimiter,
    WeComRobotSender,
    fit_bytes,
    robot_body,
    wecom_adapter,
)
from storage.repository import Store

T = TypeVar("T")
T0 = datetime(2026, 11, 22, 6, 30, tzinfo=UTC)
API = "https://qyapi.example/cgi-bin/webhook/send"
KEY = "robot-key-zhenbei-0001"
OTHER_KEY = "robot-key-wuzhonglu-0002"
MARKDOWN = OutboundMessage("### 新投诉 KS2611220019\n> 顾客：王丽 138****5678", markdown=True)


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


@pytest.fixture
def robot() -> FakeRobot:
    return FakeRobot()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


def sender_for(robot: FakeRobot | httpx.MockTransport, clock: ManualClock, per_minute: int = 20) -> WeComRobotSender:
    transport = robot if isinstance(robot, httpx.MockTransport) else httpx.ASGITransport(app=robot)
    return WeComRobotSender(API, per_minute=per_minute, clock=clock, client=httpx.AsyncClient(transport=transport))


def send(sender: WeComRobotSender, message: OutboundMessage = MARKDOWN, key: str = KEY) -> str | None:
    return run(sender.send(key, message))


# --------------------------------------------------------------------------- what is posted


def test_markdown_is_posted_to_the_robots_webhook(clock: ManualClock) -> None:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"errcode": 0, "errmsg": "ok"})

    assert send(sender_for(httpx.MockTransport(answer), clock)) is None
    (request,) = seen
    assert request.method == "POST"
    assert str(request.url) == f"{API}?key={KEY}"
    assert request.headers["content-type"] == "application/json"
    assert json.loads(request.content) == {"msgtype": "markdown", "markdown": {"content": MARKDOWN.text}}


def test_a_plain_message_goes_as_text_and_buttons_are_dropped(robot: FakeRobot, clock: ManualClock) -> None:
    message = OutboundMessage("新投诉 KS2611220019", buttons=((Button("认领", "claim:KS2611220019"),),))
    send(sender_for(robot, clock), message)
    (post,) = robot.posts
    assert post.body == {"msgtype": "text", "text": {"content": "新投诉 KS2611220019"}}
    assert post.accepted


def test_a_long_markdown_message_is_cut_to_4096_bytes_with_a_note(robot: FakeRobot, clock: ManualClock) -> None:
    lines = [f"> 第{i}行：沙发扶手开裂，顾客要求换货，已拍照留证。" for i in range(300)]
    send(sender_for(robot, clock), OutboundMessage("\n".join(lines), markdown=True))
    (post,) = robot.posts
    assert post.accepted  # the fake, like WeCom, refuses markdown over 4096 bytes
    assert len(post.content.encode("utf-8")) <= MARKDOWN_MAX_BYTES
    assert post.content.endswith(TRUNCATED_NOTE)
    kept = post.content.removesuffix(TRUNCATED_NOTE).split("\n")
    assert kept == lines[:len(kept)]  # whole lines only: no half-open markdown


def test_a_long_text_message_is_cut_to_2048_bytes(robot: FakeRobot, clock: ManualClock) -> None:
    send(sender_for(robot, clock), OutboundMessage("裂" * 3000))
    (post,) = robot.posts
    assert post.accepted and len(post.content.encode("utf-8")) <= TEXT_MAX_BYTES


@pytest.mark.parametrize("text", ["汉" * 5000, "a" + "😀" * 2000, "x" * 4096, "x" * 4097, "汉\n" * 3000, ""])
def test_fit_bytes_never_splits_a_character(text: str) -> None:
    fitted = fit_bytes(text, MARKDOWN_MAX_BYTES)
    assert len(fitted.encode("utf-8")) <= MARKDOWN_MAX_BYTES
    if len(text.encode("utf-8")) <= MARKDOWN_MAX_BYTES:
        assert fitted == text
    else:
        assert fitted.endswith(TRUNCATED_NOTE) and text.startswith(fitted.removesuffix(TRUNCATED_NOTE))
    assert robot_body(OutboundMessage(text, markdown=True))["markdown"]["content"] == fitted


# --------------------------------------------------------------------------- WeCom's answers


@pytest.mark.parametrize("errcode", [45009, -1])
def test_busy_or_rate_limited_answers_mean_retry_later(robot: FakeRobot, clock: ManualClock, errcode: int) -> None:
    robot.fail_next(errcode=errcode)
    with pytest.raises(RetryLater) as raised:
        send(sender_for(robot, clock))
    assert not isinstance(raised.value, Throttled)
    assert f"errcode {errcode}" in str(raised.value)
    assert raised.value.after == (RATE_LIMITED_PAUSE if errcode == 45009 else None)


def test_after_45009_the_robot_is_left_alone_for_a_minute(robot: FakeRobot, clock: ManualClock) -> None:
    sender = sender_for(robot, clock)
    robot.fail_next(errcode=45009)
    with pytest.raises(RetryLater):
        send(sender)
    with pytest.raises(Throttled) as raised:
        send(sender)
    assert raised.value.after == RATE_LIMITED_PAUSE
    assert send(sender, key=OTHER_KEY) is None  # other robots are not affected
    clock.advance(RATE_LIMITED_PAUSE)
    assert send(sender) is None
    assert [p.key for p in robot.posts] == [KEY, OTHER_KEY, KEY]


@pytest.mark.parametrize("status", [500, 502, 503, 429])
def test_server_errors_mean_retry_later(robot: FakeRobot, clock: ManualClock, status: int) -> None:
    robot.fail_next(status=status)
    with pytest.raises(RetryLater) as raised:
        send(sender_for(robot, clock))
    assert f"HTTP {status}" in str(raised.value)


def test_retry_after_header_is_used_as_the_hint(clock: ManualClock) -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(503, headers={"Retry-After": "42"}))
    with pytest.raises(RetryLater) as raised:
        send(sender_for(transport, clock))
    assert raised.value.after == 42.0


@pytest.mark.parametrize("problem", [httpx.ConnectError("refused"), httpx.ReadTimeout("slow"),
                                     httpx.RemoteProtocolError("closed")])
def test_network_errors_mean_retry_later(clock: ManualClock, problem: httpx.HTTPError) -> None:
    def fail(request: httpx.Request) -> httpx.Response:
        raise problem

    with pytest.raises(RetryLater) as raised:
        send(sender_for(httpx.MockTransport(fail), clock))
    assert type(problem).__name__ in str(raised.value)


def test_an_answer_that_is_not_wecoms_json_means_retry_later(clock: ManualClock) -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(200, text="<html>gateway</html>"))
    with pytest.raises(RetryLater) as raised:
        send(sender_for(transport, clock))
    assert "unexpected answer" in str(raised.value)


@pytest.mark.parametrize(("errcode", "errmsg"), [(93000, "invalid webhook url"), (40008, "invalid message type"),
                                                 (40058, "markdown.content exceed max length")])
def test_permanent_errors_mean_undeliverable(robot: FakeRobot, clock: ManualClock, errcode: int,
                                             errmsg: str) -> None:
    robot.refuse_key(KEY, errcode, errmsg)
    with pytest.raises(Undeliverable) as raised:
        send(sender_for(robot, clock))
    assert str(raised.value) == f"wecom robot robo…0001: errcode {errcode} {errmsg}"
    assert KEY not in str(raised.value)


@pytest.mark.parametrize("status", [400, 404])
def test_client_errors_mean_undeliverable(clock: ManualClock, status: int) -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(status))
    with pytest.raises(Undeliverable):
        send(sender_for(transport, clock))


def test_an_empty_key_is_undeliverable_without_a_request(robot: FakeRobot, clock: ManualClock) -> None:
    with pytest.raises(Undeliverable):
        send(sender_for(robot, clock), key="")
    assert robot.posts == []


# --------------------------------------------------------------------------- 20 messages a minute per robot


def test_the_21st_message_in_a_minute_is_throttled_until_a_slot_frees(robot: FakeRobot,
                                                                     clock: ManualClock) -> None:
    sender = sender_for(robot, clock)
    for _ in range(20):
        send(sender)
        clock.advance(2)  # 20 messages at 0, 2, …, 38 s
    with pytest.raises(Throttled) as raised:
        send(sender)
    assert raised.value.after == pytest.approx(20.0)  # the first of them leaves the window at 60 s
    assert len(robot.posts) == 20  # a throttled message is not posted
    assert send(sender, key=OTHER_KEY) is None  # per robot, not global
    clock.advance(20)
    assert send(sender) is None
    with pytest.raises(Throttled) as raised:
        send(sender)
    assert raised.value.after == pytest.approx(2.0)


def test_concurrent_sends_to_one_robot_never_overshoot_the_window(robot: FakeRobot, clock: ManualClock) -> None:
    sender = sender_for(robot, clock)

    async def burst() -> list[BaseException | str | None]:
        return await asyncio.gather(*(sender.send(KEY, MARKDOWN) for _ in range(25)), return_exceptions=True)

    outcomes = run(burst())
    assert sum(outcome is None for outcome in outcomes) == 20
    assert sum(isinstance(outcome, Throttled) for outcome in outcomes) == 5
    assert len(robot.posts) == 20


def test_the_limit_comes_from_the_settings(robot: FakeRobot, clock: ManualClock) -> None:
    sender = sender_for(robot, clock, per_minute=2)
    send(sender)
    send(sender)
    with pytest.raises(Throttled):
        send(sender)
    assert sender.limiter.in_window(KEY) == 2
    with pytest.raises(ValueError):
        RobotRateLimiter(0, clock)


# --------------------------------------------------------------------------- the adapter


def test_the_adapter_brings_a_sender_and_closes_its_client(clock: ManualClock) -> None:
    client = httpx.AsyncClient(transport=httpx.MockTransport(lambda request: httpx.Response(200, json={"errcode": 0})))
    adapter = wecom_adapter(Settings(_env_file=None, wecom_per_minute=7),  # type: ignore[call-arg]
                            clock=clock, client=client)
    assert adapter.name == "wecom" and not adapter.routes and adapter.start is None
    assert isinstance(adapter.sender, WeComRobotSender)
    assert adapter.sender.limiter.per_minute == 7
    assert adapter.stop is not None
    run(adapter.stop())
    assert client.is_closed


# --------------------------------------------------------------------------- kesu serve end to end

SHANGHAI = ZoneInfo("Asia/Shanghai")
NOW = datetime(2026, 11, 22, 14, 30, tzinfo=SHANGHAI)
PHONE = "13812345678"
INTAKE = ("我叫王丽，电话13812345678，去年12月8号在{mall}顾家买的沙发，12800，扶手开裂了{extra}，要求换货",
          "11月20号送的", "上海市普陀区真北路1号", "没有", "确认")
FALLBACK_KEY = "fallback-robot-key-0009"
ESCALATION_KEY = "hq-escalation-robot-key-0010"
MINIMAL_CATALOG = Path(__file__).parent / "data" / "minimal_catalog.yaml"  # no staff groups


@pytest.fixture
def served_robot(robot: FakeRobot) -> Iterator[tuple[FakeRobot, str]]:
    with robot.serve() as url:
        yield robot, url


@contextlib.contextmanager
def kesu_serve(settings: Settings) -> Iterator[str]:
    """`kesu serve` (build_server under uvicorn, dispatcher included) on 127.0.0.1; yields its base URL.

    The listening socket is bound before uvicorn starts, so requests simply queue until it is up.
    """
    app = build_server(settings, clock=lambda: NOW)
    sock = socket.create_server(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, lifespan="on", log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="kesu-serve", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def open_case_in_web_chat(base_url: str, mall: str, extra: str = "") -> str:
    """A customer completes an intake in the web chat page's API; returns the case number."""
    with httpx.Client(base_url=base_url, timeout=30) as client:
        client.get("/")  # the session cookie
        for text in INTAKE:
            answer = client.post("/api/chat", json={"text": text.format(mall=mall, extra=extra)}).json()
    assert answer["case"], answer
    return str(answer["case"])


ROUTED_CATALOG = Path(__file__).parent / "data" / "routed_catalog.yaml"  # the demo malls, 真北 with staff groups


def serve_settings(db_url: str, robot_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"catalog": ROUTED_CATALOG, **overrides}
    return Settings(_env_file=None, database_url=db_url, wecom_api_url=robot_url,  # type: ignore[call-arg]
                    **values)


def no_full_phone(robot: FakeRobot) -> None:
    raw = json.dumps([p.body for p in robot.posts], ensure_ascii=False)
    assert PHONE not in raw


def test_a_case_at_a_mall_with_a_robot_reaches_its_wecom_group(served_robot: tuple[FakeRobot, str],
                                                               db_url: str) -> None:
    robot, url = served_robot
    with kesu_serve(serve_settings(db_url, url)) as base_url:
        number = open_case_in_web_chat(base_url, "真北店")
        (post,) = robot.wait_for(1)
        health = httpx.get(f"{base_url}/healthz").json()
    assert post.key == "demo-zhenbei-robot-key" and post.msgtype == "markdown"
    assert number in post.content and "红星美凯龙上海真北商场" in post.content
    assert "138****5678" in post.content
    assert "未配置员工群" not in post.content
    no_full_phone(robot)
    assert "wecom" in health["channels"]
    store = Store.from_url(db_url, migrate=False)
    try:
        case = store.get_case(number)
        assert case is not None and not case.unrouted
        (item,) = store.outbox_items(case_id=case.id, state="sent")
        assert (item.channel, item.target) == ("wecom", "demo-zhenbei-robot-key")
    finally:
        store.close()


def test_a_case_of_a_mall_without_groups_reaches_the_fallback_robot_flagged(served_robot: tuple[FakeRobot, str],
                                                                           db_url: str) -> None:
    robot, url = served_robot
    with kesu_serve(serve_settings(db_url, url, catalog=MINIMAL_CATALOG, fallback_wecom_key=FALLBACK_KEY)) as base_url:
        number = open_case_in_web_chat(base_url, "思明店")
        (post,) = robot.wait_for(1)
    assert post.key == FALLBACK_KEY
    assert number in post.content and "厦门思明商场" in post.content and "该商场未配置员工群" in post.content
    no_full_phone(robot)
    store = Store.from_url(db_url, migrate=False)
    try:
        case = store.get_case(number)
        assert case is not None and case.unrouted
    finally:
        store.close()


def test_a_major_case_reaches_the_escalation_robot_too(served_robot: tuple[FakeRobot, str], db_url: str) -> None:
    robot, url = served_robot
    settings = serve_settings(db_url, url, escalation_wecom_key=ESCALATION_KEY, fallback_wecom_key=FALLBACK_KEY)
    with kesu_serve(settings) as base_url:
        number = open_case_in_web_chat(base_url, "真北店", extra="，孩子手被划伤了")
        posts = robot.wait_for(2)
    assert sorted(p.key for p in posts) == sorted(["demo-zhenbei-robot-key", ESCALATION_KEY])
    assert all(number in p.content and "重大投诉" in p.content for p in posts)
    no_full_phone(robot)


def test_robot_keys_never_reach_the_logs(robot: FakeRobot, clock: ManualClock,
                                         caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG):
        send(sender_for(robot, clock))
        robot.refuse_key(KEY)
        with pytest.raises(Undeliverable):
            send(sender_for(robot, clock))
    assert "HTTP Request: POST" in caplog.text  # httpx did log the request…
    assert KEY not in caplog.text  # …without the key
