"""A downstream run's folder: its default name, and the checks that keep two runs from sharing one.

Without ``-n`` the folder is ``<upstream>_<task>[_fold<k>]_<mode>[_l<k>]_seed<s>-<hash>``, the hash covering
everything that makes a run different (the resolved config with every override, the upstream checkpoint's
sha256, the data root), as the suites name their jobs. Whatever the name, a folder is written into only by a
run of its own configuration (``config.yaml`` compared key by key, ``run.json`` holds the checkpoint's
sha256), only once unless ``--resume``, and by one process at a time (``common.rundir.run_dir_lock``).
"""
from __future__ import annotations

import functools
import hashlib
import json
import sys
from pathlib import Path

from common.config import ConfigError, config_to_dict, dump_config
from common.files import write_atomic
from common.rundir import check_run_dir, config_diff, read_saved_config

from .config import DownstreamConfig
from .tasks import resolve_data_root

# Keys a run may change when resumed: machine paths (the checkpoint is compared by its sha256 instead), how
# far training goes (a warm-up + decay schedule is re-planned, with a warning) and how it is logged or loaded.
RESUMABLE_CHANGES = ("run.expname", "run.data_root", "run.ckpt", "runner.total_steps", "runner.num_workers",
                     "runner.log_step")
# every key's default: a folder saved before a key existed ran with its default (common.rundir.config_diff)
_DEFAULTS = config_to_dict(DownstreamConfig())


@functools.lru_cache(maxsize=8)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    from upstream.checkpoint import file_sha256

    return file_sha256(path)


def checkpoint_sha256(ckpt: str | None) -> str | None:
    """sha256 of the upstream checkpoint file (read once per file version), None without one."""
    if ckpt is None:
        return None
    path = Path(ckpt).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"upstream checkpoint {ckpt} does not exist")
    st = path.stat()
    return _sha256(str(path.resolve()), st.st_size, st.st_mtime_ns)


def default_expname(cfg: DownstreamConfig) -> str:
    """A readable prefix plus the first 8 hex digits of the sha256 of the run's identity: the resolved config
    (overrides included), the checkpoint's sha256 and the data root's absolute path."""
    r = cfg.run
    prefix = "_".join(x for x in [r.upstream.replace(":", "."), r.task, f"fold{r.fold}" if r.fold else "",
                                  "finetune" if r.finetune else "frozen",
                                  f"l{r.layer}" if r.layer is not None else "", f"seed{r.seed}"] if x)
    identity = config_to_dict(cfg)
    identity["run"] = {k: v for k, v in identity["run"].items() if k not in ("expname", "data_root", "ckpt")}
    identity["ckpt_sha256"] = checkpoint_sha256(r.ckpt)
    identity["data_root"] = str(resolve_data_root(r.data_root).resolve())
    text = json.dumps(identity, sort_keys=True, default=str, separators=(",", ":"))
    return f"{prefix}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"


def check_before_run(expdir: Path, cfg: DownstreamConfig, resume: bool, named: bool) -> None:
    """The read-only checks, before any data is read: another configuration in the folder, a run there without
    ``resume``, ``resume`` without one. ``named``: the folder came from ``-n`` (else from the settings)."""
    try:
        check_run_dir(expdir, config_to_dict(cfg), resume, ignore=RESUMABLE_CHANGES,
                      defaults=_DEFAULTS)
    except ConfigError as err:
        near = _runs_like(expdir, cfg) if resume and not named else ""
        if near:  # the default name follows the settings, so changed settings point at a folder with no run
            raise ConfigError(f"{err}. The default folder name carries a hash of the settings; runs of this "
                              f"upstream, task and seed: {near}") from None
        raise


def _runs_like(expdir: Path, cfg: DownstreamConfig) -> str:
    """Runs next to ``expdir`` with the same name prefix, and what differs from each."""
    prefix = expdir.name.rsplit("-", 1)[0]
    lines = []
    for ckpt in sorted(expdir.parent.glob(f"{prefix}-*/last.ckpt"))[:3]:
        if not (ckpt.parent / "config.yaml").is_file():
            continue
        diff = config_diff(read_saved_config(ckpt.parent / "config.yaml"), config_to_dict(cfg),
                           ("run.expname", "run.data_root", "run.ckpt"), _DEFAULTS)
        lines.append(f"{ckpt.parent.name} differs in {'; '.join(diff) or 'the checkpoint or data root'} "
                     f"(resume it with -n {ckpt.parent.name} and its settings)")
    return "; ".join(lines)


def claim(expdir: Path, cfg: DownstreamConfig, ckpt_sha256: str | None, resume: bool) -> None:
    """Rank 0, holding the folder's lock: check the folder again (another process may have written it since
    :func:`check_before_run`) and the upstream checkpoint it was made with, then write ``config.yaml`` and
    ``run.json``."""
    check_run_dir(expdir, config_to_dict(cfg), resume, ignore=RESUMABLE_CHANGES,
                      defaults=_DEFAULTS)
    saved = expdir / "run.json"
    if saved.is_file():
        old = json.loads(saved.read_text(encoding="utf-8"))
        if old.get("ckpt_sha256") != ckpt_sha256:
            what = "cannot resume" if resume else "it holds a run made"
            raise ConfigError(f"{expdir}: {what} with another upstream checkpoint: sha256 was "
                              f"{old.get('ckpt_sha256')} ({old.get('ckpt')}), now {ckpt_sha256} "
                              f"({cfg.run.ckpt}). Choose another -n NAME for this checkpoint")
    dump_config(cfg, expdir / "config.yaml")
    write_atomic(saved, json.dumps({"upstream": cfg.run.upstream, "ckpt": cfg.run.ckpt,
                                    "ckpt_sha256": ckpt_sha256, "command": sys.argv}, indent=1) + "\n")
