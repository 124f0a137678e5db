"""The price table: model-id normalization, dated prices and the cost of one call."""

from datetime import date, datetime, timedelta, timezone

import pytest

from controlplane.errors import ConfigurationError
from controlplane.events.schema import Usage
from controlplane.pricing import ModelPrice, PriceTable


@pytest.fixture(scope="module")
def table():
    return PriceTable.load()


JUNE_2025 = datetime(2025, 6, 1, tzinfo=timezone.utc)

# Each expected cost is worked out by hand from the packaged table, in USD:
# tokens times the price per 1M tokens, divided by 1,000,000.
COST_CASES = [
    (
        # OpenAI reports prompt_tokens with the 4,000 cached tokens included:
        # 6,000 * 2.50 + 4,000 * 1.25 + 1,000 * 10.00 = 30,000
        "gpt-4o, cached tokens inside the prompt count",
        "openai/gpt-4o-2024-08-06",
        Usage(input_tokens=10_000, cached_input_tokens=4_000, output_tokens=1_000),
        JUNE_2025,
        0.03,
    ),
    (
        # 2,000 * 0.15 + 500 * 0.60 = 600
        "gpt-4o-mini on Azure",
        "azure/gpt-4o-mini",
        Usage(input_tokens=2_000, output_tokens=500),
        JUNE_2025,
        0.0006,
    ),
    (
        # Anthropic reported input 1,000, cache read 20,000, cache write 5,000; the adapter
        # adds them up to 26,000 prompt tokens:
        # 1,000 * 3.00 + 20,000 * 0.30 + 5,000 * 3.75 + 800 * 15.00 = 39,750
        "claude-3-5-sonnet on Bedrock with cache reads and writes",
        "us.anthropic.claude-3-5-sonnet-20241022-v2:0",
        Usage(input_tokens=26_000, cached_input_tokens=20_000, cache_write_tokens=5_000, output_tokens=800),
        JUNE_2025,
        0.03975,
    ),
    (
        # 1,000 * 1.10 + (5,000 - 4,000) * 4.40 + 4,000 * 4.40 = 23,100
        "o3-mini, reasoning at the output price",
        "o3-mini-2025-01-31",
        Usage(input_tokens=1_000, output_tokens=5_000, reasoning_tokens=4_000),
        JUNE_2025,
        0.0231,
    ),
    (
        # 8,000 * 0.20 + 2,000 * 0.05 + 1,000 * 0.80 + 2,000 * 1.20 = 4,900
        "demo-code-model, reasoning with its own price",
        "demo-code-model",
        Usage(input_tokens=10_000, cached_input_tokens=2_000, output_tokens=3_000, reasoning_tokens=2_000),
        JUNE_2025,
        0.0049,
    ),
    (
        # 50,000 * 0.075 + 50,000 * 0.01875 + 2,000 * 0.30 = 5,287.5
        "gemini-1.5-flash with context cache",
        "gemini-1.5-flash-002",
        Usage(input_tokens=100_000, cached_input_tokens=50_000, output_tokens=2_000),
        JUNE_2025,
        0.0052875,
    ),
    (
        # 3,000 * 3.00 + 1,000 * 15.00 = 24,000
        "claude-sonnet-4 cross-region id",
        "eu.anthropic.claude-sonnet-4-20250514-v1:0",
        Usage(input_tokens=3_000, output_tokens=1_000),
        JUNE_2025,
        0.024,
    ),
    (
        # 1,000 * 0.80 + 200 * 4.00 = 1,600
        "claude-3-5-haiku",
        "anthropic/claude-3-5-haiku-20241022",
        Usage(input_tokens=1_000, output_tokens=200),
        JUNE_2025,
        0.0016,
    ),
    (
        # 1,000,000 * 1.00 + 1,000,000 * 2.00
        "demo-chat-model before its 2025 price",
        "demo-chat-model",
        Usage(input_tokens=1_000_000, output_tokens=1_000_000),
        datetime(2024, 6, 1, tzinfo=timezone.utc),
        3.0,
    ),
    (
        # 1,000,000 * 0.50 + 1,000,000 * 1.50
        "demo-chat-model after its 2025 price",
        "demo-chat-model",
        Usage(input_tokens=1_000_000, output_tokens=1_000_000),
        JUNE_2025,
        2.0,
    ),
    (
        # 1,000 * 5.00 + 1,000 * 15.00: the alias still pointed at the May 2024 snapshot
        "gpt-4o alias in July 2024",
        "gpt-4o",
        Usage(input_tokens=1_000, output_tokens=1_000),
        datetime(2024, 7, 1, tzinfo=timezone.utc),
        0.02,
    ),
    (
        # 1,000 * 5.00 + 1,000 * 15.00: the dated snapshot has its own entry
        "dated snapshot with its own price",
        "openai/gpt-4o-2024-05-13",
        Usage(input_tokens=1_000, output_tokens=1_000),
        JUNE_2025,
        0.02,
    ),
    (
        "real zero tokens",
        "gpt-4o",
        Usage(input_tokens=0, output_tokens=0),
        JUNE_2025,
        0.0,
    ),
]


@pytest.mark.parametrize(
    ("case", "model", "usage", "at", "expected"), COST_CASES, ids=[case[0] for case in COST_CASES]
)
def test_cost_cases(table, case, model, usage, at, expected):
    cost = table.cost(model, usage, at=at)

    assert cost is not None
    assert cost == pytest.approx(expected, rel=1e-12, abs=1e-15)


UNKNOWN_COST_CASES = [
    ("unpriced model", "my-private-model", Usage(input_tokens=100, output_tokens=10), JUNE_2025),
    (
        "fine-tuned model id",
        "ft:gpt-4o-mini-2024-07-18:acme::abc123",
        Usage(input_tokens=100, output_tokens=10),
        JUNE_2025,
    ),
    ("no usage at all", "gpt-4o", Usage(), JUNE_2025),
    ("missing output tokens", "gpt-4o", Usage(input_tokens=100), JUNE_2025),
    ("missing input tokens", "gpt-4o", Usage(output_tokens=100), JUNE_2025),
    ("before the model's first price", "gpt-4.1", Usage(input_tokens=100, output_tokens=10), datetime(2024, 1, 1)),
    (
        "cached above input (Anthropic counts not added up)",
        "claude-3-5-sonnet",
        Usage(input_tokens=1_000, cached_input_tokens=20_000, output_tokens=10),
        JUNE_2025,
    ),
    ("reasoning above output", "o3-mini", Usage(input_tokens=10, output_tokens=100, reasoning_tokens=500), JUNE_2025),
]


@pytest.mark.parametrize(
    ("case", "model", "usage", "at"), UNKNOWN_COST_CASES, ids=[case[0] for case in UNKNOWN_COST_CASES]
)
def test_unknown_cost_cases(table, case, model, usage, at):
    assert table.cost(model, usage, at=at) is None


def test_unpriced_model_warns_once(table, caplog):
    usage = Usage(input_tokens=1, output_tokens=1)

    with caplog.at_level("WARNING", logger="controlplane.pricing"):
        table.cost("warn-once-model", usage, at=JUNE_2025)
        table.cost("warn-once-model", usage, at=JUNE_2025)

    assert len([record for record in caplog.records if "warn-once-model" in record.getMessage()]) == 1


NORMALIZE_CASES = [
    ("openai/gpt-4o-2024-08-06", "gpt-4o"),
    ("us.anthropic.claude-3-5-sonnet-20241022-v2:0", "claude-3-5-sonnet"),
    ("azure/gpt-4o-mini", "gpt-4o-mini"),
    ("GPT-4o-Mini-2024-07-18", "gpt-4o-mini"),
    ("anthropic/claude-3-5-haiku-20241022", "claude-3-5-haiku"),
    ("claude-3-5-sonnet@20240620", "claude-3-5-sonnet"),
    ("vertex_ai/claude-3-5-sonnet-v2@20241022", "claude-3-5-sonnet"),
    ("bedrock/anthropic.claude-3-5-haiku-20241022-v1:0", "claude-3-5-haiku"),
    ("eu.anthropic.claude-sonnet-4-20250514-v1:0", "claude-sonnet-4"),
    ("gemini-1.5-flash-002", "gemini-1.5-flash"),
    ("models/gemini-1.5-flash-latest", "gemini-1.5-flash"),
    ("openrouter/openai/gpt-4.1-mini", "gpt-4.1-mini"),
    ("gpt-4.1-2025-04-14", "gpt-4.1"),
    ("o3-mini", "o3-mini"),
    ("gpt-4-0613", "gpt-4"),
    ("  demo-chat-model ", "demo-chat-model"),
]


@pytest.mark.parametrize(("model", "expected"), NORMALIZE_CASES)
def test_normalize_model_id(model, expected):
    assert PriceTable.normalize(model) == expected


def test_packaged_table_has_listed_models(table):
    expected = {
        "gpt-4o",
        "gpt-4o-mini",
        "gpt-4.1",
        "gpt-4.1-mini",
        "o3-mini",
        "claude-3-5-sonnet",
        "claude-3-5-haiku",
        "claude-sonnet-4",
        "gemini-1.5-flash",
        "demo-chat-model",
        "demo-code-model",
    }

    assert expected <= set(table.models)
    assert table.version == "2025.06.1"


def test_price_for_defaults(table):
    price = table.price_for("openai/gpt-4o-mini", at=JUNE_2025)

    assert price == ModelPrice(
        model="gpt-4o-mini",
        effective_from=date(2024, 7, 18),
        input=0.15,
        cached_input=0.075,
        cache_write=0.15,
        output=0.60,
        reasoning=0.60,
    )


def test_price_for_uses_utc_day(table):
    # 23:30 on 31 December in New York is already 1 January 2025 in UTC.
    new_york_evening = datetime(2024, 12, 31, 23, 30, tzinfo=timezone(timedelta(hours=-5)))

    price = table.price_for("demo-chat-model", at=new_york_evening)

    assert price is not None
    assert price.effective_from == date(2025, 1, 1)


def test_price_for_unpriced_model(table):
    assert table.price_for("no-such-model", at=JUNE_2025) is None


def write_table(tmp_path, text):
    path = tmp_path / "prices.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_load_custom_table_defaults(tmp_path):
    path = write_table(
        tmp_path,
        'version: "7"\nmodels:\n  my-model:\n    - {effective_from: 2024-01-01, input: 2, output: 6.0}\n',
    )

    table = PriceTable.load(path)
    price = table.price_for("my-model", at=JUNE_2025)

    assert table.version == "7"
    assert (price.cached_input, price.cache_write, price.reasoning) == (2.0, 2.0, 6.0)


BAD_TABLE_CASES = [
    (
        "negative price",
        'version: "1"\nmodels:\n  m:\n    - {effective_from: 2024-01-01, input: -1, output: 1}\n',
        "models.m.0.input",
    ),
    (
        "misspelled field",
        'version: "1"\nmodels:\n  m:\n    - {effective_from: 2024-01-01, input: 1, ouput: 1}\n',
        "models.m.0.ouput",
    ),
    (
        "missing output",
        'version: "1"\nmodels:\n  m:\n    - {effective_from: 2024-01-01, input: 1}\n',
        "models.m.0.output",
    ),
    (
        "bad date",
        'version: "1"\nmodels:\n  m:\n    - {effective_from: soon, input: 1, output: 1}\n',
        "models.m.0.effective_from",
    ),
    (
        "price written as text",
        'version: "1"\nmodels:\n  m:\n    - {effective_from: 2024-01-01, input: "3", output: 1}\n',
        "models.m.0.input",
    ),
    (
        "price written as boolean",
        'version: "1"\nmodels:\n  m:\n    - {effective_from: 2024-01-01, input: 1, output: true}\n',
        "models.m.0.output",
    ),
    ("missing version", "models:\n  m:\n    - {effective_from: 2024-01-01, input: 1, output: 1}\n", "version"),
    ("no models", 'version: "1"\nmodels: {}\n', "models"),
    ("empty entry list", 'version: "1"\nmodels:\n  m: []\n', "models.m"),
    (
        "duplicate dates",
        'version: "1"\nmodels:\n  m:\n    - {effective_from: 2024-01-01, input: 1, output: 1}\n'
        "    - {effective_from: 2024-01-01, input: 2, output: 2}\n",
        "models.m",
    ),
    (
        "provider prefix in id",
        'version: "1"\nmodels:\n  openai/gpt-4o:\n    - {effective_from: 2024-01-01, input: 1, output: 1}\n',
        "models.openai/gpt-4o",
    ),
    ("not YAML", "version: [unclosed\n", "not valid YAML"),
    ("not a mapping", "- 1\n- 2\n", "(top level)"),
]


@pytest.mark.parametrize(("case", "text", "field"), BAD_TABLE_CASES, ids=[case[0] for case in BAD_TABLE_CASES])
def test_bad_table_rejected(tmp_path, case, text, field):
    path = write_table(tmp_path, text)

    with pytest.raises(ConfigurationError) as raised:
        PriceTable.load(path)

    assert str(path) in str(raised.value)
    assert field in str(raised.value)


def test_missing_file_rejected(tmp_path):
    path = tmp_path / "absent.yaml"

    with pytest.raises(ConfigurationError, match="absent.yaml"):
        PriceTable.load(path)
