"""Refusal detection in completions: the model declined the request.

Patterns look for the usual phrasings ("I'm sorry, but I can't", "I must decline", "as an
AI language model, I cannot") in the opening of the completion, because a refusal comes
first. A long reply that contains "I can't stress this enough" further down is not one.
Embedding similarity compares the completion with the project-written replies in
`controlplane/data/refusals.jsonl`: it counts as a refusal when its nearest refusal example
is at least `threshold` similar and closer than the nearest complying reply in the same file
("I'm sorry to hear that. Here are a few ways to cope").
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from controlplane.detectors.embeddings import SentenceEncoder, max_similarity, read_exemplars
from controlplane.detectors.normalize import normalize_with_offsets
from controlplane.detectors.prefilter import PatternPrefilter
from controlplane.errors import DetectorError

logger = logging.getLogger(__name__)

EXAMPLES_FILE = "refusals.jsonl"

# Characters at the start of a completion that the patterns read.
OPENING_CHARS = 300

# Lowest cosine similarity, in steps of 0.05, that meets two bounds. At most 1% of the 1,923
# GPTeacher role-play answers (MIT) count as refusals. At most 5% of the compliant replies in
# the examples file do, each compared with the file without itself. The second bound is the
# tighter one, because a reply that complies with a harmful request shares its topic with the
# refusals. Measured with the examples file as shipped; refit it when the file changes.
DEFAULT_SIMILARITY_THRESHOLD = 0.5

# "I can't", "I really can't", "I'm unable to", "I won't be able to".
_CANNOT = (
    r"\bI(?:\s+(?:really|just|simply|honestly|truly))?"
    r"(?:\s+(?:can(?:no|')?t|cannot|won'?t(?:\s+be\s+able\s+to)?|will\s+not)"
    r"|(?:\s+am|'m)\s+(?:not\s+able\s+to|unable\s+to|not\s+going\s+to))"
)
_HELP_VERBS = (
    r"(?:help(?!\s+but\b)|assist|provide|do|comply|fulfil+|support|answer|share|give|create|write|generate|tell|engage|participate"
    r"|take\s+part|go\s+along|explain|recommend|look\s+(?:it\s+|that\s+)?up|encourage|condone|discuss)"
)

# (score, pattern); the soft phrasings ("I don't think that's a good idea") score lower.
_PATTERNS: tuple[tuple[float, re.Pattern[str]], ...] = tuple(
    (score, re.compile(pattern, re.IGNORECASE))
    for score, pattern in (
        (0.95, rf"{_CANNOT}\s+(?:\w+\s+)?{_HELP_VERBS}\b"),
        (0.95, r"\bI\s+(?:must|have\s+to|need\s+to)\s+(?:respectfully\s+|politely\s+)?decline\b"),
        (0.9, rf"\bsorry,?\s+(?:but\s+)?{_CANNOT}\b|\bI'?m\s+afraid\s+{_CANNOT}\b"),
        (
            0.9,
            r"\bas\s+an?\s+(?:AI|artificial\s+intelligence|(?:AI\s+)?language\s+model|AI\s+assistant)\b[^.]{0,60}?"
            r"\b(?:can(?:no|')?t|cannot|don'?t|do\s+not|(?:am|'m)\s+not|won'?t|will\s+not)\b",
        ),
        (0.85, r"\b(?:I'?m|I\s+am)\s+not\s+(?:comfortable|willing)\b|\bI\s+(?:don'?t|do\s+not)\s+feel\s+(?:comfortable|right)\b"),
        (0.85, r"\bI'?d\s+(?:rather|prefer)\s+not\s+(?:to\s+)?(?:answer|help|say|discuss|give|get\s+into|talk)\b"),
        (
            0.85,
            r"\b(?:that'?s|that\s+is|this\s+is|it'?s|it\s+is)\s+not\s+something\s+I(?:\s+(?:can|will|should|am\s+able\s+to)|'m\s+able\s+to)\b",
        ),
        (0.85, r"\b(?:this|that|your)\s+request\s+(?:goes\s+against|violates|is\s+against)\b"),
        (
            0.8,
            r"\b(?:wouldn'?t|would\s+not)\s+be\s+(?:appropriate|responsible|ethical|right)\s+for\s+me\b"
            r"|\b(?:isn'?t|is\s+not)\s+appropriate\s+for\s+me\b",
        ),
        (0.8, rf"^\W*(?:no|nope)[,.!]\s+{_CANNOT}\b|\bI(?:'ll|\s+will)\s+have\s+to\s+pass\b"),
        (0.75, r"\bI\s+(?:don'?t|do\s+not)\s+want\s+to\s+(?:help|encourage|assist|support|be\s+(?:a\s+)?part)\b"),
        (0.75, r"\bnot\s+sure\s+(?:that'?s|that\s+is|it'?s|this\s+is)\s+something\s+I\s+should\b"),
        (0.7, r"\bI\s+(?:don'?t|do\s+not)\s+think\s+(?:I\s+(?:should|can|could)|(?:that'?s|that\s+is|it'?s|it\s+is)\s+a\s+good\s+idea)\b"),
    )
)


@lru_cache(maxsize=1)
def _prefilter() -> PatternPrefilter:
    return PatternPrefilter("refusal", [pattern for _, pattern in _PATTERNS])


@dataclass(frozen=True)
class RefusalMatch:
    """A refusal pattern match at [start, end) of the original completion."""

    start: int
    end: int
    score: float


def find_refusal(text: str) -> RefusalMatch | None:
    """Return the strongest refusal pattern match in the opening of `text`, or None."""
    if not text:
        return None
    opening = normalize_with_offsets(text[:OPENING_CHARS])
    best: RefusalMatch | None = None
    for index in _prefilter().candidates(opening.text):
        score, pattern = _PATTERNS[index]
        match = pattern.search(opening.text)
        if match and (best is None or score > best.score):
            start, end = opening.to_original(match.start(), match.end())
            best = RefusalMatch(start, end, score)
    return best


class RefusalSimilarity:
    """Nearest-example check of completion embeddings against project-written refusals and compliant replies."""

    def __init__(self, encoder: SentenceEncoder, threshold: float = DEFAULT_SIMILARITY_THRESHOLD) -> None:
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"refusal similarity threshold must be between 0 and 1 exclusive, got {threshold}")
        rows = read_exemplars(EXAMPLES_FILE)
        refusals = [row["text"] for row in rows if row["label"] == "refusal"]
        compliant = [row["text"] for row in rows if row["label"] == "compliance"]
        if not refusals or not compliant:
            raise DetectorError(f"{EXAMPLES_FILE} needs both refusal and compliance examples")
        self.threshold = threshold
        self._refusals = encoder.encode([normalize_with_offsets(text).text for text in refusals])
        self._compliant = encoder.encode([normalize_with_offsets(text).text for text in compliant])
        logger.info(
            "refusal examples embedded: %d refusals, %d compliant replies, threshold %.2f",
            len(refusals),
            len(compliant),
            threshold,
        )

    def scores(self, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Return each row's similarity to its nearest refusal example and whether that flags it."""
        refusal_similarity, _ = max_similarity(vectors, self._refusals)
        compliant_similarity, _ = max_similarity(vectors, self._compliant)
        flagged = (refusal_similarity >= self.threshold) & (refusal_similarity > compliant_similarity)
        return refusal_similarity, flagged
