"""Entries: upload one file, list metadata, read one entry's content, delete it everywhere."""

from __future__ import annotations

import json
import re
import unicodedata
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import TypeAdapter, ValidationError
from python_multipart.multipart import parse_options_header
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from alien.documents import delete_entry as remove_entry
from alien.documents import register_upload
from alien.pipeline import read_chunks, read_page_languages, read_pages
from data_api.deps import MAX_OFFSET, Reader, Settings, Writer, page_size
from data_api.door import RequestContext
from data_api.errors import ApiError, error_responses, not_found
from data_api.schemas import (
    ChunkPublic,
    EntryChunks,
    EntryList,
    EntryPublic,
    EntryText,
    Metadata,
    PageTextPublic,
    UploadedEntry,
)
from resources.catalog import DEFAULT_DATASET, Entry, EntryStatus
from resources.extract import Refused, admit
from resources.objects import ObjectNotFoundError

router = APIRouter(prefix="/v1/entries", tags=["entries"])
EntryIdPath = Annotated[str, Path(max_length=64, description="Entry id")]
Status = Literal["pending", "processing", "indexed", "failed"]
_DATASET = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_FORM_FIELDS = {"file", "dataset", "metadata"}
_metadata = TypeAdapter(Metadata)

UPLOAD_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "additionalProperties": False,
                    "properties": {
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": "The document: PDF, text, Markdown, HTML, CSV, "
                            "PNG, JPEG, TIFF, DOCX, PPTX, XLSX, ODT, ODS, ODP, EPUB, RTF or "
                            "email (.eml, .msg); its part's Content-Type, if given, must match "
                            "its bytes",
                        },
                        "dataset": {
                            "type": "string",
                            "pattern": _DATASET.pattern,
                            "default": DEFAULT_DATASET,
                        },
                        "metadata": {
                            "type": "string",
                            "description": "A JSON object of at most 32 keys "
                            "([A-Za-z0-9_.-]{1,64}) to strings, numbers or booleans",
                            "examples": ['{"department": "legal", "year": 2024}'],
                        },
                    },
                }
            }
        },
    }
}


@router.post(
    "",
    status_code=202,
    responses={
        200: {
            "model": UploadedEntry,
            "description": "These bytes are already an entry here (to a credential without "
            "`read` scope: the entry id and its own request only)",
        },
        **error_responses(400, 404, 413, 415),
    },
    openapi_extra=UPLOAD_BODY,
)
async def upload_entry(
    request: Request, response: Response, ctx: Writer, settings: Settings
) -> UploadedEntry:
    """Store one file as a `pending` entry; the pipeline then indexes it.

    `202` for a new entry, `200` with the existing entry when the same bytes were already
    uploaded to the dataset. Poll `GET /v1/entries/{entry_id}` for `indexed` or `failed`.
    A credential without `read` scope gets, for bytes already there, the entry id and what it
    sent (name, media type, size, SHA-256, metadata); the stored entry's status, timestamps,
    pages, chunks and reason are null.
    """
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        raise ApiError(
            415, "unsupported_media_type", "upload as multipart/form-data with a 'file' part"
        )
    try:
        form = await _StrictNameParser(
            request.headers, request.stream(), max_files=1, max_fields=4
        ).parse()
    except MultiPartException as err:
        raise ApiError(400, "malformed_multipart", str(err)) from None
    try:
        unknown = sorted(set(form.keys()) - _FORM_FIELDS)
        if unknown:
            raise ApiError(422, "unknown_field", f"unknown form field(s): {', '.join(unknown)}")
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise ApiError(422, "missing_file", "the form needs a 'file' part holding a file")
        dataset = _form_text(form.get("dataset"), "dataset")
        dataset = DEFAULT_DATASET if dataset is None else dataset
        if not _DATASET.match(dataset):
            raise ApiError(422, "invalid_dataset", f"invalid dataset name {dataset!r}")
        metadata = _parse_metadata(_form_text(form.get("metadata"), "metadata"))
        name = clean_file_name(upload.filename)
        size = upload.size or 0
        head = await upload.read(1024)
        media_type = await run_in_threadpool(
            admit_upload,
            name,
            upload.content_type,
            head,
            upload.file,
            size,
            settings.max_file_bytes,
        )
        if ctx.stores.catalog.dataset(dataset) is None:
            raise not_found("dataset", dataset, dataset=dataset)
        registration = await run_in_threadpool(
            register_upload,
            ctx.stores,
            upload.file,  # type: ignore[arg-type]
            dataset=dataset,
            source_name=name,
            media_type=media_type,
            metadata=metadata,
        )
    finally:
        await form.close()
    entry = registration.entry
    status = 202 if registration.outcome == "new" else 200
    await run_in_threadpool(
        ctx.audit,
        "upload_entry",
        entry_id=entry.id,
        dataset=dataset,
        status_code=status,
        detail=registration.outcome,
    )
    worker = request.app.state.worker
    if worker is not None and registration.outcome == "new":
        worker.notify(ctx.stores.tenant)
    response.status_code = status
    if registration.outcome != "new" and not ctx.principal.allows("read"):
        # The same bytes were there already, perhaps from someone else: a key that may not
        # read learns that they exist (the id), and gets back only what it sent itself.
        return UploadedEntry.receipt(
            entry.id, dataset=dataset, source_name=name, media_type=media_type, size=size,
            sha256=entry.sha256, metadata=metadata,
        )  # fmt: skip
    return UploadedEntry.of(entry)


@router.get("", responses=error_responses())
def list_entries(
    ctx: Reader,
    settings: Settings,
    dataset: Annotated[str | None, Query(pattern=_DATASET.pattern)] = None,
    status: Status | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> EntryList:
    """Entries' metadata and status (never content), oldest first, a page at a time."""
    limit = page_size(limit, settings)
    rows = ctx.stores.catalog.entries(
        dataset=dataset, status=status, limit=limit + 1, offset=offset
    )
    listed = [e.id for e in rows[:limit]]  # which entries were disclosed, not only how many
    ctx.audit("list_entries", dataset=dataset, detail=json.dumps({"entries": listed}))
    return EntryList(
        entries=[EntryPublic.of(e) for e in rows[:limit]],
        limit=limit,
        offset=offset,
        next_offset=offset + limit if len(rows) > limit else None,
    )


@router.get("/{entry_id}", responses=error_responses(404))
def get_entry(entry_id: EntryIdPath, ctx: Reader) -> EntryPublic:
    """An entry's metadata and processing status."""
    entry = _entry(ctx, entry_id)
    ctx.audit("get_entry", entry_id=entry.id, dataset=entry.dataset)
    return EntryPublic.of(entry)


@router.get(
    "/{entry_id}/content",
    response_class=StreamingResponse,
    responses={
        200: {
            "content": {"*/*": {"schema": {"type": "string", "format": "binary"}}},
            "description": "The original file, with the media type it was indexed as",
        },
        **error_responses(404),
    },
)
def get_entry_content(entry_id: EntryIdPath, ctx: Reader) -> StreamingResponse:
    """The original file, as uploaded."""
    entry = _entry(ctx, entry_id)
    if not entry.object_key or not ctx.stores.objects.exists(entry.object_key):
        raise ApiError(409, "no_content", "this entry's file was refused and never stored")
    where = {"entry_id": entry.id, "dataset": entry.dataset}
    ctx.charge_egress(entry.size, "get_entry_content", **where)
    ctx.audit("get_entry_content", **where)
    objects = ctx.stores.objects

    def chunks() -> Any:
        with objects.open(entry.object_key) as stream:
            while block := stream.read(256 * 1024):
                yield block

    return StreamingResponse(
        chunks(),
        media_type=entry.media_type,
        headers={
            "Content-Disposition": _attachment(entry.source_name),
            "Content-Length": str(entry.size),
            "X-Content-Type-Options": "nosniff",
        },
    )


@router.get("/{entry_id}/text", responses=error_responses(404, 409))
def get_entry_text(
    entry_id: EntryIdPath,
    ctx: Reader,
    settings: Settings,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET, description="First page, 0-based")] = 0,
    limit: Annotated[int, Query(ge=1, le=1000, description="Pages")] = 20,
) -> EntryText:
    """The entry's extracted text, page by page."""
    limit = page_size(limit, settings)
    entry = _entry(ctx, entry_id)
    try:
        pages = read_pages(ctx.stores, entry.id)
        languages = read_page_languages(ctx.stores, entry.id)
    except ObjectNotFoundError:
        raise _not_extracted(entry) from None
    window = pages[offset : offset + limit]
    where = {"entry_id": entry.id, "dataset": entry.dataset}
    ctx.charge_egress(sum(len(p.text.encode()) for p in window), "get_entry_text", **where)
    ctx.audit("get_entry_text", **where)
    return EntryText(
        entry_id=entry.id,
        total_pages=len(pages),
        pages=[
            PageTextPublic(
                page=p.page, method=p.method, language=languages.get(p.page), text=p.text
            )
            for p in window
        ],
        limit=limit,
        offset=offset,
        next_offset=offset + limit if offset + limit < len(pages) else None,
    )


@router.get("/{entry_id}/chunks", responses=error_responses(404, 409))
def get_entry_chunks(
    entry_id: EntryIdPath,
    ctx: Reader,
    settings: Settings,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> EntryChunks:
    """The entry's chunks: what was embedded and indexed, with page and character offsets."""
    limit = page_size(limit, settings)
    entry = _entry(ctx, entry_id)
    try:
        chunks = read_chunks(ctx.stores, entry.id)
    except ObjectNotFoundError:
        raise _not_extracted(entry) from None
    window = chunks[offset : offset + limit]
    where = {"entry_id": entry.id, "dataset": entry.dataset}
    ctx.charge_egress(sum(len(c.text.encode()) for c in window), "get_entry_chunks", **where)
    ctx.audit("get_entry_chunks", **where)
    return EntryChunks(
        entry_id=entry.id,
        total_chunks=len(chunks),
        chunks=[
            ChunkPublic(
                chunk_id=c.id,
                index=c.index,
                page=c.page,
                start=c.start,
                end=c.end,
                tokens=c.tokens,
                text=c.text,
            )
            for c in window
        ],
        limit=limit,
        offset=offset,
        next_offset=offset + limit if offset + limit < len(chunks) else None,
    )


@router.delete("/{entry_id}", status_code=204, responses=error_responses(404))
def delete_entry(entry_id: EntryIdPath, ctx: Writer) -> Response:
    """Delete the entry from the catalog, the object store and both indexes."""
    entry = _entry(ctx, entry_id)
    remove_entry(ctx.stores, entry.id)
    ctx.audit("delete_entry", entry_id=entry.id, dataset=entry.dataset, status_code=204)
    return Response(status_code=204)


# -- helpers ------------------------------------------------------------------------------
class _StrictNameParser(MultiPartParser):
    """Starlette's parser, refusing a file name that is not UTF-8 (it would guess latin-1)."""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._current_part.content_disposition)
        raw = options.get(b"filename")
        if raw is not None:
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                raise ApiError(400, "invalid_file_name", "the file name is not UTF-8") from None
        super().on_headers_finished()


def _entry(ctx: RequestContext, entry_id: str) -> Entry:
    entry = ctx.stores.catalog.get_entry(entry_id)
    if entry is None:
        raise not_found("entry", entry_id, entry_id=entry_id)
    return entry


def _not_extracted(entry: Entry) -> ApiError:
    if entry.status == EntryStatus.FAILED:
        message = f"the entry failed: {entry.reason}"
    else:
        message = f"the entry has no extracted text yet (status {entry.status})"
    return ApiError(409, "not_extracted", message, entry_id=entry.id)


def _form_text(value: Any, field: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ApiError(422, "invalid_field", f"form field {field!r} must be text, not a file")
    return value


def _parse_metadata(raw: str | None) -> dict[str, Any]:
    if raw is None or not raw.strip():
        return {}
    try:
        return _metadata.validate_json(raw)
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'metadata'}: {e['msg']}" for e in err.errors()
        )
        raise ApiError(
            422, "invalid_metadata", f"metadata must be a JSON object: {problems}"
        ) from None


# Bidirectional marks, embeddings, overrides and isolates; zero-width space; word joiner; BOM.
_DECEPTIVE = frozenset(
    "\u061c\u200b\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2060\u2066\u2067\u2068\u2069\ufeff"
)


def clean_file_name(name: str | None) -> str:
    """The file's own name, refused when empty, path-like, too long or not clean UTF-8."""
    if not name or not name.strip():
        raise ApiError(400, "invalid_file_name", "the file part needs a file name")
    if "\ufffd" in name or any(unicodedata.category(ch) in ("Cc", "Cs") for ch in name):
        raise ApiError(
            400, "invalid_file_name", "the file name has control characters or is not UTF-8"
        )
    if any(ch in _DECEPTIVE for ch in name):
        # Bidirectional controls and invisible separators make a name read as another
        # (``invoice\u202efdp.exe`` shows as ``invoiceexe.pdf``). Joiners that scripts need
        # (ZWNJ in Persian, ZWJ in Indic scripts and emoji) stay allowed.
        raise ApiError(
            400,
            "invalid_file_name",
            "the file name has invisible or bidirectional-control characters",
        )
    if "/" in name or "\\" in name or name in (".", "..") or name.startswith("~"):
        raise ApiError(400, "invalid_file_name", "the file name must not be a path")
    if len(name.encode()) > 255:
        raise ApiError(400, "invalid_file_name", "the file name is longer than 255 bytes")
    return unicodedata.normalize("NFC", name)


_REFUSALS = {
    "too_large": (413, "payload_too_large"),
    "empty": (422, "empty_file"),
    "unsupported": (415, "unsupported_media_type"),
    "mismatch": (415, "media_type_mismatch"),
}


def admit_upload(
    name: str, claimed: str | None, head: bytes, stream: Any, size: int, max_bytes: int
) -> str:
    """The entry's media type by the admission policy every door shares
    (``resources.extract.admit``); a refusal is the HTTP error of its kind."""
    try:
        return admit(name, head, stream, size, max_bytes=max_bytes, claimed=claimed)
    except Refused as err:
        status, code = _REFUSALS[err.kind]
        raise ApiError(status, code, str(err)) from None


def _attachment(name: str) -> str:
    from urllib.parse import quote

    ascii_name = name.encode("ascii", "replace").decode().replace('"', "_").replace("?", "_")
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(name)}"
