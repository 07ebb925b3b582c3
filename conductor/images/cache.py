"""The cache of remote images: downloaded once, verified, kept under a size bound.

An http(s) ``image_source`` comes with the SHA-256 the user expects
(``image_checksum``), so the cache is content-addressed: the image is the
file ``<cache dir>/<sha256>``, and a file of that name is, by
construction, the right content.  Beside it ``<sha256>.json`` records the
URL it came from, its compression and decompressed size; that file's
modification time is the entry's last use (bumped by every deploy that
uses it: ``atime`` is often off).

A download (one per checksum at a time, see :mod:`.flight`) streams into
``<sha256>.part`` while hashing, sends ``Accept-Encoding: identity`` and
reads the bytes as served (the checksum is of the file, never of a
transfer encoding), and renames the part into place only when the
checksum matches.  Any failure (HTTP error, no data for
``image_download_timeout`` seconds, a checksum mismatch, a corrupt
compressed file, a full disk) removes the part: nothing half-downloaded
is ever served.

Eviction: before and after a download, least recently used entries go
until the cache holds at most ``image_cache_size`` GiB.  An entry a deploy
still needs is *pinned* (``pins/<sha256>--<request>``, live for the
agent wait's timeout plus an hour) and never evicted; if pinned entries
alone pass the bound, the cache stays over it until their pins expire.
An image larger than the whole bound fails its deploy.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import time
import urllib.parse
from pathlib import Path

import requests
import urllib3.exceptions

from conductor.images import flight, formats
from conductor.settings import Settings

LOG = logging.getLogger(__name__)
GIB = 1024**3
_CONNECT_TIMEOUT = 10.0


@dataclasses.dataclass(frozen=True)
class Entry:
    """A complete cached image."""

    path: Path
    sha256: str
    size: int
    compression: str
    image_size: int | None
    url: str


def shown(url: str) -> str:
    """``url`` with its password and query string (if any) masked, for messages, logs and history.

    A pre-signed URL (``X-Amz-Signature=``, ``sig=``, ``token=``...) is a
    credential in its query string, so the whole query goes; only the
    download itself uses the full URL.
    """
    try:
        parsed = urllib.parse.urlsplit(url)
        password, port = parsed.password, parsed.port
    except ValueError:  # not a URL one can take apart (a bad port...): show nothing of it
        return "<a URL that does not parse>"
    if password:
        netloc = f"{parsed.username}:******@{parsed.hostname}" + (f":{port}" if port else "")
        parsed = parsed._replace(netloc=netloc)
    if parsed.query:
        parsed = parsed._replace(query="******")
    return urllib.parse.urlunsplit(parsed)


def _masked(text: str, url: str) -> str:
    """``text`` (an error from requests, which names the URL) without ``url``'s query string."""
    query = urllib.parse.urlsplit(url).query
    return text.replace(query, "******") if query else text


class ImageCache:
    """The cache in ``root``, bounded to ``max_bytes``.

    :param timeout: seconds a source may send nothing before its download fails.
    :param pin_ttl: how long a pin keeps an entry from eviction.
    """

    def __init__(self, root: Path, max_bytes: int, *, timeout: float = 60.0, pin_ttl: float = 5400.0) -> None:
        self.root = Path(root)
        self.max_bytes = int(max_bytes)
        self.timeout = timeout
        self.pin_ttl = pin_ttl

    @classmethod
    def from_settings(cls, settings: Settings) -> ImageCache:
        """The cache the settings describe (``image_cache_dir``, ``image_cache_size``, ...)."""
        return cls(settings.image_cache_path, int(settings.image_cache_size * GIB),
                   timeout=settings.image_download_timeout, pin_ttl=settings.deploy_agent_timeout + 3600.0)

    # --- entries ------------------------------------------------------------------------
    def _data(self, sha: str) -> Path:
        return self.root / sha

    def _meta(self, sha: str) -> Path:
        return self.root / f"{sha}.json"

    def lookup(self, sha: str) -> Entry | None:
        """The complete entry of ``sha``, or None."""
        try:
            meta = json.loads(self._meta(sha).read_text(encoding="utf-8"))
            size = self._data(sha).stat().st_size
        except (OSError, ValueError):
            return None
        return Entry(self._data(sha), sha, size, meta["compression"], meta.get("image_size"), meta.get("url", ""))

    def touch(self, sha: str) -> None:
        """Record a use of ``sha`` (it becomes the most recently used)."""
        with contextlib.suppress(FileNotFoundError):
            os.utime(self._meta(sha))

    def entries(self) -> list[tuple[float, str, int]]:
        """(last use, sha256, bytes) of every complete entry, least recently used first."""
        found = []
        for meta in self.root.glob("*.json"):
            sha = meta.stem
            try:
                found.append((meta.stat().st_mtime, sha, self._data(sha).stat().st_size))
            except FileNotFoundError:
                continue
        return sorted(found)

    # --- pins ---------------------------------------------------------------------------
    def pin(self, sha: str, owner: str) -> None:
        """Keep ``sha`` from eviction for ``pin_ttl`` seconds on behalf of ``owner`` (a request id)."""
        pins = self.root / "pins"
        pins.mkdir(parents=True, exist_ok=True)
        path = pins / f"{sha}--{owner}"
        path.touch()
        os.utime(path)

    def unpin(self, sha: str, owner: str) -> None:
        """Drop ``owner``'s pin of ``sha`` (its deploy failed: the entry may go)."""
        with contextlib.suppress(FileNotFoundError):
            (self.root / "pins" / f"{sha}--{owner}").unlink()

    def pinned(self) -> set[str]:
        """The checksums with a live pin (expired pins are removed)."""
        live, now = set(), time.time()
        for path in (self.root / "pins").glob("*--*"):
            try:
                if path.stat().st_mtime + self.pin_ttl > now:
                    live.add(path.name.split("--", 1)[0])
                else:
                    path.unlink()
            except FileNotFoundError:
                continue
        return live

    def evict(self, incoming: int = 0, keep: str | None = None) -> list[str]:
        """Remove least recently used unpinned entries until they and ``incoming`` bytes fit; returns those removed."""
        entries = self.entries()
        total = sum(size for _used, _sha, size in entries) + incoming
        if total <= self.max_bytes:
            return []
        protected = self.pinned() | ({keep} if keep else set())
        removed = []
        for _used, sha, size in entries:
            if total <= self.max_bytes:
                break
            if sha in protected:
                continue
            # Metadata first: a half-removed entry is a miss, never a hit without its file.
            with contextlib.suppress(FileNotFoundError):
                self._meta(sha).unlink()
            with contextlib.suppress(FileNotFoundError):
                self._data(sha).unlink()
            total -= size
            removed.append(sha)
        if removed:
            LOG.info("Image cache: evicted %s", ", ".join(removed))
        if total > self.max_bytes:
            LOG.warning("Image cache: %d bytes in use by pinned images, over the bound of %d", total, self.max_bytes)
        return removed

    # --- downloads ----------------------------------------------------------------------
    def job(self, url: str, sha: str) -> flight.Flight[Entry]:
        """The download of ``url`` (expected to hash to ``sha``) as a single-flight job."""
        part = self.root / f"{sha}.part"

        def progress() -> str:
            try:
                return f"downloaded {part.stat().st_size // (1024 * 1024)} MiB"
            except FileNotFoundError:
                return "connecting"

        source = hashlib.sha256(url.encode()).hexdigest()[:16]
        return flight.Flight(self.root, sha, lambda: self.lookup(sha), lambda: self._download(url, sha), progress,
                             failure_key=f"{sha}-{source}")

    def poll(self, url: str, sha: str, since: float) -> Entry | flight.Running | flight.Failed:
        """Non-blocking: the entry, or the download under way (started if need be), or its failure."""
        self.root.mkdir(parents=True, exist_ok=True)
        return flight.poll(self.job(url, sha), since)

    def fetch(self, url: str, sha: str) -> Entry:
        """Blocking: the entry, downloading it if need be.

        :raises flight.WorkFailed: the download failed (the message says why).
        """
        self.root.mkdir(parents=True, exist_ok=True)
        return flight.run(self.job(url, sha))

    def _download(self, url: str, sha: str) -> None:
        """Download ``url`` into the entry ``sha`` (the caller holds its lock).

        :raises flight.WorkFailed: with the message for ``last_error``.
        """
        part = self.root / f"{sha}.part"
        where = shown(url)
        self.evict()
        started = time.monotonic()
        try:
            with requests.get(url, stream=True, timeout=(_CONNECT_TIMEOUT, self.timeout),
                              headers={"Accept-Encoding": "identity"}) as response:
                if response.status_code != 200:
                    raise flight.WorkFailed(f"downloading {where} failed: HTTP {response.status_code} "
                                            f"{response.reason or ''}".rstrip())
                length = int(response.headers.get("Content-Length") or 0) or None
                if length is not None:
                    self._fits(length, where)
                    self.evict(incoming=length)
                digest = self._stream(response, part, where)
        except (requests.Timeout, urllib3.exceptions.ReadTimeoutError):
            self._discard(part)
            raise flight.WorkFailed(f"downloading {where} timed out: no data for {self.timeout:g} s") from None
        except (requests.RequestException, urllib3.exceptions.HTTPError) as exc:
            self._discard(part)
            raise flight.WorkFailed(f"downloading {where} failed: {_masked(str(exc), url)}") from None
        except OSError as exc:  # (after requests' errors, which are OSErrors too): the cache's own disk
            self._discard(part)
            raise flight.WorkFailed(f"storing {where} in the image cache ({self.root}) failed: "
                                    f"{exc.strerror or exc}") from None
        except BaseException:
            self._discard(part)
            raise
        if length is not None and digest.size != length:
            self._discard(part)
            raise flight.WorkFailed(f"downloading {where} failed: it ended after {digest.size} of {length} bytes")
        if digest.sha256 != sha:
            self._discard(part)
            raise flight.WorkFailed(f"checksum mismatch for {where}: expected sha256 {sha}, "
                                    f"downloaded {digest.sha256} ({digest.size} bytes)")
        try:
            compression, image_size = digest.finish()
        except formats.CorruptImage as exc:
            self._discard(part)
            raise flight.WorkFailed(f"the image at {where} is damaged: {exc}") from None
        os.replace(part, self._data(sha))
        meta = {"url": where, "compression": compression, "image_size": image_size, "size": digest.size,
                "fetched_at": time.time()}
        tmp = self.root / f".{sha}.json.tmp"
        tmp.write_text(json.dumps(meta), encoding="utf-8")
        os.replace(tmp, self._meta(sha))
        elapsed = time.monotonic() - started
        LOG.info("Image cache: downloaded %s (%d bytes, %s) in %.1f s", where, digest.size, compression, elapsed)
        self.evict(keep=sha)

    def _fits(self, size: int, where: str) -> None:
        if size > self.max_bytes:
            raise flight.WorkFailed(
                f"the image at {where} ({size} bytes) is larger than the whole image cache "
                f"(image_cache_size = {self.max_bytes / GIB:g} GiB)"
            )

    def _stream(self, response: requests.Response, part: Path, where: str) -> formats.Digest:
        digest = formats.Digest()
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            while chunk := response.raw.read(formats.CHUNK, decode_content=False):
                digest.update(chunk)
                out.write(chunk)
                if digest.size > self.max_bytes:
                    self._fits(digest.size, where)
            out.flush()
            os.fsync(out.fileno())
        return digest

    @staticmethod
    def _discard(part: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            part.unlink()
