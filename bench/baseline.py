"""The straightforward sync script that the push benchmark compares the connector with.

It logs in, reads every Contact with simple-salesforce's ``query_all``, maps each with the
connector's default field map, and sends one ``httpx.put`` per contact, one after the
other, each on a new connection. No concurrency, no state, no retries.

``--limit N`` sends only the first N upserts after reading everything, because a
sequential run over the whole workload at 50 ms per request would take longer than the
rest of the benchmark together. The push rate of a sequential loop does not change along
the way, so the harness scales the measured time up to the whole workload.

Prints one JSON object: records read, upserts sent, and the seconds spent in each phase.
"""

from __future__ import annotations

import argparse
import json
import ssl
import sys
import time

import httpx
import requests
from simple_salesforce import Salesforce

from connector.field_map import Mapped, load_field_map

FIELDS = (
    "Id, FirstName, MiddleName, LastName, MobilePhone, Phone, Email, LeadSource, "
    "MailingStreet, MailingCity, MailingState, MailingPostalCode, MailingCountry"
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Sequential Salesforce-to-Charles sync, the benchmark's baseline.")
    parser.add_argument("--salesforce-url", required=True, help="login and instance URL of the Salesforce org")
    parser.add_argument("--ca-file", required=True, help="CA bundle that signed the Salesforce server's certificate")
    parser.add_argument("--client-id", required=True)
    parser.add_argument("--client-secret", required=True)
    parser.add_argument("--charles-url", required=True, help="Charles tenant base URL")
    parser.add_argument("--charles-key", required=True)
    parser.add_argument("--limit", type=int, default=None, help="send only the first N upserts (default: all)")
    args = parser.parse_args(argv)

    started = time.monotonic()
    session = requests.Session()
    session.verify = args.ca_file
    session.trust_env = False  # else REQUESTS_CA_BUNDLE, when set, replaces the CA file above
    token = session.post(
        f"{args.salesforce_url}/services/oauth2/token",
        data={"grant_type": "client_credentials", "client_id": args.client_id, "client_secret": args.client_secret},
        timeout=60,
    ).json()
    sf = Salesforce(instance_url=token["instance_url"], session_id=token["access_token"], session=session)
    records = sf.query_all(f"SELECT {FIELDS} FROM Contact")["records"]
    read_s = time.monotonic() - started

    field_map = load_field_map(default_region="US")
    url = f"{args.charles_url}/api/v1beta/contacts"
    headers = {"x-api-key": args.charles_key}
    # A plain http:// URL needs no TLS context; one is built anyway so an https Charles works too.
    verify = ssl.create_default_context()
    sent = 0
    push_started = time.monotonic()
    for record in records:
        if args.limit is not None and sent >= args.limit:
            break
        outcome = field_map.apply(record)
        if not isinstance(outcome, Mapped):
            continue
        httpx.put(url, json=outcome.payload, headers=headers, verify=verify, timeout=30).raise_for_status()
        sent += 1
    push_s = time.monotonic() - push_started

    print(json.dumps({"records": len(records), "sent": sent, "read_s": read_s, "push_s": push_s}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
