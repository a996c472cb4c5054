"""Shared fixtures: real stores under a temporary ALIEN_HOME, real documents from ../shared."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from resources.settings import AlienSettings
from resources.stores import TenantRegistry, TenantStores

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
PDFS = SHARED / "pdfs"
CRANFIELD = SHARED / "cranfield"


def pytest_configure(config: pytest.Config) -> None:
    if not PDFS.is_dir():
        raise pytest.UsageError(f"test documents not found at {PDFS}")


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AlienSettings:
    home = tmp_path / "alien-home"
    monkeypatch.setenv("ALIEN_HOME", str(home))
    monkeypatch.setenv("DAGSTER_HOME", str(home / "dagster"))
    return AlienSettings(home=home)


@pytest.fixture
def registry(settings: AlienSettings) -> Iterator[TenantRegistry]:
    reg = TenantRegistry(settings)
    yield reg
    for tenant in reg.list():
        reg.drop(tenant)


@pytest.fixture
def tenant(registry: TenantRegistry) -> TenantStores:
    return registry.create("tenant-a")


def pdf_pages(source: Path, pages: list[int], password: str | None = None) -> bytes:
    """A new PDF made of ``pages`` (0-based) of a real PDF, optionally encrypted."""
    import pypdf

    reader = pypdf.PdfReader(source)
    writer = pypdf.PdfWriter()
    for index in pages:
        writer.add_page(reader.pages[index])
    if password:
        writer.encrypt(password)
    buf = io.BytesIO()
    writer.write(buf)
    return buf.getvalue()


def bad_documents(directory: Path) -> dict[str, str]:
    """Write one file per kind of bad input; returns file name -> expected reason fragment."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "empty.txt").write_bytes(b"")
    good = (PDFS / "camlidl-manual.pdf").read_bytes()
    (directory / "corrupt.pdf").write_bytes(good[:1500] + b"\x00garbage" * 100)
    (directory / "encrypted.pdf").write_bytes(
        pdf_pages(PDFS / "camlidl-manual.pdf", [7], password="secret")
    )
    (directory / "blob.pdf").write_bytes(os.urandom(4096))
    (directory / "archive.zip").write_bytes(b"PK\x03\x04" + os.urandom(512))
    return {
        "empty.txt": "empty file",
        "corrupt.pdf": "corrupt PDF",
        "encrypted.pdf": "encrypted PDF",
        "blob.pdf": "not a PDF",
        "archive.zip": "unsupported media type",
    }
