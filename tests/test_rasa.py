"""Kesu as a Rasa action server: validate_complaint_form and action_submit_complaint.

Every request is a payload in Rasa's action-server format (next_action, sender_id, version,
tracker with slots / latest_message / events / active_loop, domain with slots and forms) built by
`RasaTracker`, which also applies the answers the way Rasa does. The domain is the example
project's own examples/rasa/domain.yml, so the example and the actions cannot drift apart.

Each scenario runs twice: through rasa-sdk's ActionExecutor in-process, and through POST
/rasa/webhook of the real `kesu serve` app (bot.app.build_server, SQLite in tmp_path). One test
starts `python -m rasa_sdk --actions handlers.rasa_actions` on a loopback port and checks it
answers like the in-process route.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
import zlib
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from rasa_sdk.interfaces import ActionExecutionRejection
from starlette.applications import Starlette

from bot.app import build_server, build_service
from bot.config import Settings
from bot.templating import Renderer
from handlers.rasa_actions import (
    FORM,
    STATE_SLOT,
    SUBMIT,
    VALIDATE_FORM,
    ActionSubmitComplaint,
    ValidateComplaintForm,
    action_executor,
)
from storage.repository import Store

pytestmark = pytest.mark.filterwarnings("ignore:Your versions of rasa and rasa_sdk might not be compatible")

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "rasa"
NOW = datetime(2025, 6, 10, 4, 0, tzinfo=UTC)  # 12:00 in Shanghai
RASA_VERSION = "3.6.21"
RENDERER = Renderer()

Answer = tuple[int, Any]  # (HTTP status, JSON body)
Call = Callable[[dict[str, Any]], Answer]


def load_domain() -> dict[str, Any]:
    """The example domain as Rasa sends it (Domain.as_dict(): the YAML's keys plus config)."""
    domain: dict[str, Any] = yaml.safe_load((EXAMPLE / "domain.yml").read_text(encoding="utf-8"))
    domain.setdefault("config", {"store_entities_as_slots": True})
    return domain


DOMAIN = load_domain()
REQUIRED = DOMAIN["forms"][FORM]["required_slots"]
ASK = {slot: DOMAIN["responses"][f"utter_ask_{slot}"][0]["text"] for slot in REQUIRED}


class RasaTracker:
    """One conversation as Rasa keeps it, the payloads it sends, and how it applies the answers."""

    def __init__(self, sender_id: str = "rasa-user-1") -> None:
        self.sender_id = sender_id
        self.slots: dict[str, Any] = dict.fromkeys(DOMAIN["slots"]) | {"requested_slot": None}
        self.events: list[dict[str, Any]] = []
        self.active_loop: dict[str, Any] = {}
        self.latest_message: dict[str, Any] = {}
        self.latest_action_name = "action_listen"
        self._time = NOW.timestamp()

    def _stamp(self) -> float:
        self._time += 1.5
        return self._time

    def user(self, text: str, intent: str = "inform") -> None:
        at = self._stamp()
        parse = {"text": text, "intent": {"name": intent, "confidence": 0.97}, "entities": [],
                 "intent_ranking": [{"name": intent, "confidence": 0.97}], "message_id": uuid.uuid4().hex,
                 "metadata": {}}
        self.events += [
            {"event": "action", "timestamp": at, "name": "action_listen", "policy": None, "confidence": None},
            {"event": "user", "timestamp": at, "text": text, "parse_data": parse, "input_channel": "rest",
             "message_id": parse["message_id"], "metadata": {}},
        ]
        self.latest_message = parse
        self.latest_action_name = "action_listen"

    def activate(self) -> None:
        self.active_loop = {"name": FORM, "validate": True, "rejected": False,
                            "trigger_message": self.latest_message}
        self.events.append({"event": "active_loop", "timestamp": self._stamp(), "name": FORM})

    def deactivate(self) -> None:
        self.active_loop = {}
        self.events.append({"event": "active_loop", "timestamp": self._stamp(), "name": None})

    def set_slot(self, name: str, value: Any) -> None:
        self.slots[name] = value
        self.events.append({"event": "slot", "timestamp": self._stamp(), "name": name, "value": value})

    def bot(self, text: str) -> None:
        self.events.append({"event": "bot", "timestamp": self._stamp(), "text": text, "data": {}, "metadata": {}})

    def action(self, name: str) -> None:
        self.events.append({"event": "action", "timestamp": self._stamp(), "name": name, "policy": "RulePolicy",
                            "confidence": 1.0})
        self.latest_action_name = name

    def payload(self, action: str) -> dict[str, Any]:
        return {
            "next_action": action,
            "sender_id": self.sender_id,
            "version": RASA_VERSION,
            "domain": DOMAIN,
            "tracker": {
                "sender_id": self.sender_id,
                "slots": dict(self.slots),
                "latest_message": self.latest_message,
                "latest_event_time": self.events[-1]["timestamp"] if self.events else None,
                "followup_action": None,
                "paused": False,
                "events": [dict(event) for event in self.events],
                "latest_input_channel": "rest",
                "active_loop": dict(self.active_loop),
                "latest_action": {"action_name": self.latest_action_name},
                "latest_action_name": self.latest_action_name,
            },
        }

    def apply(self, answer: dict[str, Any]) -> None:
        """Rasa adds the returned events to the tracker and sends the responses to the customer."""
        for event in answer["events"]:
            self.events.append(event)
            if event["event"] == "slot":
                self.slots[event["name"]] = event["value"]
        for response in answer["responses"]:
            self.bot(response["text"])


def slot_events(answer: dict[str, Any]) -> dict[str, Any]:
    return {event["name"]: event["value"] for event in answer["events"] if event["event"] == "slot"}


def texts(answer: dict[str, Any]) -> list[str]:
    return [response["text"] for response in answer["responses"]]


def form_step(tracker: RasaTracker, call: Call) -> tuple[dict[str, Any], str | None]:
    """What Rasa's FormAction does with validate_complaint_form: validate, then ask the next slot
    (the one the validation action requested, else the first empty required slot) or finish."""
    status, answer = call(tracker.payload(VALIDATE_FORM))
    assert status == 200, answer
    if not tracker.active_loop:  # activation: Rasa validates before its ActiveLoop event is logged
        tracker.activate()
    tracker.apply(answer)
    events = slot_events(answer)
    if "requested_slot" in events:
        requested = events["requested_slot"]
    else:
        requested = next((slot for slot in REQUIRED if tracker.slots[slot] is None), None)
    if requested is None:
        tracker.set_slot("requested_slot", None)
        tracker.deactivate()
    else:
        tracker.set_slot("requested_slot", requested)
        tracker.bot(ASK[requested])
    tracker.action(FORM)
    return answer, requested


# --------------------------------------------------------------------------- transports


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'kesu.db'}"


@pytest.fixture
def settings(db_url: str) -> Settings:
    return Settings(_env_file=None, database_url=db_url,  # type: ignore[call-arg]
                    catalog=Path(__file__).parent / "data" / "routed_catalog.yaml")  # 真北 has staff groups


class Http:
    """Requests to the real `kesu serve` app in-process (httpx's ASGI transport: no socket, and no
    lifespan, so the outbox dispatcher stays off and queued staff notices can be inspected)."""

    def __init__(self, app: Starlette) -> None:
        self.app = app

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        async def send() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://kesu.test") as client:
                return await client.request(method, path, **kwargs)

        return asyncio.run(send())

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", path, **kwargs)

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", path, **kwargs)


def serve(settings: Settings) -> Http:
    return Http(build_server(settings, clock=lambda: NOW))


@pytest.fixture(params=["executor", "webhook"])
def call(request: pytest.FixtureRequest, settings: Settings, store: Store) -> Call:
    """Send one action call: to rasa-sdk's ActionExecutor in-process, or to kesu serve's /rasa/webhook."""
    if request.param == "webhook":
        http = serve(settings)

        def post(payload: dict[str, Any]) -> Answer:
            response = http.post("/rasa/webhook", json=payload)
            return response.status_code, response.json()

        return post
    executor = action_executor(build_service(settings, clock=lambda: NOW, store=store))

    def run(payload: dict[str, Any]) -> Answer:
        try:
            result = asyncio.run(executor.run(json.loads(json.dumps(payload))))
        except ActionExecutionRejection as e:  # what rasa-sdk's endpoint answers for it
            return 400, {"error": e.message, "action_name": e.action_name}
        return 200, result.model_dump() if result else None

    return run


# --------------------------------------------------------------------------- validate_complaint_form


MULTI_FACT = "我姓王，电话13912345678，去年5月12号在上海真北店买的顾家沙发，花了一万二，坐了两个月就塌了，要求退货"


def test_multi_fact_first_message_fills_every_slot_it_contains(call: Call) -> None:
    tracker = RasaTracker()
    tracker.user(MULTI_FACT, intent="complain")
    answer, requested = form_step(tracker, call)
    slots = slot_events(answer)
    assert {key: slots[key] for key in ("name", "phone", "mall", "brand", "purchase_date", "amount",
                                        "expectation", "city", "over_warranty", "priority")} == {
        "name": "王", "phone": "13912345678", "mall": "sh-zhenbei", "brand": "顾家家居",
        "purchase_date": "2024-05-12", "amount": 12000, "expectation": ["return"], "city": "上海",
        "over_warranty": True, "priority": "normal",
    }
    assert "塌" in slots["description"]
    # over_warranty is derived from the purchase date, so it is not asked; the next gap is asked.
    assert requested == "delivery_date"
    assert slots["requested_slot"] == "delivery_date"
    said = texts(answer)
    assert any("顾家家居" in text and "13912345678" in text for text in said)  # "好的，已记录：…"
    assert RENDERER.render("empathy", {"priority": "normal"}) in said


def test_invalid_phone_is_refused_with_the_reason(call: Call) -> None:
    tracker = RasaTracker()
    tracker.slots |= {"description": "沙发塌了", "name": "王"}
    tracker.set_slot("requested_slot", "phone")
    tracker.user("1391234567")  # ten digits
    answer, requested = form_step(tracker, call)
    assert slot_events(answer)["phone"] is None
    assert texts(answer) == [RENDERER.render("invalid", {"field": "phone", "reason": "length"})]
    assert "11位手机号" in texts(answer)[0]
    assert requested == "phone"  # Rasa asks again


def test_ambiguous_mall_is_asked_back_and_the_answer_resolves_it(call: Call) -> None:
    tracker = RasaTracker()
    tracker.slots |= {"description": "床板裂了", "name": "王", "phone": "13912345678"}
    tracker.set_slot("requested_slot", "mall")
    tracker.user("江北店")
    answer, requested = form_step(tracker, call)
    slots = slot_events(answer)
    assert slots["mall"] is None
    assert slots[STATE_SLOT]["choice"] == {"field": "mall", "options": ["nj-jiangbei", "cq-jiangbei"]}
    [question] = answer["responses"]
    assert "红星美凯龙南京江北商场" in question["text"] and "红星美凯龙重庆江北商场" in question["text"]
    assert question["buttons"] == [{"title": "红星美凯龙南京江北商场", "payload": "1"},
                                   {"title": "红星美凯龙重庆江北商场", "payload": "2"}]
    assert requested == "mall"

    tracker.user("2")  # the button's payload, sent back as text
    answer, requested = form_step(tracker, call)
    slots = slot_events(answer)
    assert (slots["mall"], slots["city"]) == ("cq-jiangbei", "重庆")
    assert slots[STATE_SLOT]["choice"] is None
    assert requested == "brand"


def test_a_later_message_corrects_a_slot_and_the_case_records_it(call: Call, store: Store) -> None:
    tracker = RasaTracker()
    tracker.user(MULTI_FACT, intent="complain")
    form_step(tracker, call)
    tracker.user("电话写错了，应该是13812345678")
    answer, _ = form_step(tracker, call)
    assert slot_events(answer)["phone"] == "13812345678"
    assert RENDERER.render("corrected", {"changes": [
        {"field": "phone", "old": "13912345678", "new": "13812345678"}]}) in texts(answer)
    assert tracker.slots[STATE_SLOT]["corrections"][0]["field"] == "phone"


def test_unknown_optional_fields_are_dropped_from_the_form(call: Call) -> None:
    tracker = RasaTracker()
    tracker.user(MULTI_FACT, intent="complain")
    form_step(tracker, call)
    assert tracker.slots["requested_slot"] == "delivery_date"
    tracker.user("不知道")
    answer, requested = form_step(tracker, call)
    assert texts(answer) == [RENDERER.render("unknown_ok", {"field": "delivery_date"})]
    assert "delivery_date" in tracker.slots[STATE_SLOT]["unknown"]
    assert requested == "delivery_address"


def test_the_same_message_validated_twice_is_answered_once(call: Call) -> None:
    """Rasa may run the validation twice for one message (form activation); Kesu speaks once."""
    tracker = RasaTracker()
    tracker.slots |= {"description": "沙发塌了", "name": "王"}
    tracker.set_slot("requested_slot", "phone")
    tracker.user("1391234567")
    first, _ = form_step(tracker, call)
    status, again = call(tracker.payload(VALIDATE_FORM))
    assert status == 200 and texts(first) and texts(again) == []
    assert slot_events(again).get("phone") is None


# --------------------------------------------------------------------------- action_submit_complaint


ANSWERS = {  # what the customer answers to each question of the form
    "name": "免贵姓刘", "phone": "13812345678", "brand": "顾家", "purchase_date": "2025年3月8号",
    "amount": "八千五", "delivery_date": "3月15号送的", "delivery_address": "南京市浦口区江浦街道1号",
    "order_no": "没有", "over_warranty": "没有", "expectation": "换货",
}


def test_a_whole_conversation_ends_in_a_case(call: Call, store: Store) -> None:
    tracker = RasaTracker("wx-user-42")
    tracker.user("我要投诉，在江北店买的床，床板裂了", intent="complain")
    _, requested = form_step(tracker, call)
    assert requested == "mall"
    tracker.user("南京的")
    for _ in range(len(REQUIRED) * 2):
        _, requested = form_step(tracker, call)
        if requested is None:
            break
        tracker.user(ANSWERS[requested])
    else:
        pytest.fail(f"the form never finished; slots: {tracker.slots}")

    status, answer = call(tracker.payload(SUBMIT))
    assert status == 200, answer
    [case] = store.list_cases()
    assert case.channel == "rasa" and case.customer_id == "wx-user-42"
    assert case.public_dict() | {"number": "", "created_at": ""} == {
        "number": "", "status": "new", "created_at": "",
        "name": "刘", "phone": "13812345678", "city": "南京", "mall": "nj-jiangbei", "amount": 8500,
        "purchase_date": "2025-03-08", "brand": "顾家家居", "delivery_date": "2025-03-15",
        "delivery_address": "南京市浦口区江浦街道1号", "order_no": None, "over_warranty": False,
        "priority": "normal", "description": case.fields["description"], "expectation": ["exchange"],
        "owner_name": None, "unrouted": True,
    }
    assert "床板裂了" in case.fields["description"]
    assert case.transcript[0] == {"role": "customer", "text": "我要投诉，在江北店买的床，床板裂了",
                                  "at": datetime.fromtimestamp(NOW.timestamp() + 1.5, UTC).isoformat()}
    assert {line["role"] for line in case.transcript} == {"customer", "kesu"}
    [said] = texts(answer)
    assert case.number in said
    assert said == RENDERER.render("case_opened", {"case_number": case.number, "priority": "normal", "name": "刘"})
    slots = slot_events(answer)
    assert slots["case_number"] == case.number
    assert all(slots[slot] is None for slot in (*REQUIRED, "city", "priority", STATE_SLOT))

    # The same conversation takes a second complaint from scratch: nothing carries over.
    tracker.apply(answer)
    tracker.action(SUBMIT)
    tracker.user(MULTI_FACT, intent="complain")
    answer, requested = form_step(tracker, call)
    assert requested == "delivery_date" and slot_events(answer)[STATE_SLOT]["unknown"] == []
    asked = []
    for _ in range(len(REQUIRED)):
        if requested is None:
            break
        asked.append(requested)
        tracker.user((ANSWERS | {"delivery_date": "不知道"})[requested])
        _, requested = form_step(tracker, call)
    assert asked == ["delivery_date", "delivery_address", "order_no"]
    status, answer = call(tracker.payload(SUBMIT))
    second = store.get_case(slot_events(answer)["case_number"])
    assert second is not None and second.fields["mall"] == "sh-zhenbei"
    assert second.transcript[0]["text"] == MULTI_FACT  # its own conversation, not the first complaint's


def test_submit_opens_the_case_with_every_field_and_notifies_staff(call: Call, store: Store) -> None:
    tracker = RasaTracker("tg-7")
    fields = {
        "description": "沙发坐了两个月就塌了", "name": "王", "phone": "13912345678", "mall": "sh-zhenbei",
        "brand": "顾家家居", "purchase_date": "2025-04-01", "amount": 12000, "delivery_date": "2025-04-05",
        "delivery_address": "上海市普陀区真北路1号", "order_no": "A20250401", "over_warranty": False,
        "expectation": ["return", "compensation"], "city": "上海", "priority": "important",
    }
    tracker.slots |= fields | {STATE_SLOT: {"priority_reasons": ["safety"], "corrections": [
        {"field": "phone", "old": "13900000000", "new": "13912345678", "at": NOW.isoformat()}]}}
    tracker.user("沙发坐了两个月就塌了", intent="complain")
    tracker.bot(ASK["name"])
    status, answer = call(tracker.payload(SUBMIT))
    assert status == 200, answer
    [case] = store.list_cases()
    assert (case.channel, case.customer_id, case.unrouted) == ("rasa", "tg-7", False)
    public = case.public_dict()
    assert {key: public[key] for key in fields} == fields
    events = [(event.kind, event.data) for event in store.get_case_events(case.id)]
    assert ("opened", {"channel": "rasa"}) in events
    assert ("graded", {"priority": "important", "rules": ["safety"]}) in events
    assert ("field_changed", {"field": "phone", "old": "13900000000", "new": "13912345678"}) in events
    notices = store.outbox_items(case_id=case.id)
    assert {item.channel for item in notices if item.kind == "staff_notification"} == {"telegram", "wecom"}
    assert case.number in texts(answer)[0]
    assert [line["role"] for line in case.transcript] == ["customer", "kesu"]


def test_submit_without_the_required_slots_is_rejected_in_rasas_format(call: Call, store: Store) -> None:
    tracker = RasaTracker()
    tracker.slots |= {"description": "沙发塌了", "name": "王"}
    status, answer = call(tracker.payload(SUBMIT))
    assert status == 400
    assert answer["action_name"] == SUBMIT and "phone" in answer["error"]
    assert store.list_cases() == []


def test_service_submit_takes_only_case_fields(settings: Settings, store: Store) -> None:
    service = build_service(settings, clock=lambda: NOW, store=store)
    with pytest.raises(ValueError, match="colour"):
        service.submit("rasa", "x", {"colour": "red"})
    with pytest.raises(ValueError, match="priority"):
        service.submit("rasa", "x", {"priority": "urgent"})
    assert store.list_cases() == []


# --------------------------------------------------------------------------- the /rasa/webhook route


@pytest.fixture
def client(settings: Settings) -> Http:
    return serve(settings)


def test_unknown_action_gets_rasa_sdks_error(client: Http) -> None:
    response = client.post("/rasa/webhook", json=RasaTracker().payload("action_does_not_exist"))
    assert response.status_code == 404  # rasa_sdk/endpoint.py: ActionNotFoundException
    assert response.json() == {"error": "No registered action found for name 'action_does_not_exist'.",
                               "action_name": "action_does_not_exist"}


def test_unreadable_body_and_missing_domain(client: Http) -> None:
    response = client.post("/rasa/webhook", content=b"not json", headers={"content-type": "application/json"})
    assert (response.status_code, response.json()) == (400, {"error": "Invalid body request"})
    payload = RasaTracker().payload(VALIDATE_FORM)
    del payload["domain"]  # Rasa sends only a digest; the action server asks for the domain with 449
    response = client.post("/rasa/webhook", json=payload | {"domain_digest": "abc"})
    assert response.status_code == 449 and response.json()["action_name"] == VALIDATE_FORM


def test_deflated_requests_are_accepted(client: Http) -> None:
    tracker = RasaTracker()
    tracker.set_slot("requested_slot", "phone")
    tracker.user("13912345678")
    body = zlib.compress(json.dumps(tracker.payload(VALIDATE_FORM)).encode())
    response = client.post("/rasa/webhook", content=body,
                           headers={"content-type": "application/json", "content-encoding": "deflate"})
    assert response.status_code == 200
    assert slot_events(response.json())["phone"] == "13912345678"


def test_actions_and_health_are_listed(client: Http) -> None:
    assert client.get("/rasa/health").json() == {"status": "ok"}
    assert sorted(item["name"] for item in client.get("/rasa/actions").json()) == [SUBMIT, VALIDATE_FORM]
    assert "rasa" in client.get("/healthz").json()["channels"]


def test_token_is_required_when_configured(db_url: str) -> None:
    settings = Settings(_env_file=None, database_url=db_url, rasa_token="s3cret")  # type: ignore[call-arg]
    tracker = RasaTracker()
    tracker.user("你好")
    client = serve(settings)
    assert client.post("/rasa/webhook", json=tracker.payload(VALIDATE_FORM)).status_code == 403
    assert client.post("/rasa/webhook?token=wrong", json=tracker.payload(VALIDATE_FORM)).status_code == 403
    assert client.post("/rasa/webhook?token=s3cret", json=tracker.payload(VALIDATE_FORM)).status_code == 200
    assert client.get("/rasa/actions").status_code == 403


def test_the_route_is_off_when_disabled(db_url: str) -> None:
    settings = Settings(_env_file=None, database_url=db_url, rasa_actions=False)  # type: ignore[call-arg]
    assert serve(settings).post("/rasa/webhook", json=RasaTracker().payload(SUBMIT)).status_code == 404


# --------------------------------------------------------------------------- python -m rasa_sdk


def test_actions_construct_without_arguments_and_build_nothing_at_import(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KESU_DATABASE_URL", f"sqlite:///{tmp_path / 'lazy.db'}")
    assert ValidateComplaintForm().name() == "validate_complaint_form"
    assert ValidateComplaintForm().form_name() == FORM
    assert ActionSubmitComplaint().name() == "action_submit_complaint"
    assert not (tmp_path / "lazy.db").exists()  # the service is built on first use, not before


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def test_python_m_rasa_sdk_serves_the_actions(tmp_path: Path, settings: Settings, store: Store) -> None:
    """rasa-sdk's own server (Sanic) with --actions handlers.rasa_actions, on loopback, bounded in time."""
    port = free_port()
    db = tmp_path / "standalone.db"
    env = os.environ | {"KESU_DATABASE_URL": f"sqlite:///{db}", "SANIC_HOST": "127.0.0.1",
                        "ACTION_SERVER_SANIC_WORKERS": "1"}
    log = (tmp_path / "server.log").open("wb")
    server = subprocess.Popen([sys.executable, "-m", "rasa_sdk", "--actions", "handlers.rasa_actions",
                               "--port", str(port)], cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            assert server.poll() is None, (tmp_path / "server.log").read_text()
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "rasa_sdk did not start within 30 s"
            time.sleep(0.2)
        names = sorted(item["name"] for item in httpx.get(f"{base}/actions", timeout=5).json())
        assert names == [SUBMIT, VALIDATE_FORM]

        tracker = RasaTracker()
        tracker.set_slot("requested_slot", "phone")
        tracker.user("1391234567")
        standalone = httpx.post(f"{base}/webhook", json=tracker.payload(VALIDATE_FORM), timeout=30)
        unknown = httpx.post(f"{base}/webhook", json=tracker.payload("action_nope"), timeout=30)
        client = serve(settings)
        in_process = client.post("/rasa/webhook", json=tracker.payload(VALIDATE_FORM))
        in_process_unknown = client.post("/rasa/webhook", json=tracker.payload("action_nope"))
        assert standalone.status_code == in_process.status_code == 200
        assert standalone.json()["responses"] == in_process.json()["responses"]
        assert slot_events(standalone.json())["phone"] is None
        assert (unknown.status_code, unknown.json()) == (in_process_unknown.status_code, in_process_unknown.json())

        tracker.slots |= {"description": "沙发塌了", "name": "王", "phone": "13912345678", "mall": "sh-zhenbei",
                          "brand": "顾家家居", "expectation": ["repair"], "city": "上海"}
        submitted = httpx.post(f"{base}/webhook", json=tracker.payload(SUBMIT), timeout=30)
        assert submitted.status_code == 200, submitted.text
        standalone_store = Store.from_url(f"sqlite:///{db}")
        try:
            [case] = standalone_store.list_cases()
        finally:
            standalone_store.close()
        assert case.channel == "rasa" and case.number in submitted.json()["responses"][0]["text"]
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=10)
        log.close()
