"""Fatal errors and the exit codes they end the run with.

Every error here is printed as one line on stderr; none carries a traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class TargetError(Exception):
    """A fatal, explained failure of the run. `cause` names it in a few words in the run's
    last line (`target-customerio failed (api_key refused): ...`), the one Meltano shows."""

    exit_code = 1
    cause = "error"

    def __init__(self, message: str = "", *, cause: str | None = None) -> None:
        super().__init__(message)
        if cause:
            self.cause = cause


class ConfigError(TargetError):
    """A setting or route is wrong; nothing was sent."""

    exit_code = 2
    cause = "configuration"


class CredentialsError(TargetError):
    """Customer.io refused the credentials, or the workspace is in another region."""

    exit_code = 3
    cause = "credentials refused"


class DeliveryError(TargetError):
    """Customer.io could not be reached or refused a request after all retries."""

    exit_code = 4
    cause = "delivery failed"
    tries = 0  # the tries a batch that was given up on took (0: not a batch's)


class InputError(TargetError):
    """The Singer stream itself is malformed."""

    exit_code = 5
    cause = "bad input"


class ContractError(TargetError):
    """A record broke its contract and the route says to fail."""

    exit_code = 6
    cause = "contract violated"


class DriftError(TargetError):
    """Customer.io disagrees with the database: a segment count outside its tolerance."""

    exit_code = 7
    cause = "drift"


class ExitGuardError(TargetError):
    """A mirror route would lose more than `max_exit_ratio` of the people (or memberships) it
    knows in one run: nobody left its view; everything else was delivered."""

    exit_code = 8
    cause = "max_exit_ratio"


class CampaignGuardError(TargetError):
    """The run's events would start a live campaign for more people than
    `max_campaign_entries`: it stopped before the first event past the limit; what was
    delivered before it stays, and no STATE after it was written."""

    exit_code = 10
    cause = "max_campaign_entries"


class VerifyError(TargetError):
    """Read back after the run, Customer.io does not hold what the run sent to some of the
    sampled people (the report's `verification` lists them); everything was delivered."""

    exit_code = 9
    cause = "verification"


class Terminated(TargetError):
    """SIGTERM or SIGINT: drained what could be drained, then stopped."""

    exit_code = 143
    cause = "stopped by signal"


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """` (did you mean `x`?)` for the known name closest to a mistyped one, else nothing."""
    close = difflib.get_close_matches(str(name).lower(), list(known), n=1, cutoff=0.6)
    return f" (did you mean `{close[0]}`?)" if close else ""


class SdkMismatch(ImportError):
    """The installed singer-sdk lacks a member this target relies on (sdk.py checks them)."""
