"""What a run reads back from Customer.io's App API after its delivery, and what that needs
from the start: the one App API client reconcile checks and verification share (its 10
requests a second), the sample of the people sent (run_sample.py), a QA sync's hold on the
records (qa_sync.py), and the verification itself (verification.py)."""

from __future__ import annotations

import logging

from target_customerio import verification
from target_customerio.app_api import AppClient
from target_customerio.delivery import Delivery, DryRun
from target_customerio.qa_sync import QaSync
from target_customerio.report import RunReport
from target_customerio.run_sample import RunSample
from target_customerio.settings import Settings


class ReadBack:
    def __init__(
        self,
        settings: Settings,
        app_api_key: str,
        delivery: Delivery | DryRun,
        report: RunReport,
        logger: logging.Logger,
    ) -> None:
        self._settings, self._key = settings, app_api_key
        self._report, self._logger = report, logger
        self.qa = _qa_sync(settings, report, logger)
        self.sample: RunSample | None = None  # whom the run sent what, to read back
        size = settings.qa_sample or settings.verify_sample  # a QA sync verifies everyone
        if isinstance(delivery, Delivery) and size:
            self.sample = delivery.sample = RunSample(size)
        self._app: AppClient | None = None

    def app_client(self) -> AppClient:
        """The run's one App API client: reconcile checks and verification share its rate."""
        if self._app is None:
            self._app = AppClient(
                self._settings.app_base_url,
                self._key,
                timeout=self._settings.request_timeout,
                max_retries=self._settings.max_retries,
                logger=self._logger,
            )
        return self._app

    def verify(self, started_at: float) -> None:
        """The sample read back, last: the report's `verification`; VerifyError (exit 9) on a
        discrepancy unless on_verify_failure is warn."""
        if self.sample is None:
            return
        people = self.sample.chosen()
        if not people:  # a run that sent nobody anything (a checks job, all unchanged)
            self._logger.info("verification: the run sent nobody anything: nothing to read back")
            return
        self._logger.info(
            "verification: reading back %d people from Customer.io (verify_timeout %gs)",
            len(people),
            self._settings.verify_timeout,
        )
        verifier = verification.Verifier(
            self.app_client(), started_at, self._settings.verify_timeout, self._logger
        )
        section = verifier.verify(people)
        section["covered"] = self.sample.categories()
        self._report.verification = section
        verification.report_lines(
            section,
            self._logger,
            warn_only=self._settings.on_verify_failure == "warn",
            qa=self.qa is not None,
        )


def _qa_sync(settings: Settings, report: RunReport, logger: logging.Logger) -> QaSync | None:
    size = settings.qa_sample
    if size is None:
        return None
    exact = {
        route.pattern
        for route in settings.routes.all()
        if not any(c in route.pattern for c in "*?[")
    }
    logger.info("QA sync: at most %d people, chosen when the input ends; no STATE is written", size)
    return QaSync(size, settings.qa_stratify, exact, report, logger)
