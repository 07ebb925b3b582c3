"""The core: the only code that changes a node's state fields and ends requests.

Both the API-facing services and the workers (and the deploy interfaces,
through the task they are given) change state only through these modules,
each in the caller's transaction:

* :mod:`~conductor.core.states`: ``provision_state`` (events through the
  state machine: fire, fail, abort) and ``power_state`` (observed);
* :mod:`~conductor.core.requests`: ``active_request_id`` (accept, free) and
  every way a request ends (finish, abandon, cancel, abort a wait);
* :mod:`~conductor.core.reservations`: ``reservation``;
* :mod:`~conductor.core.steps`: a conductor's step committed in SQLAlchemy
  Core (the node's and request's changes, the release of the reservation,
  the history entries);
* :mod:`~conductor.core.history`: the history entry of each change;
* :mod:`~conductor.core.agent`: the agent protocol (tokens, commands,
  results) shared by the API and the deploy interface.

The core sits below the drivers (a deploy interface records history and
issues agent commands through it) and imports nothing above itself; see
``docs/architecture.md``.
"""
