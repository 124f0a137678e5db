"""The stream worker's unit of work, free of Faust: decode, score, store, close windows."""

from __future__ import annotations

import logging
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Sequence

from sqlalchemy import Engine, select

from controlplane.detectors.safety import SafetyScorer
from controlplane.detectors.text_drift import TEXT_FIELDS, Encoder, has_text, pack_vector, text_key, vector_key
from controlplane.errors import DetectorError, EventValidationError
from controlplane.events.decode import decode_message
from controlplane.events.schema import InferenceEvent
from controlplane.features import EventScorer, ScoredEvent, sample_rank, text_samples
from controlplane.pricing import PriceTable
from controlplane.settings import Settings
from controlplane.store.models import ConsumerOffset
from controlplane.store.sink import ClosedWindow, IngestResult, Record, Rejected, WindowSink
from controlplane.windows import window_start

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RawMessage:
    """A consumed Kafka message."""

    partition: int
    offset: int
    value: bytes | None
    key: bytes | None = None
    headers: tuple[tuple[str, bytes], ...] = ()


@dataclass(frozen=True)
class DeadLetterMessage:
    """A rejected message, ready for inference.events.dlq."""

    message: RawMessage
    reason: str


class Pipeline:
    """Decodes and scores batches, and stores them through the sink."""

    def __init__(self, engine: Engine, settings: Settings, topic: str, encoder: Encoder | None = None) -> None:
        self.engine = engine
        self.settings = settings
        self.topic = topic
        safety = SafetyScorer(toxicity_threshold=settings.toxicity_threshold, use_embeddings=settings.safety_embeddings)
        self.scorer = EventScorer(PriceTable.load(settings.price_table), safety, text_chars=settings.text_sample_chars)
        self.sink = WindowSink(engine, settings, topic, encoder)
        # Without text drift there is no sample, so the per-event cutoff is not even computed.
        self._embed_ahead = self.sink.checks.text_drift
        # The newest window seen per (app, model) and its events so far, for the ingest-time sample cutoff.
        self._window_rows: dict[tuple[str, str], tuple[datetime, int]] = {}
        self._embedder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sample-embedding")

    def prepare(self, messages: Sequence[RawMessage]) -> tuple[list[Record], list[DeadLetterMessage]]:
        """Decode and score a batch; messages already stored (below the stored offsets) are dropped."""
        messages = self._unseen(messages)
        decoded: list[tuple[RawMessage, int, InferenceEvent]] = []
        records, dead = [], []
        for message in messages:
            try:
                events = decode_message(message.value, message.headers, max_text_chars=self.settings.max_text_chars)
            except EventValidationError as exc:
                size = len(message.value) if message.value is not None else 0
                records.append(Record(message.partition, message.offset, Rejected(exc.reason, size)))
                dead.append(DeadLetterMessage(message, exc.reason))
                continue
            # One OTLP export can carry several spans: each event keeps its position in the message.
            decoded.extend((message, sequence, event) for sequence, event in enumerate(events))
        events = [event for _, _, event in decoded]
        pending = self._embed_sample_ahead(events)
        scored = self.scorer.score(events)
        self._attach_vectors(scored, pending)
        for (message, sequence, _), item in zip(decoded, scored, strict=True):
            records.append(Record(message.partition, message.offset, item, sequence))
        return records, dead

    def _embed_sample_ahead(self, events: Sequence[InferenceEvent]) -> Future[list[tuple[int, str, str]]] | None:
        # The texts of events likely to fall in their window's text-drift sample are embedded now,
        # so that closing the window has little left to embed and its alerts are not held up. The
        # encoder runs in its own thread while this one scores the batch, because torch releases the GIL.
        if not self._embed_ahead:
            return None
        slots, texts = [], []
        for index, event in enumerate(events):
            seen = self._count_in_window(event)
            if sample_rank(event.event_id) >= self.sink.sample_cutoff(event.app, event.model, seen):
                continue
            samples = text_samples(event, self.settings.text_sample_chars)
            for field in TEXT_FIELDS:
                if has_text(samples, field):
                    slots.append((index, vector_key(field)))
                    texts.append(samples[text_key(field)])
        if not texts:
            return None
        return self._embedder.submit(self._encode, slots, texts)

    def _count_in_window(self, event: InferenceEvent) -> int:
        # A late event (of an older window) counts as the first of its window.
        key = (event.app, event.model)
        start = window_start(event.timestamp, self.settings.window_seconds)
        newest, count = self._window_rows.get(key, (start, 0))
        if start > newest:
            newest, count = start, 0
        if start < newest:
            return 1
        self._window_rows[key] = (newest, count + 1)
        return count + 1

    def _encode(self, slots: list[tuple[int, str]], texts: list[str]) -> list[tuple[int, str, str]]:
        vectors = self.sink.encoder().encode(texts)
        return [(index, key, pack_vector(vector)) for (index, key), vector in zip(slots, vectors, strict=True)]

    def _attach_vectors(self, scored: Sequence[ScoredEvent], pending: Future[list[tuple[int, str, str]]] | None) -> None:
        if pending is None:
            return
        try:
            packed = pending.result()
        except DetectorError as exc:
            # Ingest goes on, and closing a window embeds its sample or reports why it cannot.
            log.error("embedding the text-drift sample at ingest is off for this worker: %s", exc)
            self._embed_ahead = False
            return
        for index, key, vector in packed:
            scored[index].features[key] = vector

    def store(self, records: Sequence[Record]) -> IngestResult:
        """Store prepared records and their offsets in one transaction."""
        return self.sink.ingest(records)

    def close_due(self, partitions: set[int] | None, now: datetime | None = None) -> list[ClosedWindow]:
        """Close the windows of `partitions` that are due at wall-clock time `now` (the current time when None)."""
        return self.sink.close_due(partitions, now)

    def _unseen(self, messages: Sequence[RawMessage]) -> list[RawMessage]:
        partitions = {message.partition for message in messages}
        with self.engine.connect() as connection:
            stored = dict(
                connection.execute(
                    select(ConsumerOffset.partition, ConsumerOffset.next_offset).where(
                        ConsumerOffset.group_id == self.settings.consumer_group,
                        ConsumerOffset.topic == self.topic,
                        ConsumerOffset.partition.in_(partitions),
                    )
                ).all()
            )
        fresh = [message for message in messages if message.offset >= stored.get(message.partition, 0)]
        if len(fresh) < len(messages):
            log.info("skipped %d redelivered messages already stored", len(messages) - len(fresh))
        return fresh
