"""The price table: dated per-model prices in USD per 1M tokens, and the cost of one call.

Token counts follow `controlplane.events.schema.Usage`: `input_tokens` includes the cached
prompt tokens and `output_tokens` includes the reasoning tokens, as OpenAI reports them.
Anthropic reports input tokens without cache reads and writes, so an adapter for it must
add those to `input_tokens`. The cost is then

    cost = (input - cached - cache_write) * input_price
         + cached * cached_input_price + cache_write * cache_write_price
         + (output - reasoning) * output_price + reasoning * reasoning_price

divided by one million. A missing cached, cache-write or reasoning count is taken as 0.
The cost is unknown (None) when input or output tokens are missing or the model has no
price at that date. It is also unknown when the counts contradict each other: cached plus
cache-write tokens above input tokens, or reasoning above output tokens. Such usage was
most likely reported in another convention, so any number computed from it would be wrong.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import date, datetime, timezone
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from controlplane.errors import ConfigurationError
from controlplane.events.schema import Usage

logger = logging.getLogger(__name__)

PACKAGED_TABLE = Path(__file__).parent / "data" / "prices.yaml"
TOKENS_PER_PRICE_UNIT = 1_000_000

# Bedrock cross-region inference profiles ("us.") and Bedrock vendor names ("anthropic.").
_REGION_PREFIX = re.compile(r"^(?:us|eu|apac|us-gov|global|jp|au|ca)\.")
_VENDOR_PREFIX = re.compile(r"^(?:anthropic|amazon|meta|mistral|cohere|ai21|deepseek|openai|google)\.")
# Removed from the end, repeatedly: "@20240620" (Vertex AI), "-v2:0" and ":0" (Bedrock),
# "-2024-08-06", "-20241022" and "-0613" (dates), "-001" and "-latest" (version aliases).
_VERSION_SUFFIX = re.compile(
    r"(?:@[\w.-]*|-v\d+(?::\d+)?|:\d+|-\d{4}-\d{2}-\d{2}|-\d{8}|-(?:0[1-9]|1[0-2])\d{2}|-\d{3}|-latest)$"
)
_MAX_WARNED_MODELS = 1000
_MAX_REPORTED_PROBLEMS = 5


class _PriceEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Strict, so that `true` or a quoted "3" in the file is an error and not a price.
    effective_from: date
    input: float = Field(ge=0, strict=True)
    output: float = Field(ge=0, strict=True)
    cached_input: float | None = Field(None, ge=0, strict=True)
    cache_write: float | None = Field(None, ge=0, strict=True)
    reasoning: float | None = Field(None, ge=0, strict=True)


class _PriceFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: str = Field(min_length=1)
    models: dict[str, list[_PriceEntry]] = Field(min_length=1)


@dataclass(frozen=True)
class ModelPrice:
    """Prices of one model from one date on, in USD per 1M tokens."""

    model: str
    effective_from: date
    input: float
    cached_input: float
    cache_write: float
    output: float
    reasoning: float

    def cost(self, usage: Usage) -> float | None:
        """Return the cost of `usage` in USD, or None when it cannot be known (see the module)."""
        if usage.input_tokens is None or usage.output_tokens is None or usage_problem(usage):
            return None
        cached = usage.cached_input_tokens or 0
        cache_write = usage.cache_write_tokens or 0
        reasoning = usage.reasoning_tokens or 0
        total = (
            (usage.input_tokens - cached - cache_write) * self.input
            + cached * self.cached_input
            + cache_write * self.cache_write
            + (usage.output_tokens - reasoning) * self.output
            + reasoning * self.reasoning
        )
        return total / TOKENS_PER_PRICE_UNIT


def usage_problem(usage: Usage) -> str | None:
    """Describe how the token counts of `usage` contradict each other, or return None."""
    cached = (usage.cached_input_tokens or 0) + (usage.cache_write_tokens or 0)
    if usage.input_tokens is not None and cached > usage.input_tokens:
        return f"cached plus cache-write tokens ({cached}) exceed input tokens ({usage.input_tokens})"
    reasoning = usage.reasoning_tokens or 0
    if usage.output_tokens is not None and reasoning > usage.output_tokens:
        return f"reasoning tokens ({reasoning}) exceed output tokens ({usage.output_tokens})"
    return None


class PriceTable:
    """Dated model prices loaded from a YAML file."""

    def __init__(self, version: str, prices: dict[str, tuple[ModelPrice, ...]], source: Path | None = None) -> None:
        self.version = version
        self.source = source
        self._prices = {
            model: tuple(sorted(entries, key=lambda entry: entry.effective_from)) for model, entries in prices.items()
        }
        self._warned: set[str] = set()

    @property
    def models(self) -> tuple[str, ...]:
        """Model ids that have a price, sorted."""
        return tuple(sorted(self._prices))

    @classmethod
    def load(cls, path: Path | None = None) -> "PriceTable":
        """Load a price table from `path`, or the packaged table when `path` is None."""
        source = Path(path) if path is not None else PACKAGED_TABLE
        parsed = _read_price_file(source)
        prices = {model: _model_prices(source, model, entries) for model, entries in parsed.models.items()}
        table = cls(parsed.version, prices, source)
        logger.info("price table %s version %s loaded: %d models", source, table.version, len(prices))
        return table

    @staticmethod
    def normalize(model: str) -> str:
        """Return the model id in lower case without provider, region or date and version parts."""
        normalized = _strip_prefixes(model)
        while True:
            shorter = _VERSION_SUFFIX.sub("", normalized)
            if shorter == normalized or not shorter:
                return normalized
            normalized = shorter

    def price_for(self, model: str, at: datetime | None = None) -> ModelPrice | None:
        """Return the price of `model` in effect at `at` (default: now), or None when unpriced."""
        day = _utc_day(at)
        for key in dict.fromkeys((_strip_prefixes(model), self.normalize(model))):
            entries = self._prices.get(key)
            if entries is not None:
                in_effect = [entry for entry in entries if entry.effective_from <= day]
                return in_effect[-1] if in_effect else None
        return None

    def cost(self, model: str, usage: Usage, at: datetime | None = None) -> float | None:
        """Return the cost in USD of one call, or None when it is unknown (see the module)."""
        price = self.price_for(model, at)
        if price is None:
            message = "model %r has no price in price table %s on %s, so its cost stays unknown"
            self._warn_once(model, message, model, self.version, _utc_day(at))
            return None
        problem = usage_problem(usage)
        if problem is not None:
            self._warn_once(model, "inconsistent usage for model %r: %s, so its cost stays unknown", model, problem)
            return None
        return price.cost(usage)

    def _warn_once(self, model: str, message: str, *args: object) -> None:
        # A stream of unpriced events logs one warning per model id and table. The set
        # is capped because model ids come from event data.
        if model in self._warned or len(self._warned) >= _MAX_WARNED_MODELS:
            logger.debug(message, *args)
            return
        self._warned.add(model)
        logger.warning(message, *args)


def _strip_prefixes(model: str) -> str:
    # Everything up to the last "/" is routing: "openai/", "azure/", "bedrock/",
    # "vertex_ai/", "openrouter/openai/", "models/" and Vertex AI resource paths.
    name = model.strip().lower().rsplit("/", 1)[-1]
    name = _REGION_PREFIX.sub("", name)
    return _VENDOR_PREFIX.sub("", name)


def _utc_day(at: datetime | None) -> date:
    if at is None:
        return datetime.now(timezone.utc).date()
    if at.tzinfo is None:
        return at.date()
    return at.astimezone(timezone.utc).date()


def _read_price_file(source: Path) -> _PriceFile:
    fix = "Fix the file, or unset CONTROLPLANE_PRICE_TABLE to use the packaged table."
    try:
        raw = yaml.safe_load(source.read_text(encoding="utf-8"))
    except OSError as error:
        raise ConfigurationError(f"price table {source} cannot be read: {error}. {fix}") from error
    except yaml.YAMLError as error:
        raise ConfigurationError(f"price table {source} is not valid YAML: {error}. {fix}") from error
    try:
        return _PriceFile.model_validate(raw)
    except ValidationError as error:
        problems = "; ".join(_describe(problem) for problem in error.errors()[:_MAX_REPORTED_PROBLEMS])
        raise ConfigurationError(f"price table {source} is invalid: {problems}. {fix}") from error


def _describe(problem: dict) -> str:
    field = ".".join(str(part) for part in problem["loc"]) or "(top level)"
    return f"{field}: {problem['msg']} (got {problem.get('input')!r})"


def _model_prices(source: Path, model: str, entries: list[_PriceEntry]) -> tuple[ModelPrice, ...]:
    if model != _strip_prefixes(model):
        raise ConfigurationError(
            f"price table {source} is invalid at models.{model}: write the model id in lower case "
            f"without provider or region prefix, as {_strip_prefixes(model)!r}."
        )
    if not entries:
        raise ConfigurationError(f"price table {source} is invalid at models.{model}: it needs at least one entry.")
    dates = [entry.effective_from for entry in entries]
    if len(set(dates)) != len(dates):
        raise ConfigurationError(
            f"price table {source} is invalid at models.{model}: two entries share an effective_from date."
        )
    return tuple(_model_price(model, entry) for entry in entries)


def _model_price(model: str, entry: _PriceEntry) -> ModelPrice:
    return ModelPrice(
        model=model,
        effective_from=entry.effective_from,
        input=entry.input,
        cached_input=entry.input if entry.cached_input is None else entry.cached_input,
        cache_write=entry.input if entry.cache_write is None else entry.cache_write,
        output=entry.output,
        reasoning=entry.output if entry.reasoning is None else entry.reasoning,
    )
