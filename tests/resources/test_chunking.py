import pytest

from resources.chunking import chunk_id, chunk_pages
from resources.embedder import Embedder
from resources.extract import PageText


@pytest.fixture(scope="module")
def embedder():
    return Embedder()


def _pages(*texts):
    return [PageText(i + 1, t, "text") for i, t in enumerate(texts)]


def test_chunks_fit_the_model_window_and_fill_it(embedder):
    tok = embedder.tokenizer
    limit = embedder.max_content_tokens
    assert limit == 254  # all-MiniLM-L6-v2 reads 256 tokens including [CLS] and [SEP]
    sentence = "The pressure distribution over the wing was measured at several stations. "
    page = (sentence * 30 + "\n\n") * 4
    chunks = chunk_pages("e", _pages(page), tok, limit)
    assert len(chunks) > 5
    for c in chunks:
        assert tok.count(c.text, special_tokens=True) <= embedder.max_seq_length
        assert c.text == page[c.start : c.end]
    # Everything but the last chunk of a page uses most of the window.
    assert all(c.tokens >= limit // 2 for c in chunks[:-1])
    # No text is lost: chunks cover every word of the page, in order, without overlap.
    assert " ".join(c.text for c in chunks).split() == page.split()


def test_cuts_prefer_paragraph_breaks(embedder):
    para = "word " * 180
    page = f"{para}\n\n{para}\n\n{para}"
    chunks = chunk_pages("e", _pages(page), embedder.tokenizer, 254)
    assert [c.text.strip() for c in chunks] == [para.strip()] * 3


def test_a_very_long_token_run_is_still_bounded(embedder):
    blob = "x" * 5000 + " tail"
    chunks = chunk_pages("e", _pages(blob), embedder.tokenizer, 254)
    assert all(embedder.tokenizer.count(c.text) <= 254 for c in chunks)
    assert "".join(c.text for c in chunks).replace(" ", "") == blob.replace(" ", "")


def test_pages_and_ids(embedder):
    chunks = chunk_pages(
        "entry-1", _pages("first page", "  ", "third page"), embedder.tokenizer, 254
    )
    assert [(c.page, c.index, c.text) for c in chunks] == [
        (1, 0, "first page"),
        (3, 1, "third page"),
    ]
    assert chunks[0].id == chunk_id("entry-1", 0, "first page")
    assert chunk_id("entry-1", 0, "first page") != chunk_id("entry-2", 0, "first page")
