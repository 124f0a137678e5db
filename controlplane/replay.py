"""Replay of JSONL and CSV files as production traffic.

A replay is a list of segments played one after another on a synthetic event-time clock.
A segment takes every row of one file in file order, or draws a fixed number of rows from one
file or a weighted mix of files with a seeded RNG. `FieldMapping` defines how a row becomes an
inference event, and `replay` produces the events to Kafka.

Bad rows: by default the first row that cannot become an event raises `SourceRowError`, which
names the file and line. In a segment with `skip_bad=True` such rows are logged, counted in
`Timeline.skipped` and left out. When a segment draws a fixed number of rows, its files are read
in full before its first event, so a strict replay stops before it sends anything of that segment.
"""

from __future__ import annotations

import asyncio
import csv
import json
import logging
import math
import random
import re
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Literal

import yaml
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, for_code
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from controlplane.errors import ConfigurationError, StreamError
from controlplane.events.decode import encode_event
from controlplane.events.schema import ChatMessage, InferenceEvent, Usage
from controlplane.settings import TOPIC_EVENTS

logger = logging.getLogger(__name__)

# Fixed so that event ids stay the same across runs and machines.
REPLAY_NAMESPACE = uuid.UUID("697a7e85-52ea-486c-8a53-34743f4698ed")
CHARS_PER_TOKEN = 4
LATENCY_BASE_MS = 300.0
LATENCY_PER_OUTPUT_TOKEN_MS = 25.0
LATENCY_NOISE_SIGMA = 0.25
MAX_LOGGED_BAD_ROWS = 5
TOPIC_METADATA_ATTEMPTS = 5
UNNAMED_SEGMENT = "events"
_TOPIC_ALREADY_EXISTS = 36
_TURN = re.compile(r"\n\n(Human|Assistant):")
_ROLES = {"Human": "user", "Assistant": "assistant"}


class SourceRowError(ConfigurationError):
    """A row of a replay file cannot become an event."""

    def __init__(self, path: Path, line: int, reason: str) -> None:
        super().__init__(f"{path}, line {line}: {reason}")
        self.path = path
        self.line = line
        self.reason = reason


class FieldMapping(BaseModel):
    """Rules that turn the fields of one source row into an inference event.

    app, route, model and model_version take a constant, or `@FIELD`, which reads the value from each row.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    extractor: Literal["fields", "hh-rlhf"] = Field("fields", description="`hh-rlhf` splits a dialogue into messages.")
    prompt: tuple[str, ...] = Field(("instruction", "input"), description="Fields joined by a blank line, skipping empty ones.")
    completion: str | None = Field("output", description="Field with the completion, or none to leave it unknown.")
    dialogue: str = Field("rejected", description="hh-rlhf: field with the dialogue, `chosen` or `rejected`.")
    timestamp: str | None = Field(None, description="Field with the event time (ISO 8601 or epoch seconds).")
    app: str | None = None
    route: str | None = None
    model: str | None = None
    model_version: str | None = None
    synthesize_usage: bool = Field(False, description="Estimate token counts as characters // 4.")
    synthesize_latency: bool = Field(False, description="Simulate latency from output tokens with seeded noise.")

    @field_validator("prompt", mode="before")
    @classmethod
    def _split_prompt(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(name for name in value.split("+") if name)
        return value

    @field_validator("completion", "timestamp", "app", "route", "model", "model_version", mode="before")
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        return None if value == "" else value

    @model_validator(mode="after")
    def _has_prompt_fields(self) -> FieldMapping:
        if self.extractor == "fields" and not self.prompt:
            raise ValueError("the fields extractor needs at least one prompt field, e.g. prompt=instruction+input")
        return self

    @classmethod
    def parse(cls, spec: str) -> FieldMapping:
        """Parse the CLI form `key=value,key=value`, where a bare key sets a flag to true."""
        options: dict[str, Any] = {}
        for item in filter(None, (part.strip() for part in spec.split(","))):
            key, sep, value = item.partition("=")
            options[key.strip()] = value.strip() if sep else True
        return load_mapping(options)


def load_mapping(spec: FieldMapping | Mapping[str, Any] | str | Path) -> FieldMapping:
    """Load a mapping from a dict, a YAML file path or the CLI form, or raise ConfigurationError."""
    if isinstance(spec, FieldMapping):
        return spec
    if isinstance(spec, Path) or (isinstance(spec, str) and spec.endswith((".yaml", ".yml"))):
        path = Path(spec)
        if not path.is_file():
            raise ConfigurationError(f"mapping file {path} not found")
        spec = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if isinstance(spec, str):
        return FieldMapping.parse(spec)
    if not isinstance(spec, Mapping):
        raise ConfigurationError(f"invalid field mapping {spec!r}: expected key-value pairs")
    try:
        return FieldMapping.model_validate(dict(spec))
    except ValidationError as exc:
        keys = ", ".join(FieldMapping.model_fields)
        raise ConfigurationError(f"invalid field mapping {dict(spec)!r}: {_describe(exc)}. Valid keys: {keys}") from exc


@dataclass(frozen=True)
class Source:
    """One input file, its field mapping and its weight in a mixed segment."""

    path: Path
    mapping: FieldMapping
    weight: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))
        object.__setattr__(self, "mapping", load_mapping(self.mapping))
        if not self.path.is_file():
            raise ConfigurationError(f"replay file {self.path} not found")
        if self.weight <= 0:
            raise ConfigurationError(f"weight of {self.path} must be greater than 0, not {self.weight}")
        for name in ("app", "model"):
            if getattr(self.mapping, name) is None:
                raise ConfigurationError(
                    f"mapping for {self.path} sets no {name}. Add {name}=NAME, or {name}=@FIELD to read it from each row"
                )


@dataclass(frozen=True)
class Segment:
    """A stretch of the timeline: every row of one file, or `rows` rows drawn from a weighted mix of files.

    `rate` is in events per event-time second. A segment without `start` begins where the previous one
    ended, and the first one at the time the Timeline is created. When a file has fewer usable rows than
    its share of `rows`, its rows repeat, and each repeat gets its own event id.
    """

    name: str
    sources: tuple[Source, ...]
    rows: int | None = None
    rate: float = 1.0
    start: datetime | None = None
    seed: int = 0
    skip_bad: bool = False
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sources", tuple(self.sources))
        if not self.sources:
            raise ConfigurationError(f"segment {self.name!r} has no source file")
        if self.rows is None and len(self.sources) > 1:
            raise ConfigurationError(f"segment {self.name!r} mixes {len(self.sources)} files, so it needs a row count")
        if self.rows is not None and self.rows < 1:
            raise ConfigurationError(f"rows of segment {self.name!r} must be at least 1, not {self.rows}")
        if self.rate <= 0:
            raise ConfigurationError(f"rate of segment {self.name!r} must be greater than 0, not {self.rate}")


@dataclass(frozen=True)
class SourceRow:
    """One record of a file: its position among records, its first line and its fields."""

    index: int
    line: int
    data: dict[str, Any]


def read_rows(path: Path) -> Iterator[SourceRow | SourceRowError]:
    """Read a .jsonl or .csv file lazily, yielding each row or the error that makes it unusable."""
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return _read_jsonl(path)
    if suffix == ".csv":
        return _read_csv(path)
    raise ConfigurationError(f"cannot replay {path}: the file type {suffix!r} is not supported, only .jsonl and .csv")


def _read_jsonl(path: Path) -> Iterator[SourceRow | SourceRowError]:
    index = 0
    with path.open("rb") as handle:
        for line, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                data = json.loads(raw.decode("utf-8-sig" if line == 1 else "utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                yield SourceRowError(path, line, f"not a JSON object: {exc}")
            else:
                if isinstance(data, dict):
                    yield SourceRow(index, line, data)
                else:
                    yield SourceRowError(path, line, f"found JSON {type(data).__name__}, expected an object")
            index += 1


def _read_csv(path: Path) -> Iterator[SourceRow | SourceRowError]:
    # utf-8-sig drops a byte order mark at the start and reads files without one unchanged.
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle)
        index, last_line = 0, 0
        try:
            header = next(reader, None)
            last_line = reader.line_num
            for values in reader:
                line, last_line = last_line + 1, reader.line_num
                if not values:
                    continue
                if header is not None and len(values) == len(header):
                    yield SourceRow(index, line, dict(zip(header, values)))
                else:
                    yield SourceRowError(path, line, f"row has {len(values)} columns but the header has {len(header or [])}")
                index += 1
        except (csv.Error, UnicodeDecodeError) as exc:
            # The reader cannot recover from either error, so reading stops even with skip_bad.
            raise SourceRowError(path, last_line + 1, f"invalid CSV, reading stopped: {exc}") from exc


def split_dialogue(text: str) -> tuple[list[ChatMessage], str]:
    """Split an hh-rlhf dialogue into the messages before the last assistant turn and that turn's text."""
    if text.startswith(("Human:", "Assistant:")):
        text = "\n\n" + text
    parts = _TURN.split(text)
    if parts[0].strip():
        raise ValueError("dialogue has text before its first 'Human:' turn")
    turns = [ChatMessage(role=_ROLES[role], content=content.strip()) for role, content in zip(parts[1::2], parts[2::2])]
    if len(turns) < 2 or turns[-1].role != "assistant":
        raise ValueError("dialogue needs a 'Human:' turn followed by a final 'Assistant:' turn")
    return turns[:-1], turns[-1].content


def estimate_usage(event: InferenceEvent) -> Usage:
    """Estimate token counts as characters // 4, at least 1 for non-empty text."""
    return Usage(input_tokens=_estimate_tokens(event.prompt_text()), output_tokens=_estimate_tokens(event.completion or ""))


def simulate_latency(output_tokens: int, rng: random.Random) -> float:
    """Simulate a latency in milliseconds: a fixed base plus a cost per output token, with log-normal noise."""
    expected = LATENCY_BASE_MS + LATENCY_PER_OUTPUT_TOKEN_MS * output_tokens
    return round(expected * rng.lognormvariate(0.0, LATENCY_NOISE_SIGMA), 1)


class Timeline:
    """The events of segments played one after another, built lazily when iterated.

    Iterating twice gives the same events. `skipped` counts the bad rows left out per segment.
    """

    def __init__(self, segments: Sequence[Segment], now: datetime | None = None) -> None:
        if not segments:
            raise ConfigurationError("a replay needs at least one segment")
        self.segments = list(segments)
        self.start = _as_utc(self.segments[0].start or now or datetime.now(timezone.utc))
        self.skipped: Counter[str] = Counter()

    def __iter__(self) -> Iterator[InferenceEvent]:
        self.skipped.clear()
        clock = self.start
        for position, segment in enumerate(self.segments):
            clock = _as_utc(segment.start) if segment.start else clock
            count = 0
            for source, draft, row_index, repeat in self._draws(position, segment):
                at = clock + timedelta(seconds=count / segment.rate)
                yield _finish(draft, source, segment, position, row_index, repeat, at)
                count += 1
            clock += timedelta(seconds=count / segment.rate)

    def _draws(self, position: int, segment: Segment) -> Iterator[tuple[Source, InferenceEvent, int, int]]:
        if segment.rows is None:
            for row_index, draft in self._drafts(segment.sources[0], segment):
                yield segment.sources[0], draft, row_index, 0
            return
        rng = random.Random(f"{segment.seed}:{position}")
        counts = _split_counts(segment.rows, [source.weight for source in segment.sources])
        pools = [iter(self._sample(source, segment, count, rng)) for source, count in zip(segment.sources, counts)]
        order = [source_position for source_position, count in enumerate(counts) for _ in range(count)]
        rng.shuffle(order)
        for source_position in order:
            yield (segment.sources[source_position], *next(pools[source_position]))

    def _sample(self, source: Source, segment: Segment, count: int, rng: random.Random) -> list[tuple[InferenceEvent, int, int]]:
        if count == 0:
            return []
        # Reservoir sampling keeps memory at `count` rows however long the file is.
        reservoir: list[tuple[int, InferenceEvent]] = []
        for seen, item in enumerate(self._drafts(source, segment)):
            if seen < count:
                reservoir.append(item)
            elif (slot := rng.randrange(seen + 1)) < count:
                reservoir[slot] = item
        if not reservoir:
            raise ConfigurationError(f"{source.path} has no usable rows for segment {segment.name!r}")
        draws: list[tuple[InferenceEvent, int, int]] = []
        repeat = 0
        while len(draws) < count:
            rng.shuffle(reservoir)
            draws.extend((draft, row_index, repeat) for row_index, draft in reservoir[: count - len(draws)])
            repeat += 1
        return draws

    def _drafts(self, source: Source, segment: Segment) -> Iterator[tuple[int, InferenceEvent]]:
        skipped = 0
        for row in read_rows(source.path):
            if isinstance(row, SourceRow):
                try:
                    draft = _draft_event(row.data, source.mapping)
                except ValueError as exc:
                    row = SourceRowError(source.path, row.line, _describe(exc))
                else:
                    yield row.index, draft
                    continue
            if not segment.skip_bad:
                raise row
            skipped += 1
            self.skipped[segment.name] += 1
            if skipped <= MAX_LOGGED_BAD_ROWS:
                logger.warning("skipping bad row of segment %s: %s", segment.name, row)
        if skipped:
            logger.warning("skipped %d bad rows of %s in segment %s", skipped, source.path, segment.name)


def build_segments_from_cli(
    files: list[Path], mapping: str, rows: int | None, rate: float, start: datetime, seed: int, skip_bad: bool = False
) -> list[Segment]:
    """Build one segment per file, in order: all rows in file order, or `rows` rows sampled from each file."""
    field_mapping = load_mapping(mapping)
    segments = []
    for position, path in enumerate(files):
        source = Source(Path(path), field_mapping)
        segments.append(
            Segment(
                name=source.path.name, sources=(source,), rows=rows, rate=rate,
                start=start if position == 0 else None, seed=seed, skip_bad=skip_bad,
            )
        )
    return segments


def parse_speedup(value: float | str) -> float:
    """Parse a speedup: a factor over event time, or 0 or "max" to send as fast as possible."""
    if isinstance(value, str) and value.strip().lower() == "max":
        return 0.0
    try:
        factor = float(value)
    except ValueError as exc:
        raise ConfigurationError(f"invalid speedup {value!r}: expected a number of 0 or more, or 'max'") from exc
    if factor < 0 or math.isnan(factor):
        raise ConfigurationError(f"invalid speedup {value!r}: expected a number of 0 or more, or 'max'")
    return factor


@dataclass
class ReplayStats:
    """Result of one replay: events acknowledged by Kafka and bad rows skipped, per segment."""

    topic: str
    bootstrap: str
    produced: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    elapsed_seconds: float = 0.0

    @property
    def total(self) -> int:
        """Number of events acknowledged in all segments."""
        return sum(self.produced.values())


async def replay(
    events: AsyncIterable[InferenceEvent] | Iterable[InferenceEvent],
    bootstrap: str,
    topic: str = TOPIC_EVENTS,
    speedup: float | str = 0.0,
    *,
    linger_ms: int = 20,
    request_timeout_ms: int = 15_000,
) -> ReplayStats:
    """Produce events to Kafka, `speedup` times faster than their timestamps (0 or "max": no pacing).

    Raises StreamError when Kafka is unreachable, the topic does not exist or a send fails.
    """
    factor = parse_speedup(speedup)
    stats = ReplayStats(topic=topic, bootstrap=bootstrap)
    began = time.monotonic()
    async with _ProducerSession(bootstrap, topic, linger_ms, request_timeout_ms) as producer:
        await _send_events(producer, events, topic, factor, stats)
    stats.elapsed_seconds = time.monotonic() - began
    if isinstance(events, Timeline):
        stats.skipped = dict(events.skipped)
    return stats


async def produce_raw(values: list[bytes], bootstrap: str, topic: str, key: bytes | None = None) -> int:
    """Produce message values unchanged, malformed ones included, and return how many Kafka acknowledged."""
    async with _ProducerSession(bootstrap, topic, linger_ms=5, request_timeout_ms=15_000) as producer:
        futures = [await producer.send(topic, value=value, key=key) for value in values]
        await asyncio.gather(*futures)
    return len(values)


async def ensure_topics(
    bootstrap: str, topics: dict[str, int], replication_factor: int = 1, request_timeout_ms: int = 15_000
) -> list[str]:
    """Create the missing topics with the given partition counts and return the names created."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=request_timeout_ms)
    try:
        await admin.start()
        existing = {item["topic"]: len(item["partitions"]) for item in await admin.describe_topics()}
        for name, partitions in topics.items():
            if name in existing and existing[name] != partitions:
                logger.warning(
                    "topic %s has %d partitions, not the %d requested, and is left unchanged", name, existing[name], partitions
                )
        missing = [NewTopic(name, count, replication_factor) for name, count in topics.items() if name not in existing]
        if missing:
            response = await admin.create_topics(missing)
            _check_created(response.topic_errors, bootstrap)
    except KafkaError as exc:
        raise StreamError(f"creating topics {sorted(topics)} on Kafka at {bootstrap} failed: {exc!r}") from exc
    finally:
        await admin.close()
    created = [topic.name for topic in missing]
    logger.info("topics %s are present on %s, created now: %s", sorted(topics), bootstrap, created or "none")
    return created


def _check_created(topic_errors: list[tuple[Any, ...]], bootstrap: str) -> None:
    for name, code, *rest in topic_errors:
        # Another client may create the same topic between the listing and the request.
        if code not in (0, _TOPIC_ALREADY_EXISTS):
            detail = rest[0] if rest and rest[0] else for_code(code).__name__
            raise StreamError(f"Kafka at {bootstrap} rejected creating topic {name!r}: {detail} (error code {code})")


class _ProducerSession:
    """An idempotent producer started and stopped as an async context, with Kafka errors raised as StreamError."""

    def __init__(self, bootstrap: str, topic: str, linger_ms: int, request_timeout_ms: int) -> None:
        self.bootstrap, self.topic = bootstrap, topic
        self.producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=linger_ms,
            max_batch_size=256 * 1024, request_timeout_ms=request_timeout_ms,
        )

    async def __aenter__(self) -> AIOKafkaProducer:
        try:
            await self.producer.start()
        except KafkaError as exc:
            await self.producer.stop()
            raise StreamError(
                f"cannot connect to Kafka at {self.bootstrap}: {exc!r}. Check that the broker is running "
                "and that CONTROLPLANE_KAFKA_BOOTSTRAP names it"
            ) from exc
        await self._check_topic()
        return self.producer

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, traceback: Any) -> None:
        try:
            await self.producer.stop()
        except KafkaError as stop_exc:
            if exc is None:
                raise StreamError(f"flushing to topic {self.topic!r} on Kafka at {self.bootstrap} failed") from stop_exc
        if isinstance(exc, KafkaError):
            raise StreamError(f"producing to topic {self.topic!r} on Kafka at {self.bootstrap} failed: {exc!r}") from exc

    async def _check_topic(self) -> None:
        # A topic created a moment ago can be missing from the first metadata response, so ask a few times.
        for attempt in range(TOPIC_METADATA_ATTEMPTS):
            try:
                metadata = await self.producer.client.fetch_all_metadata()
            except KafkaError as exc:
                await self.producer.stop()
                raise StreamError(f"reading topic metadata from Kafka at {self.bootstrap} failed: {exc!r}") from exc
            if self.topic in metadata.topics():
                return
            await asyncio.sleep(0.2 * (attempt + 1))
        await self.producer.stop()
        raise StreamError(
                f"topic {self.topic!r} does not exist on Kafka at {self.bootstrap}. Create it with "
                "controlplane.replay.ensure_topics or by starting the worker, because brokers may not create topics on first use"
            )


async def _send_events(
    producer: AIOKafkaProducer, events: AsyncIterable[InferenceEvent] | Iterable[InferenceEvent],
    topic: str, speedup: float, stats: ReplayStats,
) -> None:
    pending: list[asyncio.Future[Any]] = []
    label, began = None, time.monotonic()
    origin: tuple[datetime, float] | None = None
    async for event in _aiter(events):
        segment = event.metadata.get("replay_segment", UNNAMED_SEGMENT)
        if segment != label:
            await _acknowledge(pending, stats, label, began, topic)
            label, began = segment, time.monotonic()
        if speedup > 0:
            origin = origin or (event.timestamp, time.monotonic())
            delay = (event.timestamp - origin[0]).total_seconds() / speedup - (time.monotonic() - origin[1])
            if delay > 0:
                await asyncio.sleep(delay)
        pending.append(await producer.send(topic, value=encode_event(event), key=event.key.encode("utf-8")))
    await _acknowledge(pending, stats, label, began, topic)


async def _acknowledge(pending: list[asyncio.Future[Any]], stats: ReplayStats, label: str | None, began: float, topic: str) -> None:
    if label is None:
        return
    await asyncio.gather(*pending)
    stats.produced[label] = stats.produced.get(label, 0) + len(pending)
    logger.info("replayed segment %s: %d events to %s in %.2f s", label, len(pending), topic, time.monotonic() - began)
    pending.clear()


async def _aiter(events: AsyncIterable[InferenceEvent] | Iterable[InferenceEvent]) -> AsyncIterator[InferenceEvent]:
    if isinstance(events, AsyncIterable):
        async for event in events:
            yield event
        return
    for count, event in enumerate(events, start=1):
        yield event
        if count % 200 == 0:
            # Reading files blocks the loop, so give the producer's sender task a turn now and then.
            await asyncio.sleep(0)


def _draft_event(data: dict[str, Any], mapping: FieldMapping) -> InferenceEvent:
    """Build the event of one row with a placeholder id, or raise ValueError naming what is wrong."""
    messages, prompt = None, None
    if mapping.extractor == "hh-rlhf":
        messages, completion = split_dialogue(_text(data, mapping.dialogue))
    else:
        parts = [_text(data, name) for name in mapping.prompt]
        prompt = "\n\n".join(part for part in parts if part.strip())
        if not prompt:
            raise ValueError(f"no prompt text in fields {', '.join(mapping.prompt)}")
        completion = _text(data, mapping.completion) if mapping.completion else None
    timestamp = _parse_time(data, mapping.timestamp) if mapping.timestamp else datetime.fromtimestamp(0, timezone.utc)
    return InferenceEvent(
        event_id="pending", timestamp=timestamp, prompt=prompt, messages=messages, completion=completion,
        app=_value(data, mapping.app), model=_value(data, mapping.model),
        route=_value(data, mapping.route) or None, model_version=_value(data, mapping.model_version) or None,
    )


def _finish(
    draft: InferenceEvent, source: Source, segment: Segment, position: int, row_index: int, repeat: int, at: datetime
) -> InferenceEvent:
    name = f"{source.path.name}|{row_index}|{position}" + (f"|{repeat}" if repeat else "")
    event_id = str(uuid.uuid5(REPLAY_NAMESPACE, name))
    metadata = {**segment.metadata, "replay_source": source.path.name, "replay_row": row_index, "replay_segment": segment.name}
    update: dict[str, Any] = {"event_id": event_id, "metadata": metadata}
    if source.mapping.timestamp is None:
        update["timestamp"] = at
    synthetic = []
    mapping = source.mapping
    usage = estimate_usage(draft) if mapping.synthesize_usage or mapping.synthesize_latency else None
    if usage is not None and mapping.synthesize_usage:
        update["usage"] = usage
        synthetic.append("usage")
    if usage is not None and mapping.synthesize_latency:
        update["latency_ms"] = simulate_latency(usage.output_tokens or 0, random.Random(event_id))
        synthetic.append("latency_ms")
    if synthetic:
        metadata["synthetic"] = synthetic
    return draft.model_copy(update=update)


def _text(data: dict[str, Any], name: str) -> str:
    if name not in data:
        raise ValueError(f"field {name!r} not found. The row has fields {', '.join(map(repr, data)) or '(none)'}")
    value = data[name]
    if value is None:
        return ""
    if isinstance(value, (str, int, float, bool)):
        return str(value)
    raise ValueError(f"field {name!r} is a {type(value).__name__}, expected text")


def _value(data: dict[str, Any], spec: str | None) -> str | None:
    if spec is not None and spec.startswith("@"):
        return _text(data, spec[1:])
    return spec


def _parse_time(data: dict[str, Any], name: str) -> datetime:
    text = _text(data, name).strip()
    try:
        seconds = float(text)
    except ValueError:
        seconds = None
    try:
        if seconds is not None:
            return datetime.fromtimestamp(seconds, timezone.utc)
        return _as_utc(datetime.fromisoformat(text))
    except (ValueError, OverflowError, OSError) as exc:
        raise ValueError(f"field {name!r} is {text!r}, expected an ISO 8601 time or epoch seconds") from exc


def _as_utc(value: datetime) -> datetime:
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def _estimate_tokens(text: str) -> int:
    return max(1, len(text) // CHARS_PER_TOKEN) if text else 0


def _split_counts(total: int, weights: list[float]) -> list[int]:
    """Split `total` in proportion to `weights`, giving the remainders to the largest fractions."""
    shares = [total * weight / sum(weights) for weight in weights]
    counts = [int(share) for share in shares]
    by_fraction = sorted(range(len(shares)), key=lambda i: shares[i] - counts[i], reverse=True)
    for i in by_fraction[: total - sum(counts)]:
        counts[i] += 1
    return counts


def _describe(exc: ValueError) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'event'}: {e['msg']}" for e in exc.errors(include_url=False))
    return str(exc)
