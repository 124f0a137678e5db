"""Export of flagged interactions as JSONL (OpenAI chat format), Parquet or CSV.

Curation and fine-tuning build on the same pieces: the selection of flagged interactions,
PII scrubbing, the file writers, file hashes, versioned folders, and file names that are
valid on Linux, macOS and Windows.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import re
import time
import unicodedata
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from controlplane.errors import ConfigurationError
from controlplane.store.engine import transaction
from controlplane.store.models import FlaggedInteraction

logger = logging.getLogger(__name__)

FORMATS = ("jsonl", "parquet", "csv")
COLUMNS = ("event_id", "app", "model", "event_time", "detectors", "label", "prompt", "completion", "correction")

# Characters that Windows, macOS or Linux reject in file names, and the device names Windows reserves.
_UNSAFE_CHARS = re.compile(r'[<>:"/\\|?*\x00-\x1f\x7f]')
_WINDOWS_RESERVED = {"CON", "PRN", "AUX", "NUL"} | {f"{port}{n}" for port in ("COM", "LPT") for n in range(10)}
# ext4 and APFS allow 255 bytes per name. Staying well below leaves room for a version suffix and
# for Windows, which limits a whole path to 260 characters by default.
MAX_FILE_NAME_BYTES = 120
_VERSION_DIR = re.compile(r"^v(\d+)$")


@contextmanager
def session_scope(session_or_engine: Session | Engine) -> Iterator[Session]:
    """Yield a session: a new transaction for an engine, or the caller's session, flushed at the end."""
    if isinstance(session_or_engine, Engine):
        with transaction(session_or_engine) as session:
            yield session
        return
    yield session_or_engine
    session_or_engine.flush()


def as_utc(value: datetime | str) -> datetime:
    """Parse an ISO 8601 time (or take a datetime) as an aware UTC datetime; naive times are UTC."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError as error:
            raise ConfigurationError(f"invalid time {value!r}: use ISO 8601, e.g. 2026-12-01T10:00Z") from error
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


@dataclass(frozen=True)
class FlaggedFilter:
    """Selection of flagged interactions: event time in [since, until) and optional filters."""

    since: datetime
    until: datetime
    app: str | None = None
    model: str | None = None
    kinds: tuple[str, ...] = ()  # detector names ("toxicity", "pii") or span labels ("EMAIL_ADDRESS")
    labels: tuple[str, ...] = ()  # review labels such as "incorrect"

    def __post_init__(self) -> None:
        object.__setattr__(self, "since", as_utc(self.since))
        object.__setattr__(self, "until", as_utc(self.until))
        object.__setattr__(self, "kinds", tuple(self.kinds or ()))
        object.__setattr__(self, "labels", tuple(self.labels or ()))
        if self.since >= self.until:
            raise ConfigurationError(f"invalid time range: since {self.since:%Y-%m-%dT%H:%MZ} is not before until {self.until:%Y-%m-%dT%H:%MZ}")


def select_flagged(session: Session, selection: FlaggedFilter) -> list[FlaggedInteraction]:
    """Return the flagged interactions that match `selection`, oldest first."""
    query = (
        select(FlaggedInteraction)
        .where(FlaggedInteraction.event_time >= selection.since, FlaggedInteraction.event_time < selection.until)
        .order_by(FlaggedInteraction.event_time, FlaggedInteraction.id)
    )
    if selection.app:
        query = query.where(FlaggedInteraction.app == selection.app)
    if selection.model:
        query = query.where(FlaggedInteraction.model == selection.model)
    if selection.labels:
        query = query.where(FlaggedInteraction.label.in_(selection.labels))
    rows = list(session.scalars(query))
    # The spans are a JSON list, which SQLite and PostgreSQL query differently; filtering here keeps one code path.
    return [row for row in rows if matches_kinds(row.detectors, selection.kinds)]


def matches_kinds(spans: Sequence[dict[str, Any]], kinds: Sequence[str]) -> bool:
    """Return whether any span's detector or label is one of `kinds` (case-insensitive); True when `kinds` is empty."""
    if not kinds:
        return True
    requested = {kind.casefold() for kind in kinds}
    return any(str(value).casefold() in requested for span in spans for value in (span.get("detector"), span.get("label")))


def detector_names(spans: Sequence[dict[str, Any]]) -> list[str]:
    """Return the sorted distinct "detector:label" names of a row's spans, e.g. "pii:EMAIL_ADDRESS"."""
    return sorted({f"{span.get('detector')}:{span.get('label')}" for span in spans})


class Scrubber:
    """Replacer of personal data by placeholders such as <EMAIL_ADDRESS>, counting each entity type."""

    def __init__(self, detector: Any | None = None) -> None:
        if detector is None:
            from controlplane.detectors.pii import PiiDetector

            detector = PiiDetector()
        self.detector = detector
        self.replaced: Counter[str] = Counter()

    def scrub(self, text: str | None) -> str | None:
        """Return `text` with every PII span replaced by its placeholder; None stays None."""
        if not text:
            return text
        pieces, position = [], 0
        for match in self.detector.find(text):
            pieces.append(text[position : match.start])
            pieces.append(f"<{match.entity_type}>")
            self.replaced[match.entity_type] += 1
            position = match.end
        pieces.append(text[position:])
        return "".join(pieces)


def chat_messages(prompt: str, completion: str) -> list[dict[str, str]]:
    """Return one user turn and one assistant turn in the OpenAI chat format."""
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]


def write_jsonl(path: Path, records: Iterable[dict[str, Any]]) -> int:
    """Write one JSON object per line (UTF-8, non-ASCII kept) and return the number of lines."""
    count = 0
    with path.open("w", encoding="utf-8", newline="\n") as handle:
        for record in records:
            line = json.dumps(record, ensure_ascii=False, default=str)
            # JSON allows raw U+2028 and U+2029, but str.splitlines() and JavaScript readers split on them.
            line = line.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
            handle.write(line + "\n")
            count += 1
    return count


def write_parquet(path: Path, rows: Sequence[dict[str, Any]], schema: pa.Schema) -> int:
    """Write `rows` as one Parquet table with `schema` and return the number of rows."""
    columns = {name: [row.get(name) for row in rows] for name in schema.names}
    pq.write_table(pa.table(columns, schema=schema), path)
    return len(rows)


def write_csv(path: Path, rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> int:
    """Write a header and `rows` as CSV in UTF-8 with a byte-order mark (for Excel); None becomes empty."""
    with path.open("w", encoding="utf-8-sig", newline="") as handle:
        writer = csv.writer(handle, quoting=csv.QUOTE_MINIMAL, lineterminator="\r\n")
        writer.writerow(columns)
        for row in rows:
            writer.writerow(["" if row.get(name) is None else row[name] for name in columns])
    return len(rows)


def file_sha256(path: Path) -> str:
    """Return the hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def safe_filename(stem: str, extension: str, max_bytes: int = MAX_FILE_NAME_BYTES) -> str:
    """Turn `stem` into a file name valid on Windows, macOS and Linux, at most `max_bytes` in UTF-8."""
    cleaned = _UNSAFE_CHARS.sub("-", unicodedata.normalize("NFC", stem))
    cleaned = re.sub(r"\s+", "_", cleaned).strip(" ._-") or "export"
    if cleaned.split(".")[0].upper() in _WINDOWS_RESERVED:
        cleaned = f"_{cleaned}"
    suffix = f".{extension}" if extension else ""
    if len((cleaned + suffix).encode("utf-8")) <= max_bytes:
        return cleaned + suffix
    # Keep names that differ only at the end apart by adding a hash of the whole stem.
    tag = "-" + hashlib.sha256(cleaned.encode("utf-8")).hexdigest()[:8]
    budget = max_bytes - len((tag + suffix).encode("utf-8"))
    truncated = cleaned.encode("utf-8")[:budget].decode("utf-8", errors="ignore").rstrip(" .")
    return truncated + tag + suffix


def allocate_version_dir(root: Path, name: str, min_version: int) -> tuple[int, Path]:
    """Return the next version number and its directory root/<name>/vNNNN, above `min_version` and any existing one."""
    base = root / safe_filename(name, "")
    existing = [int(match.group(1)) for path in base.glob("v*") if (match := _VERSION_DIR.match(path.name))]
    version = max([min_version, *existing]) + 1
    return version, base / f"v{version:04d}"


def content_hash(files: dict[str, dict[str, Any]]) -> str:
    """Return one SHA-256 over the data files' names and hashes, independent of write order."""
    lines = "".join(f"{name} {files[name]['sha256']}\n" for name in sorted(files))
    return hashlib.sha256(lines.encode("utf-8")).hexdigest()


def time_stamp(value: datetime) -> str:
    """Format a time for file names: 2026-12-01T10-00Z, with seconds only when they are not zero."""
    value = as_utc(value)
    pattern = "%Y-%m-%dT%H-%MZ" if value.second == 0 and value.microsecond == 0 else "%Y-%m-%dT%H-%M-%SZ"
    return value.strftime(pattern)


def export_file_name(selection: FlaggedFilter, fmt: str) -> str:
    """Name an export after its time range and filters, e.g. flagged_2026-12-01T10-00Z_2026-12-02T10-00Z_toxicity.jsonl."""
    parts = ["flagged", time_stamp(selection.since), time_stamp(selection.until)]
    parts.append("+".join(selection.kinds) if selection.kinds else "all")
    parts.extend(selection.labels)
    for value in (selection.app, selection.model):
        if value:
            parts.append(value)
    return safe_filename("_".join(parts), fmt)


@dataclass
class ExportResult:
    """Path, row count and PII summary of one export."""

    path: Path
    rows: int
    format: str
    scrubbed: bool
    pii_replaced: dict[str, int] = field(default_factory=dict)


_PARQUET_SCHEMA = pa.schema(
    [
        ("event_id", pa.string()),
        ("app", pa.string()),
        ("model", pa.string()),
        ("event_time", pa.timestamp("us", tz="UTC")),
        ("detectors", pa.list_(pa.string())),
        ("label", pa.string()),
        ("prompt", pa.string()),
        ("completion", pa.string()),
        ("correction", pa.string()),
    ]
)


def export_flagged(
    session_or_engine: Session | Engine,
    out_dir: Path,
    selection: FlaggedFilter,
    fmt: str = "jsonl",
    scrub: bool = True,
    scrubber: Scrubber | None = None,
) -> ExportResult:
    """Write the flagged interactions that match `selection` to one file in `out_dir`."""
    if fmt not in FORMATS:
        raise ConfigurationError(f"invalid export format {fmt!r}: choose one of {', '.join(FORMATS)}")
    started = time.perf_counter()
    with session_scope(session_or_engine) as session:
        rows = [export_row(row) for row in select_flagged(session, selection)]
    if scrub:
        scrubber = scrubber or Scrubber()
        for row in rows:
            for name in ("prompt", "completion", "correction"):
                row[name] = scrubber.scrub(row[name])
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / export_file_name(selection, fmt)
    write_export(path, rows, fmt)
    replaced = dict(scrubber.replaced) if scrub and scrubber else {}
    logger.info(
        "exported %d flagged interactions to %s (format %s, scrubbed %s, %d PII spans replaced) in %.1f s",
        len(rows), path, fmt, scrub, sum(replaced.values()), time.perf_counter() - started,
    )
    return ExportResult(path, len(rows), fmt, scrub, replaced)


def export_row(row: Any) -> dict[str, Any]:
    """Return the exported fields of a FlaggedInteraction, or of a result row with the same columns."""
    return {
        "event_id": row.event_id,
        "app": row.app,
        "model": row.model,
        "event_time": as_utc(row.event_time),
        "detectors": detector_names(row.detectors),
        "label": row.label,
        "prompt": row.prompt,
        "completion": row.completion,
        "correction": row.correction,
    }


def write_export(path: Path, rows: list[dict[str, Any]], fmt: str) -> None:
    """Write rows made by `export_row` to `path` in one of FORMATS."""
    if fmt == "parquet":
        write_parquet(path, rows, _PARQUET_SCHEMA)
    elif fmt == "csv":
        flat = [{**row, "event_time": row["event_time"].isoformat(), "detectors": ";".join(row["detectors"])} for row in rows]
        write_csv(path, flat, COLUMNS)
    else:
        write_jsonl(path, (_chat_record(row) for row in rows))


def _chat_record(row: dict[str, Any]) -> dict[str, Any]:
    # The assistant turn is the model's completion; a reviewer's correction goes in the metadata.
    metadata = {name: row[name] for name in COLUMNS if name not in ("prompt", "completion")}
    metadata["event_time"] = row["event_time"].isoformat()
    return {"messages": chat_messages(row["prompt"], row["completion"] or ""), "metadata": metadata}


# The dashboard's export by ids imported these before they were public.
_export_row = export_row
_write_export = write_export
