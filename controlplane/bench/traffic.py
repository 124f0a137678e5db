"""Benchmark traffic: real prompt and completion sizes from the public datasets, produced fast."""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterator

from aiokafka import AIOKafkaProducer

from controlplane.errors import ConfigurationError
from controlplane.events.decode import encode_event
from controlplane.events.schema import InferenceEvent, Usage
from controlplane.replay import ensure_topics

SOURCES = ("codealpaca.jsonl", "gpteacher_roleplay.jsonl", "alpaca_seed_tasks.jsonl")
APPS = ("assistant", "support", "search", "writer")


def load_pairs(datasets_dir: Path) -> list[tuple[str, str]]:
    """Read (prompt, completion) pairs from the instruction datasets."""
    pairs = []
    for name in SOURCES:
        path = datasets_dir / name
        if not path.is_file():
            raise ConfigurationError(f"benchmark dataset {path} not found; set CONTROLPLANE_DATASETS to the datasets folder")
        with path.open(encoding="utf-8") as handle:
            for line in handle:
                row = json.loads(line)
                prompt = "\n\n".join(part for part in (row.get("instruction"), row.get("input")) if part)
                pairs.append((prompt, row.get("output") or ""))
    return pairs


def events(
    pairs: list[tuple[str, str]],
    count: int,
    start: datetime,
    rate: float,
    model: str = "gpt-4o-mini",
    seed: int = 11,
    apps: tuple[str, ...] = APPS,
) -> Iterator[InferenceEvent]:
    """Yield `count` events drawn from `pairs`, `rate` per event-time second, spread evenly over `apps`."""
    rng = random.Random(seed)
    for index in range(count):
        prompt, completion = pairs[rng.randrange(len(pairs))]
        yield InferenceEvent(
            event_id=str(uuid.UUID(int=rng.getrandbits(128))),
            timestamp=start + timedelta(seconds=index / rate),
            app=apps[index % len(apps)],
            model=model,
            route="/v1/chat/completions",
            prompt=prompt,
            completion=completion,
            usage=Usage(input_tokens=max(1, len(prompt) // 4), output_tokens=max(1, len(completion) // 4)),
            latency_ms=300.0 + 20.0 * (len(completion) // 4) * rng.lognormvariate(0, 0.2),
            finish_reason="stop",
        )


async def produce_encoded(bootstrap: str, topic: str, partitions: int, messages: Iterator[tuple[bytes, bytes]]) -> tuple[int, float]:
    """Produce (key, value) pairs as fast as the broker takes them; return the count and seconds."""
    await ensure_topics(bootstrap, {topic: partitions})
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks=1, linger_ms=50, max_batch_size=512 * 1024)
    await producer.start()
    began = time.perf_counter()
    count = 0
    try:
        pending = []
        for key, value in messages:
            pending.append(await producer.send(topic, value=value, key=key))
            count += 1
            if len(pending) >= 5000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return count, time.perf_counter() - began


def encoded(stream: Iterator[InferenceEvent]) -> Iterator[tuple[bytes, bytes]]:
    """Encode events as the worker receives them."""
    for event in stream:
        yield event.key.encode(), encode_event(event)


def now_utc() -> datetime:
    return datetime.now(timezone.utc)
