"""Local Customer.io Track API sandbox: for tests (faults, inspection) and as a QA workspace."""

from target_customerio.sandbox.server import Sandbox, main

__all__ = ["Sandbox", "main"]
