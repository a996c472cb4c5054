"""The engines that run one embedding model: its variants, and the files they are made from.

An embedder is named by a *spec*, ``MODEL`` or ``MODEL@VARIANT``. The model is the packaged
all-MiniLM-L6-v2 or a local sentence-transformers directory; the variant says what runs it:

``torch``
    sentence-transformers on PyTorch, the default: on a GPU in float16, with large batches.
``onnx``
    the same weights exported to ONNX and run by ONNX Runtime in float32: the same vectors
    (to about 1e-6), without importing torch. Searches use it for the query of a ``torch``
    space once the export exists, so a cold process answers in about a second.
``onnx-int8``
    that export with its weights quantized to int8 (dynamic quantization, per channel).
``onnx-int8-lean``
    the int8 export reading only a passage's content: English function words (negations and
    particles such as "not", "off", "above" stay) and punctuation marks (those of a number
    stay) are left out of the passages it embeds (``LeanReading``); queries are embedded
    whole, by ``onnx-int8``. Less work by the tokens left out, and further from the model's
    vectors than ``onnx-int8`` (a space, and a family, of its own).
``static``
    a static embedding table distilled from the model, as model2vec does: every token of the
    vocabulary embedded once by the model, reduced by PCA and weighted by its estimated rarity;
    a text's vector is the mean of its tokens' rows. Hundreds of times faster, and weaker.

Each variant's vectors are a space of their own (``MODEL@VARIANT`` is the space's model
name), so switching variants goes through the model-change path. The derived files (the
ONNX exports, the static table) are made once from the model's own weights, which needs
torch, and kept under the cache directory (``ALIEN_HOME/models``); nothing is downloaded.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import threading
import unicodedata
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

VARIANTS = ("torch", "onnx", "onnx-int8", "onnx-int8-lean", "static")
#: Dimensions the static table keeps (model2vec's default).
STATIC_DIMENSIONS = 256
#: Smoothing of the static table's token weights, sif / (sif + p(token)) (SIF, as model2vec).
STATIC_SIF = 1e-4


class EmbedderSpecError(ValueError):
    """An embedder spec names no variant this build knows."""


@dataclass(frozen=True)
class EmbedderSpec:
    model: str
    variant: str = "torch"

    @classmethod
    def parse(cls, text: str) -> EmbedderSpec:
        model, sep, variant = text.rpartition("@")
        if not sep or "/" in variant:  # no variant (or an "@" inside a directory's path)
            return cls(text)
        if variant not in VARIANTS:
            raise EmbedderSpecError(
                f"unknown embedding variant {variant!r} in {text!r}; one of: {', '.join(VARIANTS)}"
            )
        return cls(model, variant)

    def __str__(self) -> str:
        return self.model if self.variant == "torch" else f"{self.model}@{self.variant}"

    @property
    def family(self) -> str:
        """Specs of one family give the same vectors up to rounding (the model's own weights,
        run by another engine): their cosine scores can be compared. A static table, and
        lean passages, are families of their own."""
        if self.variant == "static" or self.lean:
            return f"{self.model}@{self.variant}"
        return self.model

    @property
    def lean(self) -> bool:
        """Passages are read lean (``LeanReading``), queries whole by ``query_spec``."""
        return self.variant == "onnx-int8-lean"

    @property
    def query_spec(self) -> EmbedderSpec:
        """What embeds this space's queries without torch: a torch model's ONNX export, the
        int8 export for lean passages (reading the whole query), else the variant itself."""
        if self.variant == "torch":
            return EmbedderSpec(self.model, "onnx")
        if self.lean:
            return EmbedderSpec(self.model, "onnx-int8")
        return self


#: Texts per call to an engine that wants large batches (a GPU), when the setting is lower.
GPU_BATCH = 512


class Backend(Protocol):
    """Runs one batch of texts through the model: float32, one unit-length row per text."""

    large_batches: bool  # a GPU: give it ``GPU_BATCH`` texts a call, longest first

    def encode(self, texts: list[str]) -> np.ndarray: ...


def normalized(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


# -- the files each variant runs from -------------------------------------------------------
def weights_key(model_dir: Path) -> str:
    """Names the model's weights without reading them: its directory and its weight files'
    sizes and modification times (a model replaced in place gets new derived files)."""
    parts = [str(model_dir.resolve())]
    for path in sorted(model_dir.glob("*.safetensors")) + sorted(model_dir.glob("*.bin")):
        stat = path.stat()
        parts.append(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def derived_dir(cache_dir: Path, model_dir: Path) -> Path:
    return cache_dir / f"{model_dir.name}-{weights_key(model_dir)}"


_DERIVED = {"onnx": "model.onnx", "onnx-int8": "model-int8.onnx", "static": "static.npy"}
_RUNS_FROM = {"onnx-int8-lean": "onnx-int8"}  # variants that run from another's file


def derived_file(cache_dir: Path, model_dir: Path, variant: str) -> Path:
    return derived_dir(cache_dir, model_dir) / _DERIVED[_RUNS_FROM.get(variant, variant)]


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """One process makes a directory's files at a time; the others wait, then find them."""
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / ".lock").open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def prepare(model_dir: Path, variant: str, cache_dir: Path, st_model: Any = None) -> Path:
    """The variant's file for the model, made now (from ``st_model``, a loaded
    SentenceTransformer, or by loading one) unless it is there already."""
    variant = _RUNS_FROM.get(variant, variant)
    target = derived_file(cache_dir, model_dir, variant)
    if target.is_file():
        return target
    # int8 quantizes the float export: made first, under its own turn of the lock
    source = prepare(model_dir, "onnx", cache_dir, st_model) if variant == "onnx-int8" else None
    with _locked(target.parent):
        if target.is_file():
            return target
        partial = target.with_name(target.name + ".part")
        if source is not None:
            quantize(source, partial)
        elif variant == "onnx":
            export_onnx(st_model or load_sentence_transformer(model_dir, "cpu"), partial)
        elif variant == "static":
            with partial.open("wb") as fh:
                np.save(fh, distill_static(st_model or load_sentence_transformer(model_dir, "cpu")))
        else:
            raise EmbedderSpecError(f"variant {variant!r} has no derived file")
        os.replace(partial, target)
        (target.parent / "source.json").write_text(
            json.dumps({"model": str(model_dir.resolve())}, indent=2) + "\n"
        )
    return target


def load_sentence_transformer(model_dir: Path, device: str) -> Any:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    return SentenceTransformer(str(model_dir), device=device, local_files_only=True)


def _input_names(st_model: Any) -> list[str]:
    """The inputs the model's tokenizer gives (BERT-like models add token_type_ids)."""
    return list(st_model.tokenizer("a").keys())


#: Encoder families whose attention ONNX Runtime's transformer optimizer fuses (the "bert"
#: fusions cover BERT, RoBERTa, XLM-R, DistilBERT, MPNet-like encoders).
_FUSABLE = {"bert", "roberta", "xlm-roberta", "distilbert", "camembert", "electra", "mpnet"}


def export_onnx(st_model: Any, path: Path) -> None:
    """The whole sentence-transformers pipeline (transformer, pooling, any dense layers and
    normalization) as one ONNX graph from token ids to the sentence embedding.

    The transformer is traced with plain ("eager") attention, which ONNX Runtime's optimizer
    then fuses, with the embeddings, layer norms and GELUs, into its own kernels (about 1.2×
    in float32 here, and what makes int8 fast); a model it cannot fuse keeps the plain graph.
    """
    import warnings

    import torch

    names = _input_names(st_model)

    class Pipeline(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = st_model

        def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
            return self.inner(dict(zip(names, inputs, strict=True)))["sentence_embedding"]

    model = Pipeline().to("cpu").eval()
    sample = tuple(torch.ones((2, 8), dtype=torch.long) for _ in names)
    axes = {name: {0: "batch", 1: "tokens"} for name in names}
    axes["sentence_embedding"] = {0: "batch"}
    encoder = getattr(st_model[0], "auto_model", None)
    config = getattr(encoder, "config", None)
    before = getattr(config, "_attn_implementation", None)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on Python conditionals
        if encoder is not None and before not in (None, "eager"):
            encoder.set_attn_implementation("eager")
        try:
            torch.onnx.export(
                model,
                sample,
                str(path),
                input_names=names,
                output_names=["sentence_embedding"],
                dynamic_axes=axes,
                opset_version=17,
                dynamo=False,
            )
        finally:
            if encoder is not None and before not in (None, "eager"):
                encoder.set_attn_implementation(before)
    if config is not None and getattr(config, "model_type", None) in _FUSABLE:
        _fuse(path, config)


def _fuse(path: Path, config: Any) -> None:
    """ONNX Runtime's transformer fusions, in place; the plain graph stays if they fail."""
    import warnings

    from onnxruntime.transformers.optimizer import optimize_model

    fused = path.with_name(path.name + ".fused")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            optimized = optimize_model(
                str(path),
                model_type="bert",
                opt_level=0,  # its fusions alone: no ONNX Runtime session (see _onnx_session)
                num_heads=int(getattr(config, "num_attention_heads", 0) or 0),
                hidden_size=int(getattr(config, "hidden_size", 0) or 0),
            )
            optimized.save_model_to_file(str(fused))
    except Exception:  # an architecture the fusions do not know: run it unfused
        fused.unlink(missing_ok=True)
        return
    os.replace(fused, path)


def quantize(source: Path, path: Path) -> None:
    """Dynamic int8 quantization of the weights, one scale per output channel (a scale per
    tensor drifts far more: cosine 0.94 to the float model against 0.99 here)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(source),
        str(path),
        weight_type=QuantType.QInt8,
        per_channel=True,
        # the fused operators' outputs have no inferred type: they are float
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )


def distill_static(st_model: Any, dimensions: int = STATIC_DIMENSIONS) -> np.ndarray:
    """A static table (vocabulary × dimensions, float32) distilled from the model.

    Each token is embedded alone (``[CLS] token [SEP]`` through the model's whole pipeline);
    PCA keeps the directions the vocabulary varies in most; each row is scaled by the SIF
    weight of the token's estimated frequency (WordPiece vocabularies list tokens roughly by
    frequency, so the rank stands for it, Zipf's law for the probability)."""
    import torch

    tokenizer = st_model.tokenizer
    names = _input_names(st_model)
    size = len(tokenizer)
    special = set(tokenizer.all_special_ids)
    ids = torch.arange(size, dtype=torch.long)
    start = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    end = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    rows = np.zeros((size, sentence_dimension(st_model)), dtype=np.float32)
    with torch.no_grad():
        for lo in range(0, size, 1024):
            batch = ids[lo : lo + 1024, None]
            parts = [batch]
            if start is not None:
                parts.insert(0, torch.full_like(batch, start))
            if end is not None:
                parts.append(torch.full_like(batch, end))
            input_ids = torch.cat(parts, dim=1).to(st_model.device)
            features = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
            if "token_type_ids" in names:
                features["token_type_ids"] = torch.zeros_like(input_ids)
            out = st_model(features)["sentence_embedding"]
            rows[lo : lo + len(batch)] = out.float().cpu().numpy()
    keep = np.array([i not in special for i in range(size)])
    mean = rows[keep].mean(axis=0)
    _, _, components = np.linalg.svd(rows[keep] - mean, full_matrices=False)
    table = (rows - mean) @ components[: min(dimensions, components.shape[0])].T
    rank = np.arange(1, size + 1, dtype=np.float64)
    probability = 1.0 / (rank * np.sum(1.0 / rank))
    table *= (STATIC_SIF / (STATIC_SIF + probability))[:, None]
    table[~keep] = 0.0
    return table.astype(np.float32)


def sentence_dimension(st_model: Any) -> int:
    getter = getattr(st_model, "get_embedding_dimension", None)  # sentence-transformers >= 6.3
    if getter is None:
        getter = st_model.get_sentence_embedding_dimension
    return int(getter())


# -- the engines ----------------------------------------------------------------------------
class TorchBackend:
    """sentence-transformers: float32 on the CPU; float16 with large batches on a GPU."""

    def __init__(self, model_dir: Path, device: str, batch_size: int) -> None:
        self.model = load_sentence_transformer(model_dir, device)
        self.gpu = str(self.model.device).startswith("cuda")
        if self.gpu:
            self.model.half()
            batch_size = max(batch_size, GPU_BATCH)
        self.batch_size = batch_size
        self.large_batches = self.gpu

    def encode(self, texts: list[str]) -> np.ndarray:
        vectors = self.model.encode(
            texts,
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)


def _tokenizer(model_dir: Path, max_length: int | None) -> Any:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tok.no_padding()
    if max_length:
        tok.enable_truncation(max_length)
    else:
        tok.no_truncation()
    return tok


_POOL_LOCK = threading.Lock()
_shared_pool: int | None = None  # threads of the process's one ONNX Runtime pool, once made


def _onnx_session(ort: Any, path: Path, threads: int) -> Any:
    """A CPU session on the process's one thread pool, shared by every ONNX session in it.

    A session with a pool of its own keeps its threads spinning for a while after each run;
    two such sessions used in turn (a search over two spaces embeds its query with each
    model) fight over the cores: a query took 26 to 29 ms through two engines against 5 and
    7.5 ms through each alone, and 12 ms on one shared pool (2 cores, 2026-12-03). The pool
    is sized by the first session; if ONNX Runtime refuses it, sessions get their own. Once
    it exists ONNX Runtime refuses a session with threads of its own in this process, so
    every session here is made by this function (the exports' fusions make none)."""
    global _shared_pool
    with _POOL_LOCK:
        if _shared_pool is None:
            try:
                from onnxruntime.capi import _pybind_state

                _pybind_state.set_global_thread_pool_sizes(threads, 1)
                _shared_pool = threads
            except Exception:  # an ONNX Runtime without it, or that says it is too late
                _shared_pool = 0
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if _shared_pool:
        options.use_per_session_threads = False
    else:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OnnxBackend:
    """An ONNX export of the model's pipeline on ONNX Runtime; the model's tokenizer, cut to
    its window, in front of it. No torch. With ``lean``, texts are read without the tokens
    it leaves out (passages: queries go to an engine without it)."""

    def __init__(
        self,
        onnx_path: Path,
        model_dir: Path,
        max_length: int,
        threads: int,
        lean: LeanReading | None = None,
    ) -> None:
        import onnxruntime as ort

        self.session = _onnx_session(ort, onnx_path, max(1, threads))
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.tokenizer = _tokenizer(model_dir, max_length)
        self.lean = lean
        self.large_batches = False

    def encode(self, texts: list[str]) -> np.ndarray:
        """One text per run: on the CPU that beats batches (measured here for int8: 62 texts/s
        one at a time, 50 in eights, 47 in 32s), as nothing is padded and a text's
        activations stay in cache."""
        rows = []
        for encoding in self.tokenizer.encode_batch(texts):
            ids = encoding.ids
            if self.lean is not None:
                ids = self.lean.content(ids, encoding.word_ids)
            row = np.asarray([ids], dtype=np.int64)
            columns = {
                "input_ids": row,
                "attention_mask": np.ones_like(row),
                "token_type_ids": np.zeros_like(row),
            }
            feed = {name: columns[name] for name in self.inputs}
            rows.append(self.session.run(None, feed)[0][0])
        return normalized(np.stack(rows)) if rows else np.zeros((0, 0), dtype=np.float32)


#: Function words a lean passage keeps, though queries drop them from keyword search: they
#: turn what a sentence says ("do not", "turn off", "above 40", "only root").
LEAN_KEPT_WORDS = frozenset(
    "no nor not off on up down over under out before after above below more most few only "
    "against very same other own".split()
)


@dataclass(frozen=True)
class LeanReading:
    """What a lean passage leaves out: each token that is a word by itself (``in`` of
    ``in ##vis ##ci ##d`` is not) and an English function word or a punctuation mark, but a
    mark between two numbers (``3.5``, ``192.168.0.1``, ``1-2``) stays. A text of nothing
    else is read whole. Tokens are judged by the text they decode to, so a byte-level BPE
    vocabulary's stand-in characters are not taken for marks."""

    words: frozenset[int]  # function words
    marks: frozenset[int]  # punctuation
    numbers: frozenset[int]

    @classmethod
    def of(cls, model_dir: Path) -> LeanReading:
        from resources.analysis import QUERY_STOPWORDS

        words = QUERY_STOPWORDS - LEAN_KEPT_WORDS
        tokenizer = _tokenizer(model_dir, None)
        special = {
            tokenizer.token_to_id(t.content)
            for t in tokenizer.get_added_tokens_decoder().values()
            if t.special
        }
        function, marks, numbers = set(), set(), set()
        for index in range(tokenizer.get_vocab_size()):
            if index in special:
                continue
            text = tokenizer.decode([index]).strip().removeprefix("##").strip("\u2581\u0120 ")
            if not text:
                continue
            if text.isdigit():
                numbers.add(index)
            elif text.lower() in words:
                function.add(index)
            elif all(unicodedata.category(c)[0] == "P" for c in text):
                marks.add(index)
        return cls(frozenset(function), frozenset(marks), frozenset(numbers))

    def content(self, ids: list[int], words: list[int | None]) -> list[int]:
        tokens_of = Counter(w for w in words if w is not None)
        last = len(ids) - 1
        kept = [
            token
            for n, (token, word) in enumerate(zip(ids, words, strict=True))
            if tokens_of[word] > 1  # a piece of a longer word
            or (token not in self.words and token not in self.marks)  # special tokens too
            or (
                token in self.marks
                and 0 < n < last
                and ids[n - 1] in self.numbers
                and ids[n + 1] in self.numbers
            )
        ]
        return kept if len(kept) > sum(w is None for w in words) else ids


class StaticBackend:
    """A distilled static table: a text's vector is the mean of its tokens' rows."""

    def __init__(self, table_path: Path, model_dir: Path) -> None:
        self.table = np.load(table_path)
        self.tokenizer = _tokenizer(model_dir, None)
        self.large_batches = False

    def encode(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.table.shape[1]), dtype=np.float32)
        for row, encoding in enumerate(
            self.tokenizer.encode_batch(texts, add_special_tokens=False)
        ):
            if encoding.ids:
                out[row] = self.table[encoding.ids].mean(axis=0)
        return normalized(out)


def cpu_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover (not Linux)
        return os.cpu_count() or 1


def load_backend(
    spec: EmbedderSpec,
    model_dir: Path,
    *,
    device: str,
    batch_size: int,
    cache_dir: Path,
    max_length: int,
) -> Backend:
    """The engine for ``spec``, making its derived file first when it is missing."""
    if spec.variant == "torch":
        return TorchBackend(model_dir, device, batch_size)
    path = prepare(model_dir, spec.variant, cache_dir)  # the file, made once
    if spec.variant == "static":
        return StaticBackend(path, model_dir)
    lean = LeanReading.of(model_dir) if spec.lean else None
    return OnnxBackend(path, model_dir, max_length, cpu_threads(), lean)
