"""Callback numbers against the French national numbering plan: each class, each refusal."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ivr.callbacks.numbering import REASONS, NumberPolicy, check_number
from ivr.config import CallbackConfig

ALL = NumberPolicy(True, True, True, True, True, True)


@pytest.mark.parametrize(
    ("raw", "number", "kind"),
    [
        ("0145678901", "0145678901", "geographic"),
        ("02 99 87 65 43", "0299876543", "geographic"),
        ("03.88.12.34.56", "0388123456", "geographic"),
        ("04-91-12-34-56", "0491123456", "geographic"),
        ("(05) 61 12 34 56", "0561123456", "geographic"),
        ("0612345678", "0612345678", "mobile"),
        ("0731234567", "0731234567", "mobile"),
        ("0799999999", "0799999999", "mobile"),
        ("0912345678", "0912345678", "nongeographic"),
        # France in international form, with and without the trunk 0, and as trunks show it
        ("+33612345678", "0612345678", "mobile"),
        ("+33 6 12 34 56 78", "0612345678", "mobile"),
        ("+330612345678", "0612345678", "mobile"),
        ("0033145678901", "0145678901", "geographic"),
        ("33612345678", "0612345678", "mobile"),
        # overseas departments: their own country codes, numbers of the national plan
        ("+262262123456", "0262123456", "geographic"),
        ("+262692123456", "0692123456", "mobile"),
        ("+590590123456", "0590123456", "geographic"),
        ("+596696123456", "0696123456", "mobile"),
    ],
)
def test_ordinary_numbers_are_accepted_in_the_form_the_dialplan_dials(
    raw: str, number: str, kind: str
) -> None:
    check = check_number(raw)
    assert check.ok, check
    assert (check.number, check.kind, check.reason) == (number, kind, "")


@pytest.mark.parametrize(
    ("raw", "reason", "kind"),
    [
        # withheld caller ID: the IVR must ask for digits
        ("", "withheld", "unknown"),
        ("anonymous", "withheld", "unknown"),
        ("Anonymous", "withheld", "unknown"),
        ("unknown", "withheld", "unknown"),
        ("<unknown>", "withheld", "unknown"),
        ("restricted", "withheld", "unknown"),
        ("   ", "withheld", "unknown"),
        # garbage
        ("06123456*8", "invalid_characters", "unknown"),
        ("06l2345678", "invalid_characters", "unknown"),
        ("+", "invalid_characters", "unknown"),
        ("٠٦١٢٣٤٥٦٧٨", "invalid_characters", "unknown"),  # Arabic-Indic digits are not DTMF
        ("061234567", "invalid_length", "unknown"),
        ("06123456789", "invalid_length", "unknown"),
        ("612345678", "invalid_length", "unknown"),
        # ranges the plan does not give to lines
        ("0012345678", "international_not_allowed", "international"),  # 00 is the international prefix
        ("0701234567", "unassigned", "unknown"),
        ("0712345678", "unassigned", "unknown"),
        ("0721234567", "unassigned", "unknown"),
        ("0831234567", "unassigned", "unknown"),
        ("0861234567", "unassigned", "unknown"),
        ("07001234567890", "machine_to_machine", "unknown"),
        ("123456789012", "unassigned", "unknown"),
        # 08: special and premium rate, refused by default
        ("0800123456", "special_not_allowed", "special"),
        ("0805123456", "special_not_allowed", "special"),
        ("0809123456", "special_not_allowed", "special"),
        ("0812345678", "premium_not_allowed", "premium"),
        ("0825123456", "premium_not_allowed", "premium"),
        ("0899123456", "premium_not_allowed", "premium"),
        ("0884123456", "premium_not_allowed", "premium"),
        ("+33899123456", "premium_not_allowed", "premium"),
        # short codes
        ("3949", "short_code_not_allowed", "short_code"),
        ("3010", "short_code_not_allowed", "short_code"),
        ("1016", "short_code_not_allowed", "short_code"),
        ("118218", "short_code_not_allowed", "premium"),
        # emergency: always refused
        ("15", "emergency", "emergency"),
        ("17", "emergency", "emergency"),
        ("18", "emergency", "emergency"),
        ("112", "emergency", "emergency"),
        ("114", "emergency", "emergency"),
        ("115", "emergency", "emergency"),
        ("119", "emergency", "emergency"),
        ("116000", "emergency", "emergency"),
        ("116117", "emergency", "emergency"),
        # abroad
        ("+442071234567", "international_not_allowed", "international"),
        ("004915123456789", "international_not_allowed", "international"),
        ("+1", "invalid_length", "international"),
        ("+1234567890123456", "invalid_length", "international"),
    ],
)
def test_refusals_have_a_clear_reason(raw: str, reason: str, kind: str) -> None:
    check = check_number(raw)
    assert not check.ok
    assert (check.reason, check.kind) == (reason, kind)
    assert reason in REASONS and check.explanation == REASONS[reason]


def test_flags_open_each_class_and_only_that_class() -> None:
    samples = {
        "geographic": "0145678901",
        "mobile": "0612345678",
        "nongeographic": "0912345678",
        "special": "0800123456",
        "premium": "0899123456",
        "international": "+442071234567",
        "short_code": "3949",
    }
    flags = {
        "geographic": "allow_geographic",
        "mobile": "allow_mobile",
        "nongeographic": "allow_nongeographic",
        "special": "allow_premium",
        "premium": "allow_premium",
        "international": "allow_international",
        "short_code": "allow_short_codes",
    }
    nothing = NumberPolicy(False, False, False, False, False, False)
    for kind, raw in samples.items():
        assert not check_number(raw, nothing).ok
        assert check_number(raw, nothing).reason == f"{kind}_not_allowed"
        policy = NumberPolicy(**{f: f == flags[kind] for f in set(flags.values())})
        opened = {k for k, r in samples.items() if check_number(r, policy).ok}
        expected = {k for k in samples if flags[k] == flags[kind]}
        assert opened == expected, kind
    # 118xxx is a premium short number: it needs both flags
    assert not check_number("118218", NumberPolicy(allow_premium=True)).ok
    assert not check_number("118218", NumberPolicy(allow_short_codes=True)).ok
    assert check_number("118218", NumberPolicy(allow_premium=True, allow_short_codes=True)).ok


def test_international_numbers_are_dialled_with_00() -> None:
    check = check_number("+44 20 7123 4567", ALL)
    assert check.ok and check.number == "00442071234567" and check.kind == "international"


def test_emergency_numbers_are_refused_whatever_the_policy() -> None:
    for raw in ("15", "17", "18", "112", "196", "116000"):
        check = check_number(raw, ALL)
        assert not check.ok and check.reason == "emergency"


def test_policy_from_config() -> None:
    cfg = CallbackConfig(allow_mobile=False, allow_premium=True)
    policy = NumberPolicy.from_config(cfg)
    assert check_number("0612345678", policy).reason == "mobile_not_allowed"
    assert check_number("0899123456", policy).ok
    assert check_number("0145678901", policy).ok


@given(st.text(max_size=40))
def test_any_text_gets_a_verdict_never_an_exception(raw: str) -> None:
    check = check_number(raw)
    assert check.ok == (check.reason == "")
    if check.ok:
        # what is accepted by default is exactly what the shipped dialplan dials
        assert len(check.number) == 10 and check.number[0] == "0" and check.number[1] in "1234567" + "9"
    else:
        assert check.reason in REASONS
