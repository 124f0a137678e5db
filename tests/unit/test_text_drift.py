"""Tests of text drift: deterministic sampling, text profiles, the two tests, and a replay through the sink."""

from __future__ import annotations

import json
import random
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from controlplane.detectors.embeddings import load_encoder
from controlplane.detectors.safety import SafetyResult
from controlplane.detectors.text_drift import (
    PROTOTYPES,
    CachedEncoder,
    TextDriftSettings,
    TextProfile,
    check_text_drift,
    distance_test,
    embed_ahead,
    embed_sample,
    ingest_rank_cutoff,
    pack_vector,
    sample_rows,
    text_profile,
    unpack_vector,
)
from controlplane.detectors.window_checks import CheckSettings, Profile, check_window, profile_window
from controlplane.errors import ConfigurationError, DetectorError
from controlplane.events.decode import encode_event
from controlplane.events.schema import InferenceEvent
from controlplane.features import ScoredEvent, feature_row, sample_rank
from controlplane.replay import Timeline
from controlplane.scenario import ScenarioSource, shift_scenario
from controlplane.settings import Settings
from controlplane.store.engine import make_engine
from controlplane.store.migrate import upgrade
from controlplane.pipeline import Pipeline, RawMessage
from controlplane.store.drift_models import ReferenceProfile
from controlplane.store.models import Finding, WindowEvent, WindowStats
from controlplane.store.sink import Record, WindowSink

DIMENSION = 384
CLEAN = SafetyResult(spans=(), toxicity=0.0, pii_count=0)


def unit_rows(rng: np.random.Generator, rows: int, center: np.ndarray, spread: float = 1.0) -> np.ndarray:
    """Draw unit vectors around `center`, like sentence embeddings of one topic."""
    vectors = center + spread * rng.normal(size=(rows, DIMENSION)) / np.sqrt(DIMENSION)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def topic(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=DIMENSION) / np.sqrt(DIMENSION)


# ----- sampling and feature rows -----


def test_sample_takes_smallest_ranks_in_any_order():
    rows = [{"sample_rank": sample_rank(f"event-{index}"), "index": index} for index in range(500)]
    shuffled = random.Random(3).sample(rows, len(rows))

    first = [row["index"] for row in sample_rows(rows, 50)]
    second = [row["index"] for row in sample_rows(shuffled, 50)]

    assert first == second
    assert len(set(first)) == 50
    assert sorted(row["sample_rank"] for row in rows)[:50] == [row["sample_rank"] for row in sample_rows(rows, 50)]


def test_sample_skips_rows_without_rank():
    rows = [{"sample_rank": 0.5}, {"prompt_sample": "no rank"}, {"sample_rank": 0.1}]

    assert sample_rows(rows, 5) == [{"sample_rank": 0.1}, {"sample_rank": 0.5}]


@pytest.mark.parametrize(("text_chars", "prompt", "completion"), [(256, "p" * 256, "c" * 256), (8, "p" * 8, "c" * 8), (0, None, None)])
def test_feature_row_keeps_bounded_texts(text_chars, prompt, completion):
    event = InferenceEvent(event_id="e1", timestamp=datetime(2026, 12, 1, tzinfo=timezone.utc), app="a", model="m",
                           prompt="p" * 1000, completion="c" * 1000)

    row = feature_row(event, None, CLEAN, text_chars)

    assert (row["prompt_sample"], row["completion_sample"]) == (prompt, completion)
    assert row["sample_rank"] == sample_rank("e1")
    assert 0.0 <= row["sample_rank"] < 1.0


def test_missing_completion_has_no_sample():
    event = InferenceEvent(event_id="e2", timestamp=datetime(2026, 12, 1, tzinfo=timezone.utc), app="a", model="m",
                           prompt="hello", completion=None)

    assert feature_row(event, None, CLEAN)["completion_sample"] is None


# ----- profiles and tests on synthetic embeddings -----


def test_profile_estimates_covariance_traces():
    rng = np.random.default_rng(0)
    # Independent directions with decaying variances: tr(S), tr(S^2) known exactly.
    variances = 1 / np.arange(1, DIMENSION + 1) ** 1.2
    variances *= 0.7 / variances.sum()
    estimates = [text_profile(rng.normal(size=(200, DIMENSION)) * np.sqrt(variances)) for _ in range(100)]

    assert np.mean([p.trace for p in estimates]) == pytest.approx(0.7, rel=0.01)
    assert np.mean([p.trace_sq for p in estimates]) == pytest.approx(np.sum(variances**2), rel=0.03)


def test_profile_needs_more_rows_than_prototypes():
    rng = np.random.default_rng(1)

    assert text_profile(unit_rows(rng, PROTOTYPES, topic(1))) is None
    assert text_profile(unit_rows(rng, PROTOTYPES + 1, topic(1))).n == PROTOTYPES + 1


def test_profile_survives_json():
    profile = text_profile(unit_rows(np.random.default_rng(2), 200, topic(2)))

    restored = TextProfile.from_json(json.loads(json.dumps(profile.to_json())))

    assert restored.n == 200
    assert np.allclose(restored.centroid, profile.centroid, atol=1e-6)
    assert np.allclose(restored.prototypes, profile.prototypes, atol=1e-6)
    assert (restored.novelty_threshold, restored.novel_count) == (profile.novelty_threshold, profile.novel_count)
    assert restored.novel_count == 10


def test_same_topic_is_ok():
    rng = np.random.default_rng(3)
    reference = {"prompt": text_profile(unit_rows(rng, 200, topic(3)))}

    result = check_text_drift(reference, {"prompt": unit_rows(rng, 200, topic(3))})

    assert result.status == "ok"
    assert [f.status for f in result.fields] == ["ok", "no_data"]
    assert result.fields[0].threshold == 0.001 / 2


def test_new_topic_in_fifth_drifts():
    rng = np.random.default_rng(4)
    reference = {field: text_profile(unit_rows(rng, 200, topic(4))) for field in ("prompt", "completion")}
    current = {field: np.vstack([unit_rows(rng, 160, topic(4)), unit_rows(rng, 40, topic(5))]) for field in reference}

    result = check_text_drift(reference, current)
    prompt = result.fields[0]

    assert result.status == "drifted"
    assert result.drifted_fields == ("prompt", "completion")
    assert prompt.threshold == 0.001 / 4
    assert prompt.novel_share_reference == 0.05
    assert prompt.novel_share_current >= 0.2
    assert prompt.novelty_p < 1e-6


def test_shift_of_all_traffic_raises_distance_test():
    rng = np.random.default_rng(5)
    reference = text_profile(unit_rows(rng, 200, topic(6)))
    moved = topic(6) + 0.25 * topic(7)

    p_value, distance, expected = distance_test(reference, unit_rows(rng, 200, moved))

    assert p_value < 1e-6
    assert distance > 3 * expected


def test_distance_test_false_alarm_rate_is_near_alpha():
    rng = np.random.default_rng(6)
    # Decaying variances, like sentence embeddings, whose first directions carry most of the variance.
    variances = 1 / np.arange(1, DIMENSION + 1) ** 1.2
    variances *= 0.7 / variances.sum()
    p_values = []
    for _ in range(400):
        reference = text_profile(rng.normal(size=(100, DIMENSION)) * np.sqrt(variances))
        p_values.append(distance_test(reference, rng.normal(size=(100, DIMENSION)) * np.sqrt(variances))[0])

    assert 0.03 <= np.mean(np.array(p_values) < 0.05) <= 0.09


@pytest.mark.parametrize(
    ("reference_rows", "current_rows", "status"),
    [(200, 40, "insufficient_data"), (40, 200, "insufficient_data"), (200, 50, "ok")],
)
def test_small_samples_are_insufficient_data(reference_rows, current_rows, status):
    rng = np.random.default_rng(7)
    reference = {"completion": text_profile(unit_rows(rng, reference_rows, topic(9)))}

    result = check_text_drift(reference, {"completion": unit_rows(rng, current_rows, topic(9))})

    assert result.status == status
    assert result.fields[1].n_current == current_rows


def test_no_reference_is_reported():
    result = check_text_drift({}, {"prompt": unit_rows(np.random.default_rng(8), 60, topic(10))})

    assert result.status == "no_reference"
    assert [(f.field, f.status, f.n_current) for f in result.fields] == [("prompt", "no_data", 60), ("completion", "no_data", 0)]


def test_embed_sample_batches_both_fields():
    class CountingEncoder:
        calls: list[int] = []

        def encode(self, texts):
            self.calls.append(len(texts))
            return np.tile(np.eye(DIMENSION)[0], (len(texts), 1))

    encoder = CountingEncoder()
    sample = [{"prompt_sample": "a", "completion_sample": "b"}, {"prompt_sample": " ", "completion_sample": "c"}]

    vectors = embed_sample(sample, encoder)

    assert encoder.calls == [3]
    assert {field: len(rows) for field, rows in vectors.items()} == {"prompt": 1, "completion": 2}


@pytest.mark.parametrize("settings", [{"min_texts": 10}, {"sample_size": 40, "min_texts": 50}, {"alpha": 0.0}])
def test_invalid_text_settings_raise(settings):
    with pytest.raises(ConfigurationError):
        TextDriftSettings(**settings)


def test_cached_encoder_embeds_each_text_once():
    class CountingEncoder:
        texts: list[str] = []

        def encode(self, texts):
            self.texts.extend(texts)
            return np.array([[float(len(text))] for text in texts])

    inner = CountingEncoder()
    encoder = embed_ahead([{"sample_rank": 0.1, "prompt_sample": "ab", "completion_sample": "abc"}], 10, inner)

    vectors = encoder.encode(["abc", "abcd", "ab"])

    assert vectors.tolist() == [[3.0], [4.0], [2.0]]
    assert inner.texts == ["ab", "abc", "abcd"]


class HashEncoder:
    """Unit vectors that depend only on the text, with a log of every text embedded."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    def encode(self, texts):
        self.texts.extend(texts)
        rows = [np.random.default_rng(list(text.encode())).normal(size=DIMENSION) for text in texts]
        return np.array([row / np.linalg.norm(row) for row in rows]).reshape(len(texts), DIMENSION)


def test_embed_sample_reuses_stored_vectors():
    encoder = HashEncoder()
    stored = encoder.encode(["first prompt"])[0]
    encoder.texts.clear()
    sample = [
        {"sample_rank": 0.1, "prompt_sample": "first prompt", "prompt_vector": pack_vector(stored),
         "completion_sample": "first answer"},
        {"sample_rank": 0.2, "prompt_sample": "second prompt", "prompt_vector": "not base64!",
         "completion_sample": "second answer"},
    ]

    vectors = embed_sample(sample, encoder)

    assert encoder.texts == ["second prompt", "first answer", "second answer"]
    assert np.allclose(vectors["prompt"][0], stored, atol=1e-7)
    assert np.allclose(vectors["prompt"][1], HashEncoder().encode(["second prompt"])[0])


def test_embed_ahead_skips_texts_with_stored_vectors():
    encoder = HashEncoder()
    sample = [
        {"sample_rank": 0.1, "prompt_sample": "kept", "prompt_vector": pack_vector(np.eye(DIMENSION)[0]),
         "completion_sample": "fresh"},
    ]

    embed_ahead(sample, 10, encoder)

    assert encoder.texts == ["fresh"]


@pytest.mark.parametrize("packed", [None, "", "abc", 12, "AAAA" * 3 + "A"])
def test_unreadable_stored_vector_is_none(packed):
    assert unpack_vector(packed) is None


def embed_while_arriving(rows: list[dict], expected_rows: int, settings: TextDriftSettings) -> set[int]:
    """Return the ids of the rows embedded at ingest, with rows arriving in list order."""
    embedded = set()
    for seen, row in enumerate(rows, start=1):
        if row["sample_rank"] < ingest_rank_cutoff(expected_rows, seen, settings.sample_size, settings.min_texts):
            embedded.add(id(row))
    return embedded


@pytest.mark.parametrize(
    ("expected_rows", "window_rows", "max_mean_embedded"),
    [
        (200, 200, 1.35),
        (1_000, 1_000, 1.35),
        (10_000, 10_000, 1.35),
        # After a first window that began 59 s into a 60 s window: 1.25 * (1 + ln 60) = 6.4.
        (250, 15_000, 6.6),
    ],
)
def test_ingest_cutoff_covers_sample(expected_rows, window_rows, max_mean_embedded):
    # 300 windows, with the event-id hashes the worker uses.
    settings = TextDriftSettings()
    complete, embedded = 0, []
    for window in range(300 if window_rows <= 10_000 else 30):
        rows = [{"sample_rank": sample_rank(f"w{window}-e{index}")} for index in range(window_rows)]
        early = embed_while_arriving(rows, expected_rows, settings)
        complete += all(id(row) in early for row in sample_rows(rows, settings.sample_size))
        embedded.append(len(early))

    windows = len(embedded)
    assert complete >= windows - max(1, windows // 50)  # about 1 window in 500 misses part of its sample
    assert np.mean(embedded) >= 1.15 * settings.sample_size
    assert np.mean(embedded) <= max_mean_embedded * settings.sample_size


@pytest.mark.parametrize("expected_rows", [None, 0, 49])
def test_no_ingest_embedding_without_a_testable_previous_window(expected_rows):
    assert ingest_rank_cutoff(expected_rows, 1, 150, 50) == 0.0


def test_ingest_embedding_keeps_drift_result(tmp_path):
    url = f"sqlite:///{tmp_path / 'ingest.db'}"
    upgrade(url)
    settings = Settings(database_url=url, window_seconds=60, window_grace_seconds=5, window_idle_close_seconds=30,
                        drift_min_rows=50, text_sample_size=60, text_min_texts=40, _env_file=None)
    encoder = HashEncoder()
    pipeline = Pipeline(make_engine(url), settings, "events", encoder)
    start = datetime(2026, 12, 1, 9, 0, tzinfo=timezone.utc)
    later = datetime.now(timezone.utc) + timedelta(hours=1)

    def feed(window: int) -> None:
        events = [
            InferenceEvent(event_id=f"w{window}-e{index}", timestamp=start + timedelta(seconds=60 * window + index * 0.25),
                           app="assistant", model="gpt-4o-mini", prompt=f"question {index} of window {window}",
                           completion=f"answer {index}")
            for index in range(200)
        ]
        messages = [RawMessage(0, 200 * window + index, encode_event(event)) for index, event in enumerate(events)]
        records, dead = pipeline.prepare(messages)
        assert dead == []
        pipeline.store(records)

    feed(0)
    assert encoder.texts == []  # no previous window: nothing is embedded at ingest
    pipeline.close_due({0}, later)
    encoder.texts.clear()
    feed(1)
    at_ingest = len(encoder.texts)
    with Session(pipeline.engine) as session:
        rows = session.scalars(select(WindowEvent.features)).all()
    closed = pipeline.close_due({0}, later)

    assert len(closed) == 1
    # 1.25 times the 60-row sample is expected below the cutoff, two texts each.
    assert 2 * 60 <= at_ingest <= 2 * 100
    assert sum("prompt_vector" in row for row in rows) == at_ingest // 2
    assert encoder.texts[at_ingest:] == []  # the whole sample had its vectors
    with Session(pipeline.engine) as session:
        stats = session.scalars(select(WindowStats).order_by(WindowStats.window_start)).all()
    text = stats[1].details["drift"]["text"]
    reference = Profile.from_json(session_reference(url))
    bare = [{key: value for key, value in row.items() if not key.endswith("_vector")} for row in rows]
    check_settings = CheckSettings.from_settings(settings)
    profile, vectors = profile_window(bare, check_settings, HashEncoder())
    drift, _ = check_window(reference, profile, vectors, check_settings)
    assert [(f["n_current"], f["score"]) for f in text["fields"]] == [
        (f.n_current, pytest.approx(f.score, rel=1e-6)) for f in drift.text.fields
    ]


def test_ingest_goes_on_when_the_encoder_fails(tmp_path, caplog):
    class BrokenEncoder:
        calls = 0

        def encode(self, texts):
            self.calls += 1
            raise DetectorError("the sentence-embedding model failed to load")

    url = f"sqlite:///{tmp_path / 'broken.db'}"
    upgrade(url)
    settings = Settings(database_url=url, window_seconds=60, drift_min_rows=50, text_sample_size=60, text_min_texts=40,
                        _env_file=None)
    encoder = BrokenEncoder()
    pipeline = Pipeline(make_engine(url), settings, "events", encoder)
    pipeline.sink._last_window_rows[("assistant", "gpt-4o-mini")] = 100  # as if a 100-row window had closed
    start = datetime(2026, 12, 1, 9, 0, tzinfo=timezone.utc)
    events = [
        InferenceEvent(event_id=f"e{index}", timestamp=start + timedelta(seconds=index), app="assistant",
                       model="gpt-4o-mini", prompt=f"question {index}", completion=f"answer {index}")
        for index in range(40)
    ]

    first, _ = pipeline.prepare([RawMessage(0, index, encode_event(event)) for index, event in enumerate(events[:20])])
    second, _ = pipeline.prepare([RawMessage(0, 20 + index, encode_event(event)) for index, event in enumerate(events[20:])])

    assert len(first) + len(second) == 40
    assert not any("prompt_vector" in record.item.features for record in first + second)
    assert encoder.calls == 1  # the second batch does not try again
    assert "embedding the text-drift sample at ingest is off" in caplog.text


def session_reference(url: str) -> dict:
    with Session(make_engine(url)) as session:
        return session.scalars(select(ReferenceProfile.profile)).one()


# ----- replay of public data through the sink, with the real encoder -----

WINDOW_S = 60.0
EVENTS_PER_WINDOW = 200
STATIONARY_WINDOWS = 20
SHIFT_WINDOWS = 2
POOL_ROWS = 1000


def pool_file(datasets_dir: Path, folder: Path, rows: int) -> Path:
    """Write `rows` random codealpaca rows to a file outside the repository, to bound the texts to embed."""
    lines = (datasets_dir / "codealpaca.jsonl").read_text(encoding="utf-8").splitlines()
    path = folder / "codealpaca_pool.jsonl"
    path.write_text("\n".join(random.Random(11).sample(lines, rows)) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def replayed(datasets_dir, tmp_path_factory):
    """Replay 1 reference window, 20 stationary windows and 2 windows with 20% role-play through the sink."""
    folder = tmp_path_factory.mktemp("text_drift_replay")
    pool = pool_file(datasets_dir, folder, POOL_ROWS)
    start = datetime(2026, 12, 1, 9, 0, tzinfo=timezone.utc)
    segments = shift_scenario(
        baseline=[ScenarioSource(pool)],
        shift=[ScenarioSource(pool, weight=0.8), ScenarioSource(datasets_dir / "gpteacher_roleplay.jsonl", weight=0.2)],
        windows_baseline=1 + STATIONARY_WINDOWS, windows_shift=SHIFT_WINDOWS, events_per_window=EVENTS_PER_WINDOW,
        window_seconds=WINDOW_S, start=start,
    )
    url = f"sqlite:///{folder / 'replay.db'}"
    upgrade(url)
    # One cache for the whole replay, because windows drawn from the same pool repeat texts.
    encoder = CachedEncoder(load_encoder(), [])
    sink = WindowSink(make_engine(url), Settings(database_url=url, window_seconds=WINDOW_S), "events", encoder)
    records = [
        Record(0, offset, ScoredEvent(event, feature_row(event, None, CLEAN), CLEAN))
        for offset, event in enumerate(Timeline(segments, now=start))
    ]
    for batch in range(0, len(records), 500):
        sink.ingest(records[batch : batch + 500])
    sink.close_due({0}, now=datetime.now(timezone.utc) + timedelta(hours=1))
    with Session(sink.engine) as session:
        windows = session.scalars(select(WindowStats).order_by(WindowStats.window_start)).all()
        findings = session.scalars(select(Finding).order_by(Finding.window_start)).all()
        session.expunge_all()
    return start, windows, findings


def window_index(start: datetime, moment: datetime) -> int:
    return round((moment.replace(tzinfo=timezone.utc) - start).total_seconds() / WINDOW_S)


def test_replay_closes_every_window(replayed):
    start, windows, _ = replayed

    assert [window.event_count for window in windows] == [EVENTS_PER_WINDOW] * (1 + STATIONARY_WINDOWS + SHIFT_WINDOWS)
    assert windows[0].drift_status == "reference_set"


def test_stationary_traffic_raises_no_drift(replayed):
    start, windows, findings = replayed
    stationary = range(1, 1 + STATIONARY_WINDOWS)

    assert [windows[index].drift_status for index in stationary] == ["ok"] * STATIONARY_WINDOWS
    drift_or_traffic = [f for f in findings if f.kind in ("drift", "traffic")]
    assert [f.subject for f in drift_or_traffic if window_index(start, f.window_start) in stationary] == []
    text_p_values = [min(f["score"] for f in windows[index].details["drift"]["text"]["fields"]) for index in stationary]
    assert min(text_p_values) > 0.001 / 4


def test_topic_shift_raises_text_drift_within_two_windows(replayed):
    start, _, findings = replayed
    text = [f for f in findings if f.kind == "drift" and f.subject == "text"]

    assert text, "no text drift finding in the shifted windows"
    assert window_index(start, text[0].window_start) in (1 + STATIONARY_WINDOWS, 2 + STATIONARY_WINDOWS)
    assert text[0].sample_size == 150
    assert text[0].threshold == 0.001 / 4
    assert text[0].score < text[0].threshold
    assert text[0].test.startswith("novelty share (Fisher exact)")
