"""Settings of a LoRA fine-tune and of the evaluation gate, validated when they are created."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import controlplane
from controlplane.errors import ConfigurationError


@dataclass(frozen=True)
class LoraTrainingConfig:
    """LoRA hyperparameters and the training loop's settings."""

    r: int = 8  # rank of the update matrices
    alpha: float = 16.0  # scaling numerator: the update is scaled by alpha / r
    dropout: float = 0.05  # dropout on the LoRA input
    # Module names (or name suffixes) to adapt; None uses peft's defaults for the architecture.
    target_modules: tuple[str, ...] | None = None
    epochs: int = 1
    learning_rate: float = 2e-4
    max_steps: int | None = None  # when set, training runs exactly this many steps, regardless of `epochs`
    batch_size: int = 4
    max_length: int = 512  # tokens of prompt plus completion; the prompt's start is cut first
    seed: int = 0
    max_grad_norm: float = 1.0
    log_every: int = 10  # optimizer steps between two progress lines

    def __post_init__(self) -> None:
        if self.target_modules is not None:
            modules = (self.target_modules,) if isinstance(self.target_modules, str) else tuple(self.target_modules)
            object.__setattr__(self, "target_modules", modules)
        _check(self.r >= 1, "r", self.r, "an integer of at least 1")
        _check(self.alpha > 0, "alpha", self.alpha, "a positive number")
        _check(0.0 <= self.dropout < 1.0, "dropout", self.dropout, "a value in [0, 1)")
        _check(self.epochs >= 1, "epochs", self.epochs, "an integer of at least 1")
        _check(self.learning_rate > 0, "learning_rate", self.learning_rate, "a positive number")
        _check(self.max_steps is None or self.max_steps >= 1, "max_steps", self.max_steps, "empty or at least 1")
        _check(self.batch_size >= 1, "batch_size", self.batch_size, "an integer of at least 1")
        _check(self.max_length >= 8, "max_length", self.max_length, "at least 8 tokens")
        _check(self.max_grad_norm > 0, "max_grad_norm", self.max_grad_norm, "a positive number")
        _check(self.log_every >= 1, "log_every", self.log_every, "an integer of at least 1")
        if self.target_modules is not None:
            _check(bool(self.target_modules) and all(isinstance(m, str) and m.strip() for m in self.target_modules),
                   "target_modules", self.target_modules, "a non-empty list of module names")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> LoraTrainingConfig:
        """Build from a dict such as a job's params or a saved training_config.json; unknown keys are an error."""
        known = {field.name for field in fields(cls)}
        unknown = sorted(set(values) - known - {"package_version", "provenance"})
        if unknown:
            raise ConfigurationError(f"unknown LoRA training settings {unknown}: use {sorted(known)}")
        return cls(**{key: value for key, value in values.items() if key in known})

    def to_dict(self) -> dict[str, Any]:
        """Return the settings as JSON-ready values, stamped with the package version."""
        values = asdict(self)
        values["target_modules"] = list(self.target_modules) if self.target_modules is not None else None
        values["package_version"] = controlplane.__version__
        return values

    def save(self, path: Path, **provenance: Any) -> None:
        """Write the settings and the package version as JSON, with `provenance` (base model, dataset) under its own key."""
        document = {**self.to_dict(), "provenance": provenance}
        path.write_text(json.dumps(document, indent=2, default=str), encoding="utf-8")


@dataclass(frozen=True)
class GateThresholds:
    """Rules an adapter must pass before it may be promoted, relative to the model in use."""

    # Relative drop of perplexity on the dataset's eval split, e.g. 0.02 requires 2 % lower perplexity.
    min_eval_perplexity_improvement: float = 0.02
    # Relative rise of perplexity on the general set allowed, e.g. 0.05 allows 5 % higher perplexity.
    max_general_perplexity_increase: float = 0.05
    # Rise of the share of generated texts the safety detectors flag, in absolute terms (0.0: no rise at all).
    max_safety_rate_increase: float = 0.0

    def __post_init__(self) -> None:
        _check(self.min_eval_perplexity_improvement < 1.0, "min_eval_perplexity_improvement",
               self.min_eval_perplexity_improvement, "below 1 (a relative drop of perplexity)")
        _check(self.max_general_perplexity_increase >= 0, "max_general_perplexity_increase",
               self.max_general_perplexity_increase, "zero or more")
        _check(0.0 <= self.max_safety_rate_increase <= 1.0, "max_safety_rate_increase",
               self.max_safety_rate_increase, "a share in [0, 1]")

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> GateThresholds:
        """Build from a job's `gate` params; unknown keys are an error."""
        values = values or {}
        known = {field.name for field in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigurationError(f"unknown gate thresholds {unknown}: use {sorted(known)}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """Return the thresholds as JSON-ready values."""
        return asdict(self)


def _check(valid: bool, name: str, value: Any, expected: str) -> None:
    if not valid:
        raise ConfigurationError(f"invalid {name} {value!r}: expected {expected}")
