import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from connector.emulators.charles import validate_contact
from connector.errors import ConfigurationError
from connector.field_map import Mapped, Skipped, builtin_map_path, country_to_region, load_field_map

RECORD_ID = "003000000000001AAA"


def contact(**fields: object) -> dict[str, object]:
    return {"Id": RECORD_ID, **fields}


@pytest.fixture
def field_map():
    return load_field_map(default_region="US")


def test_sample_contact_maps_every_target(field_map) -> None:
    outcome = field_map.apply(
        contact(
            FirstName="Frayda", LastName="Dowsing", MobilePhone="707-490-8673", Email="fraydadowsing@example.com",
            LeadSource="Online Travel Agent", MailingStreet="94046 Grasskamp Junction", MailingCity="Honolulu",
            MailingState="Hawaii", MailingPostalCode="96815", MailingCountry="United States",
        )
    )
    assert isinstance(outcome, Mapped)
    assert outcome.payload == {
        "external_reference_id": "+17074908673",
        "source_type": "salesforce",
        "first_name": "Frayda",
        "last_name": "Dowsing",
        "phone_numbers": [{"type": "mobile", "value": "+17074908673"}],
        "email_addresses": [{"type": "main", "value": "fraydadowsing@example.com"}],
        "custom_properties": {
            "salesforce_id": RECORD_ID,
            "lead_source": "Online Travel Agent",
            "mailing_street": "94046 Grasskamp Junction",
            "mailing_city": "Honolulu",
            "mailing_state": "Hawaii",
            "mailing_postal_code": "96815",
            "mailing_country": "United States",
        },
    }


def test_impossible_number_skipped_with_reason(field_map) -> None:
    outcome = field_map.apply(contact(MobilePhone="196-794-6794", MailingCountry="United States"))
    assert isinstance(outcome, Skipped)
    assert outcome.reason == "phone_invalid"
    assert "MobilePhone" in outcome.detail


def test_no_phone_skipped(field_map) -> None:
    outcome = field_map.apply(contact(LastName="Nobody"))
    assert isinstance(outcome, Skipped)
    assert outcome.reason == "no_phone"


def test_no_region_skipped_without_default() -> None:
    outcome = load_field_map(default_region=None).apply(contact(Phone="4152568563"))
    assert isinstance(outcome, Skipped)
    assert outcome.reason == "phone_region_unknown"


def test_default_region_used_without_country(field_map) -> None:
    outcome = field_map.apply(contact(Phone="4152568563"))
    assert isinstance(outcome, Mapped)
    assert outcome.payload["external_reference_id"] == "+14152568563"
    assert outcome.payload["phone_numbers"] == [{"type": "work", "value": "+14152568563"}]


def test_record_country_beats_default_region(field_map) -> None:
    outcome = field_map.apply(contact(Phone="030 12345678", MailingCountry="Germany"))
    assert isinstance(outcome, Mapped)
    assert outcome.payload["external_reference_id"] == "+493012345678"


def test_mobile_preferred_over_phone(field_map) -> None:
    outcome = field_map.apply(contact(MobilePhone="(415) 555-2671", Phone="4152568563"))
    assert isinstance(outcome, Mapped)
    assert outcome.payload["external_reference_id"] == "+14155552671"


def test_falls_back_to_phone_when_mobile_invalid(field_map) -> None:
    outcome = field_map.apply(contact(MobilePhone="555-1234", Phone="4152568563"))
    assert isinstance(outcome, Mapped)
    assert outcome.payload["external_reference_id"] == "+14152568563"
    assert any("MobilePhone dropped" in note for note in outcome.notes)


def test_extension_not_in_identity(field_map) -> None:
    outcome = field_map.apply(contact(Phone="(415) 555-2671 ext. 123"))
    assert isinstance(outcome, Mapped)
    assert outcome.payload["external_reference_id"] == "+14155552671"


def test_invalid_email_dropped_valid_kept() -> None:
    field_map = load_field_map(default_region="US")
    outcome = field_map.apply(contact(Phone="4152568563", Email="not-an-email"))
    assert isinstance(outcome, Mapped)
    assert "email_addresses" not in outcome.payload
    assert any("Email dropped" in note for note in outcome.notes)


def test_empty_values_absent_never_none(field_map) -> None:
    outcome = field_map.apply(contact(Phone="4152568563", FirstName="  ", MiddleName=None, LastName="O'Dwyer"))
    assert isinstance(outcome, Mapped)
    assert "first_name" not in outcome.payload
    assert "middle_name" not in outcome.payload
    assert outcome.payload["last_name"] == "O'Dwyer"
    assert "None" not in str(outcome.payload)


def test_unicode_names_kept(field_map) -> None:
    outcome = field_map.apply(contact(Phone="4152568563", FirstName="Андре\u0438\u0306", LastName="Петров"))
    assert isinstance(outcome, Mapped)
    assert outcome.payload["first_name"] == "Андрей"  # NFC joins и and the combining breve into й
    assert outcome.payload["last_name"] == "Петров"


def test_tags_field_split_on_semicolon() -> None:
    field_map = load_field_map(default_region="US", tags_field="Interests__c")
    outcome = field_map.apply(contact(Phone="4152568563", Interests__c="Golf;Spa; ;Golf"))
    assert isinstance(outcome, Mapped)
    assert outcome.payload["tags"] == ["Golf", "Spa"]
    assert "Interests__c" in field_map.source_fields()


def test_relationship_value_read() -> None:
    field_map = load_field_map(default_region="US")
    record = contact(Phone="4152568563", Account={"attributes": {"type": "Account"}, "Name": "Acme"})
    assert isinstance(field_map.apply(record), Mapped)


@pytest.mark.parametrize(("country", "region"), [("United States", "US"), ("USA", "US"), ("Deutschland", "DE"), ("de", "DE"), ("Atlantis", None)])
def test_country_names_to_regions(country: str, region: str | None) -> None:
    assert country_to_region(country) == region


def test_source_fields_include_country(field_map) -> None:
    fields = field_map.source_fields()
    assert fields[:2] == ["MobilePhone", "Phone"]
    assert "MailingCountry" in fields


def test_optional_field_dropped_when_org_lacks_it(field_map) -> None:
    describe = {name: "string" for name in field_map.source_fields() if name != "MiddleName"}
    assert field_map.check_against(describe) == []
    assert "MiddleName" not in field_map.source_fields()


def test_missing_field_reported(field_map) -> None:
    describe = {name: "string" for name in field_map.source_fields() if name != "LeadSource"}
    problems = field_map.check_against(describe)
    assert len(problems) == 1
    assert "'LeadSource' does not exist on Contact" in problems[0]


def test_map_schema_error_names_file_line_key(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("object: Contact\nidentity:\n  from: [MobilePhone]\ncustom_properties:\n  Bad-Name: {from: Id}\n")
    with pytest.raises(ConfigurationError) as info:
        load_field_map(path)
    message = str(info.value)
    assert f"{path}:4" in message or f"{path}:5" in message
    assert "custom_properties" in message
    assert "Bad-Name" in message


def test_map_unknown_key_rejected(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("object: Contact\nidentity:\n  from: [MobilePhone]\nnickname: {from: FirstName}\n")
    with pytest.raises(ConfigurationError) as info:
        load_field_map(path)
    assert f"{path}:4" in str(info.value)
    assert "nickname" in str(info.value)


def test_map_field_name_injection_rejected(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("object: Contact\nidentity:\n  from: [\"Phone FROM User --\"]\n")
    with pytest.raises(ConfigurationError, match="not a Salesforce field API name"):
        load_field_map(path)


def test_missing_map_file_names_setting(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="SFCHARLES_FIELD_MAP"):
        load_field_map(tmp_path / "absent.yaml")


@pytest.mark.parametrize("value", [{"nested": 1}, ["a"], 12.5, True, "", "   "])
def test_odd_values_never_raise(field_map, value: object) -> None:
    outcome = field_map.apply(contact(MobilePhone=value, Phone=value, FirstName=value, Email=value))
    assert isinstance(outcome, (Mapped, Skipped))


# --------------------------------------------------------------------------- helpers for custom maps

BASE_MAP = """\
object: Contact
identity:
  from: [MobilePhone, Phone]
  country_from: MailingCountry
"""


def write_map(tmp_path: Path, text: str, name: str = "map.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def custom_map(tmp_path: Path, extra: str, *, default_region: str | None = "US"):
    """Load the base map plus ``extra`` YAML lines."""
    return load_field_map(write_map(tmp_path, BASE_MAP + extra), default_region=default_region)


def mapped(field_map, **fields: object) -> Mapped:
    outcome = field_map.apply(contact(Phone="4152568563", **fields))
    assert isinstance(outcome, Mapped), outcome
    return outcome


# --------------------------------------------------------------------------- the people of the brief


def test_german_local_number_with_german_country(field_map) -> None:
    outcome = mapped(field_map, MobilePhone="0151 23456789", MailingCountry="Germany")

    assert outcome.payload["external_reference_id"] == "+4915123456789"
    assert outcome.payload["phone_numbers"][0] == {"type": "mobile", "value": "+4915123456789"}


def test_us_number_without_country_uses_default_region(field_map) -> None:
    outcome = field_map.apply(contact(MobilePhone="(415) 555-2671"))

    assert isinstance(outcome, Mapped)
    assert outcome.payload["external_reference_id"] == "+14155552671"


def test_extension_kept_in_custom_property(field_map) -> None:
    outcome = field_map.apply(contact(Phone="(415) 555-2671 ext. 204"))

    assert isinstance(outcome, Mapped)
    assert outcome.payload["external_reference_id"] == "+14155552671"
    assert outcome.payload["phone_numbers"] == [{"type": "work", "value": "+14155552671"}]
    assert outcome.payload["custom_properties"]["phone_extension"] == "204"


def test_null_middle_name_absent(field_map) -> None:
    outcome = mapped(field_map, FirstName="Ada", MiddleName=None, LastName="Lovelace")

    assert "middle_name" not in outcome.payload
    assert outcome.payload["first_name"] == "Ada"
    assert outcome.notes == ()


def test_cyrillic_and_apostrophe_names_kept(field_map) -> None:
    cyrillic = mapped(field_map, FirstName="Ольга", LastName="Иванова")
    apostrophe = mapped(field_map, FirstName="Siobhán", LastName="O'Connor")

    assert (cyrillic.payload["first_name"], cyrillic.payload["last_name"]) == ("Ольга", "Иванова")
    assert (apostrophe.payload["first_name"], apostrophe.payload["last_name"]) == ("Siobhán", "O'Connor")


def test_decomposed_accents_become_nfc(field_map) -> None:
    outcome = mapped(field_map, FirstName="Toma\u0301s")

    assert outcome.payload["first_name"] == "Tom\u00e1s"


def test_relationship_value_in_property(tmp_path: Path) -> None:
    field_map = custom_map(tmp_path, "custom_properties:\n  account_name: {from: Account.Name}\n")

    outcome = mapped(field_map, Account={"attributes": {"type": "Account"}, "Name": " Acme "})

    assert outcome.payload["custom_properties"] == {"account_name": "Acme"}
    assert "Account.Name" in field_map.source_fields()


# --------------------------------------------------------------------------- transforms


def test_text_transform_trims_and_writes_scalars(tmp_path: Path) -> None:
    field_map = custom_map(
        tmp_path,
        "custom_properties:\n  a: {from: A__c}\n  b: {from: B__c}\n  c: {from: C__c}\n  d: {from: D__c}\n",
    )

    outcome = mapped(field_map, A__c="  padded \t", B__c=12.0, C__c=True, D__c="")

    assert outcome.payload["custom_properties"] == {"a": "padded", "b": "12", "c": "true"}


def test_text_transform_drops_objects_with_note(tmp_path: Path) -> None:
    field_map = custom_map(tmp_path, "custom_properties:\n  a: {from: A__c}\n")

    outcome = mapped(field_map, A__c={"secret": "value-123"})

    assert "custom_properties" not in outcome.payload
    assert outcome.notes == ("A__c dropped from custom_properties.a: an object, not a single value",)


def test_phone_region_from_country_code_field(tmp_path: Path) -> None:
    field_map = load_field_map(
        write_map(tmp_path, "object: Contact\nidentity:\n  from: Phone\n  country_from: [MailingCountryCode, MailingCountry]\n"),
        default_region="US",
    )

    iso_code = field_map.apply(contact(Phone="030 12345678", MailingCountryCode="DE", MailingCountry="Narnia"))
    calling_code = field_map.apply(contact(Phone="030 12345678", MailingCountryCode="+49"))

    assert isinstance(iso_code, Mapped)
    assert iso_code.payload["external_reference_id"] == "+493012345678"
    assert isinstance(calling_code, Mapped)
    assert calling_code.payload["external_reference_id"] == "+493012345678"


def test_phone_transform_country_option(tmp_path: Path) -> None:
    field_map = custom_map(
        tmp_path,
        "phone_numbers:\n  - {type: home, from: HomePhone, country_from: OtherCountry}\n",
    )

    outcome = mapped(field_map, HomePhone="030 12345678", OtherCountry="Germany")

    assert outcome.payload["phone_numbers"] == [{"type": "home", "value": "+493012345678"}]


def test_phone_without_region_dropped_with_note() -> None:
    field_map = load_field_map(default_region=None)

    outcome = field_map.apply(contact(MobilePhone="+4915123456789", Phone="4152568563"))

    assert isinstance(outcome, Mapped)
    assert outcome.payload["phone_numbers"] == [{"type": "mobile", "value": "+4915123456789"}]
    assert "Phone dropped from phone_numbers.1: no country on the record and no default region" in outcome.notes


def test_impossible_number_in_phone_numbers_noted(field_map) -> None:
    outcome = field_map.apply(contact(MobilePhone="4152568563", Phone="196-794-6794"))

    assert isinstance(outcome, Mapped)
    assert outcome.payload["phone_numbers"] == [{"type": "mobile", "value": "+14152568563"}]
    assert "Phone dropped from phone_numbers.1: not a valid number for region US" in outcome.notes


def test_phone_extension_transform(tmp_path: Path) -> None:
    field_map = custom_map(tmp_path, "custom_properties:\n  ext: {from: [Phone, MobilePhone], transform: phone_extension}\n")

    with_extension = field_map.apply(contact(MobilePhone="(650) 253-0000 x 99", Phone="4152568563"))
    without = field_map.apply(contact(Phone="4152568563"))

    assert isinstance(with_extension, Mapped)
    assert with_extension.payload["custom_properties"] == {"ext": "99"}
    assert isinstance(without, Mapped)
    assert "custom_properties" not in without.payload


def test_invalid_email_beside_valid(tmp_path: Path) -> None:
    field_map = custom_map(
        tmp_path,
        "email_addresses:\n  - {type: main, from: Email}\n  - {type: work, from: Secondary_Email__c}\n",
    )

    outcome = mapped(field_map, Email="jo.smith(at)example.com", Secondary_Email__c="jo.smith@example.com")

    assert outcome.payload["email_addresses"] == [{"type": "work", "value": "jo.smith@example.com"}]
    assert outcome.notes == ("Email dropped from email_addresses.0: invalid email address (An email address must have an @-sign)",)


def test_email_note_never_quotes_address(tmp_path: Path) -> None:
    field_map = custom_map(tmp_path, "email_addresses:\n  - {type: main, from: Email}\n")

    outcome = mapped(field_map, Email="jo<smith>@exa!mple.com")

    assert len(outcome.notes) == 1
    assert "smith" not in outcome.notes[0]
    assert "!" not in outcome.notes[0]


def test_duplicate_emails_removed_case_insensitively(tmp_path: Path) -> None:
    field_map = custom_map(
        tmp_path,
        "email_addresses:\n  - {type: main, from: Email}\n  - {type: work, from: Secondary_Email__c}\n",
    )

    outcome = mapped(field_map, Email="Jo.Smith@Example.com", Secondary_Email__c="jo.smith@EXAMPLE.COM")

    assert outcome.payload["email_addresses"] == [{"type": "main", "value": "Jo.Smith@example.com"}]


def test_email_fallback_chain(tmp_path: Path) -> None:
    field_map = custom_map(tmp_path, "email_addresses:\n  - {type: main, from: [Email, Secondary_Email__c]}\n")

    outcome = mapped(field_map, Email="broken@", Secondary_Email__c="jo@example.com")

    assert outcome.payload["email_addresses"] == [{"type": "main", "value": "jo@example.com"}]
    assert len(outcome.notes) == 1
    assert outcome.notes[0].startswith("Email dropped from email_addresses.0: invalid email address")


def test_multipicklist_to_tags(tmp_path: Path) -> None:
    field_map = custom_map(tmp_path, "tags:\n  - {from: Interests__c}\n  - {from: Segment__c, split: null}\n")

    outcome = mapped(field_map, Interests__c="Golf;Spa; ;Golf;Dining", Segment__c="A;B")

    assert outcome.payload["tags"] == ["Golf", "Spa", "Dining", "A;B"]


def test_multipicklist_custom_separator_and_labels(tmp_path: Path) -> None:
    field_map = custom_map(
        tmp_path,
        "tags:\n  - {from: Interests__c, transform: multipicklist, split: ',', map: {golf: Golfer, spa: Spa guest}}\n",
    )

    outcome = mapped(field_map, Interests__c="Golf, Spa,Sailing")

    assert outcome.payload["tags"] == ["Golfer", "Spa guest", "Sailing"]


def test_boolean_transform(tmp_path: Path) -> None:
    field_map = custom_map(
        tmp_path,
        "custom_properties:\n  opt_out: {from: HasOptedOutOfEmail, transform: boolean}\n"
        "  do_not_call: {from: DoNotCall, transform: boolean}\n  bad: {from: Flag__c, transform: boolean}\n",
    )

    outcome = mapped(field_map, HasOptedOutOfEmail=False, DoNotCall="TRUE", Flag__c="maybe")

    assert outcome.payload["custom_properties"] == {"opt_out": "false", "do_not_call": "true"}
    assert outcome.notes == ("Flag__c dropped from custom_properties.bad: not a boolean",)


def test_number_transform(tmp_path: Path) -> None:
    field_map = custom_map(
        tmp_path,
        "custom_properties:\n  employees: {from: NumberOfEmployees, transform: number}\n"
        "  revenue: {from: AnnualRevenue, transform: number, decimals: 2}\n"
        "  score: {from: Score__c, transform: number}\n  bad: {from: Bad__c, transform: number}\n",
    )

    outcome = mapped(field_map, NumberOfEmployees=40.0, AnnualRevenue=1234.565, Score__c=1e-7, Bad__c="lots")

    assert outcome.payload["custom_properties"] == {"employees": "40", "revenue": "1234.57", "score": "0.0000001"}
    assert outcome.notes == ("Bad__c dropped from custom_properties.bad: not a number",)


def test_number_transform_rejects_infinity(tmp_path: Path) -> None:
    field_map = custom_map(tmp_path, "custom_properties:\n  n: {from: N__c, transform: number}\n")

    outcome = mapped(field_map, N__c=float("inf"))

    assert outcome.notes == ("N__c dropped from custom_properties.n: not a finite number",)


def test_date_transform(tmp_path: Path) -> None:
    field_map = custom_map(
        tmp_path,
        "custom_properties:\n  birthdate: {from: Birthdate, transform: date}\n"
        "  german: {from: Birthdate, transform: date, format: '%d.%m.%Y'}\n"
        "  created_day: {from: CreatedDate, transform: date}\n  bad: {from: Bad__c, transform: date}\n",
    )

    outcome = mapped(field_map, Birthdate="1985-04-12", CreatedDate="2025-01-23T23:30:00.000-0500", Bad__c="2025-02-30")

    assert outcome.payload["custom_properties"] == {"birthdate": "1985-04-12", "german": "12.04.1985", "created_day": "2025-01-24"}
    assert outcome.notes == (
        "Bad__c dropped from custom_properties.bad: not a date (expected YYYY-MM-DD or an ISO 8601 datetime with an offset)",
    )


def test_datetime_transform(tmp_path: Path) -> None:
    field_map = custom_map(
        tmp_path,
        "custom_properties:\n  created: {from: CreatedDate, transform: datetime}\n"
        "  day: {from: CreatedDate, transform: datetime, format: '%Y%m%d'}\n  naive: {from: Naive__c, transform: datetime}\n",
    )

    outcome = mapped(field_map, CreatedDate="2025-01-23T10:26:15.123+0100", Naive__c="2025-01-23T10:26:15")

    assert outcome.payload["custom_properties"] == {"created": "2025-01-23T09:26:15Z", "day": "20250123"}
    assert len(outcome.notes) == 1
    assert outcome.notes[0].startswith("Naive__c dropped from custom_properties.naive: not a datetime")


def test_value_map_with_default(tmp_path: Path) -> None:
    field_map = custom_map(
        tmp_path,
        "custom_properties:\n  source: {from: LeadSource, map: {Web: Website, Phone Inquiry: Phone}, default: Other}\n",
    )

    web = mapped(field_map, LeadSource="web")
    unknown = mapped(field_map, LeadSource="Trade Show")
    empty = mapped(field_map, LeadSource=None)

    assert web.payload["custom_properties"] == {"source": "Website"}
    assert unknown.payload["custom_properties"] == {"source": "Other"}
    assert "custom_properties" not in empty.payload


def test_value_map_without_default_passes_value(tmp_path: Path) -> None:
    field_map = custom_map(tmp_path, "custom_properties:\n  source: {from: LeadSource, map: {Web: Website}}\n")

    outcome = mapped(field_map, LeadSource="Trade Show")

    assert outcome.payload["custom_properties"] == {"source": "Trade Show"}


def test_value_map_on_boolean(tmp_path: Path) -> None:
    field_map = custom_map(
        tmp_path,
        "custom_properties:\n  kind: {from: IsCustomer__c, transform: boolean, map: {true: Customer, false: Prospect}}\n",
    )

    outcome = mapped(field_map, IsCustomer__c=True)

    assert outcome.payload["custom_properties"] == {"kind": "Customer"}


def test_constant_value(tmp_path: Path) -> None:
    field_map = custom_map(tmp_path, "custom_properties:\n  origin: {value: ' Salesforce '}\ntags:\n  - {value: imported}\n")

    outcome = mapped(field_map)

    assert outcome.payload["custom_properties"] == {"origin": "Salesforce"}
    assert outcome.payload["tags"] == ["imported"]


def test_template_fills_fields(tmp_path: Path) -> None:
    field_map = custom_map(
        tmp_path,
        'custom_properties:\n  full_name: {template: "{FirstName} {MiddleName} {LastName}"}\n'
        '  braces: {template: "{{id}} {Id}"}\n',
    )

    outcome = mapped(field_map, FirstName="Ada", MiddleName=None, LastName="Lovelace")

    assert outcome.payload["custom_properties"] == {"full_name": "Ada Lovelace", "braces": f"{{id}} {RECORD_ID}"}
    assert {"FirstName", "MiddleName", "LastName", "Id"} <= set(field_map.source_fields())


def test_template_with_only_empty_fields_absent(tmp_path: Path) -> None:
    field_map = custom_map(tmp_path, 'custom_properties:\n  full_name: {template: "{FirstName} {LastName}"}\n')

    outcome = mapped(field_map, FirstName="", LastName=None)

    assert "custom_properties" not in outcome.payload


def test_template_notes_object_placeholder(tmp_path: Path) -> None:
    field_map = custom_map(tmp_path, 'custom_properties:\n  label: {template: "{Title__c} at {Company__c}"}\n')

    outcome = mapped(field_map, Title__c=["a", "b"], Company__c="Acme")

    assert outcome.payload["custom_properties"] == {"label": "at Acme"}
    assert outcome.notes == ("Title__c dropped from custom_properties.label: a list, not a single value",)


def test_fallback_chain_skips_empty_fields(tmp_path: Path) -> None:
    field_map = custom_map(tmp_path, "names:\n  first_name: {from: [Nickname__c, FirstName]}\n")

    outcome = mapped(field_map, Nickname__c="  ", FirstName="Margaret")

    assert outcome.payload["first_name"] == "Margaret"


def test_notes_never_contain_values(field_map) -> None:
    outcome = field_map.apply(
        contact(MobilePhone="555-0199-SECRET", Phone="4152568563", Email="secret-person(at)example.com", FirstName={"x": "SECRET"})
    )

    assert isinstance(outcome, Mapped)
    assert len(outcome.notes) == 4
    assert all("SECRET" not in note and "secret" not in note for note in outcome.notes)


# --------------------------------------------------------------------------- where

PERSON_ACCOUNT_MAP = """\
object: Account
where: {IsPersonAccount: true, Type: "Customer's \\"VIP\\"\\n", Rating__c: 2.5, Employees__c: 10}
identity:
  from: PersonMobilePhone
"""


def test_soql_conditions_escape_strings(tmp_path: Path) -> None:
    field_map = load_field_map(write_map(tmp_path, PERSON_ACCOUNT_MAP), default_region="US")

    assert field_map.soql_conditions() == [
        "IsPersonAccount = true",
        "Type = 'Customer\\'s \\\"VIP\\\"\\n'",
        "Rating__c = 2.5",
        "Employees__c = 10",
    ]
    assert {"IsPersonAccount", "Type", "Rating__c", "Employees__c"} <= set(field_map.source_fields())


def test_soql_conditions_parse_in_emulator(tmp_path: Path) -> None:
    from connector.emulators import soql

    field_map = load_field_map(write_map(tmp_path, PERSON_ACCOUNT_MAP))
    query = f"SELECT Id FROM Account WHERE {' AND '.join(field_map.soql_conditions())}"

    statement = soql.parse(query)

    assert statement.where is not None


def test_where_filters_records(tmp_path: Path) -> None:
    field_map = load_field_map(write_map(tmp_path, "object: Account\nwhere: {IsPersonAccount: true}\nidentity:\n  from: PersonMobilePhone\n"))
    person = {"Id": "001A", "IsPersonAccount": True, "PersonMobilePhone": "+4915123456789"}
    business = {"Id": "001B", "IsPersonAccount": False, "PersonMobilePhone": "+4915123456789"}

    person_outcome = field_map.apply(person)
    business_outcome = field_map.apply(business)

    assert isinstance(person_outcome, Mapped)
    assert isinstance(business_outcome, Skipped)
    assert business_outcome.reason == "filtered_out"
    assert business_outcome.detail == "IsPersonAccount does not equal the map's where value"


def test_where_text_compares_ignoring_case(tmp_path: Path) -> None:
    field_map = load_field_map(write_map(tmp_path, "object: Lead\nwhere: {Status: Open, Score__c: 3}\nidentity:\n  from: Phone\n"))

    matching = field_map.apply({"Id": "00QA", "Status": "OPEN", "Score__c": 3.0, "Phone": "+4915123456789"})
    other = field_map.apply({"Id": "00QB", "Status": "Closed", "Score__c": 3.0, "Phone": "+4915123456789"})

    assert isinstance(matching, Mapped)
    assert isinstance(other, Skipped)


# --------------------------------------------------------------------------- map schema errors


@pytest.mark.parametrize(
    ("extra", "line", "key", "message"),
    [
        ("names:\n  first_name: {optional: true}\n", 6, "names.first_name", "give exactly one of from, value or template (got none)"),
        ("names:\n  first_name: {from: A, value: b}\n", 6, "names.first_name", "give exactly one of from, value or template (got from, value)"),
        (
            "custom_properties:\n  interests: {from: Interests__c, transform: multipicklist}\n",
            6,
            "custom_properties.interests",
            "transform 'multipicklist' does not fit a name or custom property, which holds one string; "
            "use boolean, date, datetime, email, number, phone, phone_extension or text",
        ),
        ("phone_numbers:\n  - {type: home, from: Email, transform: email}\n", 6, "phone_numbers.0", "transform 'email' does not fit phone_numbers; use phone"),
        ("email_addresses:\n  - {type: main, from: Phone, transform: phone}\n", 6, "email_addresses.0", "transform 'phone' does not fit email_addresses; use email"),
        (
            "custom_properties:\n  p: {from: Phone, transform: phone, format: '%Y'}\n",
            6,
            "custom_properties.p",
            "option 'format' does not apply to transform 'phone'; it applies to date, datetime",
        ),
        ("custom_properties:\n  p: {from: A, split: ','}\n", 6, "custom_properties.p", "option 'split' does not apply to transform 'text'; it applies to multipicklist"),
        ("custom_properties:\n  p: {value: x, transform: boolean}\n", 6, "custom_properties.p", "a constant (value:) takes no transform and no map"),
        ("custom_properties:\n  p: {from: Phone, transform: phone, map: {a: b}}\n", 6, "custom_properties.p", "map does not apply to transform 'phone'; it applies to boolean, multipicklist, number, text"),
        ("custom_properties:\n  p: {from: A, default: x}\n", 6, "custom_properties.p", "default applies only together with map"),
        ("custom_properties:\n  p: {from: A, map: {Web: a, web: b}}\n", 6, "custom_properties.p.map", "value map keys 'Web' and 'web' differ only in case; keys match case-insensitively"),
        ("custom_properties:\n  p: {from: A, map: {}}\n", 6, "custom_properties.p.map", "value map is empty; give at least one picklist value and its label"),
        ("custom_properties:\n  p: {from: A, map: {Web: ' '}}\n", 6, "custom_properties.p.map", "value map label for 'Web' is empty"),
        ("custom_properties:\n  p: {from: A, map: {true: Yes}}\n", 6, "custom_properties.p.map", 'value map label for \'true\' is a YAML boolean; quote it, as in "Yes"'),
        ("custom_properties:\n  p: {from: A, map: {~: x}}\n", 6, "custom_properties.p.map", "value map key None is not a picklist value; use a non-empty string, number or boolean"),
        ("custom_properties:\n  p: {template: '{A'}\n", 6, "custom_properties.p.template", "template is not valid (expected '}' before end of string); write literal braces as {{ and }}"),
        ("custom_properties:\n  p: {template: '{A:>10}'}\n", 6, "custom_properties.p.template", "template placeholder {A} takes only a field name, without ! or : parts"),
        ("custom_properties:\n  p: {template: '{0} x'}\n", 6, "custom_properties.p.template", "template placeholder {0} is not a Salesforce field API name"),
        ("custom_properties:\n  p: {template: 'plain'}\n", 6, "custom_properties.p.template", "template has no {Field} placeholder; use value: for a constant"),
        ("custom_properties:\n  p: {from: D, transform: date, format: 'day'}\n", 6, "custom_properties.p.format", "format 'day' has no strftime directive such as %Y, %m or %d"),
        ("custom_properties:\n  p: {from: D, transform: date, format: '%Y-%Q'}\n", 6, "custom_properties.p.format", "format '%Y-%Q' has unknown strftime directives: %Q"),
        ("custom_properties:\n  p: {from: D, transform: date, format: '%Y%'}\n", 6, "custom_properties.p.format", "format '%Y%' ends with a lone %; write %% for a percent sign"),
        ("custom_properties:\n  p: {from: N, transform: number, decimals: 20}\n", 6, "custom_properties.p.decimals", "Input should be less than or equal to 12"),
        ("custom_properties:\n  p: {from: N, transform: upper}\n", 6, "custom_properties.p.transform", "Input should be 'text', 'phone', 'phone_extension', 'email', 'multipicklist', 'boolean', 'number', 'date' or 'datetime'"),
        ("custom_properties:\n  p: {value: '  '}\n", 6, "custom_properties.p.value", "must not be empty; leave the key out instead"),
        ("names:\n  nickname: {from: A}\n", 5, "names", "names takes first_name, middle_name and last_name, not 'nickname'"),
        ("where: {'Bad Name': 1}\n", 5, "where", "where field 'Bad Name' is not a Salesforce field API name"),
        ("where: {Status: [a, b]}\n", 5, "where", "where value of Status must be true, false, a number or a string, compared with ="),
        ("where: {Score__c: .nan}\n", 5, "where", "where value of Score__c is not a finite number"),
        ("where: {Status: \"a\\0b\"}\n", 5, "where", "where value of Status contains a control character that SOQL cannot escape"),
        ("tags:\n  - {from: Interests__c, country_from: X}\n", 6, "tags.0", "option 'country_from' does not apply to transform 'multipicklist'; it applies to phone, phone_extension"),
    ],
)
def test_map_schema_error_messages(tmp_path: Path, extra: str, line: int, key: str, message: str) -> None:
    path = write_map(tmp_path, BASE_MAP + extra)

    with pytest.raises(ConfigurationError) as info:
        load_field_map(path)

    assert str(info.value) == f"invalid field map (1 problem(s)):\n  - {path}:{line}: key {key}: {message}"


def test_map_errors_all_reported(tmp_path: Path) -> None:
    path = write_map(tmp_path, BASE_MAP + "names:\n  first_name: {}\ncustom_properties:\n  Bad: {from: A}\n")

    with pytest.raises(ConfigurationError) as info:
        load_field_map(path)

    assert str(info.value).startswith("invalid field map (2 problem(s)):")
    assert f"{path}:6: key names.first_name" in str(info.value)
    assert f"{path}:7: key custom_properties" in str(info.value)


def test_map_not_yaml_rejected(tmp_path: Path) -> None:
    path = write_map(tmp_path, "object: [Contact\n")

    with pytest.raises(ConfigurationError, match=r"field map .*map\.yaml: not valid YAML"):
        load_field_map(path)


def test_map_top_level_list_rejected(tmp_path: Path) -> None:
    path = write_map(tmp_path, "- object: Contact\n")

    with pytest.raises(ConfigurationError) as info:
        load_field_map(path)

    assert str(info.value) == f"field map {path}: the top level must be a mapping with object, identity and the target fields"


# --------------------------------------------------------------------------- checks against the describe

CONTACT_TYPES = {
    "Id": "id", "FirstName": "string", "MiddleName": "string", "LastName": "string", "MobilePhone": "phone",
    "Phone": "phone", "Email": "email", "LeadSource": "picklist", "MailingStreet": "textarea", "MailingCity": "string",
    "MailingState": "string", "MailingPostalCode": "string", "MailingCountry": "string", "MailingAddress": "address",
    "AccountId": "reference", "Birthdate": "date", "IsDeleted": "boolean", "Score__c": "double", "Notes__c": "string",
    "Interests__c": "multipicklist", "CreatedDate": "datetime",
}


def problems_for(tmp_path: Path, extra: str) -> tuple[Path, list[str]]:
    path = write_map(tmp_path, BASE_MAP + extra)
    return path, load_field_map(path).check_against(CONTACT_TYPES)


def test_shipped_contact_map_matches_describe(field_map) -> None:
    assert field_map.check_against(CONTACT_TYPES) == []


def test_missing_field_names_line_and_key(tmp_path: Path) -> None:
    path, problems = problems_for(tmp_path, "custom_properties:\n  source: {from: LeadSorce}\n")

    assert problems == [
        f"{path}:6: custom_properties.source: field 'LeadSorce' does not exist on Contact in this org; "
        "fix the name, mark it optional: true, or remove it"
    ]


def test_phone_transform_on_boolean_rejected(tmp_path: Path) -> None:
    path, problems = problems_for(tmp_path, "phone_numbers:\n  - {type: home, from: IsDeleted}\n")

    assert problems == [
        f"{path}:6: phone_numbers.0: field 'IsDeleted' is of type boolean on Contact, which transform 'phone' cannot read; "
        "it reads combobox, encryptedstring, phone, string, textarea"
    ]


def test_multipicklist_on_double_rejected(tmp_path: Path) -> None:
    path, problems = problems_for(tmp_path, "tags:\n  - {from: Score__c}\n")

    assert problems == [
        f"{path}:6: tags.0: field 'Score__c' is of type double on Contact, which transform 'multipicklist' cannot read; "
        "it reads combobox, encryptedstring, multipicklist, picklist, string, textarea"
    ]


def test_compatible_types_accepted(tmp_path: Path) -> None:
    _path, problems = problems_for(
        tmp_path,
        "custom_properties:\n  a: {from: Notes__c, transform: date}\n  b: {from: CreatedDate, transform: date}\n"
        "  c: {from: Score__c, transform: number}\n  d: {from: Score__c}\ntags:\n  - {from: Interests__c}\n  - {from: LeadSource}\n",
    )

    assert problems == []


def test_text_on_address_rejected(tmp_path: Path) -> None:
    path, problems = problems_for(tmp_path, "custom_properties:\n  address: {from: MailingAddress}\n")

    assert problems == [
        f"{path}:6: custom_properties.address: field 'MailingAddress' is of type address on Contact, "
        "which transform 'text' cannot read; map its component fields instead"
    ]


def test_template_field_missing_reported(tmp_path: Path) -> None:
    path, problems = problems_for(tmp_path, 'custom_properties:\n  label: {template: "{FirstName} {Nick__c}"}\n')

    assert problems == [
        f"{path}:6: custom_properties.label: field 'Nick__c' does not exist on Contact in this org; "
        "fix the name, mark it optional: true, or remove it"
    ]


def test_optional_template_field_dropped(tmp_path: Path) -> None:
    _path, problems = problems_for(tmp_path, 'custom_properties:\n  label: {template: "{FirstName} {Nick__c}", optional: true}\n')
    field_map = load_field_map(write_map(tmp_path, BASE_MAP + 'custom_properties:\n  label: {template: "{FirstName} {Nick__c}", optional: true}\n'))
    field_map.check_against(CONTACT_TYPES)

    assert problems == []
    assert "Nick__c" not in field_map.source_fields()


def test_country_field_of_wrong_type_rejected(tmp_path: Path) -> None:
    path = write_map(tmp_path, "object: Contact\nidentity:\n  from: Phone\n  country_from: Score__c\n")

    problems = load_field_map(path).check_against(CONTACT_TYPES)

    assert problems == [
        f"{path}:4: identity.country_from: field 'Score__c' is of type double on Contact, which a country field cannot read; "
        "it reads combobox, encryptedstring, picklist, string, textarea"
    ]


def test_identity_on_wrong_type_rejected(tmp_path: Path) -> None:
    path = write_map(tmp_path, "object: Contact\nidentity:\n  from: [MobilePhone, Birthdate]\n")

    problems = load_field_map(path).check_against(CONTACT_TYPES)

    assert problems == [
        f"{path}:3: identity.from: field 'Birthdate' is of type date on Contact, which transform 'phone' cannot read; "
        "it reads combobox, encryptedstring, phone, string, textarea"
    ]


def test_identity_without_any_field_rejected(tmp_path: Path) -> None:
    path = write_map(tmp_path, "object: Contact\nidentity:\n  from: [Mobile__c]\n  optional: true\n")

    problems = load_field_map(path).check_against(CONTACT_TYPES)

    assert problems == [
        f"{path}:3: identity.from: none of the identity fields exists on Contact in this org, "
        "so no record could get an external_reference_id"
    ]


def test_relationship_paths_checked_by_lookup_field(tmp_path: Path) -> None:
    path, problems = problems_for(
        tmp_path,
        "custom_properties:\n  account: {from: Account.Name}\n  partner: {from: Partner__r.Name}\n  owner: {from: Owner.Name}\n",
    )

    assert problems == [
        f"{path}:7: custom_properties.partner: field 'Partner__r.Name' does not exist on Contact in this org; "
        "fix the name, mark it optional: true, or remove it",
        f"{path}:8: custom_properties.owner: field 'Owner.Name' does not exist on Contact in this org; "
        "fix the name, mark it optional: true, or remove it",
    ]


def test_where_field_missing_reported(tmp_path: Path) -> None:
    path, problems = problems_for(tmp_path, "where: {IsPersonAccount: true}\n")

    assert problems == [f"{path}:5: where.IsPersonAccount: where field 'IsPersonAccount' does not exist on Contact in this org"]


def test_where_value_type_checked(tmp_path: Path) -> None:
    path, problems = problems_for(tmp_path, "where: {IsDeleted: 'no', Score__c: true, LeadSource: 3, Birthdate: '2020-01-01'}\n")

    assert problems == [
        f"{path}:5: where.IsDeleted: where field 'IsDeleted' is of type boolean on Contact; compare it with true or false",
        f"{path}:5: where.Score__c: where field 'Score__c' is of type double on Contact; compare it with a number",
        f"{path}:5: where.LeadSource: where field 'LeadSource' is of type picklist on Contact; compare it with a string",
        f"{path}:5: where.Birthdate: where field 'Birthdate' is of type date on Contact; "
        "where compares only boolean, number and text fields",
    ]


def test_tags_field_setting_checked(tmp_path: Path) -> None:
    field_map = load_field_map(default_region="US", tags_field="Score__c")

    problems = field_map.check_against(CONTACT_TYPES)

    assert len(problems) == 1
    assert problems[0].endswith(
        "SFCHARLES_TAGS_FIELD: field 'Score__c' is of type double on Contact, which transform 'multipicklist' cannot read; "
        "it reads combobox, encryptedstring, multipicklist, picklist, string, textarea"
    )


# --------------------------------------------------------------------------- shipped maps


@pytest.mark.parametrize(("name", "object_name"), [("contact.yaml", "Contact"), ("lead.yaml", "Lead"), ("person_account.yaml", "Account")])
def test_shipped_maps_load(name: str, object_name: str) -> None:
    field_map = load_field_map(builtin_map_path(name), default_region="US")

    assert field_map.object_name == object_name


def test_person_account_map_conditions() -> None:
    field_map = load_field_map(builtin_map_path("person_account.yaml"))

    assert field_map.soql_conditions() == ["IsPersonAccount = true"]
    assert field_map.source_fields()[:2] == ["PersonMobilePhone", "Phone"]


def test_lead_map_skips_converted_leads() -> None:
    field_map = load_field_map(builtin_map_path("lead.yaml"), default_region="US")

    outcome = field_map.apply({"Id": "00QA", "IsConverted": True, "MobilePhone": "+4915123456789", "LastName": "X", "Company": "Y"})

    assert isinstance(outcome, Skipped)
    assert outcome.reason == "filtered_out"
    assert field_map.soql_conditions() == ["IsConverted = false"]


# --------------------------------------------------------------------------- properties

ALL_TRANSFORMS_MAP = BASE_MAP + """\
where: {IsDeleted: false}
names:
  first_name: {from: [Nickname__c, FirstName]}
  middle_name: {template: "{MiddleName} {Suffix}"}
  last_name: {from: LastName, map: {x: Ex}, default: Other}
phone_numbers:
  - {type: mobile, from: MobilePhone}
  - {type: home, from: HomePhone, country_from: [OtherCountry, OtherCountryCode]}
email_addresses:
  - {type: main, from: [Email, Secondary_Email__c]}
custom_properties:
  salesforce_id: {from: Id}
  constant: {value: fixed}
  ext: {from: [Phone, MobilePhone], transform: phone_extension}
  flag: {from: Flag__c, transform: boolean, map: {true: "Yes"}}
  amount: {from: Amount__c, transform: number, decimals: 2}
  count: {from: Count__c, transform: number}
  day: {from: Day__c, transform: date, format: "%d.%m.%Y"}
  moment: {from: Moment__c, transform: datetime}
  account: {from: Account.Name}
tags:
  - {from: Interests__c}
  - {from: Segment__c, split: null, map: {a: Alpha}}
"""

_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text()
    | st.text(alphabet=st.characters(blacklist_categories=()))  # surrogates, controls and other odd code points
    | st.from_regex(r"[+0(]?[0-9 ()\-.]{0,18}( ?(ext\.?|x) ?[0-9]{1,5})?", fullmatch=True)
    | st.from_regex(r"[A-Za-z0-9.+<>!]{0,12}@[A-Za-z0-9.\-]{0,12}", fullmatch=True)
    | st.from_regex(r"\d{4}-\d{2}-\d{2}(T\d{2}:\d{2}:\d{2}(\.\d{3})?([+-]\d{4}|Z)?)?", fullmatch=True)
    | st.sampled_from(["Germany", "DE", "+49", "USA", "Atlantis", "true", "FALSE", "1e400", "NaN", ";;", "x"])
)
_VALUES = st.recursive(
    _SCALARS,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=8,
)


_VALID_PHONES = ["+4915123456789", "(415) 555-2671 ext. 204", "030 12345678", "+7 912 345-67-89"]


def _draw_record(data: st.DataObject, field_map) -> dict[str, object]:
    """Draw a record of arbitrary values; most of them pass the map's where and have a valid phone, so most get mapped."""
    roots = sorted({name.split(".")[0] for name in field_map.source_fields()} | {"Id"})
    record = data.draw(st.fixed_dictionaries({}, optional={name: _VALUES for name in roots}))
    # sampled_from prefers its first element, so True comes up most of the time.
    if data.draw(st.sampled_from([True, True, True, False])):
        record.update(field_map.spec.where)
    if data.draw(st.sampled_from([True, True, False])):
        record[field_map.spec.identity.source[0]] = data.draw(st.sampled_from(_VALID_PHONES))
    return record


def _check_outcome(outcome: object) -> None:
    event(outcome.reason if isinstance(outcome, Skipped) else "mapped")
    if isinstance(outcome, Skipped):
        assert outcome.reason in ("no_phone", "phone_invalid", "phone_region_unknown", "filtered_out"), outcome
        assert outcome.detail
        return
    assert isinstance(outcome, Mapped), outcome
    assert validate_contact(outcome.payload) == []
    json.dumps(outcome.payload, ensure_ascii=False).encode("utf-8")  # what the Charles client sends
    assert all(isinstance(note, str) and note for note in outcome.notes)


@pytest.fixture(scope="module")
def all_transforms_map(tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.mktemp("maps") / "all.yaml"
    path.write_text(ALL_TRANSFORMS_MAP, encoding="utf-8")
    return load_field_map(path, default_region="US", tags_field="Extra_Tags__c")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_apply_never_raises_with_every_transform(all_transforms_map, data: st.DataObject) -> None:
    record = _draw_record(data, all_transforms_map)

    _check_outcome(all_transforms_map.apply(record))


@pytest.mark.parametrize("name", ["contact.yaml", "lead.yaml", "person_account.yaml"])
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_apply_never_raises_with_shipped_maps(name: str, data: st.DataObject) -> None:
    field_map = load_field_map(builtin_map_path(name), default_region=data.draw(st.sampled_from([None, "US", "DE"])))
    record = _draw_record(data, field_map)

    _check_outcome(field_map.apply(record))


@given(record=st.one_of(st.none(), st.lists(st.integers()), st.text()))
def test_apply_rejects_non_object_records(record: object) -> None:
    outcome = load_field_map(default_region="US").apply(record)  # type: ignore[arg-type]

    assert isinstance(outcome, Skipped)
    assert outcome.reason == "mapping_error"


def test_where_with_huge_number_filters_out(tmp_path: Path) -> None:
    field_map = load_field_map(write_map(tmp_path, "object: Lead\nwhere: {Score__c: 3}\nidentity:\n  from: Phone\n"))

    outcome = field_map.apply({"Id": "00QA", "Score__c": 10**5000, "Phone": "+4915123456789"})

    assert isinstance(outcome, Skipped)
    assert outcome.reason == "filtered_out"


@pytest.mark.parametrize(
    ("text", "line", "key", "message"),
    [
        ("object: 'Contact WHERE'\nidentity: {from: Phone}\n", 1, "object", "String should match pattern '^[A-Za-z][A-Za-z0-9_]{0,79}$'"),
        ("object: Contact\n", 1, "identity", "Field required"),
        ("object: Contact\nidentity: {from: []}\n", 2, "identity.from", "List should have at least 1 item after validation, not 0"),
        ("object: Contact\nidentity: {from: Phone, transform: text}\n", 2, "identity.transform", "Extra inputs are not permitted"),
        ("object: Contact\nidentity: {from: Phone}\nphone_numbers:\n  - {from: Phone}\n", 4, "phone_numbers.0.type", "Field required"),
        ("object: Contact\nidentity: {from: Phone, country_from: 'Mailing Country'}\n", 2, "identity.country_from", "'Mailing Country' is not a Salesforce field API name (letters, digits, _, and . for relationships)"),
    ],
)
def test_map_structure_error_messages(tmp_path: Path, text: str, line: int, key: str, message: str) -> None:
    path = write_map(tmp_path, text)

    with pytest.raises(ConfigurationError) as info:
        load_field_map(path)

    assert str(info.value) == f"invalid field map (1 problem(s)):\n  - {path}:{line}: key {key}: {message}"
