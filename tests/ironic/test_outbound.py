"""The outbound audit's reading of strace logs (outbound.py): what counts as traffic."""

from __future__ import annotations

from .outbound import Outbound, finished, outbound

TRACE = "\n".join(
    [
        "5734  connect(11, {sa_family=AF_INET, sin_port=htons(40107), "
        'sin_addr=inet_addr("127.0.0.1")}, '
        "16) = -1 EINPROGRESS (Operation now in progress)",
        "5734  sendto(6, [{nlmsg_len=20, nlmsg_type=RTM_GETLINK}], 20, 0, "
        "{sa_family=AF_NETLINK, nl_pid=0, nl_groups=00000000}, 12) = 20",
        '5734  sendto(7, "\\\\26\\\\3\\\\3", 815, 0, NULL, 0) = 815',
        '5735  connect(3, {sa_family=AF_UNIX, sun_path="/run/udev/control"}, 110) = 0',
        '5736  sendto(4, "x", 1, 0, {sa_family=AF_INET6, sin6_port=htons(6385), '
        'sin6_flowinfo=htonl(0), inet_pton(AF_INET6, "::1", &sin6_addr), '
        "sin6_scope_id=0}, 28) = 1",
        "5737  sendmsg(5, {msg_name={sa_family=AF_INET, sin_port=htons(53), "
        'sin_addr=inet_addr("127.0.0.53")}, msg_namelen=16}, 0) = 30',
        "5738  connect(9, {sa_family=AF_INET, sin_port=htons(6385), "
        'sin_addr=inet_addr("127.0.0.1")}, 16 <unfinished ...>',
        "5738  <... connect resumed>)             = 0",
        "5734  +++ exited with 0 +++",
    ]
)


def test_every_ip_destination_is_found_and_local_families_are_not() -> None:
    assert outbound(TRACE) == [
        Outbound(5734, "connect", "127.0.0.1", 40107),
        Outbound(5736, "sendto", "::1", 6385),
        Outbound(5737, "sendmsg", "127.0.0.53", 53),
        Outbound(5738, "connect", "127.0.0.1", 6385),
    ]
    assert [o.endpoint for o in outbound(TRACE)][:2] == ["127.0.0.1:40107", "[::1]:6385"]


def test_the_log_is_complete_once_the_process_end_is_in_it() -> None:
    assert finished(TRACE, 5734)
    assert not finished(TRACE, 5738)
    assert finished("17 +++ killed by SIGKILL +++\n", 17)
