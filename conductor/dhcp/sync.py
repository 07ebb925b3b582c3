"""Keep the host entries current: a thread of ``conductor up`` next to the dnsmasq it runs.

Every :data:`SYNC_INTERVAL` seconds it reads which nodes boot from the
network (one indexed query), reconciles the hosts directory, and, when an
entry was removed, has dnsmasq forget it (``reload``: SIGHUP).  A reload
that cannot be delivered yet (dnsmasq is being restarted and may have read
the removed file) is tried again on the next pass until it is.

The supervisor runs it, not the conductor workers: there is one dnsmasq
per ``conductor up``, and the process that started it is the one that can
signal it.  Polling the database keeps it independent of who changed a
node's state (any worker, any host).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import sqlalchemy.exc

from conductor.database import Database
from conductor.dhcp.hosts import Changes, HostsDir, wanted

LOG = logging.getLogger(__name__)
#: Seconds between two reconciliations.
SYNC_INTERVAL = 1.0


class HostsSync(threading.Thread):
    """Reconcile ``hosts`` with the database every ``interval`` seconds until stopped."""

    def __init__(self, db: Database, hosts: HostsDir, reload: Callable[[], bool],
                 interval: float = SYNC_INTERVAL) -> None:
        super().__init__(name="dhcp-sync", daemon=True)
        self.db = db
        self.hosts = hosts
        #: Has dnsmasq re-read the directory; False if it could not be asked yet.
        self.reload = reload
        self.interval = interval
        self.stopping = threading.Event()
        self.reload_pending = False
        self._failing = False

    def sync(self) -> Changes:
        """One pass: reconcile, and reload dnsmasq if an entry went (now or in a pass whose reload failed).

        :raises sqlalchemy.exc.SQLAlchemyError: the database cannot be read.
        """
        with self.db.session() as session:
            want = wanted(session)
        changes = self.hosts.reconcile(want)
        if changes.removed:
            self.reload_pending = True
        if self.reload_pending and self.reload():
            self.reload_pending = False
        return changes

    def run(self) -> None:
        while not self.stopping.wait(self.interval):
            try:
                self.sync()
            except (sqlalchemy.exc.SQLAlchemyError, OSError) as exc:
                # The database away for a moment: the entries stay as they
                # are (a node keeps booting) and the next pass catches up.
                if not self._failing:
                    LOG.warning("DHCP: cannot update the host entries (%s); retrying", exc)
                self._failing = True
                continue
            except Exception:
                # A bug must not end the thread: the entries would stop following the nodes.
                LOG.exception("DHCP: updating the host entries failed; retrying")
                self._failing = True
                continue
            if self._failing:
                LOG.info("DHCP: host entries up to date again")
            self._failing = False

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=10)
