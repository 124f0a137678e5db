"""The whole loop through the policy and the job runner: finding, alert, curation, LoRA, gate, promotion."""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import select

from controlplane.alerting import open_or_update_alert
from controlplane.demo_loop import DEMO_LORA, configure, run_loop
from controlplane.finetune.job import run_fine_tune
from controlplane.finetune.registry import lineage
from controlplane.settings import get_settings
from controlplane.store.engine import make_engine, transaction
from controlplane.store.models import Finding, FlaggedInteraction
from controlplane.store.registry_models import ModelVersion, Promotion

pytestmark = pytest.mark.integration

COLOURS = ["red", "blue", "green", "amber", "violet", "teal"]
# Distinct prompts, so that near-duplicate removal keeps them apart and both splits get rows.
WORDS = ("river mountain lantern copper violin harbor meadow pencil glacier orchard compass velvet "
         "thunder basket marble falcon pepper canyon ribbon saddle island quartz willow bucket").split()


def seed_flagged_safety_finding(engine, count: int = 60) -> int:
    """Store `count` flagged interactions with corrections and a safety finding; return the finding id."""
    now = datetime.now(timezone.utc)
    rng = random.Random(5)
    with transaction(engine) as session:
        for index in range(count):
            colour = COLOURS[index % len(COLOURS)]
            topic = " ".join(rng.sample(WORDS, 6))
            session.add(FlaggedInteraction(
                event_id=f"loop-{index}", app="assistant", model="demo-code-model", event_time=now - timedelta(minutes=5),
                detectors=[{"detector": "toxicity", "field": "completion", "start": 0, "end": 10, "label": "offensive", "score": 0.9}],
                prompt=f"What colour is the {topic}?", completion="Figure it out yourself, idiot.",
                label="incorrect", correction=f"The {topic} is {colour}.",
            ))
        finding = Finding(
            kind="safety", subject="flagged_rate", app="assistant", model="demo-code-model",
            window_start=now - timedelta(minutes=6), window_end=now - timedelta(minutes=5), severity="warning",
            summary=f"{count} of 300 events flagged", sample_size=300, test="binomial test, one-sided",
            score=1e-9, threshold=0.001, details={},
        )
        session.add(finding)
        session.flush()
        alert = open_or_update_alert(session, finding)
        assert alert is not None
        return finding.id


@pytest.fixture
def loop_settings(tmp_path, monkeypatch):
    """Data, base model and policy of the loop in this test's folder; the environment is restored afterwards."""
    for name in ("DATA_DIR", "BASE_MODEL_DIR", "FINETUNE_THREADS", "POLICY_FILE"):
        monkeypatch.setenv(f"CONTROLPLANE_{name}", "")
    monkeypatch.setenv("CONTROLPLANE_FINETUNE_THREADS", "1")
    settings = configure(tmp_path)
    yield settings
    get_settings.cache_clear()


def test_loop_promotes_then_failed_gate_keeps_model(database_url, loop_settings, tmp_path):
    engine = make_engine(database_url)
    seed_flagged_safety_finding(engine)

    summary = run_loop(engine, loop_settings, tmp_path)

    kinds = [(job["kind"], job["status"]) for job in summary.jobs]
    assert kinds == [("curation", "succeeded"), ("fine_tune", "succeeded")]
    assert summary.curation["train"] + summary.curation["eval"] == summary.curation["selected"]
    assert summary.curation["preference_pairs"] > 0
    assert summary.fine_tune["passed"] is True
    assert summary.fine_tune["promotion_id"] is not None

    with transaction(engine) as session:
        chain = lineage(session, summary.fine_tune["promotion_id"])
    curation_job, fine_tune_job = summary.jobs
    assert chain["curation_job_id"] == curation_job["id"]
    assert chain["fine_tune_job_id"] == fine_tune_job["id"]
    assert chain["alert_id"] == curation_job["alert_id"]
    assert chain["dataset_version_id"] == summary.curation["dataset_version_id"]
    assert chain["model_version_id"] == summary.fine_tune["model_version_id"]
    assert chain["evaluation_report_id"] == summary.fine_tune["evaluation_report_id"]

    # A second adapter whose gate cannot pass (99% better perplexity required) is not promoted.
    second = run_fine_tune(engine, {
        "dataset_version_id": summary.curation["dataset_version_id"], "lora": DEMO_LORA,
        "gate": {"min_eval_perplexity_improvement": 0.99},
    })
    assert second["passed"] is False
    assert second["promotion_id"] is None
    with transaction(engine) as session:
        promoted = session.scalars(select(ModelVersion).where(ModelVersion.status == "promoted")).all()
        promotions = session.scalars(select(Promotion)).all()
    assert [model.id for model in promoted] == [summary.fine_tune["model_version_id"]]
    assert len(promotions) == 1
    engine.dispose()
