# Defaults of the tacet-ramdisk-pack element; see README.md.
# zstd level of <name>.initramfs (1-19; higher is smaller and slower to build, unpacking
# speed hardly changes).
export TACET_RAMDISK_ZSTD_LEVEL=${TACET_RAMDISK_ZSTD_LEVEL:-19}
