"""Per-event scoring: one InferenceEvent becomes one feature row for its window."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Sequence

from controlplane.detectors.safety import SafetyResult, SafetyScorer
from controlplane.events.schema import InferenceEvent
from controlplane.pricing import PriceTable

TEXT_SAMPLE_CHARS = 256
"""Characters of the prompt and of the completion kept in a feature row for text drift."""


@dataclass(frozen=True)
class ScoredEvent:
    """An event with its feature row and its safety result."""

    event: InferenceEvent
    features: dict[str, Any]
    safety: SafetyResult


def sample_rank(event_id: str) -> float:
    """Map an event id to a number in [0, 1) that is the same on every machine, for deterministic sampling."""
    digest = hashlib.blake2b(event_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def text_samples(event: InferenceEvent, text_chars: int = TEXT_SAMPLE_CHARS) -> dict[str, str | None]:
    """Return the first `text_chars` characters of the prompt and of the completion, under their feature-row keys."""
    completion = event.completion
    return {
        "prompt_sample": event.prompt_text()[:text_chars] if text_chars else None,
        "completion_sample": completion[:text_chars] if text_chars and completion is not None else None,
    }


def feature_row(
    event: InferenceEvent, cost_usd: float | None, safety: SafetyResult, text_chars: int = TEXT_SAMPLE_CHARS
) -> dict[str, Any]:
    """Build the feature row of one event; a value the source did not report stays None.

    The row also keeps the first `text_chars` characters of the prompt and of the completion
    (none when 0), from which a window's text-drift sample is drawn at close.
    """
    usage = event.usage
    latency = event.latency_ms
    prompt = event.prompt_text()
    return {
        "prompt_chars": len(prompt),
        "completion_chars": len(event.completion) if event.completion is not None else None,
        "input_tokens": usage.input_tokens,
        "cached_input_tokens": usage.cached_input_tokens,
        "output_tokens": usage.output_tokens,
        "reasoning_tokens": usage.reasoning_tokens,
        # A negative duration is a clock or logging bug: keep the event, drop the number.
        "latency_ms": latency if latency is not None and latency >= 0 else None,
        "time_to_first_token_ms": event.time_to_first_token_ms,
        "finish_reason": event.finish_reason,
        "route": event.route,
        "status": event.status,
        "model_version": event.model_version,
        "cost_usd": cost_usd,
        "flagged": safety.flagged,
        "pii_count": safety.pii_count,
        "toxicity": round(safety.toxicity, 4),
        "toxic": safety.toxic,
        "feedback_score": event.feedback.score if event.feedback else None,
        "sample_rank": sample_rank(event.event_id),
        **text_samples(event, text_chars),
    }


class EventScorer:
    """Prices and scores batches of events with the loaded detectors."""

    def __init__(self, prices: PriceTable, safety: SafetyScorer, text_chars: int = TEXT_SAMPLE_CHARS) -> None:
        self.prices = prices
        self.safety = safety
        self.text_chars = text_chars

    def score(self, events: Sequence[InferenceEvent]) -> list[ScoredEvent]:
        """Score a batch; the detectors run once over the whole batch."""
        if not events:
            return []
        pairs = [(event.prompt_text(), event.completion) for event in events]
        results = self.safety.score(pairs)
        scored = []
        for event, safety in zip(events, results, strict=True):
            cost = event.cost_usd
            if cost is None:
                cost = self.prices.cost(event.model, event.usage, at=event.timestamp)
            scored.append(ScoredEvent(event, feature_row(event, cost, safety, self.text_chars), safety))
        return scored
