"""LoRA fine-tuning on a tiny GPT-2-shaped model built here, the gate rules and the adapter registry."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

torch = pytest.importorskip("torch")
from peft import LoraConfig, get_peft_model  # noqa: E402

from controlplane.errors import ConfigurationError, ControlPlaneError  # noqa: E402
from controlplane.finetune.config import GateThresholds, LoraTrainingConfig  # noqa: E402
from controlplane.finetune.data import Pair, mean_loss, read_reference_jsonl  # noqa: E402
from controlplane.finetune.evaluate import GENERAL_EVAL_FILE, gate_decision, rouge_l  # noqa: E402
from controlplane.finetune.registry import lineage, promote, rollback  # noqa: E402
from controlplane.finetune.tiny import build_tiny_model  # noqa: E402
from controlplane.finetune.trainer import check_target_modules, load_adapter, load_base, train_adapter  # noqa: E402
from controlplane.store.engine import make_engine, transaction  # noqa: E402
from controlplane.store.migrate import upgrade  # noqa: E402
from controlplane.store.models import Alert, Job  # noqa: E402
from controlplane.store.registry_models import DatasetVersion, EvaluationReport, ModelVersion  # noqa: E402

TRAIN_PAIRS = [
    Pair(f"What colour is item number {index}?", f"Item number {index} is {colour}.")
    for index, colour in enumerate(["red", "blue", "green", "red", "blue", "green", "red", "blue"])
]


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Run torch on one thread: for a model this small, a second thread only waits, and on a busy machine
    the waiting made 40 training steps take 15 s instead of 2 s."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def corpus() -> list[str]:
    general = read_reference_jsonl(GENERAL_EVAL_FILE)
    texts = [text for pair in TRAIN_PAIRS + general for text in (pair.prompt, pair.completion)]
    return texts + ["### User:\n### Assistant:\n"]


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("base"), corpus())


@pytest.fixture(scope="module")
def trained(base_dir, tmp_path_factory):
    config = LoraTrainingConfig(r=8, alpha=16, dropout=0.0, target_modules=("c_attn", "c_proj"), learning_rate=1e-2,
                                max_steps=40, batch_size=4, max_length=64, seed=3, log_every=20)
    output = tmp_path_factory.mktemp("adapters") / "v0001"
    return train_adapter(base_dir, TRAIN_PAIRS, output, config, dataset_version_id=7), config


TARGET_CASES = [
    # (target modules, missing names the error must list, or None when valid)
    (("c_attn",), None),
    (("c_attn", "c_proj", "c_fc"), None),
    (("attn.c_attn",), None),
    (("c_attn", "c_atn"), ["c_atn"]),
    (("q_proj", "v_proj", "c_attn"), ["q_proj", "v_proj"]),
    (("attn",), ["attn"]),  # a container module, not a layer LoRA can wrap
]


@pytest.mark.parametrize(("targets", "missing"), TARGET_CASES)
def test_target_module_check(base_dir, targets, missing):
    model, _ = load_base(base_dir)
    if missing is None:
        check_target_modules(model, targets)
        return
    with pytest.raises(ConfigurationError) as raised:
        check_target_modules(model, targets)
    assert f"target modules {missing}" in str(raised.value)
    assert "c_attn" in str(raised.value)  # the error lists what exists


def test_peft_alone_accepts_misspelled_target(base_dir):
    # The reason for check_target_modules: peft adapts c_attn and raises no error about c_atn.
    model, _ = load_base(base_dir)
    wrapped = get_peft_model(model, LoraConfig(r=4, target_modules=["c_attn", "c_atn"], fan_in_fan_out=True))
    adapted = [name for name, _ in wrapped.named_modules() if name.endswith("c_attn.lora_A")]
    assert len(adapted) == 2


def test_training_rejects_misspelled_target(base_dir, tmp_path):
    config = LoraTrainingConfig(target_modules=("c_attn", "c_atn"), max_steps=1)
    with pytest.raises(ConfigurationError, match=r"\['c_atn'\]"):
        train_adapter(base_dir, TRAIN_PAIRS, tmp_path / "out", config)
    assert not (tmp_path / "out").exists()


def test_training_loss_decreases(trained):
    result, _ = trained
    assert result.steps == 40
    assert len(result.losses) == 40
    first, last = sum(result.losses[:5]) / 5, sum(result.losses[-5:]) / 5
    assert last < first * 0.8, (first, last)


def test_adapter_folder_contents(trained):
    result, _ = trained
    names = {path.name for path in result.adapter_dir.iterdir()}
    for expected in ("adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "tokenizer_config.json",
                     "training_config.json", "PACKAGE_VERSION"):
        assert expected in names
    saved = json.loads((result.adapter_dir / "training_config.json").read_text())
    assert saved["package_version"] == "0.1.0"
    assert saved["r"] == 8
    assert saved["target_modules"] == ["c_attn", "c_proj"]
    assert saved["provenance"]["dataset_version_id"] == 7
    assert LoraTrainingConfig.from_dict(saved).target_modules == ("c_attn", "c_proj")


def test_reloaded_adapter_beats_base(trained, base_dir):
    result, config = trained
    base, tokenizer = load_adapter(base_dir, None)
    adapted, _ = load_adapter(base_dir, result.adapter_dir)
    assert mean_loss(adapted, tokenizer, TRAIN_PAIRS, 64) < mean_loss(base, tokenizer, TRAIN_PAIRS, 64)


def test_missing_base_model_named(tmp_path):
    with pytest.raises(ConfigurationError, match="no config.json"):
        load_base(tmp_path)


def metrics(eval_ppl: float, general_ppl: float, flagged_rate: float) -> dict:
    return {"eval": {"perplexity": eval_ppl}, "general": {"perplexity": general_ppl}, "safety": {"flagged_rate": flagged_rate}}


BASELINE = metrics(100.0, 50.0, 0.10)
GATE_CASES = [
    # (case, candidate metrics, passes, rule that fails)
    ("clear improvement", metrics(80.0, 50.0, 0.10), True, None),
    ("exactly the minimum improvement", metrics(98.0, 52.5, 0.10), True, None),
    ("improvement too small", metrics(99.0, 50.0, 0.10), False, "eval-split perplexity"),
    ("eval split got worse", metrics(120.0, 50.0, 0.10), False, "eval-split perplexity"),
    ("forgetting on the general set", metrics(80.0, 53.0, 0.10), False, "general-set perplexity"),
    ("safety rate rose", metrics(80.0, 50.0, 0.15), False, "safety flagged rate"),
    ("safety rate fell", metrics(80.0, 50.0, 0.0), True, None),
    ("diverged training", metrics(math.nan, 50.0, 0.10), False, "eval-split perplexity"),
]


@pytest.mark.parametrize(("case", "candidate", "passes", "failing"), GATE_CASES, ids=[case[0] for case in GATE_CASES])
def test_gate_decision(case, candidate, passes, failing):
    thresholds = GateThresholds(min_eval_perplexity_improvement=0.02, max_general_perplexity_increase=0.05)
    passed, reasons, _ = gate_decision(candidate, BASELINE, thresholds)
    assert passed is passes
    failed = [reason for reason in reasons if reason.startswith("failed")]
    if failing is None:
        assert failed == []
    else:
        assert len(failed) == 1
        assert failing in failed[0]


def test_gate_changes_are_relative():
    _, _, changes = gate_decision(metrics(80.0, 55.0, 0.2), BASELINE, GateThresholds())
    assert changes["eval_perplexity_improvement"] == pytest.approx(0.2)
    assert changes["general_perplexity_increase"] == pytest.approx(0.1)
    assert changes["safety_rate_increase"] == pytest.approx(0.1)


ROUGE_CASES = [
    ("the cat sat on the mat", "the cat sat on the mat", 1.0),
    ("the cat sat", "the cat sat on the mat", 2 * 1.0 * 0.5 / 1.5),
    ("mat the on", "the cat sat on the mat", 2 * (2 / 3) * (2 / 6) / (2 / 3 + 2 / 6)),
    ("", "anything", 0.0),
    ("dog", "cat", 0.0),
    ("The CAT", "the cat", 1.0),
]


@pytest.mark.parametrize(("candidate", "reference", "expected"), ROUGE_CASES)
def test_rouge_l(candidate, reference, expected):
    assert rouge_l(candidate, reference) == pytest.approx(expected)


CONFIG_CASES = [
    ({"r": 0}, "r"),
    ({"alpha": 0}, "alpha"),
    ({"dropout": 1.0}, "dropout"),
    ({"epochs": 0}, "epochs"),
    ({"learning_rate": -1}, "learning_rate"),
    ({"max_steps": 0}, "max_steps"),
    ({"batch_size": 0}, "batch_size"),
    ({"max_length": 4}, "max_length"),
    ({"target_modules": []}, "target_modules"),
    ({"rank": 8}, "unknown LoRA training settings"),
]


@pytest.mark.parametrize(("values", "message"), CONFIG_CASES)
def test_config_validation(values, message):
    with pytest.raises(ConfigurationError, match=message):
        LoraTrainingConfig.from_dict(values)


def test_gate_thresholds_reject_unknown_key():
    with pytest.raises(ConfigurationError, match="unknown gate thresholds"):
        GateThresholds.from_dict({"min_improvement": 0.1})


@pytest.fixture
def registry_engine(tmp_path):
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    upgrade(url)
    engine = make_engine(url)
    with transaction(engine) as session:
        alert = Alert(fingerprint="a" * 64, severity="warning", title="drift", app="assistant", model="m")
        session.add(alert)
        session.flush()
        curation_job = Job(kind="curation", alert_id=alert.id)
        fine_tune_job = Job(kind="fine_tune", alert_id=alert.id)
        session.add_all([curation_job, fine_tune_job])
        session.flush()
        session.add(DatasetVersion(name="set", version=1, source_alert_id=alert.id, source_job_id=curation_job.id,
                                   since=alert.first_seen, until=alert.first_seen, selected_count=1, train_count=1,
                                   eval_count=1, preference_count=0, manifest={}, path=str(tmp_path), content_hash="0" * 64))
    yield engine
    engine.dispose()


def add_model(engine, tmp_path: Path, version: int, passed: bool, baseline_id: int | None) -> int:
    adapter = tmp_path / f"adapter-{version}"
    adapter.mkdir()
    with transaction(engine) as session:
        model = ModelVersion(name="assistant", version=version, base_model_path="base", adapter_path=str(adapter),
                             dataset_version_id=1, job_id=2, status="candidate", package_version="0.1.0", config={})
        session.add(model)
        session.flush()
        session.add(EvaluationReport(model_version_id=model.id, baseline_model_version_id=baseline_id, dataset_version_id=1,
                                     metrics={}, thresholds={}, passed=passed,
                                     reasons=["passed: fine"] if passed else ["failed: eval-split perplexity rose"]))
        return model.id


def statuses(engine) -> dict[int, str]:
    with transaction(engine) as session:
        return {model.id: model.status for model in session.query(ModelVersion)}


def test_promote_requires_passed_report(registry_engine, tmp_path):
    model_id = add_model(registry_engine, tmp_path, 1, passed=False, baseline_id=None)
    with pytest.raises(ControlPlaneError, match="failed the evaluation gate.*eval-split perplexity rose"):
        promote(registry_engine, model_id, "alice")
    assert statuses(registry_engine) == {model_id: "candidate"}


def test_promote_rejects_stale_report(registry_engine, tmp_path):
    first = add_model(registry_engine, tmp_path, 1, passed=True, baseline_id=None)
    # Compared with the base model, but `first` is promoted before it.
    second = add_model(registry_engine, tmp_path, 2, passed=True, baseline_id=None)
    promote(registry_engine, first, "alice")
    with pytest.raises(ControlPlaneError, match="evaluate it again"):
        promote(registry_engine, second, "alice")


def test_promote_and_rollback_sequence(registry_engine, tmp_path):
    first = add_model(registry_engine, tmp_path, 1, passed=True, baseline_id=None)
    promote(registry_engine, first, "alice", reason="first adapter")
    second = add_model(registry_engine, tmp_path, 2, passed=True, baseline_id=first)
    promotion = promote(registry_engine, second, "bob")
    assert statuses(registry_engine) == {first: "retired", second: "promoted"}
    assert promotion.previous_model_version_id == first

    back = rollback(registry_engine, "carol", reason="complaints")
    assert statuses(registry_engine) == {first: "promoted", second: "rejected"}
    assert back.action == "rollback"
    assert back.model_version_id == first
    assert back.previous_model_version_id == second

    with pytest.raises(ControlPlaneError, match="no earlier adapter"):
        rollback(registry_engine, "carol")
    with pytest.raises(ControlPlaneError, match="is rejected"):
        promote(registry_engine, second, "bob")


def test_promotion_lineage(registry_engine, tmp_path):
    model_id = add_model(registry_engine, tmp_path, 1, passed=True, baseline_id=None)
    promotion = promote(registry_engine, model_id, "alice")
    with transaction(registry_engine) as session:
        chain = lineage(session, promotion.id)
    assert chain == {"promotion_id": promotion.id, "action": "promote", "evaluation_report_id": 1, "model_version_id": model_id,
                     "dataset_version_id": 1, "fine_tune_job_id": 2, "curation_job_id": 1, "alert_id": 1}


def test_second_promoted_row_rejected_by_database(registry_engine, tmp_path):
    first = add_model(registry_engine, tmp_path, 1, passed=True, baseline_id=None)
    second = add_model(registry_engine, tmp_path, 2, passed=True, baseline_id=None)
    from sqlalchemy.exc import IntegrityError

    with pytest.raises(IntegrityError):
        with transaction(registry_engine) as session:
            session.get(ModelVersion, first).status = "promoted"
            session.flush()
            session.get(ModelVersion, second).status = "promoted"


def test_training_stops_on_request(base_dir, tmp_path):
    config = LoraTrainingConfig(target_modules=("c_attn",), max_steps=5)
    with pytest.raises(ControlPlaneError, match="stopped at step 1 of 5 on request"):
        train_adapter(base_dir, TRAIN_PAIRS, tmp_path / "out", config, should_stop=lambda: True)
    assert not (tmp_path / "out").exists()


@pytest.fixture
def invoke_cli(monkeypatch):
    from typer.testing import CliRunner

    from controlplane.cli import app
    from controlplane.settings import get_settings

    def invoke(engine, arguments: list[str]):
        monkeypatch.setenv("CONTROLPLANE_DATABASE_URL", str(engine.url))
        get_settings.cache_clear()
        try:
            return CliRunner().invoke(app, arguments)
        finally:
            get_settings.cache_clear()

    return invoke


def test_cli_promote_list_rollback(registry_engine, tmp_path, invoke_cli):
    first = add_model(registry_engine, tmp_path, 1, passed=True, baseline_id=None)
    promoted = invoke_cli(registry_engine, ["models", "promote", str(first), "--by", "alice"])
    assert promoted.exit_code == 0, promoted.output
    assert f"model version {first} promoted (promotion 1), replacing the base model" in promoted.output
    second = add_model(registry_engine, tmp_path, 2, passed=True, baseline_id=first)
    assert invoke_cli(registry_engine, ["models", "promote", str(second), "--by", "bob"]).exit_code == 0

    listing = invoke_cli(registry_engine, ["models", "list"]).output.splitlines()
    assert "assistant v2" in listing[0]
    assert "promoted" in listing[0]
    assert "retired" in listing[1]
    assert "gate passed" in listing[1]

    rolled = invoke_cli(registry_engine, ["models", "rollback", "--by", "carol", "--reason", "complaints"])
    assert rolled.exit_code == 0, rolled.output
    assert f"rolled back from model version {second} to {first} (promotion 3)" in rolled.output
    assert statuses(registry_engine) == {first: "promoted", second: "rejected"}


def test_cli_promote_failed_report_exits_1(registry_engine, tmp_path, invoke_cli):
    model_id = add_model(registry_engine, tmp_path, 1, passed=False, baseline_id=None)
    outcome = invoke_cli(registry_engine, ["models", "promote", str(model_id), "--by", "alice"])
    assert outcome.exit_code == 1
    assert isinstance(outcome.exception, ControlPlaneError)
