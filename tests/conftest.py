"""Shared test settings.

Golden fixtures live outside the repository (``../shared/fixtures`` next to the checkout by
default); point ``ASTBENCH_FIXTURES`` elsewhere to use another copy. Tests that need them skip
with a clear reason when they are absent, except under CI (``CI=true``), where a missing fixture
is a failure.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURES_DIR = Path(os.environ.get("ASTBENCH_FIXTURES", REPO_ROOT.parent / "shared" / "fixtures"))
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

torch.set_num_threads(min(2, os.cpu_count() or 1))


def fixture_path(*parts: str) -> Path:
    """Path of a golden fixture; skip (or fail under CI) when it is missing."""
    path = FIXTURES_DIR.joinpath(*parts)
    if not path.exists():
        msg = f"golden fixture {path} not found (set ASTBENCH_FIXTURES to the fixtures folder)"
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)
    return path


@pytest.fixture
def rng() -> torch.Generator:
    return torch.Generator().manual_seed(0)


@pytest.fixture(autouse=True)
def _private_caches(tmp_path_factory, monkeypatch):
    """No test reads or writes the user's feature cache (``~/.cache/astbench/features``)."""
    if "ASTBENCH_CACHE" not in os.environ:
        monkeypatch.setenv("ASTBENCH_CACHE", str(tmp_path_factory.mktemp("feature_cache")))
