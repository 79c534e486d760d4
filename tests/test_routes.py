"""Unit tests: routes and settings fail fast with a message naming what is wrong."""

from __future__ import annotations

import unicodedata
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from target_customerio.errors import ConfigError
from target_customerio.routes import Routes
from target_customerio.settings import load_settings
from target_customerio.values import snake_case

PERSON = {"kind": "person", "identifier": {"field": "id", "type": "id"}}


def test_exact_route_wins_over_glob():
    routes = Routes(
        {
            "*-customers": PERSON,
            "dbo-customers": {**PERSON, "identifier": {"field": "email", "type": "email"}},
        },
        Path("."),
        "reject",
    )
    assert routes.match("dbo-customers").options.identifier.type == "email"
    assert routes.match("public-customers").options.identifier.type == "id"
    assert routes.match("public-orders") is None


@pytest.mark.parametrize(
    "spec, words",
    [
        ({"kind": "person"}, "identifier"),
        ({**PERSON, "kind": "merge_later"}, "kind"),
        ({**PERSON, "identifier": {"field": "id", "type": "phone"}}, "identifier.type"),
        (
            {"kind": "event", "identifier": {"field": "id"}, "event_id": ["id"], "timestamp": "t"},
            "exactly one of `event_name` or `event_name_field`",
        ),
        (
            {
                "kind": "event",
                "identifier": {"field": "id"},
                "event_name": "x",
                "event_id": ["id"],
                "timestamp": "t",
                "max_age": "soon",
            },
            "max_age",
        ),
        (
            {"kind": "event", "identifier": {"field": "id"}, "event_name": "x", "event_id": ["id"]},
            "timestamp",
        ),
        ({**PERSON, "source_timezone": "Mars/Base"}, "source_timezone"),
        ({**PERSON, "contract": "nope.json"}, "cannot read"),
        ({**PERSON, "contract": "builtin:nope"}, "no built-in contract"),
        ({**PERSON, "colour": "blue"}, "unknown option"),
    ],
)
def test_bad_routes_name_the_setting(spec, words):
    with pytest.raises(ConfigError, match="streams.s|contract|built-in") as err:
        Routes({"s": spec}, Path("."), "reject")
    assert words in str(err.value)


@pytest.mark.parametrize(
    "config, words",
    [
        ({"api_key": "k"}, "site_id"),
        ({"site_id": "s"}, "api_key"),
        ({"site_id": "s", "api_key": "k", "region": "ap"}, "region"),
        ({"site_id": "s", "api_key": "k", "track_api_url": "http://example.com"}, "loopback"),
        ({"site_id": "s", "api_key": "k", "max_requests_per_second": 0}, "max_requests_per_second"),
        ({"site_id": "s", "api_key": "k"}, "streams"),
    ],
)
def test_bad_settings_name_the_setting(config, words):
    config = {"streams": {"s": PERSON}, **config} if words != "streams" else config
    with pytest.raises(ConfigError) as err:
        load_settings(config, Path("."))
    assert words in str(err.value)
    assert "k" not in str(err.value).split()  # the api_key value is never part of a message


def test_loopback_http_and_regions_resolve():
    base = {"site_id": "s", "api_key": "k", "streams": {"s": PERSON}}
    assert load_settings(base, Path(".")).base_url == "https://track.customer.io"
    assert (
        load_settings({**base, "region": "eu"}, Path(".")).base_url
        == "https://track-eu.customer.io"
    )
    local = load_settings({**base, "track_api_url": "http://127.0.0.1:8089/"}, Path("."))
    assert (local.base_url, local.region) == ("http://127.0.0.1:8089", None)
    assert load_settings(
        {**base, "streams": '{"s": {"kind": "person", "identifier": {"field": "id"}}}'}, Path(".")
    ).routes.match("s")


@pytest.mark.parametrize(
    "raw, name",
    [
        ("Order Placed", "order_placed"),
        ("OrderPlaced", "order_placed"),
        ("order-placed", "order_placed"),
        (" checkout.started ", "checkout_started"),
    ],
)
def test_snake_case(raw, name):
    assert snake_case(raw) == name


@pytest.mark.parametrize(
    "raw, name",
    [
        ("Café Visité", "café_visité"),
        ("ÜBER uns", "über_uns"),
        ("Cafe\u0301 Visite\u0301", "café_visité"),  # decomposed: NFC, the same name
        ("ÉtéPlus", "été_plus"),
        ("日本語 イベント", "日本語_イベント"),
    ],
)
def test_snake_case_keeps_unicode_letters(raw, name):
    assert snake_case(raw) == name


@given(st.text(max_size=40))
def test_snake_case_keeps_every_letter_and_digit_and_only_them(raw):
    """Unicode letters and digits (with their combining marks) are kept, lower-cased and NFC,
    joined by single underscores; nothing else is."""
    name = snake_case(raw)
    assert unicodedata.is_normalized("NFC", name)
    assert snake_case(name) == name
    assert "__" not in name and not name.startswith("_") and not name.endswith("_")
    kept = [c for c in unicodedata.normalize("NFC", raw) if c.isalnum() or _mark(c)]
    assert name.replace("_", "").casefold() == unicodedata.normalize(
        "NFC", "".join(kept).lower()
    ).casefold().replace("_", "")


def _mark(char: str) -> bool:
    return unicodedata.category(char).startswith("M")
