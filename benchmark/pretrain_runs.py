"""The pretraining runs of a sweep (:mod:`benchmark.suites`): one per recipe, overrides and corpora, shared.

A row whose :class:`~benchmark.published.RunSpec` names a pretraining recipe is pretrained before its jobs
run. The run's folder is named by the recipe plus a hash of everything that changes it (:func:`pretrain_dir`),
so rows and tables asking for the same pretraining share one run; a run that was stopped (a killed sweep) is
resumed to its ``max_steps`` rather than taken as finished (:func:`pretrain_finished`).
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch.distributed as dist

import pretrain
from common.files import write_atomic
from common.resources import shipped_path
from common.rundir import read_saved_config

from .published import RunSpec

__all__ = ["PretrainRunError", "ensure_pretrained", "pretrain_data", "pretrain_dir", "pretrain_finished"]


class PretrainRunError(ValueError):
    """A row's pretraining cannot run (no data given for it) or did not finish."""


def pretrain_dir(run: RunSpec, expdir: str | Path, extra_overrides: Sequence[str] = ()) -> Path:
    """Where the pretraining of ``run`` lives under a sweep's ``expdir``: ``pretrain/<recipe>-<hash>``, the
    hash over the pretraining upstream, recipe, overrides (the row's, then the sweep's ``extra_overrides``)
    and named corpora."""
    overrides = list(run.pretrain_overrides) + list(extra_overrides)
    corpora = [f"data={'+'.join(run.pretrain_data)}"] if run.pretrain_data else []
    key = "\n".join([str(run.pretrain_upstream), Path(run.pretrain).as_posix(), *overrides, *corpora])
    digest = hashlib.sha256(key.encode()).hexdigest()[:8]
    return Path(expdir) / "pretrain" / f"{Path(run.pretrain).stem}-{digest}"


def pretrain_data(run: RunSpec, default: str | None, corpora: Mapping[str, str], out: Path) -> str:
    """The pretraining data of ``run``: the sweep's ``default`` (``--pretrain-data DIR``), the one corpus the
    row names (``--pretrain-data NAME=DIR``), or for several corpora a JSONL manifest of all their audio
    files written next to the run (``<out>.data.jsonl``, written once: a resumed run sees the same list)."""
    if not run.pretrain_data:
        if not default:
            raise PretrainRunError(f"row needs pretraining ({run.pretrain}) but no --pretrain-data DIR was "
                                   f"given")
        return default
    missing = [name for name in run.pretrain_data if name not in corpora]
    if missing:
        raise PretrainRunError(f"row pretrains on {list(run.pretrain_data)}: pass --pretrain-data NAME=DIR "
                               f"for {missing} (given: {sorted(corpora) or 'none'})")
    if len(run.pretrain_data) == 1:
        return corpora[run.pretrain_data[0]]
    manifest = out.with_name(out.name + ".data.jsonl")
    if not manifest.is_file():
        lines = [json.dumps({"path": str(Path(f).resolve())}) for name in run.pretrain_data
                 for f in pretrain.list_audio_files(corpora[name])]
        manifest.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(manifest, "\n".join(lines) + "\n")
    return str(manifest)


def pretrain_finished(out: Path) -> bool:
    """True when ``out/last.ckpt`` has reached the run's ``max_steps`` (a stopped run is resumed)."""
    from upstream.safe_load import load_checkpoint_file

    cfg = read_saved_config(out / "config.yaml")
    state = load_checkpoint_file(out / "last.ckpt", what="pretraining checkpoint")  # never runs code from it
    return int(state["step"]) >= int(cfg["max_steps"])


def ensure_pretrained(run: RunSpec, expdir: str | Path, data: str | None = None,
                      corpora: Mapping[str, str] | None = None, extra_overrides: Sequence[str] = (),
                      device: str | None = None, log: Callable[[str], None] = print,
                      make_probe: Callable[[], Callable | None] | None = None) -> Path:
    """Pretrain ``run`` under ``expdir`` unless it is done, resuming a stopped run; its ``upstream.pt``.

    Args:
        data, corpora: the sweep's pretraining data (:func:`pretrain_data`); read only when a run is needed.
        extra_overrides: the sweep's pretraining overrides, after the row's.
        make_probe: called only when a run is needed: ``pretrain.run``'s probe callback (e.g. a
            ``downstream.knn.ProbeSet``, called at step 0 and every ``probe_every`` steps; its records go to
            the run's ``losses.jsonl``) or None.

    Raises:
        PretrainRunError: no data for the row, or the loss became non-finite.
        ValueError: the recipe or an override is wrong (``ConfigError``), the data unusable (``DataError``).
        pretrain.PretrainStopped: SIGTERM / SIGINT stopped the run (``last.ckpt`` saved; a new sweep resumes).
    """
    out = pretrain_dir(run, expdir, extra_overrides)
    done = out / "upstream.pt"
    if done.is_file() and (not (out / "last.ckpt").is_file() or pretrain_finished(out)):
        return done
    source = pretrain_data(run, data, corpora or {}, out)
    resume = (out / "last.ckpt").is_file()
    overrides = list(run.pretrain_overrides) + list(extra_overrides)
    recipe = shipped_path(run.pretrain, prefer_shipped=True)
    cfg = pretrain.resolve_config(run.pretrain_upstream, recipe, overrides, out_dir=out, data=source,
                                  device=device, resume=resume)
    log(f"pretraining {out.name}{' (resumed)' if resume else ''}: -u {run.pretrain_upstream} "
        f"-c {run.pretrain} " + " ".join(f"-o {o}" for o in overrides))
    try:
        pretrain.run(cfg, resume=resume, probe=make_probe() if make_probe is not None else None)
    except pretrain.NonFiniteLossError as err:  # the sweep goes on with other rows; this one has no encoder
        raise PretrainRunError(f"pretraining {out} failed: {err}") from None
    if dist.is_initialized():  # under torchrun rank 0 writes upstream.pt: the others wait for it
        dist.barrier()
    if not done.is_file():
        raise PretrainRunError(f"pretraining {out} ended without {done.name}")
    return done
