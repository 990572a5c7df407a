"""The shipped field maps and the preview command, end to end through both emulators.

The Salesforce emulator here also serves Leads and Person Accounts with their synthetic
sample records (connector/emulators/samples.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import requests

from connector.emulators.salesforce import SalesforceEmulator
from connector.errors import ConfigurationError
from connector.field_map import builtin_map_path
from connector.preview import ids_condition, read_records_file
from tests.conftest import CLIENT_SECRET, run_cli

LEAD_MAP = str(builtin_map_path("lead.yaml"))
PERSON_ACCOUNT_MAP = str(builtin_map_path("person_account.yaml"))
CONTACT_MAP = str(builtin_map_path("contact.yaml"))


@pytest.fixture
def salesforce() -> Iterator[SalesforceEmulator]:
    with SalesforceEmulator(client_secret=CLIENT_SECRET, leads=True, person_accounts=True) as emulator:
        yield emulator


def record_id(salesforce: SalesforceEmulator, object_name: str, last_name: str) -> str:
    [record] = [record for record in salesforce.records(object_name) if record.get("LastName") == last_name]
    return record["Id"]


def queries(salesforce: SalesforceEmulator) -> list[str]:
    return [entry["query"] for entry in salesforce.request_log if entry["query"]]


# --------------------------------------------------------------------------- sync cycles


def test_contact_map_cycle_keeps_extension(salesforce, charles, make_app) -> None:
    salesforce.create_record("Contact", {"LastName": "Extension", "Phone": "(415) 555-2671 ext. 204"})
    salesforce.advance(2)  # Salesforce's clock moves past the new record's second

    report = make_app(field_map=CONTACT_MAP).syncer().run_cycle()

    assert report.status == "succeeded"
    assert report.pushed == 78 + 1
    person = charles.contact("+14155552671")
    assert person is not None
    assert person["custom_properties"]["phone_extension"] == "204"
    assert person["last_name"] == "Extension"


def test_lead_map_cycle(salesforce, charles, make_app) -> None:
    app = make_app(field_map=LEAD_MAP, pipeline="leads")

    report = app.syncer().run_cycle()

    assert report.status == "succeeded"
    assert report.pushed == 4
    assert report.skipped_by_reason["phone_invalid"] == 1
    assert report.skipped_by_reason["no_phone"] == 1
    assert {body["external_reference_id"] for body in charles.upserts} == {
        "+4915123456789", "+14155552671", "+79123456789", "+35312345678",
    }
    assert any("FROM Lead" in query and "IsConverted = false" in query for query in queries(salesforce))


def test_lead_map_payloads(salesforce, charles, make_app) -> None:
    make_app(field_map=LEAD_MAP, pipeline="leads").syncer().run_cycle()
    bodies = {body["external_reference_id"]: body for body in charles.upserts}

    german = bodies["+4915123456789"]
    assert german["phone_numbers"] == [{"type": "mobile", "value": "+4915123456789"}]
    assert german["tags"] == ["Spa", "Golf"]
    assert german["custom_properties"]["annual_revenue"] == "1250000.00"
    assert german["custom_properties"]["number_of_employees"] == "40"
    assert german["custom_properties"]["email_opt_out"] == "false"
    assert german["custom_properties"]["salesforce_object"] == "Lead"
    assert german["custom_properties"]["lead_created_at"].endswith("Z")
    extension = bodies["+14155552671"]
    assert extension["custom_properties"]["phone_extension"] == "204"
    assert extension["email_addresses"] == [{"type": "main", "value": "Marcus.Webb@example.com"}]
    cyrillic = bodies["+79123456789"]
    assert (cyrillic["first_name"], cyrillic["last_name"]) == ("Дмитрий", "Соколов")
    apostrophe = bodies["+35312345678"]
    assert apostrophe["last_name"] == "O'Connor"
    assert "email_addresses" not in apostrophe, "the invalid address is dropped"
    assert all("middle_name" not in body for body in bodies.values())


def test_converted_lead_never_sent(salesforce, charles, make_app) -> None:
    make_app(field_map=LEAD_MAP, pipeline="leads").syncer().run_cycle()

    assert charles.contact("+447911123456") is None


def test_person_account_map_cycle(salesforce, charles, make_app) -> None:
    report = make_app(field_map=PERSON_ACCOUNT_MAP, pipeline="person-accounts").syncer().run_cycle()

    assert report.status == "succeeded"
    assert report.pushed == 4
    assert report.skipped_by_reason["no_phone"] == 1
    bodies = {body["external_reference_id"]: body for body in charles.upserts}
    assert set(bodies) == {"+491701234567", "+74951234567", "+442079460958", "+13055550199"}
    assert bodies["+491701234567"]["custom_properties"]["birthdate"] == "1985-04-12"
    assert bodies["+442079460958"]["custom_properties"]["phone_extension"] == "12"
    assert bodies["+442079460958"]["last_name"] == "O'Brien"
    assert bodies["+13055550199"]["phone_numbers"] == [
        {"type": "mobile", "value": "+13055550199"},
        {"type": "home", "value": "+13055550100"},
    ]
    assert "email_addresses" not in bodies["+13055550199"], "carlos.gomez@example has no top-level domain"
    assert charles.contact("+12065550100") is None, "the business account is not a person"
    assert any("FROM Account" in query and "IsPersonAccount = true" in query for query in queries(salesforce))


def test_person_account_edit_sent_once(salesforce, charles, make_app) -> None:
    app = make_app(field_map=PERSON_ACCOUNT_MAP, pipeline="person-accounts")
    app.syncer().run_cycle()
    anna = record_id(salesforce, "Account", "Müller")
    salesforce.update_record("Account", anna, {"PersonEmail": "anna.m@example.com"})
    salesforce.advance(2)
    sent = len(charles.upserts)

    report = app.syncer().run_cycle()

    assert report.pushed == 1
    assert len(charles.upserts) == sent + 1
    assert charles.upserts[-1]["email_addresses"] == [{"type": "main", "value": "anna.m@example.com"}]


def test_person_account_map_rejected_without_person_accounts(charles, env, make_app) -> None:
    with SalesforceEmulator(client_secret=CLIENT_SECRET) as plain:
        app = make_app(field_map=PERSON_ACCOUNT_MAP, salesforce_login_url=plain.url, salesforce_ca_file=plain.ca_file)

        with pytest.raises(ConfigurationError) as info:
            app.syncer()

    message = str(info.value)
    assert "field 'PersonMobilePhone' does not exist on Account" in message
    assert "where field 'IsPersonAccount' does not exist on Account" in message
    assert charles.upserts == []


# --------------------------------------------------------------------------- check


def test_check_accepts_lead_map(env) -> None:
    result = run_cli(["check"], {**env, "SFCHARLES_FIELD_MAP": LEAD_MAP})

    assert result.returncode == 0, result.stderr + result.stdout
    [line] = [json.loads(text) for text in result.stdout.splitlines() if '"check.completed"' in text]
    assert line["object"] == "Lead"
    assert "Product_Interest__c" in line["salesforce_fields_read"]


def test_check_rejects_type_mismatch(env, tmp_path) -> None:
    broken = tmp_path / "lead.yaml"
    broken.write_text(
        open(LEAD_MAP, encoding="utf-8").read().replace("{from: Product_Interest__c, optional: true}", "{from: AnnualRevenue}"),
        encoding="utf-8",
    )

    result = run_cli(["check"], {**env, "SFCHARLES_FIELD_MAP": str(broken)})

    assert result.returncode == 2
    assert "field 'AnnualRevenue' is of type currency on Lead, which transform 'multipicklist' cannot read" in result.stdout


# --------------------------------------------------------------------------- preview


def preview(env: dict[str, str], *args: str, field_map: str = LEAD_MAP) -> dict:
    result = run_cli(["preview", *args], {**env, "SFCHARLES_FIELD_MAP": field_map})
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_preview_by_id(salesforce, charles, env) -> None:
    webb = record_id(salesforce, "Lead", "Webb")
    okafor = record_id(salesforce, "Lead", "Okafor")
    absent = "00Q5g0000000000AAA"

    document = preview(env, "--id", webb, "--id", okafor[:15], "--id", absent)

    assert document["object"] == "Lead"
    assert document["not_found"] == [absent]
    results = {result["record_id"]: result for result in document["records"]}
    assert results[webb]["outcome"] == "mapped"
    assert results[webb]["payload"]["custom_properties"]["phone_extension"] == "204"
    assert results[okafor] == {
        "record_id": okafor, "outcome": "skipped", "reason": "filtered_out",
        "detail": "IsConverted does not equal the map's where value",
    }
    assert document["counts"] == {"mapped": 1, "skipped": 1}
    assert charles.requests == []


def test_preview_by_where_adds_map_conditions(salesforce, charles, env) -> None:
    document = preview(env, "--where", "Country IN ('Ireland', 'United Kingdom')")

    [result] = document["records"]
    assert result["payload"]["last_name"] == "O'Connor"
    assert result["notes"] == ["Email dropped from email_addresses.0: invalid email address (An email address must have an @-sign)"]
    assert any("WHERE (Country IN ('Ireland', 'United Kingdom')) AND IsConverted = false LIMIT 20" in query for query in queries(salesforce))
    assert charles.requests == []


def test_preview_where_for_person_accounts(salesforce, charles, env) -> None:
    document = preview(env, "--where", "PersonMailingCountry = 'Deutschland'", field_map=PERSON_ACCOUNT_MAP)

    [result] = document["records"]
    assert result["payload"]["external_reference_id"] == "+491701234567"
    assert result["payload"]["first_name"] == "Anna"
    assert charles.requests == []


def test_preview_from_file_needs_no_salesforce(salesforce, charles, env, tmp_path) -> None:
    records = tmp_path / "records.json"
    records.write_text(
        json.dumps({"records": [
            {"Id": "00Q000000000001AAA", "IsConverted": False, "LastName": "Kuznetsova", "FirstName": "Мария",
             "MobilePhone": "0151 23456789", "Country": "Germany", "Email": "maria@example.com",
             "Product_Interest__c": "Golf;Dining", "HasOptedOutOfEmail": True},
            {"Id": "00Q000000000002AAA", "IsConverted": False, "LastName": "Nobody"},
        ]}),
        encoding="utf-8",
    )

    document = preview(env, "--file", str(records))

    first, second = document["records"]
    assert first["payload"]["external_reference_id"] == "+4915123456789"
    assert first["payload"]["tags"] == ["Golf", "Dining"]
    assert first["payload"]["custom_properties"]["email_opt_out"] == "true"
    assert second == {"record_id": "00Q000000000002AAA", "outcome": "skipped", "reason": "no_phone", "detail": "MobilePhone and Phone are empty"}
    assert salesforce.request_log == []
    assert charles.requests == []


def test_preview_with_map_option(salesforce, env, tmp_path) -> None:
    records = tmp_path / "records.json"
    records.write_text(json.dumps([{"Id": "003000000000001AAA", "Phone": "4155552671", "LastName": "Lee"}]), encoding="utf-8")

    result = run_cli(["preview", "--file", str(records), "--map", CONTACT_MAP], {**env, "SFCHARLES_FIELD_MAP": LEAD_MAP})

    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["object"] == "Contact"
    assert document["records"][0]["payload"]["external_reference_id"] == "+14155552671"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "give exactly one of --id, --where and --file (got none)"),
        (["--id", "00Q5g0000000000AAA", "--where", "Name = 'x'"], "give exactly one of --id, --where and --file (got --id, --where)"),
        (["--id", "not-an-id"], "--id: invalid Salesforce Id 'not-an-id': expected 15 or 18 letters and digits"),
        (["--where", " "], "--where is empty; give a SOQL condition such as \"LastName = 'Smith'\""),
    ],
)
def test_preview_usage_errors(env, charles, args: list[str], message: str) -> None:
    result = run_cli(["preview", *args], {**env, "SFCHARLES_FIELD_MAP": LEAD_MAP})

    assert result.returncode == 2
    assert message in result.stderr
    assert result.stdout == ""
    assert charles.requests == []


def test_preview_bad_records_file(env, tmp_path) -> None:
    records = tmp_path / "records.json"
    records.write_text('[{"Id": "00Q000000000001AAA"}, 5]', encoding="utf-8")

    result = run_cli(["preview", "--file", str(records)], {**env, "SFCHARLES_FIELD_MAP": LEAD_MAP})

    assert result.returncode == 2
    assert f"records file {records}: record 2 is not a JSON object" in result.stderr


def test_preview_malformed_where_fails(env, charles) -> None:
    result = run_cli(["preview", "--where", "LastName = "], {**env, "SFCHARLES_FIELD_MAP": LEAD_MAP})

    assert result.returncode == 1
    assert "MALFORMED_QUERY" in result.stderr
    assert result.stdout == ""


# --------------------------------------------------------------------------- the emulator's Leads and Person Accounts


def test_lead_describe_types(make_app) -> None:
    types = make_app().source.describe_fields("Lead")

    assert types["MobilePhone"] == types["Phone"] == "phone"
    assert types["Email"] == "email"
    assert types["Country"] == types["Company"] == "string"
    assert types["Status"] == types["LeadSource"] == "picklist"
    assert types["Product_Interest__c"] == "multipicklist"
    assert types["AnnualRevenue"] == "currency"
    assert types["NumberOfEmployees"] == "int"
    assert types["IsConverted"] == types["HasOptedOutOfEmail"] == "boolean"
    assert types["ConvertedDate"] == "date"
    assert types["Address"] == "address"


def test_person_account_describe_types(make_app) -> None:
    types = make_app().source.describe_fields("Account")

    assert types["IsPersonAccount"] == "boolean"
    assert types["PersonMobilePhone"] == types["Phone"] == "phone"
    assert types["PersonEmail"] == "email"
    assert types["FirstName"] == types["LastName"] == types["PersonMailingCountry"] == "string"
    assert types["PersonBirthdate"] == "date"
    assert types["PersonMailingAddress"] == "address"


def test_fetch_where_reads_person_accounts(make_app) -> None:
    records = make_app().source.fetch_where("Account", ["Name", "PersonEmail"], "IsPersonAccount = true", 100)

    assert len(records) == 5
    assert "Anna Müller" in {record["Name"] for record in records}
    assert all(set(record) == {"attributes", "Id", "Name", "PersonEmail"} for record in records)


def test_fetch_where_applies_limit(make_app) -> None:
    records = make_app().source.fetch_where("Lead", ["LastName"], "IsConverted = false", 2)

    assert len(records) == 2


def test_query_all_returns_deleted_lead(salesforce) -> None:
    webb = record_id(salesforce, "Lead", "Webb")
    salesforce.delete_record("Lead", webb)
    token = requests.post(
        f"{salesforce.url}/services/oauth2/token",
        data={"grant_type": "client_credentials"},
        auth=(salesforce.client_id, CLIENT_SECRET),
        verify=salesforce.ca_file,
        timeout=10,
    ).json()["access_token"]

    def count(resource: str) -> int:
        response = requests.get(
            f"{salesforce.url}/services/data/v62.0/{resource}",
            params={"q": "SELECT Id FROM Lead WHERE IsDeleted = true"},
            headers={"Authorization": f"Bearer {token}"},
            verify=salesforce.ca_file,
            timeout=10,
        )
        return response.json()["totalSize"]

    assert count("query") == 0
    assert count("queryAll") == 1


def test_admin_endpoints_create_and_update_lead(salesforce) -> None:
    created = requests.post(
        f"{salesforce.url}/_emulator/records/Lead",
        json={"fields": {"LastName": "Ng", "Company": "Ng Ltd", "MobilePhone": "+4915123456789"}},
        verify=salesforce.ca_file,
        timeout=10,
    )
    lead_id = created.json()["id"]
    updated = requests.patch(
        f"{salesforce.url}/_emulator/records/Lead/{lead_id}",
        json={"fields": {"FirstName": "Kim", "Product_Interest__c": "Dining"}},
        verify=salesforce.ca_file,
        timeout=10,
    )

    assert created.status_code == 201
    assert updated.status_code == 200
    lead = salesforce.get_record("Lead", lead_id)
    assert lead["Name"] == "Kim Ng"
    assert lead["Status"] == "Open - Not Contacted", "the picklist default"
    assert lead["IsConverted"] is False
    assert lead["Product_Interest__c"] == "Dining"


def test_person_account_needs_last_name(salesforce) -> None:
    with pytest.raises(ValueError, match=r"Required fields are missing: \[LastName\] on person Account"):
        salesforce.create_record("Account", {"IsPersonAccount": True, "FirstName": "Solo"})


def test_person_account_name_built_from_parts(salesforce) -> None:
    account_id = salesforce.create_record("Account", {"IsPersonAccount": True, "FirstName": "Mia", "LastName": "Roth"})

    assert salesforce.get_record("Account", account_id)["Name"] == "Mia Roth"


def test_default_emulator_unchanged() -> None:
    emulator = SalesforceEmulator()

    assert len(emulator.records("Contact")) == 162
    assert all("IsPersonAccount" not in account for account in emulator.records("Account"))
    with pytest.raises(ValueError, match="unknown object 'Lead'"):
        emulator.records("Lead")


def test_empty_emulator_seeds_no_samples() -> None:
    emulator = SalesforceEmulator(seed_files=[], leads=True, person_accounts=True)

    assert emulator.records("Lead") == []
    assert emulator.records("Account") == []


def test_emulator_command_line_flags() -> None:
    from connector.emulators.salesforce import _build_argument_parser

    arguments = _build_argument_parser().parse_args(["--leads", "--person-accounts"])

    assert arguments.leads is True
    assert arguments.person_accounts is True


# --------------------------------------------------------------------------- preview helpers


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON (Expecting property name enclosed in double quotes: line 1 column 2 (char 1))"),
        ('{"records": 5}', "expected a JSON list of records, or an object with a records list"),
        ('"text"', "expected a JSON list of records, or an object with a records list"),
        ("[[]]", "record 1 is not a JSON object"),
    ],
)
def test_records_file_errors(tmp_path, content: str, message: str) -> None:
    path = tmp_path / "records.json"
    path.write_text(content, encoding="utf-8")

    with pytest.raises(ConfigurationError) as info:
        read_records_file(path)

    assert str(info.value) == f"records file {path}: {message}"


def test_records_file_missing(tmp_path) -> None:
    with pytest.raises(ConfigurationError, match=r"records file '.*absent\.json': cannot read it \(No such file or directory\)"):
        read_records_file(tmp_path / "absent.json")


def test_records_file_formats(tmp_path) -> None:
    record = {"Id": "00Q000000000001AAA"}
    shapes = {"list.json": [record], "query.json": {"totalSize": 1, "records": [record]}, "sf.json": {"status": 0, "result": {"records": [record]}}}

    for name, document in shapes.items():
        path = tmp_path / name
        path.write_text(json.dumps(document), encoding="utf-8")
        assert read_records_file(path) == [record], name


def test_too_many_ids_rejected() -> None:
    with pytest.raises(ConfigurationError) as info:
        ids_condition(["00Q5g0000000000AAA"] * 201)

    assert str(info.value) == "201 Ids given; preview at most 200 at a time"


def test_ids_condition_quotes_ids() -> None:
    assert ids_condition(["00Q5g0000000000AAA", " 00Q5g0000000001 "]) == "Id IN ('00Q5g0000000000AAA', '00Q5g0000000001')"


def test_fetch_where_limit_checked(make_app) -> None:
    with pytest.raises(ConfigurationError) as info:
        make_app().source.fetch_where("Lead", ["LastName"], "IsConverted = false", 2001)

    assert str(info.value) == "limit 2001 is out of range; use 1 to 2000"
