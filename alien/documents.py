"""Registering documents as entries and removing them from every store."""

from __future__ import annotations

import hashlib
import io
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO, Literal

from sqlalchemy.exc import IntegrityError

from alien.layout import derived_keys, figures_prefix, raw_key
from alien.sources import path_uri
from resources.catalog import Entry, EntrySource, EntryStatus, attachment_prefix
from resources.extract import Refused, admit, detect_media_type
from resources.formats import EMAIL_TYPES, attachments
from resources.stores import TenantStores

Outcome = Literal["new", "unchanged", "updated"]
_BLOCK = 1024 * 1024


@dataclass(frozen=True)
class Registration:
    entry: Entry
    outcome: Outcome


def _hash_stream(open_stream: Callable[[], BinaryIO]) -> tuple[str, bytes, int]:
    digest = hashlib.sha256()
    head = b""
    size = 0
    with open_stream() as stream:
        while block := stream.read(_BLOCK):
            if not head:
                head = block[:1024]
            size += len(block)
            digest.update(block)
    return digest.hexdigest(), head, size


def register_source(
    stores: TenantStores,
    *,
    dataset: str,
    source_uri: str,
    source_name: str,
    open_stream: Callable[[], BinaryIO],
    size: int,
    mtime_ns: int | None = None,
) -> Registration:
    """Make ``source_uri`` a source of the ``dataset`` entry holding the stream's bytes.

    The rules every door follows (CLI, inbox, upload): the same bytes in the same dataset
    are one entry, whatever path or door they came through (a second path becomes another
    source of that entry: ``unchanged``); a known source whose size and modification time
    did not move is not even read; a known source whose bytes changed updates its entry in
    place (``updated``, back to ``pending``) when it is the entry's own source, or moves to
    the entry of its new bytes (a new one if none) when it was another source.
    """
    catalog = stores.catalog
    existing = _source_entry(stores, dataset, source_uri)
    alias = None if existing is not None else catalog.find_source(dataset, source_uri)
    if existing is not None and _same_file(existing.size, existing.source_mtime_ns, size, mtime_ns):
        return Registration(existing, "unchanged")
    if alias is not None and _same_file(alias.size, alias.source_mtime_ns, size, mtime_ns):
        entry = catalog.get_entry(alias.entry_id)
        if entry is not None and entry.sha256 == alias.sha256:
            return Registration(entry, "unchanged")
    limit = stores.settings.max_file_bytes

    def refuse(reason: str) -> Registration:
        """Nothing is stored: the source gets a failed entry of its own with the reason."""
        nonlocal existing
        if alias is not None:
            catalog.remove_source(dataset, source_uri)
        if existing is not None and _hand_over(stores, existing):
            existing = None  # its copies keep the entry; this path gets one of its own
        return _register_refused(
            stores, existing, dataset, source_uri, source_name, size, mtime_ns, reason
        )

    if size > limit:  # refused before a byte is read
        return refuse(f"file too large ({size} bytes; the limit is {limit})")
    sha256, head, size = _hash_stream(open_stream)
    if existing is not None and existing.sha256 == sha256:
        if existing.source_mtime_ns != mtime_ns:
            catalog.update_entry(
                existing.id, source_mtime_ns=mtime_ns, updated_at=existing.updated_at
            )
        return Registration(existing, "unchanged")
    if existing is not None:
        # Its own file changed. Copies elsewhere still hold the entry's bytes: the oldest
        # becomes the entry's own source, and this path is registered anew. No copies, but
        # another entry holds the new bytes: this path joins it, the emptied entry goes.
        holder = catalog.find_by_content(dataset, sha256)
        if _hand_over(stores, existing):
            existing = None
        elif holder is not None and holder.id != existing.id:
            delete_entry(stores, existing.id)
            catalog.put_source(
                EntrySource(dataset, source_uri, holder.id, source_name, size, sha256, mtime_ns)
            )
            return Registration(holder, "updated")
    if existing is None:
        # Known bytes from a new path (or a source that changed to them): one more source.
        same = catalog.find_by_content(dataset, sha256)
        if same is not None:
            catalog.put_source(
                EntrySource(dataset, source_uri, same.id, source_name, size, sha256, mtime_ns)
            )
            return Registration(same, "unchanged")
    try:
        media_type = _admit(source_name, head, open_stream, size, limit)
    except Refused as err:
        return refuse(str(err))
    if existing is None:
        if alias is not None:  # its bytes changed to new ones: it leaves its old entry
            catalog.remove_source(dataset, source_uri)
        entry = _store_new(
            stores,
            open_stream,
            dataset=dataset,
            source_uri=source_uri,
            source_name=source_name,
            media_type=media_type,
            size=size,
            sha256=sha256,
            source_mtime_ns=mtime_ns,
        )
        return Registration(entry, "new")
    with open_stream() as stream:
        stores.objects.put_stream(raw_key(existing.id), stream)
    if existing.object_key and existing.object_key != raw_key(existing.id):
        stores.objects.delete(existing.object_key)  # a refused file kept aside: now stored
    catalog.update_entry(
        existing.id,
        media_type=media_type,
        size=size,
        sha256=sha256,
        source_mtime_ns=mtime_ns,
        object_key=raw_key(existing.id),
        status=EntryStatus.PENDING,
        reason=None,
        pages=None,
        chunks=None,
    )
    updated = catalog.get_entry(existing.id)
    assert updated is not None
    return Registration(updated, "updated")


def _admit(
    name: str, head: bytes, open_stream: Callable[[], BinaryIO], size: int, limit: int
) -> str:
    """``admit`` with the file open, seekable, for a look inside a ZIP or OLE container."""
    with open_stream() as stream:
        return admit(name, head, stream if stream.seekable() else None, size, max_bytes=limit)


def _hand_over(stores: TenantStores, entry: Entry) -> bool:
    """Make the oldest other source of ``entry`` its own source (its own path is leaving);
    whether it had one."""
    others = stores.catalog.sources(entry.id)
    if not others:
        return False
    heir = others[0]
    stores.catalog.remove_source(heir.dataset, heir.source_uri)
    stores.catalog.update_entry(
        entry.id,
        source_uri=heir.source_uri,
        source_name=heir.source_name,
        source_mtime_ns=heir.source_mtime_ns,
        updated_at=entry.updated_at,
    )
    return True


def _same_file(size: int, mtime_ns: int | None, new_size: int, new_mtime_ns: int | None) -> bool:
    """Whether a file's size and modification time say it did not change (no time: unknown)."""
    return new_mtime_ns is not None and size == new_size and mtime_ns == new_mtime_ns


def _store_new(
    stores: TenantStores,
    open_stream: Callable[[], BinaryIO],
    **fields: Any,
) -> Entry:
    """Store the original under a new entry id, then add the ``pending`` entry. When the
    catalog refuses the entry (its source is already there), the stored copy is removed."""
    entry_id = str(uuid.uuid4())
    with open_stream() as stream:
        stores.objects.put_stream(raw_key(entry_id), stream)
    try:
        return stores.catalog.add_entry(entry_id=entry_id, object_key=raw_key(entry_id), **fields)
    except IntegrityError:
        stores.objects.delete(raw_key(entry_id))
        raise


def _register_refused(
    stores: TenantStores,
    existing: Entry | None,
    dataset: str,
    source_uri: str,
    source_name: str,
    size: int,
    mtime_ns: int | None,
    reason: str,
) -> Registration:
    """Record a file that is refused before storage as a failed entry (nothing is stored)."""
    catalog = stores.catalog
    if existing is None:
        entry = catalog.add_entry(
            dataset=dataset,
            source_uri=source_uri,
            source_name=source_name,
            media_type=detect_media_type(source_name, b"") if size else "application/octet-stream",
            size=size,
            sha256="",
            source_mtime_ns=mtime_ns,
            object_key="",
        )
        catalog.set_status([entry.id], EntryStatus.FAILED, reason)
        outcome: Outcome = "new"
    else:
        remove_derived(stores, existing.id)
        if existing.object_key:  # the superseded original: its source now holds other bytes
            stores.objects.delete(existing.object_key)
        catalog.update_entry(
            existing.id,
            object_key="",
            size=size,
            sha256="",
            source_mtime_ns=mtime_ns,
            status=EntryStatus.FAILED,
            reason=reason,
            pages=None,
            chunks=None,
        )
        entry = existing
        outcome = "updated"
    refreshed = catalog.get_entry(entry.id)
    assert refreshed is not None
    return Registration(refreshed, outcome)


def register_path(
    stores: TenantStores, path: Path, *, dataset: str, source_name: str | None = None
) -> Registration:
    """Register a local file; its absolute path identifies it within the dataset."""
    path = Path(path).resolve()
    st = path.stat()
    return register_source(
        stores,
        dataset=dataset,
        source_uri=path_uri(path),
        source_name=source_name or path.name,
        open_stream=lambda: path.open("rb"),
        size=st.st_size,
        mtime_ns=st.st_mtime_ns,
    )


def register_bytes(
    stores: TenantStores, data: bytes, *, dataset: str, source_uri: str, source_name: str
) -> Registration:
    return register_source(
        stores,
        dataset=dataset,
        source_uri=source_uri,
        source_name=source_name,
        open_stream=lambda: io.BytesIO(data),
        size=len(data),
    )


def register_upload(
    stores: TenantStores,
    stream: BinaryIO,
    *,
    dataset: str,
    source_name: str,
    media_type: str,
    metadata: dict[str, Any] | None = None,
) -> Registration:
    """Store an uploaded file (a seekable stream) as a new ``pending`` entry of ``dataset``.

    Uploads are identified by their content: the same bytes sent to the same dataset again
    return the existing entry (outcome ``unchanged``), also when two uploads race.
    """
    sha256, _, size = _hash_stream(lambda: _rewound(stream))
    source_uri = f"upload:sha256:{sha256}"
    # The same bytes are the same entry, whichever door they came through first.
    existing = _source_entry(stores, dataset, source_uri) or stores.catalog.find_by_content(
        dataset, sha256
    )
    if existing is not None:
        return Registration(existing, "unchanged")
    try:
        entry = _store_new(
            stores,
            lambda: _rewound(stream),
            dataset=dataset,
            source_uri=source_uri,
            source_name=source_name,
            media_type=media_type,
            size=size,
            sha256=sha256,
            metadata=metadata,
        )
    except IntegrityError:  # the same bytes won a race to this dataset
        winner = stores.catalog.find_entry(dataset, source_uri)
        if winner is None:
            raise
        return Registration(winner, "unchanged")
    return Registration(entry, "new")


class _Unclosed(io.BufferedIOBase):
    """A view of a stream whose ``close`` leaves the stream open (for ``with`` blocks)."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw

    def read(self, size: int | None = -1) -> bytes:
        return self._raw.read(-1 if size is None else size)

    def readable(self) -> bool:
        return True


def _rewound(stream: BinaryIO) -> BinaryIO:
    stream.seek(0)
    return _Unclosed(stream)  # type: ignore[return-value]


def remove_derived(stores: TenantStores, entry_id: str) -> None:
    """Remove everything the pipeline derived from an entry, from every store."""
    stores.delete_vectors([entry_id])
    stores.keywords.delete_entries([entry_id])
    for key in derived_keys(entry_id):
        stores.objects.delete(key)
    stores.objects.delete_prefix(figures_prefix(entry_id))


def unpack_attachments(stores: TenantStores, entry: Entry) -> dict[str, int]:
    """Register the files attached to an email entry as entries of their own, admitted and
    identified like any upload, their source ``attachment:<email id>/<n>/<name>`` linking them
    to the email; attachments a previous version of the email had are retired. Counts by
    outcome; ``FormatError`` when the message cannot be read."""
    prefix = attachment_prefix(entry.id)
    with stores.objects.local_path(entry.object_key) as path:
        found = attachments(path, entry.media_type)
    counts = {"new": 0, "updated": 0, "unchanged": 0, "retired": 0}
    kept = set()
    for n, attachment in enumerate(found, 1):
        uri = f"{prefix}{n}/{attachment.name}"
        kept.add(uri)
        reg = register_bytes(
            stores, attachment.data, dataset=entry.dataset, source_uri=uri,
            source_name=attachment.name,
        )  # fmt: skip
        counts[reg.outcome] += 1
    for uri in sorted(stores.catalog.source_uris(entry.dataset, prefix) - kept):
        retire_source(stores, entry.dataset, uri)
        counts["retired"] += 1
    return counts


def retire_source(stores: TenantStores, dataset: str, source_uri: str) -> str:
    """A source whose file is gone leaves the dataset: one of several paths to an entry's
    bytes is forgotten (``"forgotten"``); an entry's own path hands the entry to its oldest
    other path (``"handed_over"``); an entry with no other path is deleted (``"deleted"``).
    ``"unknown"`` when the dataset has no such source."""
    catalog = stores.catalog
    entry = _source_entry(stores, dataset, source_uri)
    if entry is None:
        if catalog.find_source(dataset, source_uri) is None:
            return "unknown"
        catalog.remove_source(dataset, source_uri)
        return "forgotten"
    if _hand_over(stores, entry):
        return "handed_over"
    delete_entry(stores, entry.id)
    return "deleted"


def delete_entry(stores: TenantStores, entry_id: str) -> bool:
    """Delete an entry: first a tombstone (it is gone for every reader at once), then its
    index rows, derived objects and original, then its catalog row. A crash part-way leaves
    the tombstone, and whoever meets it next finishes (``finish_deletions``: the next run;
    a registration of the same source). Whether there was such an entry."""
    entry = stores.catalog.mark_deleting(entry_id)
    if entry is None:
        return False
    _remove_all(stores, entry)
    return True


def _remove_all(stores: TenantStores, entry: Entry) -> None:
    """Everything of a tombstoned entry, in an order a crash can resume (idempotent); the
    files attached to an email leave with it (each as its source is retired: one that is
    also stored from elsewhere stays, as that)."""
    if entry.media_type in EMAIL_TYPES:
        prefix = attachment_prefix(entry.id)
        for uri in sorted(stores.catalog.source_uris(entry.dataset, prefix)):
            retire_source(stores, entry.dataset, uri)
    remove_derived(stores, entry.id)
    if entry.object_key:
        stores.objects.delete(entry.object_key)
    stores.catalog.delete_entry(entry.id)


def finish_deletions(stores: TenantStores, older_than: datetime | None = None) -> int:
    """Finish the deletions a crash interrupted (tombstones marked before ``older_than``,
    else all); how many."""
    finished = 0
    while batch := stores.catalog.deleting(older_than):
        for entry in batch:
            _remove_all(stores, entry)
        finished += len(batch)
    return finished


def _source_entry(stores: TenantStores, dataset: str, source_uri: str) -> Entry | None:
    """The live entry whose own source this is, in one lookup. A source registered again
    while its old entry's deletion is unfinished finishes that deletion first (the source
    is then free for a new entry)."""
    found = stores.catalog.find_entry(dataset, source_uri, deleting=True)
    if found is not None and found.status == EntryStatus.DELETING:
        _remove_all(stores, found)
        return None
    return found
