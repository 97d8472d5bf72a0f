from hardware.dmi import SystemCollector, parse_system_vendor


def test_missing_dmi_directory_gives_all_null(tmp_path):
    vendor = SystemCollector(tmp_path).collect()
    assert vendor.manufacturer is None
    assert vendor.serial_number is None
    assert vendor.uuid is None
    assert vendor.firmware.vendor is None


def test_junk_values_are_normalised_and_real_ones_kept(tree):
    root = tree(
        {
            "class/dmi/id/sys_vendor": "ASRock\n",
            "class/dmi/id/product_name": "To Be Filled By O.E.M.\n",
            "class/dmi/id/product_serial": "Default string\n",
            "class/dmi/id/product_uuid": "03000200-0400-0500-0006-000700080009\n",
            "class/dmi/id/bios_vendor": "American Megatrends Inc.\n",
            "class/dmi/id/bios_version": "P2.10\n",
            "class/dmi/id/bios_date": "06/02/2021\n",
        }
    )
    vendor = SystemCollector(root).collect()
    assert vendor.manufacturer == "ASRock"
    assert vendor.product_name is None
    assert vendor.serial_number is None
    assert vendor.uuid is None
    assert vendor.firmware.vendor == "American Megatrends Inc."
    assert vendor.firmware.version == "P2.10"
    assert vendor.firmware.build_date == "06/02/2021"


def test_uuid_is_lower_cased():
    vendor = parse_system_vendor({"product_uuid": "7AC0D5A4-0B1E-4A36-9B3E-1D2C3B4A5F60"})
    assert vendor.uuid == "7ac0d5a4-0b1e-4a36-9b3e-1d2c3b4a5f60"
