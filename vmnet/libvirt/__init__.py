"""vmnet's libvirt integration: the domain XML written (domain_xml), the qemu.d hook
(hook, hookinstall) and live attach into a running domain (attach). What the helper
itself needs of a domain (its metadata read, its ports as one unit) is in the core
modules vmnet.domain_metadata and vmnet.domain; domain re-exports the latter."""
