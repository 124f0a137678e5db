"""Settings of every control-plane process, read from `CONTROLPLANE_*` environment variables."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

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
    malloc_mmap_threshold_bytes: int = Field(
        0,
        ge=0,
        le=33_554_432,
        description="glibc mmap threshold the worker fixes at start, so that freed tensors go back to the system "
        "at once. 0, the default, leaves glibc's adjusting threshold.",
    )

    drift_min_rows: int = Field(50, ge=2, description="Rows a window needs before drift is checked.")
    drift_threshold: float = Field(0.05, gt=0, lt=1, description="p-value below which one column has drifted.")
    drift_share: float = Field(
        0.5, gt=0, le=1, description="Share of drifted columns at which a window counts as drifted."
    )
    reference_max_rows: int = Field(5000, ge=10, description="Rows kept in a drift reference.")
    drift_rule: Literal["bonferroni", "share"] = Field(
        "bonferroni",
        description="When a window's features drift: 'bonferroni', when one column's p-value is below "
        "drift_window_alpha / tested columns; 'share', when drift_share of the columns are below drift_threshold.",
    )
    drift_window_alpha: float = Field(
        0.01, gt=0, lt=1, description="Bound on the feature false-alarm rate of one window under the bonferroni rule."
    )
    drift_sketch_size: int = Field(
        1000, ge=10, le=1000,
        description="Values kept per numeric feature in a window profile, and values compared per side in one test.",
    )
    text_drift: bool = Field(True, description="Embed a sample of prompts and completions per window and test it for drift.")
    text_sample_size: int = Field(150, ge=33, description="Prompts and completions embedded per window, each.")
    text_min_texts: int = Field(
        50, ge=33, description="Sampled texts of a field needed in the window and the reference to test that field."
    )
    text_drift_alpha: float = Field(
        0.001, gt=0, lt=1, description="Bound on the text false-alarm rate of one window, split over the tests run."
    )
    text_sample_chars: int = Field(
        256, ge=0, description="Characters of the prompt and of the completion kept per event for text drift; 0 keeps none."
    )
    language_drift: bool = Field(True, description="Detect the language of sampled prompts and test its shares for drift.")
    traffic_drop_ratio: float = Field(
        0.2, gt=0, lt=1, description="Share of the reference's event count below which a window's traffic dropped."
    )
    traffic_alpha: float = Field(
        0.001, gt=0, lt=1, description="Poisson p-value below which a low event count or a run of empty windows is reported."
    )
    traffic_max_gap_windows: int = Field(
        60, ge=0, description="Empty windows recorded as no_data rows per gap; longer gaps keep only the newest."
    )

    toxicity_threshold: float = Field(0.5, gt=0, lt=1, description="Offensive-language probability that flags a text.")
    safety_embeddings: bool = Field(
        True,
        description="Embed every prompt and completion for the embedding-based safety detectors (offensive language, "
        "attack similarity, refusals). Off, the worker runs the word model and the patterns alone, many times faster.",
    )
    price_table: Path | None = Field(None, description="YAML price table; the packaged table when empty.")
    max_text_chars: int = Field(32_000, ge=256, description="Prompt or completion length kept; longer text is truncated.")

    data_dir: Path = Field(
        Path("./data"), description="Root folder of dataset versions (datasets/), adapters (adapters/) and evaluation reports (reports/)."
    )
    base_model_dir: Path | None = Field(
        None, description="Local folder of the base model (save_pretrained layout) that fine-tuning starts from."
    )
    finetune_threads: int | None = Field(
        None, ge=1,
        description="CPU threads torch uses in fine-tuning jobs (training and gate); torch's default, one per core, when empty.",
    )

    dashboard_address: str = Field(
        "127.0.0.1", description="Address the dashboard listens on; beyond localhost it requires a password hash."
    )
    dashboard_port: int = Field(8501, ge=1, le=65535, description="TCP port of the dashboard.")
    dashboard_password_hash: str | None = Field(
        None, description="scrypt hash of the operator password (controlplane hash-password); operators can act."
    )
    dashboard_viewer_password_hash: str | None = Field(
        None, description="scrypt hash of the viewer password; viewers can read every page but not act."
    )
    budget_usd_per_day: float | None = Field(
        None, gt=0,
        description="Daily spend budget in US dollars: the dashboard compares today's spend with it, and the worker "
        "reports a budget_burn finding when spend burns through it too fast.",
    )
    budget_burn_threshold: float = Field(
        2.0, gt=0, description="Burn rate, over both the last hour and the last 6 hours, that gives a budget_burn finding."
    )
    cost_z_threshold: float = Field(
        6.0, gt=0, description="Robust z-score of a window's spend or tokens per request that gives a cost anomaly."
    )
    cost_min_baseline: int = Field(8, ge=3, description="Earlier windows a cost anomaly check needs as its baseline.")

    policy_file: Path | None = Field(
        None, description="YAML policy of alert rules and job rules. Empty means the packaged controlplane/data/policies.yaml."
    )
    webhook_url: str | None = Field(
        None, description="http(s) URL that alert notifications are POSTed to. No notifications are queued while it is empty."
    )
    webhook_format: Literal["json", "alertmanager"] = Field(
        "json", description="Body of a notification: the plain JSON document, or the Alertmanager webhook shape (version 4)."
    )
    webhook_receiver: str = Field("controlplane", description="Receiver name put in the body of every notification.")
    webhook_timeout_seconds: float = Field(10.0, gt=0, description="Timeout of one webhook request, in seconds.")
    external_url: str = Field("", description="Address of the dashboard, sent as externalURL in notifications.")
    notify_cooldown_seconds: float = Field(
        3600.0, ge=0, description="Minimum seconds between two notifications of the same alert fingerprint, escalations excepted."
    )
    notify_max_attempts: int = Field(5, ge=1, description="Delivery attempts of a notification before it is marked failed.")
    notify_backoff_seconds: float = Field(
        30.0, gt=0, description="Delay before the second delivery attempt, in seconds. It doubles after each failure."
    )
    notify_backoff_max_seconds: float = Field(3600.0, gt=0, description="Maximum delay between delivery attempts, in seconds.")

    job_plugins: list[str] = Field(
        ["controlplane.curation", "controlplane.finetune"],
        description="Modules the scheduler imports at start, each of which registers its job kinds with controlplane.jobs.register_job_kind. A JSON list in the environment.",
    )
    job_lease_seconds: float = Field(
        120.0, gt=0, description="Lease of a running job, in seconds. Its runner renews it, and another runner may claim the job once it expires."
    )
    job_max_attempts: int = Field(3, ge=1, description="Claims of a job (the first and those after an expired lease) before it is marked failed.")
    job_runner_batch: int = Field(10, ge=1, description="Maximum jobs one run of the job runner runs one after another.")

    scheduler_lease_seconds: float = Field(
        30.0, gt=0, description="Lease of the active scheduler, in seconds. A standby takes over once it expires."
    )
    scheduler_renew_seconds: float = Field(10.0, gt=0, description="Seconds between two lease renewals (or takeover attempts).")
    scheduler_misfire_grace_seconds: float = Field(
        30.0, gt=0, description="Seconds after its scheduled time beyond which a periodic task run is skipped and recorded as misfired."
    )
    heartbeat_interval_seconds: float = Field(
        60.0, gt=0, description="Seconds between two runs of the heartbeat task, which only records that the scheduler is alive."
    )
    policy_interval_seconds: float = Field(60.0, gt=0, description="Seconds between two evaluations of the job rules.")
    job_runner_interval_seconds: float = Field(10.0, gt=0, description="Seconds between two runs of the job runner.")
    notify_interval_seconds: float = Field(10.0, gt=0, description="Seconds between two runs of the notification sender.")
    reference_refresh_interval_seconds: float = Field(
        86400.0, gt=0, description="Seconds between two reference refresh jobs (run only when a plugin registers the reference_refresh kind)."
    )
    retention_interval_seconds: float = Field(3600.0, gt=0, description="Seconds between two runs of the retention task.")
    nightly_curation: bool = Field(True, description="Create a curation job every night at nightly_curation_hour.")
    nightly_curation_hour: int = Field(2, ge=0, le=23, description="UTC hour of the nightly curation job.")
    retention_days: float = Field(
        30.0, gt=0, description="Age in days after which dead letters, finished notifications and jobs, expired silences and scheduled runs are deleted."
    )

    @field_validator("kafka_bootstrap")
    @classmethod
    def _strip_scheme(cls, value: str) -> str:
        return value.removeprefix("kafka://")

    @field_validator("webhook_url")
    @classmethod
    def _check_webhook_url(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        if not value.startswith(("http://", "https://")):
            # Only the start is echoed, because the rest of a webhook URL often carries a token.
            raise ValueError(f"webhook_url must start with http:// or https://, got one starting with {value[:8]!r}")
        return value


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Return the process-wide settings, read once from the environment."""
    return Settings()
