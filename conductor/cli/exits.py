"""The exit statuses of the ``conductor`` command, one meaning each (README "Exit statuses").

Scripts tell the outcomes apart by these alone:

* ``0``: done (with ``--wait``: the request succeeded);
* ``1``: a request failed or was cancelled (``--wait``; in a bulk command, any
  of them); also any local error not listed here (a file not found...);
* ``2``: ``--wait`` (or ``--wait-free``) gave up after ``--timeout`` seconds;
  the request goes on;
* ``3``: the API refused the command: it answered with an error (4xx, or a
  5xx, including a 503 still refused after the retries ``Retry-After`` allows);
* ``4``: the API could not be reached, or its TLS certificate is not trusted;
* ``64``: the command line is wrong (click's usage errors, moved from 2 so
  that 2 means a timeout only; 64 is ``EX_USAGE`` of sysexits.h), or it
  would send a token over plain HTTP to another host.

A bulk command exits with the first of 1, 2, 3 that any of its nodes had.
"""

from __future__ import annotations

OK = 0
FAILED = 1
TIMEOUT = 2
REFUSED = 3
UNREACHABLE = 4
USAGE = 64
