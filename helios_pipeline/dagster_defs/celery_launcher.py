"""dagster-celery's run launcher, with a termination that Dagster records as one.

``CeleryRunLauncher.terminate`` revokes the run's Celery task (SIGTERM in the pool process) but
never marks the run CANCELING, so Dagster cannot tell a user's *Terminate* from a crash: the
interrupted run ends FAILURE, and ``run_retries`` would even start it again. Dagster's own
launchers report CANCELING first; this one does the same, so a terminated chunk run ends
CANCELED and is not retried. Use it in ``dagster.yaml`` as
``module: helios_pipeline.dagster_defs.celery_launcher`` / ``class: CeleryRunLauncher``.
"""

from __future__ import annotations

from dagster_celery.launcher import CeleryRunLauncher as _DagsterCeleryRunLauncher


class CeleryRunLauncher(_DagsterCeleryRunLauncher):
    def terminate(self, run_id: str) -> bool:
        run = self._instance.get_run_by_id(run_id)
        if run is None or run.is_finished:
            return False
        self._instance.report_run_canceling(run, message="terminating: the run's Celery task is being revoked")
        return super().terminate(run_id)
