"""This project's upstreams inside s3prl: an ``UpstreamExpert`` shim and hub entries.

s3prl's ``run_downstream.py`` builds an upstream as ``Upstream(ckpt=-k, model_config=-g, refresh=-r)`` and
reads ``forward(wavs)["hidden_states"]`` and ``get_downsample_rates(key)``, which is this project's contract
already (``upstream/interface.py``). Two ways in:

1. s3prl's own slot for a custom upstream, ``upstream/example/expert.py`` (entry ``customized_upstream``):
   make that file the one line ``from astbench.s3prl import UpstreamExpert``, then::

       python run_downstream.py -m train -u customized_upstream -g ssast_patch_400 \\
           -k SSAST-Base-Patch-400.pth -d speech_commands -n ks_ssast

   ``-g`` names the upstream: a registered name, or a YAML file ``{upstream: NAME, <overrides>...}``.
2. Hub entries ``astbench_<name>(ckpt=None, model_config=None, refresh=False, **kwds)``, one per registered
   upstream (``from astbench.s3prl import *`` in a hubconf that s3prl's ``hub.py`` imports, or through
   ``torch.hub.load(<checkout>, "<name>", source="local")`` with this repository's ``hubconf.py``).

Prefixed names keep s3prl's own ``ssast_*`` / ``mae_ast_*`` entries (other code) from being shadowed.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

import upstream as upstreams

__all__ = ["UpstreamExpert", "HUB_ENTRIES", "hub_entry"]


def _name_and_overrides(model_config, upstream: str | None) -> tuple[str, dict]:
    """(registered name, overrides) from s3prl's ``model_config``: a registered name, a mapping, or a YAML
    file of one, whose ``upstream`` key names the upstream unless ``upstream`` is given."""
    config: dict = {}
    if isinstance(model_config, dict):
        config = dict(model_config)
    elif model_config not in (None, "") and str(model_config) in upstreams.list_upstreams():
        config = {"upstream": str(model_config)}
    elif model_config not in (None, ""):
        path = Path(model_config).expanduser()
        if not path.is_file():
            raise ValueError(f"UpstreamExpert: model_config {str(model_config)!r} is neither a registered "
                             f"upstream nor a YAML file")
        import yaml

        config = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if not isinstance(config, dict):
            raise ValueError(f"UpstreamExpert: model_config {path} must hold a mapping, e.g. 'upstream: "
                             f"ssast_patch_400'")
    name = upstream or config.pop("upstream", None)
    config.pop("upstream", None)
    if not name:
        raise ValueError("UpstreamExpert: which upstream? Give s3prl's -g a registered name (e.g. "
                         "ssast_patch_400) or a YAML file with 'upstream: NAME'")
    return str(name), config


class UpstreamExpert(nn.Module):
    """s3prl's expert interface over a registered upstream: ``UpstreamExpert(ckpt, model_config=None,
    **kwds)``.

    Args:
        ckpt: the checkpoint (s3prl ``-k``); None = the upstream's default file (``$ASTBENCH_CHECKPOINTS``),
            or random weights for the ``*_mini`` test models.
        model_config: s3prl ``-g``: the upstream's name, or a mapping / YAML file with ``upstream: NAME`` and
            overrides (``target_length``, ``pooling``, ...; s3prl's ``window_secs=1.0`` is
            ``target_length=100``).
        kwds: ``refresh`` (s3prl's; nothing is downloaded here), ``upstream`` (the name, overriding
            ``model_config``), and more overrides.
    """

    def __init__(self, ckpt: str | os.PathLike | None = None, model_config=None, **kwds):
        super().__init__()
        kwds.pop("refresh", None)
        name, overrides = _name_and_overrides(model_config, kwds.pop("upstream", None))
        self.model = upstreams.load(name, ckpt or None, **{**overrides, **kwds})
        self.name = name

    def get_downsample_rates(self, key: str = "hidden_states") -> int:
        return self.model.get_downsample_rates(key)

    def forward(self, wavs: list[torch.Tensor]) -> dict:
        """List of 16 kHz (32 kHz for ASiT) waveforms -> ``hidden_states`` (list of (B, T, H)), plus
        ``last_hidden_state``, ``clip`` and ``lengths`` (``upstream/interface.py``)."""
        return self.model(wavs)


def hub_entry(name: str):
    """The s3prl / torch.hub entry building registered upstream ``name``."""

    def entry(ckpt=None, model_config=None, refresh: bool = False, **kwds) -> UpstreamExpert:
        return UpstreamExpert(ckpt, model_config, upstream=name, refresh=refresh, **kwds)

    entry.__name__ = entry.__qualname__ = f"astbench_{name}"
    entry.__doc__ = f"astbench upstream {name!r}: {upstreams.describe_upstreams()[name]}"
    return entry


HUB_ENTRIES = {f"astbench_{name}": hub_entry(name) for name in upstreams.list_upstreams()}
__all__ += list(HUB_ENTRIES)  # so `from astbench.s3prl import *` (s3prl's hub.py habit) brings the entries


def __getattr__(attr: str):  # the entries as module attributes (PEP 562)
    if attr in HUB_ENTRIES:
        return HUB_ENTRIES[attr]
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *HUB_ENTRIES])
