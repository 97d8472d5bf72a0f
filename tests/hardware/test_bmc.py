from hardware.bmc import BmcCollector, parse_lan6_print, parse_lan_print
from hardware.runner import RecordedRunner, command_file_name

# Shape of `ipmitool lan print` (ipmitool 1.8.19) on a Supermicro BMC.
LAN_PRINT = """Set in Progress         : Set Complete
Auth Type Support       : NONE MD2 MD5 PASSWORD
IP Address Source       : DHCP Address
IP Address              : 192.0.2.45
Subnet Mask             : 255.255.255.0
MAC Address             : 0C:C4:7A:12:34:56
SNMP Community String   : public
Default Gateway IP      : 192.0.2.1
Default Gateway MAC     : 00:00:00:00:00:00
802.1q VLAN ID          : Disabled
"""

LAN_PRINT_UNSET = LAN_PRINT.replace("192.0.2.45", "0.0.0.0")

LAN6_PRINT = """IPv6/IPv4 Support:        IPv6 and IPv4 simultaneously
IPv6 Static Address 0:
    Enabled:        yes
    Address:        2001:db8::45/64
    Status:         active
IPv6 Dynamic Address 0:
    Source/Type:    SLAAC
    Address:        fe80::ec4:7aff:fe12:3456/64
"""


def test_lan_print():
    assert parse_lan_print(LAN_PRINT) == ("192.0.2.45", "0c:c4:7a:12:34:56")
    assert parse_lan_print(LAN_PRINT_UNSET) == (None, "0c:c4:7a:12:34:56")
    assert parse_lan_print("") == (None, None)
    assert parse_lan_print("IP Address : not-an-ip\nMAC Address : zz\n") == (None, None)


def test_lan6_print_prefers_non_link_local():
    assert parse_lan6_print(LAN6_PRINT) == "2001:db8::45"
    assert parse_lan6_print("    Address:        ::/0\n") is None


def write(directory, argv, text):
    directory.mkdir(exist_ok=True)
    (directory / command_file_name(argv)).write_text(text)


def test_no_ipmi_device_means_no_ipmitool_call(tmp_path):
    write(tmp_path, ["ipmitool", "lan", "print", "1"], LAN_PRINT)
    bmc = BmcCollector(lambda: False, RecordedRunner(tmp_path)).collect()
    assert (bmc.address, bmc.v6address, bmc.mac) == (None, None, None)


def test_walks_channels_until_an_address(tmp_path):
    write(tmp_path, ["ipmitool", "lan", "print", "1"], LAN_PRINT_UNSET)
    write(tmp_path, ["ipmitool", "lan", "print", "2"], LAN_PRINT)
    write(tmp_path, ["ipmitool", "lan6", "print"], LAN6_PRINT)
    bmc = BmcCollector(lambda: True, RecordedRunner(tmp_path)).collect()
    assert (bmc.address, bmc.v6address, bmc.mac) == (
        "192.0.2.45",
        "2001:db8::45",
        "0c:c4:7a:12:34:56",
    )


def test_ipmitool_missing_gives_nulls(tmp_path):
    bmc = BmcCollector(lambda: True, RecordedRunner(tmp_path)).collect()
    assert (bmc.address, bmc.v6address, bmc.mac) == (None, None, None)
