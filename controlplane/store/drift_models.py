"""SQL tables: drift."""

from __future__ import annotations
