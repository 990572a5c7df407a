"""TLS material for the local emulators: a throwaway certificate authority and a server certificate."""

from __future__ import annotations

import ipaddress
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

import trustme

# Names that every emulator certificate covers, so clients may use either loopback spelling.
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
WILDCARD_ADDRESSES = ("", "0.0.0.0", "::")


@dataclass(frozen=True)
class ServerTls:
    """A server-side SSL context and the path of the PEM file of the CA that signed its certificate."""

    context: ssl.SSLContext
    ca_file: Path


def create_server_tls(ca_file: Path, host: str = "127.0.0.1") -> ServerTls:
    """Create a new CA, issue a server certificate for the loopback names and ``host``, and write the CA PEM.

    The CA certificate is written to ``ca_file`` (parent folders are created). Clients pass
    that file as their trust store, for example ``requests.get(url, verify=str(ca_file))``.
    """
    names = list(LOOPBACK_NAMES)
    if host not in WILDCARD_ADDRESSES and host not in names:
        names.append(host)

    authority = trustme.CA(organization_name="Local Salesforce emulator")
    server_cert = authority.issue_cert(*names, common_name=names[0])

    ca_file = Path(ca_file)
    ca_file.parent.mkdir(parents=True, exist_ok=True)
    authority.cert_pem.write_to_path(str(ca_file))
    os.chmod(ca_file, 0o644)

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    server_cert.configure_cert(context)
    return ServerTls(context=context, ca_file=ca_file)


def url_host(host: str) -> str:
    """Return the host part of a URL for a bind address: loopback for a wildcard, brackets for IPv6."""
    if host in WILDCARD_ADDRESSES:
        return "127.0.0.1"
    try:
        if ipaddress.ip_address(host).version == 6:
            return f"[{host}]"
    except ValueError:
        pass
    return host
