"""Tests of the Salesforce emulator's generated Contacts, computed from their index and never stored."""

from __future__ import annotations

import datetime as dt
import json
import ssl
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import phonenumbers
import pytest

from connector.cursor import Watermark
from connector.emulators import generated, soql
from connector.emulators.salesforce import SalesforceEmulator, make_id
from connector.field_map import Mapped, load_field_map
from connector.salesforce import SalesforceSource, build_changes_query
from connector.settings import load_settings
from tests.conftest import CLIENT_SECRET, ROOT

COUNT = 2_513  # not a multiple of the page size or of the five records per second
MAP_FIELDS = ["FirstName", "LastName", "MobilePhone", "Phone", "Email", "MailingCountry"]


@pytest.fixture
def org() -> Iterator[SalesforceEmulator]:
    with SalesforceEmulator(seed_files=[], client_secret=CLIENT_SECRET, generated_contacts=COUNT) as emulator:
        yield emulator


def make_source(emulator: SalesforceEmulator) -> SalesforceSource:
    settings = load_settings({
        "SFCHARLES_SALESFORCE_LOGIN_URL": emulator.url,
        "SFCHARLES_SALESFORCE_CLIENT_ID": emulator.client_id,
        "SFCHARLES_SALESFORCE_CLIENT_SECRET": CLIENT_SECRET,
        "SFCHARLES_SALESFORCE_CA_FILE": emulator.ca_file,
        "SFCHARLES_SALESFORCE_PAGE_SIZE": "200",
        "SFCHARLES_CHARLES_BASE_URL": "http://127.0.0.1:9",
        "SFCHARLES_CHARLES_API_KEY": "unused",
    })
    return SalesforceSource(settings)


def contacts_of(emulator: SalesforceEmulator) -> generated.GeneratedContacts:
    assert emulator._generated is not None
    return emulator._generated


def rest_client(url: str, ca_file: str, client_id: str, *, batch_size: int = 2000) -> httpx.Client:
    """Log in with client credentials and return a client for the REST API with the token set."""
    trust = ssl.create_default_context(cafile=ca_file)
    token = httpx.post(
        f"{url}/services/oauth2/token",
        data={"grant_type": "client_credentials", "client_id": client_id, "client_secret": CLIENT_SECRET},
        verify=trust,
    ).json()["access_token"]
    headers = {"Authorization": f"Bearer {token}", "Sforce-Query-Options": f"batchSize={batch_size}"}
    return httpx.Client(base_url=url, headers=headers, verify=trust, timeout=30)


def query(emulator: SalesforceEmulator, soql_text: str, *, batch_size: int = 2000) -> list[dict[str, Any]]:
    """Run a queryAll over REST and follow nextRecordsUrl; return every record."""
    with rest_client(emulator.url, emulator.ca_file, emulator.client_id, batch_size=batch_size) as client:
        body = client.get("/services/data/v62.0/queryAll", params={"q": soql_text}).raise_for_status().json()
        records = list(body["records"])
        while not body["done"]:
            body = client.get(body["nextRecordsUrl"]).raise_for_status().json()
            records.extend(body["records"])
    return records


def expected_ids(emulator: SalesforceEmulator, soql_text: str) -> list[str]:
    """Evaluate a query with the emulator's SOQL engine over every generated record held in a list."""
    contacts = contacts_of(emulator)
    store = emulator._store
    compiled = soql.compile_text(soql_text, store, store.dereference)
    everything = [contacts.record(index) for index in range(contacts.count)]
    return [record["Id"] for record in compiled.execute(everything)]


# --------------------------------------------------------------------------- the records


def test_records_follow_index_order(org: SalesforceEmulator) -> None:
    contacts = contacts_of(org)
    positions = [(contacts.modstamp(i), contacts.record_id(i)) for i in range(contacts.count)]

    assert positions == sorted(positions)
    assert len({record_id for _, record_id in positions}) == COUNT
    assert contacts.modstamp(0) == contacts.modstamp(4)
    assert contacts.modstamp(5) - contacts.modstamp(4) == dt.timedelta(seconds=1)
    assert contacts.modstamp(COUNT - 1) < org.org_created


def test_records_are_deterministic(org: SalesforceEmulator) -> None:
    contacts = contacts_of(org)
    again = generated.GeneratedContacts(COUNT, end=org.org_created, make_id=make_id, owner_id="005x")

    assert again.record(17)["MobilePhone"] == contacts.record(17)["MobilePhone"]
    assert again.record(17)["Id"] == contacts.record(17)["Id"]
    assert again.record(17)["SystemModstamp"] == contacts.record(17)["SystemModstamp"]


@pytest.mark.parametrize("index", [0, 1, 9_999, 10_000, 7_909_999, 7_910_000, generated.MAX_COUNT - 1])
def test_mobile_phones_are_valid_us_numbers(index: int) -> None:
    contacts = generated.GeneratedContacts(
        generated.MAX_COUNT, end=dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc), make_id=lambda p, n: f"{p}{n:015d}", owner_id="005x"
    )
    number = phonenumbers.parse(contacts.mobile_phone(index), "US")

    assert phonenumbers.is_valid_number(number)
    assert phonenumbers.region_code_for_number(number) == "US"
    assert phonenumbers.number_type(number) in (
        phonenumbers.PhoneNumberType.MOBILE, phonenumbers.PhoneNumberType.FIXED_LINE_OR_MOBILE
    )


def test_mobile_phones_are_unique() -> None:
    contacts = generated.GeneratedContacts(
        200_000, end=dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc), make_id=lambda p, n: f"{p}{n:015d}", owner_id="005x"
    )
    numbers = {contacts.mobile_phone(index) for index in range(contacts.count)}

    assert len(numbers) == contacts.count


def test_default_map_maps_every_record(org: SalesforceEmulator) -> None:
    field_map = load_field_map()
    records = query(org, f"SELECT Id, SystemModstamp, {', '.join(MAP_FIELDS)}, LeadSource, MailingStreet, MailingCity, "
                         "MailingState, MailingPostalCode FROM Contact LIMIT 40")
    outcomes = [field_map.apply(record) for record in records]

    assert len(outcomes) == 40
    assert all(isinstance(outcome, Mapped) for outcome in outcomes)
    assert outcomes[0].payload["external_reference_id"].startswith("+1")
    assert outcomes[0].payload["custom_properties"]["phone_extension"] == "100"


def test_count_out_of_range_rejected() -> None:
    with pytest.raises(ValueError, match="generated_contacts"):
        SalesforceEmulator(seed_files=[], generated_contacts=generated.MAX_COUNT + 1)


# --------------------------------------------------------------------------- queries


def test_keyset_paging_reads_every_record_once(org: SalesforceEmulator) -> None:
    source = make_source(org)
    end = source.server_time()

    pages = list(source.changes("Contact", MAP_FIELDS, None, end))

    ids = [record["Id"] for page in pages for record in page.records]
    assert len(pages) == 13
    assert ids == [contacts_of(org).record_id(i) for i in range(COUNT)]
    assert pages[0].total_size == COUNT


def test_keyset_resumes_inside_a_tied_second(org: SalesforceEmulator) -> None:
    contacts = contacts_of(org)
    source = make_source(org)
    end = source.server_time()
    after = Watermark(contacts.modstamp(1_002), contacts.record_id(1_002))  # third of five sharing a second

    ids = [record["Id"] for page in source.changes("Contact", MAP_FIELDS, after, end) for record in page.records]

    assert ids[0] == contacts.record_id(1_003)
    assert len(ids) == COUNT - 1_003


def test_keyset_upper_bound_is_exclusive(org: SalesforceEmulator) -> None:
    contacts = contacts_of(org)
    after = Watermark.start_of(contacts.modstamp(100))
    soql_text = build_changes_query("Contact", MAP_FIELDS, after, contacts.modstamp(110))

    ids = [record["Id"] for record in query(org, soql_text)]

    assert ids == [contacts.record_id(i) for i in range(100, 110)]


@pytest.mark.parametrize(
    "where",
    [
        "SystemModstamp >= {m40} AND SystemModstamp <= {m60}",
        "(SystemModstamp > {m40} OR (SystemModstamp = {m40} AND Id > '{id41}')) AND SystemModstamp < {m2000}",
        "Id IN ('{id41}', '{id2000}', '0035g0000000000AAA')",
        "Id > '{id2000}'",
        "LastName = 'Hopper' AND SystemModstamp < {m60}",
        "SystemModstamp < {m40} OR SystemModstamp > {m2000}",
        "NOT (SystemModstamp > {m40})",
    ],
)
def test_query_matches_engine_on_materialised_records(org: SalesforceEmulator, where: str) -> None:
    contacts = contacts_of(org)
    values = {
        "m40": contacts.modstamp(40).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "m60": contacts.modstamp(60).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "m2000": contacts.modstamp(2000).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "id41": contacts.record_id(41),
        "id2000": contacts.record_id(2000),
    }
    soql_text = f"SELECT Id, SystemModstamp FROM Contact WHERE {where.format(**values)} ORDER BY SystemModstamp, Id"

    served = [record["Id"] for record in query(org, soql_text, batch_size=200)]

    assert served == expected_ids(org, soql_text)


def test_count_limit_and_offset(org: SalesforceEmulator) -> None:
    contacts = contacts_of(org)
    stamp = contacts.modstamp(1000).strftime("%Y-%m-%dT%H:%M:%SZ")

    counted = query(org, f"SELECT COUNT() FROM Contact WHERE SystemModstamp >= {stamp}")
    limited = query(org, f"SELECT Id FROM Contact WHERE SystemModstamp >= {stamp} LIMIT 7 OFFSET 3")

    assert counted == []
    assert [record["Id"] for record in limited] == [contacts.record_id(i) for i in range(1003, 1010)]


def test_count_reports_total(org: SalesforceEmulator) -> None:
    with rest_client(org.url, org.ca_file, org.client_id) as client:
        body = client.get("/services/data/v62.0/query", params={"q": "SELECT COUNT() FROM Contact WHERE LastName = 'Turing'"}).json()

    turing = sum(1 for i in range(COUNT) if contacts_of(org).record(i)["LastName"] == "Turing")
    assert body["totalSize"] == turing


def test_other_order_rejected(org: SalesforceEmulator) -> None:
    with pytest.raises(httpx.HTTPStatusError) as raised:
        query(org, "SELECT Id FROM Contact ORDER BY LastName")

    assert raised.value.response.status_code == 400
    assert raised.value.response.json()[0]["errorCode"] == "MALFORMED_QUERY"


def test_page_jump_rereads_from_start(org: SalesforceEmulator) -> None:
    with rest_client(org.url, org.ca_file, org.client_id, batch_size=200) as client:
        first = client.get("/services/data/v62.0/queryAll", params={"q": "SELECT Id FROM Contact"}).json()
        locator = first["nextRecordsUrl"].rsplit("-", 1)[0]
        jumped = client.get(f"{locator}-1000").json()

    assert jumped["records"][0]["Id"] == contacts_of(org).record_id(1000)
    assert jumped["nextRecordsUrl"].endswith("-1200")


def test_stored_contacts_are_merged_in_order() -> None:
    with SalesforceEmulator(client_secret=CLIENT_SECRET, generated_contacts=30) as emulator:
        contacts = contacts_of(emulator)
        middle = contacts.modstamp(12)
        created = emulator.create_record("Contact", {"LastName": "Inserted"}, modstamp=middle)

        records = query(emulator, "SELECT Id, SystemModstamp FROM Contact ORDER BY SystemModstamp, Id")

    ids = [record["Id"] for record in records]
    stored = len(emulator.records("Contact"))
    assert len(ids) == 30 + stored
    # First of the five generated records stamped in its second, because stored Ids have lower numbers.
    assert ids.index(created) == 10
    assert ids[:10] == [contacts.record_id(i) for i in range(10)]
    assert ids[11:16] == [contacts.record_id(i) for i in range(10, 15)]


def test_tail_query_builds_only_the_tail() -> None:
    with SalesforceEmulator(seed_files=[], client_secret=CLIENT_SECRET, generated_contacts=1_000_000) as emulator:
        contacts = contacts_of(emulator)
        built: list[int] = []
        original = contacts.record

        def counting_record(index: int) -> dict[str, Any]:
            built.append(index)
            return original(index)

        contacts.record = counting_record  # type: ignore[method-assign]
        after = Watermark(contacts.modstamp(999_990), contacts.record_id(999_992))
        soql_text = build_changes_query("Contact", MAP_FIELDS, after, emulator.now())

        records = query(emulator, soql_text)

    assert [record["Id"] for record in records] == [contacts.record_id(i) for i in range(999_993, 1_000_000)]
    assert sorted(built) == list(range(999_993, 1_000_000))


def test_command_line_flag() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "connector.emulators.salesforce", "--port", "0", "--empty", "--generated-contacts", "25",
         "--client-secret", CLIENT_SECRET],
        stdout=subprocess.PIPE, text=True, cwd=ROOT,
    )
    try:
        assert process.stdout is not None
        ready = json.loads(process.stdout.readline())
        with rest_client(ready["url"], ready["ca_file"], ready["client_id"]) as client:
            body = client.get("/services/data/v62.0/query", params={"q": "SELECT COUNT() FROM Contact"}).json()
    finally:
        process.terminate()
        process.wait(timeout=10)

    assert body["totalSize"] == 25
