"""Readers of the public labelled datasets that `controlplane.eval` measures the detectors on.

The datasets are not part of the package: they live in a folder beside the repository
(`../shared/datasets`) or wherever `CONTROLPLANE_DATASETS` points. Each reader returns plain
tuples and can take a deterministic random sample, so a quick run covers rows from the whole
file rather than only the first ones.
"""

from __future__ import annotations

import csv
import json
import os
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from controlplane.errors import ConfigurationError

DATASETS_ENV = "CONTROLPLANE_DATASETS"
REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATASETS_DIR = REPO_ROOT.parent / "shared" / "datasets"

SURGE_FILE = "surge_toxicity_en.csv"
HH_RLHF_FILE = "hh_rlhf_harmless_test.jsonl"
CODEALPACA_FILE = "codealpaca.jsonl"
ALPACA_SEED_FILE = "alpaca_seed_tasks.jsonl"

_HUMAN = "\n\nHuman:"
_ASSISTANT = "\n\nAssistant:"

Row = TypeVar("Row")


@dataclass(frozen=True)
class RedTeamDialogue:
    """One hh-rlhf comparison: the human turns, and the final assistant turn of each side."""

    human_turns: tuple[str, ...]
    chosen: str  # final assistant turn of the less harmful dialogue
    rejected: str  # final assistant turn of the more harmful dialogue
    line: int = 0  # position in the file, counting the parsed comparisons from 0

    @property
    def prompt(self) -> str:
        """Return the human turns joined by newlines, as one prompt."""
        return "\n".join(self.human_turns)


def datasets_dir() -> Path:
    """Return the datasets folder from CONTROLPLANE_DATASETS or ../shared/datasets; raise when it is missing."""
    configured = os.environ.get(DATASETS_ENV)
    folder = Path(configured) if configured else DEFAULT_DATASETS_DIR
    if not folder.is_dir():
        source = f"{DATASETS_ENV}={configured}" if configured else f"the default {DEFAULT_DATASETS_DIR}"
        raise ConfigurationError(
            f"datasets folder not found: {folder} (from {source}). Set {DATASETS_ENV} to the folder that "
            f"contains {SURGE_FILE}, {HH_RLHF_FILE}, {CODEALPACA_FILE} and {ALPACA_SEED_FILE}."
        )
    return folder


def sample(rows: Sequence[Row], size: int | None, seed: int = 0) -> list[Row]:
    """Return `size` rows drawn without replacement in file order, or all rows when size is None."""
    if size is None or size >= len(rows):
        return list(rows)
    chosen = sorted(random.Random(seed).sample(range(len(rows)), size))
    return [rows[index] for index in chosen]


def read_surge(folder: Path, size: int | None = None) -> list[tuple[str, bool]]:
    """Return (comment, is_toxic) rows of the Surge AI toxicity set."""
    path = folder / SURGE_FILE
    with _open(path) as handle:
        rows = [(row["text"], _toxic_label(row["is_toxic"], path)) for row in csv.DictReader(handle)]
    return sample(rows, size)


def read_red_team(folder: Path, size: int | None = None) -> list[RedTeamDialogue]:
    """Return the hh-rlhf harmless-base test comparisons that parse into human and assistant turns."""
    dialogues = []
    for record in _json_lines(folder / HH_RLHF_FILE):
        humans, chosen = _split_dialogue(record["chosen"])
        _, rejected = _split_dialogue(record["rejected"])
        if humans and chosen is not None and rejected is not None:
            dialogues.append(RedTeamDialogue(tuple(humans), chosen, rejected, line=len(dialogues)))
    return sample(dialogues, size)


def read_instructions(folder: Path, name: str, size: int | None = None) -> list[tuple[str, str]]:
    """Return (prompt, answer) pairs of an instruction set, the prompt being the instruction and then its input."""
    pairs = []
    for record in _json_lines(folder / name):
        prompt = record["instruction"]
        if record.get("input"):
            prompt = f"{prompt}\n{record['input']}"
        pairs.append((prompt, record.get("output") or ""))
    return sample(pairs, size)


def _split_dialogue(dialogue: str) -> tuple[list[str], str | None]:
    # Turns start with "\n\nHuman:" or "\n\nAssistant:", and each turn ends where the next marker starts.
    human_turns: list[str] = []
    final_assistant: str | None = None
    for speaker, text in _turns(dialogue):
        if speaker == "human":
            human_turns.append(text)
            final_assistant = None
        else:
            final_assistant = text
    return human_turns, final_assistant


def _turns(dialogue: str) -> Iterator[tuple[str, str]]:
    position = 0
    markers = []
    while True:
        human = dialogue.find(_HUMAN, position)
        assistant = dialogue.find(_ASSISTANT, position)
        candidates = [(index, marker) for index, marker in ((human, _HUMAN), (assistant, _ASSISTANT)) if index >= 0]
        if not candidates:
            break
        index, marker = min(candidates)
        markers.append((index, marker))
        position = index + len(marker)
    for number, (index, marker) in enumerate(markers):
        end = markers[number + 1][0] if number + 1 < len(markers) else len(dialogue)
        speaker = "human" if marker == _HUMAN else "assistant"
        yield speaker, dialogue[index + len(marker) : end].strip()


def _toxic_label(value: str, path: Path) -> bool:
    if value not in ("Toxic", "Not Toxic"):
        raise ConfigurationError(f"{path}: is_toxic must be 'Toxic' or 'Not Toxic', got {value!r}")
    return value == "Toxic"


def _json_lines(path: Path) -> list[dict]:
    with _open(path) as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _open(path: Path):
    try:
        return path.open(encoding="utf-8", newline="")
    except FileNotFoundError as error:
        raise ConfigurationError(f"dataset file not found: {path}. Check {DATASETS_ENV}.") from error
