"""``-u s3prl:NAME``: an s3prl upstream (``s3prl.hub.NAME``) evaluated in this harness.

    python run_downstream.py -u s3prl:hubert -d esc50 --fold 1      # pip install s3prl (or astbench[s3prl])
    python run_downstream.py -u s3prl:wav2vec2_local --ckpt w2v.pt -d iemocap --fold 1

s3prl's legacy experts (what its own ``run_downstream.py`` builds: ``hub.NAME(ckpt=..., model_config=...,
refresh=...)``) take a list of 16 kHz waveforms and return ``hidden_states``, a list of ``(B, T, H)``. The
adapter adds what this project's contract has on top (``upstream/interface.py``):

* ``lengths`` (B,): ``round(len(wav) / downsample_rate)`` clamped to 1..T, the valid frames s3prl's own
  ``Featurizer`` keeps;
* ``last_hidden_state``: the expert's own when it gives one, else ``hidden_states[-1]``;
* ``clip`` (B, H): the mean of ``last_hidden_state`` over each clip's valid frames;
* ``sample_rate`` (16 kHz, s3prl's), ``num_layers`` and ``hidden_size`` (from one probe forward, as s3prl's
  ``Featurizer`` finds them), ``clip_size`` and ``get_downsample_rates`` (the expert's, else measured).

``hidden_states`` is passed on as the expert gives it, its input-embedding entry included where it has one
(s3prl's convention; this project's own upstreams list block outputs only).
"""
from __future__ import annotations

import difflib
from collections.abc import Callable

import torch
from torch import nn

from .frontend import validate_waveform

PREFIX = "s3prl:"
SAMPLE_RATE = 16000  # every s3prl upstream takes 16 kHz audio


class S3PRLUpstream(nn.Module):
    """An s3prl expert under this project's upstream contract (see the module docstring)."""

    sample_rate = SAMPLE_RATE

    def __init__(self, expert: nn.Module, name: str):
        super().__init__()
        self.expert, self.name = expert, f"{PREFIX}{name}"
        was_training = expert.training
        expert.eval()
        with torch.no_grad():  # s3prl's Featurizer probes the same way: one second of audio
            probe = self._hidden(expert([torch.zeros(SAMPLE_RATE, device=self._device())]))
        expert.train(was_training)
        self.num_layers, self.hidden_size = len(probe), int(probe[0].shape[-1])
        self.clip_size = self.hidden_size
        rate = getattr(expert, "get_downsample_rates", None)
        probed = max(1, round(SAMPLE_RATE / probe[0].shape[1]))
        self._rate = int(rate("hidden_states")) if callable(rate) else probed

    def _device(self) -> torch.device:
        param = next(self.expert.parameters(), None)
        return param.device if param is not None else torch.device("cpu")

    def _hidden(self, out) -> list[torch.Tensor]:
        hidden = out.get("hidden_states") if isinstance(out, dict) else None
        if not isinstance(hidden, (list, tuple)) or not hidden:
            raise ValueError(f"upstream {self.name!r}: the s3prl expert returned no 'hidden_states' list")
        return list(hidden)

    def get_downsample_rates(self, key: str = "hidden_states") -> int:
        """Input samples per output frame."""
        return self._rate

    def forward(self, wavs: list[torch.Tensor]) -> dict:
        """
        Args:
            wavs: list of B 1-D float waveforms at 16 kHz.
        Returns:
            dict with ``hidden_states`` (list of (B, T, H)), ``last_hidden_state`` (B, T, H), ``clip`` (B, H),
            ``lengths`` (B,) long.
        """
        if len(wavs) == 0:
            raise ValueError(f"upstream {self.name!r} got an empty batch")
        device = self._device()
        wavs = [validate_waveform(w, f"waveform {i}").to(device=device, dtype=torch.float32)
                for i, w in enumerate(wavs)]
        out = self.expert(wavs)
        hidden = self._hidden(out)
        last = out.get("last_hidden_state", hidden[-1])
        T = last.shape[1]
        lengths = torch.tensor([min(T, max(1, round(len(w) / self._rate))) for w in wavs], device=last.device)
        valid = (torch.arange(T, device=last.device)[None] < lengths[:, None]).to(last.dtype)  # (B, T)
        clip = (last * valid[..., None]).sum(1) / lengths[:, None].to(last.dtype)
        return {"hidden_states": hidden, "last_hidden_state": last, "clip": clip, "lengths": lengths.long()}


def s3prl_builder(name: str) -> Callable[..., nn.Module]:
    """The builder of ``s3prl:NAME``; raises ``ValueError`` now (before any data is read) when s3prl is not
    installed or has no upstream ``NAME``."""
    entry_name = name[len(PREFIX):] if name.startswith(PREFIX) else name
    full = PREFIX + entry_name
    try:
        from s3prl import hub
    except ImportError as err:
        raise ValueError(f"upstream {full!r} needs s3prl: pip install s3prl (or "
                         f"'astbench[s3prl]'); importing it failed: {err}") from None
    entry = getattr(hub, entry_name, None)
    if entry_name.startswith("_") or not callable(entry):
        options = [n for n in dir(hub) if not n.startswith("_") and callable(getattr(hub, n))]
        close = difflib.get_close_matches(entry_name, options, n=5)
        raise ValueError(f"s3prl has no upstream {entry_name!r}" + (f"; similar: {close}" if close else ""))

    def build(ckpt=None, model_config=None, refresh: bool = False, **overrides) -> S3PRLUpstream:
        if overrides:
            raise ValueError(f"upstream {full!r}: s3prl upstreams take ckpt, model_config and refresh, "
                             f"not {sorted(overrides)}")
        kwargs = {"refresh": refresh}  # only what is given: hub entries fill in their own ckpt/model_config
        if ckpt is not None:
            kwargs["ckpt"] = str(ckpt)
        if model_config is not None:
            kwargs["model_config"] = model_config
        return S3PRLUpstream(entry(**kwargs), entry_name)

    return build
