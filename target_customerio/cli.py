"""The `target-customerio` command: the target's CLI, once the installed singer-sdk is checked."""

from __future__ import annotations

import sys

from target_customerio.errors import SdkMismatch


def main() -> None:
    try:
        from target_customerio.target import TargetCustomerIO
    except SdkMismatch as exc:  # one line, not a traceback: the install is wrong, not the code
        sys.stderr.write(f"target-customerio: {exc}\n")
        sys.exit(1)
    TargetCustomerIO.cli()
