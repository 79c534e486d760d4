"""Each kind of failure names its own cause on the run's last line (the line Meltano shows last):
a new exit code cannot fall back to the generic `error` unnoticed."""

from __future__ import annotations

from target_customerio import errors


def _subclasses(cls: type) -> list[type]:
    return [sub for child in cls.__subclasses__() for sub in (child, *_subclasses(child))]


def test_every_exit_code_has_a_cause_of_its_own():
    kinds = [k for k in _subclasses(errors.TargetError) if k.__module__ == errors.__name__]
    by_code = {k.exit_code: k for k in kinds}
    assert {2, 3, 4, 5, 6, 7, 8, 9, 10, 143} <= set(by_code)
    for kind in kinds:
        if kind.exit_code != errors.TargetError.exit_code:
            assert "cause" in vars(kind) and kind.cause != "error", kind.__name__
