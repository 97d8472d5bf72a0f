"""The ramdisk's network configuration, decided once at boot before systemd-networkd starts.

In order of precedence: ``network_data.json`` (the node bundle's, else a ``config-2``
config drive's), the kernel command line's dracut-style ``ip=``/``vlan=``/``bond=``/
``nameserver=`` (through systemd-network-generator), else DHCP on every NIC (the
ramdisk's ``80-tacet-wired.network``). See docs/networks.md.
"""
