"""The improvement loop on SQLite and PostgreSQL: alert -> curation -> LoRA fine-tune -> gate -> promotion.

The base model is a tiny GPT-2 built by the test and loaded through the real loading code.
The gate's safety check is the project's real PII and toxicity scorer.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch = pytest.importorskip("torch")

from controlplane.curation import run_curation  # noqa: E402
from controlplane.finetune import current_model, lineage, rollback, run_fine_tune  # noqa: E402
from controlplane.errors import ControlPlaneError  # noqa: E402
from controlplane.finetune.data import read_reference_jsonl  # noqa: E402
from controlplane.finetune.evaluate import GENERAL_EVAL_FILE  # noqa: E402
from controlplane.store.engine import make_engine, transaction  # noqa: E402
from controlplane.store.models import Alert, Finding, FlaggedInteraction, Job  # noqa: E402
from controlplane.store.registry_models import DatasetVersion, EvaluationReport, ModelVersion, Promotion  # noqa: E402
from controlplane.finetune.tiny import build_tiny_model  # noqa: E402
from tests.unit.test_finetune import one_torch_thread  # noqa: E402,F401  (an autouse fixture)

T0 = datetime(2026, 12, 1, 8, 0, tzinfo=timezone.utc)
APP, MODEL = "support-bot", "tiny-gpt"

TASKS = [
    ("reset my password", "Security"), ("change my delivery address", "Addresses"), ("cancel my subscription", "Plans"),
    ("update my payment card", "Billing"), ("download last month's invoice", "Billing"), ("turn off email newsletters", "Notifications"),
    ("add a second user to my account", "Team"), ("delete my account", "Privacy"), ("change the display language", "Preferences"),
    ("enable two-factor login", "Security"), ("export my order history", "Privacy"), ("switch to the yearly plan", "Plans"),
]
PHRASINGS = ["How do I {task}?", "I want to {task} right now, tell me how.", "Quick question: can I {task} from my phone?"]
TOXIC = [{"detector": "toxicity", "field": "completion", "start": 0, "end": 20, "label": "offensive", "score": 0.93}]

# The default rules on the general set and the safety rate, and a 5 % minimum on the eval split. The adapter
# learns the corrections' fixed wording: in a run on 2 cores the eval split improved by 84 % and the general
# set by 31 %, because a 2-layer model with random weights has no general ability to lose.
GENTLE_GATE = {"min_eval_perplexity_improvement": 0.05, "max_general_perplexity_increase": 0.05,
               "max_safety_rate_increase": 0.0}
# A perplexity cannot drop by 99.9 % from an adapter that already learned the same data.
IMPOSSIBLE_GATE = {**GENTLE_GATE, "min_eval_perplexity_improvement": 0.999}
LORA = {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": ["c_attn", "c_proj"], "learning_rate": 0.01,
        "max_steps": 40, "batch_size": 4, "max_length": 96, "seed": 1, "log_every": 20}


def interactions() -> list[dict]:
    rows = []
    for index, (phrasing, (task, section)) in enumerate((p, t) for p in PHRASINGS for t in TASKS):
        prompt = phrasing.format(task=task)
        if index % 9 == 0:
            prompt += " My email is customer.number%d@example.com." % index
        rows.append({
            "event_id": f"evt-{index:03d}", "app": APP, "model": MODEL, "event_time": T0 + timedelta(minutes=index),
            "detectors": TOXIC, "prompt": prompt, "completion": "Figure it out yourself, it is obvious.", "label": "incorrect",
            "correction": f"Sorry for the trouble. To {task}, open Settings, choose {section}, and follow the steps there.",
        })
    return rows


def seed(engine) -> tuple[int, int]:
    """Store a safety finding, its alert, the flagged interactions and a curation job; return alert and job ids."""
    with transaction(engine) as session:
        finding = Finding(kind="safety", subject="toxicity", app=APP, model=MODEL, window_start=T0,
                          window_end=T0 + timedelta(hours=1), severity="warning", summary="toxic completions rose to 30 %",
                          sample_size=120, score=0.3, threshold=0.05)
        session.add(finding)
        session.flush()
        alert = Alert(fingerprint="9" * 64, severity="warning", title="toxicity rate of support-bot", app=APP, model=MODEL,
                      finding_id=finding.id, kind="safety", subject="toxicity")
        session.add(alert)
        session.flush()
        session.add_all(FlaggedInteraction(**row) for row in interactions())
        job = Job(kind="curation", alert_id=alert.id, params={}, status="running")
        session.add(job)
        session.flush()
        return alert.id, job.id


def fine_tune_job(engine, alert_id: int, parent_job_id: int) -> int:
    with transaction(engine) as session:
        job = Job(kind="fine_tune", alert_id=alert_id, parent_job_id=parent_job_id, params={}, status="running")
        session.add(job)
        session.flush()
        return job.id


@pytest.fixture(scope="module")
def base_model(tmp_path_factory) -> Path:
    texts = [text for row in interactions() for text in (row["prompt"], row["completion"], row["correction"])]
    texts += [text for pair in read_reference_jsonl(GENERAL_EVAL_FILE) for text in (pair.prompt, pair.completion)]
    return build_tiny_model(tmp_path_factory.mktemp("tiny-base"), texts + ["### User:\n### Assistant:\n"])


def test_improvement_loop(database_url, base_model, tmp_path):
    engine = make_engine(database_url)
    try:
        run_loop(engine, base_model, tmp_path / "data")
    finally:
        engine.dispose()


def run_loop(engine, base_model: Path, data_dir: Path) -> None:
    alert_id, curation_job_id = seed(engine)

    # The curation job names no app or model; it takes them from its alert.
    curated = run_curation(engine, {"since": T0.isoformat(), "until": (T0 + timedelta(days=1)).isoformat(),
                                    "eval_fraction": 0.25, "data_dir": str(data_dir)}, curation_job_id)
    assert curated["name"] == f"{APP}-{MODEL}"
    assert curated["selected"] == len(PHRASINGS) * len(TASKS)
    assert curated["train"] > curated["eval"] > 0
    manifest = json.loads((Path(curated["path"]) / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["pii_replaced"] == {"EMAIL_ADDRESS": 4}
    assert "example.com" not in (Path(curated["path"]) / "train.jsonl").read_text(encoding="utf-8")

    # First fine-tune: its parent job built the dataset version, so the params need not name it.
    first_job_id = fine_tune_job(engine, alert_id, curation_job_id)
    params = {"base_model_path": str(base_model), "lora": LORA, "gate": GENTLE_GATE, "max_new_tokens": 8,
              "data_dir": str(data_dir)}
    first = run_fine_tune(engine, params, first_job_id)
    assert first["passed"] is True, first["reasons"]
    assert first["promotion_id"] is not None
    assert first["dataset_version_id"] == curated["dataset_version_id"]
    check_lineage(engine, first["promotion_id"], alert_id, curation_job_id, first_job_id, first)

    # Second fine-tune on the same data with a gate no adapter can pass: the first adapter stays promoted.
    second_job_id = fine_tune_job(engine, alert_id, curation_job_id)
    second = run_fine_tune(engine, {**params, "gate": IMPOSSIBLE_GATE}, second_job_id)
    assert second["passed"] is False
    assert second["promotion_id"] is None
    assert any(reason.startswith("failed: eval-split perplexity") for reason in second["reasons"])
    with transaction(engine) as session:
        assert current_model(session, first["name"]).id == first["model_version_id"]
        rejected = session.get(ModelVersion, second["model_version_id"])
        report = session.get(EvaluationReport, second["evaluation_report_id"])
        promotions = session.query(Promotion).count()
    assert rejected.status == "rejected"
    assert rejected.version == 2
    assert report.baseline_model_version_id == first["model_version_id"]
    assert promotions == 1

    # The first adapter replaced the base model, so there is nothing earlier to roll back to.
    with pytest.raises(ControlPlaneError, match="no earlier adapter"):
        rollback(engine, "operator")


def check_lineage(engine, promotion_id: int, alert_id: int, curation_job_id: int, fine_tune_job_id: int, result: dict) -> None:
    with transaction(engine) as session:
        chain = lineage(session, promotion_id)
        promotion = session.get(Promotion, promotion_id)
        report = session.get(EvaluationReport, promotion.evaluation_report_id)
        model = session.get(ModelVersion, report.model_version_id)
        dataset = session.get(DatasetVersion, model.dataset_version_id)
        curation_job = session.get(Job, dataset.source_job_id)
        fine_tune_job_row = session.get(Job, model.job_id)
    assert chain == {
        "promotion_id": promotion_id, "action": "promote", "evaluation_report_id": result["evaluation_report_id"],
        "model_version_id": result["model_version_id"], "dataset_version_id": result["dataset_version_id"],
        "fine_tune_job_id": fine_tune_job_id, "curation_job_id": curation_job_id, "alert_id": alert_id,
    }
    assert promotion.previous_model_version_id is None  # the base model was in use
    assert report.passed is True
    assert report.baseline_model_version_id is None
    assert model.status == "promoted"
    assert dataset.source_alert_id == alert_id
    assert curation_job.alert_id == alert_id
    assert fine_tune_job_row.parent_job_id == curation_job.id
    document = json.loads(Path(report.path).read_text(encoding="utf-8"))
    assert document["passed"] is True
    assert document["metrics"]["candidate"]["eval"]["perplexity"] < document["metrics"]["baseline"]["eval"]["perplexity"]
    adapter = Path(model.adapter_path)
    assert (adapter / "adapter_config.json").is_file()
    assert json.loads((adapter / "training_config.json").read_text())["provenance"]["job_id"] == fine_tune_job_id
