"""Dracut-style network parameters through the real systemd-network-generator.

The generator is the ramdisk's parser for ip=/vlan=/bond=/nameserver=; these tests run the
binary (as tacet-network does at boot) on real dracut examples and check what it writes,
plus what agent.netconfig.cmdline adds: naming refused parameters, and bond options.
"""

from __future__ import annotations

import pytest

from agent.config import cmdline_words
from agent.netconfig import cmdline

GENERATOR = cmdline.GENERATOR


def body(text: str) -> list[str]:
    """A generated file's settings, without comments and blank lines."""
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def test_the_generator_is_there_and_takes_a_root_and_a_command_line():
    assert GENERATOR.is_file()
    # Without parameters it would read this machine's /proc/cmdline: not run at all.
    assert cmdline.generate([]) == {}
    files = cmdline.generate(["ip=eth0:dhcp"])
    assert list(files) == ["90-eth0.network"]
    lines = body(files["90-eth0.network"])
    assert "Name=eth0" in lines and "DHCP=ipv4" in lines


def test_static_ipv4_with_nameserver():
    files = cmdline.generate(
        ["ip=192.0.2.10::192.0.2.1:255.255.255.0:node-1:eth0:none", "nameserver=192.0.2.53"]
    )
    assert list(files) == ["90-eth0.network"]
    lines = body(files["90-eth0.network"])
    assert "Name=eth0" in lines
    assert "DHCP=no" in lines
    assert "Address=192.0.2.10/24" in lines
    assert "Gateway=192.0.2.1" in lines
    assert "DNS=192.0.2.53" in lines


def test_static_ipv6_in_brackets():
    files = cmdline.generate(["ip=[2001:db8::10]::[2001:db8::1]:64::eth1:none"])
    lines = body(files["90-eth1.network"])
    assert "Address=2001:db8::10/64" in lines
    assert "Gateway=2001:db8::1" in lines
    assert "DHCP=no" in lines


def test_vlan_on_a_nic():
    files = cmdline.generate(
        ["vlan=eth0.100:eth0", "ip=192.0.2.20::192.0.2.1:255.255.255.0::eth0.100:none"]
    )
    assert sorted(files) == ["90-eth0.100.netdev", "90-eth0.100.network", "90-eth0.network"]
    netdev = body(files["90-eth0.100.netdev"])
    assert "Kind=vlan" in netdev and "Id=100" in netdev
    assert "VLAN=eth0.100" in body(files["90-eth0.network"])
    assert "Address=192.0.2.20/24" in body(files["90-eth0.100.network"])


def test_bond_with_options_and_mtu():
    parameters = [
        "bond=bond0:eth0,eth1:mode=802.3ad,miimon=100,xmit_hash_policy=layer3+4:9000",
        "ip=192.0.2.30::192.0.2.1:255.255.255.0::bond0:none",
    ]
    files = cmdline.generate(parameters)
    assert "Bond=bond0" in body(files["90-eth0.network"])
    assert "Bond=bond0" in body(files["90-eth1.network"])
    netdev = body(files["90-bond0.netdev"])
    assert "Kind=bond" in netdev and "MTUBytes=9000" in netdev
    # The generator reads the options and drops them ...
    assert not any(line.startswith("Mode=") for line in netdev)
    # ... so they are added here.
    completed = cmdline.add_bond_options(files, cmdline.bond_options(parameters))
    netdev = body(completed["90-bond0.netdev"])
    assert netdev[-4:] == [
        "[Bond]",
        "Mode=802.3ad",
        "MIIMonitorSec=100ms",
        "TransmitHashPolicy=layer3+4",
    ]
    assert completed["90-eth0.network"] == files["90-eth0.network"]


def test_bond_active_backup_by_number():
    options = cmdline.bond_options(["bond=bond1:eth2,eth3:mode=1,miimon=50,lacp_rate=1"])
    assert options == {
        "bond1": ["Mode=active-backup", "MIIMonitorSec=50ms", "LACPTransmitRate=fast"]
    }


@pytest.mark.parametrize(
    ("parameter", "message"),
    [
        (
            "bond=bond0:eth0:mode=lacp",
            "bond=bond0:eth0:mode=lacp: bond option mode=lacp: not one of 802.3ad,"
            " active-backup, balance-alb, balance-rr, balance-tlb, balance-xor, broadcast",
        ),
        (
            "bond=bond0:eth0:arp_interval=100",
            "bond=bond0:eth0:arp_interval=100: bond option arp_interval=100: not supported"
            " (mode, miimon, updelay, downdelay, xmit_hash_policy, lacp_rate are)",
        ),
        (
            "bond=bond0:eth0:miimon",
            "bond=bond0:eth0:miimon: bond option 'miimon' is not NAME=VALUE",
        ),
    ],
)
def test_bond_options_nothing_can_express_are_refused(parameter: str, message: str):
    with pytest.raises(cmdline.CmdlineError) as caught:
        cmdline.bond_options([parameter])
    assert str(caught.value) == message


def test_one_malformed_parameter_makes_the_generator_write_nothing_and_is_named():
    good = "ip=192.0.2.10::192.0.2.1:255.255.255.0::eth0:none"
    with pytest.raises(cmdline.CmdlineError) as caught:
        cmdline.generate([good, "vlan=eth0.5000:eth0", "nameserver=192.0.2.300"])
    assert str(caught.value) == (
        "systemd-network-generator refused vlan=eth0.5000:eth0 (Numerical result out of range),"
        " nameserver=192.0.2.300 (Invalid argument); see dracut.cmdline(7) for the syntax"
    )
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        # Each is taken silently by some version of the generator and configures nothing.
        (["vlan"], "vlan: no value"),
        (["ip=dhcp", "bond="], "bond=: no value"),
        (["vlan=eth0.100"], "vlan eth0.100: no parent interface (vlan=NAME:PARENT)"),
        (["bond=bond0"], "bond bond0: no members (bond=NAME:MEMBER,...)"),
    ],
)
def test_parameters_that_would_configure_nothing_are_refused(parameters: list[str], message: str):
    with pytest.raises(cmdline.CmdlineError) as caught:
        cmdline.generate(parameters)
    # The host's generator (systemd 252) refuses the last two itself; newer ones take them.
    assert str(caught.value) == message or "systemd-network-generator refused" in str(caught.value)


def test_split_and_select():
    words = cmdline_words(
        "BOOT_IMAGE=/vmlinuz console=ttyS0 ip=192.0.2.10::192.0.2.1:255.255.255.0::eth0:none "
        'tacet.x="a b" net.ifname_policy=mac bond=bond0:eth0 ipa-api-url=https://x'
    )
    assert words[3] == "tacet.x=a b"
    assert cmdline.network_parameters(words) == [
        "ip=192.0.2.10::192.0.2.1:255.255.255.0::eth0:none",
        "net.ifname_policy=mac",
        "bond=bond0:eth0",
    ]
    assert cmdline.value_of(["a=1", "b=2", "a=3"], "a") == "3"
    assert cmdline.value_of(["a"], "a") is None


# What systemd 257's generator (Debian 13, the ramdisk's) writes for vlan=eth0.100 and for
# bond=bond0 (systemd 252, on this host, refuses both itself).
V257_LONE_VLAN = {
    "70-eth0.100.netdev": "# Automatically generated by systemd-network-generator\n\n"
    "[NetDev]\nKind=vlan\nName=eth0.100\n\n[VLAN]\nId=100\n"
}
V257_LONE_BOND = {
    "70-bond0.netdev": "# Automatically generated by systemd-network-generator\n\n"
    "[NetDev]\nKind=bond\nName=bond0\n"
}


def test_a_vlan_without_parent_or_a_bond_without_members_is_refused():
    with pytest.raises(cmdline.CmdlineError, match=r"^vlan eth0.100: no parent interface"):
        cmdline.check_attached(V257_LONE_VLAN)
    with pytest.raises(cmdline.CmdlineError, match=r"^bond bond0: no members"):
        cmdline.check_attached(V257_LONE_BOND)
    attached = {
        **V257_LONE_VLAN,
        **V257_LONE_BOND,
        "70-eth0.network": "[Match]\nName=eth0\n\n[Network]\nVLAN=eth0.100\n",
        "70-eth1.network": "[Match]\nName=eth1\n\n[Network]\nBond=bond0\n",
    }
    cmdline.check_attached(attached)  # no error
