"""Export of flagged interactions: text survives each format, PII is scrubbed, file names are safe."""

from __future__ import annotations

import csv
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from controlplane.errors import ConfigurationError
from controlplane.export import FlaggedFilter, Scrubber, export_file_name, export_flagged, safe_filename
from controlplane.store.engine import make_engine, transaction
from controlplane.store.migrate import upgrade
from controlplane.store.models import FlaggedInteraction

T0 = datetime(2026, 12, 1, 10, 0, tzinfo=timezone.utc)
SELECTION = FlaggedFilter(T0, T0 + timedelta(days=1))
TOXIC = [{"detector": "toxicity", "field": "completion", "start": 0, "end": 4, "label": "offensive", "score": 0.9}]
PII = [{"detector": "pii", "field": "prompt", "start": 0, "end": 4, "label": "EMAIL_ADDRESS", "score": 1.0}]

HARD_TEXTS = [
    # (event id, prompt, completion, correction)
    ("cjk", "東京の天気はどうですか？\n明日も晴れますか？", "晴れです。\r\n気温は二十度です。", "明日は雨です。"),
    ("rtl", "ما هو الطقس اليوم؟", "الجو مشمس، \"حار\" جدا", "الجو ممطر"),
    ("emoji", "Rate this 👩‍💻🚀 deploy, ok?", "5/5 🎉🎉\n\n— \"great\", said the bot", "4/5 👍"),
    ("quotes", 'He said "no", then; left,\tquietly', "line one\nline two\rline three", 'a "quoted", value'),
    ("separators", "para one\u2028para two\u2029end", "NUL-free but \x0b vertical tab", "ok"),
    ("cyrillic", "Привет, как дела?", "Всё хорошо, спасибо!", "Отлично!"),
]


def seed(engine) -> None:
    with transaction(engine) as session:
        for index, (event_id, prompt, completion, correction) in enumerate(HARD_TEXTS):
            session.add(FlaggedInteraction(
                event_id=event_id, app="assistant", model="gpt-4o-mini", event_time=T0 + timedelta(minutes=index),
                detectors=TOXIC, prompt=prompt, completion=completion, label="incorrect", correction=correction,
            ))
        session.add(FlaggedInteraction(
            event_id="pii", app="assistant", model="other-model", event_time=T0 + timedelta(hours=1), detectors=PII,
            prompt="Mail me at jane.roe@example.com please", completion="Sent to jane.roe@example.com.",
            label=None, correction=None,
        ))


@pytest.fixture
def engine(tmp_path):
    url = f"sqlite:///{tmp_path / 'export.db'}"
    upgrade(url)
    engine = make_engine(url)
    seed(engine)
    yield engine
    engine.dispose()


@pytest.fixture(scope="module")
def scrubber_detector():
    return Scrubber().detector


def read_back(path: Path, fmt: str) -> dict[str, dict]:
    """Read an export as {event_id: {prompt, completion, correction, label}}."""
    if fmt == "jsonl":
        with path.open(encoding="utf-8") as handle:
            records = [json.loads(line) for line in handle]
        return {r["metadata"]["event_id"]: {"prompt": r["messages"][0]["content"], "completion": r["messages"][1]["content"],
                                             "correction": r["metadata"]["correction"], "label": r["metadata"]["label"]}
                for r in records}
    if fmt == "parquet":
        rows = pq.read_table(path).to_pylist()
    else:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            rows = list(csv.DictReader(handle))
    return {row["event_id"]: {name: row[name] for name in ("prompt", "completion", "correction", "label")} for row in rows}


@pytest.mark.parametrize("fmt", ["jsonl", "parquet", "csv"])
def test_hard_text_reads_back_identical(engine, tmp_path, fmt, scrubber_detector):
    selection = FlaggedFilter(T0, T0 + timedelta(days=1), kinds=("toxicity",))
    result = export_flagged(engine, tmp_path / "out", selection, fmt, scrubber=Scrubber(scrubber_detector))
    assert result.rows == len(HARD_TEXTS)
    rows = read_back(result.path, fmt)
    for event_id, prompt, completion, correction in HARD_TEXTS:
        assert rows[event_id]["prompt"] == prompt, (fmt, event_id)
        assert rows[event_id]["completion"] == completion, (fmt, event_id)
        assert rows[event_id]["correction"] == correction, (fmt, event_id)
        assert rows[event_id]["label"] == "incorrect"


@pytest.mark.parametrize("fmt", ["jsonl", "parquet", "csv"])
def test_pii_scrubbed_by_default(engine, tmp_path, fmt, scrubber_detector):
    result = export_flagged(engine, tmp_path, FlaggedFilter(T0, T0 + timedelta(days=1), kinds=("pii",)), fmt,
                            scrubber=Scrubber(scrubber_detector))
    rows = read_back(result.path, fmt)
    assert rows["pii"]["prompt"] == "Mail me at <EMAIL_ADDRESS> please"
    assert rows["pii"]["completion"] == "Sent to <EMAIL_ADDRESS>."
    assert result.pii_replaced == {"EMAIL_ADDRESS": 2}
    assert b"jane.roe" not in result.path.read_bytes()


def test_no_scrub_keeps_pii(engine, tmp_path):
    result = export_flagged(engine, tmp_path, FlaggedFilter(T0, T0 + timedelta(days=1), kinds=("EMAIL_ADDRESS",)), "jsonl",
                            scrub=False)
    rows = read_back(result.path, "jsonl")
    assert rows["pii"]["prompt"] == "Mail me at jane.roe@example.com please"
    assert result.scrubbed is False


def test_csv_has_byte_order_mark(engine, tmp_path, scrubber_detector):
    result = export_flagged(engine, tmp_path, SELECTION, "csv", scrubber=Scrubber(scrubber_detector))
    assert result.path.read_bytes().startswith(b"\xef\xbb\xbf")


def test_jsonl_lines_split_only_on_newline(engine, tmp_path, scrubber_detector):
    result = export_flagged(engine, tmp_path, SELECTION, "jsonl", scrubber=Scrubber(scrubber_detector))
    # str.splitlines() also splits on U+2028 and U+2029, so they must be escaped inside JSON strings.
    assert len(result.path.read_text(encoding="utf-8").splitlines()) == len(HARD_TEXTS) + 1


FILTER_CASES = [
    # (filter arguments, event ids expected)
    ({}, {"cjk", "rtl", "emoji", "quotes", "separators", "cyrillic", "pii"}),
    ({"kinds": ("pii",)}, {"pii"}),
    ({"kinds": ("offensive",)}, {"cjk", "rtl", "emoji", "quotes", "separators", "cyrillic"}),
    ({"model": "other-model"}, {"pii"}),
    ({"labels": ("incorrect",), "kinds": ("pii",)}, set()),
    ({"until": T0 + timedelta(minutes=2)}, {"cjk", "rtl"}),
]


@pytest.mark.parametrize(("arguments", "expected"), FILTER_CASES)
def test_filters(engine, tmp_path, arguments, expected):
    selection = FlaggedFilter(**{"since": T0, "until": T0 + timedelta(days=1), **arguments})
    result = export_flagged(engine, tmp_path, selection, "jsonl", scrub=False)
    assert set(read_back(result.path, "jsonl")) == expected


def test_unknown_format_rejected(engine, tmp_path):
    with pytest.raises(ConfigurationError, match="invalid export format 'xlsx'"):
        export_flagged(engine, tmp_path, SELECTION, "xlsx")


FORBIDDEN = set('<>:"/\\|?*')

FILE_NAME_CASES = [
    # (stem, extension, expected name)
    ("flagged_2026-12-01T10-00Z_all", "jsonl", "flagged_2026-12-01T10-00Z_all.jsonl"),
    ("a:b/c\\d*e?f\"g<h>i|j", "csv", "a-b-c-d-e-f-g-h-i-j.csv"),
    ("CON", "csv", "_CON.csv"),
    ("nul", "jsonl", "_nul.jsonl"),
    ("com1.report", "csv", "_com1.report.csv"),
    ("LPT9", "", "_LPT9"),
    ("console", "csv", "console.csv"),
    ("trailing dots...", "csv", "trailing_dots.csv"),
    ("  spaced   name  ", "csv", "spaced_name.csv"),
    ("tab\tand\nnewline", "csv", "tab-and-newline.csv"),
    ("", "csv", "export.csv"),
    ("東京 model", "parquet", "東京_model.parquet"),
]


@pytest.mark.parametrize(("stem", "extension", "expected"), FILE_NAME_CASES)
def test_safe_filename(stem, extension, expected):
    assert safe_filename(stem, extension) == expected


@pytest.mark.parametrize("stem", ["x" * 500, "日本語" * 100, "a/b" * 200])
def test_long_file_names_bounded(stem):
    name = safe_filename(stem, "parquet")
    assert len(name.encode("utf-8")) <= 120
    assert name.endswith(".parquet")
    assert not FORBIDDEN & set(name)
    # Two long stems that differ only at the end get different names.
    assert safe_filename(stem + "1", "parquet") != safe_filename(stem + "2", "parquet")


EXPORT_NAME_CASES = [
    # (filter arguments, format, expected name)
    ({"kinds": ("toxicity",)}, "jsonl", "flagged_2026-12-01T10-00Z_2026-12-02T10-00Z_toxicity.jsonl"),
    ({}, "csv", "flagged_2026-12-01T10-00Z_2026-12-02T10-00Z_all.csv"),
    ({"kinds": ("pii", "toxicity"), "labels": ("incorrect",), "model": "openai/gpt-4o:latest"}, "parquet",
     "flagged_2026-12-01T10-00Z_2026-12-02T10-00Z_pii+toxicity_incorrect_openai-gpt-4o-latest.parquet"),
    ({"since": T0 + timedelta(seconds=30)}, "jsonl", "flagged_2026-12-01T10-00-30Z_2026-12-02T10-00Z_all.jsonl"),
]


@pytest.mark.parametrize(("arguments", "fmt", "expected"), EXPORT_NAME_CASES)
def test_export_file_name(arguments, fmt, expected):
    selection = FlaggedFilter(**{"since": T0, "until": T0 + timedelta(days=1), **arguments})
    assert export_file_name(selection, fmt) == expected


def test_cli_export(engine, tmp_path, monkeypatch):
    from controlplane.cli import app
    from controlplane.settings import get_settings

    monkeypatch.setenv("CONTROLPLANE_DATABASE_URL", str(engine.url))
    get_settings.cache_clear()
    try:
        outcome = CliRunner().invoke(app, ["export", "--since", "2026-12-01T10:00Z", "--until", "2026-12-02T10:00Z",
                                           "--kind", "toxicity", "--format", "csv", "--out", str(tmp_path / "cli"), "--no-scrub"])
    finally:
        get_settings.cache_clear()
    assert outcome.exit_code == 0, outcome.output
    path = tmp_path / "cli" / "flagged_2026-12-01T10-00Z_2026-12-02T10-00Z_toxicity.csv"
    assert f"6 rows written to {path}" in outcome.output
    assert read_back(path, "csv")["emoji"]["prompt"] == "Rate this 👩‍💻🚀 deploy, ok?"
