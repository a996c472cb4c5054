"""Running the ingest job for one tenant through Dagster, in this process.

The run is recorded in the Dagster instance under ``ALIEN_HOME/dagster`` (so it shows in the
UI started by ``make dev``); the in-process executor keeps one embedding model for all steps.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from alien import pipeline
from alien.pipeline import StepReport
from resources.settings import AlienSettings

if TYPE_CHECKING:  # dagster is imported lazily: `alien search` and friends never need it
    from dagster import DagsterInstance

# The instance written for ``ALIEN_HOME``: embedded, SQLite storage under DAGSTER_HOME
# (Dagster's default); in cluster mode, run/event/schedule storage in PostgreSQL through
# dagster-postgres. A dagster.yaml without the marker line is the user's and is left alone.
MARKER = "# written by alien (delete this line to keep your own settings)"
DAGSTER_YAML = f"""\
{MARKER}
telemetry:
  enabled: false
# Steps log through Dagster's event log. Capturing stdout/stderr would redirect the whole
# process's file descriptors for each run: with runs of several tenants side by side in one
# process (the API's worker), one run's output would land in another's log.
compute_logs:
  module: dagster._core.storage.noop_compute_log_manager
  class: NoOpComputeLogManager
# The daemon's run monitoring ends runs stuck starting or canceling; a run whose process died
# (SIGKILL, out of memory) is marked failed by the tenant's next run (fail_abandoned_runs:
# every run records its process, daemon-launched ones from their first step).
run_monitoring:
  enabled: true
  poll_interval_seconds: 30
concurrency:
  runs:
    # Tenants side by side, one run per tenant at a time: the daemon's queue launches another
    # tenant's run while one tenant's large upload is still being processed.
    max_concurrent_runs: {{max_runs}}
    tag_concurrency_limits:
      - key: dagster/partition
        value:
          applyLimitPerUniqueValue: true
        limit: 1
"""
# The run's events go to its event log (the UI); the caller reports failures itself, with
# their reasons (``RunOutcome.error``): the console logger would repeat them as tracebacks.
QUIET_LOGS = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}


def use_home(settings: AlienSettings) -> None:
    """Point Dagster and the code location's resources at this ``ALIEN_HOME``."""
    home = settings.home.resolve()
    os.environ["ALIEN_HOME"] = str(home)
    settings.dagster_home.mkdir(parents=True, exist_ok=True)
    config = settings.dagster_home / "dagster.yaml"
    os.environ["DAGSTER_HOME"] = str(settings.dagster_home)
    if config.exists() and not config.read_text().startswith(MARKER):
        return  # an instance managed elsewhere (the chart's ConfigMap): read, never written
    wanted = dagster_yaml(settings)
    if not config.exists() or config.read_text() != wanted:
        config.write_text(wanted)


def dagster_yaml(settings: AlienSettings) -> str:
    """The instance configuration for these settings. A tenant's data plane keeps its runs
    in SQLite under its own ``ALIEN_HOME``: it holds no credential for the cluster's
    Dagster database."""
    base = DAGSTER_YAML.format(max_runs=settings.ingest_concurrency)
    if settings.mode != "cluster" or not settings.postgres_url or settings.tenant_plane:
        return base
    import json

    from resources.postgres import DAGSTER_DATABASE, ensure_database

    url = ensure_database(settings.postgres_url, DAGSTER_DATABASE)
    # dagster-postgres speaks psycopg2; the URL names it so SQLAlchemy does not guess.
    dagster_url = url.set(drivername="postgresql+psycopg2").render_as_string(hide_password=False)
    return base + f"storage:\n  postgres:\n    postgres_url: {json.dumps(dagster_url)}\n"


# Opening an instance creates its SQLite storage the first time: two threads doing that at
# once (two tenants' first runs in the API's worker) wrote two Alembic heads into it.
_OPENING = threading.Lock()


def dagster_instance(settings: AlienSettings) -> DagsterInstance:
    from dagster import DagsterInstance

    with _OPENING:
        use_home(settings)
        return DagsterInstance.get()


def register_partition(settings: AlienSettings, tenant: str) -> None:
    from alien_assets.partitions import TENANTS

    instance = dagster_instance(settings)
    if not instance.has_dynamic_partition(TENANTS, tenant):
        instance.add_dynamic_partitions(TENANTS, [tenant])


def unregister_partition(settings: AlienSettings, tenant: str) -> None:
    from alien_assets.partitions import TENANTS

    instance = dagster_instance(settings)
    if instance.has_dynamic_partition(TENANTS, tenant):
        instance.delete_dynamic_partition(TENANTS, tenant)


def _without_logging_reset(instance: DagsterInstance) -> None:
    """Keep a run from reconfiguring the process's logging when the instance configures none.

    At the start of every run Dagster applies the instance's ``python_logs`` handlers with
    ``logging.config.dictConfig``, even an empty set. That holds the logging module's lock
    while it takes every handler's lock, and a run in another thread writing an event holds
    its handler's lock while it needs the module's: two tenants' runs in the API's worker
    deadlocked on it. With no handlers configured the call returns none, so it is skipped.
    """
    if not instance.get_python_log_dagster_handler_config():
        instance.get_yaml_python_handlers = lambda: []  # type: ignore[method-assign]


@dataclass
class RunOutcome:
    run_id: str | None
    success: bool
    seconds: float
    reports: list[StepReport] = field(default_factory=list)
    error: str | None = None

    def report(self, step: str) -> StepReport | None:
        return next((r for r in self.reports if r.step == step), None)


PROCESS_TAG = "alien/process"


def _pid_namespace() -> str:
    """This process's PID namespace (containers sharing a host name each have their own)."""
    try:
        return os.readlink("/proc/self/ns/pid").split("[")[-1].rstrip("]")
    except OSError:
        return "?"


def process_id(pid: int | None = None) -> str | None:
    """``host/pid-namespace:pid:start`` of a process (its start time in clock ticks since
    boot, so a pid used again by another process does not match); None without /proc."""
    import socket

    pid = os.getpid() if pid is None else pid
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    start = stat.rsplit(")", 1)[1].split()[19]
    return f"{socket.gethostname()}/{_pid_namespace()}:{pid}:{start}"


def _process_gone(process: str) -> bool:
    """Whether the process a run was started by has ended (only said of processes this one
    can see: the same host and PID namespace)."""
    import socket

    where, pid, _ = process.rsplit(":", 2)
    if where != f"{socket.gethostname()}/{_pid_namespace()}":
        return False
    return process_id(int(pid)) != process


def backoff(settings: AlienSettings, failures: int) -> float:
    """Seconds to wait before relaunching a tenant's work after ``failures`` consecutive
    failed runs: doubling, capped, and between half and all of that (jitter), so the tenants
    one outage hit do not all retry at the same moment."""
    ceiling = min(
        settings.retry_backoff_max_seconds,
        settings.retry_backoff_seconds * 2 ** max(0, failures - 1),
    )
    return ceiling * random.uniform(0.5, 1.0)


def run_ended(instance: DagsterInstance) -> Callable[[str], bool]:
    """Whether the run of a given id has ended (or is unknown to ``instance``): its claims on
    entries will not be renewed, so the next run takes them over."""

    def ended(run_id: str) -> bool:
        run = instance.get_run_by_id(run_id)
        return run is None or run.is_finished

    return ended


def fail_abandoned_runs(instance: DagsterInstance, tenant: str) -> list[str]:
    """Runs of ``tenant`` still marked started whose process has died (SIGKILL, out of
    memory): marked failed, so the UI stops showing them running; their entries are the next
    run's work anyway (the steps' manifests say what is done). Their run ids."""
    from dagster import DagsterRunStatus, RunsFilter

    runs = instance.get_runs(
        RunsFilter(
            statuses=[DagsterRunStatus.STARTED, DagsterRunStatus.STARTING],
            tags={"dagster/partition": tenant},
        )
    )
    gone = []
    for run in runs:
        process = run.tags.get(PROCESS_TAG)
        if process and _process_gone(process):
            instance.report_run_failed(run, f"its process ({process}) ended without finishing")
            gone.append(run.run_id)
    return gone


def run_ingest(
    settings: AlienSettings,
    tenant: str,
    *,
    full_refresh: bool = False,
    listener: pipeline.Progress | None = None,
    cancel: threading.Event | None = None,
) -> RunOutcome:
    """Materialize every pipeline asset for ``tenant`` in this thread and wait for the result;
    setting ``cancel`` stops it at the next entry or batch of chunks."""
    from alien_assets import defs
    from alien_assets.assets import FULL_REFRESH_TAG
    from resources.dagster_resources import AlienStoresResource

    register_partition(settings, tenant)
    instance = dagster_instance(settings)
    _without_logging_reset(instance)
    abandoned = fail_abandoned_runs(instance, tenant)
    if abandoned:  # what they left processing waits again
        from resources.stores import TenantRegistry

        stores = TenantRegistry(settings).open(tenant)
        for run_id in abandoned:
            pipeline.release(stores, run_id)
    job = defs.resolve_job_def("ingest")
    tags = {"alien/trigger": "cli"}
    process = process_id()
    if process:
        tags[PROCESS_TAG] = process
    if full_refresh:
        tags[FULL_REFRESH_TAG] = "true"
    started = time.perf_counter()
    with pipeline.observe(listener, cancel) as reports:
        result = job.execute_in_process(
            instance=instance,
            partition_key=tenant,
            tags=tags,
            run_config=QUIET_LOGS,
            raise_on_error=False,
            resources={"stores": AlienStoresResource.for_settings(settings)},
        )
    error = None
    if not result.success:
        failures = []
        for ev in result.all_events:
            if ev.event_type_value != "STEP_FAILURE":
                continue
            data = ev.event_specific_data
            cause = getattr(getattr(data, "user_failure_data", None), "description", None)
            cause = cause or getattr(getattr(data, "error", None), "message", "")
            failures.append(f"{ev.step_key}: {cause.strip().splitlines()[0] if cause else '?'}")
        error = f"run {result.run_id} failed: {'; '.join(failures) or 'unknown step'}"
    return RunOutcome(
        run_id=result.run_id,
        success=result.success,
        seconds=time.perf_counter() - started,
        reports=list(reports),
        error=error,
    )
