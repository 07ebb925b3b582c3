"""Redfish sessions shared by every worker: one session per BMC and login, its token sealed in Redis.

Without sharing, each worker process logs in to each BMC it talks to: with
N workers (on several hosts) a BMC holds up to N sessions, and real BMCs
allow few (iDRAC, iLO: 4 to 8).  :class:`SessionStore` keeps one session
per BMC and login in the deployment's Redis (:func:`conductor.keys.redfish_session`):

* **The key** is an HMAC-SHA256 of the service's address, the user name
  and the password, under a key derived from the deployment's current
  secret key.  The password takes part, so a changed or wrong password
  never finds the session another one logged in (it logs in, and a wrong
  one gets its 401); it is an HMAC, not a plain hash, so the key does not
  let anyone test guesses of the password without the secret key.  After
  a key rotation the digests change: the next contact logs in again.
* **The value** is the session's token and URI as JSON, sealed with the
  secret box (Fernet): a token is as good as the password while it lives.
  It is opened only here and handed to sushy; never logged.
* **Set only if absent** (``SET NX``, ``redfish_session_ttl``): two
  workers that logged in at the same time both offer their session; the
  first one stored wins, and the other adopts it and logs its own out
  (:class:`~conductor.drivers.redfish_client.SharedSessionAuth`).
* **Dropped only if unchanged**: a worker that got 401 with a token
  deletes the entry only if it still holds that very sealed value (a Lua
  compare-and-delete), so it never drops the session another worker has
  just logged in.

Nothing here waits: no lock, no sleep.  A store that fails (Redis down, a
value no key opens) is logged once at warning and treated as empty; the
client then keeps a session of its own, as before sharing, and this
process leaves that Redis alone for :data:`RETRY_AFTER` seconds (a Redis
that is down costs redis-py's retries, seconds, on every command).  The module
imports no sushy (:mod:`conductor.drivers.redfish_client` does).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
import weakref
from dataclasses import dataclass, field

import redis

from conductor import keys, secretbox
from conductor.exceptions import NoSecretKey, SecretUnreadable
from conductor.settings import Settings

LOG = logging.getLogger(__name__)

#: Seconds this process leaves a Redis alone after the store failed on it.
RETRY_AFTER = 10.0
#: What the HMAC key is derived for (a purpose of the deployment's secret key of its own).
_PURPOSE = b"conductor redfish session store v1"

#: Delete KEYS[1] if it still holds ARGV[1] (the sealed value the caller read or wrote).
_DROP_IF_SAME = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""


@dataclass(frozen=True)
class StoredSession:
    """A Redfish session: its token (a secret, never in a repr) and URI.

    :ivar sealed: the value as stored (None: a session of this process only,
        not in the store, which its client logs out when it is closed).
    """

    token: str = field(repr=False)
    uri: str | None
    sealed: str | None = field(default=None, repr=False)


class SessionStore:
    """The deployment's shared Redfish sessions (see the module docstring).

    :param connection: the deployment's Redis.
    :param settings: its namespace, secret key and ``redfish_session_ttl``.
    """

    def __init__(self, connection: redis.Redis, settings: Settings) -> None:
        self.connection = connection
        self.namespace = settings.redis_namespace
        self.ttl = settings.redfish_session_ttl
        self._settings = settings

    def key(self, address: str, username: str, password: str) -> str | None:
        """The Redis key of the session of ``username`` with ``password`` at ``address`` (None: no secret key)."""
        try:
            current = secretbox.for_settings(self._settings).keys()[0]
        except NoSecretKey as exc:
            self._failed(exc)
            return None
        derived = hmac.new(current.encode("ascii"), _PURPOSE, hashlib.sha256).digest()
        message = json.dumps([address, username, password]).encode("utf-8")
        return keys.redfish_session(self.namespace, hmac.new(derived, message, hashlib.sha256).hexdigest())

    def get(self, key: str) -> StoredSession | None:
        """The stored session (None: none, or the store failed)."""
        if not self._usable():
            return None
        try:
            raw = self.connection.get(key)
            found = None if raw is None else self._open(raw)
        except (redis.RedisError, NoSecretKey, SecretUnreadable, ValueError, KeyError, TypeError) as exc:
            self._failed(exc)
            return None
        self._recovered()
        return found

    def offer(self, key: str, token: str, uri: str | None) -> StoredSession:
        """Store a session just logged in unless one is there; the session to use either way.

        :returns: ours (``sealed`` set: it is stored now), the one stored
            before ours (the caller logs its own out), or ours unstored
            (``sealed`` None) when the store failed or holds a value that
            does not open.
        """
        if not self._usable():
            return StoredSession(token, uri)
        try:
            sealed = secretbox.for_settings(self._settings).seal(json.dumps({"token": token, "uri": uri}))
            pipe = self.connection.pipeline(transaction=True)
            pipe.set(key, sealed, nx=True, ex=max(1, round(self.ttl)))
            pipe.get(key)
            stored, raw = pipe.execute()
            if stored:
                self._recovered()
                return StoredSession(token, uri, sealed)
            winner = None if raw is None else self._open(raw)
        except (redis.RedisError, NoSecretKey, SecretUnreadable, ValueError, KeyError, TypeError) as exc:
            self._failed(exc)
            return StoredSession(token, uri)
        self._recovered()
        # Gone between the SET and the GET (expired or dropped): keep ours, unstored.
        return winner if winner is not None else StoredSession(token, uri)

    def drop(self, key: str, session: StoredSession) -> bool:
        """Delete the stored session if it is still ``session`` (the one that got 401); whether it was."""
        if session.sealed is None or not self._usable():
            return False
        try:
            dropped = bool(self.connection.eval(_DROP_IF_SAME, 1, key, session.sealed))
        except redis.RedisError as exc:
            self._failed(exc)
            return False
        self._recovered()
        return dropped

    def _open(self, raw: bytes | str) -> StoredSession:
        sealed = raw.decode("ascii") if isinstance(raw, bytes) else raw
        body = json.loads(secretbox.for_settings(self._settings).open(sealed))
        token, uri = body["token"], body.get("uri")
        if not isinstance(token, str) or not (uri is None or isinstance(uri, str)):
            raise ValueError("a stored Redfish session is not a token and a URI")
        return StoredSession(token, uri, sealed)

    def _usable(self) -> bool:
        until = _down.get(self.connection)
        return until is None or time.monotonic() >= until

    def _failed(self, exc: Exception) -> None:
        if self.connection not in _down:  # once per run of failures, not on every login
            LOG.warning("The shared Redfish session store failed (%s: %s); this worker logs in to its BMCs with "
                        "sessions of its own until it works again", type(exc).__name__, exc)
        _down[self.connection] = time.monotonic() + RETRY_AFTER

    def _recovered(self) -> None:
        if _down.pop(self.connection, None) is not None:
            LOG.info("The shared Redfish session store works again")


#: The Redis connections the store failed on in this process, and when to ask them again (monotonic).
_down: weakref.WeakKeyDictionary[redis.Redis, float] = weakref.WeakKeyDictionary()
