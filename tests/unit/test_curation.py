"""Curation on a real SQLite file: filters, PII scrubbing, duplicates, leak-free splits, manifest."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from sqlalchemy import select

from controlplane.curation import CurationParams, Example, assign_splits, normalize_prompt, prompt_minhash, run_curation
from controlplane.errors import ControlPlaneError
from controlplane.export import Scrubber, allocate_version_dir, file_sha256
from controlplane.store.engine import make_engine, transaction
from controlplane.store.migrate import upgrade
from controlplane.store.models import Alert, FlaggedInteraction, Job
from controlplane.store.registry_models import DatasetVersion

T0 = datetime(2026, 12, 1, 10, 0, tzinfo=timezone.utc)
SINCE, UNTIL = T0, T0 + timedelta(days=1)

TOXIC_COMPLETION = [{"detector": "toxicity", "field": "completion", "start": 0, "end": 10, "label": "offensive", "score": 0.9}]
PII_PROMPT = [{"detector": "pii", "field": "prompt", "start": 0, "end": 5, "label": "EMAIL_ADDRESS", "score": 1.0}]
TOXIC_PROMPT = [{"detector": "toxicity", "field": "prompt", "start": 0, "end": 5, "label": "offensive", "score": 0.8}]

LONG_PROMPT = (
    "Explain how the quarterly billing report is generated, which tables it reads, how late invoices "
    "are handled, and who receives the summary email at the end of each month."
)
DISTINCT_PROMPTS = [
    "What is the capital of Australia?",
    "Translate 'good morning' into Portuguese.",
    "Give me three tips for sleeping better.",
    "Why is the sky blue during the day?",
    "Summarize the plot of a heist film in two sentences.",
    "How many legs does a spider have?",
    "Suggest a name for a grey kitten.",
    "Convert 30 degrees Celsius to Fahrenheit.",
    "Write a haiku about autumn rain.",
    "What does HTTP status 404 mean?",
    "List four prime numbers below twenty.",
    "Recommend a board game for six players.",
    "Describe photosynthesis for a child.",
    "Which planet has the most moons?",
    "How do I boil an egg so the yolk stays soft?",
    "Explain recursion with a short example.",
    "What rhymes with orange?",
    "Draft a polite reminder about an unpaid invoice.",
]


def flagged(event_id: str, prompt: str, completion: str | None = "A helpful answer.", *, minutes: int = 5,
            app: str = "assistant", label: str | None = None, correction: str | None = None,
            detectors: list | None = None) -> FlaggedInteraction:
    return FlaggedInteraction(
        event_id=event_id, app=app, model="gpt-4o-mini", event_time=T0 + timedelta(minutes=minutes),
        detectors=detectors if detectors is not None else PII_PROMPT, prompt=prompt, completion=completion,
        label=label, correction=correction,
    )


def seed_rows() -> list[FlaggedInteraction]:
    rows = [
        flagged("pii", "Reset my password, my email is jane.roe@example.com", "Done, check jane.roe@example.com."),
        # Same prompt after case and space folding: an exact duplicate of "pii".
        flagged("pii-dup", "reset my   password, MY email is jane.roe@example.com", minutes=6),
        flagged("long", LONG_PROMPT, "It reads the invoices table."),
        # One word differs from LONG_PROMPT: a near duplicate.
        flagged("long-near", LONG_PROMPT.replace("month", "week"), "It reads the ledger.", minutes=7),
        flagged("wrong", "What year did the Berlin Wall fall?", "1991.", label="incorrect"),
        flagged("fixed", "What year did the first Moon landing happen?", "1972.", label="incorrect", correction="1969."),
        flagged("toxic", "Tell me about my neighbour.", "He is a complete idiot.", detectors=TOXIC_COMPLETION),
        flagged("toxic-fixed", "Describe my coworker.", "She is useless.", detectors=TOXIC_COMPLETION,
                correction="I can't judge someone I don't know."),
        flagged("rude-user", "Answer me now, you stupid bot: what is 2+2?", "It is 4.", detectors=TOXIC_PROMPT),
        flagged("no-completion", "Say something.", None),
        flagged("too-early", "An old question about cats.", minutes=-10),
        flagged("other-app", "A question from another app.", app="search"),
    ]
    rows += [flagged(f"d{index}", prompt, f"Answer {index}.", minutes=10 + index) for index, prompt in enumerate(DISTINCT_PROMPTS)]
    return rows


@pytest.fixture(scope="module")
def scrubber_factory():
    scrubber = Scrubber()
    return lambda: Scrubber(scrubber.detector)


@pytest.fixture
def engine(tmp_path):
    url = f"sqlite:///{tmp_path / 'curation.db'}"
    upgrade(url)
    engine = make_engine(url)
    with transaction(engine) as session:
        alert = Alert(fingerprint="f" * 64, severity="warning", title="toxicity rate rose", app="assistant", model="gpt-4o-mini")
        session.add(alert)
        session.flush()
        session.add(Job(kind="curation", alert_id=alert.id, params={}))
        session.add_all(seed_rows())
    yield engine
    engine.dispose()


@pytest.fixture
def built(engine, tmp_path, monkeypatch, scrubber_factory):
    monkeypatch.setattr("controlplane.curation.Scrubber", scrubber_factory)
    params = {"name": "assistant-safety", "since": SINCE.isoformat(), "until": UNTIL.isoformat(), "app": "assistant",
              "data_dir": str(tmp_path / "data"), "eval_fraction": 0.25}
    result = run_curation(engine, params, job_id=1)
    directory = Path(result["path"])
    manifest = json.loads((directory / "manifest.json").read_text(encoding="utf-8"))
    return result, directory, manifest


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def prompts_of(path: Path) -> list[str]:
    return [record["messages"][0]["content"] for record in read_jsonl(path)]


def completions_by_prompt(directory: Path) -> dict[str, str]:
    records = read_jsonl(directory / "train.jsonl") + read_jsonl(directory / "eval.jsonl")
    return {record["messages"][0]["content"]: record["messages"][1]["content"] for record in records}


STEP_COUNTS = [
    # (step, rows in, rows out)
    ("selected", None, 28),
    ("incorrect without correction", 28, 27),
    ("flagged completion without correction", 27, 26),
    ("empty prompt or completion", 26, 25),
    ("exact duplicates", 25, 24),
    ("near duplicates", 24, 23),
]


@pytest.mark.parametrize(("step", "rows_in", "rows_out"), STEP_COUNTS)
def test_manifest_step_counts(built, step, rows_in, rows_out):
    _, _, manifest = built
    steps = {entry["step"]: entry for entry in manifest["steps"]}
    assert steps[step]["in"] == rows_in
    assert steps[step]["out"] == rows_out


def test_manifest_totals_and_sources(built):
    result, directory, manifest = built
    assert result["train"] + result["eval"] == 23
    assert manifest["counts"] == {"train": result["train"], "eval": result["eval"], "preference_pairs": 2}
    assert manifest["source_alert_id"] == 1
    assert manifest["source_job_id"] == 1
    assert manifest["package_version"]
    # Scrubbing runs before duplicate removal, so the dropped duplicate's email is counted too.
    assert manifest["pii_replaced"] == {"EMAIL_ADDRESS": 3}
    assert directory.name == "v0001"


def test_manifest_hashes_match_files(built):
    _, directory, manifest = built
    for name, entry in manifest["files"].items():
        assert file_sha256(directory / name) == entry["sha256"], name


def test_dataset_row_links_alert_and_job(built, engine):
    result, directory, manifest = built
    with transaction(engine) as session:
        row = session.scalars(select(DatasetVersion)).one()
    assert row.id == result["dataset_version_id"]
    assert row.source_alert_id == 1
    assert row.source_job_id == 1
    assert row.content_hash == manifest["content_hash"]
    assert row.selected_count == 28
    assert Path(row.path) == directory


def test_pii_scrubbed_everywhere(built):
    _, directory, _ = built
    for path in directory.iterdir():
        assert "jane.roe@example.com" not in path.read_bytes().decode("utf-8", errors="replace"), path.name
    completions = completions_by_prompt(directory)
    assert completions["reset my   password, MY email is <EMAIL_ADDRESS>"] == "A helpful answer."


def test_newest_exact_duplicate_kept(engine, tmp_path, scrubber_factory, monkeypatch):
    monkeypatch.setattr("controlplane.curation.Scrubber", scrubber_factory)
    with transaction(engine) as session:
        # A third copy, corrected: a correction wins over a newer uncorrected copy.
        session.add(flagged("pii-fixed", "Reset my password, my email is a.b@example.org", "No.", minutes=1,
                            correction="I have sent a reset link to <EMAIL_ADDRESS>."))
    result = run_curation(engine, {"name": "dups", "since": SINCE.isoformat(), "until": UNTIL.isoformat(),
                                   "data_dir": str(tmp_path / "data")})
    completions = completions_by_prompt(Path(result["path"]))
    assert completions["Reset my password, my email is <EMAIL_ADDRESS>"] == "I have sent a reset link to <EMAIL_ADDRESS>."


def test_duplicates_removed(built):
    _, directory, _ = built
    prompts = list(completions_by_prompt(directory))
    keys = [normalize_prompt(prompt) for prompt in prompts]
    assert len(keys) == len(set(keys))
    assert sum(1 for prompt in prompts if prompt.startswith("Explain how the quarterly billing report")) == 1
    assert sum(1 for prompt in prompts if prompt.lower().startswith("reset my")) == 1


def test_excluded_rows_absent(built):
    _, directory, _ = built
    prompts = set(completions_by_prompt(directory))
    for absent in ("What year did the Berlin Wall fall?", "Tell me about my neighbour.", "Say something.",
                   "An old question about cats.", "A question from another app."):
        assert absent not in prompts
    assert "Answer me now, you stupid bot: what is 2+2?" in prompts


def test_corrections_become_completions(built):
    _, directory, _ = built
    completions = completions_by_prompt(directory)
    assert completions["What year did the first Moon landing happen?"] == "1969."
    assert completions["Describe my coworker."] == "I can't judge someone I don't know."


def test_preference_pairs(built):
    _, directory, _ = built
    pairs = read_jsonl(directory / "preferences_train.jsonl") + read_jsonl(directory / "preferences_eval.jsonl")
    by_prompt = {pair["prompt"]: pair for pair in pairs}
    assert set(by_prompt) == {"What year did the first Moon landing happen?", "Describe my coworker."}
    assert by_prompt["What year did the first Moon landing happen?"]["chosen"] == "1969."
    assert by_prompt["What year did the first Moon landing happen?"]["rejected"] == "1972."
    assert by_prompt["Describe my coworker."]["rejected"] == "She is useless."


def test_splits_share_no_prompt(built):
    _, directory, _ = built
    train = {normalize_prompt(prompt) for prompt in prompts_of(directory / "train.jsonl")}
    evaluation = {normalize_prompt(prompt) for prompt in prompts_of(directory / "eval.jsonl")}
    assert train
    assert evaluation
    assert train & evaluation == set()


def test_parquet_matches_jsonl(built):
    _, directory, _ = built
    for split in ("train", "eval"):
        table = pq.read_table(directory / f"{split}.parquet").to_pylist()
        assert [row["prompt"] for row in table] == prompts_of(directory / f"{split}.jsonl")
        assert {row["source"] for row in table} <= {"correction", "completion"}


def test_second_build_gets_next_version(built, engine, tmp_path):
    result, _, _ = built
    params = {"name": "assistant-safety", "since": SINCE.isoformat(), "until": UNTIL.isoformat(),
              "data_dir": str(tmp_path / "data")}
    second = run_curation(engine, params)
    assert second["version"] == result["version"] + 1
    assert Path(second["path"]).name == "v0002"


def test_kind_and_label_filters(engine, tmp_path, scrubber_factory, monkeypatch):
    monkeypatch.setattr("controlplane.curation.Scrubber", scrubber_factory)
    params = {"name": "toxic", "since": SINCE.isoformat(), "until": UNTIL.isoformat(), "kinds": ["toxicity"],
              "data_dir": str(tmp_path / "data")}
    result = run_curation(engine, params)
    assert result["selected"] == 3  # "toxic", "toxic-fixed" and "rude-user"
    assert result["train"] + result["eval"] == 2
    labelled = run_curation(engine, {**params, "name": "labelled", "kinds": None, "labels": ["incorrect"]})
    assert labelled["selected"] == 2
    assert labelled["train"] + labelled["eval"] == 1


def test_nothing_left_raises(engine, tmp_path, scrubber_factory, monkeypatch):
    monkeypatch.setattr("controlplane.curation.Scrubber", scrubber_factory)
    params = {"name": "empty", "since": "2020-01-01T00:00Z", "until": "2020-01-02T00:00Z", "data_dir": str(tmp_path / "data")}
    with pytest.raises(ControlPlaneError, match="kept no examples"):
        run_curation(engine, params)
    assert not (tmp_path / "data" / "datasets" / "empty").exists()


def example(prompt: str) -> Example:
    item = Example("id", "app", "model", T0, None, prompt, "answer", "completion", None)
    item.key = normalize_prompt(prompt)
    item.minhash = prompt_minhash(item.key)
    return item


def test_similar_prompts_share_a_split():
    # Families of prompts similar enough (Jaccard of shingles >= 0.5) to be clustered, but not near duplicates.
    families = [
        [f"Please write a Python function that sorts a list of {noun} by their length and returns it." for noun in
         ("words", "strings", "names", "titles")],
        [f"What is the best way to cook {food} for a family dinner on a cold winter evening?" for food in
         ("potatoes", "carrots", "lentils", "pumpkin")],
    ] + [[prompt] for prompt in DISTINCT_PROMPTS]
    examples = [example(prompt) for family in families for prompt in family]
    assign_splits(examples, eval_fraction=0.3, similarity=0.5)
    for family in families[:2]:
        splits = {item.split for item in examples if item.prompt in family}
        assert len(splits) == 1, family[0]
    train = [item for item in examples if item.split == "train"]
    evaluation = [item for item in examples if item.split == "eval"]
    assert train
    assert evaluation
    worst = max(a.minhash.jaccard(b.minhash) for a in train for b in evaluation)
    assert worst < 0.5


def test_single_cluster_goes_to_train():
    examples = [example("Only one prompt here.")]
    assign_splits(examples, eval_fraction=0.5, similarity=0.5)
    assert examples[0].split == "train"


def test_version_dir_skips_existing(tmp_path):
    (tmp_path / "my-set" / "v0004").mkdir(parents=True)
    version, directory = allocate_version_dir(tmp_path, "my/set", min_version=2)
    assert version == 5
    assert directory == tmp_path / "my-set" / "v0005"


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"eval_fraction": 0}, "eval_fraction"),
        ({"eval_fraction": 1.5}, "eval_fraction"),
        ({"near_duplicate_threshold": 0}, "near_duplicate_threshold"),
        ({"since": "2026-12-02T00:00Z", "until": "2026-12-01T00:00Z"}, "invalid time range"),
        ({"since": "yesterday"}, "invalid time"),
    ],
)
def test_invalid_params_rejected(params, message):
    with pytest.raises(ControlPlaneError, match=message):
        CurationParams.from_dict({"since": "2026-12-01T00:00Z", "until": "2026-12-02T00:00Z", **params})


def test_unknown_alert_rejected(engine, tmp_path):
    params = {"since": SINCE.isoformat(), "until": UNTIL.isoformat(), "alert_id": 999, "data_dir": str(tmp_path / "data")}
    with pytest.raises(ControlPlaneError, match="alert 999 not found"):
        run_curation(engine, params)


def test_cli_build_and_list(engine, tmp_path, monkeypatch, scrubber_factory):
    from typer.testing import CliRunner

    from controlplane.cli import app
    from controlplane.settings import get_settings

    monkeypatch.setattr("controlplane.curation.Scrubber", scrubber_factory)
    monkeypatch.setenv("CONTROLPLANE_DATABASE_URL", str(engine.url))
    monkeypatch.setenv("CONTROLPLANE_DATA_DIR", str(tmp_path / "cli-data"))
    get_settings.cache_clear()
    try:
        # The alert's app and model fill the options left out.
        built = CliRunner().invoke(app, ["datasets", "build", "--since", "2026-12-01T10:00Z", "--until", "2026-12-02T10:00Z",
                                         "--alert-id", "1"])
        listed = CliRunner().invoke(app, ["datasets", "list"])
    finally:
        get_settings.cache_clear()
    assert built.exit_code == 0, built.output
    assert "assistant-gpt-4o-mini v1, 28 selected, " in built.output
    assert (tmp_path / "cli-data" / "datasets" / "assistant-gpt-4o-mini" / "v0001" / "manifest.json").is_file()
    assert "assistant-gpt-4o-mini v1" in listed.output
    assert "alert 1" in listed.output
