"""Text drift: a window's sampled prompt and completion embeddings against the reference's.

Sample: the rows of a window with the smallest `sample_rank`, a hash of the event id that
`controlplane.features` stores, so the sample does not depend on arrival order or on which
worker closes the window. Only the sample is embedded (all-MiniLM-L6-v2, unit-length vectors).
The worker embeds the rows likely to fall in the sample as they arrive (`ingest_rank_cutoff`)
and keeps the vectors in the feature row, so that closing a window embeds only the rest.

Two tests run per text field, and `alpha` is split evenly over every test run (Bonferroni):

- Novelty share, for new topics in part of the traffic. A profile keeps `PROTOTYPES` of its
  sampled embeddings and a similarity threshold: the `NOVELTY_QUANTILE` quantile of each
  sampled text's highest cosine similarity to the prototypes, itself left out. A current text
  is novel when its highest similarity to the reference's prototypes is below that threshold.
  Fisher's exact test (one-sided) compares the novel shares of the two samples.
- Mean distance, for a shift of all the traffic. The statistic is T = |mean(current) -
  mean(reference)|^2. Without drift the difference of the two sample means is close to normal
  with covariance (1/n + 1/m) S, where S is the covariance of one embedding, so T is a
  weighted sum of chi-square variables. Its p-value comes from a shifted, scaled chi-square
  with the same first three cumulants (Pearson's approximation), using tr(S), tr(S^2) and
  tr(S^3) estimated once from the reference sample.

Both tests assume the sampled events are independent. Bursts of near-identical requests in one
window (a retry loop, one user pasting the same document) break that and raise false alarms.
"""

from __future__ import annotations

import base64
import heapq
import logging
import math
import time
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Protocol, Sequence

import numpy as np
from scipy.stats import chi2, fisher_exact

from controlplane.errors import ConfigurationError

logger = logging.getLogger(__name__)

TEXT_FIELDS = ("prompt", "completion")
RANK_KEY = "sample_rank"
PROTOTYPES = 32
"""Sampled embeddings a profile keeps for the novelty test, stored as int8."""
NOVELTY_QUANTILE = 0.05
"""Share of a reference sample that its own similarity threshold calls novel."""
TEST_NAME = "novelty share (Fisher exact) and mean distance (Pearson chi-square)"
INGEST_HEADROOM = 1.25
"""Expected rows embedded at ingest per window, as a multiple of the sample size.

With a window of the expected size, the rows below the cutoff number 1.25 times the sample on
average. By the binomial distribution, they are fewer than a 150-row sample in about 1 window of
480 at 100,000 rows, 1 of 520 at 10,000 rows and 1 of 1,260 at 1,000 rows.
"""


def text_key(field: str) -> str:
    """Return the feature-row key that contains the sampled text of `field`."""
    return f"{field}_sample"


def vector_key(field: str) -> str:
    """Return the feature-row key that contains the embedding of `field`'s sampled text, when it was embedded at ingest."""
    return f"{field}_vector"


def pack_vector(vector: np.ndarray) -> str:
    """Encode one embedding for a feature row: base64 of little-endian float32."""
    return _b64(np.asarray(vector, dtype="<f4"))


def unpack_vector(packed: Any) -> np.ndarray | None:
    """Decode a vector written by `pack_vector`, or return None for anything else, so that the text is embedded again."""
    if not isinstance(packed, str):
        return None
    try:
        raw = base64.b64decode(packed, validate=True)
    except ValueError:
        return None
    if not raw or len(raw) % 4:
        return None
    return np.frombuffer(raw, dtype="<f4").astype(np.float64)


def ingest_rank_cutoff(expected_rows: int | None, seen_rows: int, sample_size: int, min_texts: int) -> float:
    """Return the sample rank below which an arriving event's texts are embedded at once.

    `expected_rows` is the size of the previous window of the same app and model, and
    `seen_rows` counts the events of the current window so far, this one included. Without a
    previous window, or when it was too small to test, nothing is embedded early and closing
    embeds the sample. The cutoff follows the larger of the two counts, so it only falls as a
    window grows, and stays above the final one. A row of the final sample, whose rank is about
    sample_size / rows, therefore found it above its rank when it arrived, in all but about 1
    window of 500. A window larger than expected (the one after a window that began mid-way)
    then costs 1 + ln(rows / expected_rows) times the expected embeddings, not rows /
    expected_rows times. A window smaller than expected leaves part of its sample to be
    embedded when it closes.
    """
    if not expected_rows or expected_rows < min_texts:
        return 0.0
    return min(1.0, INGEST_HEADROOM * sample_size / max(expected_rows, seen_rows))


class Encoder(Protocol):
    """Anything that turns texts into unit-length embedding rows."""

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...


@dataclass(frozen=True)
class TextDriftSettings:
    """Settings of the text drift check."""

    sample_size: int = 150
    """Texts per field embedded per window."""
    min_texts: int = 50
    """Texts per field needed on each side to test that field, below which it is "insufficient_data"."""
    alpha: float = 0.001
    """Bound on the false-alarm rate of one window, split over every test run."""

    def __post_init__(self) -> None:
        if self.min_texts < PROTOTYPES + 1:
            raise ConfigurationError(
                f"invalid min_texts {self.min_texts}: set at least {PROTOTYPES + 1}, more than the {PROTOTYPES} prototypes"
            )
        if self.sample_size < self.min_texts:
            raise ConfigurationError(
                f"invalid sample_size {self.sample_size}: it is below min_texts {self.min_texts}, so no field could be tested"
            )
        if not 0 < self.alpha < 1:
            raise ConfigurationError(f"invalid alpha {self.alpha}: set a probability between 0 and 1, e.g. 0.001")


@dataclass(frozen=True)
class TextProfile:
    """Statistics of one text field of one window's sample, as much as the text tests need."""

    n: int
    centroid: np.ndarray
    trace: float
    """Unbiased estimate of tr(S), the total variance of one embedding."""
    trace_sq: float
    """Unbiased estimate of tr(S^2) for normal data."""
    trace_cube: float
    """Plug-in estimate of tr(S^3), biased upwards, which makes the p-value conservative."""
    prototypes: np.ndarray
    """Unit-length rows, after an int8 round trip so that stored and computed values agree."""
    novelty_threshold: float
    novel_count: int
    """Sampled texts below `novelty_threshold`, each compared with the prototypes other than itself."""

    def to_json(self) -> dict[str, Any]:
        """Convert the profile to JSON types; arrays become base64 of little-endian bytes."""
        codes, scales = _quantize(self.prototypes)
        return {
            "n": self.n, "centroid": _b64(np.asarray(self.centroid, dtype="<f4")),
            "trace": self.trace, "trace_sq": self.trace_sq, "trace_cube": self.trace_cube,
            "prototypes": _b64(codes), "prototype_scales": _b64(scales),
            "novelty_threshold": self.novelty_threshold, "novel_count": self.novel_count,
        }

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> TextProfile:
        """Read a profile written by `to_json`."""
        centroid = np.frombuffer(base64.b64decode(document["centroid"]), dtype="<f4").astype(np.float64)
        codes = np.frombuffer(base64.b64decode(document["prototypes"]), dtype=np.int8).reshape(-1, len(centroid))
        scales = np.frombuffer(base64.b64decode(document["prototype_scales"]), dtype="<f4")
        return cls(
            int(document["n"]), centroid, float(document["trace"]), float(document["trace_sq"]),
            float(document["trace_cube"]), _dequantize(codes, scales),
            float(document["novelty_threshold"]), int(document["novel_count"]),
        )


def _b64(array: np.ndarray) -> str:
    return base64.b64encode(array.tobytes()).decode("ascii")


def _quantize(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scales = np.abs(rows).max(axis=1) / 127.0
    scales[scales == 0] = 1.0
    codes = np.round(rows / scales[:, None]).astype(np.int8)
    return codes, scales.astype("<f4")


def _dequantize(codes: np.ndarray, scales: np.ndarray) -> np.ndarray:
    rows = codes.astype(np.float64) * scales.astype(np.float64)[:, None]
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return rows / np.where(norms == 0, 1.0, norms)


def text_profile(vectors: np.ndarray) -> TextProfile | None:
    """Profile one field's sampled embeddings, in sample order; None for too few rows to estimate the traces."""
    n = len(vectors)
    if n <= PROTOTYPES:
        return None
    data = np.asarray(vectors, dtype=np.float64)
    centroid = data.mean(axis=0)
    centered = data - centroid
    gram = centered @ centered.T / (n - 1)  # n x n: cheaper than the d x d covariance when n < d
    gram_sq = gram @ gram
    trace = float(np.trace(gram))
    # The plug-in tr(S^2) is biased upwards by about tr(S)^2 / n; this estimator is unbiased for normal data.
    trace_sq = (n - 1) ** 2 / ((n - 2) * (n + 1)) * (float(np.trace(gram_sq)) - trace**2 / (n - 1))
    trace_cube = float(np.sum(gram_sq * gram))

    prototypes = _dequantize(*_quantize(data[:PROTOTYPES]))
    similarity = data @ prototypes.T
    similarity[np.arange(PROTOTYPES), np.arange(PROTOTYPES)] = -np.inf  # leave each prototype out
    nearest = np.sort(similarity.max(axis=1))
    cut = int(NOVELTY_QUANTILE * n)
    threshold = float(nearest[cut])
    novel = int(np.sum(nearest < threshold))
    return TextProfile(n, centroid, trace, trace_sq, trace_cube, prototypes, threshold, novel)


def sample_rows(rows: Sequence[Mapping[str, Any]], size: int) -> list[Mapping[str, Any]]:
    """Return up to `size` rows with the smallest sample rank, in rank order; rows without a rank are left out."""
    ranked = (row for row in rows if row.get(RANK_KEY) is not None)
    return heapq.nsmallest(size, ranked, key=lambda row: row[RANK_KEY])


def sample_texts(rows: Sequence[Mapping[str, Any]], field: str) -> list[str]:
    """Return the non-empty sampled texts of `field` in `rows`."""
    key = text_key(field)
    return [row[key] for row in rows if has_text(row, field)]


def embed_sample(sample: Sequence[Mapping[str, Any]], encoder: Encoder) -> dict[str, np.ndarray]:
    """Return the embedding of each field's sampled texts, leaving out a field without texts.

    A row's vector stored at ingest is used as it is, and the other texts are embedded in one batch.
    """
    rows = {field: [row for row in sample if has_text(row, field)] for field in TEXT_FIELDS}
    stored = {field: [unpack_vector(row.get(vector_key(field))) for row in rows[field]] for field in TEXT_FIELDS}
    missing = [
        row[text_key(field)]
        for field in TEXT_FIELDS
        for row, vector in zip(rows[field], stored[field])
        if vector is None
    ]
    started = time.perf_counter()
    fresh = iter(encoder.encode(missing)) if missing else iter(())
    if missing:
        logger.debug("embedded %d sampled texts in %.2f s", len(missing), time.perf_counter() - started)
    embedded = {}
    for field in TEXT_FIELDS:
        if rows[field]:
            vectors = [vector if vector is not None else next(fresh) for vector in stored[field]]
            embedded[field] = np.asarray(vectors, dtype=np.float64)
    return embedded


def has_text(row: Mapping[str, Any], field: str) -> bool:
    """Return whether `row` contains a non-blank sampled text of `field`."""
    text = row.get(text_key(field))
    return isinstance(text, str) and bool(text.strip())


class CachedEncoder:
    """Encoder that embeds the texts it is given up front, then embeds only texts it has not seen."""

    def __init__(self, encoder: Encoder, texts: Sequence[str]) -> None:
        self._encoder = encoder
        self._vectors: dict[str, np.ndarray] = {}
        self._add(texts)

    def _add(self, texts: Sequence[str]) -> None:
        missing = sorted({text for text in texts if text not in self._vectors})
        if missing:
            self._vectors.update(zip(missing, np.asarray(self._encoder.encode(missing))))

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Return the embedding of each text, embedding those not seen before."""
        self._add(texts)
        return np.array([self._vectors[text] for text in texts])


def embed_ahead(rows: Sequence[Mapping[str, Any]], size: int, encoder: Encoder) -> CachedEncoder:
    """Embed the sampled texts of `rows` without a stored vector now, for a later `embed_sample` to find them cached."""
    sample = sample_rows(rows, size)
    texts = [
        row[text_key(field)]
        for field in TEXT_FIELDS
        for row in sample
        if has_text(row, field) and unpack_vector(row.get(vector_key(field))) is None
    ]
    return CachedEncoder(encoder, texts)


@dataclass(frozen=True)
class TextFieldDrift:
    """Drift of one text field: "ok", "drifted", "insufficient_data" or "no_data"."""

    field: str
    status: str
    test: str | None
    score: float | None
    """Smaller p-value of the two tests."""
    threshold: float | None
    """p-value below which a test counts as drift: alpha over the number of tests run in the window."""
    n_reference: int
    n_current: int
    novelty_p: float | None = None
    novel_share_reference: float | None = None
    novel_share_current: float | None = None
    distance_p: float | None = None
    distance: float | None = None
    """T, the squared distance between the two mean embeddings."""
    expected_distance: float | None = None
    """Mean of T without drift, (1/n + 1/m) tr(S)."""
    centroid_cosine: float | None = None
    """Cosine similarity of the two mean embeddings."""


@dataclass(frozen=True)
class TextDriftResult:
    """Text drift of one window: "ok", "drifted", "insufficient_data" or "no_reference"."""

    status: str
    fields: tuple[TextFieldDrift, ...]

    @property
    def drifted_fields(self) -> tuple[str, ...]:
        """Names of the fields that drifted."""
        return tuple(f.field for f in self.fields if f.status == "drifted")

    @property
    def min_score(self) -> float | None:
        """Smallest p-value among the tested fields."""
        scores = [f.score for f in self.fields if f.score is not None]
        return min(scores) if scores else None

    @property
    def threshold(self) -> float | None:
        """p-value threshold of each test after the Bonferroni split."""
        return next((f.threshold for f in self.fields if f.threshold is not None), None)

    def to_json(self) -> dict[str, Any]:
        """Convert the result to a dict of JSON types."""
        return {"status": self.status, "fields": [asdict(field) for field in self.fields]}


def check_text_drift(
    reference: Mapping[str, TextProfile] | None,
    current: Mapping[str, np.ndarray],
    settings: TextDriftSettings = TextDriftSettings(),
) -> TextDriftResult:
    """Test the embedded sample of each text field of a window against the reference profile."""
    if not reference:
        fields = tuple(
            TextFieldDrift(name, "no_data", None, None, None, 0, len(current.get(name, ()))) for name in TEXT_FIELDS
        )
        return TextDriftResult("no_reference", fields)
    testable = [
        name for name in TEXT_FIELDS
        if name in reference and min(reference[name].n, len(current.get(name, ()))) >= settings.min_texts
    ]
    threshold = settings.alpha / max(2 * len(testable), 1)
    fields = tuple(
        _field_drift(name, reference.get(name), current.get(name), threshold if name in testable else None)
        for name in TEXT_FIELDS
    )
    if not testable:
        return TextDriftResult("insufficient_data", fields)
    return TextDriftResult("drifted" if any(f.status == "drifted" for f in fields) else "ok", fields)


def _field_drift(
    name: str, reference: TextProfile | None, vectors: np.ndarray | None, threshold: float | None
) -> TextFieldDrift:
    n_ref = reference.n if reference else 0
    n_cur = 0 if vectors is None else len(vectors)
    if reference is None or vectors is None:
        return TextFieldDrift(name, "no_data", None, None, None, n_ref, n_cur)
    if threshold is None:
        return TextFieldDrift(name, "insufficient_data", None, None, None, n_ref, n_cur)
    novelty_p, novel_share = novelty_test(reference, vectors)
    distance_p, distance, expected = distance_test(reference, vectors)
    score = min(novelty_p, distance_p)
    return TextFieldDrift(
        name, "drifted" if score < threshold else "ok", TEST_NAME, score, threshold, n_ref, n_cur,
        novelty_p, reference.novel_count / reference.n, novel_share,
        distance_p, distance, expected, _cosine(reference.centroid, vectors.mean(axis=0)),
    )


def novelty_test(reference: TextProfile, vectors: np.ndarray) -> tuple[float, float]:
    """Return the one-sided p-value that `vectors` holds more novel texts than the reference, and their share."""
    nearest = (vectors @ reference.prototypes.T).max(axis=1)
    novel = int(np.sum(nearest < reference.novelty_threshold))
    table = [[novel, len(vectors) - novel], [reference.novel_count, reference.n - reference.novel_count]]
    return float(fisher_exact(table, alternative="greater")[1]), novel / len(vectors)


def distance_test(reference: TextProfile, vectors: np.ndarray) -> tuple[float, float, float]:
    """Return the p-value of the squared distance T between the mean embeddings, T, and its mean without drift."""
    scale = 1.0 / reference.n + 1.0 / len(vectors)
    distance = float(np.sum((vectors.mean(axis=0) - reference.centroid) ** 2))
    c1 = max(reference.trace, 1e-12)
    # tr(S^2) >= tr(S)^2 / d and tr(S^3) >= tr(S^2)^2 / tr(S). The floors catch estimates that a
    # tiny or degenerate reference sample pushes below what any covariance allows.
    c2 = max(reference.trace_sq, c1**2 / len(reference.centroid))
    c3 = max(reference.trace_cube, c2**2 / c1)
    gain = scale * c3 / c2
    degrees = c2**3 / c3**2
    shift = scale * c1 - gain * degrees
    return float(chi2.sf((distance - shift) / gain, degrees)), distance, scale * c1


def _cosine(a: np.ndarray, b: np.ndarray) -> float | None:
    norms = float(np.linalg.norm(a) * np.linalg.norm(b))
    if norms == 0 or not math.isfinite(norms):
        return None
    return float(a @ b) / norms
