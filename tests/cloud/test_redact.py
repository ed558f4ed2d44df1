"""``cloud.redact``: what may be kept of a text from outside."""

from __future__ import annotations

import pytest

from cloud import redact
from drivers.base import mask_pan as driver_mask_pan


@pytest.mark.parametrize(
    ("pan", "masked"),
    [
        ("476173900101", "47******0101"),
        ("4761739001010", "476******1010"),
        ("476173900101001", "47617******1001"),
        ("4761739001010010", "476173******0010"),
        ("4761739001010010123", "476173*********0123"),
    ],
)
def test_pans_of_12_to_19_digits_keep_at_most_6_and_4_and_hide_6(pan: str, masked: str) -> None:
    assert redact.mask_pan(pan) == masked
    assert driver_mask_pan(pan) == masked  # the drivers' copy says the same


def test_digit_runs_masked_never_refused() -> None:
    text = "Declined: card 4761739001010010 ref 123456789012 (call 5413330089010434567890)"
    out = redact.mask_digit_runs(text)
    assert "4761739001010010" not in out
    assert "476173******0010" in out
    assert "123456789012" in out  # 12 digits: a reference, kept
    assert "5413330089010434567890" not in out


def test_printable_and_short() -> None:
    assert redact.printable("\x1b[2Jhi\u202e\x07", 64) == "?[2Jhi??"
    assert redact.printable("a" * 100, 10) == "aaaaaaa..."
    assert redact.safe("id 4761739001010010 \x00", 64) == "id 476173******0010 ?"
