"""Synthetic Leads and Person Accounts that the Salesforce emulator seeds on request.

Every person, company, number and address here is invented for the tests and the demo;
email addresses use the reserved example.com domain. The records cover the messy data
that field maps must handle: national numbers with and without a country, extensions,
numbers that cannot exist, invalid email addresses, multi-select picklists, empty
middle names, Cyrillic names, apostrophes and decomposed Unicode.

Each record is a dict of field API names to values, in the form that
``SalesforceEmulator.create_record`` takes.
"""

from __future__ import annotations

from typing import Any

SAMPLE_LEADS: tuple[dict[str, Any], ...] = (
    {
        # A German national mobile number with the country on the record.
        "FirstName": "Lena", "LastName": "Fischer", "Company": "Fischer Logistik GmbH",
        "MobilePhone": "0151 23456789", "Email": "lena.fischer@example.com",
        "City": "Hamburg", "Country": "Germany", "Status": "Working - Contacted", "LeadSource": "Web",
        "Product_Interest__c": "Spa;Golf", "AnnualRevenue": 1250000.0, "NumberOfEmployees": 40,
        "HasOptedOutOfEmail": False,
    },
    {
        # A US number with an extension and no country: the default region applies.
        "FirstName": "Marcus", "LastName": "Webb", "Company": "Webb & Partners",
        "Phone": "(415) 555-2671 ext. 204", "Email": "Marcus.Webb@Example.com",
        "Status": "Open - Not Contacted", "LeadSource": "Phone Inquiry", "HasOptedOutOfEmail": True,
    },
    {
        # A Cyrillic name, a country written in Russian, an international number.
        "FirstName": "Дмитрий", "LastName": "Соколов", "Company": "Соколов и партнёры",
        "MobilePhone": "+7 912 345-67-89", "Email": "dmitry.sokolov@example.com",
        "Country": "Россия", "Status": "Open - Not Contacted", "Product_Interest__c": "Sailing",
    },
    {
        # An apostrophe in the name and an email address that is not valid.
        "FirstName": "Siobhán", "LastName": "O'Connor", "Company": "O'Connor Design",
        "Phone": "01 234 5678", "Email": "siobhan.oconnor(at)example.com", "Country": "Ireland",
        "Status": "Working - Contacted", "LeadSource": "Partner Referral",
    },
    {
        # A number that cannot exist: the lead is skipped with reason phone_invalid.
        "FirstName": "Priya", "LastName": "Raman", "Company": "Raman Analytics",
        "MobilePhone": "196-794-6794", "Email": "priya.raman@example.com", "Country": "United States",
        "Status": "Open - Not Contacted",
    },
    {
        # No phone number at all, and a name written with a combining accent (NFD).
        "FirstName": "Toma\u0301s", "LastName": "Nu\u0301n\u0303ez", "Company": "Núñez Viajes",
        "Email": "tomas.nunez@example.com", "Country": "Spain", "Status": "Open - Not Contacted",
    },
    {
        # A converted lead: its person lives on as a Contact, so lead maps filter it out.
        "FirstName": "Grace", "LastName": "Okafor", "Company": "Okafor Foods",
        "MobilePhone": "+44 7911 123456", "Email": "grace.okafor@example.com", "Country": "United Kingdom",
        "Status": "Closed - Converted", "IsConverted": True, "ConvertedDate": "2025-01-20",
    },
)

SAMPLE_PERSON_ACCOUNTS: tuple[dict[str, Any], ...] = (
    {
        # A German national number, the country written in German.
        "FirstName": "Anna", "LastName": "Müller", "PersonMobilePhone": "0170 1234567",
        "PersonEmail": "anna.mueller@example.com", "PersonMailingCity": "Berlin",
        "PersonMailingCountry": "Deutschland", "PersonBirthdate": "1985-04-12", "PersonLeadSource": "Web",
    },
    {
        # A Cyrillic name and an international number.
        "FirstName": "Ольга", "LastName": "Иванова", "PersonMobilePhone": "+7 495 123-45-67",
        "PersonEmail": "olga.ivanova@example.com", "PersonMailingCountry": "Russia",
    },
    {
        # An apostrophe, a UK number with an extension in the account phone, no mobile.
        "FirstName": "Liam", "LastName": "O'Brien", "Phone": "+44 20 7946 0958 ext 12",
        "PersonEmail": "LIAM.OBRIEN@EXAMPLE.COM", "PersonMailingCountry": "United Kingdom",
    },
    {
        # No country: the default region decides how the national number is read.
        "FirstName": "Carlos", "LastName": "Gómez", "PersonMobilePhone": "(305) 555-0199",
        "PersonEmail": "carlos.gomez@example", "PersonHomePhone": "(305) 555-0100",
    },
    {
        # No phone number: skipped with reason no_phone.
        "FirstName": "Noor", "LastName": "Haddad", "PersonEmail": "noor.haddad@example.com",
    },
)

# A business account beside the person accounts; person account maps must filter it out.
SAMPLE_BUSINESS_ACCOUNTS: tuple[dict[str, Any], ...] = (
    {"Name": "Northwind Traders", "Phone": "+1 206 555 0100"},
)
