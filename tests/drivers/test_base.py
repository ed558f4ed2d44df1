from decimal import Decimal

from drivers.base import ArmContext, CardRead, EntryMode, WalletCode, WalletKind, mask_pan


def test_mask_pan_keeps_first6_last4() -> None:
    assert mask_pan("4761739001010010") == "476173******0010"
    assert mask_pan("123") == "***"


def test_card_read_repr_hides_pan_and_track() -> None:
    card = CardRead(
        entry_mode=EntryMode.MAGSTRIPE,
        pan="4761739001010010",
        expiry="2812",
        brand="Visa",
        track2="4761739001010010=28122011234567890",
        service_code="201",
    )
    text = repr(card) + str(card) + f"{card}"
    assert "4761739001010010" not in text
    assert "476173******0010" in text
    assert card.chip_card


def test_wallet_code_repr_masks_code() -> None:
    code = WalletCode(code="134567890123456789", wallet=WalletKind.WECHAT_PAY)
    assert "134567890123456789" not in repr(code)
    assert ArmContext(Decimal("1.00"), 634, 2).trans_type == 0
