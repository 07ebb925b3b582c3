"""The remote image cache: miss then hit, one download for concurrent deploys, LRU, failures leave nothing."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import threading
import time
from pathlib import Path

import pytest

from conductor.images import cache, flight

MIB = 1024 * 1024


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def leftovers(root: Path) -> list[str]:
    """Anything in the cache but complete entries and lock files."""
    return sorted(p.name for p in root.iterdir() if p.suffix in (".part", ".tmp") or p.name.startswith("."))


def test_miss_then_hit(tmp_path: Path, image_server) -> None:  # type: ignore[no-untyped-def]
    body = os.urandom(MIB)
    url = image_server.add("/a.img", body)
    images = cache.ImageCache(tmp_path, 10 * MIB)
    assert images.lookup(sha(body)) is None
    entry = images.fetch(url, sha(body))
    assert entry.path.read_bytes() == body
    assert (entry.size, entry.compression, entry.image_size, entry.url) == (MIB, "none", MIB, url)
    again = images.fetch(url, sha(body))
    assert again == entry and image_server.hits["/a.img"] == 1
    assert leftovers(tmp_path) == []


def test_concurrent_fetches_in_threads_download_once(tmp_path: Path, image_server) -> None:  # type: ignore[no-untyped-def]
    body = os.urandom(MIB)
    url = image_server.add("/a.img", body)
    image_server.pace = 0.01  # ~0.16 s: every thread arrives while it runs
    images = cache.ImageCache(tmp_path, 10 * MIB)
    results: list[cache.Entry] = []
    threads = [threading.Thread(target=lambda: results.append(images.fetch(url, sha(body)))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 8 and len({r.path for r in results}) == 1
    assert image_server.hits["/a.img"] == 1


def _fetch_in_child(root: str, url: str, digest: str, out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    out.put(str(cache.ImageCache(Path(root), 10 * MIB).fetch(url, digest).path))


def test_concurrent_fetches_in_processes_download_once(tmp_path: Path, image_server) -> None:  # type: ignore[no-untyped-def]
    body = os.urandom(MIB)
    url = image_server.add("/a.img", body)
    image_server.pace = 0.01
    context = multiprocessing.get_context("fork")
    out = context.Queue()
    children = [context.Process(target=_fetch_in_child, args=(str(tmp_path), url, sha(body), out))
                for _ in range(3)]
    for child in children:
        child.start()
    paths = {out.get(timeout=30) for _ in children}
    for child in children:
        child.join(10)
    assert paths == {str(tmp_path / sha(body))}
    assert image_server.hits["/a.img"] == 1


def test_poll_never_blocks_and_waiters_share_one_download(tmp_path: Path, image_server) -> None:  # type: ignore[no-untyped-def]
    body = os.urandom(MIB)
    url = image_server.add("/a.img", body)
    image_server.pace = 0.02
    images = cache.ImageCache(tmp_path, 10 * MIB)
    since = time.time()
    started = time.monotonic()
    first = images.poll(url, sha(body), since)
    assert isinstance(first, flight.Running) and time.monotonic() - started < 0.2
    deadline = time.monotonic() + 10
    seen: list[object] = []
    while time.monotonic() < deadline:
        seen.append(images.poll(url, sha(body), since))  # a second deploy asks too
        if isinstance(seen[-1], cache.Entry):
            break
        time.sleep(0.02)
    assert isinstance(seen[-1], cache.Entry)
    assert any(isinstance(s, flight.Running) and "MiB" in s.detail for s in seen)
    assert image_server.hits["/a.img"] == 1


def test_least_recently_used_is_evicted_never_a_pinned_one(tmp_path: Path, image_server) -> None:  # type: ignore[no-untyped-def]
    bodies = {name: os.urandom(MIB) for name in "abcde"}
    urls = {name: image_server.add(f"/{name}.img", body) for name, body in bodies.items()}
    images = cache.ImageCache(tmp_path, 3 * MIB)
    for name in "abc":
        images.fetch(urls[name], sha(bodies[name]))
        time.sleep(0.02)  # distinct last-use times
    images.touch(sha(bodies["a"]))  # a deploy used a again: b is now the least recently used
    images.fetch(urls["d"], sha(bodies["d"]))
    present = {name for name in bodies if images.lookup(sha(bodies[name]))}
    assert present == {"a", "c", "d"}
    images.pin(sha(bodies["c"]), "req-1")  # c is being deployed: a goes although c is older
    time.sleep(0.02)
    images.touch(sha(bodies["d"]))
    images.fetch(urls["e"], sha(bodies["e"]))
    assert {name for name in bodies if images.lookup(sha(bodies[name]))} == {"c", "d", "e"}
    assert sum(size for _used, _sha, size in images.entries()) <= 3 * MIB


def test_expired_pins_do_not_protect(tmp_path: Path) -> None:
    images = cache.ImageCache(tmp_path, MIB, pin_ttl=60)
    images.pin("ab" * 32, "req-1")
    assert images.pinned() == {"ab" * 32}
    old = time.time() - 120
    os.utime(tmp_path / "pins" / f"{'ab' * 32}--req-1", (old, old))
    assert images.pinned() == set()


def test_checksum_mismatch_leaves_nothing(tmp_path: Path, image_server) -> None:  # type: ignore[no-untyped-def]
    body = os.urandom(MIB)
    url = image_server.add("/a.img", body)
    wrong = "0" * 64
    images = cache.ImageCache(tmp_path, 10 * MIB)
    with pytest.raises(flight.WorkFailed) as failed:
        images.fetch(url, wrong)
    assert str(failed.value) == (f"checksum mismatch for {url}: expected sha256 {wrong}, "
                                 f"downloaded {sha(body)} ({MIB} bytes)")
    assert images.lookup(wrong) is None and images.entries() == [] and leftovers(tmp_path) == []


@pytest.mark.parametrize(("setup", "message"), [
    ("missing", "failed: HTTP 404 Not Found"),
    ("silent", "timed out: no data for 0.5 s"),
    ("refused", "failed: "),
    ("too big", "is larger than the whole image cache"),
])
def test_source_failures_are_clear(tmp_path: Path, image_server, setup, message) -> None:  # type: ignore[no-untyped-def]
    body = os.urandom(2 * MIB)
    url = image_server.add("/a.img", body)
    if setup == "missing":
        url = image_server.url + "/missing.img"
    elif setup == "silent":
        image_server.silent = True
    elif setup == "refused":
        url = "http://127.0.0.1:9/a.img"
    images = cache.ImageCache(tmp_path, MIB if setup == "too big" else 10 * MIB, timeout=0.5)
    with pytest.raises(flight.WorkFailed) as failed:
        images.fetch(url, sha(body))
    assert message in str(failed.value) and (url in str(failed.value))
    assert images.entries() == [] and leftovers(tmp_path) == []


def test_a_failure_is_reported_to_its_waiters_and_retried_by_later_deploys(tmp_path: Path, image_server) -> None:  # type: ignore[no-untyped-def]
    body = os.urandom(MIB)
    url = image_server.url + "/later.img"
    images = cache.ImageCache(tmp_path, 10 * MIB)
    since = time.time()
    result: object = images.poll(url, sha(body), since)
    deadline = time.monotonic() + 10
    while isinstance(result, flight.Running) and time.monotonic() < deadline:
        time.sleep(0.02)
        result = images.poll(url, sha(body), since)
    assert isinstance(result, flight.Failed) and "HTTP 404" in result.error
    # A deploy that started later (the image was published meanwhile) tries again.
    image_server.add("/later.img", body)
    time.sleep(0.01)
    later = time.time()
    result = images.poll(url, sha(body), later)
    while isinstance(result, flight.Running) and time.monotonic() < deadline:
        time.sleep(0.02)
        result = images.poll(url, sha(body), later)
    assert isinstance(result, cache.Entry)


def test_passwords_are_masked_in_messages() -> None:
    assert cache.shown("https://u:secret@host:8443/i.img") == "https://u:******@host:8443/i.img"
    assert cache.shown("https://host/i.img") == "https://host/i.img"
