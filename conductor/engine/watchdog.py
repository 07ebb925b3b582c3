"""The watchdog: fail waits for an agent that never called back.

A workflow that waits for its agent (``wait call-back``, ``clean wait``,
``inspect wait``) leaves its request ``waiting`` with ``wake_at`` set to the
end of its timeout (``deploy_agent_timeout``, ``clean_agent_timeout``,
``inspect_agent_timeout``).  Each conductor's chores call :func:`check`
often; one conductor per ``wait_check_interval`` (a Redis lock) looks for
overdue waits and fails them: the node goes to the matching failed state
with a ``last_error`` naming the timeout, the request fails.

Failing is conditional (the request must still be ``waiting`` with nobody
running it), so a heartbeat, an abort or another conductor racing the
watchdog wins or loses cleanly: the wait ends once.
"""

from __future__ import annotations

import functools
import logging

import sqlalchemy as sa

from conductor import database, keys
from conductor.context import Context
from conductor.core import requests as core_requests
from conductor.core import states
from conductor.engine import conductors
from conductor.fsm.states import ProvisionState as S
from conductor.fsm.states import RequestState
from conductor.models import Node, Request, utcnow

LOG = logging.getLogger(__name__)
BATCH = 200

#: The setting bounding each wait state.
TIMEOUT_SETTINGS = {
    S.DEPLOY_WAIT: "deploy_agent_timeout",
    S.CLEAN_WAIT: "clean_agent_timeout",
    S.INSPECT_WAIT: "inspect_agent_timeout",
}

_TAKE = (
    sa.update(Request.__table__)
    .where(
        Request.__table__.c.id == sa.bindparam("rid"),
        Request.__table__.c.state == RequestState.WAITING,
        Request.__table__.c.conductor.is_(None),
        Request.__table__.c.wake_at <= sa.bindparam("now"),
    )
    .values(updated_at=sa.bindparam("now"))
)


def check(ctx: Context) -> int:
    """Fail the overdue waits (if it is this conductor's turn); returns how many."""
    if not conductors.my_turn(ctx, keys.Chore.WAIT_WATCHDOG, ctx.settings.wait_check_interval):
        return 0
    now = utcnow()
    with ctx.db.session() as session:
        overdue = list(session.scalars(
            sa.select(Request.id)
            .where(Request.state == RequestState.WAITING, Request.wake_at.is_not(None), Request.wake_at <= now)
            .order_by(Request.wake_at)
            .limit(BATCH)
        ))
    # Failing is conditional: safe to run again on a transient database error.
    return sum(database.retrying(functools.partial(fail_overdue, ctx, request_id), f"Watchdog: request {request_id}")
               for request_id in overdue)


def fail_overdue(ctx: Context, request_id: str) -> bool:
    """Fail one overdue wait; False if it is no longer waiting (or not overdue)."""
    with ctx.db.begin() as session:
        with session.no_autoflush:
            if database.rowcount(session.execute(_TAKE, {"rid": request_id, "now": utcnow()})) != 1:
                return False
        request = session.get(Request, request_id)
        assert request is not None
        node = session.get(Node, request.node_id)
        assert node is not None
        state = node.provision_state
        setting = TIMEOUT_SETTINGS.get(S(state)) if state in TIMEOUT_SETTINGS else None
        if setting:
            limit = getattr(ctx.settings, setting)
            message = (f"Timed out in {state}: the agent did not call back within {limit:g} s "
                       f"({setting}).")
        else:
            message = f"Timed out waiting in {state}."
        states.fail(session, node, message, request, ctx.name, ctx.settings)
        core_requests.finish(session, node, request, RequestState.FAILED, message, ctx.name)
    LOG.warning("Request %s: %s", request_id, message)
    return True
