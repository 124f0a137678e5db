"""LoRA training of a local base model on a dataset version's train split.

The base model and tokenizer load from a local folder only (`local_files_only=True`), so a
missing file fails at once instead of reaching for a model hub.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.pytorch_utils import Conv1D

import controlplane
from controlplane.errors import ConfigurationError, ControlPlaneError
from controlplane.finetune.config import LoraTrainingConfig
from controlplane.finetune.data import Pair, collate, encode, token_losses

logger = logging.getLogger(__name__)

TRAINING_CONFIG_FILE = "training_config.json"
# Layer types peft's LoRA can wrap; a target name matching only other modules adapts nothing.
LORA_LAYER_TYPES = (torch.nn.Linear, torch.nn.Embedding, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d, Conv1D)


@dataclass
class TrainingResult:
    """Record of a training run: losses per optimizer step and the adapter's folder."""

    adapter_dir: Path
    steps: int
    examples: int
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def final_loss(self) -> float:
        """Mean loss of the last tenth of the steps (at least one step)."""
        tail = self.losses[-max(1, len(self.losses) // 10) :]
        return sum(tail) / len(tail)


def load_base(path: Path) -> tuple[Any, Any]:
    """Load a causal language model and its tokenizer from a local folder, without any download."""
    if not (path / "config.json").is_file():
        raise ConfigurationError(
            f"base model folder {path} has no config.json: point base_model_path (or CONTROLPLANE_BASE_MODEL_DIR) "
            "at a folder written by save_pretrained"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as error:
        raise ConfigurationError(f"base model at {path} failed to load: {error}") from error
    if tokenizer.eos_token_id is None:
        raise ConfigurationError(f"the tokenizer at {path} has no end-of-sequence token: set eos_token and save it again")
    if tokenizer.pad_token_id is None:
        # Padded positions are masked out of attention and loss, so any id will do; EOS is the usual choice.
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def load_adapter(base_path: Path, adapter_path: Path | None) -> tuple[Any, Any]:
    """Load the base model with a saved adapter on top, or the base model alone when `adapter_path` is None."""
    model, tokenizer = load_base(base_path)
    if adapter_path is None:
        return model, tokenizer
    try:
        return PeftModel.from_pretrained(model, adapter_path, is_trainable=False), tokenizer
    except (OSError, ValueError) as error:
        raise ConfigurationError(f"adapter at {adapter_path} failed to load onto {base_path}: {error}") from error


def context_length(model: Any, requested: int) -> int:
    """Return `requested`, capped at the model's maximum sequence length when its config states one."""
    limit = getattr(model.config, "max_position_embeddings", None)
    return min(requested, limit) if isinstance(limit, int) and limit > 0 else requested


def check_target_modules(model: torch.nn.Module, target_modules: tuple[str, ...] | None) -> None:
    """Raise ConfigurationError naming each requested target module that matches no layer of `model`.

    peft adapts every module whose name equals an entry or ends with "." + entry, and it
    accepts a list in which only some entries match, so a misspelled entry would go unnoticed.
    """
    if target_modules is None:
        return
    layers = [name for name, module in model.named_modules() if isinstance(module, LORA_LAYER_TYPES)]
    missing = [target for target in target_modules if not any(name == target or name.endswith(f".{target}") for name in layers)]
    if missing:
        available = sorted({name.rsplit(".", 1)[-1] for name in layers})
        raise ConfigurationError(
            f"target modules {missing} match no layer of the {type(model).__name__} model: "
            f"choose among {available}, or leave target_modules empty for peft's defaults"
        )


def lora_config(model: torch.nn.Module, config: LoraTrainingConfig) -> LoraConfig:
    """Build peft's LoraConfig; GPT-2 style Conv1D layers store weights transposed, hence fan_in_fan_out."""
    targets = list(config.target_modules) if config.target_modules is not None else None
    transposed = targets is not None and any(
        isinstance(module, Conv1D) for name, module in model.named_modules()
        if any(name == target or name.endswith(f".{target}") for target in targets)
    )
    return LoraConfig(
        r=config.r, lora_alpha=config.alpha, lora_dropout=config.dropout, target_modules=targets,
        fan_in_fan_out=transposed, bias="none", task_type="CAUSAL_LM",
    )


def train_adapter(base_path: Path, pairs: list[Pair], output_dir: Path, config: LoraTrainingConfig,
                  should_stop: Callable[[], bool] | None = None, run_name: str | None = None,
                  **provenance: Any) -> TrainingResult:
    """Train a LoRA adapter on `pairs` and save it, with tokenizer and training config, to `output_dir`.

    `should_stop` is polled before each step; once it returns True, training raises ControlPlaneError.
    `run_name` names the run in log lines (default: the folder name).
    """
    if not pairs:
        raise ConfigurationError("the train split is empty: curate a dataset version with train rows first")
    started = time.perf_counter()
    run_name = run_name or output_dir.name
    torch.manual_seed(config.seed)
    model, tokenizer = load_base(base_path)
    check_target_modules(model, config.target_modules)
    try:
        model = get_peft_model(model, lora_config(model, config))
    except ValueError as error:
        raise ConfigurationError(f"peft rejected the LoRA settings for the model at {base_path}: {error}") from error

    max_length = context_length(model, config.max_length)
    encoded = [encode(tokenizer, pair, max_length) for pair in pairs]
    total_steps = _total_steps(len(encoded), config)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.learning_rate)
    result = TrainingResult(output_dir, total_steps, len(encoded))
    model.train()
    for step, batch in enumerate(_batches(encoded, config, tokenizer.pad_token_id, total_steps), start=1):
        if should_stop is not None and should_stop():
            raise ControlPlaneError(f"training of {run_name} stopped at step {step} of {total_steps} on request")
        total, count = token_losses(model, batch)
        loss = total / max(count, 1)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        result.losses.append(float(loss.detach()))
        if step % config.log_every == 0 or step == total_steps:
            logger.info("training %s: step %d of %d, loss %.4f", run_name, step, total_steps, result.losses[-1])

    _save(model, tokenizer, output_dir, config, base_path, provenance)
    result.seconds = time.perf_counter() - started
    return result


def _total_steps(examples: int, config: LoraTrainingConfig) -> int:
    if config.max_steps is not None:
        return config.max_steps
    return config.epochs * math.ceil(examples / config.batch_size)


def _batches(encoded: list, config: LoraTrainingConfig, pad_id: int, total_steps: int):
    # A new seeded shuffle per pass over the data; passes repeat until total_steps batches are out.
    generator = torch.Generator().manual_seed(config.seed)
    produced = 0
    while True:
        order = torch.randperm(len(encoded), generator=generator).tolist()
        for start in range(0, len(order), config.batch_size):
            yield collate([encoded[index] for index in order[start : start + config.batch_size]], pad_id)
            produced += 1
            if produced == total_steps:
                return


def _save(model: Any, tokenizer: Any, output_dir: Path, config: LoraTrainingConfig, base_path: Path,
          provenance: dict[str, Any]) -> None:
    output_dir.mkdir(parents=True, exist_ok=False)
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    config.save(output_dir / TRAINING_CONFIG_FILE, base_model_path=str(base_path), **provenance)
    (output_dir / "PACKAGE_VERSION").write_text(f"llm-controlplane {controlplane.__version__}\n", encoding="utf-8")
