"""Exceptions raised by the control plane.

ControlPlaneError
 ├── ConfigurationError      a setting or a file users edit is invalid
 ├── EventValidationError    an inference event cannot be decoded or is invalid
 ├── StoreError              the SQL store failed (the SQLAlchemy error is the cause)
 ├── StreamError             Kafka failed (the aiokafka error is the cause)
 └── DetectorError           a detector could not run (a model or resource failed to load)
"""


class ControlPlaneError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigurationError(ControlPlaneError, ValueError):
    """A setting or a user-edited file is invalid."""


class EventValidationError(ControlPlaneError, ValueError):
    """An inference event cannot be decoded or fails validation; `reason` is stored with it."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class StoreError(ControlPlaneError):
    """The SQL store failed."""


class StreamError(ControlPlaneError):
    """Producing to or consuming from Kafka failed."""


class DetectorError(ControlPlaneError):
    """A detector could not run."""
