"""Examples for training and evaluation: chat JSONL in, token ids with the prompt masked out.

The loss covers the completion and the end-of-sequence token only, so the adapter learns
to answer, not to repeat prompts. Training and evaluation format prompts the same way.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from controlplane.errors import ConfigurationError

IGNORE_INDEX = -100  # label value that torch's cross-entropy skips
PLAIN_TEMPLATE = "### User:\n{prompt}\n### Assistant:\n"


@dataclass(frozen=True)
class Pair:
    """A prompt and the completion expected for it (the reference answer, in evaluation)."""

    prompt: str
    completion: str


def read_chat_jsonl(path: Path) -> list[Pair]:
    """Read the first user turn and the first assistant turn of each line of an OpenAI chat JSONL file."""
    pairs = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                messages = json.loads(line)["messages"]
                user = next(m["content"] for m in messages if m["role"] == "user")
                assistant = next(m["content"] for m in messages if m["role"] == "assistant")
            except (ValueError, KeyError, TypeError, StopIteration) as error:
                raise ConfigurationError(f"invalid chat record at {path}:{number}: {error!r}; expected a user and an assistant message") from error
            pairs.append(Pair(user, assistant))
    return pairs


def read_reference_jsonl(path: Path) -> list[Pair]:
    """Read {"prompt": ..., "reference": ...} lines, such as the general evaluation set."""
    pairs = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                pairs.append(Pair(record["prompt"], record["reference"]))
            except (ValueError, KeyError, TypeError) as error:
                raise ConfigurationError(f"invalid reference record at {path}:{number}: {error!r}; expected prompt and reference") from error
    return pairs


def prompt_text(tokenizer: Any, prompt: str) -> str:
    """Format a user prompt with the tokenizer's chat template, or with PLAIN_TEMPLATE when it has none."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
    return PLAIN_TEMPLATE.format(prompt=prompt)


def encode(tokenizer: Any, pair: Pair, max_length: int) -> tuple[list[int], list[int]]:
    """Return input ids and labels, the prompt's labels masked; long prompts lose their start first."""
    prompt_ids = tokenizer(prompt_text(tokenizer, pair.prompt), add_special_tokens=False)["input_ids"]
    target_ids = tokenizer(pair.completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    # The completion keeps at least half the budget, and all of it when the prompt is short.
    target_ids = target_ids[: max(max_length - len(prompt_ids), max_length // 2)]
    budget = max_length - len(target_ids)
    if len(prompt_ids) > budget:
        prompt_ids = prompt_ids[len(prompt_ids) - budget :]
    return prompt_ids + target_ids, [IGNORE_INDEX] * len(prompt_ids) + target_ids


def collate(encoded: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch; padding gets attention 0 and label IGNORE_INDEX."""
    width = max(len(ids) for ids, _ in encoded)
    input_ids, labels, attention = [], [], []
    for ids, target in encoded:
        padding = width - len(ids)
        input_ids.append(ids + [pad_id] * padding)
        labels.append(target + [IGNORE_INDEX] * padding)
        attention.append([1] * len(ids) + [0] * padding)
    return {"input_ids": torch.tensor(input_ids), "labels": torch.tensor(labels), "attention_mask": torch.tensor(attention)}


def token_losses(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Return the summed negative log-likelihood of the batch's labelled tokens and their count."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    # Token t predicts token t + 1.
    shifted_logits = logits[:, :-1, :].reshape(-1, logits.size(-1)).float()
    shifted_labels = batch["labels"][:, 1:].reshape(-1)
    total = torch.nn.functional.cross_entropy(shifted_logits, shifted_labels, ignore_index=IGNORE_INDEX, reduction="sum")
    return total, int((shifted_labels != IGNORE_INDEX).sum())


@torch.no_grad()
def mean_loss(model: Any, tokenizer: Any, pairs: list[Pair], max_length: int, batch_size: int = 8) -> float:
    """Return the mean per-token loss of the completions given their prompts (log of the perplexity)."""
    model.eval()
    total, count = 0.0, 0
    encoded = [encode(tokenizer, pair, max_length) for pair in pairs]
    for start in range(0, len(encoded), batch_size):
        batch_total, batch_count = token_losses(model, collate(encoded[start : start + batch_size], tokenizer.pad_token_id))
        total += float(batch_total)
        count += batch_count
    if count == 0:
        raise ConfigurationError("no completion tokens to score: every example is empty after tokenization")
    return total / count


def perplexity(loss: float) -> float:
    """Return exp(loss), capped so that a diverged model gives a large number, not an overflow."""
    return math.exp(min(loss, 700.0))
