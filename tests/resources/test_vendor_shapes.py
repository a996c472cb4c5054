"""Server backends that cannot run here (Qdrant server, Meilisearch, Mistral's API): what we
send and what we read, checked against the vendors' documented formats, and Mistral OCR
through the pipeline with a stand-in for its client that answers in the SDK's own types."""

from __future__ import annotations

import base64
import os
import time
import uuid
from pathlib import Path
from typing import Any

import jwt
import pytest

from resources.keywords import max_typos
from resources.meili import (
    DATA_PLANE_ACTIONS,
    EXTERNAL_ACTIONS,
    KNOWN_ACTIONS,
    derive_key,
    index_settings,
    key_spec,
)
from resources.qdrant import tenant_token
from tests.conftest import PDFS, pdf_pages


def test_qdrant_tenant_token_has_the_documented_claims() -> None:
    key = "cluster-api-key-of-at-least-32-bytes"
    token = tenant_token(key, "alien-acme", ttl_seconds=600)
    claims = jwt.decode(token, key, algorithms=["HS256"])
    assert set(claims) == {"exp", "access"}
    assert claims["access"] == [{"collection": "alien-acme", "access": "rw"}]
    assert 0 < claims["exp"] - time.time() <= 600
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(token, "another-key-also-of-at-least-32-bytes", algorithms=["HS256"])


def test_meilisearch_keys_are_scoped_and_external_keys_cannot_read_documents() -> None:
    internal = key_spec("alien-acme", external=False)
    external = key_spec("alien-acme", external=True)
    for spec in (internal, external):
        assert set(spec) == {"uid", "name", "description", "actions", "indexes", "expiresAt"}
        assert str(uuid.UUID(spec["uid"])) == spec["uid"]
        assert spec["indexes"] == ["alien-acme"]
        assert set(spec["actions"]) <= KNOWN_ACTIONS
        assert not {"*", "documents.*", "indexes.*", "keys.create"} & set(spec["actions"])
    assert external["actions"] == list(EXTERNAL_ACTIONS) == ["search"]
    assert "documents.get" not in external["actions"]
    assert "documents.get" in DATA_PLANE_ACTIONS  # in-cluster only: hydrating search results
    assert internal["uid"] != external["uid"] == key_spec("alien-acme", external=True)["uid"]
    assert key_spec("alien-other", external=False)["uid"] != internal["uid"]


def test_meilisearch_key_value_is_derived_as_documented() -> None:
    """Meilisearch documents a key as HMAC-SHA256(uid) under the master key (hex)."""
    import hashlib
    import hmac

    uid = key_spec("alien-acme", external=False)["uid"]
    expected = hmac.new(b"master-key", uid.encode(), hashlib.sha256).hexdigest()
    assert derive_key("master-key", uid) == expected and len(expected) == 64


def test_meilisearch_settings_are_explicit_and_match_the_embedded_typo_rule() -> None:
    settings = index_settings()
    assert set(settings) == {
        "searchableAttributes",
        "localizedAttributes",
        "filterableAttributes",
        "displayedAttributes",
        "typoTolerance",
        "pagination",
        "faceting",
    }
    sizes = settings["typoTolerance"]["minWordSizeForTypos"]
    assert (sizes["oneTypo"], sizes["twoTypos"]) == (5, 9)
    assert max_typos("x" * 4) == 0 and max_typos("x" * 5) == 1 and max_typos("x" * 9) == 2
    assert {"entry_id", "dataset", "id"} <= set(settings["filterableAttributes"])
    # Every language's text field is searched and localized (a pattern with a wildcard is
    # accepted by Meilisearch 1.21 but matches nothing in searchableAttributes).
    localized = {
        pattern: rule["locales"]
        for rule in settings["localizedAttributes"]
        for pattern in rule["attributePatterns"]
    }
    assert localized["text_de"] == ["deu"] and localized["text_ja"] == ["jpn"]
    assert all("*" not in field for field in settings["searchableAttributes"])
    assert set(localized) <= set(settings["searchableAttributes"])


# -- Mistral OCR ------------------------------------------------------------------------------
PNG_1PX = base64.b64encode(
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x00\x00\x00\x00"
    b":~\x9bU\x00\x00\x00\nIDATx\x9cc`\x00\x00\x00\x02\x00\x01H\xaf\xa4q\x00\x00\x00\x00IEND"
    b"\xaeB`\x82"
).decode()


def documented_response(pages: int) -> Any:
    """An OCR response in the shape Mistral documents, validated by the SDK's own model."""
    from mistralai.client.models import OCRResponse

    return OCRResponse.model_validate(
        {
            "pages": [
                {
                    "index": i,
                    "markdown": f"# Page {i + 1}\n\nMarshalling of structures, page {i + 1}.",
                    "images": [
                        {
                            "id": f"img-{i}.png",
                            "top_left_x": 0,
                            "top_left_y": 0,
                            "bottom_right_x": 1,
                            "bottom_right_y": 1,
                            "image_base64": f"data:image/png;base64,{PNG_1PX}",
                        }
                    ],
                    "dimensions": {"dpi": 200, "height": 2200, "width": 1700},
                }
                for i in range(pages)
            ],
            "model": "mistral-ocr-2505",
            "usage_info": {"pages_processed": pages, "doc_size_bytes": 12345},
        }
    )


class StandInClient:
    """Answers ``client.ocr.process`` like the SDK; records the requests it got."""

    def __init__(self, fail_with: Exception | None = None) -> None:
        self.requests: list[dict[str, Any]] = []
        self.fail_with = fail_with
        self.ocr = self

    def process(self, **kwargs: Any) -> Any:
        from mistralai.client.models import OCRRequest

        OCRRequest.model_validate(kwargs)  # the request is what the SDK would send
        self.requests.append(kwargs)
        if self.fail_with is not None:
            raise self.fail_with
        data_url = kwargs["document"]["document_url"]
        pdf = base64.b64decode(data_url.split(",", 1)[1])
        import io

        import pypdfium2 as pdfium

        return documented_response(len(pdfium.PdfDocument(io.BytesIO(pdf))))


@pytest.fixture
def mistral_tenant(tenant, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from alien.documents import register_bytes

    pdf = pdf_pages(PDFS / "camlidl-manual.pdf", [7, 8])
    entry = register_bytes(
        tenant, pdf, dataset="default", source_uri="test://two-pages", source_name="two.pdf"
    ).entry
    # The dataset's own OCR engine: the deployment's stays Tesseract.
    tenant.catalog.update_dataset("default", {"ocr_engine": "mistral"})
    return tenant, entry


def _run_with(monkeypatch: pytest.MonkeyPatch, client: StandInClient, max_pages: int) -> None:
    import alien.pipeline as pipeline
    from resources.mistral_ocr import MistralOcr

    monkeypatch.setattr(
        pipeline, "_mistral", lambda settings: MistralOcr("key", max_pages=max_pages, client=client)
    )


def test_mistral_pages_and_figures_flow_through_the_pipeline(mistral_tenant, monkeypatch):
    from alien.layout import figures_prefix
    from alien.pipeline import read_pages, run_all

    stores, entry = mistral_tenant
    client = StandInClient()
    _run_with(monkeypatch, client, max_pages=10)
    run_all(stores)
    assert stores.catalog.get_entry(entry.id).status == "indexed"
    assert [(p.page, p.method) for p in read_pages(stores, entry.id)] == [(1, "ocr"), (2, "ocr")]
    assert read_pages(stores, entry.id)[1].text.startswith("# Page 2")
    figures = sorted(o.key for o in stores.objects.list(figures_prefix(entry.id)))
    assert figures == [
        figures_prefix(entry.id) + "img-0.png",
        figures_prefix(entry.id) + "img-1.png",
    ]
    request = client.requests[0]
    assert request["document"]["type"] == "document_url"
    assert request["document"]["document_url"].startswith("data:application/pdf;base64,")
    from alien.documents import delete_entry

    delete_entry(stores, entry.id)
    assert list(stores.objects.list(figures_prefix(entry.id))) == []


def test_mistral_spend_limit_defers_the_entry(mistral_tenant, monkeypatch):
    from alien.pipeline import run_ocr_output, run_raw_documents

    stores, entry = mistral_tenant
    client = StandInClient()
    _run_with(monkeypatch, client, max_pages=1)
    run_raw_documents(stores)
    report = run_ocr_output(stores)
    assert client.requests == []  # nothing was sent
    assert report.details["deferred"] == 1 and report.failed == 0
    got = stores.catalog.get_entry(entry.id)
    assert got.status == "pending" and "OCR limit" in got.reason
    _run_with(monkeypatch, client, max_pages=5)  # the next run, a new budget
    assert run_ocr_output(stores).processed == 1


def test_mistral_refusal_is_a_clear_failure(mistral_tenant, monkeypatch):
    import httpx2
    from mistralai.client.errors import SDKError

    from alien.pipeline import run_all

    stores, entry = mistral_tenant
    refusal = SDKError(
        "Unauthorized", httpx2.Response(401, request=httpx2.Request("POST", "https://x/v1/ocr"))
    )
    _run_with(monkeypatch, StandInClient(fail_with=refusal), max_pages=10)
    run_all(stores)
    got = stores.catalog.get_entry(entry.id)
    assert got.status == "failed"
    assert "Mistral OCR refused" in got.reason and "401" in got.reason


@pytest.mark.skipif(
    not os.environ.get("ALIEN_TEST_MISTRAL"),
    reason="needs Mistral's API: set MISTRAL_API_KEY and ALIEN_TEST_MISTRAL=1 (no network here)",
)
def test_mistral_real_api_reads_a_scanned_page(tmp_path: Path) -> None:
    from resources.mistral_ocr import MistralOcr

    path = tmp_path / "scan.pdf"
    path.write_bytes(pdf_pages(PDFS / "camlidl-manual.p8-10.scanned.pdf", [0]))
    result = MistralOcr(os.environ["MISTRAL_API_KEY"], max_pages=2).process(path, "application/pdf")
    assert len(result.pages) == 1 and "struct" in result.pages[0].text.lower()
