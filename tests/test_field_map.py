from pathlib import Path

import pytest

from connector.errors import ConfigurationError
from connector.field_map import Mapped, Skipped, country_to_region, load_field_map

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
