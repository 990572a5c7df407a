"""Raw clients that measure what the emulators themselves can serve.

Each benchmark figure is shown beside the throughput of a minimal client doing the same
traffic, so a reader can see that the emulator is not what limits the connector:

* ``charles``: threads with one keep-alive ``http.client`` connection each, sending
  ``PUT /api/v1beta/contacts`` with a fixed valid body, as many at once as the
  connector's in-flight limit;
* ``salesforce``: one ``http.client`` connection over TLS that logs in, runs the
  connector's keyset query through ``queryAll`` and follows ``nextRecordsUrl`` to the end.

Run as ``python -m bench.ceiling charles|salesforce ...``; prints one JSON object.
"""

from __future__ import annotations

import argparse
import http.client
import json
import ssl
import sys
import threading
import time
from urllib.parse import urlencode, urlsplit

BODY = {
    "external_reference_id": "+14152340001",
    "source_type": "salesforce",
    "first_name": "Ada",
    "last_name": "Lovelace",
    "phone_numbers": [{"type": "mobile", "value": "+14152340001"}],
    "email_addresses": [{"type": "main", "value": "ada.lovelace@example.com"}],
    "custom_properties": {"salesforce_id": "0035g00003H1mFLAAZ", "mailing_city": "San Francisco"},
}


def charles(url: str, api_key: str, requests: int, concurrency: int) -> dict[str, float]:
    """Send ``requests`` upserts over ``concurrency`` keep-alive connections; return requests per second."""
    parts = urlsplit(url)
    body = json.dumps(BODY).encode("utf-8")
    headers = {"x-api-key": api_key, "Content-Type": "application/json"}
    lock = threading.Lock()
    remaining = [requests]
    failures: list[str] = []

    def worker() -> None:
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
        try:
            while True:
                with lock:
                    if remaining[0] <= 0:
                        return
                    remaining[0] -= 1
                connection.request("PUT", "/api/v1beta/contacts", body=body, headers=headers)
                response = connection.getresponse()
                response.read()
                if response.status != 200:
                    failures.append(f"HTTP {response.status}")
                    return
        finally:
            connection.close()

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    if failures:
        raise SystemExit(f"the Charles emulator responded with {failures[0]}")
    return {"requests": requests, "concurrency": concurrency, "seconds": elapsed, "per_second": requests / elapsed}


def salesforce(url: str, ca_file: str, client_id: str, client_secret: str, soql: str) -> dict[str, float]:
    """Read every record of ``soql`` page by page over one TLS connection; return records per second."""
    parts = urlsplit(url)
    context = ssl.create_default_context(cafile=ca_file)
    connection = http.client.HTTPSConnection(parts.hostname, parts.port, context=context, timeout=120)
    started = time.monotonic()
    form = urlencode({"grant_type": "client_credentials", "client_id": client_id, "client_secret": client_secret})
    connection.request("POST", "/services/oauth2/token", body=form, headers={"Content-Type": "application/x-www-form-urlencoded"})
    token = json.loads(connection.getresponse().read())["access_token"]
    headers = {"Authorization": f"Bearer {token}", "Sforce-Query-Options": "batchSize=2000"}
    path = "/services/data/v62.0/queryAll?" + urlencode({"q": soql})
    records = 0
    while path:
        connection.request("GET", path, headers=headers)
        page = json.loads(connection.getresponse().read())
        records += len(page["records"])
        path = page.get("nextRecordsUrl") if not page["done"] else None
    elapsed = time.monotonic() - started
    connection.close()
    return {"records": records, "seconds": elapsed, "per_second": records / elapsed}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Measure the emulators' own throughput with minimal clients.")
    commands = parser.add_subparsers(dest="target", required=True)
    charles_parser = commands.add_parser("charles", help="upserts per second of the Charles emulator")
    charles_parser.add_argument("--url", required=True)
    charles_parser.add_argument("--api-key", required=True)
    charles_parser.add_argument("--requests", type=int, required=True)
    charles_parser.add_argument("--concurrency", type=int, required=True)
    salesforce_parser = commands.add_parser("salesforce", help="records per second of the Salesforce emulator")
    salesforce_parser.add_argument("--url", required=True)
    salesforce_parser.add_argument("--ca-file", required=True)
    salesforce_parser.add_argument("--client-id", required=True)
    salesforce_parser.add_argument("--client-secret", required=True)
    salesforce_parser.add_argument("--soql", required=True)
    args = parser.parse_args(argv)

    if args.target == "charles":
        result = charles(args.url, args.api_key, args.requests, args.concurrency)
    else:
        result = salesforce(args.url, args.ca_file, args.client_id, args.client_secret, args.soql)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
