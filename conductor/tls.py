"""TLS for the API: the settings' certificate files checked, and turned into gunicorn's options.

The API serves HTTPS when ``tls_cert_file`` and ``tls_key_file`` are set
(PEM; the certificate file may hold the chain after the certificate).
With ``tls_client_ca_file`` too, it also asks every client for a
certificate signed by that CA and refuses a connection without one
(mutual TLS: bearer tokens are still required on top).  Without them it
serves plain HTTP, for loopback use or behind a reverse proxy that ends
TLS (docs/production.md).
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

from conductor.exceptions import InvalidInput
from conductor.settings import Settings


def enabled(settings: Settings) -> bool:
    """Whether the API serves HTTPS."""
    return bool(settings.tls_cert_file)


def check(settings: Settings) -> None:
    """Fail before anything starts when the TLS settings cannot work.

    A certificate without its key (or the reverse), a client CA without a
    certificate, a file that cannot be read or a key that does not match
    its certificate: each is an error naming the setting.

    :raises InvalidInput: the TLS settings are incomplete or their files unusable.
    """
    cert, key, client_ca = settings.tls_cert_file, settings.tls_key_file, settings.tls_client_ca_file
    if bool(cert) != bool(key):
        raise InvalidInput("Set tls_cert_file and tls_key_file together (HTTPS), or neither (HTTP).",
                           errors={"tls_key_file" if cert else "tls_cert_file": "required with the other"})
    if client_ca and not cert:
        raise InvalidInput("tls_client_ca_file needs tls_cert_file and tls_key_file (the API must serve HTTPS).",
                           errors={"tls_cert_file": "required with tls_client_ca_file"})
    if not cert:
        return
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(Path(cert).expanduser(), Path(key).expanduser())
    except (OSError, ssl.SSLError) as exc:
        raise InvalidInput(f"Cannot use tls_cert_file {cert} with tls_key_file {key}: {exc}",
                           errors={"tls_cert_file": str(exc)}) from None
    if client_ca:
        try:
            context.load_verify_locations(Path(client_ca).expanduser())
        except (OSError, ssl.SSLError) as exc:
            raise InvalidInput(f"Cannot use tls_client_ca_file {client_ca}: {exc}",
                               errors={"tls_client_ca_file": str(exc)}) from None


def gunicorn_options(settings: Settings) -> dict[str, Any]:
    """gunicorn's TLS options for ``settings`` (none when the API serves plain HTTP)."""
    if not enabled(settings):
        return {}
    options: dict[str, Any] = {
        "certfile": str(Path(settings.tls_cert_file).expanduser()),
        "keyfile": str(Path(settings.tls_key_file).expanduser()),
    }
    if settings.tls_client_ca_file:
        options["ca_certs"] = str(Path(settings.tls_client_ca_file).expanduser())
        options["cert_reqs"] = ssl.CERT_REQUIRED
    return options
