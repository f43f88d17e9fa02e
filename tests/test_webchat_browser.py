"""The web chat page (`/`) in a real headless browser: Debian's Chromium driven by Playwright.

The real `kesu serve` application (bot.app.build_server) runs under uvicorn in a background
thread on a free 127.0.0.1 port with a SQLite file in tmp; Chromium (a subprocess, started from
/usr/bin/chromium, never downloaded) loads only that address: every other request is aborted
and fails the test. The conversation clock is pinned, so "去年12月8号" and "上周六" always mean
the same days.

Without /usr/bin/chromium the module is skipped, unless KESU_REQUIRE_BROWSER is set (CI), in
which case it fails. Every wait is bounded, and all waits together share one budget, so the
module ends within about a minute even when the page hangs.
"""

from __future__ import annotations

import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import uvicorn
from playwright.sync_api import Browser, BrowserContext, Page, Route, expect, sync_playwright

from bot.app import build_renderer, build_server
from bot.config import Settings
from storage.repository import Store

CHROMIUM = Path("/usr/bin/chromium")
REQUIRE_ENV = "KESU_REQUIRE_BROWSER"
BROWSER_REQUIRED = os.environ.get(REQUIRE_ENV, "") not in ("", "0")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync"]
SCREENSHOT = Path("/tmp/webchat.png")  # for a human to look at; not asserted

MODULE_BUDGET_S = 55.0  # every wait below draws on this, so the module is bounded as a whole
WAIT_CAP_MS = 15_000  # and no single wait takes longer than this
NOW = datetime(2026, 11, 22, 10, 30, tzinfo=ZoneInfo("Asia/Shanghai"))  # a Sunday

OPENING = "我叫王丽，电话13812345678，去年12月8号在真北店顾家买的沙发，12800，扶手开裂了，要求换货"
# What the customer answers, and the question that should come next (None: the summary).
ANSWERS = [("上周六送的", "delivery_address"), ("上海市闵行区七宝镇漕宝路1500弄3号502", "order_no"), ("没有", None)]
CASE_NUMBER = re.compile(r"KS\d{10}")
MARKUP = "<img src=x onerror=alert(1)>"

KESU = ".msg.kesu .bubble"
ME = ".msg.me .bubble"

if not CHROMIUM.exists() and not BROWSER_REQUIRED:
    pytestmark = pytest.mark.skip(reason=f"no {CHROMIUM} (apt-get install chromium); set {REQUIRE_ENV}=1 to fail "
                                         "instead of skipping")


class Budget:
    """One deadline for the whole module; each wait gets what is left, at most WAIT_CAP_MS."""

    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds

    def ms(self) -> float:
        left = (self.deadline - time.monotonic()) * 1000
        if left <= 0:
            pytest.fail(f"the browser tests used up their {MODULE_BUDGET_S:.0f} s budget", pytrace=False)
        return min(left, WAIT_CAP_MS)


@dataclass
class LiveServer:
    url: str
    db_url: str


@dataclass
class Tab:
    """A page in its own browser context (own cookies), with what it did that it should not have."""

    page: Page
    context: BrowserContext
    origin: str
    budget: Budget
    blocked: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)

    def send(self, text: str) -> None:
        """Type a message the way a customer does and press Enter."""
        box = self.page.locator("#text")
        box.click(timeout=self.budget.ms())
        box.fill(text, timeout=self.budget.ms())
        box.press("Enter", timeout=self.budget.ms())

    def bot_says(self, expected: str | re.Pattern[str], *, after: int) -> str:
        """Wait until a bot bubble beyond the first ``after`` matches ``expected``; its text."""
        deadline_ms = self.budget.ms()
        end = time.monotonic() + deadline_ms / 1000
        bubbles = self.page.locator(KESU)
        while True:
            texts = bubbles.all_inner_texts()[after:]
            for text in texts:
                if (expected.search(text) if isinstance(expected, re.Pattern) else expected in text):
                    return text
            if time.monotonic() > end:
                pytest.fail(f"the bot did not say {expected!r}; new bubbles: {texts}", pytrace=False)
            self.page.wait_for_timeout(50)

    def bot_count(self) -> int:
        return self.page.locator(KESU).count()

    def idle(self) -> None:
        """Wait until no message is on its way (the log is not busy)."""
        expect(self.page.locator("#log")).not_to_have_attribute("aria-busy", "true", timeout=self.budget.ms())


@pytest.fixture(scope="module")
def budget() -> Budget:
    return Budget(MODULE_BUDGET_S)


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory, budget: Budget) -> Iterator[LiveServer]:
    """`kesu serve`'s application under uvicorn in a thread, on a free loopback port."""
    db_url = f"sqlite:///{tmp_path_factory.mktemp('webchat')}/web.db"
    settings = Settings(_env_file=None, database_url=db_url)  # type: ignore[call-arg]
    app = build_server(settings, clock=lambda: NOW)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="on", log_level="warning",
                                           access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="webchat-uvicorn", daemon=True)
    thread.start()
    try:
        end = time.monotonic() + budget.ms() / 1000
        while not server.started:
            if not thread.is_alive() or time.monotonic() > end:
                pytest.fail("uvicorn did not start serving the web chat", pytrace=False)
            time.sleep(0.02)
        yield LiveServer(f"http://127.0.0.1:{port}", db_url)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
        assert not thread.is_alive(), "uvicorn did not stop"


@pytest.fixture(scope="module")
def browser(budget: Budget) -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(f"{REQUIRE_ENV} is set but {CHROMIUM} is missing (apt-get install chromium)", pytrace=False)
    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS,
                                              timeout=budget.ms())
        try:
            yield instance
        finally:
            instance.close()


@pytest.fixture
def tab(browser: Browser, live_server: LiveServer, budget: Budget) -> Iterator[Tab]:
    context = browser.new_context(locale="zh-CN", viewport={"width": 420, "height": 760}, service_workers="block")
    page = context.new_page()
    tab = Tab(page, context, live_server.url, budget)

    def loopback_only(route: Route) -> None:
        url = route.request.url
        if url == tab.origin or url.startswith(tab.origin + "/"):
            tab.requests.append(url)
            route.continue_()
        else:
            tab.blocked.append(url)
            route.abort()

    context.route("**/*", loopback_only)
    page.on("pageerror", lambda error: tab.errors.append(str(error)))
    page.on("console", lambda message: tab.errors.append(message.text) if message.type == "error" else None)
    page.on("dialog", lambda dialog: (tab.dialogs.append(dialog.message), dialog.dismiss()))
    page.set_default_timeout(WAIT_CAP_MS)
    page.goto(live_server.url + "/", timeout=budget.ms(), wait_until="load")
    try:
        yield tab
    finally:
        context.close()
    assert tab.blocked == [], f"the page tried to leave 127.0.0.1: {tab.blocked}"
    assert tab.dialogs == [], f"the page opened dialogs: {tab.dialogs}"
    assert tab.errors == [], f"errors in the page: {tab.errors}"


def ask(key: str, *, again: bool) -> str:
    """The bot's question for ``key``, as the templates word it (so rewording them keeps this test)."""
    return build_renderer(Settings(_env_file=None)).render(f"ask/{key}", {"again": again, "attempt": 1})  # type: ignore[call-arg]


def session_cookie(context: BrowserContext) -> dict[str, object]:
    cookies = [c for c in context.cookies() if c["name"] == "kesu_session"]
    assert len(cookies) == 1, context.cookies()
    return dict(cookies[0])


def test_intake_in_the_browser_opens_a_case(tab: Tab, live_server: LiveServer) -> None:
    page = tab.page
    expect(page.locator(KESU).first).to_contain_text("写下您遇到的问题", timeout=tab.budget.ms())
    cookie = session_cookie(tab.context)
    assert cookie["httpOnly"] is True

    seen = tab.bot_count()
    tab.send(OPENING)
    expect(page.locator(ME).last).to_have_text(OPENING, timeout=tab.budget.ms())
    expect(page.locator("#text")).to_have_value("", timeout=tab.budget.ms())
    tab.bot_says("王丽", after=seen)
    tab.bot_says(ask("delivery_date", again=False), after=seen)
    for answer, following in ANSWERS:
        tab.idle()
        seen = tab.bot_count()
        tab.send(answer)
        expect(page.locator(ME).last).to_have_text(answer, timeout=tab.budget.ms())
        if following is not None:
            tab.bot_says(ask(following, again=False), after=seen)
        if following == "order_no":  # the question comes with a suggested answer; we type it instead
            expect(page.get_by_role("button", name="没有订单号")).to_be_visible(timeout=tab.budget.ms())

    summary = tab.bot_says("请核对", after=seen)
    for shown in ("王丽", "13812345678", "顾家", "2026年11月14日", "漕宝路1500弄3号502", "换货"):
        assert shown in summary, summary
    tab.idle()
    # Buttons of earlier questions are gone once answered, so 确认提交 is the one button to press.
    expect(page.get_by_role("button", name="没有订单号")).to_have_count(0, timeout=tab.budget.ms())
    confirm = page.get_by_role("button", name="确认提交")
    expect(confirm).to_have_count(1, timeout=tab.budget.ms())
    expect(confirm).to_be_in_viewport(timeout=tab.budget.ms())  # the page scrolled down to it
    seen = tab.bot_count()
    confirm.click(timeout=tab.budget.ms())

    opened = tab.bot_says(CASE_NUMBER, after=seen)
    assert "24小时内" in opened, opened
    match = CASE_NUMBER.search(opened)
    assert match is not None
    number = match.group()
    expect(page.locator(KESU).last).to_be_in_viewport(timeout=tab.budget.ms())
    expect(page.get_by_role("button", name="确认提交")).to_have_count(0, timeout=tab.budget.ms())
    tab.idle()
    page.screenshot(path=str(SCREENSHOT), full_page=True, timeout=tab.budget.ms())

    store = Store.from_url(live_server.db_url)
    try:
        cases = {record.number: record for record in store.list_cases()}
    finally:
        store.close()
    assert number in cases, (number, list(cases))
    fields = cases[number].fields
    assert fields["name"] == "王丽"
    assert fields["phone"] == "13812345678"
    assert fields["delivery_address"] == "上海市闵行区七宝镇漕宝路1500弄3号502"


def test_markup_typed_by_the_customer_is_shown_as_text(tab: Tab) -> None:
    page = tab.page
    seen = tab.bot_count()
    tab.send(MARKUP)
    expect(page.locator(ME).last).to_have_text(MARKUP, timeout=tab.budget.ms())
    tab.bot_says(re.compile(r"\S"), after=seen)  # the bot still answers
    tab.idle()
    assert page.locator("img").count() == 0
    assert page.locator(".bubble *").count() == 0  # no element inside any bubble: text only
    assert not [url for url in tab.requests if url.endswith("/x")], tab.requests


def test_reload_continues_the_conversation(tab: Tab) -> None:
    page = tab.page
    seen = tab.bot_count()
    tab.send(OPENING)
    tab.bot_says(ask("delivery_date", again=False), after=seen)
    tab.idle()
    before = session_cookie(tab.context)["value"]

    page.reload(timeout=tab.budget.ms(), wait_until="load")
    assert session_cookie(tab.context)["value"] == before
    # The conversation so far is still on the page after the reload.
    expect(page.locator(ME).first).to_have_text(OPENING, timeout=tab.budget.ms())
    seen = tab.bot_count()
    tab.send("在吗")
    pending = re.compile("|".join(re.escape(ask("delivery_date", again=again)) for again in (False, True)))
    tab.bot_says(pending, after=seen)
    tab.idle()
    new = page.locator(KESU).all_inner_texts()[seen:]
    assert not any("客诉登记助手" in text for text in new), new  # not greeted as a newcomer


def test_enter_while_composing_chinese_does_not_send(tab: Tab) -> None:
    """With a pinyin IME, Enter picks the candidate (keydown isComposing); it must not send the half-typed text."""
    page = tab.page
    page.locator("#text").fill("wang li", timeout=tab.budget.ms())
    page.locator("#text").evaluate(
        "box => box.dispatchEvent(new KeyboardEvent('keydown', "
        "{key: 'Enter', keyCode: 229, isComposing: true, bubbles: true, cancelable: true}))")
    page.wait_for_timeout(300)
    assert page.locator(ME).count() == 0
    expect(page.locator("#text")).to_have_value("wang li", timeout=tab.budget.ms())


def test_lost_session_is_explained_not_silent(tab: Tab) -> None:
    """If the cookie is gone (cleared, expired), the customer is told so instead of nothing happening."""
    page = tab.page
    tab.context.clear_cookies()
    seen = tab.bot_count()
    tab.send("你好")
    tab.bot_says("刷新", after=seen)
    tab.idle()
    tab.errors.remove("Failed to load resource: the server responded with a status of 400 (Bad Request)")

    page.reload(timeout=tab.budget.ms(), wait_until="load")  # as the page asks: a fresh start that works
    session_cookie(tab.context)
    expect(page.locator(ME)).to_have_count(0, timeout=tab.budget.ms())
    seen = tab.bot_count()
    tab.send("你好")
    tab.bot_says("客诉登记助手", after=seen)


def test_messages_typed_quickly_are_answered_in_order(tab: Tab) -> None:
    """The second message leaves only after the first is answered, so the bot never sees them swapped."""
    page = tab.page
    seen = tab.bot_count()
    tab.send(OPENING)
    tab.send(ANSWERS[0][0])  # without waiting for the first answer
    tab.bot_says(ask("delivery_address", again=False), after=seen)
    tab.idle()
    expect(page.locator(".msg.wait")).to_have_count(0, timeout=tab.budget.ms())
    texts = page.locator(KESU).all_inner_texts()[seen:]
    asked = [i for i, text in enumerate(texts) if text in (ask("delivery_date", again=False),
                                                            ask("delivery_address", again=False))]
    assert [texts[i] for i in asked] == [ask("delivery_date", again=False), ask("delivery_address", again=False)]


def test_failures_are_shown_to_the_customer(tab: Tab) -> None:
    """A server error or a dropped connection is said in the chat, and the next message still goes out."""
    page = tab.page
    page.route("**/api/chat", lambda route: route.fulfill(status=500, body="Internal Server Error"))
    seen = tab.bot_count()
    tab.send("你好")
    tab.bot_says("系统暂时出了点问题", after=seen)
    tab.idle()
    page.unroute("**/api/chat")
    page.route("**/api/chat", lambda route: route.abort("connectionreset"))
    seen = tab.bot_count()
    tab.send("你好")
    tab.bot_says("网络好像断了", after=seen)
    tab.idle()
    page.unroute("**/api/chat")
    seen = tab.bot_count()
    tab.send("你好")
    tab.bot_says("客诉登记助手", after=seen)
    tab.errors[:] = [e for e in tab.errors if not e.startswith("Failed to load resource")]
