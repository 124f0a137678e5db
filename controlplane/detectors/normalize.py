"""Text normalization shared by the detectors, so that look-alike spellings score like plain ones.

`normalize_with_offsets` applies, in order: Unicode NFKC, removal of invisible format
characters (zero-width and bidirectional controls), and folding of common confusable
characters (Cyrillic and Greek look-alikes, typographic dashes and quotes) to ASCII.
It keeps, for every output character, the span of input characters it came from, so
matches found on the normalized text can be reported at offsets of the original text.
`fold_leetspeak` is a further, lossy step meant only for the offensive-language check, and
`fold_leet_characters` its length-preserving part, which keeps offsets for pattern spans.
`find_base64_runs` decodes base64 payloads, within a byte budget, so that the detectors can
scan the decoded text too.
"""

from __future__ import annotations

import base64
import binascii
import re
import unicodedata
from dataclasses import dataclass

# Characters that render as nothing but split words and patterns apart: zero-width
# space, joiners and marks, bidirectional embeddings, overrides and isolates, word
# joiner and invisible operators, the byte-order mark, the soft hyphen and similar.
_INVISIBLE = (
    "\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180e"
    "\u200b\u200c\u200d\u200e\u200f"
    "\u202a\u202b\u202c\u202d\u202e"
    "\u2060\u2061\u2062\u2063\u2064"
    "\u2066\u2067\u2068\u2069"
    "\u3164\ufeff\uffa0"
)

# Look-alikes that NFKC leaves alone. A small table of the usual substitutions, not
# the full Unicode confusables list.
_CONFUSABLES = {
    # Cyrillic lower case
    "а": "a", "в": "b", "е": "e", "ё": "e", "һ": "h", "і": "i", "ї": "i", "ј": "j", "к": "k",
    "м": "m", "н": "h", "о": "o", "р": "p", "с": "c", "т": "t", "у": "y", "х": "x",
    "ѕ": "s", "ԁ": "d", "ԛ": "q", "ԝ": "w",
    # Cyrillic upper case
    "А": "A", "В": "B", "Е": "E", "Ё": "E", "І": "I", "Ј": "J", "К": "K", "М": "M",
    "Н": "H", "О": "O", "Р": "P", "С": "C", "Т": "T", "У": "Y", "Х": "X", "Ѕ": "S",
    # Greek
    "α": "a", "ε": "e", "ι": "i", "κ": "k", "ν": "v", "ο": "o", "ρ": "p", "τ": "t",
    "υ": "u", "χ": "x", "Α": "A", "Β": "B", "Ε": "E", "Ζ": "Z", "Η": "H", "Ι": "I",
    "Κ": "K", "Μ": "M", "Ν": "N", "Ο": "O", "Ρ": "P", "Τ": "T", "Υ": "Y", "Χ": "X",
    # Latin variants
    "ı": "i", "ȷ": "j", "ɑ": "a", "ɡ": "g", "ɩ": "i",
    # Dashes, minus signs and quotes, which also break phone and card patterns
    "‐": "-", "‑": "-", "‒": "-", "–": "-", "—": "-", "―": "-", "−": "-",
    "‘": "'", "’": "'", "‚": "'", "‛": "'", "“": '"', "”": '"', "„": '"', "‟": '"',
}
_FOLD_TABLE = str.maketrans({**dict.fromkeys(_INVISIBLE), **_CONFUSABLES})

_NON_ASCII_RUN = re.compile(r"[^\x00-\x7f]+")

_LEET_TABLE = str.maketrans(
    {"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a", "$": "s", "!": "i", "|": "i"}
)
# A word-like run in which leetspeak may hide letters. "!" and "|" only count inside it.
# Only runs with a letter and a substitute can change, so the pattern skips the others. Its
# lookbehind anchors it at the start of a run, which keeps the scan linear.
_LEET_TOKEN = re.compile(r"(?<![A-Za-z0-9@$!|])(?=[0-9@$!|]*[A-Za-z])[A-Za-z]*[0-9@$!|][A-Za-z0-9@$!|]*")
_SPACED_LETTERS = re.compile(r"\b(?:[A-Za-z][ .\-_*]){2,}[A-Za-z]\b")
_SEPARATORS = re.compile(r"[ .\-_*]")
_REPEATED_LETTER = re.compile(r"([A-Za-z])\1{2,}")

# Standard and URL-safe alphabets. A run must hold 16 characters (12 bytes) or more, so short
# identifiers and words are left alone. The decode checks below drop long identifiers.
BASE64_MIN_CHARS = 16
# Default budget of decoded bytes per call, so a megabyte of base64 costs a bounded amount
# of work. The safety scorer shares one budget across all texts of an event.
BASE64_MAX_DECODED_BYTES = 4096
_BASE64_RUN = re.compile(r"(?<![A-Za-z0-9+/=_-])[A-Za-z0-9+/_-]{16,}={0,2}")
# Share of printable characters the decoded text needs to count as text rather than binary.
_MIN_PRINTABLE_SHARE = 0.9


@dataclass(frozen=True)
class NormalizedText:
    """Normalized text and, per output character, the original span it came from."""

    text: str
    original_length: int
    starts: tuple[int, ...] | None = None  # None: the text is unchanged and offsets are equal
    ends: tuple[int, ...] | None = None

    def to_original(self, start: int, end: int) -> tuple[int, int]:
        """Map a [start, end) span of the normalized text to the original text."""
        if self.starts is None or self.ends is None:
            return start, end
        if start >= len(self.starts):
            return self.original_length, self.original_length
        if end <= start:
            return self.starts[start], self.starts[start]
        return self.starts[start], self.ends[end - 1]


def normalize(text: str) -> str:
    """Return `text` after NFKC, invisible-character removal and confusable folding."""
    return normalize_with_offsets(text).text


def normalize_with_offsets(text: str) -> NormalizedText:
    """Normalize `text` as `normalize` does and keep the offset map back to it."""
    if text.isascii():
        return NormalizedText(text, len(text))

    pieces: list[str] = []
    starts: list[int] = []
    ends: list[int] = []
    position = 0
    for run in _NON_ASCII_RUN.finditer(text):
        run_start = run.start()
        # A combining mark composes with the ASCII letter before it under NFKC.
        if run_start > position and unicodedata.combining(text[run_start]):
            run_start -= 1
        _copy_ascii(text, position, run_start, pieces, starts, ends)
        _fold_run(text, run_start, run.end(), pieces, starts, ends)
        position = run.end()
    _copy_ascii(text, position, len(text), pieces, starts, ends)
    return NormalizedText("".join(pieces), len(text), tuple(starts), tuple(ends))


def fold_leetspeak(text: str) -> str:
    """Return ASCII text with leetspeak digits and symbols, spaced letters and letter runs folded."""
    folded = fold_leet_characters(text)
    # Both patterns rarely match, and a search is cheaper than a sub that copies the text.
    if _SPACED_LETTERS.search(folded):
        folded = _SPACED_LETTERS.sub(lambda match: _SEPARATORS.sub("", match.group()), folded)
    if _REPEATED_LETTER.search(folded):
        folded = _REPEATED_LETTER.sub(r"\1", folded)
    return folded


def fold_leet_characters(text: str) -> str:
    """Return `text` with leetspeak digits and symbols inside words replaced by letters, same length."""
    return _LEET_TOKEN.sub(_fold_leet_token, text)


@dataclass(frozen=True)
class EncodedRun:
    """A base64 run at [start, end) of the scanned text and the text it decodes to."""

    start: int
    end: int
    decoded: str


def find_base64_runs(
    text: str, min_chars: int = BASE64_MIN_CHARS, max_decoded_bytes: int = BASE64_MAX_DECODED_BYTES
) -> list[EncodedRun]:
    """Return the base64 runs of `text` that decode to printable UTF-8, within `max_decoded_bytes` in all.

    One level only: base64 inside the decoded text is not decoded again. A run longer than
    the remaining budget is decoded from its start up to the budget.
    """
    runs: list[EncodedRun] = []
    budget = max_decoded_bytes
    for match in _BASE64_RUN.finditer(text):
        if budget < 3:
            break
        encoded = match.group()
        if len(encoded.rstrip("=")) < min_chars or encoded.isalpha() or encoded.isdigit():
            continue  # a plain word, a CamelCase identifier or a number
        usable = min(len(encoded), budget // 3 * 4)
        decoded = _decode_base64(encoded[:usable])
        if decoded is None:
            continue
        budget -= len(decoded.encode("utf-8"))
        runs.append(EncodedRun(match.start(), match.end(), decoded))
    return runs


def _decode_base64(encoded: str) -> str | None:
    body = encoded.rstrip("=")
    body = body[: len(body) - len(body) % 4] if len(body) % 4 == 1 else body
    padded = body + "=" * (-len(body) % 4)
    altchars = b"-_" if ("-" in body or "_" in body) else None
    try:
        raw = base64.b64decode(padded, altchars=altchars, validate=True)
        decoded = raw.decode("utf-8")
    except (binascii.Error, ValueError):
        return None
    printable = sum(1 for character in decoded if character.isprintable() or character in "\n\t\r")
    if not decoded.strip() or printable < _MIN_PRINTABLE_SHARE * len(decoded):
        return None
    if not any(character.isalpha() for character in decoded):
        return None
    return decoded


def _fold_leet_token(match: re.Match[str]) -> str:
    token = match.group()
    core = token.rstrip("!|")
    # Pure numbers and words without substitutes stay as they are, and "Hello!" keeps its "!".
    if core.isalpha() or not any(character.isalpha() for character in core):
        return token
    return core.translate(_LEET_TABLE) + token[len(core) :]


def _copy_ascii(text: str, start: int, end: int, pieces: list[str], starts: list[int], ends: list[int]) -> None:
    pieces.append(text[start:end])
    starts.extend(range(start, end))
    ends.extend(range(start + 1, end + 1))


def _fold_run(text: str, start: int, end: int, pieces: list[str], starts: list[int], ends: list[int]) -> None:
    # NFKC is applied per cluster (a character and the combining marks after it), so
    # every output character maps back to exactly one input cluster.
    cluster_start = start
    while cluster_start < end:
        cluster_end = cluster_start + 1
        while cluster_end < end and unicodedata.combining(text[cluster_end]):
            cluster_end += 1
        folded = unicodedata.normalize("NFKC", text[cluster_start:cluster_end]).translate(_FOLD_TABLE)
        pieces.append(folded)
        starts.extend([cluster_start] * len(folded))
        ends.extend([cluster_end] * len(folded))
        cluster_start = cluster_end
