"""The in-process ingestion worker: runs the pipeline for tenants with pending entries.

Started by the Data API when ``ALIEN_API_WORKER`` is on (the default), for deployments with no
Dagster daemon. Each run goes through the Dagster ``ingest`` job, so it is recorded in the
instance like the sensor's runs; the per-tenant step locks keep it from colliding with one.
The model stays loaded between runs, which is what makes small uploads quick to index.
"""

from __future__ import annotations

import logging
import threading

from alien.runner import run_ingest
from resources.settings import AlienSettings
from resources.stores import TenantRegistry

log = logging.getLogger("alien.worker")


class IngestWorker:
    def __init__(
        self,
        settings: AlienSettings,
        registry: TenantRegistry,
        on_run: object | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.on_run = on_run
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._due: set[str] = set()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="alien-ingest", daemon=True)
        self.runs = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)

    def notify(self, tenant: str) -> None:
        """An upload arrived for ``tenant``: run soon rather than at the next poll."""
        with self._lock:
            self._due.add(str(tenant))
        self._wake.set()

    def _tenants_waiting(self) -> list[str]:
        with self._lock:
            due, self._due = self._due, set()
        for tenant in self.registry.list():
            try:
                if self.registry.open(tenant).catalog.has_unfinished():
                    due.add(str(tenant))
            except Exception as err:  # one tenant's broken catalog must not stop the others
                log.warning("tenant %s: cannot read its catalog (%s); skipped", tenant, err)
        return sorted(due)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.settings.api_worker_poll_seconds)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                tenants = self._tenants_waiting()
            except Exception:
                log.exception("listing tenants with pending entries failed")
                continue
            for tenant in tenants:
                if self._stop.is_set():
                    return
                self._run(tenant)

    def _run(self, tenant: str) -> None:
        try:
            outcome = run_ingest(self.settings, tenant)
        except Exception:
            log.exception("pipeline run for tenant %s failed", tenant)
            self._count("error")
            return
        self.runs += 1
        if not outcome.success:
            log.error("pipeline run for tenant %s failed: %s", tenant, outcome.error)
        self._count("success" if outcome.success else "failure")

    def _count(self, outcome: str) -> None:
        if callable(self.on_run):
            self.on_run(outcome)
