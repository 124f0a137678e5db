"""The canonical inference event, its decoding and its adapters."""

from controlplane.events.decode import decode_event, decode_message, encode_event
from controlplane.events.schema import ChatMessage, Feedback, InferenceEvent, Usage

__all__ = ["ChatMessage", "Feedback", "InferenceEvent", "Usage", "decode_event", "decode_message", "encode_event"]
