"""Settings of every control-plane process, read from `CONTROLPLANE_*` environment variables."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

TOPIC_EVENTS = "inference.events"
TOPIC_DLQ = "inference.events.dlq"
TOPIC_FINDINGS = "controlplane.findings"
TOPIC_ALERTS = "controlplane.alerts"


class Settings(BaseSettings):
    """One settings object for the worker, the CLI, the scheduler and the dashboard."""

    model_config = SettingsConfigDict(env_prefix="CONTROLPLANE_", extra="ignore")

    kafka_bootstrap: str = Field("localhost:9092", description="Kafka bootstrap servers, host:port[,host:port].")
    database_url: str = Field("sqlite:///./controlplane.db", description="SQLAlchemy URL of the store.")
    topic_partitions: int = Field(4, ge=1, description="Partitions of inference.events when the worker creates it.")
    consumer_group: str = Field("controlplane-worker", description="Kafka consumer group (the Faust app id).")
    topic_events: str = Field(TOPIC_EVENTS, description="Topic of inference events.")
    topic_dlq: str = Field(TOPIC_DLQ, description="Dead-letter topic: raw bytes of rejected messages, reason in headers.")
    topic_findings: str = Field(TOPIC_FINDINGS, description="Topic the worker publishes findings to.")
    topic_alerts: str = Field(TOPIC_ALERTS, description="Topic the worker publishes alerts to.")

    window_seconds: float = Field(60.0, gt=0, description="Length of a tumbling window, in event-time seconds.")
    window_grace_seconds: float = Field(10.0, ge=0, description="Event-time delay before a window closes.")
    window_idle_close_seconds: float = Field(
        30.0, gt=0, description="Wall-clock seconds without new events for a key after which its windows close."
    )
    batch_size: int = Field(500, ge=1, description="Maximum events the worker takes from Kafka at once.")
    batch_timeout_seconds: float = Field(0.5, gt=0, description="Maximum wait for a batch to fill, in seconds.")

    drift_min_rows: int = Field(50, ge=2, description="Rows a window needs before drift is checked.")
    drift_threshold: float = Field(0.05, gt=0, lt=1, description="p-value below which one column has drifted.")
    drift_share: float = Field(
        0.5, gt=0, le=1, description="Share of drifted columns at which a window counts as drifted."
    )
    reference_max_rows: int = Field(5000, ge=10, description="Rows kept in a drift reference.")

    toxicity_threshold: float = Field(0.5, gt=0, lt=1, description="Offensive-language probability that flags a text.")
    price_table: Path | None = Field(None, description="YAML price table; the packaged table when empty.")
    max_text_chars: int = Field(32_000, ge=256, description="Prompt or completion length kept; longer text is truncated.")

    @field_validator("kafka_bootstrap")
    @classmethod
    def _strip_scheme(cls, value: str) -> str:
        return value.removeprefix("kafka://")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Return the process-wide settings, read once from the environment."""
    return Settings()
