"""The phone recognizer finds the same numbers on the segments of a text as on the whole text."""

from __future__ import annotations

import json
import random
import re

import phonenumbers
import pytest
from phonenumbers import phonenumbermatcher, phonenumberutil

from controlplane.detectors import pii

CASES = [
    "Call +1 415-555-0132 now.",
    "call me at 415 555 0132 ext 12 or (415) 555-0199x7",
    "office: +44 20 7946 0958, mobile 07700 900123; fax +49 30 901820",
    "int[] nums = {37, 45, 29, 8, 12, 88, 58}; phone=4155550132",
    "38390 - (19392 + 11078) = 38390 -  30470 = 7920.\nSo, in 2018, 415.555.0132 was called",
    "numbers 1 2 3 4 5 6 7 8 9 10 and +33 1 42 68 53 00 and 2015-2020",
    "at 10:30 call 415-555-0132:45 or 020 7946 0958\tx 44",
    "a415 555 0132b, 415 555 0132 at 12:00, $415 555 0132",
    "tel. +1 (415) 555 0132 / x 12 / 415\\ x 555 0132",
    "ＴＥＬ ＋１ ４１５ ５５５ ０１３２, ４１５－５５５－０１３２",
]


def _whole(recognizer, text):
    return sorted((r.start, r.end, r.score) for r in recognizer.analyze(text, ["PHONE_NUMBER"], None))


def _segmented(recognizer, text):
    found = []
    for offset, segment in pii.phone_segments(text):
        found += [(r.start + offset, r.end + offset, r.score) for r in recognizer.analyze(segment, ["PHONE_NUMBER"], None)]
    return sorted(found)


@pytest.fixture(scope="module")
def recognizer():
    return pii._recognizer_factories()["PHONE_NUMBER"]()


def test_segments_same_numbers_on_cases(recognizer):
    whole = [_whole(recognizer, text) for text in CASES]
    assert sum(map(len, whole)) >= 12
    assert [_segmented(recognizer, text) for text in CASES] == whole


def test_segments_same_numbers_on_random_texts(recognizer):
    rng = random.Random(5)
    pieces = ["415", "555", "0132", "+1", "(", ")", " ", "-", ".", "/", "x", "ext", ",", ":", "\n", "\t", "a", "b",
              "call ", "12", "7", "#", "0", "20 7946 0958", "+44", "q", ";", "=", "~", "\u2013"]
    texts = ["".join(rng.choice(pieces) for _ in range(rng.randint(5, 40))) for _ in range(400)]
    whole = [_whole(recognizer, text) for text in texts]
    assert sum(map(len, whole)) > 20
    assert [_segmented(recognizer, text) for text in texts] == whole


def test_segments_same_numbers_on_datasets(datasets_dir, recognizer):
    texts = []
    for name in ("codealpaca.jsonl", "gpteacher_roleplay.jsonl", "alpaca_seed_tasks.jsonl"):
        with (datasets_dir / name).open(encoding="utf-8") as handle:
            for line in handle:
                row = json.loads(line)
                texts += [f"{row.get('instruction', '')}\n{row.get('input', '')}", row.get("output", "")]
    texts = [text for text in texts if pii.CANDIDATE_PATTERNS["PHONE_NUMBER"].search(text)]
    assert len(texts) > 300
    assert [_segmented(recognizer, text) for text in texts] == [_whole(recognizer, text) for text in texts]


def test_breaks_never_inside_a_candidate():
    for character in pii._PHONE_BREAKS:
        for template in ("415 555 0132{c}ext 12", "{c}+1 415 555 0132", "415{c}555 0132", "1{c}2", "0132 x{c}12"):
            text = template.format(c=character)
            position = text.index(character)
            spans = [match.span() for match in phonenumbermatcher._PATTERN.finditer(text)]
            assert all(not start <= position < end for start, end in spans), (character, text, spans)


def test_punctuation_covers_the_matcher():
    theirs = re.compile("[" + phonenumberutil._VALID_PUNCTUATION + "]")
    ours = re.compile("[" + pii._PHONE_PUNCTUATION + "]")
    missing = [hex(code) for code in range(0x10000) if theirs.match(chr(code)) and not ours.match(chr(code))]
    assert missing == []


def test_shortest_valid_number_has_four_digits():
    regions = pii._recognizer_factories()["PHONE_NUMBER"]().supported_regions
    shortest = []
    for region in phonenumbers.SUPPORTED_REGIONS:
        metadata = phonenumberutil.PhoneMetadata.metadata_for_region(region)
        lengths = [length for length in metadata.general_desc.possible_length if length > 0]
        if lengths:
            shortest.append(min(lengths) + (0 if region in regions else len(str(metadata.country_code))))
    assert min(shortest) >= 4
