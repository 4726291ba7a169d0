"""Downstream evaluation of audio upstreams, s3prl-style: ``downstream.run(DownstreamJob(...))``.

The package's public entry points (``run``, ``resolve``, ``DownstreamJob``, ...) live in
:mod:`downstream.job` and are imported from here on first use, so that importing one of the package's
modules (``downstream.tasks``, ``downstream.metrics``) does not load the whole training stack.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .job import (
        DownstreamJob,
        UpstreamContractError,
        identity_hash,
        render_config,
        resolve,
        run,
        select_fold_runs,
    )

__all__ = ["DownstreamJob", "UpstreamContractError", "identity_hash", "render_config", "resolve", "run",
           "select_fold_runs"]


def __getattr__(name: str):
    if name in __all__:
        from . import job

        return getattr(job, name)
    raise AttributeError(f"module 'downstream' has no attribute {name!r}")
