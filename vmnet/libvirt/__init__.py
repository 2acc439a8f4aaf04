"""vmnet's libvirt integration: the domain XML contract (domain_xml), a domain's
ports as one unit (domain, run by the helper for the hook), the qemu.d hook
(hook, hookinstall) and live attach into a running domain (attach)."""
