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
conductor host and its identity (device, inode, size, modification
time), nothing secret.  The identity is what the download checks against
the file it opens: a file replaced after the deploy prepared it (by a
symbolic link to a key, say) is refused, not served.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
import os
import time
from pathlib import Path

from conductor import secretbox
from conductor.exceptions import InvalidImageTicket
from conductor.settings import Settings

#: Where the agent fetches a ticket's file, under the API URL.
PREFIX = "/v1/images/content/"
_PURPOSE = b"conductor image ticket v1"
#: The purpose of the tickets a BMC fetches a node's virtual media ISO with
#: (``GET /v1/boot/media/<ticket>``): a key of its own, so that neither kind
#: of ticket is accepted in place of the other.
MEDIA_PURPOSE = b"conductor virtual media ticket v1"


@dataclasses.dataclass(frozen=True)
class Ticket:
    """What a valid ticket says: serve ``path`` to ``node``'s agent until ``expires``."""

    node: str
    path: Path
    expires: float
    #: ``(st_dev, st_ino, st_size, st_mtime_ns)`` of the file when the ticket
    #: was issued: the file served must still be that one (None: not recorded).
    identity: tuple[int, int, int, int] | None = None


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _keys(settings: Settings, purpose: bytes = _PURPOSE) -> list[bytes]:
    ring = secretbox.for_settings(settings).keys()
    return [hmac.new(key.encode(), purpose, hashlib.sha256).digest() for key in ring]


def _sign(key: bytes, payload: str) -> str:
    return _b64(hmac.new(key, payload.encode("ascii"), hashlib.sha256).digest())


def identity_of(st: os.stat_result) -> tuple[int, int, int, int]:
    """What tells one version of a file from another: device, inode, size, modification time."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def issue(settings: Settings, node: str, path: Path, lifetime: float,
          identity: tuple[int, int, int, int] | None = None, purpose: bytes = _PURPOSE) -> str:
    """A ticket for ``node``'s agent to download ``path`` (the file of ``identity``) during the next
    ``lifetime`` seconds (``purpose``: :data:`MEDIA_PURPOSE` for a virtual media ISO)."""
    data: dict[str, object] = {"n": node, "p": str(path), "x": int(time.time() + lifetime)}
    if identity is not None:
        data["i"] = list(identity)
    payload = _b64(json.dumps(data, separators=(",", ":")).encode())
    return f"{payload}.{_sign(_keys(settings, purpose)[0], payload)}"


def digest(ticket: str) -> str:
    """What a node's record keeps of a ticket (its SHA-256): enough to tell it is the current one."""
    return hashlib.sha256(ticket.encode()).hexdigest()


def url(settings: Settings, ticket: str) -> str:
    """The URL the agent fetches ``ticket``'s file from."""
    return settings.agent_url.rstrip("/") + PREFIX + ticket


def verify(settings: Settings, ticket: str, purpose: bytes = _PURPOSE) -> Ticket:
    """What ``ticket`` says, once its signature and expiry are checked.

    :raises InvalidImageTicket: malformed, not signed by this deployment, or expired.
    """
    payload, _, signature = ticket.partition(".")
    if not ticket.isascii() or not payload or not signature or not any(
        hmac.compare_digest(_sign(key, payload), signature) for key in _keys(settings, purpose)
    ):
        raise InvalidImageTicket("This image URL is not valid (not issued by this conductor, or altered).")
    try:
        data = json.loads(_unb64(payload))
        ident = data.get("i")
        found = Ticket(str(data["n"]), Path(data["p"]), float(data["x"]),
                       None if ident is None else (int(ident[0]), int(ident[1]), int(ident[2]), int(ident[3])))
    except (ValueError, KeyError, TypeError):
        raise InvalidImageTicket("This image URL is not valid (malformed).") from None
    if found.expires < time.time():
        raise InvalidImageTicket("This image URL has expired; the deploy that issued it is over.")
    return found
