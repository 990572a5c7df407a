"""Tests of the Salesforce REST API emulator, through real HTTPS requests and simple-salesforce."""

from __future__ import annotations

import datetime as dt
import http.client
import json
import queue
import re
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import jwt
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import given, settings
from hypothesis import strategies as st
from simple_salesforce import Salesforce

from connector.emulators.salesforce import SalesforceEmulator

UTC = dt.timezone.utc
API = "/services/data/v62.0"
PROJECT_ROOT = Path(__file__).resolve().parents[1]
DATETIME_FORMAT = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}\+0000")
LOCATOR_URL = re.compile(r"/services/data/v62\.0/query/01g[A-Za-z0-9]{15}-\d+")

# The 59 standard Contact fields of a recorded Developer Edition org.
STANDARD_CONTACT_FIELDS = (
    "Id", "IsDeleted", "MasterRecordId", "AccountId", "LastName", "FirstName", "Salutation",
    "Name", "OtherStreet", "OtherCity", "OtherState", "OtherPostalCode", "OtherCountry", "OtherLatitude",
    "OtherLongitude", "OtherGeocodeAccuracy", "OtherAddress", "MailingStreet", "MailingCity",
    "MailingState", "MailingPostalCode", "MailingCountry", "MailingLatitude", "MailingLongitude",
    "MailingGeocodeAccuracy", "MailingAddress", "Phone", "Fax", "MobilePhone", "HomePhone",
    "OtherPhone", "AssistantPhone", "ReportsToId", "Email", "Title", "Department", "AssistantName",
    "LeadSource", "Birthdate", "Description", "OwnerId", "CreatedDate", "CreatedById", "LastModifiedDate",
    "LastModifiedById", "SystemModstamp", "LastActivityDate", "LastCURequestDate", "LastCUUpdateDate",
    "LastViewedDate", "LastReferencedDate", "EmailBouncedReason", "EmailBouncedDate", "IsEmailBounced",
    "PhotoUrl", "Jigsaw", "JigsawContactId", "CleanStatus", "IndividualId",
)


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def expected_checksum(id15: str) -> str:
    """Compute the case-checksum suffix independently of the emulator code."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"
    suffix = ""
    for chunk in (id15[0:5], id15[5:10], id15[10:15]):
        index = sum(1 << position for position, char in enumerate(chunk) if char.isupper())
        suffix += alphabet[index]
    return suffix


def fetch_token(emu: SalesforceEmulator) -> str:
    response = requests.post(
        f"{emu.url}/services/oauth2/token",
        data={"grant_type": "client_credentials"},
        auth=(emu.client_id, emu.client_secret),
        verify=emu.ca_file,
        timeout=10,
    )
    assert response.status_code == 200, response.text
    return response.json()["access_token"]


def api_get(
    emu: SalesforceEmulator, token: str, path: str, params: dict | None = None, headers: dict | None = None
) -> requests.Response:
    all_headers = {"Authorization": f"Bearer {token}", **(headers or {})}
    url = path if path.startswith("http") else f"{emu.url}{path}"
    return requests.get(url, params=params, headers=all_headers, verify=emu.ca_file, timeout=30)


def run_query(
    emu: SalesforceEmulator, token: str, soql: str, *, include_deleted: bool = False, headers: dict | None = None
) -> requests.Response:
    resource = "queryAll" if include_deleted else "query"
    return api_get(emu, token, f"{API}/{resource}", {"q": soql}, headers)


def query_error(emu: SalesforceEmulator, token: str, soql: str) -> tuple[int, dict]:
    response = run_query(emu, token, soql)
    body = response.json()
    assert isinstance(body, list), body
    return response.status_code, body[0]


def make_salesforce(emu: SalesforceEmulator, token: str) -> Salesforce:
    return Salesforce(instance_url=emu.url, session_id=token, session=requests.Session(), version="62.0")


@pytest.fixture
def emu():
    with SalesforceEmulator() as emulator:
        yield emulator


@pytest.fixture
def empty_emu():
    with SalesforceEmulator(seed_files=[]) as emulator:
        yield emulator


@pytest.fixture
def token(emu: SalesforceEmulator) -> str:
    return fetch_token(emu)


@pytest.fixture(scope="module")
def rsa_keys() -> tuple[bytes, bytes]:
    """A private key PEM for signing JWT assertions and the matching public key PEM."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private_pem, public_pem


def jwt_assertion(private_pem: bytes, **claims) -> str:
    payload = {
        "iss": "emulator-client-id",
        "sub": "integration@example.com",
        "aud": "https://login.salesforce.com",
        "exp": int(time.time()) + 180,
        **claims,
    }
    return jwt.encode(payload, private_pem, algorithm="RS256")


def post_jwt(emu: SalesforceEmulator, assertion: str) -> requests.Response:
    return requests.post(
        f"{emu.url}/services/oauth2/token",
        data={"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": assertion},
        verify=emu.ca_file,
        timeout=10,
    )


# ---------------------------------------------------------------------------------------------
# OAuth token endpoint and sessions
# ---------------------------------------------------------------------------------------------


def test_client_credentials_basic_auth(emu):
    response = requests.post(
        f"{emu.url}/services/oauth2/token",
        data={"grant_type": "client_credentials"},
        auth=("emulator-client-id", "emulator-client-secret"),
        verify=emu.ca_file,
        timeout=10,
    )

    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json;charset=UTF-8"
    body = response.json()
    assert set(body) == {"access_token", "signature", "scope", "instance_url", "id", "token_type", "issued_at"}
    assert body["instance_url"] == emu.url
    assert body["token_type"] == "Bearer"
    assert re.fullmatch(r"\d{13}", body["issued_at"])
    assert body["access_token"].startswith("00D")


def test_client_credentials_form_fields(emu):
    response = requests.post(
        f"{emu.url}/services/oauth2/token",
        data={
            "grant_type": "client_credentials",
            "client_id": "emulator-client-id",
            "client_secret": "emulator-client-secret",
        },
        verify=emu.ca_file,
        timeout=10,
    )

    assert response.status_code == 200
    assert "expires_in" not in response.json()


@pytest.mark.parametrize(
    ("client_id", "client_secret", "error"),
    [
        ("emulator-client-id", "wrong-secret", "invalid_client"),
        ("unknown-client", "emulator-client-secret", "invalid_client_id"),
    ],
)
def test_client_credentials_rejected(emu, client_id, client_secret, error):
    response = requests.post(
        f"{emu.url}/services/oauth2/token",
        data={"grant_type": "client_credentials"},
        auth=(client_id, client_secret),
        verify=emu.ca_file,
        timeout=10,
    )

    assert response.status_code == 400
    body = response.json()
    assert isinstance(body, dict)
    assert body["error"] == error
    assert body["error_description"]


def test_unsupported_grant_type(emu):
    response = requests.post(
        f"{emu.url}/services/oauth2/token",
        data={"grant_type": "authorization_code", "code": "abc"},
        verify=emu.ca_file,
        timeout=10,
    )

    assert response.status_code == 400
    assert response.json()["error"] == "unsupported_grant_type"


def test_jwt_bearer_grant(rsa_keys):
    private_pem, public_pem = rsa_keys
    with SalesforceEmulator(jwt_public_key_pem=public_pem, seed_files=[]) as emu:
        response = post_jwt(emu, jwt_assertion(private_pem))

        assert response.status_code == 200, response.text
        body = response.json()
        assert body["instance_url"] == emu.url
        assert "expires_in" not in body
        limits = api_get(emu, body["access_token"], f"{API}/limits")
        assert limits.status_code == 200


@pytest.mark.parametrize(
    ("claims", "error"),
    [
        ({"sub": "someone-else@example.com"}, "invalid_grant"),
        ({"exp": int(time.time()) - 10}, "invalid_grant"),
        ({"iss": "another-client"}, "invalid_client_id"),
    ],
)
def test_jwt_bearer_bad_claims(rsa_keys, claims, error):
    private_pem, public_pem = rsa_keys
    with SalesforceEmulator(jwt_public_key_pem=public_pem, seed_files=[]) as emu:
        response = post_jwt(emu, jwt_assertion(private_pem, **claims))

    assert response.status_code == 400
    assert response.json()["error"] == error


def test_jwt_bearer_wrong_key(rsa_keys):
    _, public_pem = rsa_keys
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    other_pem = other_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with SalesforceEmulator(jwt_public_key_pem=public_pem, seed_files=[]) as emu:
        response = post_jwt(emu, jwt_assertion(other_pem))

    assert response.status_code == 400
    assert response.json()["error"] == "invalid_grant"


def test_jwt_bearer_without_public_key(rsa_keys, empty_emu):
    private_pem, _ = rsa_keys

    response = post_jwt(empty_emu, jwt_assertion(private_pem))

    assert response.status_code == 400
    assert response.json()["error"] == "invalid_grant"


def test_expired_tokens_get_401(emu, token):
    assert api_get(emu, token, f"{API}/limits").status_code == 200

    emu.expire_all_tokens()
    response = api_get(emu, token, f"{API}/limits")

    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Token"
    assert response.json() == [{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}]


def test_issued_tokens_listed(emu):
    first = fetch_token(emu)
    emu.expire_all_tokens()
    second = fetch_token(emu)

    assert emu.issued_tokens() == [first, second]


def test_missing_token_gets_401(emu):
    response = requests.get(f"{emu.url}{API}/limits", verify=emu.ca_file, timeout=10)

    assert response.status_code == 401
    assert response.json()[0]["errorCode"] == "INVALID_SESSION_ID"


def test_token_lifetime_ends(emu, token):
    emu.advance(2 * 3600 + 1)

    response = api_get(emu, token, f"{API}/limits")

    assert response.status_code == 401


def test_simple_salesforce_raises_expired_session(emu, token):
    from simple_salesforce.exceptions import SalesforceExpiredSession

    sf = make_salesforce(emu, token)
    emu.expire_all_tokens()

    with pytest.raises(SalesforceExpiredSession):
        sf.query("SELECT Id FROM Contact", verify=emu.ca_file)


# ---------------------------------------------------------------------------------------------
# Seeded data and record shape
# ---------------------------------------------------------------------------------------------


def test_seeded_contact_count(emu, token):
    count = run_query(emu, token, "SELECT COUNT() FROM Contact").json()
    rows = run_query(emu, token, "SELECT Id FROM Contact").json()

    assert count == {"totalSize": 162, "done": True, "records": []}
    assert rows["totalSize"] == 162
    assert rows["done"] is True
    assert len(rows["records"]) == 162


def test_seeded_ids_have_checksums(emu):
    ids = [record["Id"] for record in emu.records("Contact")]

    assert len(set(ids)) == 162
    for record_id in ids:
        assert len(record_id) == 18
        assert record_id.startswith("003")
        assert record_id[15:] == expected_checksum(record_id[:15])


def test_seeded_modstamps_shared(emu):
    stamps = Counter(record["SystemModstamp"] for record in emu.records("Contact"))

    assert max(stamps.values()) == 5
    assert len(stamps) == 33  # 162 records in groups of five
    assert all(DATETIME_FORMAT.fullmatch(stamp) for stamp in stamps)


def test_seed_base_time_is_used():
    base = dt.datetime(2025, 1, 23, 10, 26, 15, tzinfo=UTC)
    emu = SalesforceEmulator(seed_base_time=base)

    stamps = sorted({record["SystemModstamp"] for record in emu.records("Contact")})

    assert stamps[0] == "2025-01-23T10:26:15.000+0000"
    assert stamps[1] == "2025-01-23T10:26:16.000+0000"


def test_seeded_account_references(emu, token):
    body = run_query(
        emu, token, "SELECT Id, Account.Name FROM Contact WHERE Email LIKE '%@demo.net' ORDER BY Account.Name"
    ).json()
    names = [record["Account"]["Name"] for record in body["records"]]
    other = run_query(emu, token, "SELECT Account.Name FROM Contact WHERE Email = 'fraydadowsing@example.com'").json()

    assert names == ["Sample Account 1"] * 3 + ["Sample Account 2"] * 3
    first_account = body["records"][0]["Account"]
    assert first_account["attributes"]["type"] == "Account"
    assert first_account["attributes"]["url"].startswith(f"{API}/sobjects/Account/001")
    assert other["records"][0]["Account"] is None


def test_nested_relationship_fields(emu, token):
    body = run_query(
        emu,
        token,
        "SELECT Name, Owner.Name, Account.Name, Account.Owner.Username FROM Contact WHERE Name = 'Amy Taylor'",
    ).json()
    record = body["records"][0]

    assert list(record) == ["attributes", "Name", "Owner", "Account"]
    assert record["Owner"]["attributes"]["type"] == "User"
    assert record["Owner"]["Name"] == "Integration User"
    assert list(record["Account"]) == ["attributes", "Name", "Owner"]
    assert record["Account"]["Owner"]["Username"] == "integration@example.com"


def test_record_shape(emu, token):
    body = run_query(
        emu,
        token,
        "select id, lastname, birthdate, isdeleted, systemmodstamp, mailingaddress, title, "
        "external_id__c from contact where email = 'fraydadowsing@example.com'",
    ).json()
    record = body["records"][0]

    assert list(record) == [
        "attributes", "Id", "LastName", "Birthdate", "IsDeleted", "SystemModstamp",
        "MailingAddress", "Title", "External_Id__c",
    ]
    assert record["attributes"] == {"type": "Contact", "url": f"{API}/sobjects/Contact/{record['Id']}"}
    assert record["LastName"] == "Dowsing"
    assert record["Birthdate"] == "1994-11-19"
    assert record["IsDeleted"] is False
    assert DATETIME_FORMAT.fullmatch(record["SystemModstamp"])
    assert record["Title"] is None
    assert record["External_Id__c"] == "10008756"
    assert record["MailingAddress"] == {
        "city": "Honolulu",
        "country": "United States",
        "geocodeAccuracy": None,
        "latitude": None,
        "longitude": None,
        "postalCode": "96815",
        "state": "Hawaii",
        "street": "94046 Grasskamp Junction",
    }


def test_stored_record_has_every_field(emu):
    record = emu.records("Contact")[0]

    assert set(STANDARD_CONTACT_FIELDS) <= set(record)
    assert record["OwnerId"].startswith("005")
    assert record["MasterRecordId"] is None
    assert record["Fax"] is None


def test_date_header_follows_clock(emu, token):
    emu.set_now(dt.datetime(2025, 1, 23, 10, 30, tzinfo=UTC))

    response = api_get(emu, token, f"{API}/limits")

    assert response.headers["Date"].startswith("Thu, 23 Jan 2025 10:30:")
    assert response.headers["Date"].endswith(" GMT")


# ---------------------------------------------------------------------------------------------
# Paging
# ---------------------------------------------------------------------------------------------


def test_paging_with_shared_modstamp():
    stamp = dt.datetime(2025, 1, 23, 10, 26, 15, tzinfo=UTC)
    with SalesforceEmulator(seed_files=[], page_size=200) as emu:
        created = {emu.create_record("Contact", {"LastName": f"Shared{i}"}, modstamp=stamp) for i in range(1000)}
        token = fetch_token(emu)
        sf = make_salesforce(emu, token)

        first = sf.query("SELECT Id FROM Contact WHERE SystemModstamp = 2025-01-23T10:26:15Z", verify=emu.ca_file)
        records = list(
            sf.query_all_iter(
                "SELECT Id, SystemModstamp FROM Contact ORDER BY SystemModstamp, Id", verify=emu.ca_file
            )
        )
        page_requests = [entry for entry in emu.request_log if "/query/01g" in entry["path"]]

    assert first["totalSize"] == 1000
    assert len(first["records"]) == 200
    assert first["done"] is False
    assert LOCATOR_URL.fullmatch(first["nextRecordsUrl"])
    assert first["nextRecordsUrl"].endswith("-200")
    assert len(records) == 1000
    assert {record["Id"] for record in records} == created
    assert len(page_requests) == 4


def test_single_page_when_batch_fits(emu, token):
    body = run_query(emu, token, "SELECT Id FROM Contact", headers={"Sforce-Query-Options": "batchSize=200"}).json()

    assert body["done"] is True
    assert "nextRecordsUrl" not in body
    assert len(body["records"]) == 162


def test_every_page_repeats_total_size():
    with SalesforceEmulator(page_size=50) as emu:
        token = fetch_token(emu)
        page = run_query(emu, token, "SELECT Id FROM Contact").json()
        sizes = [page["totalSize"]]
        while not page["done"]:
            page = api_get(emu, token, page["nextRecordsUrl"]).json()
            sizes.append(page["totalSize"])

    assert sizes == [162, 162, 162, 162]
    assert "nextRecordsUrl" not in page


def test_locator_readable_via_query_all():
    with SalesforceEmulator(page_size=100) as emu:
        token = fetch_token(emu)
        first = run_query(emu, token, "SELECT Id FROM Contact").json()
        locator_path = first["nextRecordsUrl"].replace("/query/", "/queryAll/")
        second = api_get(emu, token, locator_path).json()

    assert len(second["records"]) == 62
    assert second["done"] is True


@pytest.mark.parametrize(("requested", "expected"), [("50", 200), ("500", 500), ("5000", 2000)])
def test_batch_size_header_clamped(empty_emu, requested, expected):
    for i in range(2500):
        empty_emu.create_record("Contact", {"LastName": f"Batch{i}"})
    token = fetch_token(empty_emu)

    body = run_query(
        empty_emu, token, "SELECT Id FROM Contact", headers={"Sforce-Query-Options": f"batchSize={requested}"}
    ).json()

    assert len(body["records"]) == expected
    assert body["nextRecordsUrl"].endswith(f"-{expected}")


def test_pages_are_snapshots():
    with SalesforceEmulator(page_size=100) as emu:
        token = fetch_token(emu)
        first = run_query(emu, token, "SELECT Id, LastName FROM Contact ORDER BY Id").json()
        ids = [record["Id"] for record in emu.records("Contact")]
        later_id = sorted(ids)[150]
        emu.update_record("Contact", later_id, {"LastName": "Changed"})
        emu.delete_record("Contact", sorted(ids)[151])

        second = api_get(emu, token, first["nextRecordsUrl"]).json()

    by_id = {record["Id"]: record for record in second["records"]}
    assert by_id[later_id]["LastName"] != "Changed"
    assert sorted(ids)[151] in by_id
    assert second["totalSize"] == 162


def test_unknown_locator_rejected(emu, token):
    response = api_get(emu, token, f"{API}/query/01g5g00000ZZZZZAAA-2000")

    assert response.status_code == 400
    assert response.json() == [{"message": "invalid query locator", "errorCode": "INVALID_QUERY_LOCATOR"}]


def test_locator_expires_when_idle():
    with SalesforceEmulator(page_size=50) as emu:
        token = fetch_token(emu)
        first = run_query(emu, token, "SELECT Id FROM Contact").json()
        emu.advance(16 * 60)

        response = api_get(emu, token, first["nextRecordsUrl"])

    assert response.status_code == 400
    assert response.json()[0]["errorCode"] == "INVALID_QUERY_LOCATOR"


def test_eleventh_cursor_releases_oldest():
    with SalesforceEmulator(page_size=50) as emu:
        token = fetch_token(emu)
        locators = [run_query(emu, token, "SELECT Id FROM Contact").json()["nextRecordsUrl"] for _ in range(11)]

        oldest = api_get(emu, token, locators[0])
        newest = api_get(emu, token, locators[-1])

    assert oldest.status_code == 400
    assert newest.status_code == 200


def test_large_org_pages_quickly(empty_emu):
    # 100,000 records; each query filters and sorts once, then pages are slices of the snapshot.
    base = dt.datetime(2025, 1, 1, tzinfo=UTC)
    for i in range(100_000):
        empty_emu.create_record("Contact", {"LastName": f"Bulk{i}"}, modstamp=base + dt.timedelta(seconds=i // 50))
    token = fetch_token(empty_emu)

    started = time.perf_counter()
    first = run_query(empty_emu, token, "SELECT Id, LastName FROM Contact ORDER BY SystemModstamp, Id").json()
    first_seconds = time.perf_counter() - started
    started = time.perf_counter()
    second = api_get(empty_emu, token, first["nextRecordsUrl"]).json()
    second_seconds = time.perf_counter() - started

    assert first["totalSize"] == 100_000
    assert len(second["records"]) == 2000
    # Generous bounds: about 0.35 s and 0.02 s on a 2024 laptop-class CPU.
    assert first_seconds < 5
    assert second_seconds < 1


# ---------------------------------------------------------------------------------------------
# SOQL semantics
# ---------------------------------------------------------------------------------------------


def test_keyset_condition_covers_all(empty_emu):
    stamp = dt.datetime(2025, 1, 23, 10, 26, 15, tzinfo=UTC)
    expected = []
    for offset_s, count in ((-1, 10), (0, 30), (1, 10)):
        for i in range(count):
            record_id = empty_emu.create_record(
                "Contact", {"LastName": f"Key{offset_s}_{i}"}, modstamp=stamp + dt.timedelta(seconds=offset_s)
            )
            expected.append((stamp + dt.timedelta(seconds=offset_s), record_id))
    expected.sort()
    token = fetch_token(empty_emu)

    seen: list[str] = []
    last_stamp, last_id = "2025-01-23T10:26:14.000+0000", "000000000000000AAA"
    while True:
        soql = (
            "SELECT Id, SystemModstamp FROM Contact "
            f"WHERE SystemModstamp > {last_stamp} OR (SystemModstamp = {last_stamp} AND Id > '{last_id}') "
            "ORDER BY SystemModstamp, Id LIMIT 7"
        )
        body = run_query(empty_emu, token, soql).json()
        assert "records" in body, body
        if not body["records"]:
            break
        seen.extend(record["Id"] for record in body["records"])
        last_stamp = body["records"][-1]["SystemModstamp"]
        last_id = body["records"][-1]["Id"]

    assert len(seen) == len(set(seen))
    # The first 10 records sit at 10:26:14.000 and the keyset starts with Id > '000...AAA' there.
    assert seen == [record_id for _, record_id in expected]


def test_order_by_id_is_case_sensitive(emu, token):
    body = run_query(emu, token, "SELECT Id FROM Contact ORDER BY Id").json()
    ids = [record["Id"] for record in body["records"]]
    greater = run_query(emu, token, f"SELECT Id FROM Contact WHERE Id > '{ids[80]}' ORDER BY Id").json()

    assert ids == sorted(ids)
    # Only meaningful when case-insensitive order differs from byte order.
    assert sorted(ids, key=str.lower) != ids
    assert [record["Id"] for record in greater["records"]] == ids[81:]


def test_unordered_query_not_insertion_order(emu, token):
    first = [record["Id"] for record in run_query(emu, token, "SELECT Id FROM Contact").json()["records"]]
    again = [record["Id"] for record in run_query(emu, token, "SELECT Id FROM Contact").json()["records"]]
    inserted = [record["Id"] for record in emu.records("Contact")]

    assert sorted(first) == sorted(inserted)
    assert first != inserted
    assert first != sorted(inserted)
    assert first == again


@pytest.mark.parametrize(
    "literal",
    [
        "2025-01-23T10:26:15Z",
        "2025-01-23T10:26:15.000Z",
        "2025-01-23T10:26:15+00:00",
        "2025-01-23T10:26:15.000+0000",
        "2025-01-23T05:26:15-05:00",
        "2025-01-23T11:26:15.000+01:00",
    ],
)
def test_datetime_literal_forms(empty_emu, literal):
    stamp = dt.datetime(2025, 1, 23, 10, 26, 15, tzinfo=UTC)
    target = empty_emu.create_record("Contact", {"LastName": "Exact"}, modstamp=stamp)
    empty_emu.create_record("Contact", {"LastName": "Before"}, modstamp=stamp - dt.timedelta(seconds=1))
    empty_emu.create_record("Contact", {"LastName": "After"}, modstamp=stamp + dt.timedelta(milliseconds=1))
    token = fetch_token(empty_emu)

    equal = run_query(empty_emu, token, f"SELECT Id FROM Contact WHERE SystemModstamp = {literal}").json()
    greater = run_query(empty_emu, token, f"SELECT LastName FROM Contact WHERE SystemModstamp > {literal}").json()
    at_least = run_query(empty_emu, token, f"SELECT Id FROM Contact WHERE SystemModstamp >= {literal}").json()

    assert [record["Id"] for record in equal["records"]] == [target]
    assert [record["LastName"] for record in greater["records"]] == ["After"]
    assert at_least["totalSize"] == 2


def test_datetime_without_offset_rejected(emu, token):
    status, error = query_error(emu, token, "SELECT Id FROM Contact WHERE SystemModstamp > 2016-07-31T04:17:54")

    assert status == 400
    assert error["errorCode"] == "MALFORMED_QUERY"
    assert "ERROR at Row:1:Column:" in error["message"]


def test_quoted_datetime_rejected(emu, token):
    status, error = query_error(
        emu, token, "SELECT Id FROM Contact WHERE CreatedDate > '2025-01-23T10:26:15Z'"
    )

    assert status == 400
    assert error["errorCode"] == "INVALID_FIELD"
    assert error["message"].endswith(
        "Value of filter criterion for field 'CreatedDate' must be of type dateTime and should not be "
        "enclosed in quotes."
    )


def test_date_literal_on_datetime_rejected(emu, token):
    status, error = query_error(emu, token, "SELECT Id FROM Contact WHERE CreatedDate > 2025-01-23")

    assert status == 400
    assert error["errorCode"] == "INVALID_FIELD"


def test_date_field_filter(emu, token):
    body = run_query(emu, token, "SELECT Id FROM Contact WHERE Birthdate > 2040-01-01").json()

    assert body["totalSize"] == 7


def test_unknown_field_rejected(emu, token):
    status, error = query_error(emu, token, "SELECT Id, Nickname FROM Contact")

    assert status == 400
    assert error["errorCode"] == "INVALID_FIELD"
    assert "No such column 'Nickname' on entity 'Contact'." in error["message"]
    assert "\nSELECT Id, Nickname FROM Contact\n           ^\nERROR at Row:1:Column:12\n" in error["message"]


@pytest.mark.parametrize(
    ("soql", "token_text"),
    [
        ("invalid", "invalid"),
        ("SELECT Id FROM Contact WHERE", "<EOF>"),
        ("SELECT Id FROM Contact WHERE LastName = 'A' AND Email = 'b' OR Title = 'c'", "OR"),
        ("SELECT Id FROM Contact LIMIT", "<EOF>"),
        ("SELECT Id, FROM Contact", "FROM"),
    ],
)
def test_syntax_errors(emu, token, soql, token_text):
    status, error = query_error(emu, token, soql)

    assert status == 400
    assert error["errorCode"] == "MALFORMED_QUERY"
    assert error["message"].endswith(f"unexpected token: '{token_text}'")


def test_bare_message_for_first_token(emu, token):
    _, error = query_error(emu, token, "invalid")

    assert error == {"message": "unexpected token: 'invalid'", "errorCode": "MALFORMED_QUERY"}


@pytest.mark.parametrize(
    ("soql", "error_code", "message_end"),
    [
        ("SELECT Id FROM Contact ORDER BY Description", "INVALID_FIELD", "can not be sorted in a query call"),
        ("SELECT Id FROM Contact WHERE Description = 'x'", "INVALID_FIELD", "can not be filtered in a query call"),
        (
            "SELECT Id FROM Contact WHERE IsDeleted = 'false'",
            "INVALID_FIELD",
            "must be of type boolean and should not be enclosed in quotes.",
        ),
        (
            "SELECT Id FROM Contact WHERE LastName = 5",
            "INVALID_FIELD",
            "must be of type string and should be enclosed in quotes.",
        ),
        ("SELECT Id, id FROM Contact", "MALFORMED_QUERY", "duplicate field selected: Id"),
        (
            "SELECT Id FROM Contact WHERE Id LIKE '003%'",
            "INVALID_QUERY_FILTER_OPERATOR",
            "invalid operator on id field",
        ),
        (
            "SELECT Individual.Name FROM Contact",
            "INVALID_FIELD",
            "Please reference your WSDL or the describe call for the appropriate names.",
        ),
    ],
)
def test_field_restrictions(emu, token, soql, error_code, message_end):
    status, error = query_error(emu, token, soql)

    assert status == 400
    assert error["errorCode"] == error_code
    assert error["message"].endswith(message_end)


def test_unknown_object_rejected(emu, token):
    status, error = query_error(emu, token, "SELECT Id FROM Lead")

    assert status == 400
    assert error["errorCode"] == "INVALID_TYPE"


def test_missing_query_text(emu, token):
    response = api_get(emu, token, f"{API}/query")

    assert response.status_code == 400
    assert response.json()[0]["errorCode"] == "MALFORMED_QUERY"


def test_string_operators(emu, token):
    def count(where: str) -> int:
        body = run_query(emu, token, f"SELECT COUNT() FROM Contact WHERE {where}").json()
        assert "totalSize" in body, body
        return body["totalSize"]

    assert count("LastName LIKE 'o\\'%'") == 2  # O'Dwyer and O'Lochan
    assert count("LastName = 'O\\'DWYER'") == 1  # text equality ignores case
    assert count("LastName IN ('Taylor', 'jones')") == 2
    assert count("Title = null") == 156
    assert count("Title != 'CEO'") == 161  # != matches null values too
    assert count("Title NOT IN ('CEO', 'VP of Sales')") == 160
    assert count("NOT (Title = null)") == 6
    assert count("Email LIKE '%@demo.net' AND (Title LIKE 'VP of S%' OR Title = 'CEO')") == 2


def test_order_by_nulls_last(emu, token):
    body = run_query(
        emu, token, "SELECT Title, LastName FROM Contact ORDER BY Title DESC NULLS LAST, LastName LIMIT 8"
    ).json()
    titles = [record["Title"] for record in body["records"]]

    assert titles[:6] == sorted(titles[:6], key=str.lower, reverse=True)
    assert titles[6:] == [None, None]


def test_order_by_text_ignores_case(empty_emu):
    for name in ("bravo", "Alpha", "charlie", "Delta"):
        empty_emu.create_record("Contact", {"LastName": name})
    token = fetch_token(empty_emu)

    body = run_query(empty_emu, token, "SELECT LastName FROM Contact ORDER BY LastName").json()

    assert [record["LastName"] for record in body["records"]] == ["Alpha", "bravo", "charlie", "Delta"]


def test_fifteen_character_id_literal(emu, token):
    record_id = emu.records("Contact")[3]["Id"]

    body = run_query(emu, token, f"SELECT Id FROM Contact WHERE Id = '{record_id[:15]}'").json()

    assert [record["Id"] for record in body["records"]] == [record_id]


def test_invalid_id_literal(emu, token):
    status, error = query_error(emu, token, "SELECT Id FROM Contact WHERE Id = 'abc'")

    assert status == 400
    assert error["errorCode"] == "INVALID_QUERY_FILTER_OPERATOR"


def test_string_literal_escaping(empty_emu):
    token = fetch_token(empty_emu)
    text = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=20)

    @settings(max_examples=60, deadline=None)
    @given(last_name=text)
    def check(last_name: str) -> None:
        record_id = empty_emu.create_record("Contact", {"LastName": last_name})
        literal = last_name.replace("\\", "\\\\").replace("'", "\\'")

        body = run_query(empty_emu, token, f"SELECT Id FROM Contact WHERE LastName = '{literal}'").json()

        assert "records" in body, body
        assert record_id in {record["Id"] for record in body["records"]}

    check()


# ---------------------------------------------------------------------------------------------
# Deletes, merges and replication
# ---------------------------------------------------------------------------------------------


def test_query_all_returns_deleted(emu, token):
    record_id = emu.records("Contact")[0]["Id"]
    emu.delete_record("Contact", record_id)

    live = run_query(emu, token, f"SELECT Id FROM Contact WHERE Id = '{record_id}'").json()
    everything = run_query(
        emu, token, f"SELECT Id, IsDeleted FROM Contact WHERE Id = '{record_id}'", include_deleted=True
    ).json()
    count = run_query(emu, token, "SELECT COUNT() FROM Contact").json()

    assert live["totalSize"] == 0
    assert everything["records"][0]["IsDeleted"] is True
    assert count["totalSize"] == 161


def test_delete_stamps_modstamp(emu):
    record_id = emu.records("Contact")[0]["Id"]
    stamp = dt.datetime(2030, 5, 6, 7, 8, 9, 123000, tzinfo=UTC)

    emu.delete_record("Contact", record_id, modstamp=stamp)
    record = emu.get_record("Contact", record_id)

    assert record["IsDeleted"] is True
    assert record["SystemModstamp"] == "2030-05-06T07:08:09.123+0000"


def test_merge_marks_loser(emu, token):
    winner, loser = (record["Id"] for record in emu.records("Contact")[:2])
    before = emu.get_record("Contact", winner)["SystemModstamp"]
    emu.advance(60)

    emu.merge_records("Contact", winner, loser)
    body = run_query(
        emu,
        token,
        f"SELECT Id, IsDeleted, MasterRecordId, MasterRecord.LastName FROM Contact WHERE Id = '{loser}'",
        include_deleted=True,
    ).json()

    merged = body["records"][0]
    assert merged["IsDeleted"] is True
    assert merged["MasterRecordId"] == winner
    assert merged["MasterRecord"]["LastName"] == emu.get_record("Contact", winner)["LastName"]
    assert emu.get_record("Contact", winner)["SystemModstamp"] > before
    assert run_query(emu, token, f"SELECT Id FROM Contact WHERE Id = '{loser}'").json()["totalSize"] == 0


def test_update_changes_modstamp(emu, token):
    record_id = emu.records("Contact")[0]["Id"]
    stamp = dt.datetime(2030, 1, 1, tzinfo=UTC)

    emu.update_record("Contact", record_id, {"Title": "Manager"}, modstamp=stamp)
    soql = "SELECT Id, Title, LastModifiedDate FROM Contact WHERE SystemModstamp = 2030-01-01T00:00:00Z"
    body = run_query(emu, token, soql).json()

    assert body["records"][0]["Id"] == record_id
    assert body["records"][0]["Title"] == "Manager"
    assert body["records"][0]["LastModifiedDate"] == "2030-01-01T00:00:00.000+0000"


def test_updated_and_deleted_resources(emu, token):
    now = emu.now()
    changed, removed = (record["Id"] for record in emu.records("Contact")[:2])
    emu.update_record("Contact", changed, {"Title": "Changed"}, modstamp=now - dt.timedelta(minutes=5))
    emu.delete_record("Contact", removed, modstamp=now - dt.timedelta(minutes=5))
    window = {"start": (now - dt.timedelta(hours=1)).isoformat(), "end": now.isoformat()}

    updated = api_get(emu, token, f"{API}/sobjects/Contact/updated/", window).json()
    deleted = api_get(emu, token, f"{API}/sobjects/Contact/deleted/", window).json()

    assert updated["ids"] == [changed]
    assert updated["latestDateCovered"].endswith(":00.000+0000")
    assert [entry["id"] for entry in deleted["deletedRecords"]] == [removed]
    assert "earliestDateAvailable" in deleted


def test_replication_rejects_bad_window(emu, token):
    now = emu.now()
    reversed_window = {"start": now.isoformat(), "end": (now - dt.timedelta(hours=1)).isoformat()}
    naive_start = {"start": "2024-01-02T03:04:05:", "end": now.isoformat()}

    reversed_response = api_get(emu, token, f"{API}/sobjects/Contact/updated/", reversed_window)
    naive_response = api_get(emu, token, f"{API}/sobjects/Contact/updated/", naive_start)

    assert reversed_response.status_code == 400
    assert reversed_response.json()[0]["errorCode"] == "INVALID_REPLICATION_DATE"
    assert naive_response.status_code == 400


def test_get_record_by_short_id(emu, token):
    record_id = emu.records("Contact")[5]["Id"]

    response = api_get(emu, token, f"{API}/sobjects/Contact/{record_id[:15]}")
    emu.delete_record("Contact", record_id)
    deleted = api_get(emu, token, f"{API}/sobjects/Contact/{record_id}")

    assert response.status_code == 200
    assert response.json()["Id"] == record_id
    assert deleted.status_code == 404
    assert deleted.json()[0]["errorCode"] == "ENTITY_IS_DELETED"


# ---------------------------------------------------------------------------------------------
# Describe, limits and faults
# ---------------------------------------------------------------------------------------------


def test_contact_describe_fields(emu, token):
    body = api_get(emu, token, f"{API}/sobjects/Contact/describe").json()
    fields = {field["name"]: field for field in body["fields"]}

    assert body["name"] == "Contact"
    assert body["keyPrefix"] == "003"
    assert set(STANDARD_CONTACT_FIELDS) <= set(fields)
    assert {"MiddleName", "Suffix"} <= set(fields)
    assert len(fields) == 59 + 2 + 9  # standard, name parts, custom fields of the seed files
    assert fields["Email"]["type"] == "email"
    assert fields["Email"]["soapType"] == "xsd:string"
    assert fields["Email"]["length"] == 80
    assert fields["Description"]["filterable"] is False
    assert fields["MailingAddress"]["sortable"] is False
    assert fields["AccountId"]["referenceTo"] == ["Account"]
    assert fields["AccountId"]["relationshipName"] == "Account"
    assert [value["value"] for value in fields["LeadSource"]["picklistValues"]] == [
        "Web", "Phone Inquiry", "Partner Referral", "Purchased List", "Other",
    ]
    assert fields["External_Id__c"]["type"] == "string"
    assert fields["External_Id__c"]["custom"] is True
    assert fields["Next_Check_in_Date__c"]["type"] == "date"
    assert fields["Picture__c"]["type"] == "url"
    assert fields["Photo_URL__c"]["type"] == "url"
    assert all(len(field) >= 55 for field in fields.values())


def test_global_describe(emu, token):
    body = api_get(emu, token, f"{API}/sobjects/").json()
    prefixes = {entry["name"]: entry["keyPrefix"] for entry in body["sobjects"]}

    assert body["encoding"] == "UTF-8"
    assert prefixes["Contact"] == "003"
    assert prefixes["Account"] == "001"


def test_account_describe(emu, token):
    body = api_get(emu, token, f"{API}/sobjects/Account/describe").json()
    names = {field["name"] for field in body["fields"]}

    assert {"Id", "Name", "IsDeleted", "SystemModstamp"} <= names


def test_unknown_object_describe_404(emu, token):
    response = api_get(emu, token, f"{API}/sobjects/Lead/describe")

    assert response.status_code == 404
    assert response.json()[0]["errorCode"] == "NOT_FOUND"


def test_empty_org_has_no_custom_fields(empty_emu):
    token = fetch_token(empty_emu)

    body = api_get(empty_emu, token, f"{API}/sobjects/Contact/describe").json()

    assert not [field["name"] for field in body["fields"] if field["custom"]]
    assert run_query(empty_emu, token, "SELECT COUNT() FROM Contact").json()["totalSize"] == 0


def test_limit_header_counts_calls(emu, token):
    first = api_get(emu, token, f"{API}/sobjects")
    second = run_query(emu, token, "SELECT Id FROM Contact LIMIT 1")
    limits = api_get(emu, token, f"{API}/limits/")

    assert first.headers["Sforce-Limit-Info"] == "api-usage=1/15000"
    assert second.headers["Sforce-Limit-Info"] == "api-usage=2/15000"
    assert limits.json()["DailyApiRequests"] == {"Max": 15000, "Remaining": 15000 - 3}
    assert emu.api_calls == 3


def test_daily_limit_exceeded(emu, token):
    emu.set_api_usage(14999)

    allowed = api_get(emu, token, f"{API}/limits")
    refused = api_get(emu, token, f"{API}/limits")

    assert allowed.status_code == 200
    assert refused.status_code == 403
    assert refused.json() == [{"message": "TotalRequests Limit exceeded.", "errorCode": "REQUEST_LIMIT_EXCEEDED"}]
    assert refused.headers["Sforce-Limit-Info"] == "api-usage=15001/15000"


def test_simple_salesforce_reads_usage(emu, token):
    sf = make_salesforce(emu, token)

    sf.query("SELECT Id FROM Contact LIMIT 1", verify=emu.ca_file)

    assert sf.api_usage["api-usage"].used == 1
    assert sf.api_usage["api-usage"].total == 15000


def test_injected_fault_then_recovery(emu, token):
    timeout_body = [{"message": "Your query request was running for too long.", "errorCode": "QUERY_TIMEOUT"}]
    emu.inject_fault("/query", 400, timeout_body, count=1)

    failed = run_query(emu, token, "SELECT Id FROM Contact")
    recovered = run_query(emu, token, "SELECT Id FROM Contact")

    assert failed.status_code == 400
    assert failed.json() == timeout_body
    assert recovered.status_code == 200
    assert emu.api_calls == 1


def test_injected_fault_count(emu, token):
    emu.inject_fault("/limits", 503, {"message": "unavailable"}, count=2)

    statuses = [api_get(emu, token, f"{API}/limits").status_code for _ in range(3)]

    assert statuses == [503, 503, 200]


def test_request_log_entries(emu, token):
    run_query(emu, token, "SELECT Id FROM Contact LIMIT 2")
    api_get(emu, token, f"{API}/limits")

    log = emu.request_log

    assert log[-2] == {
        "method": "GET",
        "path": f"{API}/query",
        "query": "SELECT Id FROM Contact LIMIT 2",
        "status": 200,
    }
    assert log[-1]["path"] == f"{API}/limits"
    assert log[-1]["query"] is None


# ---------------------------------------------------------------------------------------------
# Admin endpoints, connections and the command line
# ---------------------------------------------------------------------------------------------


def test_admin_http_endpoints(empty_emu):
    base = f"{empty_emu.url}/_emulator"
    verify = empty_emu.ca_file

    created = requests.post(
        f"{base}/records/Contact",
        json={"fields": {"LastName": "Admin", "Email": "admin@example.com"}, "modstamp": "2025-01-23T10:26:15Z"},
        verify=verify,
        timeout=10,
    )
    record_id = created.json()["id"]
    patched = requests.patch(
        f"{base}/records/Contact/{record_id}", json={"fields": {"Title": "Boss"}}, verify=verify, timeout=10
    )
    deleted = requests.delete(f"{base}/records/Contact/{record_id}", verify=verify, timeout=10)
    live = requests.get(f"{base}/records/Contact", verify=verify, timeout=10).json()
    everything = requests.get(f"{base}/records/Contact?include_deleted=1", verify=verify, timeout=10).json()
    clock = requests.post(f"{base}/clock", json={"now": "2025-02-01T00:00:00Z"}, verify=verify, timeout=10)
    expired = requests.post(f"{base}/tokens/expire", verify=verify, timeout=10)
    fault = requests.post(
        f"{base}/faults", json={"path_contains": "/limits", "status": 503, "body": []}, verify=verify, timeout=10
    )
    stats = requests.get(f"{base}/stats", verify=verify, timeout=10).json()

    assert created.status_code == 201
    assert patched.status_code == 200
    assert deleted.status_code == 200
    assert live["records"] == []
    assert everything["records"][0]["Title"] == "Boss"
    assert everything["records"][0]["IsDeleted"] is True
    assert everything["records"][0]["CreatedDate"] == "2025-01-23T10:26:15.000+0000"
    assert clock.json()["now"].startswith("2025-02-01T00:00:0")
    assert expired.status_code == 200
    assert fault.status_code == 201
    assert stats["api_calls"] == 0
    assert stats["requests"] == 8  # the stats request is logged only after its response


def test_admin_rejects_unknown_field(empty_emu):
    response = requests.post(
        f"{empty_emu.url}/_emulator/records/Contact",
        json={"fields": {"LastName": "X", "Nickname": "Y"}},
        verify=empty_emu.ca_file,
        timeout=10,
    )

    assert response.status_code == 400
    assert "Nickname" in response.json()["error"]


def test_keep_alive_connection_reused(emu, token):
    context = ssl.create_default_context(cafile=emu.ca_file)
    port = int(emu.url.rsplit(":", 1)[1])
    connection = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)
    statuses = []
    sockets = []
    try:
        for _ in range(3):
            connection.request("GET", f"{API}/limits", headers={"Authorization": f"Bearer {token}"})
            response = connection.getresponse()
            response.read()
            statuses.append(response.status)
            # http.client drops the socket when the server closes the connection after a response.
            sockets.append(connection.sock)
    finally:
        connection.close()

    assert statuses == [200, 200, 200]
    assert sockets[0] is not None
    assert all(sock is sockets[0] for sock in sockets)


def test_certificate_valid_for_localhost(emu, token):
    port = emu.url.rsplit(":", 1)[1]

    response = requests.get(
        f"https://localhost:{port}{API}/limits",
        headers={"Authorization": f"Bearer {token}"},
        verify=emu.ca_file,
        timeout=10,
    )

    assert response.status_code == 200


def _read_line(stream, timeout: float) -> str:
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: lines.put(stream.readline()), daemon=True).start()
    return lines.get(timeout=timeout)


def test_cli_ready_line_and_sigterm(tmp_path):
    ca_path = tmp_path / "ca.pem"
    process = subprocess.Popen(
        [
            sys.executable, "-m", "connector.emulators.salesforce",
            "--host", "127.0.0.1", "--port", "0", "--ca-file", str(ca_path), "--page-size", "100",
        ],
        cwd=PROJECT_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        ready = json.loads(_read_line(process.stdout, timeout=30))
        token_response = requests.post(
            f"{ready['url']}/services/oauth2/token",
            data={"grant_type": "client_credentials"},
            auth=("emulator-client-id", "emulator-client-secret"),
            verify=ready["ca_file"],
            timeout=10,
        )
        page = requests.get(
            f"{ready['url']}{API}/query",
            params={"q": "SELECT Id FROM Contact"},
            headers={"Authorization": f"Bearer {token_response.json()['access_token']}"},
            verify=ready["ca_file"],
            timeout=10,
        ).json()

        process.send_signal(signal.SIGTERM)
        exit_code = process.wait(timeout=15)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    assert ready["event"] == "salesforce_emulator.ready"
    assert ready["url"].startswith("https://127.0.0.1:")
    assert ready["ca_file"] == str(ca_path)
    assert ready["client_id"] == "emulator-client-id"
    assert ready["username"] == "integration@example.com"
    assert page["totalSize"] == 162
    assert len(page["records"]) == 100
    assert exit_code == 0
