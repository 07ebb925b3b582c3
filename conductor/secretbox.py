"""Secrets at rest: BMC passwords and webhook signing secrets, sealed with Fernet.

A sealed value is ``fernet:`` followed by a Fernet token (AES-128-CBC with
HMAC-SHA256, from ``cryptography``), so it is recognisable in the
database; a value without the prefix is a plain one written before
secrets were sealed: it still reads as itself, and the next write, the
migration ``0006`` or ``conductor secrets rotate-key`` seals it.

The key ring (current key first, then previous keys that still decrypt)
comes from the setting ``secret_key`` (``CONDUCTOR_SECRET_KEY``:
comma-separated keys, for deployments on several hosts, which must share
it), else from the key file ``<data dir>/secret.key`` (one key a line),
created with mode 0600 on first need.  A process notices when the key file
changes (a rotation) before it seals, and re-reads it when a value does
not open, so a rotation never needs a restart.

Values are sealed by the services that write them and opened only where
they are used (the IPMI driver, the callback signer); the API never shows
them.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from sqlalchemy.orm import Session

from conductor.auth.tokenfile import write_secret
from conductor.exceptions import NoSecretKey, SecretUnreadable
from conductor.settings import Settings

#: ``driver_info`` keys ending in this are secrets: sealed at rest,
#: write-only in the API, never logged.
SECRET_SUFFIX = "password"


def is_secret(key: str) -> bool:
    """Whether a ``driver_info`` key holds a secret."""
    return key.lower().endswith(SECRET_SUFFIX)


#: ``driver_internal_info`` keys whose values are sealed (the agent token a
#: boot script hands over); ``rotate-key`` re-encrypts them with the rest.
SEALED_INTERNAL_KEYS = ("agent_token_sealed",)

PREFIX = "fernet:"
#: The key of a session's ``info`` holding its :class:`SecretBox`.
SESSION_INFO_KEY = "secretbox"


def is_sealed(value: Any) -> bool:
    """Whether ``value`` is a sealed secret."""
    return isinstance(value, str) and value.startswith(PREFIX)


def new_key() -> str:
    """A fresh Fernet key (url-safe base64 of 32 random bytes)."""
    return Fernet.generate_key().decode("ascii")


def parse_keys(text: str) -> list[str]:
    """The keys in ``text`` (commas or new lines between them), current first."""
    return [k.strip() for k in text.replace(",", "\n").splitlines() if k.strip()]


def _fernet(keys: Sequence[str]) -> MultiFernet:
    try:
        return MultiFernet([Fernet(k.encode("ascii")) for k in keys])
    except (ValueError, UnicodeEncodeError) as exc:
        # Never echo the key itself.
        raise NoSecretKey(f"A secret key is not a valid Fernet key ({type(exc).__name__}).") from None


class KeyFile:
    """The key file of a data directory (mode 0600; current key on the first line)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def stamp(self) -> tuple[int, int, int] | None:
        """What changes when the file is replaced (None: no file)."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def read(self, create: bool) -> list[str]:
        """The keys in the file; a new file with a new key if there is none and ``create``.

        :raises NoSecretKey: no file (and not ``create``), or an empty one.
        """
        try:
            keys = parse_keys(self.path.read_text(encoding="ascii"))
        except FileNotFoundError:
            if not create:
                raise NoSecretKey(f"No secret key file {self.path}.") from None
            keys = self._create()
        if not keys:
            raise NoSecretKey(f"The secret key file {self.path} holds no key.")
        return keys

    def _create(self) -> list[str]:
        # Written aside then linked into place: a concurrent first start sees
        # either no file or a whole one, and exactly one key wins.
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        key = new_key()
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.{threading.get_ident()}")
        write_secret(tmp, key)
        try:
            os.link(tmp, self.path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
        return parse_keys(self.path.read_text(encoding="ascii"))

    def write(self, keys: Sequence[str]) -> None:
        """Replace the file with ``keys`` at once (current first); never a moment without a file."""
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.new")
        write_secret(tmp, "\n".join(keys))
        os.replace(tmp, self.path)


class SecretBox:
    """Seals and opens secrets with a key ring: the given keys, or a key file re-read when it changes."""

    def __init__(self, keys: Sequence[str] | None = None, key_file: KeyFile | None = None,
                 create: bool = True) -> None:
        if not keys and key_file is None:
            raise NoSecretKey("A secret box needs keys or a key file.")
        self._fixed = list(keys or ())
        self._file = key_file
        self._create = create
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._keys: list[str] = []
        self._ring: MultiFernet | None = None

    @property
    def key_file(self) -> KeyFile | None:
        """The key file the keys come from (None: keys from the settings)."""
        return self._file

    def keys(self, reload: bool = False) -> list[str]:
        """The key ring, current key first (re-read if the key file changed, or ``reload``)."""
        self._ensure(reload)
        return list(self._keys)

    def _ensure(self, reload: bool = False) -> MultiFernet:
        with self._lock:
            if self._file is None:
                if self._ring is None:
                    self._keys, self._ring = self._fixed, _fernet(self._fixed)
                return self._ring
            stamp = self._file.stamp()
            if self._ring is None or reload or stamp != self._stamp:
                keys = self._file.read(self._create)
                self._keys, self._ring = keys, _fernet(keys)
                self._stamp = self._file.stamp()
            return self._ring

    def seal(self, plain: str) -> str:
        """``plain`` sealed with the current key (a sealed value is returned as it is)."""
        if is_sealed(plain):
            return plain
        return PREFIX + self._ensure().encrypt(plain.encode("utf-8")).decode("ascii")

    def open(self, value: str) -> str:
        """The plain text of ``value`` (a plain value, left from before sealing, is itself).

        :raises SecretUnreadable: no key of the ring opens it.
        """
        if not is_sealed(value):
            return value
        token = value[len(PREFIX):].encode("ascii")
        try:
            return self._ensure().decrypt(token).decode("utf-8")
        except InvalidToken:
            pass
        try:
            # The key file may have been rotated since it was read.
            return self._ensure(reload=True).decrypt(token).decode("utf-8")
        except InvalidToken:
            raise SecretUnreadable(
                "A stored secret cannot be decrypted with this host's secret key "
                "(the key that sealed it is not in the key ring: lost, or a different key on this host)."
            ) from None

    def reseal(self, value: str) -> str:
        """``value`` sealed with the current key, whatever it was sealed with (or plain)."""
        if not is_sealed(value):
            return self.seal(value)
        return PREFIX + self._ensure().rotate(value[len(PREFIX):].encode("ascii")).decode("ascii")

    def current_key_seals(self, value: str) -> bool:
        """Whether ``value`` is sealed with the current key (nothing to re-encrypt)."""
        if not is_sealed(value):
            return False
        try:
            Fernet(self.keys()[0].encode("ascii")).decrypt(value[len(PREFIX):].encode("ascii"))
        except InvalidToken:
            return False
        return True

    def seal_info(self, info: Mapping[str, Any]) -> dict[str, Any]:
        """``driver_info`` with every secret value (key ``*password``) sealed."""
        return {k: (self.seal(v) if is_secret(k) and isinstance(v, str) else v) for k, v in info.items()}

    def open_info(self, info: Mapping[str, Any]) -> dict[str, Any]:
        """``driver_info`` with every sealed value opened (for a driver, never for the API)."""
        return {k: (self.open(v) if is_sealed(v) else v) for k, v in info.items()}

    def reseal_info(self, info: Mapping[str, Any]) -> dict[str, Any]:
        """``driver_info`` with every secret sealed with the current key."""
        return {k: (self.reseal(v) if is_secret(k) and isinstance(v, str) else v) for k, v in info.items()}


_boxes: dict[tuple[str, str], SecretBox] = {}
_boxes_lock = threading.Lock()


def for_settings(settings: Settings) -> SecretBox:
    """This process's secret box for ``settings`` (one per data dir and key setting)."""
    cache_key = (str(settings.data_dir), settings.secret_key)
    with _boxes_lock:
        box = _boxes.get(cache_key)
        if box is None:
            if settings.secret_key:
                box = SecretBox(keys=parse_keys(settings.secret_key))
            else:
                box = SecretBox(key_file=KeyFile(settings.secret_key_file))
            box = _boxes[cache_key] = box
    return box


def of(session: Session) -> SecretBox:
    """The secret box of ``session`` (its database was built from the settings).

    :raises NoSecretKey: the session's database was built without settings.
    """
    box = session.info.get(SESSION_INFO_KEY)
    if box is None:
        raise NoSecretKey("This database session has no secret key (build it with Database.from_settings).")
    return cast(SecretBox, box)

