"""Language of sampled prompts, detected offline with lingua, as a categorical drift feature."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from functools import lru_cache

from lingua import Language, LanguageDetector, LanguageDetectorBuilder

logger = logging.getLogger(__name__)

UNKNOWN = "unknown"

# A closed set keeps detection fast and keeps rare misreadings (Latin, Esperanto) out of the
# counts. NOTE: text in a language outside the set counts as its closest kin in the set
# (Swedish as German) or as "unknown". A shift towards such a language still changes the shares.
LANGUAGES = (
    Language.ENGLISH,
    Language.CHINESE,
    Language.SPANISH,
    Language.FRENCH,
    Language.GERMAN,
    Language.PORTUGUESE,
    Language.RUSSIAN,
    Language.JAPANESE,
    Language.KOREAN,
    Language.ITALIAN,
    Language.ARABIC,
    Language.HINDI,
    Language.TURKISH,
    Language.VIETNAMESE,
    Language.INDONESIAN,
    Language.DUTCH,
    Language.POLISH,
)

MIN_CONFIDENCE = 0.5
"""Confidence of the most likely language below which a text counts as "unknown"."""


@lru_cache(maxsize=1)
def _detector() -> LanguageDetector:
    started = time.perf_counter()
    # Low-accuracy mode uses trigrams only. It is several times faster, and it loses accuracy
    # mainly on texts of a few words, which the confidence floor turns into "unknown".
    detector = LanguageDetectorBuilder.from_languages(*LANGUAGES).with_low_accuracy_mode().build()
    logger.info("language detector built for %d languages in %.2f s", len(LANGUAGES), time.perf_counter() - started)
    return detector


def detect_languages(texts: Sequence[str], min_confidence: float = MIN_CONFIDENCE) -> list[str]:
    """Return the ISO 639-1 code of each text's language, or "unknown" below `min_confidence`."""
    if not texts:
        return []
    confidences = _detector().compute_language_confidence_values_in_parallel(list(texts))
    codes = []
    for values in confidences:
        best = values[0] if values else None
        if best is None or best.value < min_confidence:
            codes.append(UNKNOWN)
        else:
            codes.append(best.language.iso_code_639_1.name.lower())
    return codes
