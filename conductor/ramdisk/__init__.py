"""The agent ramdisk: a Debian kernel plus a busybox initramfs running our shell agent.

* :mod:`conductor.ramdisk.cpio` writes the initramfs (cpio "newc", gzip),
  reproducibly, with no external ``cpio``;
* :mod:`conductor.ramdisk.modules` picks kernel modules and their
  dependencies from ``modules.dep`` in load order;
* :mod:`conductor.ramdisk.debs` fetches and unpacks the Debian packages
  (``apt-get download``, ``dpkg-deb -x``; no root needed);
* :mod:`conductor.ramdisk.build` assembles ``agent.kernel`` and
  ``agent.initramfs`` (``conductor ramdisk build``, :mod:`conductor.ramdisk.cli`);
* :mod:`conductor.ramdisk.diskimage` builds a small bootable raw disk image
  from the same packages (``conductor ramdisk image``), the "operating
  system" the VM tests deploy: it prints a marker line and powers off;
* :mod:`conductor.ramdisk.iso` builds a bootable ISO of the agent ramdisk
  with the agent's kernel arguments baked in, for virtual media boot
  (``conductor ramdisk iso``);
* ``files/init`` is the agent itself (POSIX sh for busybox ash), run as
  ``/init``: it speaks the heartbeat protocol of
  :mod:`conductor.service.agent`.

The agent learns where to call from the kernel command line
(:func:`kernel_args`), the way the boot script hands it over.
"""

from __future__ import annotations

#: Kernel command-line parameters the agent reads (no dots: the kernel
#: would take ``a.b=`` for a module parameter).
API_URL_ARG = "conductor_api_url"
NODE_ARG = "conductor_node"
TOKEN_ARG = "conductor_token"


def kernel_args(api_url: str, node: str, token: str) -> str:
    """The kernel arguments that tell the agent its API URL, node and agent token.

    :raises ValueError: a value contains whitespace or quotes (the kernel splits on them).
    """
    values = {API_URL_ARG: api_url, NODE_ARG: node, TOKEN_ARG: token}
    for name, value in values.items():
        if not value or any(c.isspace() or c in "\"'" for c in value):
            raise ValueError(f"{name} must be non-empty, without whitespace or quotes: {value!r}")
    return " ".join(f"{name}={value}" for name, value in values.items())
