"""Shared test settings.

Golden fixtures live outside the repository (``../shared/fixtures`` next to the checkout by
default); point ``ASTBENCH_FIXTURES`` elsewhere to use another copy. Tests that need them skip
with a clear reason when they are absent, except under CI (``CI=true``), where a missing fixture
is a failure.

Under CI no test may skip quietly: a skip (a missing optional package, a missing file) is turned into a
failure, except a skip for the hardware the machine lacks or has (a reason naming CUDA or a GPU).

Markers (``setup.cfg``): ``slow`` (multi-process, signal, subprocess and end-to-end runs; ``make test-slow``)
and ``gpu`` are left out of the default run (``make test``); ``.ci/run`` runs both suites.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURES_DIR = Path(os.environ.get("ASTBENCH_FIXTURES", REPO_ROOT.parent / "shared" / "fixtures"))
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
# the only skips allowed under CI: a test for a machine with (or without) a CUDA device
HARDWARE_SKIP = re.compile(r"\b(CUDA|GPU)\b")

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


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """Under CI, a skipped test fails (see the module docstring): nothing is left out without a trace."""
    outcome = yield
    report = outcome.get_result()
    if not (IN_CI and report.skipped) or hasattr(report, "wasxfail"):
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    if not HARDWARE_SKIP.search(reason):
        report.outcome = "failed"
        report.longrepr = f"{item.nodeid} skipped under CI (CI=true), where every test must run: {reason}"
