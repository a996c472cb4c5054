"""Fused rankings do not depend on float noise: scores closer than 1e-6 are a tie, ordered by
chunk id, so the same query embedded by two engines (or on two CPUs) ranks the same."""

from __future__ import annotations

import pytest

from alien.search import RankedChunk, convex_combination, rank_key

NOISE = 3e-8  # what two engines' float32 query vectors put between two cosines


@pytest.mark.parametrize("sign", [1, -1])
def test_scores_within_noise_rank_by_chunk_id(sign: int) -> None:
    vector = [
        RankedChunk("c-top", 0.91, "e1"),
        RankedChunk("b-twin", 0.5121045 + sign * NOISE, "e2"),  # one text in two documents
        RankedChunk("a-twin", 0.5121045, "e3"),
        RankedChunk("d-low", 0.20, "e4"),
    ]
    keyword = [RankedChunk(c.chunk_id, 3.0, c.entry_id) for c in vector[1:3]]
    fused = convex_combination([keyword, vector], [0.5, 0.5])
    assert [c.chunk_id for c in fused] == ["a-twin", "b-twin", "c-top", "d-low"]
    scores = {c.chunk_id: c.score for c in fused}
    assert scores["b-twin"] != scores["a-twin"]  # the scores themselves are kept as computed


def test_scores_apart_by_more_than_noise_keep_their_order() -> None:
    assert sorted([("a", 0.500000), ("b", 0.500002)], key=lambda p: rank_key(p[1], p[0])) == [
        ("b", 0.500002),
        ("a", 0.500000),
    ]
