"""Per-event scoring: one InferenceEvent becomes one feature row for its window."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from controlplane.detectors.safety import SafetyResult, SafetyScorer
from controlplane.events.schema import InferenceEvent
from controlplane.pricing import PriceTable


@dataclass(frozen=True)
class ScoredEvent:
    """An event with its feature row and its safety result."""

    event: InferenceEvent
    features: dict[str, Any]
    safety: SafetyResult


def feature_row(event: InferenceEvent, cost_usd: float | None, safety: SafetyResult) -> dict[str, Any]:
    """Build the feature row of one event; a value the source did not report stays None."""
    usage = event.usage
    latency = event.latency_ms
    return {
        "prompt_chars": len(event.prompt_text()),
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
    }


class EventScorer:
    """Prices and scores batches of events with the loaded detectors."""

    def __init__(self, prices: PriceTable, safety: SafetyScorer) -> None:
        self.prices = prices
        self.safety = safety

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
            scored.append(ScoredEvent(event, feature_row(event, cost, safety), safety))
        return scored
