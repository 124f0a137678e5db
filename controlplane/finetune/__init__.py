"""LoRA fine-tuning of the improvement loop: training, the evaluation gate and the adapter registry."""

from controlplane.finetune.config import GateThresholds, LoraTrainingConfig
from controlplane.finetune.job import run_fine_tune, run_fine_tune_job, train_candidate
from controlplane.finetune.registry import current_model, lineage, promote, rollback
from controlplane.jobs import register_job_kind

register_job_kind("fine_tune", run_fine_tune_job)

__all__ = [
    "GateThresholds",
    "LoraTrainingConfig",
    "current_model",
    "lineage",
    "promote",
    "rollback",
    "run_fine_tune",
    "run_fine_tune_job",
    "train_candidate",
]
