"""The engines that run the packaged model: each gives unit vectors of its dimension; the ONNX
export gives torch's vectors without torch; int8, lean passages and the static table stay
close enough to rank related text first. Their speed and retrieval quality are measured in
``bench/embedders.py`` and ``alien eval``, not asserted here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from resources.embedder import Embedder, resolve_model_path
from resources.embedding_backends import (
    STATIC_DIMENSIONS,
    EmbedderSpec,
    EmbedderSpecError,
    OnnxBackend,
    derived_file,
    prepare,
)
from tests.conftest import MODELS_DIR, REPO

TEXTS = [
    "The boundary layer on a flat plate thickens downstream as the flow slows near the wall.",
    "Heat transfer to a blunt body in hypersonic flow depends on the nose radius. " * 30,
    "x",
    "Die Grenzschicht an einer ebenen Platte wird stromabwärts dicker.",
    "Preheat the oven, then bake the bread for forty minutes until the crust is brown.",
]


@pytest.fixture(scope="module")
def torch_vectors() -> np.ndarray:
    return Embedder(worker=False, models_dir=MODELS_DIR).embed(TEXTS)


def test_a_spec_names_a_model_and_the_variant_that_runs_it(tmp_path: Path) -> None:
    assert EmbedderSpec.parse("all-MiniLM-L6-v2") == EmbedderSpec("all-MiniLM-L6-v2", "torch")
    assert EmbedderSpec.parse("all-MiniLM-L6-v2@onnx-int8").variant == "onnx-int8"
    assert str(EmbedderSpec.parse("all-MiniLM-L6-v2@torch")) == "all-MiniLM-L6-v2"
    odd = tmp_path / "team@site" / "model"  # an "@" inside a directory is no variant
    assert EmbedderSpec.parse(str(odd)).model == str(odd)
    with pytest.raises(EmbedderSpecError, match="unknown embedding variant 'fp8'"):
        EmbedderSpec.parse("all-MiniLM-L6-v2@fp8")
    # the engines of the model's own weights are one family (comparable cosines); a static
    # table, lean passages, or another model, are not
    families = {s: EmbedderSpec.parse(s).family for s in (
        "all-MiniLM-L6-v2", "all-MiniLM-L6-v2@onnx", "all-MiniLM-L6-v2@onnx-int8",
        "all-MiniLM-L6-v2@onnx-int8-lean", "all-MiniLM-L6-v2@static", "/models/other")}  # fmt: skip
    assert len(set(families.values())) == 4
    assert families["all-MiniLM-L6-v2@onnx-int8"] == families["all-MiniLM-L6-v2"]


def test_the_onnx_export_gives_the_torch_vectors(torch_vectors: np.ndarray) -> None:
    onnx = Embedder("all-MiniLM-L6-v2@onnx", worker=False, models_dir=MODELS_DIR)
    vectors = onnx.embed(TEXTS)  # texts of very different lengths: padding and truncation
    assert vectors.shape == torch_vectors.shape == (len(TEXTS), 384)
    assert np.abs(vectors - torch_vectors).max() < 1e-4
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_every_onnx_session_of_a_process_runs_on_one_thread_pool(
    torch_vectors: np.ndarray,
) -> None:
    """Two engines used in turn (a search over two spaces) share the process's pool rather
    than each keeping threads of its own spinning; where ONNX Runtime refuses the shared
    pool, each session gets its own threads and the same vectors."""
    model_dir = resolve_model_path("all-MiniLM-L6-v2")
    paths = [prepare(model_dir, variant, MODELS_DIR) for variant in ("onnx", "onnx-int8")]
    float32, int8 = (OnnxBackend(path, model_dir, 256, threads=2) for path in paths)
    for engine in (float32, int8):
        options = engine.session.get_session_options()
        assert not options.use_per_session_threads
    assert np.abs(float32.encode(TEXTS) - torch_vectors).max() < 1e-4
    refused = (
        "import sys; from pathlib import Path\n"
        "from onnxruntime.capi import _pybind_state\n"
        "def refuse(*args): raise RuntimeError('too late')\n"
        "_pybind_state.set_global_thread_pool_sizes = refuse\n"
        "from resources.embedding_backends import OnnxBackend\n"
        f"engine = OnnxBackend(Path({str(paths[0])!r}), Path({str(model_dir)!r}), 256, 2)\n"
        "options = engine.session.get_session_options()\n"
        "assert options.use_per_session_threads and options.intra_op_num_threads == 2\n"
        f"sys.stdout.buffer.write(engine.encode({TEXTS!r}).tobytes())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", refused], cwd=REPO, capture_output=True, check=True, timeout=120
    ).stdout
    alone = np.frombuffer(out, dtype=np.float32).reshape(torch_vectors.shape)
    assert np.abs(alone - torch_vectors).max() < 1e-4


@pytest.mark.timeout(300)
def test_int8_vectors_stay_close_to_the_model_s(torch_vectors: np.ndarray, tmp_path: Path) -> None:
    """Made from nothing: the float export first, then its quantization."""
    int8 = Embedder("all-MiniLM-L6-v2@onnx-int8", worker=False, models_dir=tmp_path)
    vectors = int8.embed(TEXTS)
    cosine = (vectors * torch_vectors).sum(axis=1)
    assert cosine.min() > 0.95, cosine
    # fused by ONNX Runtime's optimizer, also in a process whose sessions share one pool
    export = onnx.load(str(derived_file(tmp_path, int8.model_dir, "onnx")))
    assert "Attention" in {node.op_type for node in export.graph.node}
    assert derived_file(tmp_path, int8.model_dir, "onnx-int8").stat().st_size < (
        derived_file(tmp_path, int8.model_dir, "onnx").stat().st_size / 3
    )


@pytest.mark.timeout(300)
def test_lean_passages_are_read_without_function_words_and_punctuation(tmp_path: Path) -> None:
    """The lean variant runs the int8 export on a passage's content: its vector is the int8
    vector of the passage with its function words and marks left out, word for word.
    Queries are read whole, by the int8 engine, also before its file exists and with the
    query engine turned off (the lean engine would read them lean)."""
    query = "what is the flow near the wall of an inlet"
    lean = Embedder("all-MiniLM-L6-v2@onnx-int8-lean", worker=False, models_dir=tmp_path)
    first = lean.embed_query([query])  # nothing made yet: the int8 export is made for it
    int8 = Embedder("all-MiniLM-L6-v2@onnx-int8", worker=False, models_dir=tmp_path)
    assert np.abs(first - int8.embed_query([query])).max() < 1e-6
    passages = [
        # "inviscid" is read as "in ##vis ##ci ##d": its "in" is no word of its own, and stays
        "The inviscid flow, near the wall of an inlet, slows (see Fig. 3).",
        "Set it to /etc/apt/sources.list -- and then run it!",
        # negations and particles stay, as do the marks of a number
        "Do not turn off the valve above 3.5 bar.",
        "of the and",  # nothing but function words: read whole
        "...",
    ]
    content = [
        "inviscid flow near wall inlet slows see fig 3",
        "set etc apt sources list run",
        "not turn off valve above 3.5 bar",
        *passages[3:],
    ]
    vectors = lean.embed(passages)
    assert np.abs(vectors - int8.embed(content)).max() < 1e-5
    assert (lean.embed([query])[0] @ first[0]) < 0.999  # a passage is read lean
    off = Embedder(
        "all-MiniLM-L6-v2@onnx-int8-lean", worker=False, models_dir=tmp_path, query_engine=False
    )
    assert np.abs(off.embed_query([query]) - first).max() < 1e-6
    assert lean.dimension == 384
    # and the lean vectors still rank related text first
    ranked = lean.embed(TEXTS) @ lean.embed_query(["how thick is the boundary layer on a plate"])[0]
    assert ranked.argmax() == 0, ranked
    assert ranked[0] > ranked[4] + 0.1


def test_the_static_table_ranks_related_text_first() -> None:
    static = Embedder("all-MiniLM-L6-v2@static", worker=False, models_dir=MODELS_DIR)
    assert static.dimension == STATIC_DIMENSIONS
    vectors = static.embed(TEXTS)
    assert vectors.shape == (len(TEXTS), STATIC_DIMENSIONS)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    [query] = static.embed_query(["how thick is the boundary layer of the flow on a plate"])
    scores = vectors @ query
    assert scores.argmax() == 0, scores
    assert scores[0] > scores[4] + 0.1  # the bread recipe is far


def test_queries_are_embedded_without_torch_once_the_export_exists(
    torch_vectors: np.ndarray,
) -> None:
    Embedder(worker=False, models_dir=MODELS_DIR).embed(["made while the model is loaded"])
    probe = (
        "import sys; from pathlib import Path; import numpy as np\n"
        "from resources.embedder import Embedder\n"
        f"e = Embedder(models_dir=Path({str(MODELS_DIR)!r}))\n"
        f"v = e.embed_query({TEXTS[:1]!r})\n"
        "assert 'torch' not in sys.modules and e.worker_pid is None, 'torch was loaded'\n"
        "sys.stdout.buffer.write(v.astype(np.float32).tobytes())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, check=True, timeout=120
    ).stdout
    vector = np.frombuffer(out, dtype=np.float32)
    assert np.abs(vector - torch_vectors[0]).max() < 1e-4
