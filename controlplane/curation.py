"""Curation: flagged interactions and user corrections in a time range become a dataset version.

Each step is counted in the manifest. Selection keeps a time range, app, model, labels and
detector kinds. Rows labelled "incorrect" without a correction go, and so do rows whose
completion a non-PII detector flagged and that have no correction, and rows with nothing to
learn from. PII is scrubbed. Exact duplicates (same normalized prompt) and near duplicates
(MinHash LSH over character shingles of the normalized prompt) go. The split hashes a
cluster of similar prompts, not a row, so similar prompts never straddle train and eval.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
from datasketch import MinHash, MinHashLSH
from sqlalchemy import Engine, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

import controlplane
from controlplane.detectors.normalize import normalize
from controlplane.errors import ConfigurationError, ControlPlaneError, StoreError
from controlplane.export import (FlaggedFilter, Scrubber, allocate_version_dir, as_utc, chat_messages, content_hash,
                                 file_sha256, select_flagged, session_scope, write_jsonl, write_parquet)
from controlplane.jobs import register_job_kind
from controlplane.settings import get_settings
from controlplane.store.models import Alert, FlaggedInteraction, Job, utcnow
from controlplane.store.registry_models import DatasetVersion

logger = logging.getLogger(__name__)

SHINGLE_CHARS = 5
NUM_PERM = 128

# Columns of train.parquet and eval.parquet.
EXAMPLE_SCHEMA = pa.schema(
    [("event_time", pa.timestamp("us", tz="UTC"))]
    + [(name, pa.string()) for name in ("event_id", "app", "model", "label", "prompt", "completion", "source", "rejected", "cluster")]
)


@dataclass(frozen=True)
class CurationParams:
    """Settings of one curation run; `from_dict` reads them from a curation job's params."""

    name: str
    selection: FlaggedFilter
    eval_fraction: float = 0.2
    near_duplicate_threshold: float = 0.8  # estimated Jaccard similarity of prompt shingles
    split_similarity: float = 0.5  # prompts at least this similar share a split
    exclude_flagged_completions: bool = True
    alert_id: int | None = None
    data_dir: Path | None = None

    def __post_init__(self) -> None:
        if not 0.0 < self.eval_fraction < 1.0:
            raise ConfigurationError(f"invalid eval_fraction {self.eval_fraction}: use a value between 0 and 1 exclusive")
        for key in ("near_duplicate_threshold", "split_similarity"):
            if not 0.0 < getattr(self, key) <= 1.0:
                raise ConfigurationError(f"invalid {key} {getattr(self, key)}: use a value in (0, 1]")
        if self.split_similarity > self.near_duplicate_threshold:
            raise ConfigurationError("split_similarity must not exceed near_duplicate_threshold")

    @classmethod
    def from_dict(cls, params: dict[str, Any]) -> CurationParams:
        """Build from a job's params; `until` defaults to now and `since` to `days` (default 7) before it."""
        until = as_utc(params.get("until") or utcnow())
        since = as_utc(params.get("since") or until - timedelta(days=float(params.get("days", 7))))
        selection = FlaggedFilter(
            since, until, params.get("app"), params.get("model"), tuple(params.get("kinds") or ()), tuple(params.get("labels") or ())
        )
        name = params.get("name") or f"{selection.app or 'all'}-{selection.model or 'all'}"
        options = {key: params[key] for key in ("eval_fraction", "near_duplicate_threshold", "split_similarity",
                                                 "exclude_flagged_completions", "alert_id") if params.get(key) is not None}
        data_dir = Path(params["data_dir"]) if params.get("data_dir") else None
        return cls(name=name, selection=selection, data_dir=data_dir, **options)


@dataclass
class Example:
    """One curated prompt and the completion to learn, with where it came from."""

    event_id: str
    app: str
    model: str
    event_time: datetime
    label: str | None
    prompt: str
    completion: str
    source: str  # "correction" or "completion"
    rejected: str | None  # the flagged completion when a correction replaced it
    key: str = ""  # the normalized prompt
    cluster: str = ""
    split: str = ""
    minhash: MinHash | None = field(default=None, repr=False)


def normalize_prompt(text: str) -> str:
    """Normalize a prompt for duplicate detection: NFKC, look-alikes folded, case folded, spaces collapsed."""
    return " ".join(normalize(text).casefold().split())


def prompt_minhash(key: str) -> MinHash:
    """Return the MinHash of a normalized prompt's character shingles."""
    minhash = MinHash(num_perm=NUM_PERM, seed=1)
    shingles = {key[i : i + SHINGLE_CHARS] for i in range(max(1, len(key) - SHINGLE_CHARS + 1))}
    minhash.update_batch([shingle.encode("utf-8") for shingle in shingles])
    return minhash


def to_examples(rows: list[FlaggedInteraction], exclude_flagged_completions: bool, steps: list[dict]) -> list[Example]:
    """Turn flagged rows into examples, dropping those with nothing right to learn from."""
    usable = _step(steps, "incorrect without correction", rows,
                   [row for row in rows if row.label != "incorrect" or _text(row.correction)])
    if exclude_flagged_completions:
        usable = _step(steps, "flagged completion without correction", usable,
                       [row for row in usable if _text(row.correction) or not _completion_flagged(row.detectors)])
    usable = _step(steps, "empty prompt or completion", usable,
                   [row for row in usable if _text(row.prompt) and (_text(row.correction) or _text(row.completion))])
    return [_example(row) for row in usable]


def _example(row: FlaggedInteraction) -> Example:
    corrected = bool(_text(row.correction))
    return Example(
        event_id=row.event_id,
        app=row.app,
        model=row.model,
        event_time=as_utc(row.event_time),
        label=row.label,
        prompt=row.prompt,
        completion=row.correction if corrected else row.completion,
        source="correction" if corrected else "completion",
        rejected=row.completion if corrected and _text(row.completion) and row.completion != row.correction else None,
    )


def _text(value: str | None) -> bool:
    return bool(value and value.strip())


def _completion_flagged(spans: list[dict[str, Any]]) -> bool:
    # PII in a completion is scrubbed below, so only the other detectors make a completion unfit to learn.
    return any(span.get("field") == "completion" and span.get("detector") != "pii" for span in spans)


def _step(steps: list[dict], name: str, before: list, after: list) -> list:
    steps.append({"step": name, "in": len(before), "out": len(after)})
    return after


def scrub_examples(examples: list[Example], scrubber: Scrubber) -> None:
    """Replace PII in prompts, completions and rejected completions, in place."""
    for example in examples:
        example.prompt = scrubber.scrub(example.prompt)
        example.completion = scrubber.scrub(example.completion)
        example.rejected = scrubber.scrub(example.rejected)


def drop_duplicates(examples: list[Example], threshold: float, steps: list[dict]) -> list[Example]:
    """Keep one example per normalized prompt, then one per cluster of near-duplicate prompts."""
    # Corrected rows first, then the newest: they are the ones worth keeping.
    ordered = sorted(examples, key=lambda e: (e.source != "correction", -e.event_time.timestamp(), e.event_id))
    unique: dict[str, Example] = {}
    for example in ordered:
        example.key = normalize_prompt(example.prompt)
        unique.setdefault(example.key, example)
    exact = _step(steps, "exact duplicates", examples, list(unique.values()))

    lsh = MinHashLSH(threshold=threshold, num_perm=NUM_PERM)
    distinct: list[Example] = []
    for index, example in enumerate(exact):
        example.minhash = prompt_minhash(example.key)
        # LSH returns candidates only; the estimated similarity decides.
        if any(exact[other].minhash.jaccard(example.minhash) >= threshold for other in lsh.query(example.minhash)):
            continue
        lsh.insert(index, example.minhash)
        distinct.append(example)
    return _step(steps, "near duplicates", exact, distinct)


def assign_splits(examples: list[Example], eval_fraction: float, similarity: float) -> None:
    """Put each cluster of similar prompts wholly in train or eval, by a hash of the cluster."""
    parent = list(range(len(examples)))

    def root(index: int) -> int:
        while parent[index] != index:
            parent[index] = parent[parent[index]]
            index = parent[index]
        return index

    lsh = MinHashLSH(threshold=similarity, num_perm=NUM_PERM)
    for index, example in enumerate(examples):
        for other in lsh.query(example.minhash):
            if examples[other].minhash.jaccard(example.minhash) >= similarity:
                parent[root(other)] = root(index)
        lsh.insert(index, example.minhash)

    members: dict[int, list[Example]] = {}
    for index, example in enumerate(examples):
        members.setdefault(root(index), []).append(example)
    clusters = sorted((_bucket(min(e.key for e in group)), group) for group in members.values())
    eval_count = sum(1 for bucket, _ in clusters if bucket < eval_fraction)
    # A small set can hash entirely to one side: then the lowest bucket goes to eval and the
    # highest to train. A single cluster goes to train, since training needs rows more than eval.
    if len(clusters) >= 2:
        eval_count = min(max(eval_count, 1), len(clusters) - 1)
    else:
        eval_count = 0
    for position, (bucket, group) in enumerate(clusters):
        cluster = hashlib.sha256(min(e.key for e in group).encode("utf-8")).hexdigest()[:16]
        for example in group:
            example.cluster = cluster
            example.split = "eval" if position < eval_count else "train"


def _bucket(key: str) -> float:
    return int(hashlib.sha256(key.encode("utf-8")).hexdigest()[:8], 16) / 0x1_0000_0000


def write_dataset(directory: Path, examples: list[Example]) -> dict[str, dict[str, Any]]:
    """Write the chat JSONL, Parquet and preference files of each split; return rows and SHA-256 per file."""
    directory.mkdir(parents=True)
    counts: dict[str, int] = {}
    for split in ("train", "eval"):
        rows = [example for example in examples if example.split == split]
        chats = ({"messages": chat_messages(e.prompt, e.completion)} for e in rows)
        counts[f"{split}.jsonl"] = write_jsonl(directory / f"{split}.jsonl", chats)
        counts[f"{split}.parquet"] = write_parquet(directory / f"{split}.parquet", [_parquet_row(e) for e in rows], EXAMPLE_SCHEMA)
        counts[f"preferences_{split}.jsonl"] = write_jsonl(directory / f"preferences_{split}.jsonl", _preference_pairs(rows))
    return {name: {"rows": count, "sha256": file_sha256(directory / name)} for name, count in counts.items()}


def _parquet_row(example: Example) -> dict[str, Any]:
    return {name: getattr(example, name) for name in EXAMPLE_SCHEMA.names}


def _preference_pairs(examples: list[Example]) -> list[dict[str, str]]:
    return [
        {"prompt": e.prompt, "chosen": e.completion, "rejected": e.rejected, "event_id": e.event_id}
        for e in examples
        if e.source == "correction" and e.rejected
    ]


def curate(rows: list[FlaggedInteraction], params: CurationParams, scrubber: Scrubber) -> tuple[list[Example], list[dict]]:
    """Run every curation step on already selected rows; return the kept examples and the step counts."""
    steps: list[dict] = []
    examples = to_examples(rows, params.exclude_flagged_completions, steps)
    scrub_examples(examples, scrubber)
    examples = drop_duplicates(examples, params.near_duplicate_threshold, steps)
    assign_splits(examples, params.eval_fraction, params.split_similarity)
    return examples, steps


def build_dataset_version(
    session_or_engine: Session | Engine, params: CurationParams, job_id: int | None = None, scrubber: Scrubber | None = None
) -> DatasetVersion:
    """Select, curate and write a new dataset version, and register it in the dataset_versions table."""
    started = time.perf_counter()
    with session_scope(session_or_engine) as session:
        rows = select_flagged(session, params.selection)
        alert_id = params.alert_id
        last_version = session.scalar(select(func.max(DatasetVersion.version)).where(DatasetVersion.name == params.name)) or 0
    scrubber = scrubber or Scrubber()
    examples, steps = curate(rows, params, scrubber)
    steps.insert(0, {"step": "selected", "in": None, "out": len(rows)})
    if not examples:
        raise ControlPlaneError(
            f"curation of {params.name!r} kept no examples ({_describe(steps)}): widen the time range or filters, or add corrections"
        )

    root = (params.data_dir or get_settings().data_dir) / "datasets"
    version, directory = allocate_version_dir(root, params.name, last_version)
    staging = directory.with_name(f".{directory.name}.partial-{uuid.uuid4().hex[:8]}")
    try:
        files = write_dataset(staging, examples)
        manifest = _manifest(params, version, job_id, alert_id, steps, files, scrubber)
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False), encoding="utf-8")
        with session_scope(session_or_engine) as session:
            dataset = _dataset_row(params, version, job_id, alert_id, manifest, directory, len(rows))
            session.add(dataset)
            session.flush()
            staging.rename(directory)
    except IntegrityError as error:
        raise StoreError(
            f"registering dataset {params.name!r} version {version} failed: {error.orig}. "
            "If another run registered that version at the same time, run curation again."
        ) from error
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    logger.info(
        "dataset version %s v%d built (id %d): %d selected, %d train, %d eval, %d preference pairs, %d PII spans replaced, in %.1f s, at %s",
        params.name, version, dataset.id, len(rows), dataset.train_count, dataset.eval_count,
        dataset.preference_count, sum(scrubber.replaced.values()), time.perf_counter() - started, directory,
    )
    return dataset


def _describe(steps: list[dict]) -> str:
    return ", ".join(f"{step['step']}: {step['out']}" for step in steps)


def _job_alert_id(session: Session, job_id: int | None) -> int | None:
    if job_id is None:
        return None
    job = session.get(Job, job_id)
    if job is None:
        raise ConfigurationError(f"job {job_id} not found: pass the id of a row of the jobs table, or no job id")
    return job.alert_id


def _manifest(params: CurationParams, version: int, job_id: int | None, alert_id: int | None,
              steps: list[dict], files: dict[str, dict[str, Any]], scrubber: Scrubber) -> dict[str, Any]:
    selection = params.selection
    return {
        "name": params.name,
        "version": version,
        "created_at": utcnow().isoformat(),
        "package_version": controlplane.__version__,
        "source_alert_id": alert_id,
        "source_job_id": job_id,
        "selection": {"since": selection.since.isoformat(), "until": selection.until.isoformat(), "app": selection.app,
                      "model": selection.model, "kinds": list(selection.kinds), "labels": list(selection.labels)},
        "options": {"eval_fraction": params.eval_fraction, "near_duplicate_threshold": params.near_duplicate_threshold,
                    "split_similarity": params.split_similarity, "exclude_flagged_completions": params.exclude_flagged_completions,
                    "minhash": {"num_perm": NUM_PERM, "shingle_chars": SHINGLE_CHARS}},
        "steps": steps,
        "pii_replaced": dict(sorted(scrubber.replaced.items())),
        "counts": {"train": files["train.jsonl"]["rows"], "eval": files["eval.jsonl"]["rows"],
                   "preference_pairs": files["preferences_train.jsonl"]["rows"] + files["preferences_eval.jsonl"]["rows"]},
        "files": files,
        "content_hash": content_hash(files),
    }


def _dataset_row(params: CurationParams, version: int, job_id: int | None, alert_id: int | None,
                 manifest: dict[str, Any], directory: Path, selected: int) -> DatasetVersion:
    counts = manifest["counts"]
    return DatasetVersion(
        name=params.name, version=version, source_alert_id=alert_id, source_job_id=job_id,
        since=params.selection.since, until=params.selection.until, selected_count=selected,
        train_count=counts["train"], eval_count=counts["eval"], preference_count=counts["preference_pairs"],
        manifest=manifest, path=str(directory.resolve()), content_hash=manifest["content_hash"],
    )


def run_curation(session_or_engine: Session | Engine, params: dict[str, Any], job_id: int | None = None) -> dict[str, Any]:
    """Job entry point: build a dataset version from `params` (see CurationParams.from_dict) and summarize it.

    A job linked to an alert curates that alert's app and model unless `params` names them.
    """
    params = _with_alert_defaults(session_or_engine, dict(params), job_id)
    dataset = build_dataset_version(session_or_engine, CurationParams.from_dict(params), job_id)
    return {
        "dataset_version_id": dataset.id,
        "name": dataset.name,
        "version": dataset.version,
        "path": dataset.path,
        "selected": dataset.selected_count,
        "train": dataset.train_count,
        "eval": dataset.eval_count,
        "preference_pairs": dataset.preference_count,
        "content_hash": dataset.content_hash,
    }


def _with_alert_defaults(session_or_engine: Session | Engine, params: dict[str, Any], job_id: int | None) -> dict[str, Any]:
    with session_scope(session_or_engine) as session:
        if params.get("alert_id") is None:
            params["alert_id"] = _job_alert_id(session, job_id)
        if params["alert_id"] is None:
            return params
        alert = session.get(Alert, params["alert_id"])
        if alert is None:
            raise ConfigurationError(f"alert {params['alert_id']} not found: pass the id of a row of the alerts table")
        params.setdefault("app", alert.app)
        params.setdefault("model", alert.model)
    return params


def run_curation_job(context: Any) -> dict[str, Any]:
    """Job function of kind "curation", called by controlplane.jobs with a JobContext."""
    return run_curation(context.engine, context.params, context.job_id)


register_job_kind("curation", run_curation_job)
