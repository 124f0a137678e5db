"""Offensive-language probability with alt-profanity-check, after normalization.

The model is a linear classifier over word TF-IDF features (English only), shipped inside
the `alt-profanity-check` package, so nothing is downloaded. Each text is scored twice,
normalized and then also with leetspeak folded, and the higher probability counts. The
folded variant catches spellings such as "sh1t" that the word vocabulary does not contain.
The unfolded one keeps words that folding would break.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import lru_cache
from types import ModuleType

from controlplane.detectors.normalize import fold_leetspeak, normalize
from controlplane.errors import DetectorError

logger = logging.getLogger(__name__)


def offensive_probabilities(texts: Sequence[str]) -> list[float]:
    """Return the offensive-language probability of each text, 0.0 for an empty one."""
    variants: list[str] = []
    owners: list[int] = []
    for index, text in enumerate(texts):
        if not text or text.isspace():
            continue
        normalized = normalize(text)
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
    """Load the classifier now, so the first scored batch does not pay for it."""
    _load_model()


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
