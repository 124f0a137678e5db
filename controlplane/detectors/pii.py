"""Personal data found by pattern, with Presidio's predefined recognizers and no NLP engine.

Presidio's `AnalyzerEngine` loads the spaCy model `en_core_web_lg` by default, which this
project neither installs nor downloads. The recognizers used here are self-contained
(regular expressions with checksums, and the `phonenumbers` library), so they are built
directly and called without NLP artifacts. Without those artifacts Presidio's
context-word boost is also off: scores are the recognizers' base scores.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

from controlplane.detectors.normalize import normalize_with_offsets
from controlplane.detectors.prefilter import PatternPrefilter
from controlplane.errors import DetectorError

logger = logging.getLogger(__name__)

DEFAULT_ENTITIES = ("EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "IBAN_CODE", "US_SSN", "IP_ADDRESS")
OPTIONAL_ENTITIES = ("URL",)

# Drops the "very weak" US_SSN patterns (score 0.05, any nine digits or a ZIP+4 code)
# and the bare IPv6 "::" (0.1), and keeps phone numbers (0.4) and everything stronger.
DEFAULT_MIN_SCORE = 0.4


# Cheap necessary conditions, checked before each recognizer runs: a text without any of these
# cannot contain that entity, and most traffic has none. Presidio's phone recognizer
# (the phonenumbers library) costs about 1 ms per text, so skipping it matters most.
CANDIDATE_PATTERNS = {
    "EMAIL_ADDRESS": re.compile(r"@"),
    "PHONE_NUMBER": re.compile(r"(?:\d[^\w\n]{0,3}){7,}"),
    "CREDIT_CARD": re.compile(r"(?:\d[\s\-]?){12,}\d"),
    "IBAN_CODE": re.compile(r"[A-Za-z]{2}\s?\d{2}"),
    "US_SSN": re.compile(r"\d{3}\D{0,2}\d{2}\D{0,2}\d{4}"),
    "IP_ADDRESS": re.compile(r"\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}|[0-9A-Fa-f]{0,4}:[0-9A-Fa-f]{0,4}:"),
    "URL": re.compile(r"://|www\.|\.[a-z]{2,}", re.IGNORECASE),
}
# Entities whose candidate pattern needs a digit: one search for any digit skips them all.
_DIGIT_ENTITIES = frozenset({"PHONE_NUMBER", "CREDIT_CARD", "IBAN_CODE", "US_SSN"})
_DIGIT = re.compile(r"\d")


# The phone recognizer (the phonenumbers matcher) parses every digit run of a text as a
# candidate, which is most of its cost, so it runs only on segments of the text that can hold
# a phone number. The matcher's candidates never contain the characters below, and
# tests/unit/test_pii_phone_segments.py checks that. A segment that starts and ends with one of
# them therefore gives the same candidates as the whole text, with the same characters around
# each candidate, which the matcher also reads.
_PHONE_BREAKS = "bcdfghjklmpqruvwyzBCDFGHJKLMPQRUVWYZ\n\r\"'`{}<>|\\!?@$%&*^_"
_PHONE_SEGMENT = re.compile("[^" + re.escape(_PHONE_BREAKS) + "]+")
# Separators the matcher allows between digit groups, up to four in a row (phonenumbers 9.0).
_PHONE_PUNCTUATION = (
    "\\-xX\u2010-\u2015\u2212\u30fc\uff0d-\uff0f \u00a0\u00ad\u200b\u2060\u3000"
    "()\uff08\uff09\uff3b\uff3d.\\[\\]/~\u2053\u223c\uff5e"
)
# No valid number of the recognizer's regions, nor any number with a country code, has fewer
# than four digits. "x" counts as a digit because phonenumbers reads letters as keypad digits.
_PHONE_MIN_DIGITS = re.compile("[\\dxX](?:[" + _PHONE_PUNCTUATION + "]{0,4}[\\dxX]){3}")


@dataclass(frozen=True)
class PiiMatch:
    """One piece of personal data at [start, end) of the original text."""

    entity_type: str
    start: int
    end: int
    score: float


class PiiDetector:
    """Detector of emails, phone numbers, payment cards, IBANs, US SSNs and IP addresses in text."""

    def __init__(self, entities: Sequence[str] = DEFAULT_ENTITIES, min_score: float = DEFAULT_MIN_SCORE) -> None:
        unknown = sorted(set(entities) - set(DEFAULT_ENTITIES) - set(OPTIONAL_ENTITIES))
        if unknown:
            supported = ", ".join(DEFAULT_ENTITIES + OPTIONAL_ENTITIES)
            raise ValueError(f"unsupported PII entity types {unknown}. Choose from {supported}.")
        self.entities = tuple(entities)
        self.min_score = min_score
        self._recognizers = _build_recognizers(self.entities)
        self._candidates = _candidate_prefilter(self.entities)

    def find(self, text: str) -> list[PiiMatch]:
        """Return the personal data in `text`, at offsets of `text` itself, ordered by start."""
        if not text:
            return []
        normalized = normalize_with_offsets(text)
        found = []
        possible = self._candidates.candidates(normalized.text)
        has_digit = bool(possible) and _DIGIT.search(normalized.text) is not None
        for index in possible:
            entity, recognizer = self.entities[index], self._recognizers[index]
            if entity in _DIGIT_ENTITIES and not has_digit:
                continue
            if not CANDIDATE_PATTERNS[entity].search(normalized.text):
                continue
            for result in _analyze(entity, recognizer, normalized.text):
                matched = normalized.text[result.start : result.end]
                if result.score >= self.min_score and not _is_placeholder(result.entity_type, matched):
                    start, end = normalized.to_original(result.start, result.end)
                    found.append(PiiMatch(result.entity_type, start, end, float(result.score)))
        return _drop_overlaps(found)


@lru_cache(maxsize=4)
def _candidate_prefilter(entities: tuple[str, ...]) -> PatternPrefilter:
    return PatternPrefilter("pii-candidates", [CANDIDATE_PATTERNS[entity] for entity in entities])


@dataclass(frozen=True)
class _Result:
    """A recognizer result at offsets of the whole text."""

    entity_type: str
    start: int
    end: int
    score: float


def _analyze(entity: str, recognizer, text: str) -> list:
    if entity != "PHONE_NUMBER":
        return recognizer.analyze(text, list(recognizer.supported_entities), None)
    results = []
    for offset, segment in phone_segments(text):
        for result in recognizer.analyze(segment, list(recognizer.supported_entities), None):
            results.append(_Result(result.entity_type, result.start + offset, result.end + offset, result.score))
    return results


def phone_segments(text: str) -> list[tuple[int, str]]:
    """Return (offset, segment) pairs of `text` outside which the phone recognizer cannot match.

    Each segment keeps the break character on either side, because the matcher rejects a
    number that a letter touches. Segments whose digit groups are too short are left out.
    """
    bounds: list[list[int]] = []
    for run in _PHONE_SEGMENT.finditer(text):
        if not _PHONE_MIN_DIGITS.search(text, run.start(), run.end()):
            continue
        start, end = max(run.start() - 1, 0), min(run.end() + 1, len(text))
        if bounds and start <= bounds[-1][1]:
            bounds[-1][1] = end  # neighbors share a break character, so one call covers both
        else:
            bounds.append([start, end])
    return [(start, text[start:end]) for start, end in bounds]


def _is_placeholder(entity_type: str, matched: str) -> bool:
    # 127.0.0.1, ::1 and 0.0.0.0 name no one; they fill code samples and server configs.
    if entity_type != "IP_ADDRESS":
        return False
    try:
        address = ipaddress.ip_interface(matched).ip
    except ValueError:
        return False
    return address.is_loopback or address.is_unspecified


def _drop_overlaps(matches: list[PiiMatch]) -> list[PiiMatch]:
    # One label per stretch of text: a card number is not also counted as a phone
    # number. The higher score wins, then the longer match.
    kept: list[PiiMatch] = []
    for match in sorted(matches, key=lambda item: (-item.score, item.start - item.end, item.start)):
        if all(match.end <= other.start or match.start >= other.end for other in kept):
            kept.append(match)
    return sorted(kept, key=lambda item: (item.start, item.end))


def _build_recognizers(entities: Sequence[str]) -> list:
    try:
        factories = _recognizer_factories()
        return [factories[entity]() for entity in entities]
    except (ImportError, OSError) as error:
        message = f"PII recognizers failed to load: {error}. Reinstall presidio-analyzer and tldextract."
        raise DetectorError(message) from error


def _recognizer_factories() -> dict[str, Callable[[], object]]:
    # Importing presidio_analyzer takes seconds (it imports spaCy and transformers), so it
    # happens when a detector is built, not when this module is imported.
    from presidio_analyzer.predefined_recognizers import (
        CreditCardRecognizer,
        IbanRecognizer,
        IpRecognizer,
        PhoneRecognizer,
        UrlRecognizer,
        UsSsnRecognizer,
    )

    return {
        "EMAIL_ADDRESS": _offline_email_recognizer,
        # Strict grouping (leniency 2) drops digit runs such as "1 2 3 4 5 6 7 8 9 10",
        # which Presidio's default (leniency 1, any valid number) reports as phone numbers.
        "PHONE_NUMBER": lambda: PhoneRecognizer(leniency=2),
        "CREDIT_CARD": CreditCardRecognizer,  # keeps only numbers that pass the Luhn check
        "IBAN_CODE": IbanRecognizer,  # keeps only codes whose check digits are valid
        "US_SSN": UsSsnRecognizer,
        "IP_ADDRESS": IpRecognizer,
        "URL": UrlRecognizer,
    }


def _offline_email_recognizer() -> object:
    import tldextract
    from presidio_analyzer.predefined_recognizers import EmailRecognizer

    # Presidio validates the domain with `tldextract.extract`, whose default extractor
    # downloads the Public Suffix List on first use. This one reads only the snapshot
    # bundled with tldextract and writes no cache.
    extract = tldextract.TLDExtract(cache_dir=None, suffix_list_urls=(), fallback_to_snapshot=True)

    class OfflineEmailRecognizer(EmailRecognizer):
        def validate_result(self, pattern_text: str) -> bool:
            return extract(pattern_text).fqdn != ""

    return OfflineEmailRecognizer()
