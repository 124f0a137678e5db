"""The PII candidate patterns only skip recognizers that would have found nothing."""

from __future__ import annotations

import json
import re

import pytest

from controlplane.detectors import pii

CASES = [
    "call +1 (415) 555-0132 tomorrow",
    "+44 (0) 20 7946 0958",
    "card 4111 1111 1111 1111 expires",
    "card 4111-1111-1111-1111",
    "IBAN GB82 WEST 1234 5698 7654 32",
    "ssn 078-05-1120",
    "server at 192.168.10.20 and fe80::1ff:fe23:4567:890a",
    "mail j.doe@example.org",
    "visit https://example.org/a?b=c",
    "for i in range(10): print(i)",
]


@pytest.fixture
def full_scan(monkeypatch):
    """Candidate patterns that let every recognizer run."""
    def disable():
        for entity in pii.CANDIDATE_PATTERNS:
            monkeypatch.setitem(pii.CANDIDATE_PATTERNS, entity, re.compile(""))
    return disable


def _find_both(texts, full_scan):
    detector = pii.PiiDetector(entities=pii.DEFAULT_ENTITIES + pii.OPTIONAL_ENTITIES)
    filtered = [detector.find(text) for text in texts]
    full_scan()
    return filtered, [detector.find(text) for text in texts]


def test_prefilter_same_matches_on_cases(full_scan):
    filtered, full = _find_both(CASES, full_scan)
    assert sum(map(len, full)) >= 9
    assert filtered == full


def test_prefilter_same_matches_on_datasets(datasets_dir, full_scan):
    texts = []
    with (datasets_dir / "hh_rlhf_harmless_test.jsonl").open(encoding="utf-8") as handle:
        for line in list(handle)[:300]:
            row = json.loads(line)
            texts += [row["chosen"], row["rejected"]]
    with (datasets_dir / "codealpaca.jsonl").open(encoding="utf-8") as handle:
        for line in list(handle)[:600]:
            row = json.loads(line)
            texts += [row["instruction"] + "\n" + row.get("input", ""), row["output"]]
    filtered, full = _find_both(texts, full_scan)
    assert sum(map(len, full)) > 0
    assert filtered == full
