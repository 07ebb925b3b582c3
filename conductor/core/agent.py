"""The agent protocol: the token a booted agent proves itself with, and its commands.

A deploy interface that boots an agent (``pxe``) issues, per workflow
phase, one agent token and one command; the agent fetches the command with
its heartbeat (``POST /v1/nodes/<node>/heartbeat``, header
``X-Agent-Token``) and reports the result the same way.  What is kept of
it lives in the node's ``driver_internal_info``:

* ``agent_token_sha256``: the SHA-256 of the token, what a heartbeat is
  checked against;
* ``agent_token_sealed``: the token itself, sealed with the deployment's
  secret key (:mod:`conductor.secretbox`), for the boot script of
  ``GET /v1/boot/<mac>`` (:mod:`conductor.service.boot`), which any API
  process may render.  It lives only until the token is *claimed*: the
  first heartbeat that proves it (:func:`claim`) drops the sealed copy and
  records ``agent_token_claimed_at``, so a boot script carries a token at
  most until its agent has called; a MAC asked again afterwards boots the
  local disk.  The simulated agent reads the token from its boot config
  file instead (:mod:`conductor.bootfiles`);
* ``agent_command``: ``{"id", "name", "params"}``, the command issued;
* ``agent_result``: ``{"id", "status", "error"[, "inventory"]}``, what the
  agent reported for it.

Both sides use this module: the API (:mod:`conductor.service.agent`) to
check a heartbeat's token and store a result, the deploy interface to
issue and read them, and whoever ends a wait early (abort, cancel, the
watchdog, a failed step) to revoke the token.  Everything runs in the
caller's transaction.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from conductor import bootfiles, database, secretbox
from conductor.exceptions import InvalidAgentToken
from conductor.models import Node, utcnow

if TYPE_CHECKING:
    from conductor.settings import Settings

#: The commands an agent understands, and the setting bounding the wait for each.
COMMANDS: dict[str, str] = {
    "write_image": "deploy_agent_timeout",
    "erase_disks": "clean_agent_timeout",
    "inspect": "inspect_agent_timeout",
}
#: What a command's ``params`` may carry, by command.
COMMAND_PARAMS: dict[str, tuple[str, ...]] = {
    # image_source is the URL the agent downloads (the conductor's, see
    # conductor/images/sources.py), image_size the decompressed size,
    # root_device the node's root disk hints (properties.root_device).
    "write_image": ("image_source", "image_checksum", "image_compression", "image_size", "root_device",
                    "configdrive"),
    "erase_disks": ("erase",),
    "inspect": (),
}
#: The statuses a command result may have.
RESULT_STATUSES = ("succeeded", "failed")

_TOKEN = "agent_token_sha256"
(_SEALED,) = secretbox.SEALED_INTERNAL_KEYS
_CLAIMED = "agent_token_claimed_at"
_COMMAND = "agent_command"
_RESULT = "agent_result"
#: The virtual media ISO of the current phase (``redfish-virtual-media``): its path and file
#: identity, what ``GET /v1/boot/media/<ticket>`` checks a ticket against.
MEDIA = "vmedia_image"
#: Set while media the conductor inserted may still be in the node's virtual drive: the
#: phase ejects it; after an abort or a timeout the power state sync does.
MEDIA_INSERTED = "vmedia_inserted"


def token_hash(token: str) -> str:
    """What the conductor stores of an agent token."""
    return hashlib.sha256(token.encode()).hexdigest()


def _update(node: Node, **changes: Any) -> None:
    info = dict(node.driver_internal_info or {})
    for key, value in changes.items():
        if value is None:
            info.pop(key, None)
        else:
            info[key] = value
    node.driver_internal_info = info


def issue(session: Session, node: Node, name: str, params: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """Issue a new token and command ``name`` to ``node``'s agent; returns both.

    The previous token, command and result are replaced: only the agent of
    this phase is heard from now on.  The token is kept as its SHA-256 and,
    until it is claimed, sealed with ``session``'s secret box.

    :raises NoSecretKey: ``session`` has no secret box.
    """
    if name not in COMMANDS:
        raise ValueError(f"unknown agent command {name!r}")
    token = secrets.token_urlsafe(32)
    command = {
        "id": f"cmd-{uuid.uuid4().hex[:16]}",
        "name": name,
        "params": {k: params[k] for k in COMMAND_PARAMS[name] if params.get(k) is not None},
    }
    sealed = secretbox.of(session).seal(token)
    _update(node, **{_TOKEN: token_hash(token), _SEALED: sealed, _CLAIMED: None, _COMMAND: command,
                     _RESULT: None})
    return token, command


def check_token(node: Node, token: str | None) -> None:
    """:raises InvalidAgentToken: ``token`` is not the one issued for ``node``'s current phase."""
    expected = (node.driver_internal_info or {}).get(_TOKEN)
    if not token or not expected or not hmac.compare_digest(token_hash(token), expected):
        raise InvalidAgentToken(
            f"The agent token is missing or is not the one issued for node {node.uuid}'s current workflow."
        )


def boot_token(session: Session, node: Node) -> str | None:
    """The token a boot script of ``node`` may carry: issued and not yet claimed (None otherwise).

    :raises SecretUnreadable: no key of the ring opens it (lost or rotated out).
    """
    sealed = (node.driver_internal_info or {}).get(_SEALED)
    if not sealed or not (node.driver_internal_info or {}).get(_TOKEN):
        return None
    return secretbox.of(session).open(sealed)


def claim(session: Session, node: Node) -> bool:
    """Record that ``node``'s agent has its token (a heartbeat proved it); whether this call did.

    Drops the sealed copy, so no boot script hands the token out again.
    Idempotent: a token claimed already changes nothing.  The caller checked
    the token and commits.

    One conditional UPDATE, on the node row as it was read: a concurrent
    write (a result stored, a revocation, a step) wins and this claim is
    skipped rather than writing back stale ``driver_internal_info``; the
    agent's next heartbeat claims again.
    """
    info = dict(node.driver_internal_info or {})
    if _SEALED not in info:
        return False
    now = utcnow()
    info.pop(_SEALED)
    info[_CLAIMED] = now.isoformat()
    done = database.rowcount(session.execute(
        sa.update(Node)
        .where(Node.id == node.id, Node.updated_at == node.updated_at)
        .values(driver_internal_info=info, updated_at=now)
        .execution_options(synchronize_session=False)
    ))
    if done != 1:
        return False
    # What the row now holds, without marking the object dirty (a later
    # flush must not write it again, unconditionally).
    set_committed_value(node, "driver_internal_info", info)
    set_committed_value(node, "updated_at", now)
    return True


def issued(driver_internal_info: Mapping[str, Any] | None) -> bool:
    """Whether a node with this ``driver_internal_info`` has an agent token issued (and not revoked)."""
    return bool((driver_internal_info or {}).get(_TOKEN))


def command(node: Node) -> dict[str, Any] | None:
    """The command issued to ``node``'s agent (None: none)."""
    found = (node.driver_internal_info or {}).get(_COMMAND)
    return dict(found) if found else None


def result(node: Node) -> dict[str, Any]:
    """What ``node``'s agent reported for its last command (empty: nothing yet)."""
    return dict((node.driver_internal_info or {}).get(_RESULT) or {})


def store_result(node: Node, reported: Mapping[str, Any]) -> dict[str, Any]:
    """Record the agent's report of its current command; returns what was stored.

    A report proves the agent has its token: the token counts as claimed
    (no boot script hands it out again), whatever the node row read before
    said (a first heartbeat's claim may have committed meanwhile).
    """
    current = command(node) or {}
    stored: dict[str, Any] = {"id": current.get("id"), "status": reported["status"], "error": reported.get("error")}
    if reported.get("inventory") is not None:
        stored["inventory"] = reported["inventory"]
    claimed = (node.driver_internal_info or {}).get(_CLAIMED) or utcnow().isoformat()
    _update(node, **{_RESULT: stored, _SEALED: None, _CLAIMED: claimed})
    return stored


def revoke(settings: Settings, node: Node) -> None:
    """Revoke ``node``'s agent token and command and remove its boot config.

    Called when the agent's work is done and whenever a wait ends without it
    (abort, cancel, timeout, a failed step): a late heartbeat gets 401.
    """
    bootfiles.remove(settings.pxe_dir, bootfiles.key_for(node.driver_info or {}, node.uuid))
    # The virtual media ISO carries the token: it goes with it (its URL is refused from now on).
    bootfiles.remove_media(settings.data_dir, node.uuid)
    info = node.driver_internal_info or {}
    if any(key in info for key in (_TOKEN, _SEALED, _CLAIMED, _COMMAND, MEDIA)):
        _update(node, **{_TOKEN: None, _SEALED: None, _CLAIMED: None, _COMMAND: None, MEDIA: None})
