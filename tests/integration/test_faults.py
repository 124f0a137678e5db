"""The worker through broker restarts, database outages, rebalances and SIGKILL, after which every count must be exact.

The broker restart and the database outage run on private servers started for the test, so the
shared Kafka broker and PostgreSQL server of the other tests stay up.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from typing import Callable, Iterator

import pytest
from aiokafka.partitioner import DefaultPartitioner

from controlplane.detectors.safety import SafetyScorer
from controlplane.events.decode import decode_message
from controlplane.events.schema import InferenceEvent
from controlplane.features import EventScorer
from controlplane.pricing import PriceTable
from controlplane.store.migrate import upgrade
from tests.integration.conftest import PrivateService, WorkerProcess, fresh_postgres_database, worker_environment
from tests.integration.helpers import (
    Message,
    PacedProducer,
    StoreProbe,
    event_message,
    make_event,
    produce,
    read_topic_to_end,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.faults]

Key = tuple[str, str]

# With three partitions, these (app, model) keys land on partitions 2, 1, 0 and 2, and the two
# extra keys of the rebalance test on 1 and 0 (checked in that test).
KEYS: tuple[Key, ...] = (
    ("assistant", "gpt-4o-mini"),
    ("coder", "gpt-4o-mini"),
    ("support", "claude-3-5-haiku"),
    ("search", "gpt-4o"),
)
REBALANCE_KEYS: tuple[Key, ...] = KEYS + (("translate", "gpt-4o"), ("summarize", "gpt-4o-mini"))

DATABASE_OUTAGE_S = 30
BROKER_OUTAGE_S = 10
REPLAY_OUTAGE_S = 10
WAIT_S = 240


def fault_worker_env(bootstrap: str, database_url: str, topic_prefix: str) -> dict[str, str]:
    """Build the environment of a worker of these tests."""
    env = worker_environment(bootstrap, database_url, topic_prefix)
    # Embedding every prompt and completion for the safety detectors limits a worker to roughly
    # 50 events/s on 2 CPU cores. Without the embeddings the word model and the patterns still
    # score every event, many times faster, and the counts checked here do not change.
    env["CONTROLPLANE_SAFETY_EMBEDDINGS"] = "false"
    # Text drift embeds a sample of each window as it closes, at the same cost per text.
    env["CONTROLPLANE_TEXT_DRIFT"] = "false"
    return env


def keyed_events(indexes: range, keys: tuple[Key, ...] = KEYS, seconds_apart: float = 0.1) -> list[InferenceEvent]:
    """Build one event per index and key, interleaving the keys as concurrent traffic does."""
    return [make_event(index, app, model, seconds_apart) for index in indexes for app, model in keys]


def messages_of(events: list[InferenceEvent]) -> list[Message]:
    return [event_message(event) for event in events]


def count_by_key(events: list[InferenceEvent]) -> Counter:
    return Counter((event.app, event.model) for event in events)


def expected_totals(events: list[InferenceEvent], flagged: Counter | None = None) -> dict[Key, tuple[int, int]]:
    """Map each key to the (event_count, flagged_count) sums that its window statistics must reach."""
    flagged = flagged or Counter()
    return {key: (count, flagged[key]) for key, count in count_by_key(events).items()}


def all_windows_closed(probe: StoreProbe, total: int) -> Callable[[], bool]:
    return lambda: probe.windowed_events() == total and probe.buffered_events() == 0


def wait_while_running(condition: Callable[[], bool], what: str, *workers: WorkerProcess) -> None:
    """Poll `condition` like wait_for, but fail at once with its log when one of `workers` has exited."""

    def check() -> bool:
        for worker in workers:
            if not worker.running():
                raise AssertionError(
                    f"{worker.log_path.stem} exited with code {worker.process.returncode} while waiting for {what}\n"
                    f"--- worker log (tail) ---\n{worker.log()[-4000:]}"
                )
        return condition()

    wait_for(check, WAIT_S, what, workers[-1].log)


def backoff_delays(log: str) -> list[float]:
    """Return the retry delays, in seconds, of the worker's database-unavailable warnings in log order."""
    return [float(delay) for delay in re.findall(r"database unavailable, failed to .*?; retrying in ([\d.]+)s", log)]


@pytest.fixture
def shared_postgres_url(postgres_admin_url: str) -> Iterator[str]:
    """A migrated, empty database on the shared PostgreSQL server."""
    for url in fresh_postgres_database(postgres_admin_url):
        upgrade(url)
        yield url


@pytest.fixture
def private_postgres_url(private_postgres: PrivateService) -> str:
    """The migrated test database of this test's own PostgreSQL server."""
    url = private_postgres.run("url").strip()
    upgrade(url)
    return url


@pytest.fixture
def probe_of() -> Iterator[Callable[[str], StoreProbe]]:
    """Open store probes, and close them all at the end."""
    probes: list[StoreProbe] = []

    def open_probe(url: str) -> StoreProbe:
        probes.append(StoreProbe(url))
        return probes[-1]

    yield open_probe
    for probe in probes:
        probe.close()


def test_broker_restart_mid_stream(private_kafka, shared_postgres_url, topic_prefix, launch_worker, probe_of):
    bootstrap = f"127.0.0.1:{private_kafka.port}"
    env = fault_worker_env(bootstrap, shared_postgres_url, topic_prefix)
    topic = env["CONTROLPLANE_TOPIC_EVENTS"]
    # Enough events that the worker, at a few thousand a second, is still busy when the broker is down.
    before = keyed_events(range(0, 10_000))
    after = keyed_events(range(10_000, 10_500))
    produce(bootstrap, topic, messages_of(before))
    probe = probe_of(shared_postgres_url)

    worker = launch_worker(env, "worker")
    wait_while_running(lambda: probe.stored_events() >= 500, "500 events stored", worker)
    private_kafka.stop()
    stored_at_stop = probe.stored_events()
    assert stored_at_stop < len(before), "the worker had consumed everything before the broker stopped"

    time.sleep(BROKER_OUTAGE_S)
    assert worker.running(), f"the worker exited while the broker was down\n{worker.log()[-4000:]}"
    private_kafka.start()
    produce(bootstrap, topic, messages_of(after))

    total = len(before) + len(after)
    wait_while_running(all_windows_closed(probe, total), f"{total} events in window statistics", worker)
    assert worker.running()
    assert probe.window_totals() == expected_totals(before + after)
    assert probe.dead_letters() == 0


def test_database_outage_backs_off(kafka_bootstrap, private_postgres, private_postgres_url, topic_prefix, launch_worker, probe_of):
    env = fault_worker_env(kafka_bootstrap, private_postgres_url, topic_prefix)
    topic = env["CONTROLPLANE_TOPIC_EVENTS"]
    before = keyed_events(range(0, 750))
    during = keyed_events(range(750, 1000))
    produce(kafka_bootstrap, topic, messages_of(before))
    probe = probe_of(private_postgres_url)

    worker = launch_worker(env, "worker")
    wait_while_running(lambda: probe.stored_events() >= 1000, "1,000 events stored", worker)
    private_postgres.stop()
    # Sent while the database is away, so the worker has messages to store during the whole outage.
    produce(kafka_bootstrap, topic, messages_of(during))
    time.sleep(DATABASE_OUTAGE_S)
    assert worker.running(), f"the worker exited while the database was down\n{worker.log()[-4000:]}"
    delays = backoff_delays(worker.log())
    private_postgres.start()

    total = len(before) + len(during)
    wait_while_running(all_windows_closed(probe, total), f"{total} events in window statistics", worker)
    assert worker.running()
    assert probe.window_totals() == expected_totals(before + during)
    # The outage must not make the windows open at its start look idle and close them early.
    assert probe.late_events() == 0
    # 0.5 + 1 + 2 + 4 s of waiting fit four times into the outage, so at least four retries were logged.
    assert delays[:4] == [0.5, 1.0, 2.0, 4.0], f"backoff delays logged during the outage: {delays}"
    assert delays == sorted(delays)
    assert max(delays) <= 30.0


def test_rebalance_between_two_workers(kafka_bootstrap, shared_postgres_url, topic_prefix, launch_worker, probe_of):
    partitioner = DefaultPartitioner()
    partitions = {partitioner(f"{app}|{model}".encode(), [0, 1, 2], [0, 1, 2]) for app, model in REBALANCE_KEYS}
    assert partitions == {0, 1, 2}, "the keys must cover every partition, so that both workers get events"

    env = fault_worker_env(kafka_bootstrap, shared_postgres_url, topic_prefix)
    topic = env["CONTROLPLANE_TOPIC_EVENTS"]
    first_part = keyed_events(range(0, 200), REBALANCE_KEYS)
    rest = keyed_events(range(200, 3000), REBALANCE_KEYS)
    produce(kafka_bootstrap, topic, messages_of(first_part))
    probe = probe_of(shared_postgres_url)

    first = launch_worker(env, "first")
    wait_while_running(lambda: probe.stored_events() == len(first_part), "the first worker to store its events", first)

    # The stream flows at 120 events/s until finish(), so both rebalances below happen while it flows.
    producer = PacedProducer(kafka_bootstrap, topic, messages_of(rest), per_second=120)
    producer.start()
    try:
        second = launch_worker(env, "second")
        wait_while_running(lambda: "Worker ready" in second.log(), "the second worker to join the group", first, second)
        # Once each worker owns some partitions, every partition advancing means that both store.
        joined = probe.stored_offsets()
        wait_while_running(
            lambda: all(offset >= joined[partition] + 50 for partition, offset in probe.stored_offsets().items()),
            "50 more events stored on every partition with both workers in the group", first, second,
        )
        first.stop()
        left = probe.stored_offsets()
        wait_while_running(
            lambda: all(offset >= left[partition] + 50 for partition, offset in probe.stored_offsets().items()),
            "50 more events stored on every partition by the second worker alone", second,
        )
        assert producer.sending(), "the stream ended before the second rebalance had finished"
    finally:
        sent = producer.finish()

    events = first_part + rest[:sent]
    wait_while_running(all_windows_closed(probe, len(events)), f"{len(events)} events in window statistics", second)
    assert probe.window_totals() == expected_totals(events)
    assert first.process.returncode == 0


# Payloads the worker must reject, each with a part of the reason it must give. The key sends each
# to the partition of one (app, model).
MALFORMED: list[tuple[bytes | None, list[tuple[str, bytes]], str]] = [
    (b"not json at all", [], "value is not JSON"),
    (b'{"event_id": "cut", "timestamp": ', [], "value is not JSON"),
    (json.dumps({"prompt": "hi"}).encode(), [], "event_id: Field required"),
    (json.dumps([1, 2]).encode(), [], "value is JSON list, expected an object"),
    # A lone surrogate as UTF-8 bytes (ED A0 80) is not valid UTF-8. Escaped in JSON, it is valid (see replay_event).
    (b'{"event_id": "s1", "timestamp": "2026-11-30T12:00:00Z", "app": "a", "model": "m", "prompt": "\xed\xa0\x80"}',
     [], "value is not UTF-8"),
    (b'{"event_id": "n1", "timestamp": "2026-11-30T12:00:00Z", "app": "a", "model": "m", "latency_ms": NaN}',
     [], "NaN is not a valid JSON number"),
    (json.dumps({"event_id": "f1", "timestamp": "2026-11-30T12:00:00Z", "app": "a", "model": "m"}).encode(),
     [("controlplane-format", b"protobuf")], "unknown format 'protobuf'"),
    (None, [], "empty message: the value is null"),
]
MALFORMED_COPIES = 5
REPLAY_EVENTS_PER_KEY = 5000
OFFENSIVE_PROMPT = "You are a worthless idiot, shut up and write the damn code."


def replay_event(index: int, app: str, model: str) -> tuple[InferenceEvent, bytes]:
    """Build an event of the acceptance replay and its JSON. Some carry an email, a card number, insults or a lone surrogate."""
    event = make_event(index, app, model, seconds_apart=0.05)
    prompt, completion = event.prompt, event.completion
    if index % 10 == 3:
        prompt += f" Send the result to dev{index}@example.com."
    if index % 25 == 7:
        completion += " The card on file is 4111 1111 1111 1111."
    if index % 400 == 123:
        prompt = OFFENSIVE_PROMPT
    if index % 500 == 250:
        # json.dumps escapes it as \ud800, and the worker replaces it with U+FFFD and keeps the event.
        prompt += " \ud800"
    event = event.model_copy(update={"prompt": prompt, "completion": completion})
    return event, json.dumps(event.model_dump(mode="json", exclude_none=True)).encode()


def replay_messages() -> tuple[list[Message], list[InferenceEvent], dict[int, int]]:
    """Build the replay's messages in order, its valid events, and the MALFORMED row of each bad message by position."""
    messages: list[Message] = []
    events: list[InferenceEvent] = []
    bad_rows: dict[int, int] = {}
    bad = [row for row in range(len(MALFORMED)) for _ in range(MALFORMED_COPIES)]
    spacing = REPLAY_EVENTS_PER_KEY * len(KEYS) // len(bad)
    for index in range(REPLAY_EVENTS_PER_KEY):
        for app, model in KEYS:
            event, value = replay_event(index, app, model)
            messages.append((event.key.encode(), value))
            events.append(event)
            if len(events) % spacing == spacing // 2 and bad:
                row = bad.pop()
                bad_rows[len(messages)] = row
                value, headers, _ = MALFORMED[row]
                messages.append((event.key.encode(), value, headers))
    assert not bad, "every malformed payload must be placed in the stream"
    return messages, events, bad_rows


def flagged_in_process(messages: list[Message], bad_rows: dict[int, int]) -> dict[str, Key]:
    """Score the valid messages in this process as the worker does, and map each flagged event id to its key."""
    scorer = EventScorer(PriceTable.load(None), SafetyScorer(use_embeddings=False))
    valid = [message for position, message in enumerate(messages) if position not in bad_rows]
    flagged = {}
    for first in range(0, len(valid), 500):
        decoded = [event for _, value in valid[first:first + 500] for event in decode_message(value)]
        for item in scorer.score(decoded):
            if item.safety.flagged:
                flagged[item.event.event_id] = (item.event.app, item.event.model)
    return flagged


def test_replay_survives_kills_and_outage(kafka_bootstrap, private_postgres, private_postgres_url, topic_prefix, launch_worker, probe_of):
    env = fault_worker_env(kafka_bootstrap, private_postgres_url, topic_prefix)
    topic, dlq = env["CONTROLPLANE_TOPIC_EVENTS"], env["CONTROLPLANE_TOPIC_DLQ"]
    messages, events, bad_rows = replay_messages()
    total = len(events)
    assert total == 20_000
    positions = produce(kafka_bootstrap, topic, messages)
    bad_at = {positions[position]: MALFORMED[row] for position, row in bad_rows.items()}
    probe = probe_of(private_postgres_url)

    first = launch_worker(env, "first")
    wait_while_running(lambda: probe.stored_events() >= 4000, "4,000 events stored", first)
    first.kill()
    assert probe.stored_events() < total, "the first worker finished before it was killed"

    second = launch_worker(env, "second")
    wait_while_running(lambda: probe.stored_events() >= 9000, "9,000 events stored", second)
    stored_before_outage = probe.stored_events()
    private_postgres.stop()
    assert stored_before_outage < total, "the second worker finished before the database stopped"
    time.sleep(REPLAY_OUTAGE_S)
    assert second.running(), f"the worker exited while the database was down\n{second.log()[-4000:]}"
    assert backoff_delays(second.log()), "the worker logged no retry while the database was down"
    private_postgres.start()
    wait_while_running(lambda: probe.stored_events() >= 14000, "14,000 events stored", second)
    second.kill()
    assert probe.stored_events() < total, "the second worker finished before it was killed"

    third = launch_worker(env, "third")
    wait_while_running(
        lambda: all_windows_closed(probe, total)() and probe.dead_letters() == len(bad_at),
        f"{total} events in window statistics and {len(bad_at)} dead letters", third,
    )

    flagged = flagged_in_process(messages, bad_rows)
    designed_pii = {event.event_id for index, event in enumerate(events) if (index // len(KEYS)) % 10 == 3}
    assert designed_pii <= flagged.keys(), "the in-process detectors missed emails the events carry"
    assert probe.window_totals() == expected_totals(events, Counter(flagged.values()))
    assert sorted(probe.flagged_event_ids()) == sorted(flagged)
    # Neither the restarts nor the outage may make open windows look idle and close them early.
    # Each key's 250 s of events fill four windows of 1,200 events and one of 200, each closed once.
    assert probe.late_events() == 0
    assert probe.window_event_counts() == {key: [1200, 1200, 1200, 1200, 200] for key in KEYS}

    reasons = probe.dead_letter_reasons()
    assert reasons.keys() == bad_at.keys()
    for position, (_, _, expected) in bad_at.items():
        assert expected in reasons[position], f"dead letter at {position}: {reasons[position]!r}"

    # A message rejected just before a SIGKILL may be sent to the dead-letter topic twice.
    letters = read_topic_to_end(kafka_bootstrap, dlq)
    sources = set()
    for letter in letters:
        headers = dict(letter.headers)
        position = (int(headers["source-partition"]), int(headers["source-offset"]))
        assert position in bad_at, f"unexpected dead letter from {position}"
        value, _, _ = bad_at[position]
        assert letter.value == (value or b"")
        assert headers["source-topic"].decode() == topic
        assert headers["reason"].decode() == reasons[position]
        sources.add(position)
    assert sources == bad_at.keys()
