"""The Redfish front end's own shared table: HTTP faults and counters, one record per BMC.

Power and boot device live in the fleet's :class:`~conductor.bmcsim.state.StateTable`
(one machine, two protocols); this small table holds only what IPMI has no
word for.  Like the state table it is an anonymous ``memfd`` created by the
control process and inherited by the Redfish process, with one writer per
field:

* the **control process** writes the faults (``http_error``: every request
  to the BMC is answered with that status; ``http_error_rate``: the
  fraction of requests that are; ``retry_after``: the ``Retry-After`` of a
  503) and ``session_epoch``, which the Redfish process compares with the
  last it saw to drop every session of the BMC (a BMC reboot, a session
  timeout: clients must log in again), and, for a VM BMC, the media
  acknowledgement: the last virtual media change (numbered by the Redfish
  process, sent on its event pipe) the VM manager has applied to the
  machine, and whether it could;
* the **Redfish process** writes its counters: requests answered and
  sessions created.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import asdict, dataclass
from typing import Any

# Control-owned: status (u16), pad, epoch (u32) @0; rate, retry_after (doubles) @8.
_CONTROL = struct.Struct("<HHI")
_FLOATS = struct.Struct("<dd")
# Server-owned counters @24: requests, sessions.
_COUNTERS = struct.Struct("<II")
# Control-owned media acknowledgement @32: seq (u32), ok (u32); ok is written
# before seq and read after it, so a reader that sees a seq sees its ok.
_MEDIA_SEQ, _MEDIA_OK = 32, 36
RECORD_SIZE = 40

#: The fault names this table adds to the fleet's (``Fleet.set_fault``).
FAULT_NAMES = ("http_error", "http_error_rate", "retry_after")


@dataclass(frozen=True)
class HttpFaults:
    """HTTP faults of one BMC's Redfish service.

    :ivar http_error: answer requests with this status (0: none; e.g. 500, 503).
    :ivar http_error_rate: the fraction (0..1) of requests so answered.
    :ivar retry_after: seconds, sent as ``Retry-After`` with a 503.
    """

    http_error: int = 0
    http_error_rate: float = 1.0
    retry_after: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return asdict(self)


class RedfishTable:
    """Shared-memory records for ``count`` BMCs (see the module docstring)."""

    def __init__(self, fd: int, count: int) -> None:
        self.fd = fd
        self.count = count
        self._mm = mmap.mmap(fd, count * RECORD_SIZE)

    @classmethod
    def create(cls, count: int) -> RedfishTable:
        """A zeroed table: no faults, every rate 1.

        :raises OSError: when the memfd cannot be created.
        """
        fd = os.memfd_create("bmcsim-redfish", 0)
        os.ftruncate(fd, count * RECORD_SIZE)
        table = cls(fd, count)
        for index in range(count):
            table.write_faults(index, HttpFaults())
        return table

    @classmethod
    def attach(cls, fd: int, count: int) -> RedfishTable:
        """Map a table whose descriptor was inherited from the control process."""
        return cls(fd, count)

    def close(self) -> None:
        """Unmap and close the descriptor."""
        self._mm.close()
        os.close(self.fd)

    # --- control-owned ---------------------------------------------------------
    def read_faults(self, index: int) -> HttpFaults:
        """The HTTP faults of one BMC."""
        off = index * RECORD_SIZE
        status, _, _ = _CONTROL.unpack_from(self._mm, off)
        rate, retry_after = _FLOATS.unpack_from(self._mm, off + 8)
        return HttpFaults(status, rate, retry_after)

    def write_faults(self, index: int, faults: HttpFaults) -> None:
        """Replace the HTTP faults of one BMC (control process only)."""
        off = index * RECORD_SIZE
        _FLOATS.pack_into(self._mm, off + 8, min(max(faults.http_error_rate, 0.0), 1.0),
                          max(faults.retry_after, 0.0))
        struct.pack_into("<H", self._mm, off, faults.http_error & 0xFFFF)

    def session_epoch(self, index: int) -> int:
        """Bumped by the control process to drop every session of the BMC."""
        return int(_CONTROL.unpack_from(self._mm, index * RECORD_SIZE)[2])

    def bump_session_epoch(self, index: int) -> None:
        """Drop every session of one BMC at its next request (control process only)."""
        off = index * RECORD_SIZE + 4
        (epoch,) = struct.unpack_from("<I", self._mm, off)
        struct.pack_into("<I", self._mm, off, (epoch + 1) & 0xFFFFFFFF)

    def ack_media(self, index: int, seq: int, ok: bool) -> None:
        """Say that media change ``seq`` of BMC ``index`` reached its machine, or could not (VM manager only)."""
        off = index * RECORD_SIZE
        struct.pack_into("<I", self._mm, off + _MEDIA_OK, 1 if ok else 0)
        struct.pack_into("<I", self._mm, off + _MEDIA_SEQ, seq & 0xFFFFFFFF)

    def media_ack(self, index: int) -> tuple[int, bool]:
        """``(seq, ok)``: the last media change of BMC ``index`` the VM manager has applied."""
        off = index * RECORD_SIZE
        (seq,) = struct.unpack_from("<I", self._mm, off + _MEDIA_SEQ)
        (ok,) = struct.unpack_from("<I", self._mm, off + _MEDIA_OK)
        return int(seq), bool(ok)

    # --- server-owned -----------------------------------------------------------
    def counters(self, index: int) -> dict[str, int]:
        """``{"requests", "sessions"}`` of one BMC."""
        requests, sessions = _COUNTERS.unpack_from(self._mm, index * RECORD_SIZE + 24)
        return {"requests": requests, "sessions": sessions}

    def bump(self, index: int, counter: int) -> None:
        """Add one to counter 0 (requests) or 1 (sessions created) (Redfish process only)."""
        off = index * RECORD_SIZE + 24 + 4 * counter
        (value,) = struct.unpack_from("<I", self._mm, off)
        struct.pack_into("<I", self._mm, off, (value + 1) & 0xFFFFFFFF)
