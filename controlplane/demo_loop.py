"""The improvement loop of the demo: policy → curation → LoRA fine-tune → gate → promotion.

In production the scheduler evaluates the policy and runs the jobs. The demo does the same
steps in its own process, right after the scenario's windows closed. Where the policy requires
a person's approval of the fine-tune job, the demo approves it itself.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import Engine, select

from controlplane.finetune.tiny import build_tiny_model
from controlplane.jobs import approve_job, load_job_plugins, run_pending_jobs
from controlplane.policies import evaluate_job_rules, packaged_policy_path
from controlplane.settings import Settings, get_settings
from controlplane.store.engine import transaction
from controlplane.store.models import FlaggedInteraction, Job

log = logging.getLogger(__name__)

DEMO_ACTOR = "demo"
GENERAL_PROMPTS = ("### User:\n### Assistant:\n",)
DEMO_LORA = {"learning_rate": 0.01, "epochs": 3, "r": 8, "alpha": 16, "dropout": 0.0, "max_length": 128}


@dataclass
class LoopSummary:
    """Jobs and results of one run of the loop, for the demo's summary."""

    jobs: list[dict[str, Any]] = field(default_factory=list)
    curation: dict[str, Any] | None = None
    fine_tune: dict[str, Any] | None = None


def configure(state_dir: Path) -> Settings:
    """Point data and base-model settings at the demo's folder and return the settings in force."""
    os.environ["CONTROLPLANE_DATA_DIR"] = str((state_dir / "data").resolve())
    os.environ["CONTROLPLANE_BASE_MODEL_DIR"] = str((state_dir / "base-model").resolve())
    # A two-layer model trains fastest on one thread; a second one only waits.
    os.environ.setdefault("CONTROLPLANE_FINETUNE_THREADS", "1")
    os.environ["CONTROLPLANE_POLICY_FILE"] = str(_write_demo_policy(state_dir).resolve())
    get_settings.cache_clear()
    return get_settings()


def _write_demo_policy(state_dir: Path) -> Path:
    # The packaged policy, with LoRA settings for a two-layer, 32-wide model: the defaults
    # (learning rate 2e-4, one epoch) suit a real base model and barely move a tiny one.
    policy = yaml.safe_load(packaged_policy_path().read_text(encoding="utf-8"))
    for rule in policy["job_rules"]:
        follow_up = rule.get("then") or {}
        if follow_up.get("job") == "fine_tune":
            follow_up["params"] = {"lora": DEMO_LORA}
    path = state_dir / "policy.yaml"
    path.write_text(yaml.safe_dump(policy, sort_keys=False), encoding="utf-8")
    return path


def run_loop(engine: Engine, settings: Settings, state_dir: Path) -> LoopSummary:
    """Evaluate the policy, run the jobs it starts, approve the fine-tune, and run that too."""
    load_job_plugins(settings.job_plugins)
    summary = LoopSummary()
    evaluation = evaluate_job_rules(engine, settings)
    log.info("policy evaluated: %s", json.dumps(evaluation.to_json()))
    run_pending_jobs(engine, settings, owner=DEMO_ACTOR)

    awaiting = _jobs(engine, status="awaiting_approval")
    if awaiting:
        _build_base_model(engine, settings)
        with transaction(engine) as session:
            for job in awaiting:
                approve_job(session, job.id, by=DEMO_ACTOR)
        run_pending_jobs(engine, settings, owner=DEMO_ACTOR)

    for job in _jobs(engine):
        summary.jobs.append({"id": job.id, "kind": job.kind, "status": job.status, "alert_id": job.alert_id,
                             "parent_job_id": job.parent_job_id, "error": job.error})
        if job.kind == "curation" and job.status == "succeeded":
            summary.curation = job.result
        if job.kind == "fine_tune" and job.status == "succeeded":
            summary.fine_tune = job.result
    return summary


def _jobs(engine: Engine, status: str | None = None) -> list[Job]:
    query = select(Job).order_by(Job.id)
    if status:
        query = query.where(Job.status == status)
    with transaction(engine) as session:
        return list(session.scalars(query).all())


def _build_base_model(engine: Engine, settings: Settings) -> Path:
    # The tiny base model learns its vocabulary from the traffic it will be tuned on; a real
    # deployment points CONTROLPLANE_BASE_MODEL_DIR at a real model instead.
    directory = Path(settings.base_model_dir)
    with transaction(engine) as session:
        rows = session.execute(select(FlaggedInteraction.prompt, FlaggedInteraction.completion).limit(2000)).all()
    texts = [text for row in rows for text in row if text] + list(GENERAL_PROMPTS)
    texts += _general_texts()
    build_tiny_model(directory, texts)
    log.info("tiny base model built in %s from %d texts", directory, len(texts))
    return directory


def _general_texts() -> list[str]:
    path = Path(__file__).parent / "data" / "general_eval.jsonl"
    texts = []
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            texts += [str(value) for value in row.values() if isinstance(value, str)]
    return texts
