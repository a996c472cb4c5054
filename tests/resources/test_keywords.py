"""Contract tests of the keyword index: the embedded engine, and the Meilisearch backend on the
session's real Meilisearch server through the index's scoped (non-master) key."""

import uuid

import pytest

from resources.keywords import KeywordDoc, SqliteKeywordIndex, max_typos
from resources.meili import MeiliKeywordIndex


def _doc(entry, i, text, dataset="default"):
    return KeywordDoc(f"{entry}-{i}", entry, dataset, i, i + 1, 0, len(text), text)


@pytest.fixture(params=["embedded", "meilisearch"])
def index(request, tmp_path):
    if request.param == "embedded":
        idx = SqliteKeywordIndex(tmp_path / "keywords.db")
    else:
        import meilisearch

        servers = request.getfixturevalue("servers")
        admin = MeiliKeywordIndex(
            meilisearch.Client(servers.meili_url, servers.meili_master_key),
            f"alien-test-{uuid.uuid4().hex[:10]}",
        )
        assert admin.create() is True and admin.create() is False
        request.addfinalizer(admin.drop)
        # The data plane works with the key that is limited to this one index.
        key = admin.create_key(external=False)
        idx = MeiliKeywordIndex(meilisearch.Client(servers.meili_url, key), admin.name)
    idx.replace_entry(
        "e1",
        [
            _doc("e1", 0, "The boundary layer separates on the swept wing at high incidence."),
            _doc("e1", 1, "Heat transfer in hypersonic flow over blunt bodies."),
        ],
    )
    idx.replace_entry(
        "e2", [_doc("e2", 0, "Café crème: a recipe with coffee and cream.", dataset="food")]
    )
    return idx


def test_bm25_ranks_the_matching_chunk_first(index):
    hits = index.search("boundary layer separation", 5)
    assert hits[0].id == "e1-0"  # "separation" matches "separates" through stemming
    assert hits[0].score > 0


def test_diacritics_fold(index):
    assert index.search("cafe creme", 5)[0].entry_id == "e2"


def test_typo_tolerance(index):
    assert index.search("hypresonic", 5)[0].id == "e1-1"  # transposition = one edit
    assert index.search("boundery", 5)[0].id == "e1-0"
    assert index.search("zzzzqqqq", 5) == []
    assert max_typos("wing") == 0 and max_typos("wings") == 1 and max_typos("hypersonic") == 2


def test_dataset_filter_and_delete(index):
    assert [h.entry_id for h in index.search("coffee", 5, dataset="default")] == []
    assert [h.entry_id for h in index.search("coffee", 5, dataset="food")] == ["e2"]
    assert index.delete_entries(["e2"]) == 1
    assert index.search("coffee", 5) == []
    assert index.counts_by_entry() == {"e1": 2}


def test_replace_entry_is_idempotent(index):
    docs = index.entry_docs("e1")
    index.replace_entry("e1", docs)
    index.replace_entry("e1", docs)
    assert index.count("e1") == 2
    assert index.get_docs(["e1-1"])["e1-1"].text.startswith("Heat transfer")


def test_other_handles_see_new_vocabulary(tmp_path, index):
    if isinstance(index, SqliteKeywordIndex):
        reader = SqliteKeywordIndex(tmp_path / "keywords.db")
    else:
        reader = MeiliKeywordIndex(index.client, index.name)
    assert reader.search("aeroelastic", 5) == []
    index.replace_entry("e3", [_doc("e3", 0, "Aeroelastic models of heated aircraft.")])
    assert reader.search("aeroelastik", 5)[0].entry_id == "e3"


def test_an_exact_phrase_ranks_above_scattered_words(tmp_path):
    idx = SqliteKeywordIndex(tmp_path / "k.db")
    idx.replace_entry(
        "e1",
        [
            _doc("e1", 0, "type of interface components: the components of a type interface"),
            _doc("e1", 1, "Each interface has a type. The type of COM components is abstract."),
            _doc("e1", 2, "COM COM COM components components type type interface interface"),
        ],
    )
    assert idx.search("the type of COM components", 3)[0].id == "e1-1"


def test_each_language_is_found_in_its_own_words(index):
    """German stems (embedded) or German segmentation (Meilisearch), and a phrase inside a
    longer run of Chinese or Japanese characters."""
    docs = {
        "de": "Die Prüfsummen der komprimierten Dateien werden beim Entpacken überprüft.",
        "ja": "圧縮されたファイルのチェックサムは展開時に検証されます。",
        "zh": "在解压缩时会检查压缩文件的校验和。",
    }
    for lang, text in docs.items():
        index.replace_entry(lang, [KeywordDoc(f"{lang}-0", lang, "d", 0, 1, 0, 9, text, lang)])
    assert index.search("ファイルのチェック", 3)[0].entry_id == "ja"
    assert index.search("压缩文件的校验", 3)[0].entry_id == "zh"
    assert index.search("Prüfsummen der komprimierten Dateien", 3)[0].entry_id == "de"
    assert index.get_docs(["ja-0"])["ja-0"].language == "ja"
