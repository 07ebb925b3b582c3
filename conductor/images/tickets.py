"""The signed URLs agents download images with.

An agent has no bearer token, and the ramdisk's ``wget`` fetches the
``image_source`` it is given as it is; so the URL itself carries the
proof: ``<agent_api_url>/v1/images/content/<ticket>``, where the ticket is
``<payload>.<signature>``: the payload (base64url JSON) names the node,
the file to serve and an expiry; the signature is an HMAC-SHA256 of it
under a key derived from the deployment's secret key (``secret_key`` or
``<data dir>/secret.key``; every key of the ring verifies, so a key
rotation does not break deploys under way).

A forged, altered or expired ticket is refused before anything else is
looked at.  The API then also requires that the node's current agent
command is still the one that carries this URL (see ``api/images.py``):
the URL dies with the command (the agent's result, an abort, the
watchdog), like the agent token, and is useless for any other node.  The
payload is signed, not encrypted: it shows the file's path on the
conductor host, nothing secret.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
import time
from pathlib import Path

from conductor import secretbox
from conductor.exceptions import InvalidImageTicket
from conductor.settings import Settings

#: Where the agent fetches a ticket's file, under the API URL.
PREFIX = "/v1/images/content/"
_PURPOSE = b"conductor image ticket v1"


@dataclasses.dataclass(frozen=True)
class Ticket:
    """What a valid ticket says: serve ``path`` to ``node``'s agent until ``expires``."""

    node: str
    path: Path
    expires: float


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _keys(settings: Settings) -> list[bytes]:
    ring = secretbox.for_settings(settings).keys()
    return [hmac.new(key.encode(), _PURPOSE, hashlib.sha256).digest() for key in ring]


def _sign(key: bytes, payload: str) -> str:
    return _b64(hmac.new(key, payload.encode("ascii"), hashlib.sha256).digest())


def issue(settings: Settings, node: str, path: Path, lifetime: float) -> str:
    """A ticket for ``node``'s agent to download ``path`` during the next ``lifetime`` seconds."""
    payload = _b64(json.dumps({"n": node, "p": str(path), "x": int(time.time() + lifetime)},
                              separators=(",", ":")).encode())
    return f"{payload}.{_sign(_keys(settings)[0], payload)}"


def url(settings: Settings, ticket: str) -> str:
    """The URL the agent fetches ``ticket``'s file from."""
    return settings.agent_url.rstrip("/") + PREFIX + ticket


def verify(settings: Settings, ticket: str) -> Ticket:
    """What ``ticket`` says, once its signature and expiry are checked.

    :raises InvalidImageTicket: malformed, not signed by this deployment, or expired.
    """
    payload, _, signature = ticket.partition(".")
    if not ticket.isascii() or not payload or not signature or not any(
        hmac.compare_digest(_sign(key, payload), signature) for key in _keys(settings)
    ):
        raise InvalidImageTicket("This image URL is not valid (not issued by this conductor, or altered).")
    try:
        data = json.loads(_unb64(payload))
        found = Ticket(str(data["n"]), Path(data["p"]), float(data["x"]))
    except (ValueError, KeyError, TypeError):
        raise InvalidImageTicket("This image URL is not valid (malformed).") from None
    if found.expires < time.time():
        raise InvalidImageTicket("This image URL has expired; the deploy that issued it is over.")
    return found
