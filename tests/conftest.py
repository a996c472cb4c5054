"""Shared fixtures: real stores under a temporary ALIEN_HOME, real documents from ../shared."""

from __future__ import annotations

import functools
import io
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Files derived from the model (its ONNX export) are made once for the whole session.
_MADE_MODELS_DIR = (
    None if "ALIEN_MODELS_DIR" in os.environ else tempfile.mkdtemp(prefix="alien-test-models-")
)
MODELS_DIR = Path(os.environ.setdefault("ALIEN_MODELS_DIR", str(_MADE_MODELS_DIR)))

from resources.settings import AlienSettings  # noqa: E402 (after the environment above)
from resources.stores import TenantRegistry, TenantStores  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
PDFS = SHARED / "pdfs"
CRANFIELD = SHARED / "cranfield"


def pytest_configure(config: pytest.Config) -> None:
    if not PDFS.is_dir():
        raise pytest.UsageError(f"test documents not found at {PDFS}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Files with slow tests first (their own order kept): under `make test`'s two processes,
    each taking whole files, the long files start early and the two end together."""
    slow = {
        i.path for i in items if i.get_closest_marker("slow") or i.get_closest_marker("dagster_dev")
    }
    items.sort(key=lambda item: item.path not in slow)


def pytest_unconfigure(config: pytest.Config) -> None:
    if _MADE_MODELS_DIR:
        shutil.rmtree(_MADE_MODELS_DIR, ignore_errors=True)


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


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    access_key: str
    secret_key: str


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A real S3-protocol server on loopback (moto's server: it accepts any credentials)."""
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = (tmp_path_factory.mktemp("moto") / "moto.log").open("w")
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/moto-api/", timeout=2)
            break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError("moto_server did not start") from None
            time.sleep(0.2)
    try:
        yield S3Server(f"127.0.0.1:{port}", "alien-test", "alien-test-secret")
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


@pytest.fixture(scope="session")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """Real Meilisearch, Qdrant (JWT RBAC) and S3 with MinIO's admin API, once per session.

    Their binaries come from ``make servers-install``; a missing one fails the tests that
    need it rather than skipping them.
    """
    from alien.local_servers import start_servers

    started = start_servers(tmp_path_factory.mktemp("servers"))
    yield started
    started.stop()


@pytest.fixture(scope="session")
def minio_server(servers: object) -> S3Server:
    """The S3 gateway with MinIO's admin API (users and IAM policies are enforced)."""
    return S3Server(servers.s3_endpoint, servers.s3_access_key, servers.s3_secret_key)  # type: ignore[attr-defined]


POSTGRES_ADMIN = os.environ.get(
    "ALIEN_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
CLUSTER_SECRET = "test-cluster-secret"


@pytest.fixture(scope="session")
def postgres() -> Iterator[object]:
    """A provisioner on the machine's PostgreSQL (tests name their tenants uniquely)."""
    from sqlalchemy.exc import OperationalError

    from resources.postgres import PostgresProvisioner

    provisioner = PostgresProvisioner(POSTGRES_ADMIN, CLUSTER_SECRET)
    try:
        provisioner.exists("probe-tenant")
    except OperationalError as err:
        pytest.skip(f"needs PostgreSQL at {POSTGRES_ADMIN}: {err.orig}")
    yield provisioner
    provisioner.close()


@pytest.fixture
def cluster_database(postgres: object) -> Iterator[str]:
    """A cluster catalog (tenant registry) database of this test's own, dropped after it."""
    from sqlalchemy import text

    name = f"alien_cluster_t{uuid.uuid4().hex[:10]}"
    yield name
    with postgres.engine.connect() as conn:  # type: ignore[attr-defined]
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def control(
    tmp_path: Path, servers: object, postgres: object, cluster_database: str
) -> dict[str, str]:
    """The control plane's environment (cluster mode): the cluster's keys for every server."""
    return {
        "ALIEN_HOME": str(tmp_path / "control"),
        "DAGSTER_HOME": str(tmp_path / "control" / "dagster"),
        "ALIEN_MODE": "cluster",
        "ALIEN_POSTGRES_URL": POSTGRES_ADMIN,
        "ALIEN_CLUSTER_SECRET": CLUSTER_SECRET,
        "ALIEN_CLUSTER_DATABASE": cluster_database,
        **servers.cluster_settings(),  # type: ignore[attr-defined]
    }


@pytest.fixture
def dagster_database(postgres: object) -> Iterator[str]:
    """An empty database for a Dagster instance's storage (dagster-postgres), dropped after."""
    from sqlalchemy import create_engine, text

    name = f"alien_dagster_t{uuid.uuid4().hex[:10]}"
    engine = create_engine(POSTGRES_ADMIN, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    yield name
    with engine.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    engine.dispose()


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
    (directory / "page-bomb.pdf").write_bytes(page_size_bomb(pages=3))
    (directory / "pixel-bomb.png").write_bytes(pixel_bomb_png(12_000, 12_000))
    (directory / "stream-bomb.pdf").write_bytes(inflating_stream_pdf(STREAM_BOMB_BYTES))
    (directory / "many-pages.pdf").write_bytes(blank_pages_pdf(5_001))
    return {
        "empty.txt": "empty file",
        "corrupt.pdf": "corrupt PDF",
        "encrypted.pdf": "encrypted PDF",
        "blob.pdf": "not a PDF",
        "archive.zip": "unsupported media type",
        "page-bomb.pdf": r"page 1 would be \d+ x \d+ pixels at \d+ dpi.*ALIEN_MAX_PAGE_PIXELS",
        "pixel-bomb.png": "12000 x 12000 pixels.*ALIEN_MAX_PAGE_PIXELS",
        "stream-bomb.pdf": "decodes to more than 536,870,912 bytes.*MAX_DECOMPRESSED_BYTES",
        "many-pages.pdf": "5,001 pages, over the cap of 5,000 pages.*ALIEN_MAX_PAGES_PER_ENTRY",
    }


# Just over the default cap on what one PDF stream may decode to (512 MiB).
STREAM_BOMB_BYTES = 513 * 1024**2


def _encode(data: bytes, name: str) -> bytes:
    """``data`` encoded so that PDF's filter ``name`` decodes it."""
    import base64
    import zlib

    if name == "FlateDecode":
        return zlib.compress(data, 9)
    if name == "ASCIIHexDecode":
        return data.hex().encode() + b">"
    if name == "ASCII85Decode":
        return base64.a85encode(data) + b"~>"
    if name == "LZWDecode":
        from pypdf._codecs._codecs import LzwCodec

        return LzwCodec().encode(data)
    raise ValueError(name)


@functools.cache
def inflating_stream_pdf(decoded: int, filters: tuple[str, ...] = ("FlateDecode",)) -> bytes:
    """A valid one-page PDF whose content stream decodes, through ``filters`` (in the order
    a reader applies them), to ``decoded`` bytes of spaces: the red team's "inflating stream",
    a thousandth of its decoded size on disk, or far less when deflated twice."""
    import zlib

    *outer, innermost = filters
    if innermost == "FlateDecode":  # the large layer, deflated a megabyte at a time
        packer = zlib.compressobj(9, zlib.DEFLATED, 15, 9, zlib.Z_RLE)
        block = b" " * 1024**2
        whole, rest = divmod(decoded, len(block))
        data = b"".join(packer.compress(block) for _ in range(whole))
        data += packer.compress(b" " * rest) + packer.flush()
    else:
        data = _encode(b" " * decoded, innermost)
    for name in reversed(outer):
        data = _encode(data, name)
    chain = b"[" + b" ".join(b"/" + f.encode() for f in filters) + b"]"
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R >>",
        b"<< /Length %d /Filter %s >>\nstream\n%s\nendstream" % (len(data), chain, data),
    ]
    out = io.BytesIO()
    out.write(b"%PDF-1.7\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(out.tell())
        out.write(b"%d 0 obj\n%s\nendobj\n" % (number, body))
    xref = out.tell()
    out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1))
    out.write(b"".join(b"%010d 00000 n \n" % o for o in offsets))
    out.write(
        b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    )
    return out.getvalue()


def blank_pages_pdf(pages: int) -> bytes:
    """A PDF of ``pages`` small empty pages (a few hundred kilobytes for thousands)."""
    import pypdfium2 as pdfium

    doc = pdfium.PdfDocument.new()
    try:
        for _ in range(pages):
            doc.new_page(200, 200)
        buf = io.BytesIO()
        doc.save(buf)
    finally:
        doc.close()
    return buf.getvalue()


def page_size_bomb(pages: int = 1) -> bytes:
    """A PDF of a few hundred bytes per page: each page 14,400 x 14,400 points holding a
    1 x 1 image, which OCR at 200 dpi would render as 1.6 billion pixels (the red team's)."""
    from PIL import Image

    images = [Image.new("L", (1, 1), 255) for _ in range(pages)]
    buf = io.BytesIO()
    # 1 pixel at 1/200 dpi spans 200 inches = 14,400 points.
    images[0].save(buf, "PDF", resolution=0.005, save_all=True, append_images=images[1:])
    return buf.getvalue()


def pixel_bomb_png(width: int, height: int) -> bytes:
    """A valid grayscale PNG of ``width`` x ``height`` zeros: small on disk, its pixels whole
    in memory once decoded (written row by row, so making it costs no memory either)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    packer = zlib.compressobj(9)
    row = b"\x00" * (width + 1)  # filter byte + one byte per pixel
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


# A second embedding model (model changes, datasets' own models): a real sentence-transformers
# model of another dimension made from the packaged one.
@pytest.fixture(scope="session")
def projected_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A local sentence-transformers directory: MiniLM's transformer, a 384 -> 256 linear
    projection (seeded) and normalisation."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense, Normalize

    from resources.embedder import resolve_model_path

    base = SentenceTransformer(str(resolve_model_path("all-MiniLM-L6-v2")), device="cpu")
    generator = torch.Generator().manual_seed(7)
    dense = Dense(384, 256, bias=False, activation_function=torch.nn.Identity())
    with torch.no_grad():
        dense.linear.weight.copy_(torch.randn(256, 384, generator=generator) / 384**0.5)
    path = tmp_path_factory.mktemp("models") / "minilm-256"
    SentenceTransformer(modules=[base[0], base[1], dense, Normalize()]).save(str(path))
    return path


@pytest.fixture(scope="session")
def short_window_model(projected_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The projected model reading at most 128 tokens: it cuts other (shorter) chunks."""
    import json
    import shutil

    path = tmp_path_factory.mktemp("models") / "minilm-256-short"
    shutil.copytree(projected_model, path)
    config = path / "tokenizer_config.json"
    config.write_text(json.dumps(json.loads(config.read_text()) | {"model_max_length": 128}))
    return path
