"""Local emulator of the Salesforce REST API: a real HTTPS server on the loopback interface.

It serves what a Contact sync reads from Salesforce, with the shapes and error bodies of the
real API:

* ``POST /services/oauth2/token`` with the ``client_credentials`` and JWT bearer grants;
* ``GET /services/data/vNN.N/query?q=`` and ``queryAll?q=`` with paging through
  ``nextRecordsUrl`` locators, a SOQL subset (see :mod:`connector.emulators.soql`) and
  ``Sforce-Query-Options: batchSize=N``;
* ``sobjects`` (global describe), ``sobjects/<Object>``, ``sobjects/<Object>/describe``,
  ``sobjects/<Object>/<Id>``, ``sobjects/<Object>/updated`` and ``.../deleted``, ``limits``;
* Bulk API 2.0 query jobs under ``jobs/query`` (see :mod:`connector.emulators.bulk`);
* the ``Sforce-Limit-Info`` header and daily API quota, 401 ``INVALID_SESSION_ID`` for unknown
  or expired tokens, and injectable faults.

Test code drives it in-process through the :class:`SalesforceEmulator` methods, and other
processes through the unauthenticated ``/_emulator/`` endpoints on the same server.

By default the org has Contact, Account and User. ``leads=True`` (``--leads``) adds the
Lead object, and ``person_accounts=True`` (``--person-accounts``) adds the Person Account
fields to Account (``IsPersonAccount``, ``PersonMobilePhone``, ``PersonEmail``, ...). Each
option also seeds the synthetic sample records of :mod:`connector.emulators.samples`.
``generated_contacts=N`` (``--generated-contacts N``) adds N read-only Contacts that are
computed from their index when a query reaches them instead of being stored, for benchmarks
of large orgs (see :mod:`connector.emulators.generated`). A
person account is created with ``IsPersonAccount: true``, and its Name is built from its
name fields. The emulator creates no Contact behind a person account, which a real org does.

Some behaviour is not documented by Salesforce, so the emulator makes these choices:

* HTTP 400 for ``INVALID_QUERY_LOCATOR`` and ``INVALID_REPLICATION_DATE``;
* the ``error_description`` texts of JWT bearer failures ("invalid assertion");
* the error codes for a duplicate selected field and for non-filterable or non-sortable fields;
* ``batchSize`` values outside 200..2000 are clamped into that range;
* the errors of Get Updated and Get Deleted for a missing, malformed or too old ``start``;
* describe values other than name, type, soapType, length, nillable, createable, updateable,
  filterable, sortable, references and picklists (for example ``groupable``, ``byteLength``
  and most labels) are derived from the field type or written from memory, not copied from
  a real org;
* query locators are not tied to the session that opened them.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import datetime as dt
import email.utils
import hashlib
import hmac
import json
import logging
import re
import secrets
import shutil
import signal
import socket
import ssl
import sys
import tempfile
import threading
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import jwt

from connector.emulators import _tls, bulk, generated, samples, soql

__all__ = ["SalesforceEmulator", "main"]

logger = logging.getLogger(__name__)

UTC = dt.timezone.utc
DATA_DIR = Path(__file__).resolve().parent / "data"
DEFAULT_SEED_FILES = (DATA_DIR / "data-Contact.json", DATA_DIR / "Contacts.json")

# Seeded records get one timestamp per group of this many records, so several share a second.
SEED_RECORDS_PER_SECOND = 5
# Fixed seed for the order of results of a query without ORDER BY (deliberately not insertion order).
UNORDERED_SHUFFLE_SEED = 20250123
MIN_BATCH_SIZE = 200
MAX_BATCH_SIZE = 2000
# Salesforce keeps at most 10 open query cursors per user and drops them after 15 idle minutes.
MAX_OPEN_CURSORS = 10
CURSOR_IDLE_TIMEOUT = dt.timedelta(minutes=15)
# Default session length of a Salesforce org (two hours).
DEFAULT_TOKEN_LIFETIME_S = 7200
# Get Updated covers the last 30 days and Get Deleted the last 15 days.
UPDATED_WINDOW = dt.timedelta(days=30)
DELETED_WINDOW = dt.timedelta(days=15)
MAX_REQUEST_BODY_BYTES = 10 * 1024 * 1024
REQUEST_LOG_MAX_ENTRIES = 100_000

JSON_CONTENT_TYPE = "application/json;charset=UTF-8"
JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
VERSION_LABELS = {
    "59.0": "Winter '24",
    "60.0": "Spring '24",
    "61.0": "Summer '24",
    "62.0": "Winter '25",
    "63.0": "Spring '25",
    "64.0": "Summer '25",
}
_VERSION_RE = re.compile(r"v(\d+\.\d)")
_ISO_DATETIME_RE = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,6}))?(Z|[+-]\d{2}:?\d{2})"
)
_ISO_DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}")
_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


# --------------------------------------------------------------------------------------------
# Ids and values
# --------------------------------------------------------------------------------------------


def _base62(number: int, width: int) -> str:
    digits = []
    for _ in range(width):
        number, remainder = divmod(number, 62)
        digits.append(_BASE62[remainder])
    if number:
        raise OverflowError(f"{number} does not fit in {width} base-62 digits")
    return "".join(reversed(digits))


def make_id(key_prefix: str, number: int) -> str:
    """Build an 18-character Salesforce Id from a 3-character key prefix and a sequence number.

    Ids of one prefix sort by ``number`` under case-sensitive comparison, and the last three
    characters are the case-checksum of the first fifteen.
    """
    id15 = f"{key_prefix}5g0{_base62(number, 9)}"
    return id15 + soql.id_checksum(id15)


ORG_ID = make_id("00D", 4_000_000_001)
USER_ID = make_id("005", 4_000_000_001)
FIRST_RECORD_NUMBER = 1_000_000_000


def _truncate_to_ms(value: dt.datetime) -> dt.datetime:
    return value.replace(microsecond=value.microsecond // 1000 * 1000)


def _require_aware(value: dt.datetime, name: str) -> dt.datetime:
    if not isinstance(value, dt.datetime):
        raise TypeError(f"{name} must be a datetime, got {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware, got naive {value.isoformat()}")
    return _truncate_to_ms(value.astimezone(UTC))


def parse_iso_datetime(text: str) -> dt.datetime:
    """Parse an ISO 8601 datetime that carries a UTC offset (``Z``, ``+hh:mm`` or ``+hhmm``) into UTC."""
    match = _ISO_DATETIME_RE.fullmatch(text.strip())
    if match is None:
        raise ValueError(
            f"invalid datetime {text!r}: expected ISO 8601 with a UTC offset, such as 2025-01-23T10:26:15Z"
        )
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    if zone == "Z":
        tzinfo = UTC
    else:
        zone_digits = zone[1:].replace(":", "")
        delta = dt.timedelta(hours=int(zone_digits[:2]), minutes=int(zone_digits[2:]))
        tzinfo = dt.timezone(-delta if zone[0] == "-" else delta)
    microsecond = int((fraction or "0").ljust(6, "0"))
    value = dt.datetime(
        int(year), int(month), int(day), int(hour), int(minute), int(second), microsecond, tzinfo=tzinfo
    )
    return _truncate_to_ms(value.astimezone(UTC))


def format_datetime(value: dt.datetime) -> str:
    """Format a datetime the way the REST API returns it: ``2025-01-23T10:26:15.000+0000``."""
    value = value.astimezone(UTC)
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}+0000"


def _render_value(field_type: str, value: Any) -> Any:
    if value is None:
        return None
    if field_type == "datetime":
        return format_datetime(value)
    if field_type == "date":
        return value.isoformat()
    return value


# --------------------------------------------------------------------------------------------
# Object metadata (describe)
# --------------------------------------------------------------------------------------------

_SOAP_TYPES = {
    "id": "tns:ID",
    "reference": "tns:ID",
    "boolean": "xsd:boolean",
    "double": "xsd:double",
    "int": "xsd:int",
    "date": "xsd:date",
    "datetime": "xsd:dateTime",
    "address": "urn:address",
}
_GEOCODE_ACCURACY_VALUES = (
    "Address", "NearAddress", "Block", "Street", "ExtendedZip", "Zip",
    "Neighborhood", "City", "County", "State", "Unknown",
)
# Keys of an address compound value, in the order the API returns them, with the suffix of the part field.
_ADDRESS_PARTS = (
    ("city", "City"),
    ("country", "Country"),
    ("geocodeAccuracy", "GeocodeAccuracy"),
    ("latitude", "Latitude"),
    ("longitude", "Longitude"),
    ("postalCode", "PostalCode"),
    ("state", "State"),
    ("street", "Street"),
)


def _field(name: str, field_type: str, label: str, length: int = 0, **overrides: Any) -> dict[str, Any]:
    """Build one describe field object with every key the REST API returns, in alphabetical order."""
    is_text = field_type in soql.TEXT_TYPES
    if field_type in soql.ID_TYPES:
        byte_length = 18
    elif is_text:
        byte_length = length * 3
    else:
        byte_length = 0
    long_text = field_type == "textarea" and length > 255

    values: dict[str, Any] = {
        "aggregatable": field_type not in ("address", "boolean") and not long_text,
        "aiPredictionField": False,
        "autoNumber": False,
        "byteLength": byte_length,
        "calculated": False,
        "calculatedFormula": None,
        "cascadeDelete": False,
        "caseSensitive": False,
        "compoundFieldName": None,
        "controllerName": None,
        "createable": True,
        "custom": name.endswith("__c"),
        "defaultValue": None,
        "defaultValueFormula": None,
        "defaultedOnCreate": False,
        "dependentPicklist": False,
        "deprecatedAndHidden": False,
        "digits": 0,
        "displayLocationInDecimal": False,
        "encrypted": False,
        "externalId": False,
        "extraTypeInfo": None,
        "filterable": True,
        "filteredLookupInfo": None,
        "formulaTreatNullNumberAsZero": False,
        "groupable": field_type not in ("address", "double", "datetime") and not long_text,
        "highScaleNumber": False,
        "htmlFormatted": False,
        "idLookup": False,
        "inlineHelpText": None,
        "label": label,
        "length": length,
        "mask": None,
        "maskType": None,
        "name": name,
        "nameField": False,
        "namePointing": False,
        "nillable": True,
        "permissionable": True,
        "picklistValues": [],
        "polymorphicForeignKey": False,
        "precision": 0,
        "queryByDistance": field_type == "address",
        "referenceTargetField": None,
        "referenceTo": [],
        "relationshipName": None,
        "relationshipOrder": None,
        "restrictedDelete": False,
        "restrictedPicklist": False,
        "scale": 0,
        "searchPrefilterable": False,
        "soapType": _SOAP_TYPES.get(field_type, "xsd:string"),
        "sortable": field_type != "address" and not long_text,
        "type": field_type,
        "unique": False,
        "updateable": True,
        "writeRequiresMasterRead": False,
    }

    picklist = overrides.pop("picklist", ())
    values["picklistValues"] = [
        {"active": True, "defaultValue": False, "label": value, "validFor": None, "value": value}
        for value in picklist
    ]

    unknown = set(overrides) - set(values)
    if unknown:
        raise KeyError(f"unknown describe keys for field {name}: {sorted(unknown)}")
    values.update(overrides)
    if not values["nillable"] or not values["createable"]:
        values["permissionable"] = False
    return values


_SYSTEM = {"createable": False, "updateable": False}
_READ_ONLY_DEFAULTED = {"createable": False, "updateable": False, "defaultedOnCreate": True, "nillable": False}


def _reference(name: str, label: str, target: str, relationship: str, **overrides: Any) -> dict[str, Any]:
    return _field(name, "reference", label, 18, referenceTo=[target], relationshipName=relationship, **overrides)


def _address_fields(prefix: str, label_prefix: str | None = None) -> list[dict[str, Any]]:
    """Build the part fields and the compound field of an address, such as MailingStreet and MailingAddress.

    Labels start with ``label_prefix`` (default: ``prefix``); Lead's address has an empty prefix.
    """
    compound = f"{prefix}Address"
    label = f"{prefix if label_prefix is None else label_prefix} ".lstrip()
    part = {"compoundFieldName": compound}
    return [
        _field(f"{prefix}Street", "textarea", f"{label}Street", 255, extraTypeInfo="plaintextarea", **part),
        _field(f"{prefix}City", "string", f"{label}City", 40, **part),
        _field(f"{prefix}State", "string", f"{label}State/Province", 80, **part),
        _field(f"{prefix}PostalCode", "string", f"{label}Zip/Postal Code", 20, **part),
        _field(f"{prefix}Country", "string", f"{label}Country", 80, **part),
        _field(f"{prefix}Latitude", "double", f"{label}Latitude", precision=18, scale=15, **part),
        _field(f"{prefix}Longitude", "double", f"{label}Longitude", precision=18, scale=15, **part),
        _field(
            f"{prefix}GeocodeAccuracy", "picklist", f"{label}Geocode Accuracy", 40,
            picklist=_GEOCODE_ACCURACY_VALUES, restrictedPicklist=True, **part,
        ),
        _field(compound, "address", f"{label}Address", createable=False, updateable=False),
    ]


def _audit_fields() -> list[dict[str, Any]]:
    return [
        _field("CreatedDate", "datetime", "Created Date", **_READ_ONLY_DEFAULTED),
        _reference("CreatedById", "Created By ID", "User", "CreatedBy", **_READ_ONLY_DEFAULTED),
        _field("LastModifiedDate", "datetime", "Last Modified Date", **_READ_ONLY_DEFAULTED),
        _reference("LastModifiedById", "Last Modified By ID", "User", "LastModifiedBy", **_READ_ONLY_DEFAULTED),
        _field("SystemModstamp", "datetime", "System Modstamp", **_READ_ONLY_DEFAULTED),
    ]


def _contact_fields() -> list[dict[str, Any]]:
    """Return the standard Contact fields of a recorded org, plus MiddleName and Suffix."""
    name_part = {"compoundFieldName": "Name", "extraTypeInfo": "personname"}
    return [
        _field("Id", "id", "Contact ID", 18, idLookup=True, **_READ_ONLY_DEFAULTED),
        _field("IsDeleted", "boolean", "Deleted", **_READ_ONLY_DEFAULTED),
        _reference("MasterRecordId", "Master Record ID", "Contact", "MasterRecord", **_SYSTEM),
        _reference("AccountId", "Account ID", "Account", "Account"),
        _field("LastName", "string", "Last Name", 80, nillable=False, **name_part),
        _field("FirstName", "string", "First Name", 40, **name_part),
        _field(
            "Salutation", "picklist", "Salutation", 40,
            picklist=("Mr.", "Ms.", "Mrs.", "Dr.", "Prof."), **name_part,
        ),
        _field("MiddleName", "string", "Middle Name", 40, **name_part),
        _field("Suffix", "string", "Suffix", 40, **name_part),
        _field(
            "Name", "string", "Full Name", 121, nillable=False, nameField=True,
            extraTypeInfo="personname", **_SYSTEM,
        ),
        *_address_fields("Other"),
        *_address_fields("Mailing"),
        _field("Phone", "phone", "Business Phone", 40),
        _field("Fax", "phone", "Business Fax", 40),
        _field("MobilePhone", "phone", "Mobile Phone", 40),
        _field("HomePhone", "phone", "Home Phone", 40),
        _field("OtherPhone", "phone", "Other Phone", 40),
        _field("AssistantPhone", "phone", "Asst. Phone", 40),
        _reference("ReportsToId", "Reports To ID", "Contact", "ReportsTo"),
        _field("Email", "email", "Email", 80, idLookup=True),
        _field("Title", "string", "Title", 128),
        _field("Department", "string", "Department", 80),
        _field("AssistantName", "string", "Assistant's Name", 40),
        _field(
            "LeadSource", "picklist", "Lead Source", 255,
            picklist=("Web", "Phone Inquiry", "Partner Referral", "Purchased List", "Other"),
        ),
        _field("Birthdate", "date", "Birthdate"),
        _field(
            "Description", "textarea", "Contact Description", 32000,
            extraTypeInfo="plaintextarea", filterable=False, sortable=False,
        ),
        _reference("OwnerId", "Owner ID", "User", "Owner", nillable=False, defaultedOnCreate=True),
        *_audit_fields(),
        _field("LastActivityDate", "date", "Last Activity", **_SYSTEM),
        _field("LastCURequestDate", "datetime", "Last Stay-in-Touch Request Date", **_SYSTEM),
        _field("LastCUUpdateDate", "datetime", "Last Stay-in-Touch Save Date", **_SYSTEM),
        _field("LastViewedDate", "datetime", "Last Viewed Date", **_SYSTEM),
        _field("LastReferencedDate", "datetime", "Last Referenced Date", **_SYSTEM),
        _field("EmailBouncedReason", "string", "Email Bounced Reason", 255),
        _field("EmailBouncedDate", "datetime", "Email Bounced Date"),
        _field("IsEmailBounced", "boolean", "Is Email Bounced", **_READ_ONLY_DEFAULTED),
        _field("PhotoUrl", "url", "Photo URL", 255, extraTypeInfo="imageurl", **_SYSTEM),
        _field("Jigsaw", "string", "Data.com Key", 20),
        _field("JigsawContactId", "string", "Jigsaw Contact ID", 20, **_SYSTEM),
        _field(
            "CleanStatus", "picklist", "Clean Status", 40, restrictedPicklist=True,
            picklist=(
                "Matched", "Different", "Acknowledged", "NotFound",
                "Inactive", "Pending", "SelectMatch", "Skipped",
            ),
        ),
        _reference("IndividualId", "Individual ID", "Individual", "Individual"),
    ]


def _account_fields() -> list[dict[str, Any]]:
    return [
        _field("Id", "id", "Account ID", 18, idLookup=True, **_READ_ONLY_DEFAULTED),
        _field("IsDeleted", "boolean", "Deleted", **_READ_ONLY_DEFAULTED),
        _reference("MasterRecordId", "Master Record ID", "Account", "MasterRecord", **_SYSTEM),
        _field("Name", "string", "Account Name", 255, nillable=False, nameField=True),
        _field(
            "Type", "picklist", "Account Type", 255,
            picklist=("Prospect", "Customer - Direct", "Customer - Channel", "Channel Partner / Reseller",
                      "Installation Partner", "Technology Partner", "Other"),
        ),
        _field("Phone", "phone", "Account Phone", 40),
        _field("Website", "url", "Website", 255),
        _reference("OwnerId", "Owner ID", "User", "Owner", nillable=False, defaultedOnCreate=True),
        *_audit_fields(),
    ]


_LEAD_SOURCE_VALUES = ("Web", "Phone Inquiry", "Partner Referral", "Purchased List", "Other")
_LEAD_STATUS_VALUES = ("Open - Not Contacted", "Working - Contacted", "Closed - Converted", "Closed - Not Converted")
_INDUSTRY_VALUES = (
    "Agriculture", "Banking", "Consulting", "Education", "Hospitality", "Manufacturing", "Retail", "Technology", "Other",
)
_DEFAULTED_CHECKBOX = {"nillable": False, "defaultedOnCreate": True}


def _lead_fields() -> list[dict[str, Any]]:
    """Return the standard Lead fields, plus the custom multi-select picklist Product_Interest__c."""
    name_part = {"compoundFieldName": "Name", "extraTypeInfo": "personname"}
    return [
        _field("Id", "id", "Lead ID", 18, idLookup=True, **_READ_ONLY_DEFAULTED),
        _field("IsDeleted", "boolean", "Deleted", **_READ_ONLY_DEFAULTED),
        _reference("MasterRecordId", "Master Record ID", "Lead", "MasterRecord", **_SYSTEM),
        _field("LastName", "string", "Last Name", 80, nillable=False, **name_part),
        _field("FirstName", "string", "First Name", 40, **name_part),
        _field("Salutation", "picklist", "Salutation", 40, picklist=("Mr.", "Ms.", "Mrs.", "Dr.", "Prof."), **name_part),
        _field("MiddleName", "string", "Middle Name", 40, **name_part),
        _field("Suffix", "string", "Suffix", 40, **name_part),
        _field("Name", "string", "Full Name", 121, nillable=False, nameField=True, extraTypeInfo="personname", **_SYSTEM),
        _field("Title", "string", "Title", 128),
        _field("Company", "string", "Company", 255, nillable=False),
        *_address_fields(""),
        _field("Phone", "phone", "Phone", 40),
        _field("MobilePhone", "phone", "Mobile Phone", 40),
        _field("Fax", "phone", "Fax", 40),
        _field("Email", "email", "Email", 80, idLookup=True),
        _field("Website", "url", "Website", 255),
        _field("PhotoUrl", "url", "Photo URL", 255, extraTypeInfo="imageurl", **_SYSTEM),
        _field("Description", "textarea", "Description", 32000, extraTypeInfo="plaintextarea", filterable=False, sortable=False),
        _field("LeadSource", "picklist", "Lead Source", 255, picklist=_LEAD_SOURCE_VALUES),
        _field(
            "Status", "picklist", "Status", 255, nillable=False, defaultedOnCreate=True,
            picklist=_LEAD_STATUS_VALUES, defaultValue=_LEAD_STATUS_VALUES[0],
        ),
        _field("Industry", "picklist", "Industry", 255, picklist=_INDUSTRY_VALUES),
        _field("Rating", "picklist", "Rating", 255, picklist=("Hot", "Warm", "Cold")),
        _field("AnnualRevenue", "currency", "Annual Revenue", precision=18),
        _field("NumberOfEmployees", "int", "Employees", digits=8),
        _reference("OwnerId", "Owner ID", "User", "Owner", nillable=False, defaultedOnCreate=True),
        _field("HasOptedOutOfEmail", "boolean", "Email Opt Out", **_DEFAULTED_CHECKBOX),
        _field("IsConverted", "boolean", "Converted", **_DEFAULTED_CHECKBOX, updateable=False),
        _field("ConvertedDate", "date", "Converted Date", **_SYSTEM),
        _reference("ConvertedAccountId", "Converted Account ID", "Account", "ConvertedAccount", **_SYSTEM),
        _reference("ConvertedContactId", "Converted Contact ID", "Contact", "ConvertedContact", **_SYSTEM),
        _reference("ConvertedOpportunityId", "Converted Opportunity ID", "Opportunity", "ConvertedOpportunity", **_SYSTEM),
        _field("IsUnreadByOwner", "boolean", "Unread By Owner", **_DEFAULTED_CHECKBOX),
        *_audit_fields(),
        _field("LastActivityDate", "date", "Last Activity", **_SYSTEM),
        _field("DoNotCall", "boolean", "Do Not Call", **_DEFAULTED_CHECKBOX),
        _field("HasOptedOutOfFax", "boolean", "Fax Opt Out", **_DEFAULTED_CHECKBOX),
        _field("LastViewedDate", "datetime", "Last Viewed Date", **_SYSTEM),
        _field("LastReferencedDate", "datetime", "Last Referenced Date", **_SYSTEM),
        _field("LastTransferDate", "date", "Last Transfer Date", **_SYSTEM),
        _field("EmailBouncedReason", "string", "Email Bounced Reason", 255),
        _field("EmailBouncedDate", "datetime", "Email Bounced Date"),
        _reference("IndividualId", "Individual ID", "Individual", "Individual"),
        _field(
            "Product_Interest__c", "multipicklist", "Product Interest", 4099,
            picklist=("Golf", "Spa", "Dining", "Sailing"), aggregatable=False, groupable=False,
        ),
    ]


# Fields that make up a person account's Name, as they do a Contact's.
PERSON_ACCOUNT_NAME_PARTS = ("FirstName", "MiddleName", "LastName", "Suffix")


def _person_account_fields() -> list[dict[str, Any]]:
    """Return the fields that an org with Person Accounts adds to Account."""
    name_part = {"compoundFieldName": "Name", "extraTypeInfo": "personname"}
    return [
        _field("IsPersonAccount", "boolean", "Is Person Account", **_READ_ONLY_DEFAULTED),
        _reference("PersonContactId", "Person Contact ID", "Contact", "PersonContact", **_SYSTEM),
        _field("LastName", "string", "Last Name", 80, **name_part),
        _field("FirstName", "string", "First Name", 40, **name_part),
        _field("Salutation", "picklist", "Salutation", 40, picklist=("Mr.", "Ms.", "Mrs.", "Dr.", "Prof."), **name_part),
        _field("MiddleName", "string", "Middle Name", 40, **name_part),
        _field("Suffix", "string", "Suffix", 40, **name_part),
        *_address_fields("PersonMailing", "Mailing"),
        _field("PersonMobilePhone", "phone", "Mobile", 40),
        _field("PersonHomePhone", "phone", "Home Phone", 40),
        _field("PersonOtherPhone", "phone", "Other Phone", 40),
        _field("PersonEmail", "email", "Email", 80),
        _field("PersonTitle", "string", "Title", 80),
        _field("PersonDepartment", "string", "Department", 80),
        _field("PersonBirthdate", "date", "Birthdate"),
        _field("PersonLeadSource", "picklist", "Lead Source", 255, picklist=_LEAD_SOURCE_VALUES),
        _field("PersonHasOptedOutOfEmail", "boolean", "Email Opt Out", **_DEFAULTED_CHECKBOX),
        _field("PersonDoNotCall", "boolean", "Do Not Call", **_DEFAULTED_CHECKBOX),
        _field("PersonEmailBouncedReason", "string", "Email Bounced Reason", 255),
        _field("PersonEmailBouncedDate", "datetime", "Email Bounced Date"),
        _reference("PersonIndividualId", "Individual ID", "Individual", "PersonIndividual"),
    ]


def _user_fields() -> list[dict[str, Any]]:
    return [
        _field("Id", "id", "User ID", 18, idLookup=True, **_READ_ONLY_DEFAULTED),
        _field("Username", "string", "Username", 80, nillable=False, idLookup=True, unique=True),
        _field("LastName", "string", "Last Name", 80, nillable=False, compoundFieldName="Name"),
        _field("FirstName", "string", "First Name", 40, compoundFieldName="Name"),
        _field("Name", "string", "Full Name", 121, nillable=False, nameField=True, **_SYSTEM),
        _field("Email", "email", "Email", 128, nillable=False),
        _field("IsActive", "boolean", "Active", nillable=False, defaultedOnCreate=True),
        *_audit_fields(),
    ]


@dataclass
class SObjectType:
    """Metadata of one object: describe fields, key prefix and how its Name is built."""

    name: str
    key_prefix: str
    label: str
    label_plural: str
    fields: list[dict[str, Any]]
    # Fields that make up a computed Name ("First Middle Last Suffix"); empty when Name is stored as given.
    name_parts: tuple[str, ...] = ()
    specs: dict[str, soql.FieldSpec] = field(default_factory=dict)
    relationships: dict[str, soql.RelationshipSpec] = field(default_factory=dict)
    canonical_names: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for describe in self.fields:
            self._index(describe)

    def _index(self, describe: dict[str, Any]) -> None:
        name = describe["name"]
        self.canonical_names[name.lower()] = name
        self.specs[name.lower()] = soql.FieldSpec(
            name=name, type=describe["type"], filterable=describe["filterable"], sortable=describe["sortable"]
        )
        if describe["relationshipName"]:
            self.relationships[describe["relationshipName"].lower()] = soql.RelationshipSpec(
                name=describe["relationshipName"],
                reference_field=name,
                target_object=describe["referenceTo"][0],
            )

    def add_field(self, describe: dict[str, Any]) -> None:
        self.fields.append(describe)
        self._index(describe)

    def field_type(self, name: str) -> str:
        return self.specs[name.lower()].type

    def reference_target(self, name: str) -> str | None:
        """Return the object that a reference field points to, or None for other fields."""
        for describe in self.fields:
            if describe["name"] == name and describe["referenceTo"]:
                return describe["referenceTo"][0]
        return None

    @property
    def stored_fields(self) -> list[dict[str, Any]]:
        """Describe fields whose values the store keeps (every field but the address compounds)."""
        return [describe for describe in self.fields if describe["type"] != "address"]


def _default_object_types(*, leads: bool = False, person_accounts: bool = False) -> dict[str, SObjectType]:
    contact = SObjectType(
        "Contact", "003", "Contact", "Contacts", _contact_fields(),
        name_parts=("FirstName", "MiddleName", "LastName", "Suffix"),
    )
    account_fields = _account_fields() + (_person_account_fields() if person_accounts else [])
    account = SObjectType("Account", "001", "Account", "Accounts", account_fields)
    user = SObjectType("User", "005", "User", "Users", _user_fields(), name_parts=("FirstName", "LastName"))
    objects = [account, contact, user]
    if leads:
        objects.append(
            SObjectType("Lead", "00Q", "Lead", "Leads", _lead_fields(), name_parts=("FirstName", "MiddleName", "LastName", "Suffix"))
        )
    return {sobject.name: sobject for sobject in objects}


def _custom_field_describe(name: str, values: Sequence[Any]) -> dict[str, Any]:
    """Describe a custom field found in seed data: date, url or string, inferred from its name and values."""
    label = name[: -len("__c")].replace("_", " ")
    lowered = name.lower()
    text_values = [value for value in values if value is not None]
    if lowered.endswith("date__c") and text_values and all(
        isinstance(value, str) and _ISO_DATE_RE.fullmatch(value) for value in text_values
    ):
        return _field(name, "date", label)
    if "photo" in lowered or "picture" in lowered:
        return _field(name, "url", label, 255)
    return _field(name, "string", label, 255)


# --------------------------------------------------------------------------------------------
# Record store
# --------------------------------------------------------------------------------------------


class RecordError(ValueError):
    """An admin operation was given an unknown object, field, Id or an invalid value."""


class OrgStore:
    """Records of every object, keyed by Id. Not thread-safe: SalesforceEmulator holds a lock around it.

    Stored records are never changed in place. An update replaces the record's dict, so a
    query snapshot that references the old dict keeps returning the values it had when it ran.
    """

    def __init__(self, *, leads: bool = False, person_accounts: bool = False) -> None:
        self.objects = _default_object_types(leads=leads, person_accounts=person_accounts)
        self.records: dict[str, dict[str, dict[str, Any]]] = {name: {} for name in self.objects}
        self.deleted_at: dict[str, dt.datetime] = {}
        self._next_number = {name: FIRST_RECORD_NUMBER for name in self.objects}

    # Schema lookups used by the SOQL compiler

    def find_object(self, name: str) -> str | None:
        for object_name in self.objects:
            if object_name.lower() == name.lower():
                return object_name
        return None

    def find_field(self, object_name: str, name: str) -> soql.FieldSpec | None:
        return self.objects[object_name].specs.get(name.lower())

    def find_relationship(self, object_name: str, name: str) -> soql.RelationshipSpec | None:
        relationship = self.objects[object_name].relationships.get(name.lower())
        if relationship is None or relationship.target_object not in self.objects:
            return None
        return relationship

    def dereference(self, object_name: str, record_id: str) -> dict[str, Any] | None:
        """Return the parent record for a relationship path, or None when it is missing or deleted."""
        record = self.records.get(object_name, {}).get(record_id)
        if record is None or record.get("IsDeleted"):
            return None
        return record

    # Record access

    def sobject(self, object_name: str) -> SObjectType:
        canonical = self.find_object(object_name)
        if canonical is None:
            raise RecordError(f"unknown object {object_name!r}; known objects: {', '.join(sorted(self.objects))}")
        return self.objects[canonical]

    def get(self, object_name: str, record_id: str) -> dict[str, Any]:
        sobject = self.sobject(object_name)
        id18 = soql.to_id18(record_id) if isinstance(record_id, str) else None
        record = self.records[sobject.name].get(id18 or "")
        if record is None:
            raise RecordError(f"no {sobject.name} record with Id {record_id!r}")
        return record

    def iter_records(self, object_name: str, include_deleted: bool) -> Iterator[dict[str, Any]]:
        records = self.records[object_name].values()
        if include_deleted:
            return iter(records)
        return (record for record in records if not record.get("IsDeleted"))

    def new_id(self, object_name: str) -> str:
        sobject = self.objects[object_name]
        number = self._next_number[object_name]
        self._next_number[object_name] = number + 1
        return make_id(sobject.key_prefix, number)

    # Writes

    def ensure_custom_field(self, object_name: str, name: str, values: Sequence[Any]) -> None:
        sobject = self.objects[object_name]
        if name.lower() in sobject.specs:
            return
        sobject.add_field(_custom_field_describe(name, values))
        for record_id, record in self.records[object_name].items():
            self.records[object_name][record_id] = {**record, name: None}

    def _coerce(self, sobject: SObjectType, name: str, value: Any) -> Any:
        field_type = sobject.field_type(name)
        if value is None:
            return None
        problem = f"invalid value for {sobject.name}.{name} (type {field_type}): {value!r}"
        if field_type in soql.ID_TYPES:
            id18 = soql.to_id18(value) if isinstance(value, str) else None
            if id18 is None:
                raise RecordError(problem + "; expected a 15- or 18-character Id")
            return id18
        if field_type in soql.TEXT_TYPES:
            if not isinstance(value, str):
                raise RecordError(problem + "; expected a string")
            return value
        if field_type == "boolean":
            if not isinstance(value, bool):
                raise RecordError(problem + "; expected true or false")
            return value
        if field_type in soql.NUMBER_TYPES:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise RecordError(problem + "; expected a number")
            return float(value)
        if field_type == "date":
            if isinstance(value, dt.datetime):
                raise RecordError(problem + "; expected a date, not a datetime")
            if isinstance(value, dt.date):
                return value
            if isinstance(value, str) and _ISO_DATE_RE.fullmatch(value):
                try:
                    return dt.date.fromisoformat(value)
                except ValueError:
                    pass
            raise RecordError(problem + "; expected YYYY-MM-DD")
        if field_type == "datetime":
            if isinstance(value, dt.datetime):
                try:
                    return _require_aware(value, f"{sobject.name}.{name}")
                except ValueError as error:
                    raise RecordError(str(error)) from None
            if isinstance(value, str):
                try:
                    return parse_iso_datetime(value)
                except ValueError as error:
                    raise RecordError(f"{problem}; {error}") from None
            raise RecordError(problem + "; expected an ISO 8601 datetime with a UTC offset")
        raise RecordError(f"field {sobject.name}.{name} of type {field_type} cannot be written")

    def _writable_values(self, sobject: SObjectType, fields: dict[str, Any], managed: frozenset[str]) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for given_name, value in fields.items():
            name = sobject.canonical_names.get(given_name.lower())
            if name is None and given_name.endswith("__c"):
                self.ensure_custom_field(sobject.name, given_name, [value])
                name = given_name
            if name is None:
                raise RecordError(f"no field {given_name!r} on {sobject.name}")
            if name in managed or sobject.field_type(name) == "address" or (name == "Name" and sobject.name_parts):
                raise RecordError(
                    f"field {sobject.name}.{name} is set by the emulator; use modstamp=, delete_record() or "
                    "merge_records() to change system fields"
                )
            values[name] = self._coerce(sobject, name, value)
        return values

    @staticmethod
    def _with_name(sobject: SObjectType, record: dict[str, Any]) -> dict[str, Any]:
        # A person account's Name is built from its person name fields, as a Contact's is.
        name_parts = PERSON_ACCOUNT_NAME_PARTS if record.get("IsPersonAccount") else sobject.name_parts
        if name_parts:
            record["Name"] = " ".join(str(record[part]) for part in name_parts if record.get(part)) or None
        return record

    def create(
        self,
        object_name: str,
        fields: dict[str, Any],
        modstamp: dt.datetime,
        record_id: str | None = None,
    ) -> str:
        sobject = self.sobject(object_name)
        managed = frozenset({"Id", "IsDeleted", "MasterRecordId", "SystemModstamp", "LastModifiedDate"})
        values = self._writable_values(sobject, fields, managed)

        stored_fields = sobject.stored_fields
        record: dict[str, Any] = {describe["name"]: None for describe in stored_fields}
        defaults = {
            "IsDeleted": False,
            "IsEmailBounced": False,
            "IsActive": True,
            "OwnerId": USER_ID,
            "CreatedById": USER_ID,
            "LastModifiedById": USER_ID,
            "CreatedDate": modstamp,
            "LastModifiedDate": modstamp,
            "SystemModstamp": modstamp,
        }
        for name, value in defaults.items():
            if name in record:
                record[name] = value
        record["Id"] = record_id or self.new_id(sobject.name)
        record.update(values)
        for describe in stored_fields:
            # Checkboxes are never null in Salesforce: unset ones are false. Picklists may have a default.
            if record[describe["name"]] is None:
                record[describe["name"]] = False if describe["type"] == "boolean" else describe["defaultValue"]
        if record.get("IsPersonAccount") and not record.get("LastName"):
            raise RecordError(f"Required fields are missing: [LastName] on person {sobject.name}")
        self._with_name(sobject, record)

        for describe in stored_fields:
            required = not describe["nillable"] and describe["createable"] and not describe["defaultedOnCreate"]
            if required and record.get(describe["name"]) in (None, ""):
                raise RecordError(f"Required fields are missing: [{describe['name']}] on {sobject.name}")

        self.records[sobject.name][record["Id"]] = record
        return record["Id"]

    def update(self, object_name: str, record_id: str, fields: dict[str, Any], modstamp: dt.datetime) -> None:
        sobject = self.sobject(object_name)
        old = self.get(sobject.name, record_id)
        managed = frozenset({"Id", "IsDeleted", "MasterRecordId", "SystemModstamp", "LastModifiedDate", "CreatedDate"})
        values = self._writable_values(sobject, fields, managed)
        record = {**old, **values, "LastModifiedDate": modstamp, "SystemModstamp": modstamp}
        self._with_name(sobject, record)
        self.records[sobject.name][old["Id"]] = record

    def _require_deletable(self, sobject: SObjectType) -> None:
        if "isdeleted" not in sobject.specs:
            raise RecordError(f"{sobject.name} records cannot be deleted or merged")

    def delete(self, object_name: str, record_id: str, modstamp: dt.datetime) -> None:
        sobject = self.sobject(object_name)
        self._require_deletable(sobject)
        old = self.get(sobject.name, record_id)
        if old.get("IsDeleted"):
            raise RecordError(f"{sobject.name} {old['Id']} is already deleted")
        self.records[sobject.name][old["Id"]] = {
            **old, "IsDeleted": True, "LastModifiedDate": modstamp, "SystemModstamp": modstamp,
        }
        self.deleted_at[old["Id"]] = modstamp

    def merge(self, object_name: str, winner_id: str, loser_id: str, modstamp: dt.datetime) -> None:
        sobject = self.sobject(object_name)
        self._require_deletable(sobject)
        winner = self.get(sobject.name, winner_id)
        loser = self.get(sobject.name, loser_id)
        if winner["Id"] == loser["Id"]:
            raise RecordError(f"cannot merge {sobject.name} {winner['Id']} into itself")
        if winner.get("IsDeleted") or loser.get("IsDeleted"):
            raise RecordError(f"cannot merge deleted {sobject.name} records ({winner['Id']}, {loser['Id']})")
        self.records[sobject.name][winner["Id"]] = {
            **winner, "LastModifiedDate": modstamp, "SystemModstamp": modstamp,
        }
        self.records[sobject.name][loser["Id"]] = {
            **loser,
            "IsDeleted": True,
            "MasterRecordId": winner["Id"],
            "LastModifiedDate": modstamp,
            "SystemModstamp": modstamp,
        }
        self.deleted_at[loser["Id"]] = modstamp

    # Rendering

    def render_record(self, object_name: str, record: dict[str, Any], version: str) -> dict[str, Any]:
        """Return every field of a stored record in API form, ``attributes`` first."""
        sobject = self.objects[object_name]
        output: dict[str, Any] = {"attributes": _attributes(object_name, record["Id"], version)}
        for describe in sobject.fields:
            name = describe["name"]
            if describe["type"] == "address":
                output[name] = _render_address(record, name)
            else:
                output[name] = _render_value(describe["type"], record.get(name))
        return output


def _attributes(object_name: str, record_id: str, version: str) -> dict[str, str]:
    return {"type": object_name, "url": f"/services/data/v{version}/sobjects/{object_name}/{record_id}"}


def _render_address(record: dict[str, Any], compound_name: str) -> dict[str, Any] | None:
    prefix = compound_name[: -len("Address")]
    parts = {key: record.get(prefix + suffix) for key, suffix in _ADDRESS_PARTS}
    if all(value is None for value in parts.values()):
        return None
    return parts


def _load_seed_records(paths: Sequence[Path]) -> list[tuple[Path, dict[str, Any]]]:
    loaded: list[tuple[Path, dict[str, Any]]] = []
    for path in paths:
        path = Path(path)
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as error:
            raise RecordError(f"cannot read seed file {path}: {error}") from error
        records = document.get("records") if isinstance(document, dict) else None
        if not isinstance(records, list):
            raise RecordError(f"seed file {path} is not in sfdx tree format: expected {{\"records\": [...]}}")
        for position, record in enumerate(records, start=1):
            attributes = record.get("attributes") if isinstance(record, dict) else None
            if not isinstance(attributes, dict) or not isinstance(attributes.get("type"), str):
                raise RecordError(f"seed file {path}, record {position}: missing attributes.type")
            loaded.append((path, record))
    return loaded


def seed_store(store: OrgStore, paths: Sequence[Path], base_time: dt.datetime) -> None:
    """Load sfdx tree-import files into ``store``.

    Record ``i`` (counting across all files) gets CreatedDate, LastModifiedDate and
    SystemModstamp ``base_time + i // 5`` seconds, so groups of five share one second.
    ``@Ref`` values in reference fields point at a record with that ``referenceId`` in the same
    file. A reference to an Account that no file defines creates an Account named
    "Sample Account N" (N taken from the reference name).
    """
    loaded = _load_seed_records(paths)

    # Register custom fields first, so each field's type is inferred from all of its values.
    custom_values: dict[tuple[str, str], list[Any]] = {}
    for path, record in loaded:
        sobject = store.sobject(record["attributes"]["type"])
        for name, value in record.items():
            if name != "attributes" and name.endswith("__c") and name.lower() not in sobject.specs:
                custom_values.setdefault((sobject.name, name), []).append(value)
    for (object_name, name), values in custom_values.items():
        store.ensure_custom_field(object_name, name, values)

    generated_accounts: dict[str, str] = {}
    reference_ids: dict[tuple[Path, str], str] = {}
    for path, record in loaded:
        sobject = store.sobject(record["attributes"]["type"])
        reference_id = record["attributes"].get("referenceId")
        if reference_id:
            reference_ids[(path, reference_id)] = store.new_id(sobject.name)

    for index, (path, record) in enumerate(loaded):
        sobject = store.sobject(record["attributes"]["type"])
        stamp = base_time + dt.timedelta(seconds=index // SEED_RECORDS_PER_SECOND)
        fields: dict[str, Any] = {}
        for name, value in record.items():
            if name == "attributes":
                continue
            canonical = sobject.canonical_names.get(name.lower())
            if canonical is None:
                raise RecordError(f"seed file {path}: no field {name!r} on {sobject.name}")
            is_reference = sobject.field_type(canonical) == "reference"
            if is_reference and isinstance(value, str) and value.startswith("@"):
                value = _resolve_seed_reference(
                    store, sobject, canonical, value, path, reference_ids, generated_accounts, base_time
                )
            fields[canonical] = value
        record_id = reference_ids.get((path, record["attributes"].get("referenceId") or ""))
        try:
            store.create(sobject.name, fields, stamp, record_id=record_id)
        except RecordError as error:
            raise RecordError(f"seed file {path}: {error}") from error


def seed_samples(store: OrgStore, base_time: dt.datetime, *, leads: bool, person_accounts: bool) -> None:
    """Create the synthetic sample Leads and Person Accounts of :mod:`connector.emulators.samples`.

    They get timestamps from ``base_time`` on, five records per second, like the seed files.
    """
    batches: list[tuple[str, Sequence[dict[str, Any]], dict[str, Any]]] = []
    if leads:
        batches.append(("Lead", samples.SAMPLE_LEADS, {}))
    if person_accounts:
        batches.append(("Account", samples.SAMPLE_PERSON_ACCOUNTS, {"IsPersonAccount": True}))
        batches.append(("Account", samples.SAMPLE_BUSINESS_ACCOUNTS, {}))
    index = 0
    for object_name, records, extra in batches:
        for fields in records:
            stamp = base_time + dt.timedelta(seconds=index // SEED_RECORDS_PER_SECOND)
            store.create(object_name, {**fields, **extra}, stamp)
            index += 1


def _resolve_seed_reference(
    store: OrgStore,
    sobject: SObjectType,
    field_name: str,
    reference: str,
    path: Path,
    reference_ids: dict[tuple[Path, str], str],
    generated_accounts: dict[str, str],
    base_time: dt.datetime,
) -> str | None:
    target_object = sobject.reference_target(field_name)
    name = reference[1:]
    if (path, name) in reference_ids:
        return reference_ids[(path, name)]
    if target_object == "Account":
        if name not in generated_accounts:
            number = re.sub(r"\D", "", name) or name
            generated_accounts[name] = store.create("Account", {"Name": f"Sample Account {number}"}, base_time)
        return generated_accounts[name]
    logger.warning(
        "seed reference not found, field left empty: file=%s field=%s.%s reference=%s",
        path, sobject.name, field_name, reference,
    )
    return None


# --------------------------------------------------------------------------------------------
# HTTP plumbing
# --------------------------------------------------------------------------------------------

DEFAULT_API_VERSION = "62.0"
TLS_HANDSHAKE_TIMEOUT_S = 10
# Idle keep-alive connections are closed after this many seconds.
KEEP_ALIVE_IDLE_TIMEOUT_S = 120


@dataclass
class _Request:
    method: str
    path: str
    params: dict[str, list[str]]
    headers: Message
    body: bytes

    def param(self, name: str) -> str | None:
        values = self.params.get(name)
        return values[0] if values else None


@dataclass
class _Response:
    status: int
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)


def _json_response(status: int, payload: Any, headers: Iterable[tuple[str, str]] = ()) -> _Response:
    body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return _Response(status, body, [("Content-Type", JSON_CONTENT_TYPE), *headers])


def _error_response(status: int, error_code: str, message: str, headers: Iterable[tuple[str, str]] = ()) -> _Response:
    """Build a REST error: a JSON list with one ``{"message", "errorCode"}`` object."""
    return _json_response(status, [{"message": message, "errorCode": error_code}], headers)


def _oauth_error(error: str, description: str) -> _Response:
    """Build a token endpoint error: HTTP 400 with a JSON object, not a list."""
    return _json_response(400, {"error": error, "error_description": description})


def _not_found() -> _Response:
    return _error_response(404, "NOT_FOUND", "The requested resource does not exist")


def _method_not_allowed(method: str, allowed: str = "GET,HEAD") -> _Response:
    return _error_response(
        405, "METHOD_NOT_ALLOWED", f"HTTP Method '{method}' not allowed. Allowed are {allowed}"
    )


@dataclass
class _FieldEntry:
    name: str
    type: str


@dataclass
class _ParentEntry:
    """A parent relationship in a query's output, such as ``Account`` for ``Account.Name``."""

    name: str
    target_object: str
    path: tuple[str, ...]
    entries: list[_FieldEntry | _ParentEntry]


_NO_PARENTS: dict[tuple[str, ...], dict[str, Any] | None] = {}


def _build_render_plan(compiled: soql.CompiledQuery) -> list[_FieldEntry | _ParentEntry]:
    """Arrange the selected fields into output keys, nesting relationship fields under their parent."""
    root: list[_FieldEntry | _ParentEntry] = []
    parents: dict[tuple[str, ...], _ParentEntry] = {}
    for bound in compiled.fields:
        entries = root
        path: tuple[str, ...] = ()
        for relationship in bound.relationships:
            path = path + (relationship.name,)
            parent = parents.get(path)
            if parent is None:
                parent = _ParentEntry(relationship.name, relationship.target_object, path, [])
                parents[path] = parent
                entries.append(parent)
            entries = parent.entries
        entries.append(_FieldEntry(bound.field.name, bound.field.type))
    return root


def _resolve_parents(
    record: dict[str, Any],
    chains: Sequence[tuple[soql.RelationshipSpec, ...]],
    dereference: Callable[[str, str], dict[str, Any] | None],
) -> dict[tuple[str, ...], dict[str, Any] | None]:
    """Look up the parent records a row's relationship fields need, keyed by relationship path."""
    parents: dict[tuple[str, ...], dict[str, Any] | None] = {}
    for chain in chains:
        current: dict[str, Any] | None = record
        path: tuple[str, ...] = ()
        for relationship in chain:
            path = path + (relationship.name,)
            if path not in parents:
                parent_id = current.get(relationship.reference_field) if current is not None else None
                parents[path] = dereference(relationship.target_object, parent_id) if parent_id else None
            current = parents[path]
            if current is None:
                break
    return parents


def _render_row(
    object_name: str,
    record: dict[str, Any],
    parents: dict[tuple[str, ...], dict[str, Any] | None],
    entries: Sequence[_FieldEntry | _ParentEntry],
    version: str,
) -> dict[str, Any]:
    output: dict[str, Any] = {"attributes": _attributes(object_name, record["Id"], version)}
    for entry in entries:
        if isinstance(entry, _FieldEntry):
            if entry.type == "address":
                output[entry.name] = _render_address(record, entry.name)
            else:
                output[entry.name] = _render_value(entry.type, record.get(entry.name))
            continue
        parent = parents.get(entry.path)
        if parent is None:
            output[entry.name] = None
        else:
            output[entry.name] = _render_row(entry.target_object, parent, parents, entry.entries, version)
    return output


@dataclass
class _QueryResult:
    """The snapshot of a query's matching rows, with what is needed to render any page of it."""

    object_name: str
    plan: list[_FieldEntry | _ParentEntry]
    rows: list[tuple[dict[str, Any], dict[tuple[str, ...], dict[str, Any] | None]]]
    batch_size: int
    locator: str | None = None
    last_used: dt.datetime | None = None

    def page(self, start: int, batch_size: int, version: str) -> dict[str, Any]:
        total = len(self.rows)
        end = min(start + batch_size, total)
        body: dict[str, Any] = {"totalSize": total, "done": end >= total}
        if end < total:
            body["nextRecordsUrl"] = f"/services/data/v{version}/query/{self.locator}-{end}"
        body["records"] = [
            _render_row(self.object_name, record, parents, self.plan, version)
            for record, parents in self.rows[start:end]
        ]
        return body


@dataclass
class _Fault:
    path_contains: str
    status: int
    body: Any
    remaining: int


class _HttpsServer(ThreadingHTTPServer):
    """A threading HTTP server that does the TLS handshake in each connection's worker thread."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], emulator: SalesforceEmulator, ssl_context: ssl.SSLContext) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.emulator = emulator
        self.ssl_context = ssl_context
        self._connections: set[ssl.SSLSocket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _RequestHandler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind would resolve the host name (getfqdn), which is slow and not needed here.
        import socketserver

        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def finish_request(self, request: Any, client_address: Any) -> None:
        request.settimeout(TLS_HANDSHAKE_TIMEOUT_S)
        try:
            connection = self.ssl_context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as error:
            logger.info("TLS handshake failed: client=%s error=%s", client_address, error)
            return
        with self._connections_lock:
            self._connections.add(connection)
        try:
            self.RequestHandlerClass(connection, client_address, self)
        finally:
            with self._connections_lock:
                self._connections.discard(connection)
            try:
                connection.close()
            except OSError:
                pass

    def handle_error(self, request: Any, client_address: Any) -> None:
        error = sys.exc_info()[1]
        if isinstance(error, (ConnectionError, ssl.SSLError, TimeoutError)):
            logger.debug("connection closed: client=%s error=%s", client_address, error)
            return
        logger.exception("unhandled error on connection: client=%s", client_address)

    def close_connections(self) -> None:
        """Shut down open keep-alive connections so that their worker threads end."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = KEEP_ALIVE_IDLE_TIMEOUT_S
    server: _HttpsServer

    def do_GET(self) -> None:
        self._serve()

    do_POST = do_PATCH = do_PUT = do_DELETE = do_HEAD = do_GET

    def _serve(self) -> None:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            logger.info("rejected chunked request body: method=%s path=%s", self.command, self.path)
            message = "Chunked request bodies are not supported; send Content-Length."
            self._write(_error_response(411, "LENGTH_REQUIRED", message))
            self.close_connection = True
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0 or length > MAX_REQUEST_BODY_BYTES:
            self._write(_error_response(400, "INVALID_REQUEST", "Invalid Content-Length header."))
            self.close_connection = True
            return
        body = self.rfile.read(length) if length else b""

        parts = urlsplit(self.path)
        request = _Request(
            method=self.command,
            path=unquote(parts.path),
            params=parse_qs(parts.query, keep_blank_values=True),
            headers=self.headers,
            body=body,
        )
        self._write(self.server.emulator._handle(request))

    def _write(self, response: _Response) -> None:
        self.send_response(response.status)
        for name, value in response.headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(response.body)

    def send_response(self, code: int, message: str | None = None) -> None:
        # Unlike the base class: no Server header, and the Date header comes from the emulator's clock.
        self.log_request(code)
        self.send_response_only(code, message)
        self.send_header("Date", email.utils.format_datetime(self.server.emulator.now(), usegmt=True))

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - signature fixed by the base class
        logger.debug("%s %s", self.address_string(), format % args)


# --------------------------------------------------------------------------------------------
# The emulator
# --------------------------------------------------------------------------------------------


class SalesforceEmulator:
    """A Salesforce org on a local HTTPS server, for tests and the demo.

    Construct it, call :meth:`start` (or use it as a context manager), point clients at
    :attr:`url` and trust :attr:`ca_file`. All state sits behind one lock, so the admin
    methods may be called from any thread while the server runs.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        seed_files: Sequence[str | Path] | None = None,
        page_size: int = 2000,
        client_id: str = "emulator-client-id",
        client_secret: str = "emulator-client-secret",
        username: str = "integration@example.com",
        jwt_public_key_pem: str | bytes | None = None,
        daily_api_limit: int = 15000,
        clock: Callable[[], dt.datetime] | None = None,
        seed_base_time: dt.datetime | None = None,
        *,
        ca_file: str | Path | None = None,
        token_lifetime_s: float = DEFAULT_TOKEN_LIFETIME_S,
        leads: bool = False,
        person_accounts: bool = False,
        generated_contacts: int = 0,
    ) -> None:
        if page_size < 1:
            raise ValueError(f"page_size must be at least 1, got {page_size}")
        if daily_api_limit < 0:
            raise ValueError(f"daily_api_limit must not be negative, got {daily_api_limit}")
        if token_lifetime_s <= 0:
            raise ValueError(f"token_lifetime_s must be positive, got {token_lifetime_s}")

        self.host = host
        self.port = port
        self.page_size = page_size
        self.client_id = client_id
        self.client_secret = client_secret
        self.username = username
        self.daily_api_limit = daily_api_limit
        self.token_lifetime = dt.timedelta(seconds=token_lifetime_s)
        self._jwt_public_key = None
        if jwt_public_key_pem is not None:
            pem = jwt_public_key_pem.encode("ascii") if isinstance(jwt_public_key_pem, str) else jwt_public_key_pem
            from cryptography.hazmat.primitives.serialization import load_pem_public_key

            self._jwt_public_key = load_pem_public_key(pem)

        self._clock = clock
        self._clock_offset = dt.timedelta(0)
        self._lock = threading.RLock()
        self._tokens: dict[str, dt.datetime] = {}
        self._issued_tokens: list[str] = []
        self._cursors: dict[str, _QueryResult] = {}
        self._cursor_number = FIRST_RECORD_NUMBER
        self._faults: list[_Fault] = []
        self._api_usage = 0
        self._api_calls = 0
        self._request_log: deque[dict[str, Any]] = deque(maxlen=REQUEST_LOG_MAX_ENTRIES)
        self._request_count = 0

        self._ca_file_option = Path(ca_file) if ca_file is not None else None
        self._ca_file: Path | None = None
        self._temp_dir: str | None = None
        self._server: _HttpsServer | None = None
        self._thread: threading.Thread | None = None

        base_time = (
            _require_aware(seed_base_time, "seed_base_time")
            if seed_base_time is not None
            else (self.now() - dt.timedelta(days=1)).replace(microsecond=0)
        )
        self.org_created = base_time
        self._store = OrgStore(leads=leads, person_accounts=person_accounts)
        self._store.create(
            "User",
            {"Username": username, "FirstName": "Integration", "LastName": "User", "Email": username},
            base_time,
            record_id=USER_ID,
        )
        paths = DEFAULT_SEED_FILES if seed_files is None else tuple(Path(path) for path in seed_files)
        seed_store(self._store, paths, base_time)
        # An empty seed list ("--empty") means no sample records of any object.
        if seed_files is None or paths:
            seed_samples(self._store, base_time, leads=leads, person_accounts=person_accounts)
        self._generated = (
            generated.GeneratedContacts(generated_contacts, end=base_time, make_id=make_id, owner_id=USER_ID)
            if generated_contacts
            else None
        )
        self.bulk = bulk.BulkQueryJobs(self._bulk_snapshot, now=self.now, make_id=make_id, user_id=USER_ID)

    # Lifecycle

    def start(self) -> SalesforceEmulator:
        """Create the TLS material, bind the port and serve in a background thread. Returns self."""
        with self._lock:
            if self._server is not None:
                raise RuntimeError("the emulator is already running")
            if self._ca_file_option is not None:
                ca_path = self._ca_file_option
            else:
                self._temp_dir = tempfile.mkdtemp(prefix="salesforce-emulator-")
                ca_path = Path(self._temp_dir) / "ca.pem"
            tls = _tls.create_server_tls(ca_path, self.host)
            server = _HttpsServer((self.host, self.port), self, tls.context)
            self._ca_file = tls.ca_file
            self._server = server
            self._thread = threading.Thread(
                target=server.serve_forever, kwargs={"poll_interval": 0.1}, name="salesforce-emulator", daemon=True
            )
            self._thread.start()
        logger.info("salesforce emulator started: url=%s ca_file=%s", self.url, self._ca_file)
        return self

    def stop(self) -> None:
        """Stop serving, close open connections and remove the temporary CA file. Safe to call twice."""
        with self._lock:
            server, thread = self._server, self._thread
            self._server = None
            self._thread = None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        server.close_connections()
        if thread is not None:
            thread.join(timeout=5)
        if self._temp_dir is not None:
            shutil.rmtree(self._temp_dir, ignore_errors=True)
            self._temp_dir = None
        logger.info("salesforce emulator stopped")

    def __enter__(self) -> SalesforceEmulator:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """Base URL of the running server, such as ``https://127.0.0.1:8443``. Login and instance URL alike."""
        server = self._server
        if server is None:
            raise RuntimeError("the emulator is not running; call start() first")
        return f"https://{_tls.url_host(self.host)}:{server.server_address[1]}"

    @property
    def ca_file(self) -> str:
        """Path of the PEM file of the CA that signed the server certificate."""
        if self._ca_file is None:
            raise RuntimeError("the emulator has not been started; call start() first")
        return str(self._ca_file)

    # Clock

    def now(self) -> dt.datetime:
        """Return the emulator's current time (aware UTC, millisecond precision)."""
        if self._clock is not None:
            return _require_aware(self._clock(), "clock()")
        return _truncate_to_ms(dt.datetime.now(UTC) + self._clock_offset)

    def set_now(self, value: dt.datetime) -> None:
        """Move the default clock so that now() returns ``value`` (it keeps running from there)."""
        target = _require_aware(value, "value")
        with self._lock:
            self._ensure_default_clock()
            self._clock_offset = target - dt.datetime.now(UTC)

    def advance(self, seconds: float) -> None:
        """Move the default clock forward by ``seconds`` (negative values move it back)."""
        with self._lock:
            self._ensure_default_clock()
            self._clock_offset += dt.timedelta(seconds=seconds)

    def _ensure_default_clock(self) -> None:
        if self._clock is not None:
            raise RuntimeError("set_now() and advance() work only with the default clock; change the clock you passed")

    def _stamp(self, modstamp: dt.datetime | None) -> dt.datetime:
        return self.now() if modstamp is None else _require_aware(modstamp, "modstamp")

    # Records

    def create_record(self, object_name: str, fields: dict[str, Any], modstamp: dt.datetime | None = None) -> str:
        """Insert a record and return its 18-character Id. Unknown ``__c`` fields become string custom fields."""
        with self._lock:
            return self._store.create(object_name, fields, self._stamp(modstamp))

    def update_record(
        self, object_name: str, record_id: str, fields: dict[str, Any], modstamp: dt.datetime | None = None
    ) -> None:
        """Change fields and set LastModifiedDate and SystemModstamp to ``modstamp`` (default: now)."""
        with self._lock:
            self._store.update(object_name, record_id, fields, self._stamp(modstamp))

    def delete_record(self, object_name: str, record_id: str, modstamp: dt.datetime | None = None) -> None:
        """Soft-delete a record: IsDeleted becomes true, so only queryAll returns it."""
        with self._lock:
            self._store.delete(object_name, record_id, self._stamp(modstamp))

    def merge_records(
        self, object_name: str, winner_id: str, loser_id: str, modstamp: dt.datetime | None = None
    ) -> None:
        """Merge ``loser_id`` into ``winner_id``: the loser is deleted with MasterRecordId set to the winner."""
        with self._lock:
            self._store.merge(object_name, winner_id, loser_id, self._stamp(modstamp))

    def get_record(self, object_name: str, record_id: str) -> dict[str, Any]:
        """Return a stored record (deleted ones too) with every field in API form."""
        with self._lock:
            sobject = self._store.sobject(object_name)
            record = self._store.get(sobject.name, record_id)
            return self._store.render_record(sobject.name, record, DEFAULT_API_VERSION)

    def records(self, object_name: str, include_deleted: bool = False) -> list[dict[str, Any]]:
        """Return the stored records of an object in insertion order, in API form."""
        with self._lock:
            sobject = self._store.sobject(object_name)
            return [
                self._store.render_record(sobject.name, record, DEFAULT_API_VERSION)
                for record in self._store.iter_records(sobject.name, include_deleted)
            ]

    # Test hooks

    def expire_all_tokens(self) -> int:
        """Invalidate every issued access token and return how many there were."""
        with self._lock:
            count = len(self._tokens)
            self._tokens.clear()
        logger.info("expired all access tokens: count=%d", count)
        return count

    def issued_tokens(self) -> list[str]:
        """Return every access token issued so far, in issue order, including expired ones."""
        with self._lock:
            return list(self._issued_tokens)

    def inject_fault(self, path_contains: str, status: int, body: Any, count: int = 1) -> None:
        """Respond to the next ``count`` requests whose URL path contains ``path_contains`` with a fault.

        Each of them gets ``status`` and the JSON ``body``.

        Faults apply to the REST and token endpoints, before authentication, and do not count
        as API calls.
        """
        if not 100 <= int(status) <= 599:
            raise ValueError(f"status must be an HTTP status code, got {status}")
        if count < 1:
            raise ValueError(f"count must be at least 1, got {count}")
        with self._lock:
            self._faults.append(_Fault(path_contains, int(status), body, count))

    def set_api_usage(self, used: int) -> None:
        """Set the daily API request counter reported in Sforce-Limit-Info and the limits resource."""
        if used < 0:
            raise ValueError(f"used must not be negative, got {used}")
        with self._lock:
            self._api_usage = used

    @property
    def request_log(self) -> list[dict[str, Any]]:
        """One entry per request: method, path, query (the decoded ``q`` parameter or None) and status."""
        with self._lock:
            return [dict(entry) for entry in self._request_log]

    @property
    def api_calls(self) -> int:
        """Authenticated REST calls received, including those refused for the daily limit."""
        with self._lock:
            return self._api_calls

    @property
    def api_usage(self) -> int:
        with self._lock:
            return self._api_usage

    # Request handling

    def _handle(self, request: _Request) -> _Response:
        try:
            response = self._route(request)
        except Exception:
            error_id = uuid.uuid4().hex[:10]
            logger.exception("request failed: method=%s path=%s error_id=%s", request.method, request.path, error_id)
            response = _error_response(
                500,
                "UNKNOWN_EXCEPTION",
                f"An unexpected error occurred. Please include this ErrorId if you contact support: {error_id}",
            )
        is_query = re.search(r"/query(All)?/?$", request.path) is not None
        with self._lock:
            self._request_count += 1
            self._request_log.append(
                {
                    "method": request.method,
                    "path": request.path,
                    "query": request.param("q") if is_query else None,
                    "status": response.status,
                }
            )
        return response

    def _route(self, request: _Request) -> _Response:
        path = request.path
        if path.startswith("/_emulator/"):
            return self._handle_admin(request)

        fault = self._take_fault(path)
        if fault is not None:
            logger.info("responding with injected fault: path=%s status=%d", path, fault.status)
            headers = [self._limit_header()] if path.startswith("/services/data/") else []
            return _json_response(fault.status, fault.body, headers)

        if path.rstrip("/") == "/services/oauth2/token":
            return self._handle_token(request)
        if path.rstrip("/") == "/services/data":
            return self._handle_versions(request)
        if path.startswith("/services/data/"):
            response = self._handle_data(request)
            response.headers.append(self._limit_header())
            return response
        return _not_found()

    def _take_fault(self, path: str) -> _Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.path_contains in path:
                    fault.remaining -= 1
                    if fault.remaining <= 0:
                        self._faults.remove(fault)
                    return fault
        return None

    def _limit_header(self) -> tuple[str, str]:
        with self._lock:
            return ("Sforce-Limit-Info", f"api-usage={self._api_usage}/{self.daily_api_limit}")

    # OAuth

    def _handle_token(self, request: _Request) -> _Response:
        if request.method != "POST":
            return _oauth_error("invalid_request", "must use HTTP POST")
        form = parse_qs(request.body.decode("utf-8", errors="replace"), keep_blank_values=True)
        grant_type = (form.get("grant_type") or [""])[0]
        if grant_type == "client_credentials":
            return self._grant_client_credentials(request, form)
        if grant_type == JWT_BEARER_GRANT:
            return self._grant_jwt_bearer(form)
        logger.warning("token request rejected: unsupported grant_type=%r", grant_type)
        return _oauth_error("unsupported_grant_type", "grant type not supported")

    def _grant_client_credentials(self, request: _Request, form: dict[str, list[str]]) -> _Response:
        client_id = (form.get("client_id") or [None])[0]
        client_secret = (form.get("client_secret") or [None])[0]
        authorization = request.headers.get("Authorization") or ""
        if authorization.lower().startswith("basic "):
            try:
                decoded = base64.b64decode(authorization[6:].strip(), validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                return _oauth_error("invalid_client", "invalid client credentials")
            basic_id, _, basic_secret = decoded.partition(":")
            client_id, client_secret = unquote(basic_id), unquote(basic_secret)
        if client_id != self.client_id:
            logger.warning("token request rejected: unknown client_id")
            return _oauth_error("invalid_client_id", "client identifier invalid")
        if client_secret is None or not hmac.compare_digest(client_secret, self.client_secret):
            logger.warning("token request rejected: wrong client secret for client_id=%s", client_id)
            return _oauth_error("invalid_client", "invalid client credentials")
        return self._issue_token()

    def _grant_jwt_bearer(self, form: dict[str, list[str]]) -> _Response:
        assertion = (form.get("assertion") or [""])[0]
        if self._jwt_public_key is None:
            logger.warning("JWT bearer token request rejected: no public key configured")
            return _oauth_error("invalid_grant", "invalid assertion")
        try:
            claims = jwt.decode(
                assertion,
                self._jwt_public_key,
                algorithms=["RS256"],
                options={
                    "verify_aud": False,
                    "verify_exp": False,
                    "verify_iat": False,
                    "verify_nbf": False,
                    "require": ["iss", "sub", "exp"],
                },
            )
        except jwt.InvalidTokenError as error:
            logger.warning("JWT bearer token request rejected: %s", error)
            return _oauth_error("invalid_grant", "invalid assertion")
        if claims.get("iss") != self.client_id:
            logger.warning("JWT bearer token request rejected: iss is not the configured client_id")
            return _oauth_error("invalid_client_id", "client identifier invalid")
        if claims.get("sub") != self.username:
            logger.warning("JWT bearer token request rejected: unknown sub=%r", claims.get("sub"))
            return _oauth_error("invalid_grant", "invalid assertion")
        expires = claims.get("exp")
        if not isinstance(expires, (int, float)) or expires <= self.now().timestamp():
            logger.warning("JWT bearer token request rejected: assertion expired (exp=%r)", expires)
            return _oauth_error("invalid_grant", "invalid assertion")
        return self._issue_token()

    def _issue_token(self) -> _Response:
        issued = self.now()
        token = f"{ORG_ID[:15]}!{secrets.token_urlsafe(48)}"
        with self._lock:
            self._tokens[token] = issued + self.token_lifetime
            self._issued_tokens.append(token)
        identity_url = f"{self.url}/id/{ORG_ID}/{USER_ID}"
        issued_at = str(int(issued.timestamp() * 1000))
        # Salesforce signs the identity URL and issued_at with the client secret (HMAC-SHA256).
        digest = hmac.new(
            self.client_secret.encode("utf-8"), (identity_url + issued_at).encode("utf-8"), hashlib.sha256
        ).digest()
        signature = base64.b64encode(digest).decode("ascii")
        payload = {
            "access_token": token,
            "signature": signature,
            "scope": "api",
            "instance_url": self.url,
            "id": identity_url,
            "token_type": "Bearer",
            "issued_at": issued_at,
        }
        return _json_response(200, payload, [("Cache-Control", "no-cache,must-revalidate,max-age=0,no-store,private")])

    def _token_is_valid(self, request: _Request) -> bool:
        authorization = request.headers.get("Authorization") or ""
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() not in ("bearer", "oauth") or not token.strip():
            return False
        with self._lock:
            expires = self._tokens.get(token.strip())
            if expires is None:
                return False
            if self.now() >= expires:
                del self._tokens[token.strip()]
                return False
            return True

    # REST resources

    def _handle_versions(self, request: _Request) -> _Response:
        if request.method not in ("GET", "HEAD"):
            return _method_not_allowed(request.method)
        versions = [
            {"label": label, "url": f"/services/data/v{version}", "version": version}
            for version, label in VERSION_LABELS.items()
        ]
        return _json_response(200, versions)

    def _handle_data(self, request: _Request) -> _Response:
        segments = [segment for segment in request.path.split("/") if segment][2:]
        version_match = _VERSION_RE.fullmatch(segments[0]) if segments else None
        if version_match is None:
            return _not_found()
        version = version_match.group(1)
        resource = segments[1:]

        if not self._token_is_valid(request):
            logger.info("rejected request without a valid session: method=%s path=%s", request.method, request.path)
            return _error_response(
                401, "INVALID_SESSION_ID", "Session expired or invalid", [("WWW-Authenticate", "Token")]
            )
        with self._lock:
            self._api_calls += 1
            self._api_usage += 1
            used = self._api_usage
        if used > self.daily_api_limit:
            logger.warning("daily API limit exceeded: used=%d max=%d path=%s", used, self.daily_api_limit, request.path)
            return _error_response(403, "REQUEST_LIMIT_EXCEEDED", "TotalRequests Limit exceeded.")
        if resource[:2] == ["jobs", "query"]:
            status, body, headers = self.bulk.handle(request.method, version, resource[2:], request.params, request.body)
            return _Response(status, body, headers)
        if request.method not in ("GET", "HEAD"):
            logger.info("method not allowed: method=%s path=%s", request.method, request.path)
            return _method_not_allowed(request.method)

        if not resource:
            names = ("limits", "query", "queryAll", "sobjects")
            return _json_response(200, {name: f"/services/data/v{version}/{name}" for name in names})
        head, rest = resource[0], resource[1:]
        if head == "limits" and not rest:
            return self._handle_limits()
        if head in ("query", "queryAll"):
            if not rest:
                return self._handle_query(request, version, include_deleted=head == "queryAll")
            if len(rest) == 1:
                return self._handle_query_more(request, version, rest[0])
            return _not_found()
        if head == "sobjects":
            return self._handle_sobjects(request, version, rest)
        return _not_found()

    def _handle_limits(self) -> _Response:
        with self._lock:
            remaining = max(self.daily_api_limit - self._api_usage, 0)
        return _json_response(
            200,
            {
                "DailyApiRequests": {"Max": self.daily_api_limit, "Remaining": remaining},
                "DailyBulkApiRequests": {"Max": 5000, "Remaining": 5000},
                "DailyBulkV2QueryJobs": {"Max": 10000, "Remaining": 10000},
                "DataStorageMB": {"Max": 5, "Remaining": 5},
                "FileStorageMB": {"Max": 20, "Remaining": 20},
            },
        )

    def _batch_size(self, request: _Request, default: int) -> int:
        options = request.headers.get("Sforce-Query-Options") or ""
        match = re.search(r"batchSize\s*=\s*(\d+)", options, re.IGNORECASE)
        if match is None:
            return default
        return min(max(int(match.group(1)), MIN_BATCH_SIZE), MAX_BATCH_SIZE)

    def _handle_query(self, request: _Request, version: str, include_deleted: bool) -> _Response:
        text = request.param("q")
        if text is None or not text.strip():
            return _error_response(400, "MALFORMED_QUERY", "A query string has to be specified")
        batch_size = self._batch_size(request, self.page_size)
        with self._lock:
            store = self._store
            try:
                compiled = soql.compile_text(text, store, store.dereference)
            except soql.SoqlError as error:
                logger.info("query rejected: error_code=%s query=%r", error.error_code, text)
                return _error_response(400, error.error_code, error.message)
            if self._generated is not None and compiled.object_name == "Contact":
                try:
                    result: _QueryResult | generated.GeneratedResult = self._query_generated(
                        compiled, include_deleted, batch_size
                    )
                except generated.GeneratedQueryError as error:
                    logger.info("query rejected: error_code=%s query=%r", error.error_code, text)
                    return _error_response(400, error.error_code, error.message)
            else:
                rows = compiled.execute(
                    store.iter_records(compiled.object_name, include_deleted), shuffle_seed=UNORDERED_SHUFFLE_SEED
                )
                chains = compiled.relationship_paths
                snapshot = [
                    (record, _resolve_parents(record, chains, store.dereference) if chains else _NO_PARENTS)
                    for record in rows
                ]
                result = _QueryResult(compiled.object_name, _build_render_plan(compiled), snapshot, batch_size)
            if compiled.is_count:
                return _json_response(200, {"totalSize": len(result.rows), "done": True, "records": []})
            if len(result.rows) > batch_size:
                self._open_cursor(result)
        return _json_response(200, result.page(0, batch_size, version))

    def _query_generated(
        self, compiled: soql.CompiledQuery, include_deleted: bool, batch_size: int
    ) -> generated.GeneratedResult:
        """Serve a Contact query from the generated Contacts merged with the stored ones."""
        assert self._generated is not None
        store = self._store
        plan = _build_render_plan(compiled)
        chains = compiled.relationship_paths

        def render(record: dict[str, Any], version: str) -> dict[str, Any]:
            parents = _resolve_parents(record, chains, store.dereference) if chains else _NO_PARENTS
            return _render_row("Contact", record, parents, plan, version)

        stored = list(store.iter_records("Contact", include_deleted))
        return self._generated.query(compiled, stored, batch_size, render)

    def _bulk_snapshot(self, text: str, include_deleted: bool) -> tuple[soql.CompiledQuery, bulk.QueryResult]:
        """Compile and run a Bulk API query job's SOQL as the REST query does; raise soql.SoqlError."""
        with self._lock:
            store = self._store
            compiled = soql.compile_text(text, store, store.dereference)
            if self._generated is not None and compiled.object_name == "Contact":
                try:
                    return compiled, self._query_generated(compiled, include_deleted, MAX_BATCH_SIZE)
                except generated.GeneratedQueryError as error:
                    raise soql.SoqlError(error.error_code, error.message) from None
            rows = compiled.execute(
                store.iter_records(compiled.object_name, include_deleted), shuffle_seed=UNORDERED_SHUFFLE_SEED
            )
            chains = compiled.relationship_paths
            snapshot = [
                (record, _resolve_parents(record, chains, store.dereference) if chains else _NO_PARENTS)
                for record in rows
            ]
            return compiled, _QueryResult(compiled.object_name, _build_render_plan(compiled), snapshot, MAX_BATCH_SIZE)

    def _open_cursor(self, result: _QueryResult | generated.GeneratedResult) -> None:
        now = self.now()
        self._drop_idle_cursors(now)
        while len(self._cursors) >= MAX_OPEN_CURSORS:
            oldest = next(iter(self._cursors))
            del self._cursors[oldest]
            logger.info("released the oldest query cursor, more than %d open: locator=%s", MAX_OPEN_CURSORS, oldest)
        self._cursor_number += 1
        result.locator = make_id("01g", self._cursor_number)
        result.last_used = now
        self._cursors[result.locator] = result

    def _drop_idle_cursors(self, now: dt.datetime) -> None:
        for locator, cursor in list(self._cursors.items()):
            if cursor.last_used is not None and now - cursor.last_used > CURSOR_IDLE_TIMEOUT:
                del self._cursors[locator]

    def _handle_query_more(self, request: _Request, version: str, locator_text: str) -> _Response:
        locator, _, offset_text = locator_text.rpartition("-")
        with self._lock:
            self._drop_idle_cursors(self.now())
            cursor = self._cursors.get(locator)
            if cursor is None or not offset_text.isdigit() or int(offset_text) > len(cursor.rows):
                logger.info("invalid query locator: %s", locator_text)
                return _error_response(400, "INVALID_QUERY_LOCATOR", "invalid query locator")
            cursor.last_used = self.now()
        batch_size = self._batch_size(request, cursor.batch_size)
        return _json_response(200, cursor.page(int(offset_text), batch_size, version))

    def _handle_sobjects(self, request: _Request, version: str, rest: list[str]) -> _Response:
        store = self._store
        if not rest:
            with self._lock:
                sobjects = [self._global_describe_entry(sobject, version) for sobject in store.objects.values()]
            return _json_response(200, {"encoding": "UTF-8", "maxBatchSize": 200, "sobjects": sobjects})

        with self._lock:
            object_name = store.find_object(rest[0])
            if object_name is None:
                logger.info("unknown object in REST path: %s", request.path)
                return _not_found()
            sobject = store.objects[object_name]
            if len(rest) == 1:
                return _json_response(
                    200, {"objectDescribe": self._global_describe_entry(sobject, version), "recentItems": []}
                )
            if len(rest) != 2:
                return _not_found()
            if rest[1] == "describe":
                return _json_response(200, self._describe(sobject, version))
            if rest[1] in ("updated", "deleted"):
                return self._handle_replication(request, sobject, rest[1])
            return self._handle_record(request, sobject, rest[1], version)

    def _handle_record(self, request: _Request, sobject: SObjectType, record_id: str, version: str) -> _Response:
        id18 = soql.to_id18(record_id)
        record = self._store.records[sobject.name].get(id18 or "")
        if record is None:
            return _not_found()
        if record.get("IsDeleted"):
            return _error_response(404, "ENTITY_IS_DELETED", "entity is deleted")
        rendered = self._store.render_record(sobject.name, record, version)
        requested = request.param("fields")
        if requested:
            output = {"attributes": rendered["attributes"]}
            for name in requested.split(","):
                canonical = sobject.canonical_names.get(name.strip().lower())
                if canonical is None:
                    return _error_response(
                        400, "INVALID_FIELD", f"No such column '{name.strip()}' on sobject of type {sobject.name}"
                    )
                output[canonical] = rendered[canonical]
            rendered = output
        return _json_response(200, rendered)

    def _handle_replication(self, request: _Request, sobject: SObjectType, kind: str) -> _Response:
        """Serve sObject Get Updated or Get Deleted for the window given by ``start`` and ``end``."""
        window = self._replication_window(request, kind)
        if isinstance(window, _Response):
            logger.info(
                "replication request rejected: path=%s error=%s", request.path, window.body.decode("utf-8")
            )
            return window
        start, latest = window
        records = self._store.records[sobject.name].values()

        if kind == "updated":
            ids = [
                record["Id"]
                for record in records
                if not record.get("IsDeleted") and start <= record["SystemModstamp"] < latest
            ]
            return _json_response(200, {"ids": ids, "latestDateCovered": format_datetime(latest)})

        deleted_at = self._store.deleted_at
        deleted = [
            {"id": record["Id"], "deletedDate": format_datetime(deleted_at[record["Id"]])}
            for record in records
            if record.get("IsDeleted") and record["Id"] in deleted_at and start <= deleted_at[record["Id"]] < latest
        ]
        return _json_response(
            200,
            {
                "deletedRecords": deleted,
                "earliestDateAvailable": format_datetime(self.org_created.replace(second=0, microsecond=0)),
                "latestDateCovered": format_datetime(latest),
            },
        )

    def _replication_window(self, request: _Request, kind: str) -> tuple[dt.datetime, dt.datetime] | _Response:
        """Return the window start and ``latestDateCovered``, or the error response for invalid bounds."""
        bounds: dict[str, dt.datetime] = {}
        for name in ("start", "end"):
            value = request.param(name)
            if value is None:
                return _error_response(400, "MISSING_ARGUMENT", f"Missing required parameter: {name}")
            try:
                parsed = parse_iso_datetime(value)
            except ValueError:
                return _error_response(
                    400,
                    "INVALID_REPLICATION_DATE",
                    f"Invalid {name} parameter {value!r}: expected an ISO 8601 datetime with a UTC offset",
                )
            # Salesforce ignores the seconds of both bounds.
            bounds[name] = parsed.replace(second=0, microsecond=0)

        start, end = bounds["start"], bounds["end"]
        if end - start < dt.timedelta(minutes=1):
            return _error_response(
                400, "INVALID_REPLICATION_DATE", "startDate must be at least one minute greater than endDate"
            )

        now = self.now()
        window = UPDATED_WINDOW if kind == "updated" else DELETED_WINDOW
        if start < now - window:
            return _error_response(
                400, "INVALID_REPLICATION_DATE", f"startDate cannot be more than {window.days} days ago"
            )
        return start, min(end, now.replace(second=0, microsecond=0))

    @staticmethod
    def _object_urls(sobject: SObjectType, version: str) -> dict[str, str]:
        base = f"/services/data/v{version}/sobjects/{sobject.name}"
        return {
            "compactLayouts": f"{base}/describe/compactLayouts",
            "rowTemplate": f"{base}/{{ID}}",
            "approvalLayouts": f"{base}/describe/approvalLayouts",
            "listviews": f"{base}/listviews",
            "describe": f"{base}/describe",
            "quickActions": f"{base}/quickActions",
            "layouts": f"{base}/describe/layouts",
            "sobject": base,
        }

    def _global_describe_entry(self, sobject: SObjectType, version: str) -> dict[str, Any]:
        return {
            "activateable": False,
            "associateEntityType": None,
            "associateParentEntity": None,
            "createable": True,
            "custom": False,
            "customSetting": False,
            "deepCloneable": False,
            "deletable": True,
            "deprecatedAndHidden": False,
            "feedEnabled": sobject.name != "User",
            "hasSubtypes": False,
            "isInterface": False,
            "isSubtype": False,
            "keyPrefix": sobject.key_prefix,
            "label": sobject.label,
            "labelPlural": sobject.label_plural,
            "layoutable": True,
            "mergeable": sobject.name != "User",
            "mruEnabled": True,
            "name": sobject.name,
            "queryable": True,
            "replicateable": True,
            "retrieveable": True,
            "searchable": True,
            "triggerable": True,
            "undeletable": sobject.name != "User",
            "updateable": True,
            "urls": self._object_urls(sobject, version),
        }

    def _describe(self, sobject: SObjectType, version: str) -> dict[str, Any]:
        entry = self._global_describe_entry(sobject, version)
        return {
            "actionOverrides": [],
            "activateable": entry["activateable"],
            "associateEntityType": None,
            "associateParentEntity": None,
            "childRelationships": [],
            "compactLayoutable": True,
            "createable": entry["createable"],
            "custom": False,
            "customSetting": False,
            "deepCloneable": False,
            "defaultImplementation": None,
            "deletable": entry["deletable"],
            "deprecatedAndHidden": False,
            "extendedBy": None,
            "extendsInterfaces": None,
            "feedEnabled": entry["feedEnabled"],
            "fields": [dict(describe) for describe in sobject.fields],
            "hasSubtypes": False,
            "implementedBy": None,
            "implementsInterfaces": None,
            "isInterface": False,
            "isSubtype": False,
            "keyPrefix": sobject.key_prefix,
            "label": sobject.label,
            "labelPlural": sobject.label_plural,
            "layoutable": True,
            "listviewable": None,
            "lookupLayoutable": None,
            "mergeable": entry["mergeable"],
            "mruEnabled": True,
            "name": sobject.name,
            "namedLayoutInfos": [],
            "networkScopeFieldName": None,
            "queryable": True,
            "recordTypeInfos": [
                {
                    "active": True,
                    "available": True,
                    "defaultRecordTypeMapping": True,
                    "developerName": "Master",
                    "master": True,
                    "name": "Master",
                    "recordTypeId": "012000000000000AAA",
                    "urls": {
                        "layout": (
                            f"/services/data/v{version}/sobjects/{sobject.name}/describe/layouts/012000000000000AAA"
                        )
                    },
                }
            ],
            "replicateable": True,
            "retrieveable": True,
            "searchLayoutable": True,
            "searchable": True,
            "sobjectDescribeOption": "FULL",
            "supportedScopes": [
                {"label": "All records", "name": "everything"},
                {"label": "My records", "name": "mine"},
            ],
            "triggerable": True,
            "undeletable": entry["undeletable"],
            "updateable": True,
            "urls": entry["urls"],
        }

    # Admin endpoints under /_emulator/

    def _handle_admin(self, request: _Request) -> _Response:
        segments = [segment for segment in request.path.split("/") if segment][1:]
        try:
            payload = json.loads(request.body) if request.body.strip() else {}
        except json.JSONDecodeError as error:
            return _json_response(400, {"error": f"request body is not valid JSON: {error}"})
        if not isinstance(payload, dict):
            return _json_response(400, {"error": "request body must be a JSON object"})
        try:
            return self._route_admin(request, segments, payload)
        except (RecordError, ValueError, TypeError, RuntimeError) as error:
            logger.info("admin request rejected: method=%s path=%s error=%s", request.method, request.path, error)
            return _json_response(400, {"error": str(error)})

    def _route_admin(self, request: _Request, segments: list[str], payload: dict[str, Any]) -> _Response:
        method = request.method
        modstamp_text = payload.get("modstamp") or request.param("modstamp")
        modstamp = parse_iso_datetime(modstamp_text) if modstamp_text else None

        if segments and segments[0] == "records" and len(segments) >= 2:
            object_name = segments[1]
            if len(segments) == 2 and method == "POST":
                record_id = self.create_record(object_name, self._admin_fields(payload), modstamp)
                return _json_response(201, {"id": record_id})
            if len(segments) == 2 and method == "GET":
                include_deleted = (request.param("include_deleted") or "").lower() in ("1", "true", "yes")
                return _json_response(200, {"records": self.records(object_name, include_deleted)})
            if len(segments) == 3:
                record_id = segments[2]
                if method == "GET":
                    return _json_response(200, self.get_record(object_name, record_id))
                if method == "PATCH":
                    self.update_record(object_name, record_id, self._admin_fields(payload), modstamp)
                    return _json_response(200, {"id": self.get_record(object_name, record_id)["Id"]})
                if method == "DELETE":
                    self.delete_record(object_name, record_id, modstamp)
                    return _json_response(200, {"id": self.get_record(object_name, record_id)["Id"]})
            if len(segments) == 4 and segments[3] == "merge" and method == "POST":
                loser_id = payload.get("loser_id")
                if not isinstance(loser_id, str):
                    raise ValueError('merge needs {"loser_id": "<Id>"} in the request body')
                self.merge_records(object_name, segments[2], loser_id, modstamp)
                return _json_response(200, {"id": self.get_record(object_name, segments[2])["Id"]})
        elif segments == ["tokens", "expire"] and method == "POST":
            return _json_response(200, {"expired": self.expire_all_tokens()})
        elif segments == ["faults"] and method == "POST":
            path_contains = payload.get("path_contains")
            status = payload.get("status")
            if not isinstance(path_contains, str) or not isinstance(status, int):
                raise ValueError('a fault needs "path_contains" (string), "status" (integer) and "body" (JSON)')
            count = payload.get("count", 1)
            self.inject_fault(path_contains, status, payload.get("body"), count)
            return _json_response(201, {"path_contains": path_contains, "status": status, "count": count})
        elif segments == ["stats"] and method == "GET":
            with self._lock:
                stats = {
                    "api_calls": self._api_calls,
                    "requests": self._request_count,
                    "api_usage": self._api_usage,
                    "daily_api_limit": self.daily_api_limit,
                    "open_tokens": len(self._tokens),
                }
            return _json_response(200, stats)
        elif segments == ["api-usage"] and method == "POST":
            used = payload.get("used")
            if not isinstance(used, int):
                raise ValueError('api-usage needs {"used": <integer>}')
            self.set_api_usage(used)
            return _json_response(200, {"used": used})
        elif segments == ["clock"] and method in ("GET", "POST"):
            if method == "POST":
                if "now" in payload:
                    self.set_now(parse_iso_datetime(str(payload["now"])))
                elif "advance_s" in payload:
                    self.advance(float(payload["advance_s"]))
                else:
                    raise ValueError('clock needs {"now": "<ISO datetime>"} or {"advance_s": <seconds>}')
            return _json_response(200, {"now": format_datetime(self.now())})
        return _json_response(404, {"error": f"no emulator endpoint {method} {request.path}"})

    @staticmethod
    def _admin_fields(payload: dict[str, Any]) -> dict[str, Any]:
        fields = payload.get("fields")
        if not isinstance(fields, dict):
            raise ValueError('the request body needs {"fields": {...}}')
        return fields


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def _build_argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m connector.emulators.salesforce",
        description="Run the local Salesforce REST API emulator until SIGTERM or SIGINT.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8443, help="TCP port; 0 picks a free port (default: %(default)s)")
    parser.add_argument(
        "--seed",
        action="append",
        metavar="FILE",
        help="sfdx tree-import JSON file to load; repeat for several files (default: the bundled sample contacts)",
    )
    parser.add_argument("--empty", action="store_true", help="start with no seeded records")
    parser.add_argument(
        "--leads", action="store_true", help="serve the Lead object and seed synthetic sample Leads"
    )
    parser.add_argument(
        "--person-accounts",
        action="store_true",
        help="add the Person Account fields to Account and seed synthetic sample person accounts",
    )

    parser.add_argument(
        "--generated-contacts",
        type=int,
        default=0,
        metavar="N",
        help="add N read-only Contacts computed on the fly instead of stored, for large-org benchmarks (default: 0)",
    )
    parser.add_argument(
        "--page-size",
        type=int,
        default=2000,
        help="records per query page when the request has no batchSize header (default: %(default)s)",
    )
    parser.add_argument(
        "--ca-file", metavar="PATH", help="where to write the CA certificate PEM (default: a temporary folder)"
    )
    parser.add_argument(
        "--client-id", default="emulator-client-id", help="accepted OAuth client id (default: %(default)s)"
    )
    parser.add_argument(
        "--client-secret", default="emulator-client-secret", help="accepted OAuth client secret (default: %(default)s)"
    )
    parser.add_argument(
        "--username", default="integration@example.com", help="the org's integration user (default: %(default)s)"
    )
    parser.add_argument(
        "--jwt-public-key",
        metavar="FILE",
        help="PEM RSA public key that verifies JWT bearer assertions (default: the JWT grant is rejected)",
    )
    parser.add_argument(
        "--daily-api-limit", type=int, default=15000, help="daily API request quota (default: %(default)s)"
    )
    parser.add_argument(
        "--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"), help="log level on stderr"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the emulator from the command line. Prints one JSON ready line on stdout, then serves until a signal."""
    arguments = _build_argument_parser().parse_args(argv)
    logging.basicConfig(
        level=arguments.log_level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )

    seed_files: list[str] | None = [] if arguments.empty else arguments.seed
    try:
        public_key = Path(arguments.jwt_public_key).read_bytes() if arguments.jwt_public_key else None
        emulator = SalesforceEmulator(
            host=arguments.host,
            port=arguments.port,
            seed_files=seed_files,
            page_size=arguments.page_size,
            client_id=arguments.client_id,
            client_secret=arguments.client_secret,
            username=arguments.username,
            jwt_public_key_pem=public_key,
            daily_api_limit=arguments.daily_api_limit,
            ca_file=arguments.ca_file,
            leads=arguments.leads,
            person_accounts=arguments.person_accounts,
            generated_contacts=arguments.generated_contacts,
        )
        emulator.start()
    except (OSError, ValueError) as error:
        logger.error("salesforce emulator failed to start: %s", error)
        return 1

    stop_requested = threading.Event()

    def request_stop(signal_number: int, _frame: object) -> None:
        logger.info("received %s, stopping", signal.Signals(signal_number).name)
        stop_requested.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)

    ready = {
        "event": "salesforce_emulator.ready",
        "url": emulator.url,
        "ca_file": emulator.ca_file,
        "client_id": emulator.client_id,
        "username": emulator.username,
    }
    sys.stdout.write(json.dumps(ready) + "\n")
    sys.stdout.flush()

    try:
        while not stop_requested.wait(0.5):
            pass
    finally:
        emulator.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
