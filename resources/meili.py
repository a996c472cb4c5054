"""The keyword index on a Meilisearch server (cluster mode): one index per tenant.

Settings are configured explicitly, never left to defaults that may change between versions:
the searchable attribute (the chunk text), filterable attributes (``id``, ``entry_id``,
``dataset``) and typo tolerance matching the embedded engine's rule (one typo from 5 letters,
two from 9). Every write waits for its task and raises ``MeiliTaskError`` when the task
failed, so a failure is never silent.

Keys: provisioning uses the master key; the data plane gets a key limited to the tenant's
index and the actions it needs (``DATA_PLANE_ACTIONS``). A key meant to leave the cluster
(``EXTERNAL_ACTIONS``) can only search: never ``documents.get``.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import uuid
from collections import Counter
from collections.abc import Collection, Iterable, Sequence
from typing import Any

import meilisearch
from meilisearch.errors import MeilisearchApiError

from resources.analysis import LANGUAGES, cjk_bigrams, detect_language, get_analyzer, is_cjk
from resources.keywords import KeywordDoc, KeywordHit, max_typos

# Meilisearch's documented API key actions (https://www.meilisearch.com/docs/reference/api/keys).
KNOWN_ACTIONS = frozenset(
    {
        "*", "search", "documents.*", "documents.add", "documents.get", "documents.delete",
        "indexes.*", "indexes.create", "indexes.get", "indexes.update", "indexes.delete",
        "indexes.swap", "tasks.*", "tasks.cancel", "tasks.delete", "tasks.get", "settings.*",
        "settings.get", "settings.update", "stats.*", "stats.get", "metrics.*", "metrics.get",
        "dumps.*", "dumps.create", "snapshots.*", "snapshots.create", "version", "keys.create",
        "keys.get", "keys.update", "keys.delete",
    }
)  # fmt: skip
DATA_PLANE_ACTIONS = (
    "search", "documents.add", "documents.get", "documents.delete", "indexes.get",
    "tasks.get", "stats.get",
)  # fmt: skip
EXTERNAL_ACTIONS = ("search",)
FIELDS = ["id", "entry_id", "dataset", "chunk_index", "page", "start", "end", "text", "language"]
# Meilisearch's locales (ISO 639-3) of the languages analyzed here that it knows; the text of a
# chunk goes into ``text_<language>``, localized so Meilisearch segments it as that language.
LOCALES = {
    "ar": "ara", "cs": "ces", "da": "dan", "de": "deu", "el": "ell", "en": "eng", "eo": "epo",
    "es": "spa", "et": "est", "fi": "fin", "fr": "fra", "hi": "hin", "hu": "hun", "it": "ita",
    "ja": "jpn", "ko": "kor", "lt": "lit", "nl": "nld", "no": "nob", "pl": "pol", "pt": "por",
    "ro": "ron", "ru": "rus", "sr": "srp", "sv": "swe", "tr": "tur", "zh": "cmn",
}  # fmt: skip
# Our own CJK bigrams (resources.analysis), searched with the query's bigrams: Meilisearch's
# segmentation finds a phrase inside a longer run less often (measured: zh 69%, ja 60% top-5
# against 97% and 94% with bigrams).
CJK_FIELD = "text_cjk"
TEXT_FIELDS = [CJK_FIELD] + [f"text_{lang}" for lang in sorted(LANGUAGES)]


def cjk_terms(text: str) -> str:
    """The bigrams of the CJK runs of ``text``, space-separated (the CJK field's content)."""
    words = get_analyzer("en").words(text)
    return " ".join(b for w in words if _is_cjk_run(w) for b in cjk_bigrams(w))


def _is_cjk_run(word: str) -> bool:
    return is_cjk(word[:1])


def document(doc: KeywordDoc, default_language: str = "en") -> dict[str, Any]:
    """A chunk as stored: its fields, its text under its language's field, its CJK bigrams."""
    body = dict(doc.__dict__)
    language = doc.language or default_language
    body["language"] = language
    body[f"text_{language}"] = doc.text
    body[CJK_FIELD] = cjk_terms(doc.text)
    return body


def search_query(query: str) -> str:
    """The query as sent: CJK runs as our bigrams (matching the CJK field), other words kept."""
    words = get_analyzer("en").words(query)
    if not any(_is_cjk_run(w) for w in words):
        return query
    return " ".join(b for w in words for b in (cjk_bigrams(w) if _is_cjk_run(w) else [w]))


class MeiliTaskError(RuntimeError):
    """A Meilisearch task ended ``failed`` (or timed out); the message is the server's."""

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


def index_name(tenant: str, prefix: str = "alien") -> str:
    return f"{prefix}-{tenant}"


def index_settings() -> dict[str, Any]:
    """The index settings, stated in full (typo thresholds as the embedded engine's)."""
    one = next(n for n in range(1, 20) if max_typos("x" * n) >= 1)
    two = next(n for n in range(1, 20) if max_typos("x" * n) >= 2)
    return {
        "searchableAttributes": TEXT_FIELDS,
        "localizedAttributes": [
            {"attributePatterns": [f"text_{lang}"], "locales": [locale]}
            for lang, locale in sorted(LOCALES.items())
        ],
        "filterableAttributes": ["id", "entry_id", "dataset"],
        "displayedAttributes": FIELDS,
        "typoTolerance": {
            "enabled": True,
            "minWordSizeForTypos": {"oneTypo": one, "twoTypos": two},
        },
        "pagination": {"maxTotalHits": 10_000},
        "faceting": {"maxValuesPerFacet": 100, "sortFacetValuesBy": {"*": "count"}},
    }


KEY_NAMESPACE = uuid.UUID("2d5c8f7e-3b1a-4c6d-9e0f-7a8b9c0d1e2f")


def key_uid(index: str, *, external: bool, generation: str = "") -> str:
    """A fixed uid per (index, purpose, tenant generation): creating the key again is a
    no-op, not a new key; a tenant created afresh under an old name gets new keys."""
    name = f"{'external' if external else 'data-plane'}:{index}"
    return str(uuid.uuid5(KEY_NAMESPACE, name + (f":{generation}" if generation else "")))


def derive_key(master_key: str, uid: str) -> str:
    """The key's value, as Meilisearch derives it: HMAC-SHA256 of the uid under the master
    key. Nothing has to store it; whoever holds the master key can recompute it."""
    return hmac.new(master_key.encode(), uid.encode(), hashlib.sha256).hexdigest()


def key_spec(
    index: str, *, external: bool, expires_at: str | None = None, generation: str = ""
) -> dict[str, Any]:
    """The body of ``POST /keys`` for a key limited to one tenant's index."""
    actions = EXTERNAL_ACTIONS if external else DATA_PLANE_ACTIONS
    return {
        "uid": key_uid(index, external=external, generation=generation),
        "name": f"alien-{'external' if external else 'data-plane'}-{index}"[:255],
        "description": f"alien {'external search' if external else 'data plane'} key for {index}",
        "actions": list(actions),
        "indexes": [index],
        "expiresAt": expires_at,
    }


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class MeiliKeywordIndex:
    """A tenant's index on a Meilisearch server."""

    def __init__(self, client: meilisearch.Client, index: str, timeout_ms: int = 60_000) -> None:
        self.client = client
        self.name = index
        self.index = client.index(index)
        self.timeout_ms = timeout_ms

    def _wait(self, task: Any) -> None:
        uid = getattr(task, "task_uid", None)
        if uid is None and isinstance(task, dict):
            uid = task.get("taskUid")
        done = self.client.wait_for_task(uid, timeout_in_ms=self.timeout_ms)
        status = getattr(done, "status", None)
        if status != "succeeded":
            error = getattr(done, "error", None)
            code = error.get("code") if isinstance(error, dict) else None
            raise MeiliTaskError(f"task {uid} on {self.name} {status}: {error}", code)

    # -- provisioning --------------------------------------------------------------------
    def create(self) -> bool:
        created = False
        try:
            self.client.get_index(self.name)
        except MeilisearchApiError as err:
            if err.code != "index_not_found":
                raise
            self._wait(self.client.create_index(self.name, {"primaryKey": "id"}))
            created = True
        self._wait(self.index.update_settings(index_settings()))
        return created

    def exists(self) -> bool:
        try:
            self.client.get_index(self.name)
        except MeilisearchApiError as err:
            if err.code == "index_not_found":
                return False
            raise
        return True

    def drop(self) -> bool:
        """Delete the index (idempotent): whether there was one. The missing index can be
        refused at once or by the deletion task, depending on the server."""
        try:
            self._wait(self.client.delete_index(self.name))
        except (MeilisearchApiError, MeiliTaskError) as err:
            if err.code == "index_not_found":
                return False
            raise
        return True

    def create_key(self, *, external: bool, generation: str = "") -> str:
        """Create the tenant's scoped key (idempotent: it has a fixed uid); its value."""
        spec = key_spec(self.name, external=external, generation=generation)
        try:
            return self.client.create_key(spec).key
        except MeilisearchApiError as err:
            if err.code != "api_key_already_exists":
                raise
            return self.client.get_key(spec["uid"]).key

    def delete_keys(self, generations: Iterable[str] = ("",)) -> int:
        """Delete the index's scoped keys of these tenant generations (idempotent: a key
        already gone is skipped); deleting an index leaves its keys behind otherwise."""
        deleted = 0
        for generation, external in itertools.product(generations, (False, True)):
            try:
                self.client.delete_key(key_uid(self.name, external=external, generation=generation))
                deleted += 1
            except MeilisearchApiError as err:
                if err.code != "api_key_not_found":
                    raise
        return deleted

    # -- writes --------------------------------------------------------------------------
    def replace_entry(self, entry_id: str, docs: Sequence[KeywordDoc]) -> None:
        keep = {d.id for d in docs}
        stale = [d.id for d in self.entry_docs(entry_id) if d.id not in keep]
        if docs:
            body = [document(d) for d in docs]
            self._wait(self.index.add_documents(body, primary_key="id"))
        if stale:
            self._wait(self.index.delete_documents(stale))

    def delete_entries(self, entry_ids: Iterable[str]) -> int:
        ids = list(entry_ids)
        if not ids:
            return 0
        condition = f"entry_id IN [{', '.join(_quote(i) for i in ids)}]"
        count = self._count(condition)
        if count:
            self._wait(self.index.delete_documents(filter=condition))
        return count

    # -- reads ---------------------------------------------------------------------------
    def search(
        self,
        query: str,
        top_k: int,
        dataset: str | None = None,
        entries: Collection[str] | None = None,
    ) -> list[KeywordHit]:
        if top_k <= 0 or not query.strip() or (entries is not None and not entries):
            return []
        filters = []
        if dataset is not None:
            filters.append(f"dataset = {_quote(dataset)}")
        if entries is not None:
            filters.append(f"entry_id IN [{', '.join(_quote(e) for e in entries)}]")
        language = detect_language(query)
        result = self.index.search(
            search_query(query),
            {
                # A localized index is always searched with a locale (else Meilisearch guesses
                # it per query); a language it has no locale for: English's segmentation.
                "locales": [LOCALES.get(language, "eng")],
                "limit": top_k,
                "filter": " AND ".join(filters) or None,
                "showRankingScore": True,
                "attributesToRetrieve": ["id", "entry_id", "dataset", "chunk_index", "page"],
            },
        )
        return [
            KeywordHit(h["id"], float(h["_rankingScore"]), h["entry_id"], h["dataset"],
                       int(h["chunk_index"]), h.get("page"))
            for h in result["hits"]
        ]  # fmt: skip

    def _documents(self, condition: str | None, fields: list[str]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        offset = 0
        while True:
            params: dict[str, Any] = {"limit": 1000, "offset": offset, "fields": fields}
            if condition:
                params["filter"] = condition
            page = self.index.get_documents(params)
            batch = [dict(getattr(d, "__dict__", d)) for d in page.results]
            out += [{k: v for k, v in d.items() if k in fields} for d in batch]
            offset += len(batch)
            if offset >= page.total or not batch:
                return out

    def _count(self, condition: str) -> int:
        return len(self._documents(condition, ["id"]))

    def get_docs(self, ids: Sequence[str]) -> dict[str, KeywordDoc]:
        if not ids:
            return {}
        condition = f"id IN [{', '.join(_quote(i) for i in ids)}]"
        return {d["id"]: KeywordDoc(**d) for d in self._documents(condition, FIELDS)}

    def entry_docs(self, entry_id: str) -> list[KeywordDoc]:
        docs = self._documents(f"entry_id = {_quote(entry_id)}", FIELDS)
        return sorted((KeywordDoc(**d) for d in docs), key=lambda d: d.chunk_index)

    def count(self, entry_id: str | None = None) -> int:
        if entry_id is None:
            return int(self.index.get_stats().number_of_documents)
        return self._count(f"entry_id = {_quote(entry_id)}")

    def counts_by_entry(self) -> dict[str, int]:
        return dict(Counter(d["entry_id"] for d in self._documents(None, ["entry_id"])))

    def close(self) -> None:
        pass


def unavailable(err: BaseException) -> str | None:
    """Why Meilisearch did not answer, if ``err`` says so (``resources.outages``): no
    connection, a timeout, or a 5xx answer."""
    from meilisearch.errors import MeilisearchCommunicationError, MeilisearchTimeoutError

    if isinstance(err, MeilisearchCommunicationError | MeilisearchTimeoutError):
        return str(err).split(", ", 1)[-1]
    if isinstance(err, MeilisearchApiError) and (err.status_code or 0) >= 500:
        return f"Meilisearch answered {err.status_code}"
    return None
