"""An Ironic-compatible REST API under ``/baremetal``, over the same services as ``/v1``.

OpenStack's bare-metal clients (the ``baremetal`` CLI of
python-ironicclient, openstacksdk, and the tools built on them) work
against it unchanged: version discovery, microversions, nodes, ports,
drivers, conductors, states and provisioning, in Ironic's shapes and
status codes.  Underneath it is the conductor's own model: the same
database, state machine, requests, queue, locks, admission and webhooks
as ``/v1``.  What is served, what differs and how clients authenticate:
docs/ironic-api.md.

Modules: :mod:`.versions` (microversions), :mod:`.envelope` (headers and
the error envelope on every answer), :mod:`.mapping` (Ironic's names for
ours), :mod:`.representation` (what is shown), :mod:`.patch` (JSON
Patch), and the views: :mod:`.root`, :mod:`.nodes`, :mod:`.node_actions`,
:mod:`.ports`, :mod:`.drivers`.
"""

from __future__ import annotations

from flask import Flask

# The view modules register their routes on the blueprint when imported.
from conductor.api.ironic import drivers, envelope, node_actions, nodes, ports, root  # noqa: F401
from conductor.api.ironic.common import blp


def install(app: Flask) -> None:
    """Serve the Ironic-compatible API on ``app``.

    Called before the admission hooks are installed: the version is
    negotiated before admission (a client's first call at a version not
    served, the way python-ironicclient negotiates, costs no rate budget),
    and the envelope, the after-request hook registered first, runs last
    (admission counts refusals by our error codes before the body becomes
    Ironic's).
    """
    app.before_request(envelope.negotiate_version)
    app.register_blueprint(blp)
    app.after_request(envelope.finish)
