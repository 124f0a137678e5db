"""Jailbreak and prompt-injection detection in prompts and retrieved context.

Two signals. Patterns find the usual phrasings and report where they matched. They cover
ignore previous instructions, DAN and developer mode, system-prompt exfiltration, role-play
that suspends the rules, "you are no longer bound by", requests to decode and obey an
encoded payload, and instructions addressed to an AI inside a retrieved document. Embedding similarity
compares the whole text with the project-written examples in `controlplane/data/attacks.jsonl`:
a text is flagged when its nearest attack example is at least `threshold` similar and closer
than the nearest benign look-alike in the same file ("pretend you are a tour guide").
Patterns run on normalized text and again with leetspeak folded, at offsets of the original.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from controlplane.detectors.embeddings import SentenceEncoder, max_similarity, read_exemplars
from controlplane.detectors.normalize import fold_leet_characters, normalize_with_offsets
from controlplane.detectors.prefilter import PatternPrefilter
from controlplane.errors import DetectorError

logger = logging.getLogger(__name__)

EXAMPLES_FILE = "attacks.jsonl"
BENIGN = "benign"

# Lowest cosine similarity, in steps of 0.05, at which at most 1% of the 1,923 GPTeacher
# role-play prompts (MIT), which are benign but full of "you are ..." and "pretend ...",
# are flagged. Measured with the examples file as shipped; refit it when the file changes.
DEFAULT_SIMILARITY_THRESHOLD = 0.55

_FLAGS = re.IGNORECASE
_AI = r"(?:ai|assistant|chat\s*bot|chatgpt|language\s+model|llm|model|gpt)"
_RULES = r"(?:rules|restrictions|guidelines|polic(?:y|ies)|filters?|constraints|limitations|limits|guardrails|censorship)"

# (category, score, pattern). The score is what a match alone counts for; the weaker,
# more ambiguous phrasings score lower but every match flags the text.
_PATTERNS: tuple[tuple[str, float, re.Pattern[str]], ...] = tuple(
    (category, score, re.compile(pattern, _FLAGS))
    for category, score, pattern in (
        (
            "instruction_override",
            0.95,
            r"\b(?:ignore|disregard|forget|override|bypass|skip)\s+(?:\w+\s+){0,3}?"
            r"(?:previous|prior|above|earlier|preceding|original|initial|system|all(?:\s+(?:the|your))?)\s+"
            r"(?:\w+\s+){0,2}?(?:instructions?|prompts?|directions|directives|rules|guidelines|constraints|programming)\b",
        ),
        (
            "instruction_override",
            0.9,
            r"\b(?:disregard|ignore|skip|bypass|forget|erase|drop)\s+(?:all\s+)?your\s+(?:\w+\s+)?"
            r"(?:guidelines|instructions|content\s+polic(?:y|ies)|rules|programming|safety\s+\w+|training)\b"
            r"|\b(?:your|my)\s+(?:real|new|actual|true)\s+instructions\s+(?:are|is)\b"
            r"|\bnew\s+instructions\s+(?:override|replace|supersede)\b",
        ),
        (
            "instruction_override",
            0.85,
            r"\b(?:prior|previous|original|earlier|old)\s+(?:\w+\s+)?(?:instructions|constraints|rules|programming)\s+"
            r"(?:(?:are|is|have\s+been)\s+)?(?:now\s+)?(?:void|cancel+ed|revoked|obsolete|no\s+longer\s+(?:valid|appl(?:y|ies)))\b",
        ),
        ("instruction_override", 0.8, r"\bignore\s+(?:your|the)\s+(?:user|developer|operator)'?s?\b"),
        ("persona_jailbreak", 0.95, r"\bdo\s+anything\s+now\b|\[jailbreak\]|\b(?:DAN|STAN|DUDE|AIM)\s+mode\b"),
        (
            "persona_jailbreak",
            0.9,
            r"\b(?:developer|god|jailbr[eo]ken?|unrestricted|uncensored|unfiltered)\s+mode\b"
            rf"(?=[\s\S]{{0,200}}\b(?:{_RULES}|uncensored|refuse|{_AI})\b)",
        ),
        (
            "persona_jailbreak",
            0.85,
            r"\b(?:pretend|act|behave|respond|answer|roleplay)\s+(?:to\s+be\s+|as\s+|like\s+)(?:an?\s+)?"
            r"(?:unrestricted|unfiltered|uncensored|amoral|unethical|evil|jailbroken)\b",
        ),
        (
            "persona_jailbreak",
            0.85,
            rf"\b{_AI}\s+(?:with|that\s+has|who\s+has)\s+no\s+(?:morals|ethics|ethical\s+\w+|filters?|restrictions|limits|rules)\b",
        ),
        (
            "restriction_removal",
            0.95,
            rf"\byou\s*(?:are|'re)\s+(?:now\s+)?(?:no\s+longer|not)\s+(?:bound|restricted|limited|constrained)\s+by\b"
            r"|\b(?:free|freed|released|liberated)\s+from\s+(?:all\s+|any\s+|your\s+|the\s+)*(?:[\w']+\s+)?"
            r"(?:rules|restrictions|guidelines|polic(?:y|ies)|filters|constraints|guardrails|censorship|programming)\b"
            r"|\bauthori[sz]e\s+you\s+to\s+(?:ignore|bypass|break|skip|disregard)\b",
        ),
        (
            "restriction_removal",
            0.85,
            rf"\b(?:your\s+)?(?:{_RULES}|safety(?:\s+mode)?)\s+(?:have\s+been|has\s+been|are|is)\s+(?:now\s+)?"
            r"(?:disabled|removed|turned\s+off|lifted|suspended|off)\b",
        ),
        (
            "restriction_removal",
            0.8,
            r"\b(?:answer|respond|reply|talk|write)\w*\b[^.\n]{0,40}?\b(?:without|with\s+no)\s+(?:any\s+)?"
            r"(?:restrictions|filters|filtering|censorship|limits|warnings|disclaimers|moral\w*|ethic\w*)\b",
        ),
        (
            "restriction_removal",
            0.8,
            r"\b(?:never|do\s+not\s+ever|don'?t\s+ever)\s+(?:refuse|say\s+no|tell\s+me\s+(?:it|you)\s+can'?t)\b"
            r"|\b(?:harmful|explicit|illegal|unsafe|uncensored)\s+content\s+is\s+(?:now\s+)?(?:allowed|permitted|fine|ok)\b"
            r"|\b(?:remov|disabl|lift|bypass)\w*\s+(?:all\s+)?(?:of\s+)?(?:your|the)\s+(?:guardrails|safety\s+filters?|content\s+filters?)\b",
        ),
        (
            "restriction_removal",
            0.7,
            r"\bno\s+(?:ethical|moral|safety|content)\s+(?:restrictions|guidelines|rules|limits|filters)\b",
        ),
        (
            "system_prompt_exfiltration",
            0.9,
            r"\b(?:print|show|reveal|repeat|output|display|tell\s+me|give\s+me|leak|dump|list|recite|summari[sz]e|translate"
            r"|paraphrase|quote|copy|what\s+(?:is|are|were))\b[^.\n]{0,40}?\b(?:your|the)\s+(?:\w+\s+){0,2}?"
            r"(?:(?:system|configuration|developer)\s+(?:prompt|message|instructions?)"
            r"|(?:initial|hidden|secret|original|first)\s+(?:prompt|instructions?)"
            r"|instructions\s+you\s+were\s+given|pre-?prompt)\b"
            r"|\b(?:words|lines|sentences)\s+of\s+your\s+(?:instructions|prompt|system\s+(?:prompt|message))\b"
            r"|\bmy\s+instructions\s+are\s*:",
        ),
        (
            "system_prompt_exfiltration",
            0.85,
            r"\brepeat\s+(?:everything|all|the\s+text|the\s+words|the\s+lines)\s+(?:above|before|preceding)\b",
        ),
        (
            "roleplay_override",
            0.85,
            r"\b(?:pretend|imagine|suppose|hypothetically|in\s+this\s+(?:game|story|world|universe))\b[^.\n]{0,80}?"
            rf"\b(?:no|without|free\s+of)\s+(?:any\s+)?(?:{_RULES}|morals|ethics|content\s+polic(?:y|ies))\b",
        ),
        ("roleplay_override", 0.8, rf"\b(?:the\s+)?{_RULES}\s+(?:don'?t|do\s+not|no\s+longer)\s+apply\b"),
        (
            "roleplay_override",
            0.8,
            rf"\b(?:character|persona|role|{_AI}|version\s+of\s+yourself)\s+(?:who|that|which)\s+(?:has|have)\s+no\s+"
            r"(?:restrictions|rules|limits|filters|morals|ethics)\b"
            r"|\bnothing\s+(?:is|were|was)\s+off[-\s]limits\b|\bnever\s+(?:been\s+)?trained\s+to\s+refuse\b",
        ),
        ("roleplay_override", 0.8, r"\b(?:stay|remain)\s+in\s+character\b[^.\n]{0,60}?\b(?:no\s+matter|whatever|even\s+if)\b"),
        (
            "encoded_payload",
            0.85,
            r"\b(?:decode|decrypt|decipher|translate|convert|read|reverse)\b[^.\n]{0,60}?"
            r"\b(?:base-?64|rot-?13|hex|morse|backwards|cipher)\b[^.\n]{0,60}?"
            r"\b(?:follow|obey|execute|carry\s+(?:it\s+)?out|do\s+what|comply|instructions?)\b"
            r"|\b(?:base-?64|rot-?13|hex(?:-encoded)?|morse|cipher)\b[^\n]{0,80}?\b(?:decode|decrypt|convert|translate)\b"
            r"[^.\n]{0,40}?\b(?:follow|obey|execute|carry\s+(?:it\s+)?out|do\s+what|comply)\b",
        ),
        (
            "encoded_payload",
            0.8,
            r"\b(?:so|to)\s+(?:that\s+)?(?:the\s+)?(?:filters?|moderation|moderators?|safety|censors?)(?:\s+system)?\s+"
            r"(?:can(?:'|no)?t|cannot|does\s+not|doesn'?t|won'?t)\s+(?:read|see|notice|detect|catch|flag)\b"
            r"|\bto\s+(?:avoid|evade|bypass|get\s+past|trick|fool)\s+(?:the\s+)?(?:content\s+)?(?:filters?|moderation|safety\s+\w+|censors?)\b",
        ),
        (
            "indirect_injection",
            0.9,
            rf"\b(?:note|message|instructions?|attention)\s+(?:to|for)\s+(?:any\s+|the\s+|all\s+)?{_AI}s?\b"
            rf"|\b(?:if\s+you\s+are|any|attention)\s+(?:an?\s+)?{_AI}\s+(?:that\s+)?(?:is\s+)?"
            r"(?:reading|processing|summari[sz]ing|retriev\w+)\b"
            rf"|\b{_AI}s?\s+(?:reading|processing|summari[sz]ing)\s+this\b"
            rf"|\battention\s*,?\s*{_AI}s?\s*[:,]"
            r"|\bwhen\s+(?:this|the)\s+(?:\w+\s+)?(?:is\s+)?summari[sz]ed\b[^.\n]{0,40}?\bmust\b",
        ),
        (
            "indirect_injection",
            0.9,
            r"<!--\s*(?:system|assistant|instructions?)\b|^\s*#{1,6}\s*(?:new\s+)?system\s+(?:prompt|message)\s*:"
            r"|\[(?:system|assistant)(?:\s+(?:instructions?|message|prompt))?\]",
        ),
    )
)


# A negation in the one or two words before a match: "do not ignore previous instructions".
_NEGATED = re.compile(r"\b(?:never|not|no|n't)\s+(?:\w+\s+)?$", _FLAGS)


@lru_cache(maxsize=1)
def _prefilter() -> PatternPrefilter:
    return PatternPrefilter("jailbreak", [pattern for _, _, pattern in _PATTERNS])


@dataclass(frozen=True)
class PatternMatch:
    """One jailbreak pattern match at [start, end) of the original text."""

    category: str
    start: int
    end: int
    score: float


def find_patterns(text: str) -> list[PatternMatch]:
    """Return the jailbreak pattern matches in `text`, one per category and place, ordered by start."""
    if not text:
        return []
    normalized = normalize_with_offsets(text)
    variants = [normalized.text]
    folded = fold_leet_characters(normalized.text)  # same length, so the same offsets
    if folded != normalized.text:
        variants.append(folded)
    found: dict[tuple[str, int], PatternMatch] = {}
    prefilter = _prefilter()
    for variant in variants:
        for index in prefilter.candidates(variant):
            category, score, pattern = _PATTERNS[index]
            for match in pattern.finditer(variant):
                if _NEGATED.search(variant, max(0, match.start() - 40), match.start()):
                    continue  # "never reveal your system prompt" is a rule, not an attack
                start, end = normalized.to_original(match.start(), match.end())
                key = (category, start)
                if key not in found or found[key].score < score:
                    found[key] = PatternMatch(category, start, end, score)
    return sorted(found.values(), key=lambda item: (item.start, item.end, item.category))


@dataclass(frozen=True)
class NearestAttack:
    """The attack example nearest to a text, and whether it is close enough to flag the text."""

    category: str
    similarity: float
    flagged: bool


class AttackSimilarity:
    """Nearest-example check of embeddings against the project-written attack examples."""

    def __init__(self, encoder: SentenceEncoder, threshold: float = DEFAULT_SIMILARITY_THRESHOLD) -> None:
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"jailbreak similarity threshold must be between 0 and 1 exclusive, got {threshold}")
        rows = read_exemplars(EXAMPLES_FILE)
        attacks = [row for row in rows if row["category"] != BENIGN]
        benign = [row for row in rows if row["category"] == BENIGN]
        if not attacks or not benign:
            raise DetectorError(f"{EXAMPLES_FILE} needs both attack and benign examples")
        self.threshold = threshold
        self._categories = [row["category"] for row in attacks]
        self._attacks = encoder.encode([normalize_with_offsets(row["text"]).text for row in attacks])
        self._benign = encoder.encode([normalize_with_offsets(row["text"]).text for row in benign])
        logger.info(
            "jailbreak examples embedded: %d attacks, %d benign look-alikes, threshold %.2f",
            len(attacks),
            len(benign),
            threshold,
        )

    def nearest(self, vectors: np.ndarray) -> list[NearestAttack]:
        """Return, per embedding row, its nearest attack example and whether that flags the row."""
        attack_similarity, nearest = max_similarity(vectors, self._attacks)
        benign_similarity, _ = max_similarity(vectors, self._benign)
        return [
            NearestAttack(self._categories[index], float(similarity), bool(similarity >= self.threshold and similarity > benign))
            for similarity, index, benign in zip(attack_similarity, nearest, benign_similarity)
        ]
