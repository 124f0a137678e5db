"""Window-close check time at several window sizes, with and without text drift.

It times what the sink runs on the rows of a closing window. First `profile_window` computes the
feature sketches and the language of the sampled prompts, and with text drift it embeds those
of the 150 sampled prompts and 150 sampled completions that have no vector yet. Then
`check_window` compares the profile with a reference profiled beforehand, and the safety-rate
and unknown-cost checks run. SQL reads and writes are left out. The rows are the feature rows
that `controlplane.features.feature_row` builds for the benchmark events.

Text drift is timed twice: as the worker runs it, where the rows below the ingest cutoff were
embedded while they arrived (that time is reported apart as `ingest_embedding_s`), and with
every sampled text embedded at close, as for a window whose size the worker could not foresee.
"""

from __future__ import annotations

import logging
import statistics
import time
from typing import Any

from controlplane.bench import traffic
from controlplane.detectors.safety import SafetyResult
from controlplane.detectors.text_drift import (
    RANK_KEY,
    TEXT_FIELDS,
    Encoder,
    ingest_rank_cutoff,
    pack_vector,
    text_key,
    vector_key,
)
from controlplane.detectors.window_checks import (
    CheckSettings,
    Profile,
    check_safety_rate,
    check_unpriced,
    check_window,
    profile_window,
)
from controlplane.features import feature_row
from controlplane.pricing import PriceTable
from controlplane.settings import Settings

log = logging.getLogger(__name__)

SIZES = (1_000, 10_000, 100_000)
REFERENCE_ROWS = 5_000  # CONTROLPLANE_REFERENCE_MAX_ROWS by default
CLEAN = SafetyResult(spans=(), toxicity=0.0, pii_count=0)


def feature_rows(pairs: list[tuple[str, str]], count: int, seed: int) -> list[dict[str, Any]]:
    """Return the feature rows of `count` benchmark events."""
    prices = PriceTable.load()
    rows = []
    for event in traffic.events(pairs, count, traffic.now_utc(), rate=1000.0, seed=seed):
        rows.append(feature_row(event, prices.cost(event.model, event.usage, at=event.timestamp), CLEAN))
    return rows


def embed_at_ingest(rows: list[dict[str, Any]], checks: CheckSettings, encoder: Encoder) -> tuple[list[dict[str, Any]], float]:
    """Copy `rows` with the vectors the worker stores at ingest when the previous window had as many rows; return the seconds."""
    cutoff = ingest_rank_cutoff(len(rows), 0, checks.text.sample_size, checks.text.min_texts)
    copies = [dict(row) for row in rows]
    slots = [(row, field) for row in copies if row[RANK_KEY] < cutoff for field in TEXT_FIELDS if row.get(text_key(field))]
    began = time.perf_counter()
    vectors = encoder.encode([row[text_key(field)] for row, field in slots])
    seconds = time.perf_counter() - began
    for (row, field), vector in zip(slots, vectors, strict=True):
        row[vector_key(field)] = pack_vector(vector)
    return copies, seconds


def time_close(rows: list[dict[str, Any]], reference: Profile, checks: CheckSettings, encoder: Encoder | None) -> float:
    """Profile and check one window of `rows` against `reference`, and return the seconds it took."""
    began = time.perf_counter()
    profile, vectors = profile_window(rows, checks, encoder)
    check_window(reference, profile, vectors, checks)
    check_safety_rate(reference, rows)
    check_unpriced(rows, ["gpt-4o-mini"])
    return time.perf_counter() - began


def drift_timings(pairs: list[tuple[str, str]], sizes: tuple[int, ...] = SIZES, repeats: int = 3) -> dict[str, Any]:
    """Return the median close-check seconds per window size: without text drift, with it, and with all of it at close."""
    from controlplane.detectors.embeddings import load_encoder

    encoder = load_encoder()
    with_text = CheckSettings.from_settings(Settings(_env_file=None))
    without_text = CheckSettings.from_settings(Settings(text_drift=False, _env_file=None))
    reference_rows = feature_rows(pairs, REFERENCE_ROWS, seed=101)
    references = {
        "without_text": profile_window(reference_rows, without_text, None)[0],
        "with_text": profile_window(reference_rows, with_text, encoder)[0],
    }
    variants = (("without_text", without_text, None), ("with_text", with_text, encoder))
    for name, checks, used in variants:
        time_close(reference_rows[:1000], references[name], checks, used)  # first-call imports stay out of the figures
    results: dict[str, Any] = {"repeats": repeats, "reference_rows": REFERENCE_ROWS}
    for size in sizes:
        rows = feature_rows(pairs, size, seed=size)
        embedded, ingest_seconds = embed_at_ingest(rows, with_text, encoder)
        runs = (
            ("without_text", rows, without_text, None, "without_text"),
            ("with_text", embedded, with_text, encoder, "with_text"),
            ("with_text_all_at_close", rows, with_text, encoder, "with_text"),
        )
        timings = {}
        for name, window, checks, used, reference in runs:
            seconds = [time_close(window, references[reference], checks, used) for _ in range(repeats)]
            timings[name] = round(statistics.median(seconds), 3)
        timings["ingest_embedding_s"] = round(ingest_seconds, 3)
        timings["ingest_embedded_rows"] = sum(1 for row in embedded if any(vector_key(f) in row for f in TEXT_FIELDS))
        results[str(size)] = timings
        log.info("drift check on %d rows: %s", size, timings)
    return results
