"""Identifiers are checked as they are sent: trimmed, NFC, emails lower-cased, then every rule
(150 bytes, printable, the type) holds for the value that goes out."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from target_customerio.operations.identifiers import (
    MAX_IDENTIFIER_BYTES,
    as_sent,
    identifier_value,
)
from target_customerio.operations.operation import Rejected
from target_customerio.operations.payload import normalise_email

KINDS = st.sampled_from(["id", "email", "cio_id"])
TEXT = st.text(st.characters(codec="utf-8"), max_size=80) | st.text(max_size=200)


@settings(max_examples=400, deadline=None)
@given(TEXT, KINDS, st.text(" \t\n", max_size=60))
def test_an_identifier_that_is_sent_keeps_every_rule_as_sent(text, kind, padding):
    try:
        value = identifier_value({"c": text + padding}, "c", kind)
    except Rejected as rejected:
        assert rejected.reason in ("missing_identifier", "invalid_identifier")
        return
    assert value == as_sent(value, kind)  # what goes out is already normal
    assert len(value.encode()) <= MAX_IDENTIFIER_BYTES
    assert value.isprintable() and value == value.strip()
    assert unicodedata.is_normalized("NFC", value)
    if kind == "email":
        assert value == value.lower() and "@" in value
    # CHAR(n) padding changes nothing: the padded and unpadded rows are one person
    assert identifier_value({"c": text}, "c", kind) == value


def test_a_padded_char_column_email_is_trimmed_before_its_length_is_checked():
    email = "a" * 100 + "@example.com"
    assert identifier_value({"c": email + " " * 200}, "c", "email") == email


def test_an_email_that_lower_casing_makes_too_long_is_rejected():
    email = "İ" * 70 + "@x.io"  # 145 bytes as read, 215 once lower-cased (what is sent)
    assert len(email.encode()) <= MAX_IDENTIFIER_BYTES
    with pytest.raises(Rejected, match="longer than 150 bytes"):
        identifier_value({"c": email}, "c", "email")


def test_ids_keep_their_case_and_emails_are_one_form():
    assert identifier_value({"c": " Ab1 "}, "c", "id") == "Ab1"
    decomposed = "Jose\u0301@Example.com"
    assert identifier_value({"c": decomposed}, "c", "email") == "jos\u00e9@example.com"
    payload = {"email": f" {decomposed} "}
    normalise_email(payload)
    assert payload["email"] == "jos\u00e9@example.com"
