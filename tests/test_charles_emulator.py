"""Tests of the Charles contact API emulator, over real HTTP on 127.0.0.1."""

from __future__ import annotations

import datetime as dt
import email.utils
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from connector.emulators.charles import CharlesEmulator, Fault

API_KEY = "test-key-5f1c9a"
CONTACTS = "/api/v1beta/contacts"
REPO_ROOT = Path(__file__).resolve().parents[1]


def contact_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "external_reference_id": "003AAA",
        "source_type": "salesforce",
        "first_name": "Ada",
        "middle_name": "King",
        "last_name": "Lovelace",
        "tags": ["newsletter"],
        "custom_properties": {"plan": "gold"},
        "phone_numbers": [{"type": "mobile", "value": "+4911111122"}],
        "email_addresses": [{"type": "main", "value": "ada@example.com"}],
    }
    body.update(overrides)
    return body


@pytest.fixture
def emulator() -> Iterator[CharlesEmulator]:
    with CharlesEmulator(host="127.0.0.1", port=0, api_key=API_KEY) as emu:
        yield emu


@pytest.fixture
def client(emulator: CharlesEmulator) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=emulator.url, headers={"x-api-key": API_KEY}, timeout=10.0) as http_client:
        yield http_client


def error_fields(response: httpx.Response) -> list[str | None]:
    return [error["field"] for error in response.json()["errors"]]


# --------------------------------------------------------------------------- upserts


def test_upsert_creates_person(emulator: CharlesEmulator, client: httpx.Client) -> None:
    response = client.put(CONTACTS, json=contact_body())

    assert response.status_code == 200
    envelope = response.json()
    assert envelope["status"] == 200
    assert envelope["msg"] == "Upserted contact successfully."
    assert envelope["errors"] == []
    assert envelope["messages"] == []
    assert envelope["localized_messages"] == []
    assert envelope["request"]["host"] == emulator.url.removeprefix("http://")
    assert len(envelope["request"]["id"]) == 36
    person = envelope["data"]
    assert person["kind"] == "Contact"
    assert person["first_name"] == "Ada"
    assert person["middle_name"] == "King"
    assert person["last_name"] == "Lovelace"
    assert person["created_at"].endswith("Z")
    assert emulator.contacts() == [person]


def test_upsert_updates_same_person(emulator: CharlesEmulator, client: httpx.Client) -> None:
    first = client.put(CONTACTS, json=contact_body()).json()["data"]
    time.sleep(0.01)
    second = client.put(CONTACTS, json=contact_body(first_name="Augusta", last_name="King")).json()["data"]

    assert second["id"] == first["id"]
    assert second["created_at"] == first["created_at"]
    assert second["updated_at"] > first["updated_at"]
    assert second["first_name"] == "Augusta"
    assert second["last_name"] == "King"
    assert second["middle_name"] == "King"
    assert len(emulator.contacts()) == 1


def test_request_ids_differ(client: httpx.Client) -> None:
    first = client.put(CONTACTS, json=contact_body()).json()
    second = client.put(CONTACTS, json=contact_body()).json()

    assert first["request"]["id"] != second["request"]["id"]


def test_source_type_is_part_of_key(emulator: CharlesEmulator, client: httpx.Client) -> None:
    salesforce = client.put(CONTACTS, json=contact_body()).json()["data"]
    segment = client.put(CONTACTS, json=contact_body(source_type="segment")).json()["data"]

    assert salesforce["id"] != segment["id"]
    assert emulator.contact("003AAA")["id"] == salesforce["id"]
    assert emulator.contact("003AAA", source_type="segment")["id"] == segment["id"]
    assert emulator.contact("missing") is None


def test_tags_merge(client: httpx.Client) -> None:
    client.put(CONTACTS, json=contact_body(tags=["a", "b"]))
    person = client.put(CONTACTS, json=contact_body(tags=["c", "a", "c"])).json()["data"]

    assert person["tags"] == ["a", "b", "c"]


def test_tags_kept_when_omitted(client: httpx.Client) -> None:
    client.put(CONTACTS, json=contact_body(tags=["a"]))
    body = contact_body()
    del body["tags"]
    person = client.put(CONTACTS, json=body).json()["data"]

    assert person["tags"] == ["a"]


def test_custom_properties_merge(client: httpx.Client) -> None:
    client.put(CONTACTS, json=contact_body(custom_properties={"plan": "gold", "region": "north"}))
    person = client.put(CONTACTS, json=contact_body(custom_properties={"plan": "silver", "size": "xl"})).json()["data"]

    assert person["custom_properties"] == {"plan": "silver", "region": "north", "size": "xl"}


def test_phone_plus_stripped(client: httpx.Client) -> None:
    person = client.put(CONTACTS, json=contact_body()).json()["data"]

    assert len(person["phonenumbers"]) == 1
    phone = person["phonenumbers"][0]
    assert phone["value"] == "4911111122"
    assert phone["type"] == "mobile"
    assert phone["person"] == person["id"]
    assert len(phone["id"]) == 36


def test_phones_and_emails_accumulate(client: httpx.Client) -> None:
    client.put(CONTACTS, json=contact_body())
    body = contact_body(
        phone_numbers=[{"type": "mobile", "value": "+4911111122"}, {"type": "work", "value": "+4930123"}],
        email_addresses=[{"type": "other", "value": "ada@work.example"}],
    )
    person = client.put(CONTACTS, json=body).json()["data"]

    phones = [(phone["type"], phone["value"]) for phone in person["phonenumbers"]]
    emails = [(mail["type"], mail["value"]) for mail in person["emails"]]
    assert phones == [("mobile", "4911111122"), ("work", "4930123")]
    assert emails == [("main", "ada@example.com"), ("other", "ada@work.example")]


def test_last_request_in_payload(emulator: CharlesEmulator, client: httpx.Client) -> None:
    client.put(CONTACTS, json=contact_body(first_name="One"))
    second_body = contact_body(first_name="Two", tags=["vip"])
    client.put(CONTACTS, json=second_body)

    channel_users = emulator.contact("003AAA")["channel_users"]
    assert len(channel_users) == 1
    assert channel_users[0]["payload"] == second_body
    assert channel_users[0]["source_type"] == "salesforce"
    assert channel_users[0]["external_person_reference_id"] == "003AAA"
    assert emulator.upserts == [contact_body(first_name="One"), second_body]


def test_contacts_returns_copies(emulator: CharlesEmulator, client: httpx.Client) -> None:
    client.put(CONTACTS, json=contact_body())
    emulator.contacts()[0]["tags"].append("changed")
    emulator.upserts[0]["tags"].append("changed")

    assert emulator.contact("003AAA")["tags"] == ["newsletter"]
    assert emulator.upserts[0]["tags"] == ["newsletter"]


def test_query_string_ignored(client: httpx.Client) -> None:
    response = client.put(CONTACTS + "?dry=1", json=contact_body())

    assert response.status_code == 200


def test_chunked_body_accepted(client: httpx.Client) -> None:
    def chunks() -> Iterator[bytes]:
        encoded = json.dumps(contact_body()).encode()
        yield encoded[:20]
        yield encoded[20:]

    response = client.put(CONTACTS, content=chunks(), headers={"Content-Type": "application/json"})

    assert response.status_code == 200
    assert response.json()["data"]["first_name"] == "Ada"


# --------------------------------------------------------------------------- validation

# Marks a key that the case removes from the valid body.
REMOVE = object()

VALIDATION_CASES = [
    ("missing_reference", {"external_reference_id": REMOVE}, "external_reference_id"),
    ("empty_reference", {"external_reference_id": ""}, "external_reference_id"),
    ("numeric_reference", {"external_reference_id": 4911}, "external_reference_id"),
    ("missing_source", {"source_type": REMOVE}, "source_type"),
    ("blank_source", {"source_type": "  "}, "source_type"),
    ("numeric_first_name", {"first_name": 5}, "first_name"),
    ("null_middle_name", {"middle_name": None}, "middle_name"),
    ("list_last_name", {"last_name": ["x"]}, "last_name"),
    ("tags_not_array", {"tags": "vip"}, "tags"),
    ("tag_not_string", {"tags": ["ok", 3]}, "tags[1]"),
    ("properties_not_object", {"custom_properties": ["a"]}, "custom_properties"),
    ("property_not_string", {"custom_properties": {"plan": 1}}, "custom_properties.plan"),
    ("phones_not_array", {"phone_numbers": {"type": "mobile"}}, "phone_numbers"),
    ("phone_not_object", {"phone_numbers": ["+49"]}, "phone_numbers[0]"),
    ("phone_missing_value", {"phone_numbers": [{"type": "mobile"}]}, "phone_numbers[0].value"),
    ("phone_extra_key", {"phone_numbers": [{"type": "m", "value": "1", "x": "1"}]}, "phone_numbers[0].x"),
    ("email_type_number", {"email_addresses": [{"type": 1, "value": "a@b.example"}]}, "email_addresses[0].type"),
    ("singular_email_field", {"email_address": [{"type": "main", "value": "a@b.example"}]}, "email_address"),
    ("unknown_field", {"nickname": "Ada"}, "nickname"),
]


@pytest.mark.parametrize(
    ("changes", "field"),
    [case[1:] for case in VALIDATION_CASES],
    ids=[case[0] for case in VALIDATION_CASES],
)
def test_validation_error_names_field(
    emulator: CharlesEmulator, client: httpx.Client, changes: dict[str, Any], field: str
) -> None:
    body = contact_body(**changes)
    for key, value in changes.items():
        if value is REMOVE:
            del body[key]

    response = client.put(CONTACTS, json=body)

    assert response.status_code == 422
    envelope = response.json()
    assert envelope["status"] == 422
    assert envelope["data"] is None
    assert field in error_fields(response)
    assert emulator.contacts() == []
    assert emulator.upserts == []


def test_validation_lists_every_error(client: httpx.Client) -> None:
    response = client.put(CONTACTS, json={"first_name": 1, "tags": [None]})

    assert response.status_code == 422
    assert set(error_fields(response)) == {"external_reference_id", "source_type", "first_name", "tags[0]"}


def test_invalid_json_400(emulator: CharlesEmulator, client: httpx.Client) -> None:
    trailing_comma = b'{"external_reference_id": "1",}'
    response = client.put(CONTACTS, content=trailing_comma, headers={"Content-Type": "application/json"})

    assert response.status_code == 400
    assert response.json()["status"] == 400
    assert response.json()["data"] is None
    assert emulator.contacts() == []


def test_json_array_body_400(client: httpx.Client) -> None:
    response = client.put(CONTACTS, json=[contact_body()])

    assert response.status_code == 400
    assert "JSON object" in response.json()["msg"]


def test_empty_body_400(client: httpx.Client) -> None:
    response = client.put(CONTACTS, content=b"", headers={"Content-Type": "application/json"})

    assert response.status_code == 400


def test_wrong_content_type_415(client: httpx.Client) -> None:
    text_response = client.put(CONTACTS, content=json.dumps(contact_body()), headers={"Content-Type": "text/plain"})
    missing_response = client.put(CONTACTS, content=json.dumps(contact_body()).encode())

    assert text_response.status_code == 415
    assert text_response.json()["status"] == 415
    assert missing_response.status_code == 415


def test_content_type_charset_accepted(client: httpx.Client) -> None:
    response = client.put(
        CONTACTS,
        content=json.dumps(contact_body()),
        headers={"Content-Type": "application/json; charset=utf-8"},
    )

    assert response.status_code == 200


# --------------------------------------------------------------------------- authentication and routing


def test_missing_key_401(emulator: CharlesEmulator) -> None:
    response = httpx.put(emulator.url + CONTACTS, json=contact_body(), timeout=10.0)

    assert response.status_code == 401
    assert response.json()["status"] == 401
    assert response.json()["data"] is None
    assert error_fields(response) == ["x-api-key"]
    assert API_KEY not in response.text
    assert emulator.contacts() == []


def test_wrong_key_401(emulator: CharlesEmulator) -> None:
    wrong_key = "wrong-key-77d1"
    response = httpx.put(
        emulator.url + CONTACTS, json=contact_body(), headers={"x-api-key": wrong_key}, timeout=10.0
    )

    assert response.status_code == 401
    assert API_KEY not in response.text
    assert wrong_key not in response.text
    assert emulator.contacts() == []


def test_key_not_in_repr(emulator: CharlesEmulator) -> None:
    assert API_KEY not in repr(emulator)


def test_unknown_path_404(client: httpx.Client) -> None:
    response = client.put("/api/v1beta/contact", json=contact_body())

    assert response.status_code == 404
    assert response.json()["status"] == 404


def test_wrong_method_405(client: httpx.Client) -> None:
    response = client.post(CONTACTS, json=contact_body())

    assert response.status_code == 405
    assert response.headers["Allow"] == "PUT"
    assert response.json()["status"] == 405


# --------------------------------------------------------------------------- faults


def test_fault_429_retry_after(emulator: CharlesEmulator, client: httpx.Client) -> None:
    emulator.set_faults([Fault.status(429, retry_after=2)])

    limited = client.put(CONTACTS, json=contact_body())
    after = client.put(CONTACTS, json=contact_body())

    assert limited.status_code == 429
    assert limited.headers["Retry-After"] == "2"
    assert limited.json()["status"] == 429
    assert limited.json()["errors"] != []
    assert after.status_code == 200
    assert len(emulator.upserts) == 1


def test_fault_retry_after_http_date(emulator: CharlesEmulator, client: httpx.Client) -> None:
    when = dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
    emulator.set_faults([Fault.status(503, retry_after=when)])

    response = client.put(CONTACTS, json=contact_body())

    assert response.status_code == 503
    assert email.utils.parsedate_to_datetime(response.headers["Retry-After"]) == when


def test_fault_custom_body(emulator: CharlesEmulator, client: httpx.Client) -> None:
    emulator.set_faults([Fault.status(500, body={"detail": "boom"})])

    response = client.put(CONTACTS, json=contact_body())

    assert response.status_code == 500
    assert response.json() == {"detail": "boom"}


def test_fault_drop_transport_error(emulator: CharlesEmulator, client: httpx.Client) -> None:
    emulator.set_faults([Fault.drop()])

    with pytest.raises(httpx.TransportError):
        client.put(CONTACTS, json=contact_body())
    after = client.put(CONTACTS, json=contact_body())

    assert after.status_code == 200
    assert emulator.requests[0]["fault"] == "drop"
    assert emulator.requests[0]["status"] is None


def test_fault_timeout_client_raises(emulator: CharlesEmulator) -> None:
    emulator.set_faults([Fault.timeout(1.0)])

    with httpx.Client(headers={"x-api-key": API_KEY}, timeout=0.2) as impatient:
        with pytest.raises(httpx.TimeoutException):
            impatient.put(emulator.url + CONTACTS, json=contact_body())

    # The emulator finishes the request after the delay, as a slow server would.
    deadline = time.monotonic() + 10.0
    while emulator.contact("003AAA") is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert emulator.contact("003AAA") is not None


def test_fault_malformed_not_json(emulator: CharlesEmulator, client: httpx.Client) -> None:
    emulator.set_faults([Fault.malformed(), Fault.malformed(status=502)])

    ok_status = client.put(CONTACTS, json=contact_body())
    gateway = client.put(CONTACTS, json=contact_body())

    assert ok_status.status_code == 200
    assert ok_status.headers["Content-Type"].startswith("text/html")
    with pytest.raises(json.JSONDecodeError):
        json.loads(ok_status.text)
    assert gateway.status_code == 502
    with pytest.raises(json.JSONDecodeError):
        json.loads(gateway.text)
    assert emulator.upserts == []


def test_fault_script_in_order(emulator: CharlesEmulator, client: httpx.Client) -> None:
    script = [Fault.status(500), Fault.status(503), Fault.drop(), Fault.malformed(502), Fault.status(401)]
    emulator.set_faults(script)

    statuses: list[int | None] = []
    for _ in range(len(script) + 2):
        try:
            statuses.append(client.put(CONTACTS, json=contact_body()).status_code)
        except httpx.TransportError:
            statuses.append(None)

    assert statuses == [500, 503, None, 502, 401, 200, 200]
    logged = [entry["fault"] for entry in emulator.requests]
    assert logged == ["status_500", "status_503", "drop", "malformed", "status_401", None, None]


def test_fault_rate_roughly_honoured(emulator: CharlesEmulator, client: httpx.Client) -> None:
    emulator.set_faults([Fault.status(503), Fault.status(500)], rate=0.3, seed=1234)

    statuses = [client.put(CONTACTS, json=contact_body()).status_code for _ in range(500)]

    failures = sum(1 for status in statuses if status != 200)
    # Expected 150 failures with a standard deviation of about 10.
    assert 100 <= failures <= 200
    assert statuses.count(503) > 0
    assert statuses.count(500) > 0
    assert set(statuses) == {200, 500, 503}


def test_fault_rate_seed_repeatable(emulator: CharlesEmulator, client: httpx.Client) -> None:
    def run_with_seed(seed: int) -> list[str | None]:
        emulator.reset()
        emulator.set_faults([Fault.status(503), Fault.status(429)], rate=0.5, seed=seed)
        for _ in range(40):
            client.put(CONTACTS, json=contact_body())
        return [entry["fault"] for entry in emulator.requests]

    first = run_with_seed(7)
    second = run_with_seed(7)
    other = run_with_seed(8)

    assert first == second
    assert first != other


def test_faults_cleared(emulator: CharlesEmulator, client: httpx.Client) -> None:
    emulator.set_faults([Fault.status(500)], rate=0.99, seed=1)
    emulator.set_faults(None)

    statuses = [client.put(CONTACTS, json=contact_body()).status_code for _ in range(20)]

    assert statuses == [200] * 20


@pytest.mark.parametrize(
    "build",
    [
        lambda: Fault.status(200),
        lambda: Fault.status(429, retry_after=-1),
        lambda: Fault.timeout(0),
        lambda: Fault.malformed(status=99),
        lambda: Fault.from_dict({"kind": "explode"}),
        lambda: Fault.from_dict({"kind": "status"}),
        lambda: Fault.from_dict({"kind": "drop", "code": 500}),
    ],
    ids=["status_200", "negative_retry", "zero_timeout", "malformed_99", "unknown_kind", "no_code", "extra_key"],
)
def test_fault_invalid_rejected(build: Any) -> None:
    with pytest.raises(ValueError):
        build()


def test_set_faults_invalid_rate(emulator: CharlesEmulator) -> None:
    with pytest.raises(ValueError):
        emulator.set_faults([Fault.drop()], rate=1.5)
    with pytest.raises(ValueError):
        emulator.set_faults([], rate=0.5)


# --------------------------------------------------------------------------- latency, logging, concurrency


def test_latency_applied(emulator: CharlesEmulator, client: httpx.Client) -> None:
    emulator.set_latency(0.2)

    started = time.perf_counter()
    response = client.put(CONTACTS, json=contact_body())
    elapsed = time.perf_counter() - started

    assert response.status_code == 200
    assert elapsed >= 0.2


def test_latency_from_constructor() -> None:
    with CharlesEmulator(api_key=API_KEY, latency_s=0.15) as emu:
        started = time.perf_counter()
        response = httpx.put(emu.url + CONTACTS, json=contact_body(), headers={"x-api-key": API_KEY}, timeout=10.0)
        elapsed = time.perf_counter() - started

    assert response.status_code == 200
    assert elapsed >= 0.15


def test_negative_latency_rejected(emulator: CharlesEmulator) -> None:
    with pytest.raises(ValueError):
        emulator.set_latency(-0.1)


def test_requests_log_fields(emulator: CharlesEmulator, client: httpx.Client) -> None:
    before = time.monotonic()
    client.put(CONTACTS, json=contact_body())
    client.put(CONTACTS, content=b"not json", headers={"Content-Type": "application/json"})
    client.get("/_emulator/requests")

    log = emulator.requests
    assert len(log) == 2
    assert log[0]["method"] == "PUT"
    assert log[0]["path"] == CONTACTS
    assert log[0]["status"] == 200
    assert log[0]["external_reference_id"] == "003AAA"
    assert log[0]["fault"] is None
    assert log[0]["at"] >= before
    assert log[1]["status"] == 400
    assert log[1]["external_reference_id"] is None


def test_concurrent_upserts_all_stored(emulator: CharlesEmulator) -> None:
    threads_count = 32
    per_thread = 20
    failures: list[str] = []

    def worker(worker_index: int) -> None:
        with httpx.Client(base_url=emulator.url, headers={"x-api-key": API_KEY}, timeout=30.0) as http_client:
            for item in range(per_thread):
                body = contact_body(external_reference_id=f"w{worker_index}-{item}")
                response = http_client.put(CONTACTS, json=body)
                if response.status_code != 200:
                    failures.append(f"{body['external_reference_id']}: {response.status_code}")
            shared = contact_body(external_reference_id="shared", tags=[f"t{worker_index}"])
            response = http_client.put(CONTACTS, json=shared)
            if response.status_code != 200:
                failures.append(f"shared: {response.status_code}")

    workers = [threading.Thread(target=worker, args=(index,)) for index in range(threads_count)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()

    assert failures == []
    assert len(emulator.contacts()) == threads_count * per_thread + 1
    assert len(emulator.upserts) == threads_count * (per_thread + 1)
    shared_tags = set(emulator.contact("shared")["tags"])
    assert shared_tags == {f"t{index}" for index in range(threads_count)}


def test_reject_then_accept(emulator: CharlesEmulator, client: httpx.Client) -> None:
    emulator.reject("003AAA", status=409, message="Duplicate person.")

    rejected = client.put(CONTACTS, json=contact_body())
    other = client.put(CONTACTS, json=contact_body(external_reference_id="003BBB"))
    emulator.accept("003AAA")
    accepted = client.put(CONTACTS, json=contact_body())

    assert rejected.status_code == 409
    assert rejected.json()["status"] == 409
    assert rejected.json()["msg"] == "Duplicate person."
    assert error_fields(rejected) == ["external_reference_id"]
    assert other.status_code == 200
    assert accepted.status_code == 200
    assert [person["channel_users"][0]["external_person_reference_id"] for person in emulator.contacts()] == [
        "003BBB",
        "003AAA",
    ]


def test_reset_forgets_state(emulator: CharlesEmulator, client: httpx.Client) -> None:
    client.put(CONTACTS, json=contact_body())
    emulator.set_latency(5.0)
    emulator.set_faults([Fault.status(500)])
    emulator.reject("003AAA")

    emulator.reset()
    response = client.put(CONTACTS, json=contact_body())

    assert response.status_code == 200
    assert len(emulator.contacts()) == 1
    assert len(emulator.upserts) == 1
    assert len(emulator.requests) == 1


def test_stop_closes_connections(emulator: CharlesEmulator, client: httpx.Client) -> None:
    assert client.put(CONTACTS, json=contact_body()).status_code == 200

    emulator.stop()

    with pytest.raises(httpx.TransportError):
        client.put(CONTACTS, json=contact_body())


def test_stop_wakes_sleeping_handler(emulator: CharlesEmulator) -> None:
    emulator.set_latency(60.0)
    errors: list[Exception] = []

    def send() -> None:
        try:
            httpx.put(emulator.url + CONTACTS, json=contact_body(), headers={"x-api-key": API_KEY}, timeout=120.0)
        except httpx.TransportError as error:
            errors.append(error)

    sender = threading.Thread(target=send)
    sender.start()
    deadline = time.monotonic() + 10.0
    while emulator.in_flight == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert emulator.in_flight == 1
    emulator.stop()
    sender.join(timeout=30.0)

    assert not sender.is_alive()
    assert len(errors) == 1


# --------------------------------------------------------------------------- admin HTTP endpoints


def test_admin_contacts_and_requests(client: httpx.Client) -> None:
    client.put(CONTACTS, json=contact_body())
    client.put(CONTACTS, json=contact_body(external_reference_id=""))

    contacts = client.get("/_emulator/contacts").json()
    requests = client.get("/_emulator/requests").json()

    assert contacts["count"] == 1
    assert contacts["contacts"][0]["first_name"] == "Ada"
    assert requests["count"] == 2
    assert requests["by_status"] == {"200": 1, "422": 1}
    assert requests["in_flight"] == 0


def test_admin_faults(client: httpx.Client) -> None:
    faults = [
        {"kind": "status", "code": 429, "retry_after": "1"},
        {"kind": "drop"},
        {"kind": "malformed", "status": 502},
    ]
    setup = client.post("/_emulator/faults", json={"faults": faults})

    limited = client.put(CONTACTS, json=contact_body())
    with pytest.raises(httpx.TransportError):
        client.put(CONTACTS, json=contact_body())
    malformed = client.put(CONTACTS, json=contact_body())
    normal = client.put(CONTACTS, json=contact_body())

    assert setup.status_code == 200
    assert limited.status_code == 429
    assert limited.headers["Retry-After"] == "1"
    assert malformed.status_code == 502
    assert normal.status_code == 200
    by_fault = client.get("/_emulator/requests").json()["by_fault"]
    assert by_fault == {"status_429": 1, "drop": 1, "malformed": 1}


def test_admin_fault_rate(emulator: CharlesEmulator, client: httpx.Client) -> None:
    setup = client.post(
        "/_emulator/faults", json={"faults": [{"kind": "status", "code": 500}], "rate": 0.5, "seed": 3}
    )
    statuses = [client.put(CONTACTS, json=contact_body()).status_code for _ in range(100)]

    assert setup.status_code == 200
    assert 25 <= statuses.count(500) <= 75
    assert statuses.count(200) + statuses.count(500) == 100


def test_admin_latency(client: httpx.Client) -> None:
    setup = client.post("/_emulator/latency", json={"seconds": 0.2})

    started = time.perf_counter()
    response = client.put(CONTACTS, json=contact_body())
    elapsed = time.perf_counter() - started

    assert setup.status_code == 200
    assert response.status_code == 200
    assert elapsed >= 0.2


def test_admin_reject_accept(client: httpx.Client) -> None:
    reject = client.post("/_emulator/reject", json={"external_reference_id": "003AAA", "status": 422})
    rejected = client.put(CONTACTS, json=contact_body())
    accept = client.post("/_emulator/accept", json={"external_reference_id": "003AAA"})
    accepted = client.put(CONTACTS, json=contact_body())

    assert reject.status_code == 200
    assert rejected.status_code == 422
    assert accept.status_code == 200
    assert accepted.status_code == 200


def test_admin_reset(emulator: CharlesEmulator, client: httpx.Client) -> None:
    client.put(CONTACTS, json=contact_body())
    client.post("/_emulator/faults", json={"faults": [{"kind": "status", "code": 500}]})

    response = client.post("/_emulator/reset")

    assert response.status_code == 200
    assert emulator.contacts() == []
    assert emulator.requests == []
    assert client.put(CONTACTS, json=contact_body()).status_code == 200


def test_admin_needs_no_key_or_faults(emulator: CharlesEmulator) -> None:
    emulator.set_faults([Fault.drop()])

    response = httpx.get(emulator.url + "/_emulator/requests", timeout=10.0)

    assert response.status_code == 200
    assert response.json()["count"] == 0


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("POST", "/_emulator/latency", {"seconds": -1}, 400),
        ("POST", "/_emulator/latency", {}, 400),
        ("POST", "/_emulator/faults", {"faults": [{"kind": "explode"}]}, 400),
        ("POST", "/_emulator/faults", {"faults": [{"kind": "drop"}], "rate": 2}, 400),
        ("POST", "/_emulator/reject", {"status": 422}, 400),
        ("POST", "/_emulator/reject", {"external_reference_id": "1", "status": 200}, 400),
        ("GET", "/_emulator/faults", None, 405),
        ("GET", "/_emulator/unknown", None, 404),
    ],
    ids=["negative_latency", "no_seconds", "bad_kind", "bad_rate", "no_key", "ok_status", "wrong_method", "unknown"],
)
def test_admin_bad_request(client: httpx.Client, method: str, path: str, body: Any, status: int) -> None:
    response = client.request(method, path, json=body)

    assert response.status_code == status
    assert "error" in response.json()


# --------------------------------------------------------------------------- command line


def read_line(stream: Any, timeout_s: float) -> str:
    ready, _, _ = select.select([stream], [], [], timeout_s)
    if not ready:
        raise AssertionError(f"no output from the emulator within {timeout_s} s")
    return stream.readline()


def test_cli_ready_and_sigterm() -> None:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "connector.emulators.charles",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--api-key",
            API_KEY,
            "--latency-ms",
            "0",
        ],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        ready = json.loads(read_line(process.stdout, 30.0))
        response = httpx.put(ready["url"] + CONTACTS, json=contact_body(), headers={"x-api-key": API_KEY}, timeout=10.0)
        process.send_signal(signal.SIGTERM)
        exit_code = process.wait(timeout=30.0)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()
        process.stderr.close()

    assert ready["event"] == "charles_emulator.ready"
    assert ready["url"].startswith("http://127.0.0.1:")
    assert response.status_code == 200
    assert exit_code == 0


def test_cli_sigint_exits_zero() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "connector.emulators.charles", "--port", "0"],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        ready = json.loads(read_line(process.stdout, 30.0))
        process.send_signal(signal.SIGINT)
        exit_code = process.wait(timeout=30.0)
        remaining = process.stdout.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()

    assert ready["event"] == "charles_emulator.ready"
    assert exit_code == 0
    assert remaining == ""


# --------------------------------------------------------------------------- counting without storing


def test_no_store_counts_without_keeping() -> None:
    with CharlesEmulator(api_key=API_KEY, store=False) as emulator, httpx.Client(
        base_url=emulator.url, headers={"x-api-key": API_KEY}, timeout=10.0
    ) as client:
        first = client.put(CONTACTS, json=contact_body())
        second = client.put(CONTACTS, json=contact_body(last_name="Byron"))
        invalid = client.put(CONTACTS, json=contact_body(external_reference_id=""))
        counts = client.get("/_emulator/requests").json()

        assert first.status_code == 200
        assert second.json()["data"]["last_name"] == "Byron"
        assert second.json()["data"]["id"] != first.json()["data"]["id"]
        assert invalid.status_code == 422
        assert emulator.contacts() == []
        assert emulator.upserts == []
        assert emulator.requests == []
        assert emulator.request_count == 3
        assert emulator.upsert_count == 2
        assert counts["count"] == 3
        assert counts["by_status"] == {"200": 2, "422": 1}
        assert counts["upserts"] == 2


def test_no_store_reset_clears_counts() -> None:
    with CharlesEmulator(api_key=API_KEY, store=False) as emulator:
        httpx.put(emulator.url + CONTACTS, json=contact_body(), headers={"x-api-key": API_KEY}, timeout=10.0)
        emulator.reset()

        assert emulator.request_count == 0
        assert emulator.upsert_count == 0


def test_store_counts_match_log(emulator: CharlesEmulator, client: httpx.Client) -> None:
    client.put(CONTACTS, json=contact_body())
    client.put(CONTACTS, json=contact_body())

    assert emulator.request_count == len(emulator.requests) == 2
    assert emulator.upsert_count == len(emulator.upserts) == 2


def test_cli_no_store_flag() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "connector.emulators.charles", "--port", "0", "--api-key", API_KEY, "--no-store"],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        ready = json.loads(read_line(process.stdout, 30.0))
        httpx.put(ready["url"] + CONTACTS, json=contact_body(), headers={"x-api-key": API_KEY}, timeout=10.0)
        contacts = httpx.get(ready["url"] + "/_emulator/contacts", timeout=10.0).json()
        counts = httpx.get(ready["url"] + "/_emulator/requests", timeout=10.0).json()
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30.0)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()

    assert contacts["count"] == 0
    assert counts["upserts"] == 1
