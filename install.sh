#!/bin/bash
# Install vmnet and everything it needs on a Debian bookworm machine, as root:
# the system packages, a virtualenv in /opt/vmnet (readable by the unprivileged
# users consumers run as), and /usr/local/bin/vmnet. Safe to run again.
#   --kubevirt   also make this a KubeVirt node: the CNI plugin as /opt/cni/bin/vmnet and
#                the wrapper directory /opt/vmnet/kubevirt (docs/kubevirt.md)
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")"
prefix=${VMNET_PREFIX:-/opt/vmnet}
kubevirt=no
for arg in "$@"; do
    case "$arg" in
        --kubevirt) kubevirt=yes ;;
        -h|--help) sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "install.sh: unknown option $arg (known: --kubevirt)" >&2; exit 2 ;;
    esac
done

if [ "$(id -u)" != 0 ]; then
    echo "install.sh: run as root (it installs system packages)" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends \
    python3 python3-venv python3-dev gcc make pkg-config libcap-dev \
    libbpf1 libbpf-dev libxdp1 xdp-tools linux-libc-dev clang llvm iproute2 iputils-ping file
# QEMU 10.0 and libvirt 11.3 come from bookworm-backports; its sources entry is
# derived from this machine's own Debian entry.
/usr/bin/python3 scripts/enable-backports
apt-get update -q
apt-get install -y -q --no-install-recommends -t bookworm-backports \
    qemu-system-x86 qemu-utils libvirt-daemon libvirt-daemon-system libvirt-daemon-driver-qemu \
    libvirt-clients libvirt-dev
# The kernel matrix boots Debian's 6.12 kernel (netkit built in) under QEMU with
# virtme-ng, which needs a static busybox and `file` (installed above); the VM tests boot it as their guest.
# Installing a kernel package only adds it to /boot and /lib/modules.
apt-get install -y -q --no-install-recommends -t bookworm-backports linux-image-amd64
apt-get install -y -q --no-install-recommends busybox-static
# The kernel matrix's 7.3-netdevsim entry: scripts/fetch-kernel unpacks Debian's 7.3 kernel
# (no install) and builds netdevsim from its linux-source against these tools.
apt-get install -y -q --no-install-recommends \
    kmod xz-utils flex bison bc binutils pkgconf libelf-dev libssl-dev
# The VM tests' guest enables every queue of a multi-queue NIC with ethtool.
apt-get install -y -q --no-install-recommends ethtool
# Network attachments: Open vSwitch for `ovs` ports (the tests run a private ovsdb-server
# and ovs-vswitchd with the userspace datapath), dnsmasq for libvirt's `default` network,
# dhcpcd as the DHCPv6 client the address-server tests use (udhcpc comes with busybox).
apt-get install -y -q --no-install-recommends openvswitch-switch dnsmasq-base dhcpcd-base
# The CNI tests chain vmnet's plugin with Debian's reference plugins (/usr/lib/cni); the node
# image is built with mmdebstrap and podman (scripts/build-images) and its test runs it with runc.
apt-get install -y -q --no-install-recommends containernetworking-plugins mmdebstrap podman runc

# The XSK object is committed; fail early when it no longer matches its source.
make -s -C bpf check

/usr/bin/python3 -m venv "$prefix"
"$prefix/bin/pip" install -q --disable-pip-version-check ".[test,libvirt,kubevirt]"
ln -sf "$prefix/bin/vmnet" /usr/local/bin/vmnet
# the wrapper for libvirt's <emulator>, started without site (vmnet libvirt install-wrapper --help)
"$prefix/bin/vmnet" libvirt install-wrapper --path /usr/local/bin/vmnet-qemu-wrapper >/dev/null
install -D -m 0644 systemd/vmnet-helper.service /usr/local/lib/systemd/system/vmnet-helper.service
chmod -R a+rX "$prefix"
if [ "$kubevirt" = yes ]; then
    install -d /opt/cni/bin
    ln -sf "$prefix/bin/vmnet-cni" /opt/cni/bin/vmnet
    "$prefix/bin/vmnet" kubevirt runtime "$prefix/kubevirt" --qemu /usr/libexec/qemu-kvm
fi
echo "vmnet installed in $prefix; try: vmnet doctor && vmnet selftest"
