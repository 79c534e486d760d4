"""singer-sdk's standard target tests, run in-process against a local Track API workspace.

Routes send every standard stream to Customer.io as people keyed by its id column. Where a
standard test feeds data worth checking, a subclass's `validate()` asserts what landed.
"""

from __future__ import annotations

import atexit

from singer_sdk.testing import get_target_test_class
from singer_sdk.testing.suites import SingerTestSuite
from singer_sdk.testing.target_tests import (
    TargetArrayData,
    TargetCamelcaseComplexSchema,
    TargetCamelcaseTest,
    TargetCliPrintsTest,
    TargetDuplicateRecords,
    TargetEncodedStringData,
    TargetInvalidSchemaTest,
    TargetNoPrimaryKeys,
    TargetOptionalAttributes,
    TargetPrimaryKeyUpdates,
    TargetRecordBeforeSchemaTest,
    TargetRecordMissingKeyProperty,
    TargetRecordMissingOptionalFields,
    TargetRecordMissingRequiredProperty,
    TargetSchemaNoProperties,
    TargetSchemaUpdates,
    TargetSpecialCharsInAttributes,
)

from target_customerio.sandbox import Sandbox
from target_customerio.target import TargetCustomerIO
from tests.harness import API_KEY, SITE_ID

WORKSPACE = Sandbox(site_id=SITE_ID, api_key=API_KEY, db_path=":memory:")
WORKSPACE.start()
atexit.register(WORKSPACE.stop)

PERSON_BY = lambda column: {"kind": "person", "identifier": {"field": column, "type": "id"}}  # noqa: E731
CONFIG = {
    "site_id": SITE_ID,
    "api_key": API_KEY,
    "track_api_url": WORKSPACE.url,
    "streams": {
        "TestCamelcase": PERSON_BY("Id"),
        "ForecastingTypeToCategory": PERSON_BY("Id"),
        "test:SpecialChars!in?attributes": PERSON_BY("_id"),
        # Their one column is an object: a route must name a column the SCHEMA declares.
        "test_object_schema_*": PERSON_BY("object_store"),
        "*": PERSON_BY("id"),
    },
}


def _attributes(person_id: str) -> dict:
    person = WORKSPACE.person(id=person_id)
    assert person is not None, f"person {person_id} not in the workspace"
    return person["attributes"]


class FreshWorkspace:
    """Each validated test starts from an empty workspace: other tests' people can't mask it."""

    def setup(self) -> None:
        WORKSPACE.reset()


class ArrayDataLands(FreshWorkspace, TargetArrayData):
    def validate(self) -> None:
        assert _attributes("3")["fruits"] == ["pear"]


class CamelcaseLands(FreshWorkspace, TargetCamelcaseTest):
    def validate(self) -> None:
        assert _attributes("2")["clientName"] == "Gitter iOS App"


class DuplicatesKeepTheLastWrite(FreshWorkspace, TargetDuplicateRecords):
    def validate(self) -> None:
        assert (
            _attributes("1")["metric"] == 100
        )  # the last row for id 1 wins: one person's ops stay ordered


class EncodedStringsLand(FreshWorkspace, TargetEncodedStringData):
    def validate(self) -> None:
        assert _attributes("3")["info"] == {
            "name": "chinese",
            "value": "简单的字串",
        }  # the last stream's row 3
        assert _attributes("2")["strings"] == ["chaîne simple", 'quoted "string"']


class SchemaUpdatesLand(FreshWorkspace, TargetSchemaUpdates):
    def validate(self) -> None:
        assert any("a3" in p["attributes"] for p in WORKSPACE.people())


class SpecialCharsLand(FreshWorkspace, TargetSpecialCharsInAttributes):
    def validate(self) -> None:
        assert _attributes("a2e98886")["d"]["agent:os:version"] == "10.13.1"


# Every standard test but TargetMultipleStateMessages, which expects a STATE after each
# row-count drain; this target packs by request size and checkpoints by time instead
# (tests/test_target.py proves STATE never runs ahead of delivery).
TestTargetCustomerIO = get_target_test_class(
    TargetCustomerIO,
    config=CONFIG,
    include_target_tests=False,
    custom_suites=[
        SingerTestSuite(
            kind="target",
            tests=[
                ArrayDataLands,
                CamelcaseLands,
                DuplicatesKeepTheLastWrite,
                EncodedStringsLand,
                SchemaUpdatesLand,
                SpecialCharsLand,
                TargetCamelcaseComplexSchema,
                TargetCliPrintsTest,
                TargetInvalidSchemaTest,
                TargetNoPrimaryKeys,
                TargetOptionalAttributes,
                TargetPrimaryKeyUpdates,
                TargetRecordBeforeSchemaTest,
                TargetRecordMissingKeyProperty,
                TargetRecordMissingOptionalFields,
                TargetRecordMissingRequiredProperty,
                TargetSchemaNoProperties,
            ],
        )
    ],
)
