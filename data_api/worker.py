"""The in-process ingestion worker: runs the pipeline for tenants with pending entries.

Started by the Data API when ``ALIEN_API_WORKER`` is on (the default), for deployments with no
Dagster daemon. Each run goes through the Dagster ``ingest`` job, so it is recorded in the
instance like the sensor's runs; the per-tenant step locks keep it from colliding with one.
The model stays loaded between runs, which is what makes small uploads quick to index.

Tenants are served side by side, not one after the other: each tenant with waiting work gets
a run of its own in a thread (one run per tenant at a time, up to
``ALIEN_INGEST_CONCURRENCY`` tenants at once). The model is shared batch by batch in order
of arrival (``resources.embedder.FairTurns``) and each run reads its documents in its own
child process, so one tenant's thousand-page upload delays another tenant's small one by a
batch of chunks, not by the whole document. Stopping the worker cancels its runs at their next
entry or batch; what they had not finished stays ``processing`` for the next run. A tenant
whose run failed (a store down) gets its next run only after a backoff that doubles per
failure in a row (``alien.runner.backoff``), as the ingestion sensor does.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from alien.runner import backoff, run_ingest
from resources.settings import AlienSettings
from resources.stores import TenantRegistry

log = logging.getLogger("alien.worker")


class IngestWorker:
    def __init__(
        self,
        settings: AlienSettings,
        registry: TenantRegistry,
        on_run: Callable[[str], None] | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.on_run = on_run
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._due: set[str] = set()
        self._lock = threading.Lock()
        self._running: dict[str, threading.Thread] = {}
        self._last_start: dict[str, float] = {}  # when each tenant's last run began
        self._failures: dict[str, int] = {}  # failed runs in a row, per tenant
        self._not_before: dict[str, float] = {}  # no run of the tenant before this moment
        self._thread = threading.Thread(target=self._loop, name="alien-ingest", daemon=True)
        self.runs = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop scheduling, cancel the runs in flight and wait (``timeout`` in all) for them
        to wind down."""
        deadline = time.monotonic() + timeout
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)
        with self._lock:
            running = list(self._running.values())
        for thread in running:
            thread.join(max(0.0, deadline - time.monotonic()))

    def notify(self, tenant: str) -> None:
        """An upload arrived for ``tenant``: run soon rather than at the next poll."""
        with self._lock:
            self._due.add(str(tenant))
        self._wake.set()

    def _tenants_waiting(self) -> tuple[set[str], set[str]]:
        """Tenants notified of uploads since the last look, and tenants found with work."""
        with self._lock:
            notified, self._due = self._due, set()
        found = set()
        for tenant in self.registry.list():
            try:
                stores = self.registry.open(tenant)
                if stores.catalog.has_unfinished() or stores.model_work_pending():
                    found.add(str(tenant))
            except Exception as err:  # one tenant's broken catalog must not stop the others
                log.warning("tenant %s: cannot read its catalog (%s); skipped", tenant, err)
        return notified, found

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.settings.api_worker_poll_seconds)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                notified, found = self._tenants_waiting()
            except Exception:
                log.exception("listing tenants with pending entries failed")
                continue
            with self._lock:
                if self._stop.is_set():
                    return
                # The tenant whose last run began longest ago (or never) first: with more busy
                # tenants than slots, each gets its turn rather than the same few each time.
                order = sorted(notified | found, key=lambda t: (self._last_start.get(t, 0.0), t))
                now = time.monotonic()
                for tenant in order:
                    if self._not_before.get(tenant, 0.0) > now:
                        continue  # its last run failed (a store down): backing off
                    if tenant in self._running:
                        if tenant in notified:  # uploads during its run: another run after it
                            self._due.add(tenant)
                        continue
                    if len(self._running) >= self.settings.ingest_concurrency:
                        self._due.add(tenant)  # its turn comes when a run ends
                        continue
                    thread = threading.Thread(
                        target=self._run, args=(tenant,), name=f"alien-ingest-{tenant}", daemon=True
                    )
                    self._running[tenant] = thread
                    self._last_start[tenant] = time.monotonic()
                    thread.start()

    def _run(self, tenant: str) -> None:
        try:
            outcome = run_ingest(self.settings, tenant, cancel=self._stop)
        except Exception:
            log.exception("pipeline run for tenant %s failed", tenant)
            self._count("error")
            return
        finally:
            with self._lock:
                self._running.pop(tenant, None)
                if self._due:  # a tenant waits for this slot, or this one got uploads since
                    self._wake.set()
        with self._lock:
            self.runs += 1
            if outcome.success or self._stop.is_set():
                self._failures.pop(tenant, None)
                self._not_before.pop(tenant, None)
            else:  # wait before the next try, longer after each failure in a row
                failures = self._failures[tenant] = self._failures.get(tenant, 0) + 1
                self._not_before[tenant] = time.monotonic() + backoff(self.settings, failures)
        if outcome.success:
            self._count("success")
        elif self._stop.is_set():
            log.info("pipeline run for tenant %s cancelled: the worker is stopping", tenant)
            self._count("cancelled")
        else:
            log.error("pipeline run for tenant %s failed: %s", tenant, outcome.error)
            self._count("failure")

    def _count(self, outcome: str) -> None:
        if self.on_run is not None:
            self.on_run(outcome)
