"""Known-item search in five languages through the Data API, with no language given at ingest.

Man pages in English, German, French, Chinese and Japanese (tests/data/languages, the same five
pages in each) are uploaded and indexed; phrases cut from them at seeded random places (5-10
words, or 10 characters of Chinese and Japanese) must find a chunk that contains them in the top
5, in keyword and hybrid mode, for at least 90% of the phrases of each language.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from alien.credentials import create_api_key
from alien.pipeline import run_all
from data_api import create_app
from resources.stores import TenantRegistry, TenantStores
from tests.data_api.conftest import api_settings

DATA = Path(__file__).resolve().parents[1] / "data" / "languages"
LANGUAGES = ("en", "de", "fr", "zh", "ja")
PHRASES = 20
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u9fff]")


def _norm(text: str) -> str:
    return " ".join(text.split())


def cut_phrases(lang: str, chunks: list[str], n: int, seed: int = 7) -> list[str]:
    """``n`` phrases from the language's documents, each inside at least one indexed chunk
    (a phrase across a chunk boundary is a chunking question, not a search one)."""
    rng = random.Random(f"{seed}:{lang}")
    paragraphs = [
        line
        for path in sorted((DATA / lang).glob("*.txt"))
        for line in path.read_text(encoding="utf-8").splitlines()
        if len(line.strip()) >= 40
    ]
    normalized = [_norm(c) for c in chunks]
    found: list[str] = []
    while len(found) < n:
        text = _norm(rng.choice(paragraphs))
        if lang in ("zh", "ja"):
            start = rng.randrange(0, max(1, len(text) - 10))
            phrase = text[start : start + 10]
            if len(_CJK.findall(phrase)) < 6:  # mostly an option list or a command line
                continue
        else:
            words = text.split()
            size = rng.randint(5, 10)
            if len(words) < size:
                continue
            start = rng.randrange(0, len(words) - size + 1)
            phrase = " ".join(words[start : start + size])
        if phrase not in found and any(phrase in c for c in normalized):
            found.append(phrase)
    return found


@pytest.fixture(scope="module")
def world(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[TestClient, TenantStores, str]]:
    settings = api_settings(tmp_path_factory.mktemp("lang-home"))
    registry = TenantRegistry(settings)
    stores = registry.create("polyglot")
    key = create_api_key(stores, ["read", "search", "write"])[0]
    headers = {"Authorization": f"Bearer {key}"}
    with TestClient(create_app(settings)) as client:
        for lang in LANGUAGES:
            for path in sorted((DATA / lang).glob("*.txt")):
                files = {"file": (f"{lang}-{path.name}", path.read_bytes(), "text/plain")}
                answer = client.post("/v1/entries", files=files, headers=headers)
                assert answer.status_code == 202, answer.text
        run_all(stores)
        assert {e.status for e in stores.catalog.entries()} == {"indexed"}
        yield client, stores, key
    registry.drop("polyglot")


def test_each_page_records_its_detected_language(world: tuple) -> None:
    from alien.pipeline import read_chunks, read_page_languages

    client, stores, key = world
    for entry in stores.catalog.entries():
        lang = entry.source_name.split("-", 1)[0]
        assert set(read_page_languages(stores, entry.id).values()) == {lang}
        assert {c.language for c in read_chunks(stores, entry.id)} == {lang}
        text = client.get(
            f"/v1/entries/{entry.id}/text", headers={"Authorization": f"Bearer {key}"}
        )
        assert {p["language"] for p in text.json()["pages"]} == {lang}  # shown to users


@pytest.mark.parametrize("mode", ["keyword", "hybrid"])
@pytest.mark.parametrize("lang", LANGUAGES)
def test_known_item_phrases_are_found(world: tuple, lang: str, mode: str) -> None:
    client, stores, key = world
    chunks = [
        d.text
        for e in stores.catalog.entries()
        if e.source_name.startswith(f"{lang}-")
        for d in stores.keywords.entry_docs(e.id)
    ]
    found = 0
    missed = []
    for phrase in cut_phrases(lang, chunks, PHRASES):
        answer = client.post(
            "/v1/search",
            json={"query": phrase, "mode": mode, "top_k": 5},
            headers={"Authorization": f"Bearer {key}"},
        )
        assert answer.status_code == 200, answer.text
        ids = [h["chunk_id"] for h in answer.json()["results"]]
        texts = stores.keywords.get_docs(ids)
        if any(phrase in _norm(texts[i].text) for i in ids if i in texts):
            found += 1
        else:
            missed.append(phrase)
    print(f"known-item {lang} {mode}: {found}/{PHRASES}")
    assert found >= 0.9 * PHRASES, missed


@pytest.fixture(scope="module")
def meili_copy(world: tuple, servers: object) -> Iterator[object]:
    """The tenant's keyword chunks (their text and recorded language) in an index of the real
    Meilisearch server, configured as cluster mode configures it (localized attributes)."""
    import uuid

    import meilisearch

    from resources.meili import MeiliKeywordIndex

    _client, stores, _key = world
    index = MeiliKeywordIndex(
        meilisearch.Client(servers.meili_url, servers.meili_master_key),
        f"alien-lang-{uuid.uuid4().hex[:10]}",
    )
    index.create()
    for entry in stores.catalog.entries():
        index.replace_entry(entry.id, stores.keywords.entry_docs(entry.id))
    yield index
    index.drop()


@pytest.mark.parametrize("lang", LANGUAGES)
def test_known_item_phrases_are_found_by_meilisearch(
    world: tuple, meili_copy: object, lang: str
) -> None:
    """Cluster mode's keyword engine on the same chunks meets the same bar (top 5, 90%)."""
    _client, stores, _key = world
    entries = [e for e in stores.catalog.entries() if e.source_name.startswith(f"{lang}-")]
    chunks = [d.text for e in entries for d in stores.keywords.entry_docs(e.id)]
    phrases = cut_phrases(lang, chunks, PHRASES)
    found, missed = 0, []
    for phrase in phrases:
        ids = [hit.id for hit in meili_copy.search(phrase, top_k=5)]
        texts = stores.keywords.get_docs(ids)  # the same chunks, by id
        if any(phrase in _norm(texts[i].text) for i in ids if i in texts):
            found += 1
        else:
            missed.append(phrase)
    print(f"known-item meilisearch {lang}: {found}/{PHRASES}", missed)
    assert found >= 0.9 * PHRASES, missed
