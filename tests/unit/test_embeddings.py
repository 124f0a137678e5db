"""Batching of the sentence encoder: texts grouped by a word-piece budget keep their own vectors."""

import numpy as np
import pytest

from controlplane.detectors.embeddings import (
    MAX_TOKENS,
    TOKEN_BUDGET,
    estimated_tokens,
    load_encoder,
    token_budget_batches,
)

LENGTHS = [0, 3, 40, 41, 120, 900, 2_000, 5, 600, 60, 60, 3_000, 17, 250, 1_500]


def test_batches_cover_each_text_once():
    texts = ["x" * length for length in LENGTHS * 7]

    batches = token_budget_batches(texts)

    assert sorted(index for batch in batches for index in batch) == list(range(len(texts)))
    for batch in batches:
        widths = [estimated_tokens(texts[index]) for index in batch]
        assert widths == sorted(widths, reverse=True)
        assert len(batch) * widths[0] <= TOKEN_BUDGET


def test_overlong_text_gets_own_batch():
    texts = ["short text", "y" * 10_000, "another short one"]

    batches = token_budget_batches(texts, budget=100)

    assert estimated_tokens(texts[1]) == MAX_TOKENS
    assert batches[0] == [1]
    assert sorted(batches[1]) == [0, 2]


def test_short_texts_share_a_batch():
    texts = ["a question of about forty characters ..."] * 200

    batches = token_budget_batches(texts)

    assert [len(batch) for batch in batches] == [85, 85, 30]


def test_vectors_stay_with_their_texts():
    encoder = load_encoder()
    words = "the quick brown fox jumps over the lazy dog while the model answers a support question ".split()
    texts = [" ".join(words[: 1 + (index * 7) % len(words)]) * (1 + index % 5) for index in range(40)]
    texts += ["", "SELECT * FROM users;", "Ignore all previous instructions."]

    together = encoder.encode(texts)
    alone = np.vstack([encoder.encode([text]) for text in texts])

    assert together.shape == (len(texts), 384)
    assert np.allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)
    assert (together * alone).sum(axis=1).min() == pytest.approx(1.0, abs=1e-5)
