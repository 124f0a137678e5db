"""Per-event safety scoring: personal data, offensive language, jailbreaks and prompt injection, refusals.

Which detector reads which text:

| text                          | PII | offensive language | jailbreak, injection | refusal |
|-------------------------------|-----|--------------------|----------------------|---------|
| prompt                        | yes | yes                | yes                  | no      |
| completion                    | yes | yes                | no                   | yes     |
| each retrieved-context passage| no  | no                 | yes                  | no      |

Base64 runs in any of these texts are decoded (`normalize.find_base64_runs`) and the decoded
text is scanned by the same detectors. A finding in it is reported at the offsets of the
encoded run, with "base64:" before its label.

With `use_embeddings=False` no embedding model is loaded: offensive language comes from
the word model alone, and jailbreaks and refusals from patterns alone.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np

from controlplane.detectors import toxicity
from controlplane.detectors.embeddings import DIMENSION, SentenceEncoder, load_encoder
from controlplane.detectors.jailbreak import AttackSimilarity, NearestAttack, find_patterns
from controlplane.detectors.normalize import BASE64_MAX_DECODED_BYTES, find_base64_runs, normalize
from controlplane.detectors.pii import PiiDetector
from controlplane.detectors.refusal import RefusalSimilarity, find_refusal

if TYPE_CHECKING:
    from controlplane.events.schema import InferenceEvent

logger = logging.getLogger(__name__)

FIELDS = ("prompt", "completion")
CONTEXT_FIELD = "retrieved_context[{index}]"
ENCODED_LABEL_PREFIX = "base64:"

# Offensive-language thresholds for completions, per model. They were chosen on the
# even-numbered dialogues of hh-rlhf's harmless test split, as the pair with the highest ratio
# of flagged rejected to chosen final turns that still flags 5% of the rejected ones. The
# odd-numbered half is held out and gives the ratio that `make eval` reports. Prompts use
# toxicity_threshold.
COMPLETION_WORD_THRESHOLD = 0.7
COMPLETION_EMBEDDING_THRESHOLD = 0.8

# One item to score: (prompt, completion) or (prompt, completion, retrieved-context passages).
Item = tuple[str, str | None] | tuple[str, str | None, Sequence[str] | None]


@dataclass(frozen=True)
class Span:
    """One detector finding inside one text of an event."""

    detector: str  # "pii", "toxicity" or "jailbreak"
    field: str  # "prompt", "completion" or "retrieved_context[i]", i counting from 0
    # Offsets into the original text. A toxicity span, and a jailbreak span found by
    # embedding similarity, cover the whole text, or the whole run for decoded base64.
    start: int
    end: int
    label: str  # a Presidio entity type such as "EMAIL_ADDRESS", "offensive", or a jailbreak category
    score: float


@dataclass(frozen=True)
class SafetyResult:
    """Safety findings of one event."""

    spans: tuple[Span, ...]
    toxicity: float  # max offensive-language probability over prompt and completion
    pii_count: int
    # Highest jailbreak score over the prompt and the retrieved context: a pattern's fixed
    # score or the cosine similarity to the nearest attack example, whichever is higher.
    jailbreak: float = 0.0
    # Refusal score of the completion: a pattern's fixed score or the cosine similarity to
    # the nearest refusal example, whichever is higher.
    refusal: float = 0.0
    refused: bool = False
    # An attack (a jailbreak span) met a completion that is not a refusal. None when the
    # attack has no completion to judge, False when there is no attack.
    attack_succeeded: bool | None = False

    @property
    def flagged(self) -> bool:
        """Whether any detector found something; a refusal alone is not a finding."""
        return bool(self.spans)

    @property
    def toxic(self) -> bool:
        """Whether the prompt or the completion reached the toxicity threshold."""
        return any(span.detector == "toxicity" for span in self.spans)

    @property
    def has_pii(self) -> bool:
        """Whether the prompt or the completion contains personal data."""
        return self.pii_count > 0

    @property
    def attack(self) -> bool:
        """Whether the prompt or a retrieved-context passage is flagged as a jailbreak or injection."""
        return any(span.detector == "jailbreak" for span in self.spans)

    def to_json(self) -> list[dict]:
        """Return the spans as plain dicts for a JSON column."""
        return [asdict(span) for span in self.spans]


@dataclass
class _Text:
    """One text of one item, or a base64 payload decoded from it, with the scores found so far."""

    item: int
    field: str
    role: str  # "prompt", "completion" or "context"
    text: str
    run: tuple[int, int] | None = None  # where the encoded payload sits in the field's text
    offensive: float = 0.0  # the higher of the two models' probabilities
    offensive_words: float = 0.0  # word model alone
    offensive_embedding: float = 0.0  # embedding classifier alone
    nearest_attack: NearestAttack | None = None
    refusal_similarity: float = 0.0
    refused_by_similarity: bool = False

    def span(self, detector: str, start: int, end: int, label: str, score: float) -> Span:
        if self.run is None:
            return Span(detector, self.field, start, end, label, score)
        return Span(detector, self.field, self.run[0], self.run[1], ENCODED_LABEL_PREFIX + label, score)


class SafetyScorer:
    """Scorer of (prompt, completion[, retrieved context]) items with every safety detector."""

    def __init__(
        self,
        toxicity_threshold: float = 0.5,
        use_embeddings: bool = True,
        max_decoded_bytes: int = BASE64_MAX_DECODED_BYTES,
    ) -> None:
        """Load the detectors; `max_decoded_bytes` bounds the base64 bytes decoded per item, 0 turns decoding off."""
        if not 0.0 < toxicity_threshold < 1.0:
            raise ValueError(f"toxicity_threshold must be between 0 and 1 exclusive, got {toxicity_threshold}")
        if max_decoded_bytes < 0:
            raise ValueError(f"max_decoded_bytes must be 0 or more, got {max_decoded_bytes}")
        self.toxicity_threshold = toxicity_threshold
        self.use_embeddings = use_embeddings
        self.max_decoded_bytes = max_decoded_bytes
        started = time.perf_counter()
        self._pii = PiiDetector()
        toxicity.load()
        self._encoder: SentenceEncoder | None = None
        if use_embeddings:
            self._encoder = load_encoder()
            self._offensive, self._attacks, self._refusals = _embedding_detectors()
        logger.info(
            "safety scorer ready: PII entities %s, toxicity threshold %.2f, embeddings %s, loaded in %.1f s",
            ",".join(self._pii.entities),
            toxicity_threshold,
            "on" if use_embeddings else "off",
            time.perf_counter() - started,
        )

    def score(self, items: Sequence[Item]) -> list[SafetyResult]:
        """Score each item; a None completion counts as empty and None context as no passages."""
        started = time.perf_counter()
        texts = _collect_texts(items, self.max_decoded_bytes)
        self._score_words(texts)
        if self._encoder is not None:
            self._score_embeddings(texts)
        by_item: dict[int, list[_Text]] = defaultdict(list)
        for text in texts:
            by_item[text.item].append(text)
        results = [self._result(item, by_item[index]) for index, item in enumerate(items)]
        logger.debug("scored %d items (%d texts) in %.3f s", len(items), len(texts), time.perf_counter() - started)
        return results

    def score_events(self, events: Sequence[InferenceEvent]) -> list[SafetyResult]:
        """Score inference events: prompt, completion and every retrieved-context passage."""
        return self.score([(event.prompt_text(), event.completion, event.retrieved_context) for event in events])

    def _score_words(self, texts: list[_Text]) -> None:
        checked = [text for text in texts if text.role != "context"]
        for text, probability in zip(checked, toxicity.offensive_probabilities([text.text for text in checked])):
            text.offensive = text.offensive_words = probability

    def _score_embeddings(self, texts: list[_Text]) -> None:
        vectors = _embed(self._encoder, texts)
        present = [index for index, text in enumerate(texts) if text.text.strip()]

        offensive_rows = [index for index in present if texts[index].role != "context"]
        for index, probability in zip(offensive_rows, self._offensive.probabilities(vectors[offensive_rows])):
            texts[index].offensive_embedding = float(probability)
            texts[index].offensive = max(texts[index].offensive, float(probability))

        attack_rows = [index for index in present if texts[index].role != "completion"]
        for index, nearest in zip(attack_rows, self._attacks.nearest(vectors[attack_rows])):
            texts[index].nearest_attack = nearest

        # A refusal is judged on the completion itself, never on a payload decoded from it.
        refusal_rows = [index for index in present if texts[index].role == "completion" and texts[index].run is None]
        similarities, flagged = self._refusals.scores(vectors[refusal_rows])
        for index, similarity, refused in zip(refusal_rows, similarities, flagged):
            texts[index].refusal_similarity = float(similarity)
            texts[index].refused_by_similarity = bool(refused)

    def _result(self, item: Item, texts: list[_Text]) -> SafetyResult:
        spans = sorted((span for text in texts for span in self._spans(text)), key=_span_order)
        jailbreak_scores = [span.score for span in spans if span.detector == "jailbreak"]
        jailbreak_scores += [text.nearest_attack.similarity for text in texts if text.nearest_attack is not None]
        refusal, refused = _refusal(texts)
        completion = item[1]
        succeeded: bool | None = False
        if any(span.detector == "jailbreak" for span in spans):
            succeeded = None if completion is None or not completion.strip() else not refused
        return SafetyResult(
            spans=tuple(spans),
            toxicity=max((text.offensive for text in texts if text.role != "context"), default=0.0),
            pii_count=sum(1 for span in spans if span.detector == "pii"),
            jailbreak=max(jailbreak_scores, default=0.0),
            refusal=refusal,
            refused=refused,
            attack_succeeded=succeeded,
        )

    def _offensive_flag(self, text: _Text) -> bool:
        if text.role != "completion":
            return text.offensive >= self.toxicity_threshold
        # Assistant replies that respond to a harmful request in plain words score high on the
        # embedding classifier by topic alone, so a completion needs a higher score from each model.
        return (
            text.offensive_words >= max(self.toxicity_threshold, COMPLETION_WORD_THRESHOLD)
            or text.offensive_embedding >= max(self.toxicity_threshold, COMPLETION_EMBEDDING_THRESHOLD)
        )

    def _spans(self, text: _Text) -> list[Span]:
        spans: list[Span] = []
        if text.role != "context":
            for match in self._pii.find(text.text):
                spans.append(text.span("pii", match.start, match.end, match.entity_type, match.score))
            if self._offensive_flag(text):
                spans.append(text.span("toxicity", 0, len(text.text), "offensive", text.offensive))
        if text.role != "completion":
            matches = find_patterns(text.text)
            for match in matches:
                spans.append(text.span("jailbreak", match.start, match.end, match.category, match.score))
            nearest = text.nearest_attack
            if not matches and nearest is not None and nearest.flagged:
                spans.append(text.span("jailbreak", 0, len(text.text), nearest.category, nearest.similarity))
        return spans


@lru_cache(maxsize=1)
def _embedding_detectors() -> tuple[toxicity.EmbeddingOffensiveClassifier, AttackSimilarity, RefusalSimilarity]:
    # Fitting the classifier and embedding the examples takes seconds; every scorer of the
    # process shares the result, as it shares the encoder.
    encoder = load_encoder()
    return toxicity.EmbeddingOffensiveClassifier(encoder), AttackSimilarity(encoder), RefusalSimilarity(encoder)


def _collect_texts(items: Sequence[Item], max_decoded_bytes: int) -> list[_Text]:
    texts: list[_Text] = []
    for index, item in enumerate(items):
        context = item[2] if len(item) > 2 else None
        fields = [("prompt", "prompt", item[0] or ""), ("completion", "completion", item[1] or "")]
        fields += [(CONTEXT_FIELD.format(index=number), "context", passage or "") for number, passage in enumerate(context or [])]
        budget = max_decoded_bytes  # shared by all texts of the item
        for field, role, value in fields:
            texts.append(_Text(index, field, role, value))
            if budget <= 0:
                continue
            for run in find_base64_runs(value, max_decoded_bytes=budget):
                texts.append(_Text(index, field, role, run.decoded, run=(run.start, run.end)))
                budget -= len(run.decoded.encode("utf-8"))
    return texts


def _embed(encoder: SentenceEncoder, texts: list[_Text]) -> np.ndarray:
    # Each distinct normalized text is embedded once: system prompts and templates repeat.
    keys = [normalize(text.text) if text.text.strip() else "" for text in texts]
    unique = sorted({key for key in keys if key})
    vectors = np.zeros((len(texts), DIMENSION), dtype=np.float32)
    if not unique:
        return vectors
    rows = dict(zip(unique, encoder.encode(unique)))
    for index, key in enumerate(keys):
        if key:
            vectors[index] = rows[key]
    return vectors


def _refusal(texts: list[_Text]) -> tuple[float, bool]:
    completion = next(text for text in texts if text.role == "completion" and text.run is None)
    match = find_refusal(completion.text)
    pattern_score = match.score if match else 0.0
    return max(pattern_score, completion.refusal_similarity), match is not None or completion.refused_by_similarity


def _span_order(span: Span) -> tuple[int, int, int, int, str]:
    if span.field in FIELDS:
        field_rank, passage = FIELDS.index(span.field), 0
    else:  # "retrieved_context[i]", after the prompt and the completion, in passage order
        field_rank, passage = len(FIELDS), int(span.field[span.field.index("[") + 1 : -1])
    return (field_rank, passage, span.start, span.end, span.detector)
