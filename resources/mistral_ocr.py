"""Mistral OCR (cluster mode, ``ALIEN_OCR=mistral``): whole PDFs and images through the
``mistralai`` client's OCR endpoint, page markdown back, figures kept in the object store.

Documents are sent inline as base64 data URLs, so nothing is published anywhere for the API
to fetch. A spend limit caps the pages sent per pipeline run; an entry that would pass it is
left pending for the next run, not failed. An API refusal (bad key, quota, a document it
rejects) is an ``ExtractionError`` with the API's status and message, shown as the reason.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from resources.extract import IMAGE_TYPES, PDF, ExtractionError, PageText

DEFAULT_MODEL = "mistral-ocr-latest"


class OcrBudgetExceeded(Exception):
    """Sending this document would pass the run's page limit; try again next run."""


@dataclass(frozen=True)
class Figure:
    id: str
    media_type: str
    data: bytes


@dataclass
class OcrResult:
    pages: list[PageText]
    figures: list[Figure] = field(default_factory=list)
    pages_billed: int = 0


def build_request(path: Path, media_type: str, model: str) -> dict[str, Any]:
    """The keyword arguments of ``client.ocr.process`` for one document."""
    data = base64.b64encode(path.read_bytes()).decode()
    if media_type == PDF:
        document = {"type": "document_url", "document_url": f"data:{PDF};base64,{data}"}
    elif media_type in IMAGE_TYPES:
        document = {"type": "image_url", "image_url": f"data:{media_type};base64,{data}"}
    else:
        raise ExtractionError(f"Mistral OCR does not read {media_type!r}")
    return {"model": model, "document": document, "include_image_base64": True}


def parse_response(response: Any) -> OcrResult:
    """Pages (1-based, in order) and figures from an ``OCRResponse`` (or its JSON form)."""
    body = response if isinstance(response, dict) else response.model_dump(by_alias=True)
    pages, figures = [], []
    for page in sorted(body.get("pages") or [], key=lambda p: p["index"]):
        text = page.get("markdown") or ""
        pages.append(PageText(page=int(page["index"]) + 1, text=text, method="ocr"))
        for image in page.get("images") or []:
            encoded = image.get("image_base64")
            if not encoded:
                continue
            header, _, payload = (
                encoded.partition(",") if encoded.startswith("data:") else ("", "", encoded)
            )
            media_type = header[5:].split(";")[0] if header else "application/octet-stream"
            try:
                figures.append(Figure(image["id"], media_type, base64.b64decode(payload)))
            except (binascii.Error, ValueError):
                continue  # a figure we cannot decode is skipped; the text is what matters
    usage = body.get("usage_info") or {}
    return OcrResult(pages, figures, int(usage.get("pages_processed") or len(pages)))


def page_count(path: Path, media_type: str) -> int:
    if media_type != PDF:
        return 1
    import pypdfium2 as pdfium

    try:
        return len(pdfium.PdfDocument(path))
    except pdfium.PdfiumError as err:
        raise ExtractionError(f"corrupt PDF ({err})") from None


class MistralOcr:
    """One pipeline run's use of Mistral OCR, with its page budget."""

    name = "mistral"

    def __init__(
        self, api_key: str, model: str = DEFAULT_MODEL, max_pages: int = 500, client: Any = None
    ) -> None:
        if client is None:
            from mistralai.client import Mistral

            client = Mistral(api_key=api_key)
        self.client = client
        self.model = model
        self.remaining = max_pages

    def process(self, path: Path, media_type: str) -> OcrResult:
        pages = page_count(path, media_type)
        if pages > self.remaining:
            raise OcrBudgetExceeded(
                f"{pages} page(s) would pass this run's OCR limit ({self.remaining} left)"
            )
        try:
            response = self.client.ocr.process(**build_request(path, media_type, self.model))
        except Exception as err:  # the SDK's errors carry the HTTP status and message
            status = getattr(err, "status_code", None)
            raise ExtractionError(
                f"Mistral OCR refused the document ({status or type(err).__name__}): {err}"[:500]
            ) from None
        result = parse_response(response)
        self.remaining -= max(result.pages_billed, pages)
        return result
