"""Fatal errors and the exit codes they end the run with.

Every error here is printed as one line on stderr; none carries a traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class TargetError(Exception):
    """A fatal, explained failure of the run."""

    exit_code = 1


class ConfigError(TargetError):
    """A setting or route is wrong; nothing was sent."""

    exit_code = 2


class CredentialsError(TargetError):
    """Customer.io refused the credentials, or the workspace is in another region."""

    exit_code = 3


class DeliveryError(TargetError):
    """Customer.io could not be reached or refused a request after all retries."""

    exit_code = 4
    tries = 0  # the tries a batch that was given up on took (0: not a batch's)


class InputError(TargetError):
    """The Singer stream itself is malformed."""

    exit_code = 5


class ContractError(TargetError):
    """A record broke its contract and the route says to fail."""

    exit_code = 6


class DriftError(TargetError):
    """Customer.io disagrees with the database: a segment count outside its tolerance."""

    exit_code = 7


class ExitGuardError(TargetError):
    """A mirror route would lose more than `max_exit_ratio` of the people (or memberships) it
    knows in one run: nobody left its view; everything else was delivered."""

    exit_code = 8


class VerifyError(TargetError):
    """Read back after the run, Customer.io does not hold what the run sent to some of the
    sampled people (the report's `verification` lists them); everything was delivered."""

    exit_code = 9


class Terminated(TargetError):
    """SIGTERM or SIGINT: drained what could be drained, then stopped."""

    exit_code = 143


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """` (did you mean `x`?)` for the known name closest to a mistyped one, else nothing."""
    close = difflib.get_close_matches(str(name).lower(), list(known), n=1, cutoff=0.6)
    return f" (did you mean `{close[0]}`?)" if close else ""


class SdkMismatch(ImportError):
    """The installed singer-sdk lacks a member this target relies on (sdk.py checks them)."""
