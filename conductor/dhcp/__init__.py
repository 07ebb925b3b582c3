"""DHCP and TFTP for network boot: a dnsmasq that answers only the nodes being provisioned.

``conductor up --dhcp-interface IF --dhcp-range A,B`` runs dnsmasq (Debian
package ``dnsmasq-base``) as one more supervised child.  Its configuration,
written by :mod:`conductor.dhcp.config` into ``<data dir>/dhcp/``, answers:

* legacy PXE firmware (client architecture 0, DHCP option 93) with
  ``undionly.kpxe``, UEFI firmware (7, 9) with ``snponly.efi``, both over
  dnsmasq's TFTP from ``tftp_root``: iPXE, chain-loaded;
* iPXE (user class ``iPXE``, or its option 175) with the HTTP boot-script
  URL ``<agent_url>/v1/boot``, so the loop ends there;
* nobody else: ``dhcp-ignore=tag:!known`` leaves every MAC without a host
  entry to the site's own DHCP server.

The host entries, one file per MAC in ``<data dir>/dhcp/hosts/``
(``dhcp-hostsdir``), are kept equal by :mod:`conductor.dhcp.hosts` to the
ports of the nodes that boot from the network right now: deploying,
cleaning or inspecting (and waiting for their agent in those) with the
``pxe`` deploy interface.  A node in service is never answered, so the
provisioning network cannot capture it.  :mod:`conductor.dhcp.sync` runs
that reconciliation in the supervisor; dnsmasq reads a new file by itself
(inotify) and forgets a removed one on SIGHUP.

Without those options nothing of this runs and nothing is written.
"""
