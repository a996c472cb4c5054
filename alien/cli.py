"""The ``alien`` command line: ingest, search, inspect, delete, evaluate, demo."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shlex
import signal
import sys
import threading
import time
import unicodedata
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from resources.catalog import DEFAULT_DATASET, EntryStatus
from resources.outages import classify
from resources.settings import AlienSettings
from resources.stores import TenantRegistry, TenantStores
from resources.tenancy import InvalidTenantError, TenantId, UnknownTenantError, validate_dataset

out = Console()
err = Console(stderr=True)
SHARED_PDFS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "pdfs"


class Ctx:
    def __init__(self) -> None:
        self.settings = AlienSettings()
        self.registry = TenantRegistry(self.settings)

    def open(self, tenant: str) -> TenantStores:
        try:
            return self.registry.open(tenant)
        except (InvalidTenantError, UnknownTenantError) as exc:
            raise click.UsageError(str(exc)) from None


def _emit(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


_json_option = click.option(
    "--json",
    "as_json",
    is_flag=True,
    help='Print one JSON object on stdout; an error is {"error": {"code", "message"}} with a '
    "non-zero exit.",
)


class JsonErrors(click.Group):
    """With ``--json`` anywhere on the command line, an error is JSON too: one object
    ``{"error": {"code", "message"}}`` on stdout and a non-zero exit (2: a usage error, 1: a
    failure), instead of click's text; an unexpected exception also keeps its traceback on
    stderr."""

    def main(self, args: Any = None, **extra: Any) -> Any:
        argv = list(sys.argv[1:] if args is None else args)
        if "--json" not in argv:
            try:
                return super().main(args=argv, **extra)
            except Exception as exc:  # a store that does not answer: its name, no traceback
                outage = classify(exc)
                if outage is None:
                    raise
                err.print(f"[red]alien: {outage}[/]")
                sys.exit(1)
        extra.pop("standalone_mode", None)
        try:
            result = super().main(args=argv, standalone_mode=False, **extra)
            if isinstance(result, int) and result:  # click's exit code for ctx.exit(n)
                sys.exit(result)
            return result
        except click.UsageError as exc:
            _json_error("usage", exc.format_message(), exc.exit_code)
        except click.ClickException as exc:
            _json_error("failed", exc.format_message(), exc.exit_code)
        except click.exceptions.Abort:
            _json_error("aborted", "aborted", 1)
        except (SystemExit, KeyboardInterrupt):
            raise
        except Exception as exc:
            outage = classify(exc)
            if outage is not None:
                _json_error("store_unavailable", str(outage), 1, store=outage.store)
            import traceback

            traceback.print_exc()
            _json_error("internal", f"{type(exc).__name__}: {exc}", 1)
        return None


def _json_error(code: str, message: str, status: int, **more: str) -> None:
    click.echo(json.dumps({"error": {"code": code, "message": message, **more}}))
    sys.exit(status)


def _progress(enabled: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        disable=not enabled,
        transient=False,
    )


def _step_bars(bar: Progress) -> Callable[[str, int, int], None]:
    """A pipeline progress listener drawing one bar per step."""
    tasks: dict[str, Any] = {}

    def listener(step: str, done: int, total: int) -> None:
        if step not in tasks:
            tasks[step] = bar.add_task(step, total=total)
        bar.update(tasks[step], completed=done, total=total)

    return listener


def _resolve_id(stores: TenantStores, kind: Literal["entry", "key"], value: str) -> str:
    """An entry or key id given whole or by a unique prefix (git-style, 4 characters or more)."""
    if len(value) >= 4:
        found = stores.catalog.ids_starting(kind, value)
        if value in found:
            return value
        if len(found) == 1:
            return found[0]
        if found:
            raise click.ClickException(f"{kind} id prefix {value!r} is ambiguous: give more of it")
    raise click.ClickException(f"no {kind} {value} in tenant {stores.tenant}")


def _id_table(*columns: str, ids: dict[str, int] | None = None) -> Table:
    """A table whose id columns (name: width) are never cut, other columns wrapping instead:
    an id copied from it can be pasted into the next command."""
    table = Table()
    for name in columns:
        if ids and name in ids:
            table.add_column(name, no_wrap=True, overflow="ignore", min_width=ids[name])
        else:
            table.add_column(name, overflow="fold")
    return table


def _tenant_option(func: Any) -> Any:
    return click.option("--tenant", "-t", required=True, help="Tenant id ([a-z0-9-]{3,40}).")(func)


def _tenant(value: str) -> str:
    try:
        return TenantId(value)
    except InvalidTenantError as exc:
        raise click.BadParameter(str(exc), param_hint="--tenant") from None


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("alien-data-cluster")
    except PackageNotFoundError:  # a source checkout without the package installed
        return "unknown"


@click.group(cls=JsonErrors, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(_version(), "--version", "-V", prog_name="alien")
@click.pass_context
def main(ctx: click.Context) -> None:
    """Alien data cluster: per-tenant documents in, hybrid search out."""
    ctx.obj = Ctx()


# -- ingest ---------------------------------------------------------------------------------
@contextlib.contextmanager
def _interruptible() -> Iterator[threading.Event]:
    """Ctrl-C (SIGINT) or SIGTERM sets the event: the run stops at its next document or batch
    of chunks, without a retry, and what it left unfinished waits for the next run. A second
    one ends the process at once (its workers die with it; the next run cleans up)."""
    cancel = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield cancel
        return

    def stop(signum: int, frame: object) -> None:
        if cancel.is_set():
            err.show_cursor(True)  # a live progress display hid it
            os._exit(128 + signum)
        cancel.set()
        err.print("[yellow]stopping after the current document or batch[/] (again: quit now)")

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield cancel
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _in_thread(work: Callable[[], Any]) -> Any:
    """Run ``work`` in a thread while this one waits, and return (or raise) what it did.

    Dagster replaces the process's SIGINT and SIGTERM handlers while it executes a run in
    the main thread, turning Ctrl-C into an error inside the step, which its retry policy
    then retries. Off the main thread it leaves them alone: our handler keeps them and asks
    the run to stop (``_interruptible``)."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = work()
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target, name="alien-run", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(0.2)  # wakes up for signal handlers
    if "error" in box:
        raise box["error"]
    return box["result"]


def _ingest_run(
    ctx: Ctx, tenant: str, cancel: threading.Event, listener: Callable[[str, int, int], None]
) -> Any:
    """The tenant's ingest run, in a thread (``_in_thread``), stopped early by ``cancel``."""
    from alien.runner import run_ingest

    return _in_thread(lambda: run_ingest(ctx.settings, tenant, listener=listener, cancel=cancel))


def _retire_missing(
    stores: TenantStores, dataset: str, prefixes: list[str], seen: set[str]
) -> dict[str, int]:
    """``--sync``: the sources under each folder or S3 prefix that this ingest did not find
    leave the dataset (``alien.documents.retire_source``); counts by outcome."""
    from alien.documents import retire_source

    retired = {"deleted": 0, "handed_over": 0, "forgotten": 0}
    for prefix in prefixes:
        for uri in sorted(stores.catalog.source_uris(dataset, prefix) - seen):
            outcome = retire_source(stores, dataset, uri)
            if outcome in retired:
                retired[outcome] += 1
    return retired


@contextlib.contextmanager
def _listed(locations: tuple[str, ...], credentials: Any) -> Iterator[tuple[list[Any], list[str]]]:
    """Every file of the locations (local files and folders, ``s3://bucket/prefix``) and the
    URI prefixes ``--sync`` retires under; S3 downloads are removed on the way out."""
    from alien.sources import S3Files, SourceError, is_s3, local_files, local_prefix

    files: list[Any] = []
    prefixes: list[str] = []
    buckets: list[S3Files] = []
    try:
        for location in locations:
            if is_s3(location):
                bucket = S3Files(location, credentials)
                buckets.append(bucket)
                files.extend(bucket.files())
                prefixes.append(bucket.sync_prefix)
            else:
                root = Path(location)
                files.extend(local_files(root))
                prefix = local_prefix(root)
                if prefix is not None:
                    prefixes.append(prefix)
        yield files, prefixes
    except SourceError as exc:
        raise click.BadParameter(str(exc), param_hint="PATH") from None
    finally:
        for bucket in buckets:
            bucket.close()


def ingest_paths(
    ctx: Ctx,
    paths: tuple[str | Path, ...],
    tenant: str,
    dataset: str,
    show_progress: bool,
    sync: bool = False,
    credentials: Any = None,
) -> dict[str, Any]:
    from alien import pipeline
    from alien.documents import register_source
    from alien.sources import S3Credentials

    started = time.perf_counter()
    reg = ctx.registry
    stores = reg.open(tenant) if reg.exists(tenant) else reg.create(tenant)
    stores.catalog.ensure_dataset(dataset)
    counts = {"new": 0, "unchanged": 0, "updated": 0, "failed": 0}
    retired = {"deleted": 0, "handed_over": 0, "forgotten": 0}
    entry_ids = []
    run = None
    locations = tuple(str(p) for p in paths)
    with (
        _interruptible() as cancel,
        _progress(show_progress) as bar,
        _listed(locations, credentials or S3Credentials()) as (files, prefixes),
    ):
        task = bar.add_task("register", total=len(files))
        for file in files:
            if cancel.is_set():
                break
            try:
                reg = register_source(
                    stores, dataset=dataset, source_uri=file.uri, source_name=file.name,
                    open_stream=file.open, size=file.size, mtime_ns=file.mtime_ns,
                )  # fmt: skip
            finally:
                file.release()
            counts[reg.outcome] += 1
            entry_ids.append(reg.entry.id)
            bar.advance(task)
        if sync and not cancel.is_set():  # only after every file present was seen
            retired = _retire_missing(stores, dataset, prefixes, {f.uri for f in files})
        needs_run = (
            counts["new"] + counts["updated"] > 0
            or stores.catalog.has_unfinished()
            or stores.model_work_pending()  # a model change's backfill (or its re-chunking)
        )
        if needs_run and not cancel.is_set():
            # The model loads in a worker process while Dagster starts, extracts and chunks.
            stores.embedder.preload()
            run = _ingest_run(ctx, tenant, cancel, _step_bars(bar))
    interrupted = cancel.is_set()
    if interrupted:  # stopped between steps, or before the run: its entries wait again
        pipeline.release(stores)
    entries = stores.catalog.entries(ids=entry_ids)
    failed = [e for e in entries if e.status == EntryStatus.FAILED]
    counts["failed"] = len(failed)
    text = run.report("ocr_output") if run else None
    chunked = run.report("chunks") if run else None
    embedded = run.report("embeddings") if run else None
    # in both indexes: a step that failed (a store down) has no report
    indexed = [run.report(step) if run else None for step in ("vector_index", "keyword_index")]
    return {
        "tenant": tenant,
        "dataset": dataset,
        "entries": counts,
        "retired": retired,
        "interrupted": interrupted,
        "pending": stores.catalog.status_counts().get(EntryStatus.PENDING, 0),
        # what this run did, step by step: entries an earlier, interrupted run had taken
        # part of the way are counted where this one finished them
        "read_entries": text.processed if text else 0,
        "pages": text.pages if text else 0,
        "ocr_pages": text.details.get("ocr_pages", 0) if text else 0,
        "chunked_entries": chunked.processed if chunked else 0,
        "chunks": chunked.chunks if chunked else 0,
        "embedded_chunks": embedded.chunks if embedded else 0,
        "indexed_entries": min(r.processed if r else 0 for r in indexed),
        "seconds": round(time.perf_counter() - started, 3),
        "run_id": run.run_id if run else None,
        "run_seconds": round(run.seconds, 3) if run else 0.0,
        "run_success": run.success if run else True,
        "run_error": run.error if run else None,
        "steps": {r.step: r.metadata() for r in run.reports} if run else {},
        "failures": [
            {"entry_id": e.id, "source_name": e.source_name, "reason": e.reason} for e in failed
        ],
    }


@main.command()
@click.argument("paths", nargs=-1, required=True)
@_tenant_option
@click.option(
    "--dataset", "-d", default=DEFAULT_DATASET, show_default=True, help="Dataset to add them to."
)
@click.option(
    "--sync",
    is_flag=True,
    help="Also retire what the dataset holds from these folders whose files are gone.",
)
@click.option(
    "--s3-endpoint",
    envvar="AWS_ENDPOINT_URL",
    help="S3 endpoint of s3:// sources (URL or host:port; default AWS). Env: AWS_ENDPOINT_URL.",
)
@click.option("--s3-access-key", envvar="AWS_ACCESS_KEY_ID", help="Env: AWS_ACCESS_KEY_ID.")
@click.option("--s3-secret-key", envvar="AWS_SECRET_ACCESS_KEY", help="Env: AWS_SECRET_ACCESS_KEY.")
@click.option("--s3-region", envvar="AWS_REGION", help="Env: AWS_REGION.")
@_json_option
@click.pass_obj
def ingest(
    ctx: Ctx,
    paths: tuple[str, ...],
    tenant: str,
    dataset: str,
    sync: bool,
    s3_endpoint: str | None,
    s3_access_key: str | None,
    s3_secret_key: str | None,
    s3_region: str | None,
    as_json: bool,
) -> None:
    """Register files (directories recursively, or the objects under s3://bucket/prefix)
    and run the pipeline to completion.

    Unchanged files (same size and modification time) are not read again. With --sync,
    each folder's or prefix's files that are gone since an earlier ingest leave the
    dataset: an entry with no other path is deleted; one whose bytes another path also
    holds stays, under that path."""
    from alien.sources import S3Credentials

    credentials = S3Credentials(s3_endpoint, s3_access_key, s3_secret_key, s3_region)
    tenant = _tenant(tenant)
    try:
        validate_dataset(dataset)
    except InvalidTenantError as exc:
        raise click.BadParameter(str(exc), param_hint="--dataset") from None
    summary = ingest_paths(
        ctx,
        paths,
        tenant,
        dataset,
        show_progress=not as_json and err.is_terminal,
        sync=sync,
        credentials=credentials,
    )
    if as_json:
        _emit(summary)
    else:
        e = summary["entries"]
        gone = summary["retired"]["deleted"]
        out.print(
            f"[bold]{tenant}[/]: {e['new']} new, {e['updated']} updated,"
            f" {e['unchanged']} unchanged, {e['failed']} failed"
            + (f", {gone} deleted (files gone)" if sync else "")
            + f"; {_did(summary)} in {summary['seconds']:.1f} s"
        )
        for f in summary["failures"]:
            out.print(f"  [red]failed[/] {f['source_name']}: {f['reason']}")
    if summary["interrupted"]:
        waiting = summary["pending"]
        which = "1 entry waits" if waiting == 1 else f"{waiting} entries wait"
        err.print(f"[yellow]interrupted[/]: {which}; run the same `alien ingest` again to finish")
        sys.exit(130)
    if not summary["run_success"]:
        err.print(f"[red]{summary['run_error']}[/]")
        if summary["pending"]:
            err.print(f"{summary['pending']} entries wait (pending) for the next run")
        sys.exit(1)


def _did(summary: dict[str, Any]) -> str:
    """What the run did, step by step (nothing to do says so)."""
    parts = []
    if summary["read_entries"]:
        parts.append(f"read {summary['read_entries']} ({summary['pages']} pages)")
    if summary["chunks"]:
        parts.append(f"{summary['chunks']} chunks")
    if summary["embedded_chunks"]:
        parts.append(f"embedded {summary['embedded_chunks']}")
    if summary["indexed_entries"]:
        parts.append(f"indexed {summary['indexed_entries']}")
    return ", ".join(parts) if parts else "nothing to do"


# -- search ---------------------------------------------------------------------------------
@main.command()
@click.argument("query")
@_tenant_option
@click.option("--dataset", "-d", default=None, help="Only this dataset (default: all).")
@click.option(
    "--mode",
    type=click.Choice(["hybrid", "vector", "keyword"]),
    default="hybrid",
    show_default=True,
    help="hybrid: BM25 and vectors fused (ALIEN_FUSION: convex by default, or rrf).",
)
@click.option(
    "--top-k",
    "-k",
    type=click.IntRange(1, 1000),
    default=10,
    show_default=True,
    help="Results to return.",
)
@_json_option
@click.pass_obj
def search(
    ctx: Ctx, query: str, tenant: str, dataset: str | None, mode: str, top_k: int, as_json: bool
) -> None:
    """Search a tenant's entries: hybrid (BM25 and vectors, fused), vector or keyword."""
    from alien.search import search as run_search
    from alien.search import snippet as text_snippet

    if not query.strip():
        raise click.BadParameter("the query is empty", param_hint="QUERY")
    stores = ctx.open(_tenant(tenant))
    results = run_search(stores, query, mode=mode, top_k=top_k, dataset=dataset)  # type: ignore[arg-type]
    if as_json:
        keys = ("entry_id", "source_name", "chunk_id", "page", "score", "text")
        _emit({"results": [{k: r.to_dict()[k] for k in keys} for r in results]})
        return
    if not results:
        out.print("no results")
    for rank, r in enumerate(results, 1):
        snippet = text_snippet(r.text, query, 240)
        out.print(
            f"[bold]{rank}. {r.source_name}[/] p.{r.page}  [dim]{r.score:.4f}[/]\n   {snippet}"
        )


# -- entries, text, delete, check ------------------------------------------------------------
@main.command()
@_tenant_option
@click.option("--dataset", "-d", default=None, help="Only this dataset (default: all).")
@click.option(
    "--status", type=click.Choice(EntryStatus.ALL), default=None, help="Only entries in this state."
)
@_json_option
@click.pass_obj
def entries(ctx: Ctx, tenant: str, dataset: str | None, status: str | None, as_json: bool) -> None:
    """List a tenant's entries (metadata only)."""
    stores = ctx.open(_tenant(tenant))
    rows = [e.public() for e in stores.catalog.entries(dataset=dataset, status=status)]
    if as_json:
        _emit({"entries": rows})
        return
    if not rows:
        err.print(f"no entries in tenant {tenant}" + (f" matching {status}" if status else ""))
        return
    table = _id_table("entry_id", "source_name", "status", "pages", "chunks", "reason",
                      ids={"entry_id": 36})  # fmt: skip
    for r in rows:
        table.add_row(
            r["entry_id"],
            r["source_name"],
            r["status"],
            str(r["pages"] or ""),
            str(r["chunks"] or ""),
            r["reason"] or "",
        )
    out.print(table)


@main.command()
@click.argument("entry_id")
@_tenant_option
@_json_option
@click.pass_obj
def text(ctx: Ctx, entry_id: str, tenant: str, as_json: bool) -> None:
    """Print an entry's extracted text, page by page."""
    from alien.pipeline import read_pages
    from resources.objects import ObjectNotFoundError

    stores = ctx.open(_tenant(tenant))
    entry_id = _resolve_id(stores, "entry", entry_id)
    entry = stores.catalog.get_entry(entry_id)
    if entry is None:
        raise click.ClickException(f"no entry {entry_id} in tenant {tenant}")
    try:
        pages = read_pages(stores, entry_id)
    except ObjectNotFoundError:
        raise click.ClickException(
            f"entry {entry_id} has no extracted text (status {entry.status}"
            + (f": {entry.reason})" if entry.reason else ")")
        ) from None
    if as_json:
        _emit({"entry_id": entry_id, "pages": [p.__dict__ for p in pages]})
        return
    for p in pages:
        click.echo(f"--- page {p.page} ({p.method}) ---")
        click.echo(p.text.rstrip())


@main.command()
@click.argument("entry_id")
@_tenant_option
@_json_option
@click.pass_obj
def delete(ctx: Ctx, entry_id: str, tenant: str, as_json: bool) -> None:
    """Remove an entry from catalog, object store, vector and keyword index."""
    from alien.documents import delete_entry

    stores = ctx.open(_tenant(tenant))
    entry_id = _resolve_id(stores, "entry", entry_id)
    removed = delete_entry(stores, entry_id)
    if as_json:
        _emit({"entry_id": entry_id, "deleted": removed})
    elif removed:
        out.print(f"deleted {entry_id}")
    if not removed:
        raise click.ClickException(f"no entry {entry_id} in tenant {tenant}")


@main.command()
@_tenant_option
@_json_option
@click.pass_obj
def check(ctx: Ctx, tenant: str, as_json: bool) -> None:
    """Run the cross-store consistency checks (the same as the Dagster asset checks)."""
    from alien.checks import run_checks

    results = run_checks(ctx.open(_tenant(tenant)))
    if as_json:
        _emit({"checks": [r.__dict__ for r in results], "passed": all(r.passed for r in results)})
    else:
        for r in results:
            mark = "[green]pass[/]" if r.passed else "[red]FAIL[/]"
            out.print(f"{mark} {r.name}: {r.metadata}")
    if not all(r.passed for r in results):
        sys.exit(1)


@main.command()
@_tenant_option
@_json_option
@click.pass_obj
def repair(ctx: Ctx, tenant: str, as_json: bool) -> None:
    """Compare the tenant's catalog with its object store and both indexes; remove rows and
    objects of entries the catalog does not have, make again (by a pipeline run) what a store
    lost, then run the checks. Safe to run at any time; the Dagster `repair` job does the
    first part and leaves the run to the ingestion sensor."""
    from alien import pipeline
    from alien.checks import run_checks
    from alien.repair import repair as repair_tenant

    tenant = _tenant(tenant)
    stores = ctx.open(tenant)
    report = repair_tenant(stores)
    run = None
    if stores.catalog.has_unfinished():
        with _interruptible() as cancel, _progress(not as_json and err.is_terminal) as bar:
            run = _ingest_run(ctx, tenant, cancel, _step_bars(bar))
        if cancel.is_set():
            pipeline.release(stores)
            err.print("[yellow]interrupted[/]: run `alien repair` again to finish")
            sys.exit(130)
    results = run_checks(stores)
    passed = all(r.passed for r in results) and (run is None or run.success)
    if as_json:
        _emit(
            {
                "tenant": tenant,
                "found": report.before,
                "deletions_finished": report.deletions_finished,
                "rows_removed": report.rows_removed,
                "objects_removed": report.objects_removed,
                "redone": report.redo,
                "originals_missing": report.originals_missing,
                "run_id": run.run_id if run else None,
                "run_error": run.error if run else None,
                "checks": [r.__dict__ for r in results],
                "passed": passed,
            }
        )
    else:
        removed = sum(report.rows_removed.values())
        out.print(
            f"[bold]{tenant}[/]: removed {removed} orphaned index rows and "
            f"{report.objects_removed} orphaned objects; remade {report.entries_to_redo} "
            f"outputs ({', '.join(f'{k} {v}' for k, v in report.redo.items()) or 'none'})"
            + (
                f"; {report.originals_missing} originals are gone"
                if report.originals_missing
                else ""
            )
        )
        if run is not None and not run.success:
            err.print(f"[red]{run.error}[/]")
        for r in results:
            mark = "[green]pass[/]" if r.passed else "[red]FAIL[/]"
            out.print(f"{mark} {r.name}")
    if not passed:
        sys.exit(1)


@main.command()
@click.option("--all", "show_all", is_flag=True, help="Also half-made and retained tenants.")
@_json_option
@click.pass_obj
def tenants(ctx: Ctx, show_all: bool, as_json: bool) -> None:
    """List the tenants in the cluster catalog (ready ones, unless --all)."""
    records = ctx.registry.records(None if show_all else ("ready",))
    if as_json:
        _emit(
            {"tenants": [r.public() for r in records] if show_all else [r.tenant for r in records]}
        )
        return
    if not records:
        err.print("no tenants" + ("" if show_all else " (--all lists half-made and retained ones)"))
    for record in records:
        if not show_all:
            out.print(record.tenant)
            continue
        failed = [k for k, (state, _) in record.stores.items() if state == "failed"]
        note = f" (failed: {', '.join(sorted(failed))})" if failed else ""
        out.print(f"{record.tenant}\t{record.state}{note}")


@main.group()
def tenant() -> None:
    """Provision and retire a tenant's stores (what the operator does, minus Kubernetes)."""


def _new_tenant(ctx: Ctx, value: str) -> str:
    try:
        return ctx.registry.new_name(value)
    except InvalidTenantError as exc:
        raise click.BadParameter(str(exc), param_hint="TENANT_ID") from None


@tenant.command(name="create")
@click.argument("tenant_id")
@_json_option
@click.pass_obj
def tenant_create(ctx: Ctx, tenant_id: str, as_json: bool) -> None:
    """Provision every store of TENANT_ID and register its Dagster partition (idempotent;
    after a failure at any store, running it again resumes)."""
    from alien.tenants import STEPS, provision_step

    name = _new_tenant(ctx, tenant_id)
    existed = ctx.registry.exists(name)
    for step in STEPS:  # the operator's sub-handlers call the same, one per store
        try:
            provision_step(ctx.settings, name, step)
        except Exception as exc:
            raise click.ClickException(
                f"tenant {name}: {step} could not be provisioned ({type(exc).__name__}: "
                f"{exc}); the other stores are recorded, run `alien tenant create {name}` "
                f"again to resume or `alien tenant delete {name}` to remove what was made"
            ) from None
    stores = {s.store: s.backend for s in ctx.registry.backends.describe()}
    if as_json:
        _emit({"tenant": name, "created": not existed, "stores": stores})
    else:
        err.print(f"tenant {name} {'exists' if existed else 'created'}: {stores}")


@tenant.command(name="delete")
@click.argument("tenant_id")
@click.option(
    "--retain", is_flag=True, help="Keep the stores and their data; stop serving the tenant."
)
@_json_option
@click.pass_obj
def tenant_delete(ctx: Ctx, tenant_id: str, retain: bool, as_json: bool) -> None:
    """Retire TENANT_ID: remove every store it has, a half-made tenant's included (unless
    --retain), and its partition (idempotent)."""
    from alien.tenants import retire_tenant

    name = _tenant(tenant_id)
    try:
        _, found = retire_tenant(ctx.settings, name, "retain" if retain else "delete")
    except Exception as exc:
        raise click.ClickException(f"{exc}; run the delete again once the store answers") from None
    if as_json:
        _emit({"tenant": name, "found": found, "data_removed": found and not retain,
               "retained": retain})  # fmt: skip
    elif not found:
        err.print(f"tenant {name} does not exist: nothing to retire")
    else:
        err.print(f"tenant {name} retired ({'data retained' if retain else 'data removed'})")


@tenant.command(name="env")
@click.argument("tenant_id")
@_json_option
@click.pass_obj
def tenant_env(ctx: Ctx, tenant_id: str, as_json: bool) -> None:
    """Print the complete environment of TENANT_ID's Data API pod as KEY=VALUE lines: its
    ConfigMap and Secret, with this control plane's store URLs and settings (values
    sh-quoted where needed, so `set -a; . FILE` reads them back). It reaches only that
    tenant's stores and holds no cluster key; treat the output as a secret."""
    from resources.backends import BackendConfigError

    name = _tenant(tenant_id)
    try:
        env = ctx.registry.environment(name)
    except UnknownTenantError as exc:
        raise click.UsageError(str(exc)) from None
    except BackendConfigError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        _emit({"config": env.config, "secrets": env.secrets})
        return
    for key, value in sorted(env.merged().items()):
        click.echo(f"{key}={shlex.quote(value)}")  # sh-quoted where needed (a PEM key)


@tenant.command(name="manifests")
@click.argument("tenant_id")
@click.option("--display-name", default="", help="The Tenant's spec.displayName.")
@click.option(
    "--retention",
    type=click.Choice(["delete", "retain"]),
    default="delete",
    show_default=True,
    help="What deleting the Tenant does to its data.",
)
@click.option("--image", default=None, help="Data API image (default: the release's).")
@click.option(
    "--defaults",
    "defaults_file",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="The chart's tenant-defaults.json (default: the chart's default values).",
)
@_json_option
def tenant_manifests(
    tenant_id: str,
    display_name: str,
    retention: str,
    image: str | None,
    defaults_file: str | None,
    as_json: bool,
) -> None:
    """Print, as YAML, the Kubernetes objects the operator creates for TENANT_ID (Secrets by
    key name only, never values): for GitOps and for review."""
    from resources.helm_values import TenantTemplate
    from resources.kube import TenantSpec, tenant_objects, to_yaml

    spec = TenantSpec(tenantId=_tenant(tenant_id), displayName=display_name, retention=retention)
    try:
        template = TenantTemplate.load(defaults_file)
    except ValueError as err:
        raise click.UsageError(f"{defaults_file}: {err}") from None
    if image:
        template = template.model_copy(update={"image": image, "data_api_image_override": ""})
    objects = tenant_objects(spec, template=template)
    if as_json:
        _emit({"tenant": spec.tenant_id, "objects": objects})
        return
    click.echo(to_yaml(objects), nl=False)


# -- eval, demo ------------------------------------------------------------------------------
@main.command(name="eval")
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--run-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Write TREC run files <run-dir>/<mode>.run.",
)
@click.option(
    "--tenant",
    default=None,
    help="Tenant to ingest into and keep (default: a scratch tenant eval-<corpus hash>).",
)
@click.option(
    "--keep", is_flag=True, help="Keep the scratch tenant (a second eval then ingests nothing)."
)
@click.option(
    "--embedder",
    default=None,
    metavar="SPEC",
    help="Embed with MODEL[@VARIANT] (variants: torch, onnx, onnx-int8, onnx-int8-lean, "
    "static) instead of ALIEN_EMBEDDING_MODEL.",
)
@_json_option
@click.pass_obj
def eval_(
    ctx: Ctx,
    directory: Path,
    run_dir: Path | None,
    tenant: str | None,
    keep: bool,
    embedder: str | None,
    as_json: bool,
) -> None:
    """Evaluate every search mode on a BEIR collection: nDCG@10 and recall@100."""
    from alien.evaluation import MODES, evaluate, ingest_collection, load_beir
    from resources.embedding_backends import EmbedderSpec, EmbedderSpecError

    if embedder is not None:
        try:
            embedder = str(EmbedderSpec.parse(embedder))
        except EmbedderSpecError as exc:
            raise click.BadParameter(str(exc), param_hint="--embedder") from None
        os.environ["ALIEN_EMBEDDING_MODEL"] = embedder  # for this run's every process
        ctx.settings = AlienSettings()
        ctx.registry = TenantRegistry(ctx.settings)
    started = time.perf_counter()
    try:
        collection = load_beir(directory)
    except (FileNotFoundError, ValueError, KeyError) as exc:
        raise click.ClickException(f"not a BEIR collection: {exc}") from None
    show = not as_json and err.is_terminal
    with _interruptible() as cancel, _progress(show) as bar:
        bars = _step_bars(bar)
        stores, entry_to_doc = ingest_collection(
            ctx.registry, collection, tenant and _tenant(tenant),
            progress=lambda done, total: bars("register", done, total),
        )  # fmt: skip
        stores.embedder.preload()  # loads in its worker while the run starts
        run = None
        if not cancel.is_set():
            run = _ingest_run(ctx, stores.tenant, cancel, bars)
    if cancel.is_set():
        from alien import pipeline

        pipeline.release(stores)
        if as_json:
            _emit({"collection": str(directory), "tenant": str(stores.tenant),
                   "interrupted": True})  # fmt: skip
        err.print("[yellow]interrupted[/]: run the same `alien eval` again to finish")
        sys.exit(130)
    if run is None or not run.success:
        raise click.ClickException(run.error if run and run.error else "ingest failed")
    with _progress(show) as bar:
        searching = bar.add_task("search", total=len(MODES))
        results = evaluate(
            stores, collection, entry_to_doc, run_dir=run_dir,
            progress=lambda mode: bar.update(searching, description=f"search ({mode})",
                                             advance=0 if mode == MODES[0] else 1),
        )  # fmt: skip
        bar.update(searching, completed=len(MODES))
    scratch = tenant is None and not keep
    if scratch:  # the scratch tenant goes, stores and partition
        from alien.tenants import retire_tenant

        retire_tenant(ctx.settings, stores.tenant, "delete")
    summary = {
        "collection": str(directory),
        "tenant": str(stores.tenant),
        "tenant_kept": not scratch,
        "embedder": ctx.settings.embedding_model,
        "documents": len(collection.corpus),
        "queries": len(collection.queries),
        "modes": results,
        "seconds": round(time.perf_counter() - started, 1),
    }
    if as_json:
        _emit(summary)
        return
    table = Table(
        "mode",
        "nDCG@10",
        "recall@100",
        title=f"{directory} ({len(collection.queries)} queries, {ctx.settings.embedding_model})",
    )
    for mode, scores in results.items():
        table.add_row(mode, f"{scores['ndcg@10']:.4f}", f"{scores['recall@100']:.4f}")
    out.print(table)


DEMO_QUERIES = (
    "how do I declare a forward reference to a struct",
    "draw a contour plot with labelled lines",
    "customizing the Debian installer",
)


@main.command()
@click.option("--tenant", default="demo", show_default=True, help="Tenant to ingest into.")
@click.option(
    "--source",
    type=click.Path(exists=True, path_type=Path),
    default=None,
    help="Documents to ingest (default: ../shared/data/pdfs).",
)
@_json_option
@click.pass_obj
def demo(ctx: Ctx, tenant: str, source: Path | None, as_json: bool) -> None:
    """Ingest the sample PDFs into a demo tenant and show a few searches."""
    from alien.search import search as run_search
    from alien.search import snippet as text_snippet

    source = source or SHARED_PDFS
    if not source.exists():
        raise click.ClickException(f"demo documents not found at {source}; pass --source")
    tenant = _tenant(tenant)
    show = not as_json and err.is_terminal
    summary = ingest_paths(ctx, (source,), tenant, DEFAULT_DATASET, show_progress=show)
    e = summary["entries"]
    if summary["interrupted"]:
        if as_json:
            _emit({"ingest": summary, "searches": []})
        err.print("[yellow]interrupted[/]: run `alien demo` again to finish")
        sys.exit(130)
    stores = ctx.open(tenant)
    searches = [(query, run_search(stores, query, top_k=3)) for query in DEMO_QUERIES]
    if as_json:
        _emit({"ingest": summary,
               "searches": [{"query": q, "results": [r.__dict__ for r in results]}
                            for q, results in searches]})  # fmt: skip
    else:
        run = f" (Dagster run {summary['run_id']})" if summary["run_id"] else ""
        out.print(
            f"[bold]ingested[/] {e['new'] + e['updated']} changed, {e['unchanged']} unchanged,"
            f" {e['failed']} failed; {_did(summary)} in {summary['seconds']:.1f} s{run}"
        )
        for query, results in searches:
            out.rule(f"[bold]{query}")
            for rank, r in enumerate(results, 1):
                snippet = text_snippet(r.text, query, 200)
                out.print(
                    f"{rank}. [bold]{r.source_name}[/] p.{r.page} ({r.score:.4f})\n   {snippet}"
                )
    if not summary["run_success"]:
        raise click.ClickException(summary["run_error"] or "ingest failed")


# -- Data API: keys, service tokens, audit, serve -------------------------------------------
def _cli_principal() -> str:
    import getpass

    try:
        return f"cli:{getpass.getuser()}"
    except Exception:
        return "cli:unknown"


def _audit_cli(stores: TenantStores, action: str, detail: str) -> None:
    import uuid

    from resources.catalog import AuditRecord

    stores.catalog.audit.write(
        AuditRecord(
            request_id=uuid.uuid4().hex,
            tenant=str(stores.tenant),
            principal=_cli_principal(),
            action=action,
            outcome="ok",
            detail=detail,
        )
    )


@main.group()
def keys() -> None:
    """Tenant API keys for the Data API (shown once, stored hashed, revocable)."""


@keys.command(name="create")
@_tenant_option
@click.option(
    "--scopes", default="read,search", show_default=True, help="Comma-separated: read,search,write"
)
@click.option("--name", default="", help="A label for people (default: the key id).")
@_json_option
@click.pass_obj
def keys_create(ctx: Ctx, tenant: str, scopes: str, name: str, as_json: bool) -> None:
    """Create a key; the tenant's stores are provisioned if they do not exist yet."""
    from alien.credentials import create_api_key

    stores = ctx.registry.create(_tenant(tenant))
    try:
        key, record = create_api_key(stores, scopes.split(","), name)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--scopes") from None
    _audit_cli(stores, "create_key", f"key {record.id} scopes {','.join(record.scopes)}")
    if as_json:
        _emit({"key": key, "key_id": record.id, "tenant": tenant, "scopes": list(record.scopes)})
        return
    err.print(f"key {record.id} for tenant {tenant}, scopes {','.join(record.scopes)}")
    err.print("[yellow]shown once: store it now[/yellow]")
    click.echo(key)


@keys.command(name="list")
@_tenant_option
@_json_option
@click.pass_obj
def keys_list(ctx: Ctx, tenant: str, as_json: bool) -> None:
    """The tenant's keys (ids, scopes, dates; never secrets)."""
    rows = [
        {
            "key_id": k.id,
            "name": k.name,
            "scopes": list(k.scopes),
            "created_at": k.created_at.isoformat(),
            "revoked_at": k.revoked_at.isoformat() if k.revoked_at else None,
        }
        for k in ctx.open(_tenant(tenant)).catalog.api_keys()
    ]
    if as_json:
        _emit({"keys": rows})
        return
    if not rows:
        err.print(f"no API keys in tenant {tenant}")
        return
    table = _id_table(
        "key id", "name", "scopes", "created", "revoked",
        ids={"key id": max((len(r["key_id"]) for r in rows), default=8)},
    )  # fmt: skip
    for r in rows:
        table.add_row(
            r["key_id"], r["name"], ",".join(r["scopes"]), r["created_at"], r["revoked_at"] or ""
        )
    out.print(table)


@keys.command(name="revoke")
@click.argument("key_id")
@_tenant_option
@_json_option
@click.pass_obj
def keys_revoke(ctx: Ctx, key_id: str, tenant: str, as_json: bool) -> None:
    """Revoke a key: requests with it are refused from now on."""
    stores = ctx.open(_tenant(tenant))
    key_id = _resolve_id(stores, "key", key_id)
    if not stores.catalog.revoke_api_key(key_id):
        raise click.ClickException(f"no key {key_id} in tenant {tenant}")
    _audit_cli(stores, "revoke_key", f"key {key_id}")
    if as_json:
        _emit({"key_id": key_id, "revoked": True})
    else:
        err.print(f"revoked key {key_id}")


@main.command(name="service-token")
@_tenant_option
@click.option("--user", required=True, help="The end user the platform proxy acts for.")
@click.option("--scopes", default="read,search", show_default=True, help="Comma-separated scopes.")
@click.option("--ttl", default=60, show_default=True, help="Seconds until it expires.")
@_json_option
@click.pass_obj
def service_token(ctx: Ctx, tenant: str, user: str, scopes: str, ttl: int, as_json: bool) -> None:
    """Mint a service token as the platform proxy would (needs ALIEN_SERVICE_TOKEN_SECRET)."""
    from alien.credentials import CredentialError, ServiceTokens

    try:
        token = ServiceTokens(ctx.settings).mint(_tenant(tenant), user, scopes.split(","), ttl)
    except (CredentialError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        _emit({"token": token})
    else:
        click.echo(token)


@main.command()
@click.option("--tenant", "-t", default=None, help="Tenant id; without it, the cluster's log.")
@click.option("--limit", default=50, show_default=True, help="Newest records to show.")
@click.option("--entry", "entry_id", default=None, help="Only records about this entry.")
@click.option("--wide", is_flag=True, help="Every column, request ids included.")
@_json_option
@click.pass_obj
def audit(
    ctx: Ctx, tenant: str | None, limit: int, entry_id: str | None, wide: bool, as_json: bool
) -> None:
    """The audit log, newest first: a tenant's, or the cluster's (refused anonymous requests)."""
    from resources.catalog import AuditLog, sqlite_engine

    log = None
    if tenant is not None:
        stores = ctx.open(_tenant(tenant))
        log = stores.catalog.audit
        if entry_id is not None and stores.catalog.get_entry(entry_id) is None:
            ids = stores.catalog.ids_starting("entry", entry_id) if len(entry_id) >= 4 else []
            entry_id = ids[0] if len(ids) == 1 else entry_id  # a deleted entry: as given
    else:
        path = ctx.settings.system_dir / "audit.db"
        if path.is_file():
            log = AuditLog(sqlite_engine(path))
            log.create()  # adds the columns newer than the release that made it
    records = [r.public() for r in log.records(limit=limit, entry_id=entry_id)] if log else []
    if as_json:
        _emit({"records": records})
        return
    if not records:
        err.print("no audit records" + ("" if tenant else " (no request refused)"))
        return
    if wide:
        table = Table(
            "time", "tenant", "principal", "on behalf of", "action", "entry", "outcome",
            "status", "request id", "client request id",
        )  # fmt: skip
        for r in records:
            cells = (r["at"], r["tenant"], r["principal"], r["on_behalf_of"], r["action"],
                     r["entry_id"], r["outcome"], r["status_code"], r["request_id"],
                     r["client_request_id"])  # fmt: skip
            table.add_row(*(terminal_safe(c) for c in cells))
        out.print(table)
        return
    # Readable at 80 columns: who did what to which entry (a unique prefix: `alien text`
    # takes it), and how it ended; request ids with --wide or --json.
    table = Table("time (UTC)", "who", "action", "entry", "result", box=None, pad_edge=False)
    for r in records:
        who = str(r["principal"] or "")
        if r["on_behalf_of"]:
            who += f" for {r['on_behalf_of']}"
        result = " ".join(str(x) for x in (r["outcome"], r["status_code"]) if x is not None)
        cells = (str(r["at"])[:19].replace("T", " "), who, r["action"],
                 (r["entry_id"] or "")[:8], result)  # fmt: skip
        table.add_row(*(terminal_safe(c) for c in cells))
    out.print(table)


def terminal_safe(value: object) -> Text:
    """A cell as literal text: control and format characters shown escaped (``\\x1b``,
    ``\\u202e``), never sent to the terminal, and no rich markup interpreted. An end user's
    name comes from the platform's token and may hold anything."""
    text = "" if value is None else str(value)
    shown = "".join(
        ch
        if unicodedata.category(ch) not in ("Cc", "Cf", "Cs")
        else ch.encode("unicode_escape").decode()
        for ch in text
    )
    return Text(shown)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, type=int, help="Port to listen on.")
@click.option(
    "--worker/--no-worker",
    default=None,
    help="Process uploads in this process (default: ALIEN_API_WORKER, on).",
)
@_json_option
@click.pass_obj
def serve(ctx: Ctx, host: str, port: int, worker: bool | None, as_json: bool) -> None:
    """Start the Data API (OpenAPI docs at /docs). With --json, one JSON line says where it
    listens, and the server's own log lines are JSON."""
    import uvicorn

    from alien.runner import use_home
    from data_api import create_app

    use_home(ctx.settings)
    app = create_app(ctx.settings, worker=worker)
    if as_json:
        url = f"http://{host}:{port}"
        click.echo(json.dumps({"serving": url, "docs": f"{url}/docs", "mode": ctx.settings.mode}))
        sys.stdout.flush()
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level="info",
        access_log=False,
        log_config=_JSON_LOGS if as_json else uvicorn.config.LOGGING_CONFIG,
    )


class JsonLogFormatter(logging.Formatter):
    """One JSON object per log record (its exception, if any, as a field)."""

    def format(self, record: logging.LogRecord) -> str:
        line = {"time": self.formatTime(record), "level": record.levelname,
                "logger": record.name, "message": record.getMessage()}  # fmt: skip
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line)


# Every log line as a JSON object on stderr, uvicorn's and the app's, for `serve --json`.
_JSON_LOGS = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"json": {"()": JsonLogFormatter}},
    "handlers": {
        "stderr": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}
    },
    "root": {"handlers": ["stderr"], "level": "INFO"},
    "loggers": {"uvicorn": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
                "uvicorn.error": {"level": "INFO"}},
}  # fmt: skip


@main.command()
@_json_option
@click.pass_obj
def status(ctx: Ctx, as_json: bool) -> None:
    """Which backend each store uses, and whether it answers (exit 1 if one does not)."""
    stores = ctx.registry.backends.describe()
    rows = [s.__dict__ for s in stores]
    if as_json:
        _emit({"mode": ctx.settings.mode, "stores": rows})
    else:
        table = Table("store", "backend", "target", "answers", "detail")
        for r in rows:
            table.add_row(
                r["store"],
                r["backend"],
                r["target"],
                "yes" if r["ok"] else "[red]no[/red]",
                r["detail"],
            )
        out.print(f"mode: {ctx.settings.mode}")
        out.print(table)
    if not all(s.ok for s in stores):
        sys.exit(1)


def run() -> None:
    """Console entry point (``alien``): the command, then a prompt exit.

    Tearing down an interpreter that has loaded Dagster, SQLAlchemy and pydantic took 1.3 s
    of pure Python on this project's machines, after every store is closed and every file
    written. So once the command is done, the exit handlers run (they close clients that
    persist on close, such as Qdrant's local mode) and the process leaves with ``os._exit``.
    An unexpected exception still propagates with its traceback and the usual teardown.
    """
    import atexit
    import os

    try:
        main.main(prog_name="alien")
        status: object = 0
    except SystemExit as done:
        status = done.code
    if status is None:
        status = 0
    elif not isinstance(status, int):
        print(status, file=sys.stderr)
        status = 1
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BrokenPipeError:  # the reader (say, `| head`) left early
        status = status or 1
    atexit._run_exitfuncs()
    os._exit(status)


if __name__ == "__main__":  # pragma: no cover
    run()
