"""Per-event safety scoring: personal data and offensive language in prompt and completion."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from controlplane.detectors import toxicity
from controlplane.detectors.pii import PiiDetector

logger = logging.getLogger(__name__)

FIELDS = ("prompt", "completion")


@dataclass(frozen=True)
class Span:
    """One detector finding inside the prompt or the completion of an event."""

    detector: str  # "pii" or "toxicity"
    field: str  # "prompt" or "completion"
    start: int  # offsets into the original text, and a toxicity span covers the whole text
    end: int
    label: str  # a Presidio entity type such as "EMAIL_ADDRESS", or "offensive"
    score: float


@dataclass(frozen=True)
class SafetyResult:
    """Safety findings of one event."""

    spans: tuple[Span, ...]
    toxicity: float  # max offensive-language probability over prompt and completion
    pii_count: int

    @property
    def flagged(self) -> bool:
        """Whether any detector found something."""
        return bool(self.spans)

    @property
    def toxic(self) -> bool:
        """Whether the prompt or the completion reached the toxicity threshold."""
        return any(span.detector == "toxicity" for span in self.spans)

    @property
    def has_pii(self) -> bool:
        """Whether the prompt or the completion contains personal data."""
        return self.pii_count > 0

    def to_json(self) -> list[dict]:
        """Return the spans as plain dicts for a JSON column."""
        return [asdict(span) for span in self.spans]


class SafetyScorer:
    """Scorer of (prompt, completion) pairs for personal data and offensive language."""

    def __init__(self, toxicity_threshold: float = 0.5) -> None:
        if not 0.0 < toxicity_threshold < 1.0:
            raise ValueError(f"toxicity_threshold must be between 0 and 1 exclusive, got {toxicity_threshold}")
        self.toxicity_threshold = toxicity_threshold
        started = time.perf_counter()
        self._pii = PiiDetector()
        toxicity.load()
        logger.info(
            "safety scorer ready: PII entities %s, toxicity threshold %.2f, loaded in %.1f s",
            ",".join(self._pii.entities),
            toxicity_threshold,
            time.perf_counter() - started,
        )

    def score(self, pairs: Sequence[tuple[str, str | None]]) -> list[SafetyResult]:
        """Score each (prompt, completion) pair, counting a None completion as empty."""
        started = time.perf_counter()
        texts: list[str] = []
        for prompt, completion in pairs:
            texts.extend((prompt or "", completion or ""))
        probabilities = toxicity.offensive_probabilities(texts)
        results = [
            self._result(texts[2 * index : 2 * index + 2], probabilities[2 * index : 2 * index + 2])
            for index in range(len(pairs))
        ]
        logger.debug("scored %d pairs in %.3f s", len(pairs), time.perf_counter() - started)
        return results

    def _result(self, texts: list[str], probabilities: list[float]) -> SafetyResult:
        spans: list[Span] = []
        for field, text, probability in zip(FIELDS, texts, probabilities):
            for match in self._pii.find(text):
                spans.append(Span("pii", field, match.start, match.end, match.entity_type, match.score))
            if probability >= self.toxicity_threshold:
                spans.append(Span("toxicity", field, 0, len(text), "offensive", probability))
        pii_count = sum(1 for span in spans if span.detector == "pii")
        return SafetyResult(tuple(spans), max(probabilities), pii_count)
