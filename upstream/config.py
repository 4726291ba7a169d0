"""``UpstreamConfig``: everything that rebuilds an :class:`~upstream.interface.Upstream`.

It is saved inside every checkpoint this project writes (:func:`upstream.checkpoint.save_upstream`) and read
back from it, so it sits below both the contract (``interface.py``) and the checkpoint code.

The input length has one name, the front end's ``target_length`` (fbank frames per model input, padded or
cut); the window length ``window_frames`` is that same number, and the encoder's ``input_tdim`` (the official
name of its position-table length) must equal it.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from .encoder import EncoderConfig
from .frontend import FbankConfig

WINDOW_MODES = ("s3prl", "exact", "utterance")


@dataclass
class UpstreamConfig:
    """Everything that rebuilds an :class:`~upstream.interface.Upstream` (window modes: its docstring)."""

    family: str  # a registered family: 'ssast' | 'mae_ast' | 'asit'
    encoder: EncoderConfig
    frontend: FbankConfig  # frontend.target_length: frames per window; None = the whole clip at once
    window_mode: str = "s3prl"  # 's3prl' | 'exact' | 'utterance' (upstream.interface)
    partial_patch_valid: bool = True  # MAE-AST official token padding (see tokenizer.token_padding_mask)
    pooling: str = "mean"  # clip feature: 'mean' of patch tokens, or 'cls' (prefix tokens averaged)
    extra: dict = field(default_factory=dict)  # family-specific facts kept for provenance (e.g. p_input_tdim)

    def __post_init__(self):
        if self.window_mode not in WINDOW_MODES:
            raise ValueError(f"window_mode must be one of {list(WINDOW_MODES)}, got {self.window_mode!r}")
        if self.window_mode == "utterance" and self.window_frames is None:
            raise ValueError("window_mode='utterance' needs frontend.target_length (the input length to pad "
                             "or cut to)")
        if self.pooling not in ("mean", "cls"):
            raise ValueError(f"pooling must be 'mean' or 'cls', got {self.pooling!r}")
        if self.pooling == "cls" and self.encoder.num_prefix_tokens == 0:
            raise ValueError(f"pooling='cls' needs prefix tokens, but {self.family} has none")
        if self.window_frames is not None and self.window_frames != self.encoder.input_tdim:
            raise ValueError(f"target_length={self.window_frames} must equal the encoder's input_tdim="
                             f"{self.encoder.input_tdim}")

    @property
    def window_frames(self) -> int | None:
        """Fbank frames per window (= ``frontend.target_length``); None: the whole clip at once."""
        return self.frontend.target_length

    def to_dict(self) -> dict:
        return {
            "family": self.family, "encoder": self.encoder.to_dict(), "frontend": asdict(self.frontend),
            "window_mode": self.window_mode, "partial_patch_valid": self.partial_patch_valid,
            "pooling": self.pooling, "extra": dict(self.extra),
        }

    @classmethod
    def from_dict(cls, d: dict) -> UpstreamConfig:
        """From :meth:`to_dict`, or from a format-1 checkpoint's dict, which also stored ``window_frames``."""
        d = dict(d)
        d["encoder"] = EncoderConfig.from_dict(d["encoder"])
        d["frontend"] = FbankConfig(**d["frontend"])
        stored = d.pop("window_frames", d["frontend"].target_length)
        if stored != d["frontend"].target_length:
            raise ValueError(f"window_frames={stored} disagrees with frontend.target_length="
                             f"{d['frontend'].target_length}")
        return cls(**d)
