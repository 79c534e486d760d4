"""What a run does after its last STATE, in order: mirror routes tell Customer.io who left
their views (unless the guard holds them back: exit 8), the sync volume is checked and the
reconcile checks run (exit 7), and last a sample of the people sent is read back (exit 9,
verification.py) when all of that passed: a run that already failed verifies nothing.
Everything before is delivered and its STATE written, so these
failures cost no data; when both happen, exit 8 wins (held-back exits need a decision) and its
message carries the drift too."""

from __future__ import annotations

from collections.abc import Callable

from target_customerio.errors import DriftError, ExitGuardError


def after_last_state(
    mirror: Callable[[], list[str]],
    volume: Callable[[], dict[str, str]],
    reconcile: Callable[[], None],
    *,
    dry_run: bool,
    verify: Callable[[], None] = lambda: None,
    qa: bool = False,
) -> None:
    """`mirror` returns the guard's problems, `volume` the streams outside their range;
    `reconcile` raises DriftError, `verify` VerifyError. A dry run checks no volume (it
    delivered nothing) and verifies nothing. A QA sync (`qa`) only verifies: its sample is no
    view and no sync volume (mirror routes tell nobody they left, the volume is neither checked
    nor kept in the history), and its segments are not whole (no reconcile checks)."""
    if qa:
        if not dry_run:
            verify()
        return
    guard = mirror()
    if dry_run:
        reconcile()  # lists what it would check
        raise_guard(guard)
        return
    outside = volume()
    try:
        reconcile()
    except DriftError as drift:
        raise_guard(guard, drift)
        raise
    if outside:
        drift = DriftError("; ".join(f"{stream}: {problem}" for stream, problem in outside.items()))
        raise_guard(guard, drift)
        raise drift
    raise_guard(guard)
    verify()


def raise_guard(problems: list[str], drift: DriftError | None = None) -> None:
    """Exit 8 when a mirror route's guard held its exits back (with the drift, if any)."""
    if not problems:
        return
    also = f"; the run also found drift (exit 7): {drift}" if drift is not None else ""
    raise ExitGuardError(
        f"{len(problems)} mirror route(s) held back by max_exit_ratio: "
        + "; ".join(problems)
        + also
    )
