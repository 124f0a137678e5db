"""The fine-tuning job: train an adapter on a dataset version, register it, run the gate, promote it.

torch, transformers and peft load only when a job runs, because the scheduler and the CLI
import this package at start and those imports take seconds.
"""

from __future__ import annotations

import logging
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

import controlplane
from controlplane.errors import ConfigurationError, StoreError
from controlplane.export import allocate_version_dir, session_scope
from controlplane.finetune.config import GateThresholds, LoraTrainingConfig
from controlplane.finetune.registry import promote
from controlplane.settings import get_settings
from controlplane.store.models import Job
from controlplane.store.registry_models import DatasetVersion, ModelVersion

logger = logging.getLogger(__name__)


def run_fine_tune(session_or_engine: Session | Engine, params: dict[str, Any], job_id: int | None = None, *,
                  should_stop: Callable[[], bool] | None = None) -> dict[str, Any]:
    """Job entry point: train, register a candidate, run the gate and, when it passes, promote.

    Keys of `params`, all optional:
      dataset_version_id, or dataset (a name whose latest version is used); without either,
        the dataset version built by the job's parent curation job
      base_model_path (default CONTROLPLANE_BASE_MODEL_DIR)
      name (registry name, default the dataset's)
      lora (LoraTrainingConfig fields), gate (GateThresholds fields), promote (default True)
      max_new_tokens, max_eval_examples, general_eval_path, data_dir
    `should_stop` is polled between training steps, and training stops with an error once it returns True.
    """
    from controlplane.finetune.evaluate import EvalOptions, evaluate_model_version

    _limit_torch_threads(get_settings().finetune_threads)
    config = LoraTrainingConfig.from_dict(params.get("lora") or {})
    thresholds = GateThresholds.from_dict(params.get("gate"))
    data_dir = Path(params["data_dir"]) if params.get("data_dir") else None
    model = train_candidate(session_or_engine, params, config, job_id, data_dir, should_stop)

    options = EvalOptions(max_new_tokens=int(params.get("max_new_tokens", 16)),
                          max_examples=int(params.get("max_eval_examples", 200)), max_length=config.max_length)
    general = Path(params["general_eval_path"]) if params.get("general_eval_path") else None
    report = evaluate_model_version(session_or_engine, model.id, thresholds, general_path=general, options=options,
                                    data_dir=data_dir)
    promotion = None
    if report.passed and params.get("promote", True):
        actor = f"job {job_id}" if job_id is not None else "controlplane"
        promotion = promote(session_or_engine, model.id, actor, reason="evaluation gate passed", evaluation_report_id=report.id)
    return {
        "dataset_version_id": model.dataset_version_id,
        "model_version_id": model.id,
        "name": model.name,
        "version": model.version,
        "adapter_path": model.adapter_path,
        "final_loss": model.training_metrics["final_loss"],
        "evaluation_report_id": report.id,
        "passed": report.passed,
        "reasons": report.reasons,
        "promotion_id": promotion.id if promotion else None,
    }


def train_candidate(session_or_engine: Session | Engine, params: dict[str, Any], config: LoraTrainingConfig,
                    job_id: int | None = None, data_dir: Path | None = None,
                    should_stop: Callable[[], bool] | None = None) -> ModelVersion:
    """Train an adapter on a dataset version's train split and register it as a candidate ModelVersion."""
    from controlplane.finetune.data import read_chat_jsonl
    from controlplane.finetune.trainer import train_adapter

    base_path = _base_model_path(params)
    with session_scope(session_or_engine) as session:
        dataset = _dataset_version(session, params, job_id)
        name = params.get("name") or dataset.name
        last_version = session.scalar(select(func.max(ModelVersion.version)).where(ModelVersion.name == name)) or 0
    root = (data_dir or get_settings().data_dir) / "adapters"
    version, directory = allocate_version_dir(root, name, last_version)
    staging = directory.with_name(f".{directory.name}.partial-{uuid.uuid4().hex[:8]}")
    try:
        pairs = read_chat_jsonl(Path(dataset.path) / "train.jsonl")
        result = train_adapter(base_path, pairs, staging, config, should_stop, f"{name} v{version}", dataset_version_id=dataset.id,
                               dataset_content_hash=dataset.content_hash, job_id=job_id)
        metrics = {"steps": result.steps, "examples": result.examples, "first_loss": result.losses[0],
                   "final_loss": result.final_loss, "seconds": round(result.seconds, 3)}
        with session_scope(session_or_engine) as session:
            model = ModelVersion(
                name=name, version=version, base_model_path=str(base_path.resolve()), adapter_path=str(directory.resolve()),
                dataset_version_id=dataset.id, job_id=job_id, status="candidate",
                package_version=controlplane.__version__, config=config.to_dict(), training_metrics=metrics,
            )
            session.add(model)
            session.flush()
            staging.rename(directory)
    except IntegrityError as error:
        raise StoreError(
            f"registering adapter {name!r} version {version} failed: {error.orig}. "
            "If another run registered that version at the same time, run the job again."
        ) from error
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    logger.info(
        "adapter %s v%d trained (model version %d) on dataset version %d: %d examples, %d steps, loss %.4f -> %.4f, %.1f s, at %s",
        name, version, model.id, dataset.id, result.examples, result.steps, result.losses[0], result.final_loss,
        result.seconds, directory,
    )
    return model


def _limit_torch_threads(threads: int | None) -> None:
    # Process-wide, which suits a job runner. Small models gain nothing from a second thread, and on a
    # busy 2-core machine a LoRA run of 40 steps took 26-55 s with 2 threads against 2 s with one.
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


def _base_model_path(params: dict[str, Any]) -> Path:
    value = params.get("base_model_path") or get_settings().base_model_dir
    if not value:
        raise ConfigurationError("no base model: pass base_model_path in the job params or set CONTROLPLANE_BASE_MODEL_DIR")
    return Path(value)


def _dataset_version(session: Session, params: dict[str, Any], job_id: int | None) -> DatasetVersion:
    if params.get("dataset_version_id") is not None:
        dataset = session.get(DatasetVersion, int(params["dataset_version_id"]))
        if dataset is None:
            raise ConfigurationError(f"dataset version {params['dataset_version_id']} not found: list them with 'controlplane datasets list'")
        return dataset
    if params.get("dataset"):
        dataset = session.scalars(
            select(DatasetVersion).where(DatasetVersion.name == params["dataset"]).order_by(DatasetVersion.version.desc()).limit(1)
        ).first()
        if dataset is None:
            raise ConfigurationError(f"no dataset version named {params['dataset']!r}: build one with 'controlplane datasets build'")
        return dataset
    job = session.get(Job, job_id) if job_id is not None else None
    if job is not None and job.parent_job_id is not None:
        dataset = session.scalars(
            select(DatasetVersion).where(DatasetVersion.source_job_id == job.parent_job_id).order_by(DatasetVersion.id.desc()).limit(1)
        ).first()
        if dataset is None:
            raise ConfigurationError(f"parent job {job.parent_job_id} of job {job_id} built no dataset version: pass dataset_version_id")
        return dataset
    raise ConfigurationError("the fine-tune params need dataset_version_id or dataset (a dataset name), or a parent curation job")


def run_fine_tune_job(context: Any) -> dict[str, Any]:
    """Job function of kind "fine_tune", called by controlplane.jobs with a JobContext."""
    return run_fine_tune(context.engine, context.params, context.job_id, should_stop=context.should_stop)
