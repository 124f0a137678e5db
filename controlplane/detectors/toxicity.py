"""Offensive-language probability: alt-profanity-check on words, and a classifier on sentence embeddings.

The word model is a linear classifier over word TF-IDF features (English only), shipped
inside the `alt-profanity-check` package, so nothing is downloaded. Each text is scored
twice, normalized and then also with leetspeak folded, and the higher probability counts.
The folded variant catches spellings such as "sh1t" that the word vocabulary does not
contain. The unfolded one keeps words that folding would break.

The word model scores words, so it misses insults, threats and contempt written without
swear words ("you are a waste of oxygen"). `EmbeddingOffensiveClassifier` covers those: a
logistic regression over all-MiniLM-L6-v2 embeddings, fitted when it loads on the
project-written seed set `controlplane/data/offensive_seed.jsonl`. The safety scorer takes
the higher of the two probabilities.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Sequence
from functools import lru_cache
from types import ModuleType

import numpy as np

from controlplane.detectors.embeddings import SentenceEncoder, read_exemplars
from controlplane.detectors.normalize import fold_leetspeak, normalize
from controlplane.errors import DetectorError

logger = logging.getLogger(__name__)

SEED_FILE = "offensive_seed.jsonl"

# The seed set is balanced, but production text is mostly benign and unlike the seed
# (role-play prompts, biographies, stories), where the raw classifier sits close to 0.5.
# Its raw 0.55 is the lowest point, in steps of 0.05, at which at most 1% of the 3,846
# prompts and answers of the GPTeacher role-play set (MIT) are flagged. Its log-odds are
# shifted so that this point maps to 0.5, the word model's default threshold. Measured with
# the seed file as shipped; refit it when the file changes.
EMBEDDING_CALIBRATION_POINT = 0.55
_LOGIT_SHIFT = math.log(EMBEDDING_CALIBRATION_POINT / (1 - EMBEDDING_CALIBRATION_POINT))

# Shell code is the main source of false positives of the word model: it gives the token
# "sh" alone 0.85, so "#!/bin/sh", "du -sh" and "run.sh" score as offensive.
_SHEBANG_LINE = re.compile(r"(?m)^#!.*$")
_SHELL_SH = re.compile(r"(?<=[-./])sh\b|\bsh(?=\s+['\"]?[\w./-]+\.sh\b)")


def strip_code_tokens(text: str) -> str:
    """Remove shebang lines and shell uses of "sh" (a flag, an extension, a command) from `text`."""
    if "sh" not in text:
        return text
    return _SHELL_SH.sub("", _SHEBANG_LINE.sub("", text))


def offensive_probabilities(texts: Sequence[str]) -> list[float]:
    """Return the word model's offensive-language probability of each text, 0.0 for an empty one."""
    variants: list[str] = []
    owners: list[int] = []
    for index, text in enumerate(texts):
        if not text or text.isspace():
            continue
        normalized = normalize(strip_code_tokens(text))
        if not normalized.strip():
            continue
        folded = fold_leetspeak(normalized)
        variants.append(normalized)
        owners.append(index)
        if folded != normalized:
            variants.append(folded)
            owners.append(index)

    probabilities = [0.0] * len(texts)
    if not variants:
        return probabilities
    for owner, probability in zip(owners, _load_model().predict_prob(variants)):
        probabilities[owner] = max(probabilities[owner], float(probability))
    return probabilities


def load() -> None:
    """Load the word model now, so the first scored batch does not pay for it."""
    _load_model()


class EmbeddingOffensiveClassifier:
    """Logistic regression on sentence embeddings, fitted at load on the project-written seed set."""

    # NOTE: the classifier reads topic as well as tone. Replies that talk about insults or hurt
    # feelings score near the threshold ("I am sorry you feel that way." gets 0.67), so on
    # hh-rlhf it flags the less harmful final turns almost as often as the more harmful ones.
    # Contrasting seed examples, or sentence-level scoring calibrated on assistant replies,
    # would address it.

    def __init__(self, encoder: SentenceEncoder) -> None:
        from sklearn.linear_model import LogisticRegression

        started = time.perf_counter()
        rows = read_exemplars(SEED_FILE)
        labels = np.array([row["label"] == "offensive" for row in rows])
        if labels.all() or not labels.any():
            raise DetectorError(f"{SEED_FILE} needs both offensive and benign examples")
        vectors = encoder.encode([normalize(row["text"]) for row in rows])
        # Default regularization (C=1) and balanced class weights, so that 0.5 means even odds
        # whatever the ratio of offensive to benign seed examples is.
        self._model = LogisticRegression(C=1.0, class_weight="balanced", max_iter=2000).fit(vectors, labels)
        logger.info(
            "offensive-language embedding classifier fitted on %d seed examples (%d offensive) in %.1f s",
            len(rows),
            int(labels.sum()),
            time.perf_counter() - started,
        )

    def probabilities(self, vectors: np.ndarray) -> np.ndarray:
        """Return the offensive-language probability of each embedding row, shifted for benign-heavy traffic."""
        if len(vectors) == 0:
            return np.zeros(0)
        log_odds = self._model.decision_function(vectors) - _LOGIT_SHIFT
        return 1.0 / (1.0 + np.exp(-log_odds))


@lru_cache(maxsize=1)
def _load_model() -> ModuleType:
    try:
        import profanity_check
    except (ImportError, OSError, ValueError) as error:
        # The package loads its pickled scikit-learn model at import time.
        raise DetectorError(
            f"the offensive-language model of alt-profanity-check failed to load: {error}. "
            "Reinstall alt-profanity-check with a scikit-learn version it supports."
        ) from error
    logger.info("offensive-language model loaded from %s", profanity_check.__file__)
    return profanity_check
