"""The evaluation gate: a new adapter against the model in use, before it may be promoted.

Both models are scored on the dataset version's eval split and on a fixed general set that
catches forgetting. The scores are the per-token loss and perplexity of the reference
completions, ROUGE-L of greedy generations against them, and the share of generations the
safety detectors flag. The model in use is the promoted adapter of the same name, or the
base model when none is.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from controlplane.errors import ConfigurationError
from controlplane.export import safe_filename, session_scope
from controlplane.finetune.config import GateThresholds
from controlplane.finetune.data import Pair, mean_loss, perplexity, prompt_text, read_chat_jsonl, read_reference_jsonl
from controlplane.finetune.trainer import context_length, load_adapter
from controlplane.settings import get_settings
from controlplane.store.registry_models import DatasetVersion, EvaluationReport, ModelVersion

logger = logging.getLogger(__name__)

GENERAL_EVAL_FILE = Path(__file__).resolve().parents[1] / "data" / "general_eval.jsonl"

SafetyCheck = Callable[[list[str]], list[bool]]


@dataclass(frozen=True)
class EvalOptions:
    """Limits on the work of one evaluation."""

    max_new_tokens: int = 16  # greedy generation length for ROUGE-L and the safety rate
    max_examples: int = 200  # eval-split rows used, the first ones in file order
    max_length: int = 512
    batch_size: int = 8


def rouge_l(candidate: str, reference: str) -> float:
    """Return the ROUGE-L F1 of two texts over lower-cased whitespace tokens (0.0 when either is empty)."""
    left, right = candidate.lower().split(), reference.lower().split()
    if not left or not right:
        return 0.0
    common = _lcs_length(left, right)
    if common == 0:
        return 0.0
    precision, recall = common / len(left), common / len(right)
    return 2 * precision * recall / (precision + recall)


def _lcs_length(left: list[str], right: list[str]) -> int:
    previous = [0] * (len(right) + 1)
    for token in left:
        current = [0]
        for index, other in enumerate(right, start=1):
            current.append(previous[index - 1] + 1 if token == other else max(previous[index], current[-1]))
        previous = current
    return previous[-1]


def default_safety_check() -> SafetyCheck:
    """Return a check that flags a generated text when the project's PII or toxicity detector fires on it."""
    from controlplane.detectors.safety import SafetyScorer

    scorer = SafetyScorer(get_settings().toxicity_threshold)
    return lambda texts: [result.flagged for result in scorer.score([("", text) for text in texts])]


@torch.no_grad()
def generate(model: Any, tokenizer: Any, prompts: list[str], max_new_tokens: int, max_length: int) -> list[str]:
    """Return the greedy continuation of each prompt, at most `max_new_tokens` tokens, without the prompt."""
    model.eval()
    outputs = []
    for prompt in prompts:
        ids = tokenizer(prompt_text(tokenizer, prompt), add_special_tokens=False)["input_ids"]
        ids = ids[-max(1, max_length - max_new_tokens) :]
        input_ids = torch.tensor([ids])
        generated = model.generate(
            input_ids=input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=max_new_tokens,
            do_sample=False, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        )
        outputs.append(tokenizer.decode(generated[0, len(ids) :], skip_special_tokens=True))
    return outputs


def score_model(model: Any, tokenizer: Any, sets: dict[str, list[Pair]], safety_check: SafetyCheck,
                options: EvalOptions) -> dict[str, Any]:
    """Score one model on each named set: loss, perplexity, ROUGE-L, and the safety detectors' flagged rate."""
    max_length = context_length(model, options.max_length)
    metrics: dict[str, Any] = {}
    texts: list[str] = []
    for name, pairs in sets.items():
        loss = mean_loss(model, tokenizer, pairs, max_length, options.batch_size)
        generated = generate(model, tokenizer, [pair.prompt for pair in pairs], options.max_new_tokens, max_length)
        scores = [rouge_l(text, pair.completion) for text, pair in zip(generated, pairs)]
        metrics[name] = {"examples": len(pairs), "loss": loss, "perplexity": perplexity(loss), "rouge_l": sum(scores) / len(scores)}
        texts.extend(generated)
    flagged = sum(safety_check(texts))
    metrics["safety"] = {"generated": len(texts), "flagged": flagged, "flagged_rate": flagged / len(texts)}
    return metrics


def gate_decision(candidate: dict[str, Any], baseline: dict[str, Any], thresholds: GateThresholds) -> tuple[bool, list[str], dict[str, float]]:
    """Apply the gate's three rules to two models' metrics; return the verdict, one reason per rule, and the changes."""
    changes = {
        "eval_perplexity_improvement": _relative_drop(baseline["eval"]["perplexity"], candidate["eval"]["perplexity"]),
        "general_perplexity_increase": -_relative_drop(baseline["general"]["perplexity"], candidate["general"]["perplexity"]),
        "safety_rate_increase": candidate["safety"]["flagged_rate"] - baseline["safety"]["flagged_rate"],
    }
    rules = [
        (changes["eval_perplexity_improvement"] >= thresholds.min_eval_perplexity_improvement,
         f"eval-split perplexity improved by {changes['eval_perplexity_improvement']:.2%} "
         f"(required at least {thresholds.min_eval_perplexity_improvement:.2%})"),
        (changes["general_perplexity_increase"] <= thresholds.max_general_perplexity_increase,
         f"general-set perplexity changed by {changes['general_perplexity_increase']:+.2%} "
         f"(allowed at most {thresholds.max_general_perplexity_increase:+.2%})"),
        (changes["safety_rate_increase"] <= thresholds.max_safety_rate_increase + 1e-12,
         f"safety flagged rate changed by {changes['safety_rate_increase']:+.2%} "
         f"(allowed at most {thresholds.max_safety_rate_increase:+.2%})"),
    ]
    reasons = [("passed: " if ok else "failed: ") + text for ok, text in rules]
    return all(ok for ok, _ in rules), reasons, changes


def json_safe(value: Any) -> Any:
    """Replace NaN and infinities, which JSON columns of PostgreSQL reject, by None, recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, list):
        return [json_safe(item) for item in value]
    return value


def _relative_drop(before: float, after: float) -> float:
    # A non-finite perplexity (a diverged model) counts as infinitely worse.
    if not math.isfinite(after):
        return -math.inf
    return (before - after) / before


def evaluate_model_version(
    session_or_engine: Session | Engine,
    model_version_id: int,
    thresholds: GateThresholds | None = None,
    *,
    general_path: Path | None = None,
    safety_check: SafetyCheck | None = None,
    options: EvalOptions | None = None,
    data_dir: Path | None = None,
) -> EvaluationReport:
    """Run the gate on an adapter, store an EvaluationReport row and its JSON file, and reject the adapter if it fails."""
    started = time.perf_counter()
    thresholds, options = thresholds or GateThresholds(), options or EvalOptions()
    with session_scope(session_or_engine) as session:
        candidate, baseline, dataset = _models_to_compare(session, model_version_id)
    sets = {
        "eval": read_chat_jsonl(Path(dataset.path) / "eval.jsonl")[: options.max_examples],
        "general": read_reference_jsonl(general_path or GENERAL_EVAL_FILE),
    }
    if not sets["eval"]:
        raise ConfigurationError(f"dataset version {dataset.id} has no eval rows, so the gate cannot compare models: curate more data")
    safety_check = safety_check or default_safety_check()
    candidate_metrics = _score(Path(candidate.base_model_path), Path(candidate.adapter_path), sets, safety_check, options)
    # NOTE: a baseline adapter on another base model with another tokenizer gives per-token perplexities
    # that are not strictly comparable. The report stores both base paths so that a reader can tell.
    baseline_adapter = Path(baseline.adapter_path) if baseline else None
    baseline_base = Path(baseline.base_model_path) if baseline else Path(candidate.base_model_path)
    baseline_metrics = _score(baseline_base, baseline_adapter, sets, safety_check, options)
    passed, reasons, changes = gate_decision(candidate_metrics, baseline_metrics, thresholds)

    metrics = json_safe({
        "candidate": candidate_metrics, "baseline": baseline_metrics, "changes": changes,
        "baseline_kind": "adapter" if baseline else "base model", "baseline_base_model_path": str(baseline_base),
        "candidate_base_model_path": candidate.base_model_path, "options": asdict(options),
    })
    report = _store_report(session_or_engine, candidate, baseline, dataset, metrics, thresholds, passed, reasons, data_dir)
    logger.info(
        "gate %s for adapter %s v%d (model version %d) against %s: %s; report %d, in %.1f s",
        "passed" if passed else "failed", candidate.name, candidate.version, candidate.id,
        f"model version {baseline.id}" if baseline else "the base model", "; ".join(reasons), report.id,
        time.perf_counter() - started,
    )
    return report


def _models_to_compare(session: Session, model_version_id: int) -> tuple[ModelVersion, ModelVersion | None, DatasetVersion]:
    candidate = session.get(ModelVersion, model_version_id)
    if candidate is None:
        raise ConfigurationError(f"model version {model_version_id} not found: list them with 'controlplane models list'")
    baseline = session.scalars(
        select(ModelVersion).where(ModelVersion.name == candidate.name, ModelVersion.status == "promoted",
                                   ModelVersion.id != candidate.id)
    ).one_or_none()
    dataset = session.get(DatasetVersion, candidate.dataset_version_id)
    return candidate, baseline, dataset


def _score(base: Path, adapter: Path | None, sets: dict[str, list[Pair]], safety_check: SafetyCheck,
           options: EvalOptions) -> dict[str, Any]:
    model, tokenizer = load_adapter(base, adapter)
    try:
        return score_model(model, tokenizer, sets, safety_check, options)
    finally:
        del model


def _store_report(session_or_engine: Session | Engine, candidate: ModelVersion, baseline: ModelVersion | None,
                  dataset: DatasetVersion, metrics: dict[str, Any], thresholds: GateThresholds, passed: bool,
                  reasons: list[str], data_dir: Path | None) -> EvaluationReport:
    with session_scope(session_or_engine) as session:
        report = EvaluationReport(
            model_version_id=candidate.id, baseline_model_version_id=baseline.id if baseline else None,
            dataset_version_id=dataset.id, metrics=metrics, thresholds=thresholds.to_dict(), passed=passed, reasons=reasons,
        )
        session.add(report)
        session.flush()
        directory = (data_dir or get_settings().data_dir) / "reports" / safe_filename(candidate.name, "")
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"report_{report.id:06d}_v{candidate.version:04d}.json"
        document = {"id": report.id, "model_version_id": candidate.id, "baseline_model_version_id": report.baseline_model_version_id,
                    "dataset_version_id": dataset.id, "passed": passed, "reasons": reasons,
                    "thresholds": thresholds.to_dict(), "metrics": metrics}
        path.write_text(json.dumps(document, indent=2), encoding="utf-8")
        report.path = str(path.resolve())
        if not passed:
            session.get(ModelVersion, candidate.id).status = "rejected"
    return report
