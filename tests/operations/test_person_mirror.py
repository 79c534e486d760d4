"""`kind: person` with `mirror: true`: its options, what the ledger keeps about a person sent,
and the operation each `on_exit` sends for a person who left the view."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from target_customerio.errors import ConfigError
from target_customerio.operations.operation import Rejected
from target_customerio.operations.person import exit_operation, member
from target_customerio.settings import load_settings
from tests.operations.helpers import EVENT, PERSON, Kind, route

MIRROR = {**PERSON, "mirror": True}
SCOPE = "https://track.example\x1fsite\x1fpublic-vip"


def test_mirror_defaults_to_unset_with_a_tenth_as_the_guard():
    mirror = route(MIRROR).mirror
    assert mirror is not None and (mirror.on_exit, mirror.max_exit_ratio) == ("unset", 0.1)
    assert route(PERSON).mirror is None
    assert route({**MIRROR, "mirror": False}).mirror is None
    custom = route({**MIRROR, "on_exit": "suppress", "max_exit_ratio": 1}).mirror
    assert (custom.on_exit, custom.max_exit_ratio) == ("suppress", 1.0)


@pytest.mark.parametrize(
    "spec,message",
    [
        ({**EVENT, "mirror": True}, "mirror: does not apply to a event route"),
        ({**EVENT, "on_exit": "unset"}, "on_exit: does not apply to a event route"),
        ({**PERSON, "on_exit": "delete"}, "on_exit: applies only with `mirror: true`"),
        ({**PERSON, "max_exit_ratio": 0.2}, "max_exit_ratio: applies only with `mirror: true`"),
        ({**MIRROR, "on_exit": "remove"}, "on_exit: 'remove' is not one of unset, suppress"),
        ({**MIRROR, "max_exit_ratio": -0.1}, "max_exit_ratio: a share from 0 to 1"),
        ({**MIRROR, "max_exit_ratio": True}, "max_exit_ratio: a share from 0 to 1"),
        ({**MIRROR, "mirror": "yes"}, "mirror: true or false"),
        ({**MIRROR, "on_delete": "delete"}, "on_delete: does not apply with `mirror: true`"),
        ({**MIRROR, "mirorr": True}, "did you mean `mirror`"),
    ],
)
def test_options_fail_closed(spec, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        route(spec)


def test_a_mirror_route_needs_the_ledger():
    config = {"site_id": "s", "api_key": "k", "streams": {"public-vip": MIRROR}}
    assert load_settings(config, Path(".")).routes.match("public-vip").mirror is not None
    with pytest.raises(ConfigError, match="streams.public-vip: .* needs change_detection"):
        load_settings({**config, "change_detection": False}, Path("."))


def test_the_ledger_keeps_the_identifier_and_the_attribute_names_sent():
    op = Kind(MIRROR, ledger_scope=SCOPE).map(
        {"customer_id": 7, "vip_tier": "gold", "email": "A@B.CO", "since": None}
    )
    assert orjson.loads(member(op.body)) == ["id", "7", ["email", "since", "vip_tier"]]


def test_a_rejected_record_still_says_whom_it_is_about():
    kind = Kind({**MIRROR, "contract": "builtin:customer"}, ledger_scope=SCOPE)
    good = kind.map({"customer_id": 7, "orders_count": 2, "last_order_at": 1_700_000_000})
    bad = {"customer_id": 7, "orders_count": -1}
    with pytest.raises(Rejected):
        kind.build(bad)
    assert good.ledger is not None and kind.builder.member_key(bad) == good.ledger[0]
    assert kind.builder.member_key({"customer_id": " "}) is None  # no one to tell
    assert Kind(MIRROR).builder.member_key(bad) is None  # no ledger, no key


def test_unset_sends_every_attribute_last_sent_as_null():
    body = exit_operation("unset", orjson.dumps(["email", "a@b.co", ["tier", "vip"]]).decode())
    assert body is not None and orjson.loads(body) == {
        "type": "person",
        "action": "identify",
        "identifiers": {"email": "a@b.co"},
        "attributes": {"tier": None, "vip": None},
    }


@pytest.mark.parametrize("action", ["suppress", "delete"])
def test_suppress_and_delete_send_that_action(action):
    body = exit_operation(action, orjson.dumps(["id", "C1", ["tier"]]).decode())
    assert body is not None
    assert orjson.loads(body) == {"type": "person", "action": action, "identifiers": {"id": "C1"}}


def test_ignore_and_nothing_to_unset_send_nothing():
    assert exit_operation("ignore", orjson.dumps(["id", "C1", ["tier"]]).decode()) is None
    assert exit_operation("unset", orjson.dumps(["id", "C1", []]).decode()) is None
