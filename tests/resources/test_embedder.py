"""The embedder: the real model in this process, in a worker process, and loaded ahead of use."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from resources.embedder import Embedder
from resources.embedding_worker import EmbeddingWorkerError
from tests.conftest import REPO

TEXTS = [
    "The boundary layer separates from the wing at high angles of attack.",
    "Debian Live images boot from a USB stick.",
    "",
    "camlidl generates stubs for COM interfaces " * 40,  # longer than the model's window
]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped by its parent) counts as gone
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split(") ", 1)[1][0] != "Z"


@pytest.fixture(scope="module")
def in_process() -> Embedder:
    embedder = Embedder(worker=False)
    embedder.embed(["warm up"])
    return embedder


def test_worker_gives_the_in_process_vectors(in_process: Embedder) -> None:
    embedder = Embedder(worker=True)
    embedder.preload()
    pid = embedder.worker_pid
    assert pid is not None and _alive(pid)
    vectors = embedder.embed(TEXTS)
    # the model ran in the worker: this embedder never loaded it here
    assert not embedder.loaded
    expected = in_process.embed(TEXTS)
    assert vectors.dtype == np.float32 and vectors.shape == (len(TEXTS), 384)
    np.testing.assert_allclose(vectors, expected, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert embedder.embed([]).shape == (0, 384)
    # a second preload is a no-op: still the same worker
    embedder.preload()
    assert embedder.worker_pid == pid
    assert embedder._worker is not None
    embedder._worker.close()
    assert not _alive(pid)


def test_preload_in_process_keeps_the_model_here(in_process: Embedder) -> None:
    embedder = Embedder(worker=True)
    embedder.preload(in_process=True)
    assert embedder.worker_pid is None
    np.testing.assert_allclose(embedder.embed(TEXTS[:2]), in_process.embed(TEXTS[:2]), atol=1e-6)
    assert embedder.loaded
    # once the model is here, a later preload starts no worker (the API server's case)
    embedder.preload()
    assert embedder.worker_pid is None


def test_worker_reports_a_model_that_cannot_load(tmp_path) -> None:
    embedder = Embedder(model=str(tmp_path / "no-such-model"), worker=True)
    embedder.preload()
    with pytest.raises(EmbeddingWorkerError, match=r"no-such-model.*never downloaded"):
        embedder.embed(["text"])


def test_worker_dies_with_its_parent() -> None:
    """A parent killed with SIGKILL (say, mid-ingest) leaves no worker behind."""
    script = textwrap.dedent(
        """
        import sys, time
        from resources.embedder import Embedder
        e = Embedder(worker=True)
        e.preload()
        print(e.worker_pid, flush=True)
        time.sleep(120)
        """
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    assert parent.stdout is not None
    pid = int(parent.stdout.readline())
    assert _alive(pid)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(pid)


def test_a_worker_outlives_the_thread_that_started_it() -> None:
    """A CLI run's thread (or an API worker's) starts the worker and ends: the worker stays
    (``PR_SET_PDEATHSIG`` would have killed it with that thread)."""
    import threading

    embedder = Embedder(worker=True)
    starter = threading.Thread(target=embedder.preload)
    starter.start()
    starter.join()
    pid = embedder.worker_pid
    assert pid is not None
    time.sleep(1.5)  # three of the child's watch intervals
    assert _alive(pid)
    assert embedder.embed(["still here"]).shape == (1, embedder.dimension)
    assert embedder.worker_pid == pid  # the same worker answered


def test_a_dead_worker_fails_the_call_and_the_next_call_runs_here(in_process: Embedder) -> None:
    embedder = Embedder(worker=True)
    embedder.preload()
    pid = embedder.worker_pid
    assert pid is not None
    embedder.embed(["load first"])
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(EmbeddingWorkerError, match="exited"):
        embedder.embed(TEXTS)
    assert embedder.worker_pid is None
    np.testing.assert_allclose(embedder.embed(TEXTS), in_process.embed(TEXTS), atol=1e-6)
    assert embedder.loaded


def test_batches_in_any_order_give_the_vectors_of_one_call(in_process: Embedder) -> None:
    """Texts go to the model a batch at a time, longest first; the answer keeps their order."""
    texts = [f"{'wing ' * (i % 7)}flutter test number {i}" for i in range(11)]
    whole = in_process._model.encode(texts)  # one call
    done: list[int] = []
    small = Embedder(worker=False, batch_size=3)
    small._loaded = in_process._model  # the same weights, smaller batches
    vectors = small.embed(texts, on_batch=done.append)
    assert done == [3, 6, 9, 11]
    assert np.allclose(vectors, whole, atol=1e-5)


def test_a_text_given_twice_is_embedded_once(in_process: Embedder) -> None:
    """Copies of one text (a header repeated across documents) get one vector, the very same
    bits, and the model sees the text once; progress counts every copy."""
    header = "Debian Live Manual, chapter 4: customizing package installation"
    texts = [header, "wing flutter at transonic speed", header, "", header, ""]
    seen: list[list[str]] = []
    small = Embedder(worker=False, batch_size=2)
    small._loaded = in_process._model

    def encode(batch: list[str]) -> np.ndarray:
        seen.append(batch)
        return in_process._model.encode(batch)

    small._embed_batch = encode  # type: ignore[method-assign]
    done: list[int] = []
    vectors = small.embed(texts, on_batch=done.append)
    assert sorted(t for batch in seen for t in batch) == sorted(set(texts))
    assert done == [4, 6]  # the header's three copies and the text; then both empty ones
    assert np.array_equal(vectors[0], vectors[2]) and np.array_equal(vectors[0], vectors[4])
    assert np.array_equal(vectors[3], vectors[5])
    assert np.allclose(vectors, in_process._model.encode(texts), atol=1e-5)


def test_on_batch_may_stop_the_call(in_process: Embedder) -> None:
    class Stop(Exception):
        pass

    def stop_after_two(count: int) -> None:
        if count >= 2:
            raise Stop

    small = Embedder(worker=False, batch_size=1)
    small._loaded = in_process._model
    seen: list[int] = []
    with pytest.raises(Stop):
        small.embed(["a", "b", "c", "d"], on_batch=lambda n: (seen.append(n), stop_after_two(n)))
    assert seen == [1, 2]


def test_fair_turns_interleave_callers_and_let_urgent_ones_first() -> None:
    """A caller with many batches goes back in line after each: a caller that arrives with
    one batch waits for one turn, not for all of the first caller's."""
    import threading

    from resources.embedder import FairTurns

    turns = FairTurns()
    order: list[str] = []
    first_started = threading.Event()

    def caller(name: str, batches: int, urgent: bool = False) -> None:
        for _ in range(batches):
            with turns.turn(urgent):
                order.append(name)
                first_started.set()
                time.sleep(0.05)

    big = threading.Thread(target=caller, args=("big", 6))
    big.start()
    first_started.wait(5)
    small = threading.Thread(target=caller, args=("small", 1))
    small.start()
    time.sleep(0.02)
    query = threading.Thread(target=caller, args=("query", 1, True))
    query.start()
    for thread in (big, small, query):
        thread.join(10)
    assert order.count("big") == 6
    # the urgent query jumps the line; the small caller is served within two of big's turns
    assert order.index("query") <= 2
    assert order.index("small") <= 3
    assert order[-1] == "big"
