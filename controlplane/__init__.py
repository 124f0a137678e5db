"""Control plane for LLM applications in production."""

from controlplane.errors import ControlPlaneError

__version__ = "0.1.0"

__all__ = ["ControlPlaneError", "__version__"]
