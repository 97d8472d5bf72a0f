# Defaults of the tacet-ramdisk element; see README.md for each variable.

# The Tacet wheel built on the host (tools/build-ramdisk sets it).
export TACET_WHEEL=${TACET_WHEEL:-}

# Kernel modules kept in the ramdisk (names as modprobe knows them); their dependencies
# are added automatically. Everything else under /lib/modules is removed.
export TACET_RAMDISK_MODULES=${TACET_RAMDISK_MODULES:-"
virtio_pci virtio_net virtio_blk virtio_scsi virtio_rng
e1000 e1000e igb igc ixgbe ixgbevf i40e iavf ice bnxt_en bnx2 bnx2x tg3 mlx4_en mlx5_core
qede be2net enic vmxnet3 r8169 sfc
ahci ata_piix ata_generic nvme sd_mod sr_mod sg
megaraid_sas mpt3sas smartpqi aacraid hpsa isci mptsas vmw_pvscsi
xhci_pci ehci_pci usb_storage uas
ext4 vfat xfs isofs nls_cp437 nls_iso8859_1 nls_utf8 loop dm_mod raid0 raid1 raid10 raid456
bonding 8021q
ipmi_si ipmi_devintf ipmi_ssif
efivarfs
"}
# More modules on top of the default list (the usual way to extend it).
export TACET_RAMDISK_EXTRA_MODULES=${TACET_RAMDISK_EXTRA_MODULES:-}

# Firmware files kept (shell globs relative to /lib/firmware). Debian's main component
# ships little firmware; add packages from non-free-firmware with -p and
# DIB_DEBIAN_COMPONENTS=main,non-free-firmware, then list what to keep here.
export TACET_RAMDISK_FIRMWARE=${TACET_RAMDISK_FIRMWARE:-"
bnx2/* bnx2x/* tigon/* intel/ice/ddp/* qed/* mellanox/* rtl_nic/*
"}
export TACET_RAMDISK_EXTRA_FIRMWARE=${TACET_RAMDISK_EXTRA_FIRMWARE:-}
