"""The pipeline's steps as plain functions: raw documents -> text -> chunks -> embeddings ->
vector index and keyword index, for one tenant.

Every step is incremental in the same way. Its upstream is a map entry id -> hash of what the
previous step produced; its manifest says which input hash each of its outputs came from. An
entry whose input hash changed is processed, an entry that vanished upstream (deleted, or
failed earlier) has its output removed, everything else is left alone. A failure is recorded
in the manifest with its input hash, so a broken document is not retried until it changes,
and it never stops the other entries. Outputs are written before the manifest row, and every
index write replaces an entry's points in one transaction, so a step killed at any moment is
simply finished by the next run.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import logging
import re
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any, Protocol

import numpy as np

from alien.documents import finish_deletions, register_source, unpack_attachments
from alien.layout import (
    INBOX,
    chunks_key,
    embeddings_key,
    figure_key,
    figures_prefix,
    raw_key,
    rejected_key,
    text_key,
)
from resources.analysis import (
    ANALYSIS_VERSION,
    dominant_language,
    language_code,
    page_languages,
    preload_language_model,
)
from resources.catalog import (
    DEFAULT_DATASET,
    Catalog,
    Entry,
    EntryStatus,
    ManifestRecord,
    utcnow,
)
from resources.chunking import Chunk, chunk_pages
from resources.embedder import Embedder
from resources.extract import IMAGE_TYPES, PDF, DocumentLimits, ExtractionError, PageText
from resources.extract_worker import BoundedExtractor, ExtractionJob
from resources.formats import EMAIL_TYPES, FormatError
from resources.keywords import KeywordDoc
from resources.mistral_ocr import MistralOcr, OcrBudgetExceeded
from resources.outages import reraise_outage
from resources.settings import AlienSettings
from resources.stores import EMBEDDINGS_STEP, SpaceMap, TenantStores
from resources.vectors import VectorPoint, VectorSpace

log = logging.getLogger(__name__)

RAW, TEXT, CHUNKS, EMBEDDINGS, VECTORS, KEYWORDS = (
    "raw_documents",
    "ocr_output",
    "chunks",
    EMBEDDINGS_STEP,  # the store layer reads its manifest (a tenant's first vector space)
    "vector_index",
    "keyword_index",
)
# Bump a step's version when its output format or logic changes: every entry is redone.
_VERSIONS = {RAW: 1, TEXT: 1, CHUNKS: 1, EMBEDDINGS: 1, VECTORS: 1, KEYWORDS: 1}

Progress = Callable[[str, int, int], None]


class RunCancelled(Exception):
    """The run was asked to stop (Ctrl-C, its worker shutting down). Whatever was finished
    stays; the entries it was working on go back to ``pending`` (``release``) and the next
    run takes them up."""


def release(stores: TenantStores, claim: str | None = None) -> int:
    """After a stopped run: its unfinished entries (those of ``claim``, else every one left
    ``processing``) are ``pending`` again; how many."""
    return stores.catalog.release_processing(claim)


@dataclass
class _Claim:
    """The run working in this thread: its id marks the entries it takes (``processing``),
    and it renews them while it lives, so a run that died is told from one that is slow."""

    id: str
    catalog: Catalog
    every: float
    renewed: float


@contextlib.contextmanager
def claiming(stores: TenantStores, claim: str) -> Iterator[str]:
    """Entries this thread's steps take meanwhile carry ``claim`` (the run id), renewed at
    every quarter of ``ALIEN_CLAIM_TIMEOUT_SECONDS`` from the steps' regular checkpoints."""
    previous = getattr(_local, "claim", None)
    every = stores.settings.claim_timeout_seconds / 4
    _local.claim = _Claim(claim, stores.catalog, every, time.monotonic())
    try:
        yield claim
    finally:
        _local.claim = previous


def current_claim() -> str | None:
    current: _Claim | None = getattr(_local, "claim", None)
    return current.id if current else None


def _renew_claim() -> None:
    current: _Claim | None = getattr(_local, "claim", None)
    if current is not None and time.monotonic() - current.renewed >= current.every:
        current.catalog.renew_claim(current.id)
        current.renewed = time.monotonic()


def take_over(stores: TenantStores, run_ended: Callable[[str], bool] | None = None) -> int:
    """Entries whose run will not finish them go back to ``pending``, saying so: those of a
    run known to have ended (``run_ended(claim)``: failed while its catalog was down, say),
    and those whose run stopped renewing its claim (killed, its machine lost). How many."""
    taken = 0
    for claim in stores.catalog.claims() if run_ended is not None else []:
        if claim != current_claim() and run_ended(claim):
            released = stores.catalog.release_processing(claim)
            log.warning("%s entries of %s: taken over from run %s, which ended without "
                        "finishing them", released, stores.tenant, claim)  # fmt: skip
            taken += released
    cutoff = utcnow() - timedelta(seconds=stores.settings.claim_timeout_seconds)
    for entry in stores.catalog.take_over_stale(cutoff):
        log.warning(
            "entry %s of %s: taken over, its run stopped renewing its claim at %s",
            entry.id,
            stores.tenant,
            entry.updated_at.isoformat(),
        )
        taken += 1
    return taken


@dataclass
class _Observer:
    listener: Progress | None
    reports: list[StepReport]
    cancel: threading.Event | None


# Set by a caller that runs the Dagster job in its own thread (the CLI, the API's worker), to
# see progress and the steps' reports and to cancel; per thread, since the API's worker runs
# several tenants' jobs side by side. A run launched by the Dagster daemon has no observer.
_local = threading.local()


def _current() -> _Observer | None:
    return getattr(_local, "observer", None)


@contextlib.contextmanager
def observe(
    listener: Progress | None = None, cancel: threading.Event | None = None
) -> Iterator[list[StepReport]]:
    """Collect the reports (and progress) of steps run in this thread meanwhile; once
    ``cancel`` is set, the steps stop at their next entry or batch (``RunCancelled``)."""
    reports: list[StepReport] = []
    previous = _current()
    _local.observer = _Observer(listener, reports, cancel)
    try:
        yield reports
    finally:
        _local.observer = previous


def progress_listener() -> Progress | None:
    current = _current()
    return current.listener if current else None


def record_report(report: StepReport) -> None:
    current = _current()
    if current is not None:
        current.reports.append(report)


def check_cancelled() -> None:
    """Raise ``RunCancelled`` if this thread's run was asked to stop; renew the run's claim
    when due (steps call this between entries and batches)."""
    current = _current()
    if current is not None and current.cancel is not None and current.cancel.is_set():
        raise RunCancelled("the run was cancelled before it finished")
    _renew_claim()


@dataclass
class StepReport:
    step: str
    processed: int = 0
    failed: int = 0
    removed: int = 0
    unchanged: int = 0
    pages: int = 0
    chunks: int = 0
    seconds: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)

    def metadata(self) -> dict[str, Any]:
        out = {
            "processed": self.processed,
            "failed": self.failed,
            "removed": self.removed,
            "unchanged": self.unchanged,
            "pages": self.pages,
            "chunks": self.chunks,
            "seconds": round(self.seconds, 3),
        }
        out.update(self.details)
        return out


def _input_hash(step: str, upstream_hash: str, config: str = "") -> str:
    return hashlib.sha256(f"{step}:{_VERSIONS[step]}:{config}:{upstream_hash}".encode()).hexdigest()


def _ok(manifest: dict[str, ManifestRecord]) -> dict[str, ManifestRecord]:
    return {eid: rec for eid, rec in manifest.items() if rec.ok}


@dataclass
class _Plan:
    todo: list[tuple[str, str, str]]  # entry id, input hash, source sha256
    remove: list[str]
    unchanged: int


def _plan(
    stores: TenantStores,
    step: str,
    upstream: dict[str, tuple[str, str]],  # entry id -> (upstream hash, source sha256)
    config: str | Callable[[str], str],  # the step's settings, or an entry's (its dataset's)
    full_refresh: bool,
) -> _Plan:
    mine = stores.catalog.manifest(step, meta=False)
    todo = []
    for eid, (up_hash, source_sha) in upstream.items():
        wanted = _input_hash(step, up_hash, config if isinstance(config, str) else config(eid))
        rec = mine.get(eid)
        if full_refresh or rec is None or rec.input_hash != wanted:
            todo.append((eid, wanted, source_sha))
    remove = [eid for eid in mine if eid not in upstream]
    return _Plan(todo=todo, remove=remove, unchanged=len(upstream) - len(todo))


def _upstream_of(stores: TenantStores, step: str) -> dict[str, tuple[str, str]]:
    return {
        eid: (rec.input_hash, rec.source_sha256)
        for eid, rec in _ok(stores.catalog.manifest(step, meta=False)).items()
    }


# An absolute path under a server's usual roots inside a message (a spool file, a library's
# install path); other slashes (PDF filter names, page ranges) are left as they are.
_PATH = re.compile(
    r"(?<![\w.:/])/(?:tmp|var|home|root|usr|opt|srv|work|mnt|data|etc|proc|run|app|lib)"
    r"(?:/[^\s'\"()\[\]<>,;:]*)+"
)


def public_reason(text: str, limit: int = 500) -> str:
    """A failure reason fit for the tenant: no server file paths, bounded length."""
    return _PATH.sub("<path>", text)[:limit]


def _fail(
    stores: TenantStores, step: str, eid: str, input_hash: str, sha: str, reason: str
) -> None:
    reason = public_reason(reason)
    stores.catalog.record_manifest(
        step, [ManifestRecord(eid, input_hash, sha, output_key=None, error=reason)]
    )
    stores.catalog.set_status([eid], EntryStatus.FAILED, reason)


def _unexpected(err: BaseException) -> str:
    """The reason an entry gets for a failure nobody foresaw: its kind only; the message (a
    server's address, a path, a query) goes to this service's log."""
    reraise_outage(err)  # a store that does not answer is not the document's fault
    log.error("unexpected error: %s", "".join(traceback.format_exception(err)))
    return f"internal error ({type(err).__name__}); the service log has the details"


# An attachment that is an email is unpacked too, to this depth.
_MAX_EMAIL_NESTING = 4


# -- raw_documents --------------------------------------------------------------------------
def drain_inbox(stores: TenantStores, dataset: str = DEFAULT_DATASET) -> dict[str, int]:
    """Register every file in the tenant's inbox folder, then remove it from the inbox: once
    stored as an entry's original, or, when refused before storage (too large), moved to
    ``rejected/`` with the reason on its failed entry, until the user deletes that entry."""
    counts = {"new": 0, "updated": 0, "unchanged": 0, "rejected": 0}
    stores.catalog.ensure_dataset(dataset)
    for info in list(stores.objects.list(INBOX)):
        name = info.key[len(INBOX) :]
        with stores.objects.local_path(info.key) as path:
            reg = register_source(
                stores,
                dataset=dataset,
                source_uri=f"inbox:{name}",
                source_name=name.rsplit("/", 1)[-1],
                open_stream=lambda p=path: p.open("rb"),
                size=info.size,
            )
            entry = reg.entry
            if entry.status == EntryStatus.FAILED and not entry.sha256:  # refused, not stored
                kept = rejected_key(info.key)
                with path.open("rb") as stream:
                    stores.objects.put_stream(kept, stream)
                stores.catalog.update_entry(
                    entry.id, object_key=kept, reason=f"{entry.reason}; the file is kept at {kept}"
                )
                counts["rejected"] += 1
        counts[reg.outcome] += 1
        stores.objects.delete(info.key)
    return counts


def run_raw_documents(
    stores: TenantStores,
    full_refresh: bool = False,
    progress: Progress | None = None,
    run_ended: Callable[[str], bool] | None = None,
) -> StepReport:
    started = time.perf_counter()
    report = StepReport(RAW)
    with stores.lock(RAW):
        report.details["taken_over"] = take_over(stores, run_ended)
        report.details["deletions_finished"] = finish_deletions(stores)
        inbox = drain_inbox(stores)
        report.details["inbox_registered"] = inbox["new"] + inbox["updated"]
        report.details["inbox_rejected"] = inbox["rejected"]
        if full_refresh or stores.catalog.has_unfinished() or stores.model_work_pending():
            # This run will embed: load the model while the next steps extract and chunk.
            stores.embedder.preload()
        # An email's attachments become entries of their own in this step; an attachment
        # that is an email is unpacked in the next round (nesting is bounded).
        for _ in range(_MAX_EMAIL_NESTING + 1):
            hashes = stores.catalog.entry_hashes()  # two columns: tenants hold 100,000 entries
            upstream = {eid: (sha, sha) for eid, sha in hashes.items() if sha}
            plan = _plan(stores, RAW, upstream, "", full_refresh and not report.processed)
            emails = _record_originals(stores, plan, report, progress)
            unpacked = 0
            for entry in emails:
                try:
                    counts = unpack_attachments(stores, entry)
                except FormatError as err:
                    sha = entry.sha256
                    _fail(stores, RAW, entry.id, _input_hash(RAW, sha, ""), sha, str(err))
                    report.failed += 1
                    continue
                unpacked += counts["new"] + counts["updated"]
                report.details["attachments"] = report.details.get("attachments", 0) + sum(
                    counts[k] for k in ("new", "updated", "unchanged")
                )
            if not unpacked:
                break
        report.unchanged = plan.unchanged
    report.seconds = time.perf_counter() - started
    return report


def _record_originals(
    stores: TenantStores, plan: _Plan, report: StepReport, progress: Progress | None
) -> list[Entry]:
    """Record the planned entries whose original is in the object store (the others fail);
    the emails among them, whose attachments are to be unpacked."""
    records, emails = [], []
    if progress and plan.todo:
        progress(RAW, 0, len(plan.todo))
    todo = {e.id: e for e in stores.catalog.entries(ids=[t[0] for t in plan.todo])}
    for eid, input_hash, sha in plan.todo:
        entry = todo.get(eid)
        if entry is None:
            continue  # deleted meanwhile
        if not stores.objects.exists(entry.object_key or raw_key(eid)):
            _fail(stores, RAW, eid, input_hash, sha, "original file missing from object store")
            report.failed += 1
            continue
        records.append(ManifestRecord(eid, input_hash, sha, output_key=entry.object_key))
        if entry.media_type in EMAIL_TYPES:
            emails.append(entry)
    stores.catalog.record_manifest(RAW, records)
    if progress and plan.todo:
        progress(RAW, len(plan.todo), len(plan.todo))
    report.processed += len(records)
    stores.catalog.forget_manifest(RAW, plan.remove)
    report.removed += len(plan.remove)
    report.unchanged = plan.unchanged
    return emails


# -- ocr_output (text extraction, OCR for scanned pages) ------------------------------------
def read_pages(stores: TenantStores, entry_id: str) -> list[PageText]:
    data = json.loads(stores.objects.get_bytes(text_key(entry_id)))
    return [PageText(p["page"], p["text"], p["method"]) for p in data["pages"]]


def read_page_languages(stores: TenantStores, entry_id: str) -> dict[int, str]:
    """Page -> language as the text step recorded it (none in text made before languages)."""
    data = json.loads(stores.objects.get_bytes(text_key(entry_id)))
    return {p["page"]: p["language"] for p in data["pages"] if p.get("language")}


def pinned_language(stores: TenantStores, dataset: str) -> str | None:
    """The language a dataset pins (its config's ``language``): no detection then."""
    found = stores.catalog.dataset(dataset)
    return (found.config.get("language") or None) if found else None


@dataclass(frozen=True)
class DatasetSettings:
    """What a dataset's configuration overrides of the cluster's settings (None: the
    cluster's): OCR engine and languages, chunk window; its language is ``pinned_language``."""

    ocr_engine: str | None = None
    ocr_languages: str | None = None
    chunk_tokens: int | None = None

    @classmethod
    def of(cls, config: dict[str, Any]) -> DatasetSettings:
        return cls(
            ocr_engine=config.get("ocr_engine") or None,
            ocr_languages=config.get("ocr_languages") or None,
            chunk_tokens=config.get("chunk_tokens") or None,
        )


#: The dataset settings that change how its entries are processed (the others describe it).
PROCESSING_SETTINGS = ("language", "chunk_tokens", "ocr_engine", "ocr_languages", "embedding_model")


def processing_fingerprint(configs: Iterable[tuple[str, dict[str, Any]]]) -> str | None:
    """A fingerprint of what the datasets' configs (name, config) override of processing;
    None when none overrides anything. A change of it is work for the next run (the
    ingestion sensor, the Data API's worker)."""
    overrides = {}
    for name, config in configs:
        chosen = {k: config[k] for k in PROCESSING_SETTINGS if config.get(k) is not None}
        if chosen:
            overrides[name] = chosen
    if not overrides:
        return None
    raw = json.dumps(overrides, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def dataset_settings(stores: TenantStores) -> dict[str, DatasetSettings]:
    """Every dataset's overrides, by name (datasets are few; read once per step)."""
    return {d.name: DatasetSettings.of(d.config) for d in stores.catalog.datasets()}


def _mistral(settings: AlienSettings) -> MistralOcr:
    """This run's Mistral OCR, with a fresh page budget (``ALIEN_OCR=mistral``, or a dataset's
    ``ocr_engine``); without an API key its entries fail saying so."""
    if settings.mistral_api_key is None:
        raise ExtractionError(
            "Mistral OCR (ALIEN_OCR=mistral or the dataset's ocr_engine) needs MISTRAL_API_KEY"
        )
    return MistralOcr(
        settings.mistral_api_key.get_secret_value(),
        settings.mistral_ocr_model,
        settings.ocr_max_pages_per_run,
    )


_Todo = tuple[str, str, str]  # entry id, input hash, content hash
_Read = tuple[int, _Todo, Entry, list[PageText] | Exception]


def _attempt(read: Callable[[], list[PageText]]) -> list[PageText] | Exception:
    """The pages ``read`` returns, or the error it raised: the entry's own (a cancelled run
    still stops)."""
    try:
        return read()
    except RunCancelled:
        raise
    except Exception as err:
        return err


def _read_documents(
    stores: TenantStores,
    todo: list[_Todo],
    bounded: BoundedExtractor,
    ocr_of: Callable[[str], tuple[str, str]],
    mistral_pages: Callable[[str, Entry], list[PageText]],
) -> Iterator[_Read]:
    """Each planned entry with its pages or what went wrong reading it, in plan order (an
    entry deleted meanwhile left out); ``ocr_of`` gives an entry's OCR engine and languages.
    Reading runs one document ahead: the child reads the next while the caller records this
    one (languages, text, catalog). Mistral's entries are read here, in turn."""
    ahead: tuple[int, _Todo, Entry, contextlib.ExitStack] | None = None

    def taken() -> _Read:
        """The document in the child, its pages (or error) taken and its file let go."""
        nonlocal ahead
        assert ahead is not None
        n, item, entry, files = ahead

        def result() -> list[PageText]:
            with files:
                return bounded.result()

        outcome = _attempt(result)
        ahead = None
        return n, item, entry, outcome

    try:
        for n, item in enumerate(todo, 1):
            check_cancelled()
            entry = stores.catalog.get_entry(item[0])
            if entry is None:
                continue
            done = taken() if ahead is not None else None
            engine, languages = ocr_of(item[0])
            if engine == "mistral" and entry.media_type in (PDF, *IMAGE_TYPES):
                if done is not None:
                    yield done  # recorded before this one is read
                yield n, item, entry, _attempt(functools.partial(mistral_pages, item[0], entry))
                continue
            files = contextlib.ExitStack()
            try:
                path = files.enter_context(stores.objects.local_path(entry.object_key))
                # In a child with bounded memory and time: one document cannot take the
                # server down, and one over a cap does not stop the others.
                bounded.submit(path, entry.media_type, languages)
                ahead = (n, item, entry, files)
            except RunCancelled:
                files.close()
                raise
            except Exception as err:
                files.close()
                failed: _Read | None = (n, item, entry, err)
            else:
                failed = None
            if done is not None:
                yield done  # recorded while the child reads this one
            if failed is not None:
                yield failed
        if ahead is not None:
            yield taken()
    finally:
        if ahead is not None:  # abandoned (cancelled, a store failed): reader, then file
            bounded.abandon()
            ahead[3].close()


def run_ocr_output(
    stores: TenantStores, full_refresh: bool = False, progress: Progress | None = None
) -> StepReport:
    started = time.perf_counter()
    report = StepReport(TEXT)
    settings = stores.settings
    if settings.ocr == "mistral" and settings.mistral_api_key is None:
        raise ValueError("ALIEN_OCR=mistral needs MISTRAL_API_KEY")
    mistral: MistralOcr | None = None
    overrides = dataset_settings(stores)
    kinds = stores.catalog.entry_kinds()

    def ocr_of(eid: str) -> tuple[str, str]:
        """(engine, languages) for the entry's dataset: its override, else the cluster's."""
        own = overrides.get(kinds.get(eid, ("", ""))[0], DatasetSettings())
        return own.ocr_engine or settings.ocr, own.ocr_languages or settings.ocr_languages

    def config(eid: str) -> str:
        # Only what can be OCR'd depends on the OCR settings: a dataset's new OCR languages
        # re-read its scans, not its text files (which would then be re-embedded for nothing).
        engine, languages = ocr_of(eid)
        if kinds.get(eid, ("", ""))[1] not in (PDF, *IMAGE_TYPES):
            engine, languages = settings.ocr, settings.ocr_languages
        name = f"mistral:{settings.mistral_ocr_model}" if engine == "mistral" else stores.ocr.name
        return f"ocr={name}:{languages}:{settings.ocr_dpi}"

    job = ExtractionJob(
        ocr=stores.ocr,
        ocr_dpi=settings.ocr_dpi,
        max_text_bytes=settings.max_text_bytes,
        limits=DocumentLimits(
            max_page_pixels=settings.max_page_pixels,
            max_pages=settings.max_pages_per_entry,
            max_decompressed_bytes=settings.max_decompressed_bytes,
        ),
    )
    bounded = BoundedExtractor(
        job,
        memory_mb=settings.extract_memory_mb,
        seconds=settings.max_seconds_per_entry,
        interrupt=check_cancelled,
    )
    with stores.lock(TEXT), bounded:
        plan = _plan(stores, TEXT, _upstream_of(stores, RAW), config, full_refresh)
        stores.catalog.set_status(
            [eid for eid, _, _ in plan.todo], EntryStatus.PROCESSING, claim=current_claim()
        )
        if progress and plan.todo:
            progress(TEXT, 0, len(plan.todo))  # the bar shows while the first one is read
        if plan.todo:
            preload_language_model()  # while the first document is read
        ocr_pages = 0

        def mistral_pages(eid: str, entry: Entry) -> list[PageText]:
            nonlocal mistral
            mistral = mistral or _mistral(settings)
            from resources.mistral_ocr import page_count

            with stores.objects.local_path(entry.object_key) as path:
                pages_here = page_count(path, entry.media_type)
                if pages_here > settings.max_pages_per_entry:
                    raise ExtractionError(
                        f"PDF has {pages_here:,} pages, over the cap of "
                        f"{settings.max_pages_per_entry:,} pages per entry "
                        "(ALIEN_MAX_PAGES_PER_ENTRY)"
                    )
                result = mistral.process(path, entry.media_type)
            stores.objects.delete_prefix(figures_prefix(eid))
            for figure in result.figures:
                stores.objects.put_bytes(figure_key(eid, figure.id), figure.data)
            return result.pages

        documents = contextlib.closing(
            _read_documents(stores, plan.todo, bounded, ocr_of, mistral_pages)
        )
        with documents as read:  # closed (its document abandoned) before the lock is let go
            for n, (eid, input_hash, sha), entry, outcome in read:
                if isinstance(outcome, OcrBudgetExceeded):  # pending: the next run has a budget
                    stores.catalog.set_status(
                        [eid], EntryStatus.PENDING, public_reason(str(outcome))
                    )
                    report.details["deferred"] = report.details.get("deferred", 0) + 1
                    continue
                if isinstance(outcome, ExtractionError):
                    _fail(stores, TEXT, eid, input_hash, sha, str(outcome))
                    report.failed += 1
                    continue
                if isinstance(outcome, Exception):  # a bug must not block the other entries
                    _fail(stores, TEXT, eid, input_hash, sha, _unexpected(outcome))
                    report.failed += 1
                    continue
                pages = outcome
                languages = page_languages(
                    [p.text for p in pages], pinned_language(stores, entry.dataset)
                )
                body = {
                    "entry_id": eid,
                    "pages": [
                        {"page": p.page, "text": p.text, "method": p.method, "language": lang}
                        for p, lang in zip(pages, languages, strict=True)
                    ],
                }
                language = dominant_language(languages, [len(p.text) for p in pages])
                stores.objects.put_bytes(text_key(eid), json.dumps(body).encode())
                page_ocr = sum(p.method == "ocr" for p in pages)
                ocr_pages += page_ocr
                stores.catalog.record_manifest(
                    TEXT,
                    [
                        ManifestRecord(
                            eid,
                            input_hash,
                            sha,
                            output_key=text_key(eid),
                            meta={"pages": len(pages), "ocr_pages": page_ocr, "language": language},
                        )
                    ],
                )
                stores.catalog.update_entry(eid, pages=len(pages))
                report.processed += 1
                report.pages += len(pages)
                if progress:
                    progress(TEXT, n, len(plan.todo))
        for eid in plan.remove:
            stores.objects.delete(text_key(eid))
        stores.catalog.forget_manifest(TEXT, plan.remove)
        report.removed = len(plan.remove)
        report.unchanged = plan.unchanged
        report.details["ocr_pages"] = ocr_pages
        report.details["readers_replaced"] = bounded.restarts
    report.seconds = time.perf_counter() - started
    return report


# -- chunks ---------------------------------------------------------------------------------
def read_chunks(stores: TenantStores, entry_id: str) -> list[Chunk]:
    data = json.loads(stores.objects.get_bytes(chunks_key(entry_id)))
    return [Chunk(**c) for c in data["chunks"]]


def run_chunks(
    stores: TenantStores, full_refresh: bool = False, progress: Progress | None = None
) -> StepReport:
    started = time.perf_counter()
    report = StepReport(CHUNKS)
    spaces = stores.space_map()
    overrides = dataset_settings(stores)
    kinds = stores.catalog.entry_kinds()
    chunkers: dict[str, tuple[Embedder, str]] = {}

    def chunking(eid: str) -> tuple[Embedder, str]:
        """The tokenizer and name of the space the entry's dataset searches (during a
        model change: the old one's)."""
        space = spaces.reading(kinds.get(eid, ("", ""))[0])
        if space.name not in chunkers:
            chunkers[space.name] = stores.chunking(space)
        return chunkers[space.name]

    def window(eid: str) -> int:
        """The entry's chunk window: its dataset's, within what the model reads."""
        own = overrides.get(kinds.get(eid, ("", ""))[0], DatasetSettings()).chunk_tokens
        limit = chunking(eid)[0].max_content_tokens
        return min(own or limit, limit)

    def config(eid: str) -> str:
        return f"{chunking(eid)[1]}:{window(eid)}"

    with stores.lock(CHUNKS):
        plan = _plan(stores, CHUNKS, _upstream_of(stores, TEXT), config, full_refresh)
        for n, (eid, input_hash, sha) in enumerate(plan.todo):
            check_cancelled()
            if progress:
                progress(CHUNKS, n, len(plan.todo))
            try:
                pages = read_pages(stores, eid)
                chunks = chunk_pages(eid, pages, chunking(eid)[0].tokenizer, window(eid))
                languages = read_page_languages(stores, eid)
                chunks = [replace(c, language=languages.get(c.page or 1)) for c in chunks]
            except Exception as err:
                _fail(stores, CHUNKS, eid, input_hash, sha, _unexpected(err))
                report.failed += 1
                continue
            if not chunks:
                reason = f"no text found in {len(pages)} page(s)"
                if any(p.method == "empty" for p in pages):
                    reason += " (pages without a text layer or readable image)"
                _fail(stores, CHUNKS, eid, input_hash, sha, reason)
                report.failed += 1
                continue
            cap = stores.settings.max_chunks_per_entry
            if len(chunks) > cap:  # before any of them costs an embedding
                reason = (f"{len(chunks):,} chunks, over the cap of {cap:,} chunks per entry "
                          "(ALIEN_MAX_CHUNKS_PER_ENTRY)")  # fmt: skip
                _fail(stores, CHUNKS, eid, input_hash, sha, reason)
                report.failed += 1
                continue
            body = {"entry_id": eid, "chunks": [c.__dict__ for c in chunks]}
            stores.objects.put_bytes(chunks_key(eid), json.dumps(body).encode())
            stores.catalog.record_manifest(
                CHUNKS,
                [
                    ManifestRecord(
                        eid, input_hash, sha, chunks_key(eid), meta={"chunks": len(chunks)}
                    )
                ],
            )
            stores.catalog.update_entry(eid, chunks=len(chunks))
            report.processed += 1
            report.chunks += len(chunks)
        if progress and plan.todo:
            progress(CHUNKS, len(plan.todo), len(plan.todo))
        for eid in plan.remove:
            stores.objects.delete(chunks_key(eid))
        stores.catalog.forget_manifest(CHUNKS, plan.remove)
        if stores.catalog.rechunk_pending():  # every entry is cut for the searched model now
            for space in {spaces.default.name: spaces.default, **spaces.own}.values():
                stores.catalog.rechunked(space.chunked_as, space.dataset)
        report.removed = len(plan.remove)
        report.unchanged = plan.unchanged
    report.seconds = time.perf_counter() - started
    return report


# -- embeddings -----------------------------------------------------------------------------
def run_embeddings(
    stores: TenantStores,
    full_refresh: bool = False,
    progress: Progress | None = None,
    group_chunks: int = 512,
) -> StepReport:
    """Embed new chunks. Several entries share one model call so batches stay full."""
    started = time.perf_counter()
    report = StepReport(EMBEDDINGS)
    spaces = stores.space_map(prepare=True)  # a dataset's new space is made first
    kinds = stores.catalog.entry_kinds()

    def embedder_for(eid: str) -> Embedder:
        """The model of the space the entry's vectors go to (its dataset's own, or the
        tenant's configured one)."""
        return stores.embedder_of(spaces.target(kinds.get(eid, ("", ""))[0]).model)

    def config(eid: str) -> str:
        embedder = embedder_for(eid)
        return f"{embedder.model_name}:{embedder.dimension}"

    model_seconds = 0.0
    with stores.lock(EMBEDDINGS):
        plan = _plan(stores, EMBEDDINGS, _upstream_of(stores, CHUNKS), config, full_refresh)
        # one model after another, so that each model's batches stay full
        plan.todo.sort(key=lambda t: embedder_for(t[0]).model_name)
        todo_ids = {t[0] for t in plan.todo}
        total = sum(
            rec.meta.get("chunks", 0)
            for eid, rec in (stores.catalog.manifest(CHUNKS) if todo_ids else {}).items()
            if eid in todo_ids
        )
        done = 0
        group: list[tuple[str, str, str, list[Chunk]]] = []
        pending = 0
        embedder = stores.embedder
        if progress and total:
            progress(EMBEDDINGS, 0, total)

        def flush() -> None:
            nonlocal group, pending, done, model_seconds
            if not group:
                return
            texts = [c.text for *_, chunks in group for c in chunks]
            t0 = time.perf_counter()
            before = done

            def batch_done(count: int) -> None:
                check_cancelled()  # between batches: a large entry stops in seconds
                if progress:
                    progress(EMBEDDINGS, before + count, total)

            vectors = embedder.embed(texts, on_batch=batch_done)
            model_seconds += time.perf_counter() - t0
            offset = 0
            records = []
            for eid, input_hash, sha, chunks in group:
                block = vectors[offset : offset + len(chunks)]
                offset += len(chunks)
                buf = _npy_bytes(block)
                stores.objects.put_bytes(embeddings_key(eid), buf)
                records.append(
                    ManifestRecord(
                        eid,
                        input_hash,
                        sha,
                        embeddings_key(eid),
                        meta={
                            "chunks": len(chunks),
                            "model": embedder.model_name,  # the space: MODEL[@VARIANT]
                            "base_model": embedder.spec.model,
                            "variant": embedder.variant,
                            "dim": int(block.shape[1]),
                        },
                    )
                )
            stores.catalog.record_manifest(EMBEDDINGS, records)
            report.processed += len(group)
            report.chunks += len(texts)
            done += len(texts)
            group, pending = [], 0

        for eid, input_hash, sha in plan.todo:
            try:
                chunks = read_chunks(stores, eid)
            except Exception as err:
                _fail(stores, EMBEDDINGS, eid, input_hash, sha, _unexpected(err))
                report.failed += 1
                continue
            # Entries share a model call up to ``group_chunks`` chunks, so batches stay full
            # and progress (and a restart after a kill) moves entry by entry.
            if group and (
                pending + len(chunks) > group_chunks or embedder_for(eid) is not embedder
            ):
                flush()
            embedder = embedder_for(eid)
            group.append((eid, input_hash, sha, chunks))
            pending += len(chunks)
        flush()
        for eid in plan.remove:
            stores.objects.delete(embeddings_key(eid))
        stores.catalog.forget_manifest(EMBEDDINGS, plan.remove)
        report.removed = len(plan.remove)
        report.unchanged = plan.unchanged
    report.seconds = time.perf_counter() - started
    report.details.update(
        model=stores.embedder.model_name,
        dimension=stores.embedder.dimension,
        model_seconds=round(model_seconds, 3),
        chunks_per_second=round(report.chunks / model_seconds, 2) if model_seconds else 0.0,
    )
    return report


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array, dtype=np.float32), allow_pickle=False)
    return buf.getvalue()


def read_embeddings(stores: TenantStores, entry_id: str) -> np.ndarray:
    return np.load(
        io.BytesIO(stores.objects.get_bytes(embeddings_key(entry_id))), allow_pickle=False
    )


# -- indexes --------------------------------------------------------------------------------
class _Index(Protocol):
    def delete_entries(self, entry_ids: Iterable[str]) -> int: ...
    def counts_by_entry(self) -> dict[str, int]: ...


def _run_index_step(
    stores: TenantStores,
    step: str,
    upstream_step: str,
    index: _Index,
    write_entry: Callable[[Entry], int],
    full_refresh: bool,
    progress: Progress | None = None,
    upstream: Callable[[], dict[str, tuple[str, str]]] | None = None,
    config: str | Callable[[str], str] = "",
    meta: Callable[[str], dict[str, Any]] | None = None,
    remove: Callable[[list[str]], int] | None = None,
) -> StepReport:
    """Bring one index up to date: ``write_entry`` replaces an entry's rows, returns how many.
    ``upstream`` picks the entries ready for it (default: every one ``upstream`` step made);
    ``config`` is the step's settings (or an entry's); ``meta`` gives what goes into an
    entry's manifest row; ``remove`` takes entries out (default: the index's
    ``delete_entries``)."""
    started = time.perf_counter()
    report = StepReport(step)
    with stores.lock(step):
        ready = upstream() if upstream is not None else _upstream_of(stores, upstream_step)
        plan = _plan(stores, step, ready, config, full_refresh)
        for n, (eid, input_hash, sha) in enumerate(plan.todo):
            check_cancelled()
            if progress:
                progress(step, n, len(plan.todo))
            entry = stores.catalog.get_entry(eid)
            if entry is None:
                continue  # deleted meanwhile
            try:
                rows = write_entry(entry)
            except Exception as err:
                _fail(stores, step, eid, input_hash, sha, _unexpected(err))
                report.failed += 1
                continue
            extra = meta(eid) if meta else {}
            record = ManifestRecord(eid, input_hash, sha, None, meta={"rows": rows, **extra})
            stores.catalog.record_manifest(step, [record])
            report.processed += 1
            report.chunks += rows
        if progress and plan.todo:
            progress(step, len(plan.todo), len(plan.todo))
        (remove or index.delete_entries)(plan.remove)
        stores.catalog.forget_manifest(step, plan.remove)
        report.removed = len(plan.remove)
        # Rows of entries the catalog no longer has (a delete that raced a write) go too.
        known = set(stores.catalog.entry_hashes())
        orphans = [eid for eid in index.counts_by_entry() if eid not in known]
        report.details["orphans_removed"] = index.delete_entries(orphans) if orphans else 0
        report.unchanged = plan.unchanged
        # Entries this step wrote, and any left unfinished whose every step is done (a run
        # killed after its last index write and before this mark).
        mark_indexed(stores, [t[0] for t in plan.todo] + stores.catalog.unfinished())
    report.seconds = time.perf_counter() - started
    return report


def run_vector_index(
    stores: TenantStores, full_refresh: bool = False, progress: Progress | None = None
) -> StepReport:
    """Write each dataset's vectors into its space; switch searches to a space once it is
    complete.

    Datasets without a model of their own go to the tenant's default space, the others to
    their own. Normally the space written is the one searched. After a model change (the
    tenant's, or a dataset's) it is a new one, filled entry by entry (a backfill that a kill
    or an outage only pauses) while searches keep reading the old space; when every entry
    of its datasets has its vectors there, the new space is searched instead, in one catalog
    update, and the old one is dropped (or, for a dataset that leaves the default space,
    its points there are deleted).
    """
    if not stores.target_space().created:  # a model change's new space, not recorded yet
        stores.prepare_space(stores.target_space())
    spaces = stores.space_map(prepare=True)
    kinds = stores.catalog.entry_kinds()

    def target(eid: str) -> VectorSpace:
        return spaces.target(kinds.get(eid, ("", ""))[0])

    def write(entry: Entry) -> int:
        chunks = read_chunks(stores, entry.id)
        vectors = read_embeddings(stores, entry.id)
        if len(chunks) != len(vectors):
            raise ValueError(f"{len(chunks)} chunks but {len(vectors)} vectors")
        points = [
            VectorPoint(c.id, v, entry.id, entry.dataset, c.index, c.page)
            for c, v in zip(chunks, vectors, strict=True)
        ]
        stores.vectors_in(target(entry.id)).replace_entry(entry.id, points)
        return len(points)

    default = stores.vectors_in(spaces.default_target)
    report = _run_index_step(
        stores, VECTORS, EMBEDDINGS, default, write, full_refresh, progress,
        upstream=lambda: _embedded_for(stores, target), config=lambda eid: target(eid).name,
        meta=lambda eid: {"space": target(eid).name}, remove=stores.delete_vectors,
    )  # fmt: skip
    report.details["space"] = {"model": spaces.default_target.model,
                               "dimension": spaces.default_target.dim}  # fmt: skip
    if spaces.waiting:
        report.details["datasets_waiting_for_control_plane"] = list(spaces.waiting)
        log.warning("tenant %s: datasets %s wait for the control plane to make their "
                    "spaces", stores.tenant, list(spaces.waiting))  # fmt: skip
    if spaces.targets:
        report.details["dataset_spaces"] = {
            name: {"model": space.model, "dimension": space.dim}
            for name, space in sorted(spaces.targets.items())
        }
    with stores.lock(VECTORS):
        _switch_spaces(stores, stores.space_map(), report)
    return report


def _switch_spaces(stores: TenantStores, spaces: SpaceMap, report: StepReport) -> None:
    """Make every complete space the one its datasets search, and drop what no dataset
    searches or fills any more."""
    kinds = stores.catalog.entry_kinds()
    members: dict[str, set[str]] = {}  # space name -> entries whose vectors go there
    for eid, (dataset, _) in kinds.items():
        members.setdefault(spaces.target(dataset).name, set()).add(eid)
    embedded = _ok(stores.catalog.manifest(EMBEDDINGS))  # read once for every space
    written = stores.catalog.manifest(VECTORS, meta=False)

    def complete(space: VectorSpace) -> bool:
        return _space_complete(space, members.get(space.name, set()), embedded, written)

    default_spaces = [s for s, _ in stores.catalog.vector_spaces() if not s.dataset]
    target = spaces.default_target
    if len(default_spaces) > 1 and complete(target):
        dropped = stores.switch_space(target)
        report.details["switched_to"] = target.model
        report.details["dropped_spaces"] = [f"{s.model}/{s.dim}" for s in dropped]
        log.info("tenant %s: searches now read %s; dropped %s", stores.tenant,
                 target.model, report.details["dropped_spaces"])  # fmt: skip
        spaces = stores.space_map()
    elif len(default_spaces) > 1:
        report.details["switch_pending"] = True
    switched, pending = {}, []
    for dataset in sorted(set(spaces.targets) | set(spaces.own)):
        target, reading = spaces.target(dataset), spaces.reading(dataset)
        if target == reading:
            continue
        if not complete(target):
            pending.append(dataset)
            continue
        if target.dataset:  # into a space of its own
            stores.catalog.activate_space(
                target.name, rechunk=reading.chunked_as != target.chunked_as
            )
        else:  # back into the default space
            stores.catalog.forget_space(reading.name)
            if reading.chunked_as != target.chunked_as:  # its entries are cut again
                stores.catalog.activate_space(spaces.default.name, rechunk=True)
        if reading.dataset:
            stores.drop_space(reading)
        else:  # its points in the default space go (searches there exclude it already)
            mine = [eid for eid, (ds, _) in kinds.items() if ds == dataset]
            stores.vectors_in(reading).delete_entries(mine)
        switched[dataset] = f"{target.model}/{target.dim}"
        log.info("tenant %s: dataset %s now searches %s", stores.tenant, dataset, target.model)
    # spaces of a dataset that neither searches nor fills them (its model changed again,
    # or it is gone)
    keep = {s.name for s in stores.space_map().written()} | {
        s.name for s in stores.catalog.dataset_spaces().values()
    }
    for space, _ in stores.catalog.vector_spaces():
        if space.dataset and space.name not in keep:
            stores.drop_space(space)
    if switched:
        report.details["datasets_switched"] = switched
    if pending:
        report.details["datasets_switch_pending"] = pending


def _embedded_for(
    stores: TenantStores, target: Callable[[str], VectorSpace]
) -> dict[str, tuple[str, str]]:
    """Entries whose current embeddings were made by the model of the space they go to
    (the others wait for the embeddings step: vectors of one model never go into
    another's space)."""
    return {
        eid: (rec.input_hash, rec.source_sha256)
        for eid, rec in _ok(stores.catalog.manifest(EMBEDDINGS)).items()
        if target(eid).holds(rec.meta.get("model", ""), rec.meta.get("dim", 0))
    }


def _space_complete(
    space: VectorSpace,
    members: set[str],
    embedded: dict[str, ManifestRecord],
    written: dict[str, ManifestRecord],
) -> bool:
    """Every entry whose vectors go to ``space`` (``members``) and has embeddings
    (``embedded``) has them from its model, and ``space``'s vector step took it
    (``written``). An entry whose write failed counts as taken: it is ``failed`` with the
    reason (a failure is final until its file changes), and waiting for it would keep the
    whole scope on the old model."""
    for eid, rec in embedded.items():
        if eid not in members:
            continue
        if not space.holds(rec.meta.get("model", ""), rec.meta.get("dim", 0)):
            return False
        done = written.get(eid)
        if done is None or done.input_hash != _input_hash(VECTORS, rec.input_hash, space.name):
            return False
    return True


def run_keyword_index(
    stores: TenantStores, full_refresh: bool = False, progress: Progress | None = None
) -> StepReport:
    def write(entry: Entry) -> int:
        chunks = read_chunks(stores, entry.id)
        pinned = pinned_language(stores, entry.dataset)
        if pinned is None and any(c.language is None for c in chunks):  # made before languages
            found = page_languages([c.text for c in chunks])
            chunks = [c if c.language else replace(c, language=lang)
                      for c, lang in zip(chunks, found, strict=True)]  # fmt: skip
        docs = [
            KeywordDoc(c.id, entry.id, entry.dataset, c.index, c.page, c.start, c.end, c.text,
                       language_code(pinned or c.language))
            for c in chunks
        ]  # fmt: skip
        stores.keywords.replace_entry(entry.id, docs)
        return len(docs)

    # The analysis version: an index analyzed by older code is analyzed again.
    return _run_index_step(
        stores, KEYWORDS, CHUNKS, stores.keywords, write, full_refresh, progress,
        config=ANALYSIS_VERSION,
    )  # fmt: skip


def mark_indexed(stores: TenantStores, entry_ids: Sequence[str]) -> int:
    """Mark entries ``indexed`` once both indexes hold their current content."""
    if not entry_ids:
        return 0
    vectors = _ok(stores.catalog.manifest(VECTORS, meta=False))
    keywords = _ok(stores.catalog.manifest(KEYWORDS, meta=False))
    done = []
    for entry in stores.catalog.entries(ids=list(entry_ids)):
        v, k = vectors.get(entry.id), keywords.get(entry.id)
        if (
            entry.status != EntryStatus.FAILED
            and v is not None
            and k is not None
            and v.source_sha256 == k.source_sha256 == entry.sha256
        ):
            done.append(entry.id)
    stores.catalog.set_status(done, EntryStatus.INDEXED)
    return len(done)


def run_all(
    stores: TenantStores, full_refresh: bool = False, progress: Progress | None = None
) -> list[StepReport]:
    """Every step in order, in this process (the Dagster job runs the same functions)."""
    return [
        run_raw_documents(stores, full_refresh, progress),
        run_ocr_output(stores, full_refresh, progress),
        run_chunks(stores, full_refresh, progress),
        run_embeddings(stores, full_refresh, progress),
        run_vector_index(stores, full_refresh, progress),
        run_keyword_index(stores, full_refresh, progress),
    ]
