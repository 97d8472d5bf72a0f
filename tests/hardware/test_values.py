import pytest

from hardware.values import clean_firmware_string


@pytest.mark.parametrize(
    "raw",
    [
        "To Be Filled By O.E.M.",
        "to be filled by o.e.m.",
        "Default string",
        "  Default String \n",
        "Not Specified",
        "System Serial Number",
        "0123456789",
        "00000000-0000-0000-0000-000000000000",
        "FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF",
        "ffffffffffff",
        "\xff\xff\xff\xff",
        "03000200-0400-0500-0006-000700080009",
        "",
        "   ",
        "\x00\x00",
        "0000",
        "None",
    ],
)
def test_placeholders_become_none(raw):
    assert clean_firmware_string(raw) is None


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Dell Inc.", "Dell Inc."),
        ("  PowerEdge R650 \n", "PowerEdge R650"),
        ("CZJ1234567", "CZJ1234567"),
        ("1.2.3", "1.2.3"),
        ("7ac0d5a4-0b1e-4a36-9b3e-1d2c3b4a5f60", "7ac0d5a4-0b1e-4a36-9b3e-1d2c3b4a5f60"),
        ("0012", "0012"),
        ("F00D", "F00D"),
    ],
)
def test_real_values_are_kept(raw, expected):
    assert clean_firmware_string(raw) == expected


def test_none_stays_none():
    assert clean_firmware_string(None) is None
