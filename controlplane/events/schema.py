"""The canonical inference event: one record per model call, whatever the source.

Unknown is not zero: every count, duration and price that the source did not report is None.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

SCHEMA_VERSION = 1


class ChatMessage(BaseModel):
    """One message of a chat prompt."""

    model_config = ConfigDict(extra="ignore")

    role: str
    content: str = ""


class Usage(BaseModel):
    """Token counts as the provider reported them; None where it reported nothing."""

    model_config = ConfigDict(extra="forbid")

    input_tokens: int | None = Field(None, ge=0, description="Prompt tokens, cached ones included.")
    cached_input_tokens: int | None = Field(None, ge=0, description="Prompt tokens read from the provider cache.")
    cache_write_tokens: int | None = Field(None, ge=0, description="Prompt tokens written to the provider cache.")
    output_tokens: int | None = Field(None, ge=0, description="Completion tokens, reasoning tokens included.")
    reasoning_tokens: int | None = Field(None, ge=0, description="Hidden reasoning tokens.")


class Feedback(BaseModel):
    """What the end user said about the completion."""

    model_config = ConfigDict(extra="ignore")

    score: float | None = None
    label: str | None = None
    correction: str | None = None


class InferenceEvent(BaseModel):
    """One call to a generative model in production."""

    model_config = ConfigDict(extra="forbid")

    schema_version: int = SCHEMA_VERSION
    event_id: str = Field(min_length=1, max_length=200)
    timestamp: datetime
    app: str = Field(min_length=1, max_length=200)
    route: str | None = Field(None, max_length=500)
    model: str = Field(min_length=1, max_length=200)
    model_version: str | None = Field(None, max_length=200)
    adapter: str | None = Field(None, max_length=200)
    prompt_version: str | None = Field(None, max_length=200)

    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    retrieved_context: list[str] | None = None
    completion: str | None = None

    usage: Usage = Field(default_factory=Usage)
    cost_usd: float | None = Field(None, ge=0, description="Cost reported by the source, if any.")
    latency_ms: float | None = None
    time_to_first_token_ms: float | None = None
    status: Literal["ok", "error", "timeout", "cancelled"] = "ok"
    finish_reason: str | None = Field(None, max_length=100)

    feedback: Feedback | None = None
    user_id_hash: str | None = Field(None, max_length=200)
    session_id_hash: str | None = Field(None, max_length=200)
    metadata: dict[str, Any] = Field(default_factory=dict)
    truncated: bool = Field(
        False, description="A text was cut to the configured length. metadata['truncated_texts'] has its hash and length."
    )

    @field_validator("timestamp")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)

    @model_validator(mode="after")
    def _has_prompt(self) -> "InferenceEvent":
        if self.prompt is None and not self.messages:
            raise ValueError("an event needs a prompt: set 'prompt' or 'messages'")
        return self

    @property
    def key(self) -> str:
        """Kafka message key: every event of one (app, model) lands in one partition."""
        return f"{self.app}|{self.model}"

    def prompt_text(self) -> str:
        """Return the prompt as one text: the plain prompt, or the chat messages joined."""
        if self.prompt is not None:
            return self.prompt
        return "\n".join(message.content for message in self.messages or [])

    def user_prompt_text(self) -> str:
        """Return what the user wrote: the last user message, or the plain prompt."""
        if self.messages:
            user_turns = [message.content for message in self.messages if message.role == "user"]
            if user_turns:
                return user_turns[-1]
        return self.prompt or ""
