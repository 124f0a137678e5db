"""Fixtures shared by unit and integration tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

DATASETS = Path(os.environ.get("CONTROLPLANE_DATASETS", Path(__file__).resolve().parents[1].parent / "shared" / "datasets"))


@pytest.fixture(scope="session")
def datasets_dir() -> Path:
    """The public datasets folder; tests that read it skip where it is absent (a user's machine)."""
    if not DATASETS.is_dir():
        if os.environ.get("CI") == "true":
            pytest.fail(f"datasets folder {DATASETS} is missing; CI runs with ../shared beside the repository")
        pytest.skip(f"datasets folder {DATASETS} is absent; set CONTROLPLANE_DATASETS to run this test")
    return DATASETS


def pytest_sessionstart(session: pytest.Session) -> None:
    """Compile the detectors' Hyperscan patterns once, before any test starts a worker process.

    A worker that finds no compiled patterns in ~/.cache/controlplane/hyperscan compiles them on
    its first batch, which takes about 20 s and would count against the test's wait for it.
    """
    from controlplane.detectors.safety import SafetyScorer

    SafetyScorer(use_embeddings=False).score([("hello", "hi")])
