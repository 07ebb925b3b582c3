"""``GET /metrics``: this API host's own metrics, the latency of the HTTP calls it answered.

One histogram, ``conductor_http_request_duration_seconds``, by ``method``,
``route`` (the URL rule, ``/v1/nodes/<ident>``, or ``unmatched``: a scan
of random URLs adds no series) and ``status`` class (``2xx``, ``4xx``...).
The time is from the request's arrival in Flask to the response's
headers: an event stream or a download counts until its first byte.

Per host, not per deployment: a scrape of one API host shows the calls
that host answered, so Prometheus may ``sum`` them over hosts.  Under
gunicorn the host's API is several processes and a scrape reaches one of
them; each process therefore keeps its counts in a file of its own
(``prometheus_client``'s multiprocess mode, directory
``<data dir>/metrics/api-<port>``, emptied when the API starts) and a
scrape adds up the files of every process, the exited ones included, so
nothing goes back when a worker is replaced.  Without gunicorn (tests,
``flask run``) the counts live in the process.

The deployment's figures (queue, requests, nodes, callbacks, BMC calls)
are the same whichever host is asked: they are at ``GET /metrics/fleet``
(:mod:`conductor.api.metrics`).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from flask import Flask, Response, g, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest, multiprocess, values

DURATION = "conductor_http_request_duration_seconds"
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
#: prometheus_client's own variable: where the processes' metric files are.
DIRECTORY_ENV = "PROMETHEUS_MULTIPROC_DIR"


def share_between_processes(directory: Path) -> None:
    """Before gunicorn forks its workers: count in files under ``directory`` (emptied first).

    Sets :data:`DIRECTORY_ENV` for the workers, and switches
    ``prometheus_client`` to its multiprocess values (it reads the variable
    only when first imported, which happened already).
    """
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True, mode=0o700)
    os.environ[DIRECTORY_ENV] = str(directory)
    values.ValueClass = values.MultiProcessValue()


def process_exited(pid: int) -> None:
    """gunicorn's ``child_exit``: a worker's live gauges go (its counts stay in the sums)."""
    directory = os.environ.get(DIRECTORY_ENV)
    if directory:
        multiprocess.mark_process_dead(pid, directory)


class HttpMetrics:
    """The histogram of one application, and its exposition."""

    def __init__(self, directory: str | None) -> None:
        #: Where every process of this host's API counts (None: this process alone).
        self.directory = directory
        self.registry = CollectorRegistry(auto_describe=False)
        self.duration = Histogram(
            DURATION, "Time from a call's arrival to its response's headers, by method, route and status class.",
            ["method", "route", "status"], buckets=BUCKETS, registry=None if directory else self.registry,
        )

    @classmethod
    def of_this_process(cls) -> HttpMetrics:
        """Counting with the host's other API processes when gunicorn's master said so.

        (:func:`share_between_processes` set the directory.)
        """
        return cls(os.environ.get(DIRECTORY_ENV) if values.ValueClass is not values.MutexValue else None)

    def install(self, app: Flask) -> None:
        """Time every call of ``app`` (the clock starts before any other ``before_request``)."""
        app.before_request_funcs.setdefault(None, []).insert(0, _start)

        @app.after_request
        def observe(response: Response) -> Response:
            started = g.get("http_started")
            if started is not None:
                route = request.url_rule.rule if request.url_rule is not None else "unmatched"
                self.duration.labels(request.method, route, f"{response.status_code // 100}xx").observe(
                    time.perf_counter() - started)
            return response

    def render(self) -> tuple[bytes, str]:
        """The exposition: this process's counts, or the sums over the host's API processes."""
        if self.directory is None:
            return generate_latest(self.registry), CONTENT_TYPE_LATEST
        registry = CollectorRegistry(auto_describe=False)
        multiprocess.MultiProcessCollector(registry, path=self.directory)
        return generate_latest(registry), CONTENT_TYPE_LATEST


def _start() -> None:
    g.http_started = time.perf_counter()
