"""Request and response bodies. Requests forbid unknown fields; responses carry no content
beyond what the operation is for (metadata in lists, bounded snippets in search)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationInfo,
    field_validator,
)

from resources.analysis import LANGUAGES
from resources.catalog import Dataset, Entry

DatasetName = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$", examples=["manuals"])]
LabelKey = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
# Only what every store holds as JSON: finite floats (NaN, Infinity and 1e400 are refused, as
# JSON has no such values) and 64-bit integers.
MetadataValue = (
    Annotated[StrictStr, Field(max_length=256)]
    | Annotated[StrictInt, Field(ge=-(2**63), le=2**63 - 1)]
    | Annotated[StrictFloat, Field(allow_inf_nan=False)]
    | StrictBool
)
_CLOSED = {"additionalProperties": False}  # keys outside the pattern are refused
Metadata = Annotated[dict[LabelKey, MetadataValue], Field(max_length=32, json_schema_extra=_CLOSED)]
Mode = Literal["hybrid", "vector", "keyword"]


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DatasetConfig(StrictModel):
    description: str = Field(default="", max_length=1000)
    labels: dict[LabelKey, Annotated[str, Field(max_length=256)]] = Field(
        default_factory=dict, max_length=32, json_schema_extra=_CLOSED
    )
    language: Literal[tuple(sorted(LANGUAGES))] | None = Field(  # type: ignore[valid-type]
        default=None,
        description="ISO 639-1 language of every entry: no detection (applies to entries "
        "read after it is set)",
    )
    chunk_tokens: int | None = Field(
        default=None,
        ge=32,
        le=8192,
        description="Chunk window in model tokens (at most what the embedding model reads: "
        "a larger value is capped to it); null: the model's whole window. A change re-chunks "
        "and re-embeds this dataset's entries on the next run",
    )
    ocr_engine: Literal["tesseract", "mistral"] | None = Field(
        default=None,
        description="OCR engine of this dataset's scanned pages (mistral needs the "
        "deployment's MISTRAL_API_KEY); null: the deployment's ALIEN_OCR",
    )
    ocr_languages: str | None = Field(
        default=None,
        pattern=r"^[a-z][a-z_]{1,20}(\+[a-z][a-z_]{1,20}){0,7}$",
        description="Tesseract languages of this dataset's scanned pages, e.g. deu+eng (each "
        "must be installed); null: the deployment's ALIEN_OCR_LANGUAGES. A change re-reads "
        "this dataset's scanned PDFs and images",
        examples=["deu+eng"],
    )
    embedding_model: str | None = Field(
        default=None,
        max_length=500,
        description="MODEL or MODEL@VARIANT of this dataset's vectors: all-MiniLM-L6-v2 (the "
        "packaged model) or a sentence-transformers directory on the service's machines; "
        "the variant is torch, onnx, onnx-int8, onnx-int8-lean or static. Its vectors get a "
        "space of their own, searched with the others; a change re-embeds this dataset in "
        "that space while searches read the old one, then switches. null: the deployment's "
        "model",
        examples=["/models/paraphrase-multilingual-MiniLM-L12-v2", "all-MiniLM-L6-v2@onnx-int8"],
    )

    @field_validator("embedding_model")
    @classmethod
    def _embedding_model(cls, value: str | None, info: ValidationInfo) -> str | None:
        """A spec this build can load here, written the one way spaces are named (what is
        stored is shown as it is, even when its directory has gone meanwhile)."""
        if value is None:
            return None
        from resources.embedder import resolve_model_path
        from resources.embedding_backends import EmbedderSpec

        spec = EmbedderSpec.parse(value)  # an unknown variant: a ValueError, so a 422
        if info.context and info.context.get("stored"):
            return value
        try:
            resolve_model_path(spec.model)
        except FileNotFoundError as err:
            raise ValueError(str(err)) from None
        return str(spec)


class DatasetCreate(StrictModel):
    name: DatasetName
    config: DatasetConfig = Field(default_factory=DatasetConfig)


class DatasetUpdate(StrictModel):
    config: DatasetConfig


class DatasetPublic(BaseModel):
    name: str
    config: DatasetConfig
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, dataset: Dataset) -> DatasetPublic:
        return cls(
            name=dataset.name,
            config=DatasetConfig.model_validate(dataset.config, context={"stored": True}),
            created_at=dataset.created_at,
            updated_at=dataset.updated_at,
        )


class Page(BaseModel):
    limit: int
    offset: int
    next_offset: int | None = Field(description="Offset of the next page; null on the last")


class DatasetList(Page):
    datasets: list[DatasetPublic]


class EntryPublic(BaseModel):
    """An entry's metadata and processing status (never its content)."""

    entry_id: str
    dataset: str
    source_name: str
    attached_to: str | None = Field(
        default=None,
        description="The email entry this file came attached to (deleting the email deletes "
        "it, unless its bytes are also stored from elsewhere); null for other entries",
    )
    media_type: str
    size: int
    sha256: str
    status: Literal["pending", "processing", "indexed", "failed"]
    reason: str | None
    pages: int | None
    chunks: int | None
    metadata: dict[str, Any]
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, entry: Entry) -> Self:
        return cls.model_validate({**entry.public(), "metadata": entry.metadata})


_WITHHELD = (
    "; null in the answer to a credential without `read` scope whose upload matched an "
    "existing entry: it learns that the bytes are there (the entry id), nothing about the "
    "stored entry"
)
_ECHOED = (
    "; to a credential without `read` scope whose upload matched an existing entry, the "
    "value it sent, not the stored entry's"
)


class UploadedEntry(EntryPublic):
    """The entry an upload made or matched. A credential that may not read gets, for bytes
    already stored, the entry id and what it sent itself, never the stored entry's name,
    metadata, status, timestamps or processing details."""

    source_name: str = Field(description="The file name" + _ECHOED)
    media_type: str = Field(description="The media type" + _ECHOED)
    metadata: dict[str, Any] = Field(description="The metadata" + _ECHOED)
    status: Literal["pending", "processing", "indexed", "failed"] | None = Field(
        description="Processing status" + _WITHHELD
    )
    reason: str | None = Field(description="Why processing failed, if it did" + _WITHHELD)
    pages: int | None = Field(description="Pages extracted, once indexed" + _WITHHELD)
    chunks: int | None = Field(description="Chunks indexed, once indexed" + _WITHHELD)
    created_at: datetime | None = Field(description="When the entry was made" + _WITHHELD)
    updated_at: datetime | None = Field(description="When it last changed" + _WITHHELD)

    @classmethod
    def receipt(
        cls,
        entry_id: str,
        *,
        dataset: str,
        source_name: str,
        media_type: str,
        size: int,
        sha256: str,
        metadata: dict[str, Any],
    ) -> UploadedEntry:
        """Only what the uploader knows already: the id it is told, and its own request."""
        return cls(
            entry_id=entry_id, dataset=dataset, source_name=source_name, media_type=media_type,
            size=size, sha256=sha256, metadata=metadata, status=None, reason=None, pages=None,
            chunks=None, created_at=None, updated_at=None,
        )  # fmt: skip


class EntryList(Page):
    entries: list[EntryPublic]


class PageTextPublic(BaseModel):
    page: int
    method: str = Field(description="text (text layer or file), ocr, or empty")
    language: str | None = Field(
        default=None,
        description="ISO 639-1 language the page's text was analyzed in (detected, or the "
        "dataset's); null for text extracted before languages were recorded",
    )
    text: str


class EntryText(Page):
    entry_id: str
    total_pages: int
    pages: list[PageTextPublic]


class ChunkPublic(BaseModel):
    chunk_id: str
    index: int
    page: int | None
    start: int
    end: int
    tokens: int
    text: str


class EntryChunks(Page):
    entry_id: str
    total_chunks: int
    chunks: list[ChunkPublic]


class SearchRequest(StrictModel):
    # at least one character that is not white space: an empty query is an error, not junk
    query: str = Field(min_length=1, max_length=1000, pattern=r"\S")
    mode: Mode = "hybrid"
    top_k: int = Field(default=10, ge=1, description="At most the cluster's cap (default 50)")
    dataset: DatasetName | None = None
    metadata: Metadata | None = Field(
        default=None, description="Only entries whose metadata has every one of these pairs"
    )


class SearchHit(BaseModel):
    entry_id: str
    source_name: str
    dataset: str
    chunk_id: str
    page: int | None
    score: float
    snippet: str = Field(description="At most the cluster's snippet length (default 300)")


class SearchResponse(BaseModel):
    mode: Mode
    results: list[SearchHit]


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ready", "not_ready"]
    unavailable: list[str] = Field(
        default_factory=list,
        description="What is not ready, by name only (catalog, objects, vectors, keywords, "
        "audit_log, embedder); the reasons go to the service's log",
    )
