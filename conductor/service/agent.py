"""The agent's side of a wait: heartbeats that fetch a command and report its result.

``POST /v1/nodes/<node>/heartbeat`` (header ``X-Agent-Token``) is how the
agent booted by the ``pxe`` deploy interface talks to the conductor:

* a heartbeat without ``command_result`` is answered with the command the
  waiting workflow left for the agent (the same command every time until a
  result is reported: a lost answer is simply asked again);
* a heartbeat with ``command_result`` (``id``, ``status`` ``succeeded`` or
  ``failed``, ``error``, ``inventory``) ends the wait: the request goes from
  ``waiting`` back to ``queued`` by one conditional UPDATE, so of any number
  of concurrent or repeated reports exactly one is acted on; the others
  (and any heartbeat once the node no longer waits) get 409
  ``node_not_waiting``.

The token is compared with the SHA-256 the deploy interface stored when it
issued it (a per-workflow secret, never a bearer API token): only that
node's agent, for that workflow, is heard.  The first heartbeat that
proves the token *claims* it (committed before anything else is
answered, even a 409): the node's iPXE boot script (``GET
/v1/boot/<mac>``) stops carrying it, so a boot script hands each token
out only until its agent has called.  The protocol's records (token,
command, result) are :mod:`conductor.core.agent`'s.
"""

from __future__ import annotations

import logging
from typing import Any

import redis
import sqlalchemy as sa

from conductor import database
from conductor.callbacks import events
from conductor.context import Context
from conductor.core import agent as protocol
from conductor.core import history
from conductor.exceptions import InvalidAgentToken, InvalidInput, NodeNotFound, NodeNotWaiting
from conductor.fsm import table
from conductor.fsm.states import RequestState
from conductor.models import Request, utcnow
from conductor.service import nodes
from conductor.throttle import agents

LOG = logging.getLogger(__name__)

_WAKE = (
    sa.update(Request.__table__)
    .where(
        Request.__table__.c.id == sa.bindparam("rid"),
        Request.__table__.c.state == RequestState.WAITING,
        Request.__table__.c.conductor.is_(None),
    )
    .values(state=RequestState.QUEUED, wake_at=None, updated_at=sa.bindparam("now"))
)


def heartbeat(ctx: Context, ident: str, token: str | None, body: dict[str, Any]) -> dict[str, Any]:
    """Handle one heartbeat of node ``ident``'s agent; returns the answer for the agent.

    :raises InvalidAgentToken: no such node, or the token is not its current agent token.
    :raises NodeNotWaiting: the node is not waiting for its agent (or the result was already taken).
    :raises InvalidInput: the result names another command than the one issued.
    """
    with ctx.db.session() as session:
        try:
            node = nodes.find(session, ident)
        except NodeNotFound:
            # Same answer as a wrong token: the endpoint takes no bearer token
            # and must not tell strangers which node names exist.
            raise InvalidAgentToken(
                f"The agent token is missing or is not the one issued for node {ident}'s current workflow."
            ) from None
        protocol.check_token(node, token)
        if protocol.claim(session, node):
            version = str(body.get("agent_version") or "unknown")[:64]
            history.record(session, node, "agent.connected",
                           f"The agent called for the first time (agent version {version}).",
                           request_id=node.active_request_id)
            session.commit()
        # Its next heartbeats skip the budgets of unknown tokens (see throttle.agents).
        agents.accepted(ctx).remember(ident, agents.digest(token or ""))
        request = session.get(Request, node.active_request_id) if node.active_request_id else None
        if node.provision_state not in table.WAIT_STATES or request is None or request.state != RequestState.WAITING:
            raise NodeNotWaiting(
                f"Node {node.uuid} is {node.provision_state}, not waiting for its agent; "
                "the heartbeat was not acted on.",
                provision_state=node.provision_state,
            )
        command = protocol.command(node) or {}
        result = body.get("command_result")
        if result is None:
            return {"node": node.uuid, "provision_state": node.provision_state, "command": command or None}
        if result.get("id") != command.get("id"):
            raise InvalidInput(
                f"command_result.id {result.get('id')!r} is not the command issued to this agent "
                f"({command.get('id')!r}).",
                errors={"command_result.id": "not the current command"},
            )
        woken = database.rowcount(session.execute(_WAKE, {"rid": request.id, "now": utcnow()}))
        if woken != 1:
            session.rollback()
            raise NodeNotWaiting(
                f"Node {node.uuid}'s agent result was already taken (or the wait ended); "
                "this heartbeat was not acted on.",
                provision_state=node.provision_state,
            )
        protocol.store_result(node, result)
        outcome = result["status"] + (f": {result['error']}" if result.get("error") else "")
        history.record(session, node, "agent.result",
                       f"Agent reported {command.get('name')} {outcome}.", request_id=request.id,
                       severity="info" if result["status"] == "succeeded" else "error")
        session.refresh(request, ["state", "wake_at", "updated_at"])  # _WAKE wrote them
        events.emit(session, events.EventType.REQUEST_QUEUED, node, request,
                    previous={"state": RequestState.WAITING})
        request_id = request.id
        state = node.provision_state
        session.commit()
    try:
        ctx.queue.schedule(request_id, 0)
    except redis.RedisError as exc:
        # The request is queued in the database: the sweeper enqueues it again.
        LOG.error("Request %s: could not queue its next step (%s); the sweeper will", request_id, exc)
    LOG.info("Request %s: agent result accepted (%s)", request_id, result["status"])
    return {"node": ident, "provision_state": state, "command": None, "accepted": True}
