"""Detector quality on public labelled data: `python -m controlplane.eval`, which `make eval` runs.

Measures the safety scorer as the worker runs it, on the datasets folder (`eval_data`):

- offensive language: precision, recall and F1 on the Surge AI toxicity set, at the scorer's
  threshold. It is 0.5, fixed before measuring, and no part of the detector is fitted on this set.
- red team: on hh-rlhf harmless-base, how often the final assistant turn of the more harmful
  (`rejected`) dialogue is flagged versus that of the less harmful (`chosen`) one.
- jailbreak: the share of prompts with a jailbreak span, on hh-rlhf human turns and on benign
  instruction prompts. No set here labels jailbreaks, so these are flag rates, not accuracy.
- refusal: the refusal rate of `chosen` versus `rejected` final turns.
- false positives of every detector on code-assistant pairs, where none should fire.

Writes results/eval.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from controlplane import __version__
from controlplane.detectors.safety import Item, SafetyResult, SafetyScorer
from controlplane.errors import ConfigurationError
from controlplane.eval_data import (
    ALPACA_SEED_FILE,
    CODEALPACA_FILE,
    HH_RLHF_FILE,
    REPO_ROOT,
    SURGE_FILE,
    RedTeamDialogue,
    datasets_dir,
    read_instructions,
    read_red_team,
    read_surge,
)

logger = logging.getLogger(__name__)

DEFAULT_OUTPUT = REPO_ROOT / "results" / "eval.json"
FALSE_POSITIVE_PAIRS = 1000
BATCH_SIZE = 256


def evaluate(
    folder: Path,
    size: int | None = None,
    use_embeddings: bool = True,
    false_positive_pairs: int = FALSE_POSITIVE_PAIRS,
    throughput_pairs: int = 0,
) -> dict[str, Any]:
    """Run every measurement on the datasets in `folder` and return the report as a dict."""
    started = time.perf_counter()
    scorer = SafetyScorer(use_embeddings=use_embeddings)
    report: dict[str, Any] = {
        "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "package_version": __version__,
        "datasets_dir": str(folder),
        "sample_size": size,
        "embeddings": use_embeddings,
        "offensive_language": evaluate_offensive(scorer, read_surge(folder, size)),
    }
    report.update(evaluate_red_team(scorer, read_red_team(folder, size)))

    benign = {
        "codealpaca_prompts": read_instructions(folder, CODEALPACA_FILE, size),
        "alpaca_seed_prompts": read_instructions(folder, ALPACA_SEED_FILE, size),
    }
    report["jailbreak"]["benign"] = {
        name: _rate(score_in_batches(scorer, [(prompt, None) for prompt, _ in pairs]), lambda result: result.attack)
        for name, pairs in benign.items()
    }

    fp_pairs = read_instructions(folder, CODEALPACA_FILE, min(false_positive_pairs, size or false_positive_pairs))
    report["false_positives"] = evaluate_false_positives(scorer, fp_pairs)

    if throughput_pairs:
        other = SafetyScorer(use_embeddings=not use_embeddings)
        with_embeddings, without = (scorer, other) if use_embeddings else (other, scorer)
        items = read_instructions(folder, CODEALPACA_FILE, throughput_pairs)
        report["throughput"] = measure_throughput(items, {"with_embeddings": with_embeddings, "without_embeddings": without})
    report["elapsed_seconds"] = round(time.perf_counter() - started, 1)
    logger.info("evaluation finished in %.1f s", report["elapsed_seconds"])
    return report


def evaluate_offensive(scorer: SafetyScorer, rows: Sequence[tuple[str, bool]]) -> dict[str, Any]:
    """Return precision, recall and F1 of the toxicity flag on (text, is_toxic) rows."""
    results = score_in_batches(scorer, [(text, None) for text, _ in rows])
    true_positives = false_positives = false_negatives = 0
    for (_, toxic), result in zip(rows, results):
        true_positives += result.toxic and toxic
        false_positives += result.toxic and not toxic
        false_negatives += toxic and not result.toxic
    precision = _ratio(true_positives, true_positives + false_positives)
    recall = _ratio(true_positives, true_positives + false_negatives)
    f1 = _ratio(2 * true_positives, 2 * true_positives + false_positives + false_negatives)
    return {
        "dataset": SURGE_FILE,
        "rows": len(rows),
        "toxic_rows": sum(1 for _, toxic in rows if toxic),
        "threshold": scorer.toxicity_threshold,
        "threshold_source": "fixed at the default 0.5 before measuring; nothing in the detector is fitted on this file",
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "true_positives": true_positives,
        "false_positives": false_positives,
        "false_negatives": false_negatives,
    }


def evaluate_red_team(scorer: SafetyScorer, dialogues: Sequence[RedTeamDialogue]) -> dict[str, Any]:
    """Return the red-team ratio, the jailbreak rate of human turns and the refusal rates on hh-rlhf."""
    items: list[Item] = []
    for dialogue in dialogues:
        items.extend([(dialogue.prompt, dialogue.chosen), (dialogue.prompt, dialogue.rejected)])
    results = score_in_batches(scorer, items)
    chosen, rejected = results[0::2], results[1::2]

    def completion_flagged(result: SafetyResult) -> bool:
        return any(span.field == "completion" for span in result.spans)

    def completion_toxic(result: SafetyResult) -> bool:
        return any(span.field == "completion" and span.detector == "toxicity" for span in result.spans)

    # The completion thresholds of the safety scorer were chosen on the even-numbered
    # comparisons; the odd-numbered ones are held out and give the headline ratio.
    held_out = [index for index, dialogue in enumerate(dialogues) if dialogue.line % 2 == 1]
    rejected_rate = _rate([rejected[index] for index in held_out], completion_flagged)
    chosen_rate = _rate([chosen[index] for index in held_out], completion_flagged)
    rejected_all, chosen_all = _rate(rejected, completion_flagged), _rate(chosen, completion_flagged)
    return {
        "red_team": {
            "dataset": HH_RLHF_FILE,
            "dialogues": len(dialogues),
            "measured": "share of final assistant turns with any span (offensive language or personal data) on the completion",
            "held_out": "odd-numbered comparisons; the completion thresholds were chosen on the even-numbered ones",
            "rejected": rejected_rate,
            "chosen": chosen_rate,
            # Both sides have one final turn per dialogue, so the ratio of counts is the ratio of rates.
            "ratio": _ratio(rejected_rate["count"], chosen_rate["count"]) if chosen_rate["count"] else None,
            "ratio_all": _ratio(rejected_all["count"], chosen_all["count"]) if chosen_all["count"] else None,
            "toxic_rejected": _rate(rejected, completion_toxic),
            "toxic_chosen": _rate(chosen, completion_toxic),
        },
        "jailbreak": {
            "measured": "share of prompts with a jailbreak span; no dataset here labels jailbreaks, so these are flag rates",
            "hh_rlhf_human_turns": _rate(chosen, lambda result: result.attack),
        },
        "refusal": {
            "dataset": HH_RLHF_FILE,
            "measured": "share of final assistant turns the refusal detector marks as refused",
            "chosen": _rate(chosen, lambda result: result.refused),
            "rejected": _rate(rejected, lambda result: result.refused),
            "attack_succeeded_chosen": _rate(chosen, lambda result: result.attack_succeeded is True),
            "attack_succeeded_rejected": _rate(rejected, lambda result: result.attack_succeeded is True),
        },
    }


def evaluate_false_positives(scorer: SafetyScorer, pairs: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """Return, per detector, the share of code-assistant pairs it fires on."""
    results = score_in_batches(scorer, list(pairs))
    return {
        "dataset": CODEALPACA_FILE,
        "pairs": len(pairs),
        "pii": _rate(results, lambda result: result.has_pii),
        "toxicity": _rate(results, lambda result: result.toxic),
        "jailbreak": _rate(results, lambda result: result.attack),
        "refusal": _rate(results, lambda result: result.refused),
        "any_span": _rate(results, lambda result: result.flagged),
    }


def measure_throughput(items: Sequence[Item], scorers: dict[str, SafetyScorer]) -> dict[str, Any]:
    """Return the pairs per second of each loaded scorer on `items`, scored in batches of 500 as the worker does."""
    measured: dict[str, Any] = {"dataset": CODEALPACA_FILE, "pairs": len(items), "batch_size": 500}
    for name, scorer in scorers.items():
        started = time.perf_counter()
        score_in_batches(scorer, items, batch_size=500)
        elapsed = time.perf_counter() - started
        measured[name] = {"seconds": round(elapsed, 2), "pairs_per_second": round(len(items) / elapsed, 1)}
        logger.info("throughput %s: %d pairs in %.1f s", name, len(items), elapsed)
    return measured


def score_in_batches(scorer: SafetyScorer, items: Sequence[Item], batch_size: int = BATCH_SIZE) -> list[SafetyResult]:
    """Score `items` in batches, as the worker does, and return the results in order."""
    started = time.perf_counter()
    results: list[SafetyResult] = []
    for start in range(0, len(items), batch_size):
        results.extend(scorer.score(items[start : start + batch_size]))
    logger.info("scored %d items in %.1f s", len(items), time.perf_counter() - started)
    return results


def format_table(report: dict[str, Any]) -> str:
    """Return the headline figures of a report as an aligned text table."""
    offensive, red_team, refusal = report["offensive_language"], report["red_team"], report["refusal"]
    jailbreak, fp = report["jailbreak"], report["false_positives"]
    rows = [
        ("offensive language", f"{SURGE_FILE}, threshold {offensive['threshold']}", "precision", offensive["precision"]),
        ("", "", "recall", offensive["recall"]),
        ("", "", "F1", offensive["f1"]),
        ("red team", HH_RLHF_FILE + " (held out)", "flag rate rejected", red_team["rejected"]["rate"]),
        ("", "", "flag rate chosen", red_team["chosen"]["rate"]),
        ("", "", "ratio rejected/chosen", red_team["ratio"]),
        ("", "", "ratio, all comparisons", red_team["ratio_all"]),
        ("jailbreak", "hh-rlhf human turns", "flag rate", jailbreak["hh_rlhf_human_turns"]["rate"]),
        ("", "codealpaca prompts", "flag rate", jailbreak["benign"]["codealpaca_prompts"]["rate"]),
        ("", "alpaca seed prompts", "flag rate", jailbreak["benign"]["alpaca_seed_prompts"]["rate"]),
        ("refusal", "hh-rlhf final turns", "rate chosen", refusal["chosen"]["rate"]),
        ("", "", "rate rejected", refusal["rejected"]["rate"]),
    ]
    for index, name in enumerate(("pii", "toxicity", "jailbreak", "refusal", "any_span")):
        heading = ("false positives", f"{CODEALPACA_FILE}, {fp['pairs']} pairs") if index == 0 else ("", "")
        rows.append((*heading, name, fp[name]["rate"]))
    if "throughput" in report:
        throughput = report["throughput"]
        for index, name in enumerate(("with_embeddings", "without_embeddings")):
            heading = ("throughput", f"{throughput['pairs']} codealpaca pairs") if index == 0 else ("", "")
            rows.append((*heading, f"pairs/s {name.replace('_', ' ')}", throughput[name]["pairs_per_second"]))
    widths = [max(len(str(row[column])) for row in rows) for column in range(3)]
    lines = []
    for row in rows:
        if row[3] is None:
            value = "n/a"
        elif isinstance(row[3], float):
            value = f"{row[3]:.3f}"
        else:
            value = str(row[3])
        lines.append("  ".join(str(cell).ljust(width) for cell, width in zip(row[:3], widths)) + "  " + value)
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the evaluation from the command line; return the exit status."""
    parser = argparse.ArgumentParser(prog="python -m controlplane.eval", description=__doc__.splitlines()[0])
    parser.add_argument("--sample", type=int, default=None, help="rows drawn from each dataset (default: all rows)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help=f"report path (default: {DEFAULT_OUTPUT})")
    parser.add_argument("--no-embeddings", action="store_true", help="score without the sentence-embedding model")
    parser.add_argument(
        "--throughput-pairs", type=int, default=0, help="also time the scorer on this many codealpaca pairs (default: 0, off)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        folder = datasets_dir()
    except ConfigurationError as error:
        print(f"eval: {error}", file=sys.stderr)
        return 2
    report = evaluate(folder, args.sample, not args.no_embeddings, throughput_pairs=args.throughput_pairs)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(format_table(report))
    print(f"report written to {args.output}")
    return 0


def _rate(results: Sequence[SafetyResult], predicate: Callable[[SafetyResult], bool]) -> dict[str, Any]:
    count = sum(1 for result in results if predicate(result))
    return {"count": count, "total": len(results), "rate": _ratio(count, len(results))}


def _ratio(numerator: float, denominator: float) -> float:
    return round(numerator / denominator, 4) if denominator else 0.0


if __name__ == "__main__":
    sys.exit(main())
