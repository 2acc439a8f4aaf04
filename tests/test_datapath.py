"""The data path end to end: veth port, AF_XDP sockets made in the consumer's
netns, the unprivileged responder bound through the same handoff QEMU uses,
and traffic from ordinary host sockets."""

import os

import pytest

from vmnet import selftest
from vmnet.errors import MemlockError

pytestmark = pytest.mark.netns

NOBODY = selftest.consumer_identity("nobody")


@pytest.mark.parametrize("separate_netns", [True, False], ids=["consumer-netns", "host-netns"])
@pytest.mark.parametrize("queues", [1, 2, 4])
@pytest.mark.parametrize("mode", ["native", "skb"])
def test_responder_answers_ping_udp_and_tcp_with_valid_checksums(test_netns, mode, queues, separate_netns):
    row = selftest.run_case(mode, queues, uid=NOBODY[0], gid=NOBODY[1], allow_ipc_lock=True,
                            tag=str(os.getpid() % 10000), separate_netns=separate_netns)
    assert row.problems == []
    assert row.pings == "5/5"
    assert row.udp == "32/32"           # 16 small + 16 MTU-sized datagrams echoed
    assert row.tcp == "16/16"           # every SYN answered with RST
    assert row.bad_checksum == 0 and row.oversized == 0
    assert len(row.per_queue_rx) == queues
    if mode == "native":                # veth spreads flows over its queues in native mode
        assert all(n > 0 for n in row.per_queue_rx)
    assert row.mtu == (3506 if mode == "native" else 3826)


def test_responder_runs_as_the_consumer_uid_with_no_other_capability(test_netns):
    row = selftest.run_case("skb", 1, uid=NOBODY[0], gid=NOBODY[1], allow_ipc_lock=True,
                            tag=str(os.getpid() % 10000))
    creds = row.credentials
    assert (creds["uid"], creds["gid"]) == NOBODY
    assert creds["no_new_privs"] is True
    assert creds["bounding"] == []
    assert creds["groups"] == []
    allowed = {"ipc_lock"} if row.memlock == "ipc-lock" else set()
    assert set(creds["effective"]) == allowed
    assert set(creds["permitted"]) == allowed
    assert set(creds["ambient"]) == allowed


def test_memlock_that_cannot_be_raised_fails_before_anything_is_created(test_netns):
    import resource
    from vmnet.caps import has_capability
    soft, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    if has_capability("sys_resource") or hard == resource.RLIM_INFINITY or hard >= 32 * 2**20:
        pytest.skip("this process may raise its memlock limit; see test_cli for the forced case")
    with pytest.raises(MemlockError) as exc:
        selftest.run_case("skb", 2, uid=NOBODY[0], gid=NOBODY[1], allow_ipc_lock=False, tag="m")
    assert "64 MiB" in exc.value.message
    assert "--allow-ipc-lock" in exc.value.fix
