"""``/v1/boot``: iPXE boot scripts by MAC address, and the boot files they load.

Firmware sends no credentials: these endpoints take no bearer token
(:data:`conductor.api.admission.PUBLIC_ENDPOINTS`; each caller address has a
budget of its own instead).  What a MAC is told is decided by
:mod:`conductor.service.boot`; this module writes it as iPXE script:

* ``GET /v1/boot``: the script DHCP points iPXE at; it chains to the
  script of the MAC of the interface iPXE booted from;
* ``GET /v1/boot/<mac>``: the agent (kernel, initramfs, kernel arguments
  with the API URL, the node's UUID and its agent token), or the local disk;
* ``GET /v1/boot/files/<name>``: ``agent.kernel`` and ``agent.initramfs``,
  streamed from disk with ``Range`` support (:func:`serve_file`, which
  serves any file path, for every kind of boot file);
* ``GET /v1/boot/media/<ticket>``: a node's agent ISO, for its BMC's
  virtual media (``redfish-virtual-media``): the signed, expiring ticket
  (:mod:`conductor.images.tickets`, a purpose of its own) is the proof, and
  it is honoured only while the node's agent phase holds that very ISO.

Booting the local disk: ``sanboot --no-describe --drive 0x80`` is the iPXE
documentation's way to boot the first local disk (BIOS drive 0x80)
directly, which also avoids the BIOSes that halt instead of trying the next
boot device when iPXE exits.  Where it fails (UEFI firmware, which has no
BIOS drive numbers; no disk), ``exit`` hands control back to the firmware,
whose boot order goes on to the next device.
"""

from __future__ import annotations

from pathlib import Path

from flask import Response, request
from flask.views import MethodView
from werkzeug.exceptions import RequestedRangeNotSatisfiable
from werkzeug.http import parse_range_header
from werkzeug.utils import send_file
from werkzeug.wrappers import Response as BaseResponse

from conductor import ramdisk
from conductor.api.common import Blueprint, context, session
from conductor.api.errors import error_response
from conductor.core import agent as protocol
from conductor.exceptions import InvalidImageTicket, NodeNotFound
from conductor.images import tickets
from conductor.service import boot, nodes

blp = Blueprint("boot", __name__, url_prefix="/v1/boot",
                description="Network boot: iPXE scripts by MAC address, and boot files (no bearer token)")

SCRIPT_TYPE = "text/plain; charset=utf-8"
#: The iPXE setting holding the MAC of the interface iPXE last opened (the
#: one it booted from, even on a machine with several NICs).
BOOT_MAC = "${netX/mac}"
_SCRIPT_DOC = {
    "security": [],
    "responses": {"200": {"description": "An iPXE script", "content": {"text/plain": {"schema": {"type": "string"}}}}},
}


def chain_script(base_url: str) -> str:
    """The script every iPXE client is pointed at: ask again, by the MAC it booted from."""
    return f"#!ipxe\nchain {base_url}/v1/boot/{BOOT_MAC}\n"


def local_disk_script() -> str:
    """Boot the local disk (the same for every MAC that is not to boot the agent)."""
    return "#!ipxe\nsanboot --no-describe --drive 0x80 || exit\n"


def agent_script(base_url: str, node: str, token: str, params: str = "") -> str:
    """Load and boot the agent ramdisk, telling it where to call, as whom and with what token.

    ``initrd=agent.initramfs`` names the initramfs for kernels started
    through their EFI stub by an iPXE that does not hand the initrd over
    itself; elsewhere it is ignored.  ``params`` (the setting
    ``agent_kernel_params``) come before the agent's own.

    :raises ValueError: a value the kernel command line cannot carry.
    """
    files = f"{base_url}/v1/boot/files"
    args = ramdisk.kernel_args(base_url, node, token)
    extra = " ".join(params.split())
    if any(c in "\"'" for c in extra):
        raise ValueError(f"agent_kernel_params must not contain quotes: {params!r}")
    return (
        "#!ipxe\n"
        f"kernel {files}/agent.kernel initrd=agent.initramfs {extra + ' ' if extra else ''}{args}\n"
        f"initrd --name agent.initramfs {files}/agent.initramfs\n"
        "boot\n"
    )


def _base_url() -> str:
    return context().settings.agent_url.rstrip("/")


def _script(text: str) -> Response:
    response = Response(text, content_type=SCRIPT_TYPE)
    # A script may carry a token, and what a MAC gets changes with its node's state.
    response.headers["Cache-Control"] = "no-store"
    return response


def serve_file(path: Path) -> BaseResponse:
    """``path`` as a download: ``Content-Length``, ``Range`` (206, or 416), ``ETag``, streamed.

    One range per request: a ``Range`` that does not parse, names another
    unit or asks for several ranges is ignored (the whole file, 200), as
    HTTP allows.  The file is never read into memory: without a range the
    server's file wrapper sends it (gunicorn uses ``sendfile``); with one,
    Werkzeug's seekable wrapper seeks to the start and reads the range in
    blocks (gunicorn's wrapper cannot seek, so a ranged answer gets
    Werkzeug's).
    """
    environ = request.environ
    if "HTTP_RANGE" in environ:
        wanted = parse_range_header(environ["HTTP_RANGE"])
        ignored = wanted is None or wanted.units != "bytes" or len(wanted.ranges) != 1
        drop = {"HTTP_RANGE"} if ignored else {"wsgi.file_wrapper"}
        environ = {k: v for k, v in environ.items() if k not in drop}
    try:
        return send_file(path, environ, mimetype="application/octet-stream", conditional=True, etag=True)
    except RequestedRangeNotSatisfiable:
        size = path.stat().st_size
        response = error_response(416, "range_not_satisfiable",
                                  f"The range asked for is not within the file's {size} bytes.")
        response.headers["Content-Range"] = f"bytes */{size}"
        return response


@blp.route("")
class ChainScript(MethodView):
    @blp.doc(**_SCRIPT_DOC)
    def get(self) -> Response:
        """The iPXE script DHCP hands to iPXE clients: chains to this machine's own script by MAC."""
        return _script(chain_script(_base_url()))


@blp.route("/<mac>")
class MacScript(MethodView):
    @blp.doc(**_SCRIPT_DOC)
    def get(self, mac: str) -> Response:
        """The iPXE script for NIC ``mac``: the agent while its node waits for one, else the local disk.

        Unknown MACs get the local disk too; a malformed MAC is 400.
        """
        found = boot.agent_boot(session(), mac)
        if found is None:
            return _script(local_disk_script())
        return _script(agent_script(_base_url(), found.node, found.token, context().settings.agent_kernel_params))


@blp.route("/files/<name>")
class BootFile(MethodView):
    @blp.doc(security=[], responses={
        "200": {"description": "The file", "content": {"application/octet-stream": {}}},
        "206": {"description": "The range asked for", "content": {"application/octet-stream": {}}},
        "404": {"description": "No such boot file, or not built (run `conductor ramdisk build`)"},
        "416": {"description": "The range is not within the file"},
    })
    def get(self, name: str) -> BaseResponse:
        """A boot file of the agent ramdisk (``agent.kernel``, ``agent.initramfs``), with ``Range`` support."""
        return serve_file(boot.ramdisk_file(context().settings, name))


@blp.route("/media/<ticket>")
class MediaFile(MethodView):
    @blp.doc(security=[], responses={
        "200": {"description": "The node's agent ISO", "content": {"application/octet-stream": {}}},
        "206": {"description": "The range asked for", "content": {"application/octet-stream": {}}},
        "401": {"description": "Forged, altered or expired ticket, or the phase that issued it is over"},
        "416": {"description": "The range is not within the file"},
    })
    def get(self, ticket: str) -> BaseResponse:
        """A node's agent ISO for its BMC's virtual media drive (the signed URL the conductor inserted; no token)."""
        granted = tickets.verify(context().settings, ticket, purpose=tickets.MEDIA_PURPOSE)
        try:
            node = nodes.find(session(), granted.node)
        except NodeNotFound:
            raise InvalidImageTicket("This media URL is not valid for any node.") from None
        media = (node.driver_internal_info or {}).get(protocol.MEDIA) or {}
        path = granted.path
        current = (protocol.issued(node.driver_internal_info) and media.get("path") == str(path)
                   and media.get("ticket") == tickets.digest(ticket))
        try:
            found = tickets.identity_of(path.stat()) if current else None
        except OSError:
            found = None
        if found is None or found != granted.identity:
            raise InvalidImageTicket(f"This media URL is no longer valid: node {node.uuid}'s agent phase that "
                                     "inserted it is over.")
        return serve_file(path)
