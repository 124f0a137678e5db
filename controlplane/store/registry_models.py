"""SQL tables of the improvement loop: dataset versions, adapters, evaluation reports, promotions."""

from __future__ import annotations
