"""The upstream contract: waveforms in, every layer's frame-level features out.

``Upstream`` = front end (waveform -> normalised log-mel) + :class:`~upstream.encoder.ASTEncoder`, with the
pretraining heads dropped. It follows s3prl's upstream contract so SUPERB-style downstreams plug in:

* ``forward(wavs)`` takes a list of 1-D float waveforms in [-1, 1) at ``sample_rate`` and returns a dict
  with ``hidden_states`` (list of ``(B, T, H)``, one per block, no embedding entry), ``last_hidden_state``
  (``(B, T, H)``, after the final norm where the model has one), ``clip`` (``(B, D)``, pooled as the
  papers pool) and ``lengths`` (``(B,)`` valid frames).
* ``get_downsample_rates(key)`` gives input samples per output frame.

Frame-level features put the frequency patches of one time step side by side (``H = n_f * D``), exactly
as s3prl's SSAST and MAE-AST experts do. Long audio is cut into fixed windows (``window_frames``, which is
the front end's ``target_length``), each padded to the model's input length, and the windows' features are
concatenated in time:

* ``window_mode='s3prl'`` (SSAST): non-overlapping windows of ``window_frames * frame_shift`` samples,
  each one's fbank (98 frames for 1 s) padded to ``window_frames``; s3prl's ``ssast`` expert.
* ``window_mode='exact'`` (ASiT): the clip's fbank cut into windows of ``window_frames`` frames, the last
  one zero-padded before normalisation as the official crops are, so tokens stay on one time grid.
* ``window_frames=None`` (MAE-AST): the whole clip at once with a padding mask. MAE-AST's opt-in
  ``target_length`` gives it ``'exact'`` windows instead (``docs/deviations.md``), the padded end of a
  clip's last window masked as a padded batch is: a model without a fixed-length position table takes
  padding masks, so each window gives what the model gives on that stretch alone.
* ``window_mode='utterance'`` (SSAST's own pipelines): the whole clip's fbank padded or cut to
  ``window_frames`` (what follows is dropped), one input per clip, as SSAST's PSLA data loader and its own
  SUPERB upstream (``src/finetune/superb/upstream/ast``) feed the model. The features are then that
  upstream's: token sequences, prefix tokens included (``H = D``, ``T = P + N``, frequency-major for
  SSAST), ``hidden_states`` the raw block outputs, ``last_hidden_state`` after the final norm, a
  downsample rate of one fbank frame shift, and ``lengths`` as the s3prl of that upstream (before
  ``get_downsample_rates``, ``UpstreamBase.tolist``) cut them: ``round(len(wav) / (max_len / T))``, at
  least 1, so a clip's length depends on the longest clip of its batch, as it did there.

``forward(wavs, layers=[...])`` returns only the hidden states asked for (``[]``: none), and in eval mode the
windows go through the encoder a chunk at a time, each chunk's rows written into the preallocated results,
so the memory of a long clip grows with what is returned, not with every block's output of every window
(:meth:`Upstream._encode_rows`). :func:`run_upstream` asks any upstream, a plug-in included, the same way.

The fbank-level entry point :meth:`Upstream.forward_fbank` serves end-to-end fine-tuning and fixtures.
"""
from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import RawCheckpoint, save_upstream
from .config import UpstreamConfig
from .encoder import ASTEncoder
from .frontend import Fbank, pad_waveforms, validate_waveform
from .registry import get_family
from .tokenizer import token_padding_mask, tokens_to_time_rows


class Upstream(nn.Module):
    """Front end + encoder under the s3prl upstream contract (see module docstring)."""

    def __init__(self, cfg: UpstreamConfig, name: str = ""):
        super().__init__()
        self.cfg = cfg
        self.name = name or cfg.family
        self.frontend = Fbank(cfg.frontend)
        if cfg.window_frames is not None and cfg.window_mode == "exact":
            raw = replace(cfg.frontend, target_length=None, norm_mean=None, norm_std=None)
            self._raw_frontend = Fbank(raw)
        self.encoder = ASTEncoder(cfg.encoder)
        self.sample_rate = int(cfg.frontend.sample_rate)
        enc = cfg.encoder
        self._shift = int(round(cfg.frontend.sample_rate * cfg.frontend.frame_shift_ms / 1000))
        n_f, _ = enc.grid
        self.num_freq_patches = n_f
        # frame-level feature width: the frequency patches of a time step side by side, or one token
        self.hidden_size = enc.embed_dim if cfg.window_mode == "utterance" else n_f * enc.embed_dim
        self.clip_size = enc.embed_dim

    # ------------------------------------------------------------------ contract
    def get_downsample_rates(self, key: str = "hidden_states") -> int:
        """Input samples per output frame, for every key (``'utterance'``: one fbank frame shift, the rate
        SSAST's own SUPERB upstream is declared with; its tokens are not frames)."""
        if self.cfg.window_mode == "utterance":
            return self._shift
        return self._shift * self.cfg.encoder.tstride

    @property
    def num_layers(self) -> int:
        return self.cfg.encoder.depth

    _input_augment: Callable[[torch.Tensor, float], torch.Tensor] | None = None

    def set_input_augment(self, augment: Callable[[torch.Tensor, float], torch.Tensor] | None) -> None:
        """The contract's fine-tuning hook: in ``train()`` mode, ``augment(fbank, fill)`` replaces each
        normalised input ``(B, T, F)`` the encoder sees (one per clip, or one per window), ``fill`` being the
        value a raw zero log-mel bin has after normalisation (SSAST masks the raw log-mel with 0). Fine-tuning
        puts SpecAugment and noise here (``downstream.augment``); None removes it."""
        self._input_augment = augment

    def _augmented(self, fbank: torch.Tensor) -> torch.Tensor:
        if self._input_augment is None or not self.training:
            return fbank
        fc = self.cfg.frontend
        fill = 0.0 if fc.norm_mean is None else (0.0 - fc.norm_mean) / (2.0 * fc.norm_std)
        return self._input_augment(fbank, fill)

    def forward(self, wavs: list[torch.Tensor], layers: Sequence[int] | None = None) -> dict:
        """
        Args:
            wavs: list of B 1-D float waveforms in [-1, 1) at ``self.sample_rate``.
            layers: the hidden states to return, as block indices (0-based, negative from the end), in the
                order wanted; None = every block's (the s3prl contract). ``[]`` returns none: only
                ``last_hidden_state``, ``clip`` and ``lengths``. Blocks past the last one asked for still
                run (the final norm needs them); outputs of the others are never kept, which is what bounds
                the memory of long clips.
        Returns:
            dict with ``hidden_states`` (list of (B, T, H), those of ``layers``), ``last_hidden_state``
            (B, T, H), ``clip`` (B, D), ``lengths`` (B,) long.
        """
        if len(wavs) == 0:
            raise ValueError("Upstream.forward got an empty batch")
        layers = self.check_layers(layers)
        device = self.encoder.patch_embed.proj.weight.device
        wavs = [validate_waveform(w, f"waveform {i}").to(device=device, dtype=torch.float32)
                for i, w in enumerate(wavs)]
        padded, lengths = pad_waveforms(wavs)  # (B, S), (B,)
        if self.cfg.window_frames is None:
            return self._forward_whole(padded, lengths, layers)
        if self.cfg.window_mode == "utterance":
            return self._forward_utterance(padded, lengths, layers)
        return self._forward_windows(padded, lengths, layers)

    def check_layers(self, layers: Sequence[int] | None) -> list[int]:
        """``layers`` of :meth:`forward` as non-negative block indices (None: all); out of range: an error."""
        L = self.num_layers
        if layers is None:
            return list(range(L))
        bad = [i for i in layers if not isinstance(i, int) or isinstance(i, bool) or not -L <= i < L]
        if bad:
            raise ValueError(f"upstream {self.name!r}: layers {bad} out of range for {L} hidden states "
                             f"(0..{L - 1}, or negative from the end)")
        return [i % L for i in layers]

    # ------------------------------------------------------------------ one input per clip (SSAST's own)
    def _forward_utterance(self, padded: torch.Tensor, lengths: torch.Tensor, layers: list[int]) -> dict:
        fbank, _ = self.frontend(padded, lengths)  # (B, window_frames, F): padded/cut, normalised
        fbank = self._augmented(fbank)
        out = self.forward_fbank(fbank, layers=layers)
        P = self.encoder.num_prefix_tokens
        T = out["norm_out"].shape[1]  # P + N tokens, every clip the same
        # old s3prl UpstreamBase.tolist: ratio = max(len(wav)) / T; length = round(len(wav) / ratio), in
        # Python floats (round half to even, as torch.round)
        ratio = lengths.max().double() / T
        lens = torch.round(lengths.double() / ratio).long().clamp(1, T)
        if self.cfg.pooling == "cls":
            clip = out["norm_out"][:, :P].mean(1)  # ft_cls: (cls + dist) / 2
        else:
            clip = out["tokens"].mean(1)  # ft_avgtok: every patch token, those over padding included
        return {"hidden_states": list(out["block_out"]), "last_hidden_state": out["norm_out"], "clip": clip,
                "lengths": lens}

    # ------------------------------------------------------------------ whole-clip path (MAE-AST)
    def _forward_whole(self, padded: torch.Tensor, lengths: torch.Tensor, layers: list[int]) -> dict:
        fbank, num_frames = self.frontend(padded, lengths)  # (B, T, F), (B,)
        fbank = self._augmented(fbank)
        enc = self.cfg.encoder
        if fbank.shape[1] < enc.tshape:
            # every clip is shorter than one patch: zero-pad as a longer clip in the batch would, so such a
            # clip gives the same features alone as in a mixed batch (its partial patch counts as valid there)
            fbank = F.pad(fbank, (0, 0, 0, enc.tshape - fbank.shape[1]))
        n_f, n_t = self.encoder.grid_for(fbank.shape[1])
        # a clip shorter than one patch keeps that one (partial) patch, or it would have no valid token at all
        tok_pad = token_padding_mask(num_frames.clamp(min=enc.tshape) if not self.cfg.partial_patch_valid
                                     else num_frames, n_t, n_f, enc.tshape, enc.tstride, enc.token_order,
                                     self.cfg.partial_patch_valid)
        valid_rows = (~tok_pad).view(len(lengths), -1).sum(1) // n_f
        # one sequence per clip: never split, a batch's padding mask (or its absence) stays as it was
        out = self._encode_rows(fbank, tok_pad, layers, n_f, n_t, len(lengths), windows=1, chunked=False)
        return self._assemble(out, n_f, n_t, lengths, valid_rows, windows=1)

    # ------------------------------------------------------------------ windowed path (SSAST, ASiT)
    def _forward_windows(self, padded: torch.Tensor, lengths: torch.Tensor, layers: list[int]) -> dict:
        B, S = padded.shape
        W = self.cfg.window_frames
        token_padding = None  # windows are fully valid: their padding is part of the input
        if self.cfg.window_mode == "s3prl":
            # s3prl ssast expert: cut the zero-padded waveform into windows, one fbank per window
            win = W * self._shift
            num_win = max(1, math.ceil(S / win))  # = len(range(0, S, win))
            padded = F.pad(padded, (0, num_win * win - S))
            chunks = padded.reshape(B * num_win, win)  # (B*W, win)
            fbank, _ = self.frontend(chunks, torch.full((B * num_win,), win, device=padded.device))
            fbank = self._augmented(fbank)
            n_f, n_t = self.encoder.grid_for(fbank.shape[1])
            rows = torch.full_like(lengths, num_win * n_t)
        else:
            # official ASiT crops: fbank of the clip, zero rows to the window length, then normalise
            fbank, frames = self._raw_frontend(padded, lengths)  # (B, T, F), rows past a clip are 0
            num_win = max(1, math.ceil(fbank.shape[1] / W))
            fbank = F.pad(fbank, (0, 0, 0, num_win * W - fbank.shape[1])).reshape(B * num_win, W, -1)
            fc = self.cfg.frontend
            if fc.norm_mean is not None:
                fbank = (fbank - fc.norm_mean) / (2.0 * fc.norm_std)
            fbank = self._augmented(fbank)  # fine-tuning's SpecAugment / noise, on the normalised windows
            n_f, n_t = self.encoder.grid_for(W)
            tstride = self.cfg.encoder.tstride
            rows = torch.div(frames + tstride - 1, tstride, rounding_mode="floor")
            if self.cfg.encoder.pos_embed == "sincos":
                # a model without a fixed-length position table (MAE-AST, windowed by target_length) masks
                # the padded end of a clip's last window, as it masks a padded batch, so each window gives
                # what the model gives on that stretch of fbank alone
                enc = self.cfg.encoder
                starts = torch.arange(num_win, device=frames.device) * W
                win_frames = (frames[:, None] - starts[None]).clamp(0, W).reshape(-1)  # (B*num_win,)
                pad_valid = token_padding_mask(win_frames, n_t, n_f, enc.tshape, enc.tstride, enc.token_order,
                                               self.cfg.partial_patch_valid)
                rows = ((~pad_valid).view(B, -1).sum(1) // n_f).clamp(min=1)  # a short clip keeps one row
                # a window past a clip's end keeps one (masked-in) patch so its attention is defined; its
                # rows lie past the clip's length
                least = 1 if self.cfg.partial_patch_valid else enc.tshape
                token_padding = token_padding_mask(win_frames.clamp(min=least), n_t, n_f, enc.tshape,
                                                   enc.tstride, enc.token_order, self.cfg.partial_patch_valid)
        out = self._encode_rows(fbank, token_padding, layers, n_f, n_t, B, num_win, chunked=not self.training)
        return self._assemble(out, n_f, n_t, lengths, rows, windows=num_win)

    def _encode_rows(self, fbank: torch.Tensor, token_padding: torch.Tensor | None, layers: list[int],
                     n_f: int, n_t: int, B: int, windows: int, chunked: bool) -> dict:
        """Encode ``B * windows`` sequences into frame rows, keeping only the hidden states of ``layers``.

        With ``chunked``, the sequences go through the encoder a chunk at a time (about
        :meth:`chunk_tokens` tokens) and each chunk's rows are written straight into the preallocated
        results, so the memory held grows with what is returned, not with every block's output of every
        window (a 300 s SSAST clip is 300 windows). Each sequence is computed on its own (attention never
        crosses sequences; every other op is row-wise), so the rows are those of one pass up to float
        rounding: a BLAS may pick another kernel for a matrix product of few rows (with x86 MKL, chunks of
        300 tokens or more gave bit-identical rows, a chunk of one 101-token window rows 2e-6 apart), so
        chunks are of equal size and thousands of tokens long. Training mode never chunks, so dropout's
        draws and a BatchNorm's batch statistics see the whole batch as before.

        Returns:
            dict: ``hidden`` (list of (B, windows * n_t, n_f * D), in ``layers`` order), ``last`` (the same
            shape, after the final norm) and ``prefix`` ((B * windows, P, D): the final prefix tokens).
        """
        P, order = self.encoder.num_prefix_tokens, self.cfg.encoder.token_order
        keep = sorted(set(layers))  # forward_blocks returns the kept blocks in block order, once each
        S = fbank.shape[0]
        step = S if not chunked else max(1, self.chunk_tokens(fbank.device) // (P + n_f * n_t))
        step = -(-S // -(-S // step))  # chunks of equal size: no short remainder (a BLAS may round it apart)
        if step >= S:  # one pass: the rows are the results
            blocks, final = self.encoder.forward_intermediates(fbank, token_padding, keep)
            bufs = [tokens_to_time_rows(x[:, P:], n_f, n_t, order) for x in (*blocks, final)]
            prefix = final[:, :P]
        else:
            bufs, prefix = [], None  # allocated at the first block output, in its dtype

            def write(j: int, x: torch.Tensor, s: int) -> None:
                """Rows of chunk output ``x`` (block ``keep[j]``, or the final features at ``len(keep)``)
                into their result, straight from the tokens (no intermediate copy)."""
                if not bufs:
                    bufs.extend(x.new_empty(S, n_t, n_f * x.shape[-1]) for _ in range(len(keep) + 1))
                dst = bufs[j][s:s + len(x)].view(len(x), n_t, n_f, -1)
                tok = x[:, P:]
                dst.copy_(tok.unflatten(1, (n_t, n_f)) if order == "time_major"
                          else tok.unflatten(1, (n_f, n_t)).transpose(1, 2))

            for s in range(0, S, step):
                e = min(S, s + step)
                pad = None if token_padding is None else token_padding[s:e]
                _, final = self.encoder.forward_intermediates(
                    fbank[s:e], pad, keep, sink=lambda i, x, s=s: write(keep.index(i), x, s))
                write(len(keep), final, s)
                if prefix is None:
                    prefix = final.new_empty(S, P, final.shape[-1])
                prefix[s:e] = final[:, :P]
        rows = [b.reshape(B, windows * n_t, -1) for b in bufs]
        hidden = [rows[keep.index(i)] for i in layers]
        return {"hidden": hidden, "last": rows[-1], "prefix": prefix}

    def chunk_tokens(self, device: torch.device) -> int:
        """Tokens per chunk of windows in eval mode (:meth:`_encode_rows`): enough for full-speed matrix
        products, small enough that a chunk's activations stay far below the returned features (8192 on a
        CPU: a block's MLP activation is 8192 x 4D floats, 100 MB at D = 768; 65536 on an accelerator).
        Set ``max_chunk_tokens`` on the instance to choose another budget."""
        if self.max_chunk_tokens is not None:
            return self.max_chunk_tokens
        return 8192 if device.type == "cpu" else 65536

    max_chunk_tokens: int | None = None

    # ------------------------------------------------------------------ shared tail
    def forward_fbank(self, fbank: torch.Tensor, token_padding: torch.Tensor | None = None,
                      layers: Sequence[int] | None = None) -> dict:
        """Token-level features from a normalised spectrogram, for fine-tuning and checks.

        Args:
            fbank: (B, T, F) as the front end gives it (padded/cut to ``input_tdim`` where the model
                has a learned position table).
            token_padding: (B, N) bool, True = padded patch token.
            layers: the blocks whose outputs ``block_out`` holds, in that order (as :meth:`forward`);
                None = all.
        Returns:
            dict: ``block_out`` list of (B, P+N, D) per block of ``layers``; ``norm_out`` (B, P+N, D) after
            the final norm; ``tokens`` (B, N, D) = ``norm_out`` without the prefix; ``token_padding``.
        """
        layers = self.check_layers(layers)
        keep = sorted(set(layers))
        blocks, final = self.encoder.forward_intermediates(fbank, token_padding, keep)
        P = self.encoder.num_prefix_tokens
        return {"block_out": [blocks[keep.index(i)] for i in layers], "norm_out": final,
                "tokens": final[:, P:], "token_padding": token_padding}

    def _assemble(self, out: dict, n_f: int, n_t: int, lengths: torch.Tensor, valid_rows: torch.Tensor,
                  windows: int) -> dict:
        """Rows of :meth:`_encode_rows` -> the contract's outputs: every clip trimmed as s3prl trims, its
        valid length, and the clip feature."""
        B = len(lengths)
        ds = self.get_downsample_rates()
        max_rows = len(range(0, int(lengths.max()), ds))  # s3prl trims every clip to this
        hidden = [h[:, :max_rows] for h in out["hidden"]]
        last = out["last"][:, :max_rows]
        T = last.shape[1]
        lens = torch.minimum(valid_rows, torch.div(lengths + ds - 1, ds, rounding_mode="floor")).clamp(max=T)
        valid = torch.arange(T, device=lens.device)[None, :] < lens[:, None]  # (B, T)
        if self.cfg.pooling == "cls":
            cls = out["prefix"].mean(1).reshape(B, windows, -1)  # (B, W, D)
            used = (torch.arange(windows, device=lens.device)[None] * n_t < lens[:, None]).float()
            clip = (cls * used[..., None]).sum(1) / used.sum(1, keepdim=True).clamp(min=1)
        else:
            tok = last.reshape(B, T, n_f, -1)  # (B, T, n_f, D)
            w = valid[:, :, None, None].to(tok.dtype)
            clip = (tok * w).sum((1, 2)) / (w.sum((1, 2)) * n_f).clamp(min=1)
        return {"hidden_states": hidden, "last_hidden_state": last, "clip": clip, "lengths": lens}

    # ------------------------------------------------------------------ checkpoints this project writes
    def save(self, path, extra: dict | None = None) -> None:
        """Write weights + the config that rebuilds them (loads back with ``upstream.load``)."""
        save_upstream(self, path, extra)


def upstream_with_weights(cfg: UpstreamConfig, name: str, raw: RawCheckpoint | None = None) -> Upstream:
    """Build an :class:`Upstream` and, given a :class:`~upstream.checkpoint.RawCheckpoint`, load its encoder
    weights strictly and record the file's sha256."""
    model = Upstream(cfg, name)
    if raw is not None:
        model.encoder.load_state_dict(raw.state, strict=True)
        model.encoder.sincos_table = raw.extra.get("sincos_table")  # MAE-AST: the file's position table
        model.checkpoint_sha256 = raw.sha256
    return model


def run_upstream(model: nn.Module, wavs: list[torch.Tensor], layers: Sequence[int] | None = None) -> dict:
    """``model(wavs)`` keeping only the hidden states of ``layers`` (as :meth:`Upstream.forward`; None = all).

    An upstream whose ``forward`` takes ``layers`` (this package's) computes only those; any other (a
    plug-in, ``s3prl:NAME``, a compiled module) computes them all and the list is cut afterwards, so callers
    get the same dict either way."""
    if layers is None:
        return model(wavs)
    if isinstance(model, Upstream) or "layers" in inspect.signature(model.forward).parameters:
        return model(wavs, layers=list(layers))
    out = dict(model(wavs))
    hidden = out["hidden_states"]
    out["hidden_states"] = [hidden[i] for i in layers]
    return out


@dataclass(frozen=True)
class FeatureFingerprint:
    """What makes an upstream's features what they are (:func:`feature_fingerprint`), for caches, records."""

    checkpoint_sha256: str | None  # its weights' file; None: random init, or a plug-in's own weights
    config: dict | None  # UpstreamConfig.to_dict(); None for a plug-in upstream
    code: str  # sha256 of the source that computes the features


def feature_fingerprint(model: nn.Module) -> FeatureFingerprint:
    """The fingerprint of ``model``'s features: its checkpoint's sha256 (registered upstreams record it when
    they read one; a plug-in may set a ``checkpoint_sha256`` attribute), its config, and the sha256 of the
    source that computes them: the file of its class plus, for this package's upstreams, the contract, its
    config, front end, Kaldi fbank, tokenizer, layers, encoder and the family's module. A change to any of
    them changes the fingerprint, so a feature cache keyed by it never serves features of other code."""
    import hashlib
    from pathlib import Path

    here = Path(__file__).resolve().parent
    files = {inspect.getsourcefile(type(model))}
    files |= {str(here / f"{mod}.py") for mod in ("interface", "config", "frontend", "kaldi", "encoder",
                                                   "tokenizer", "layers")}
    cfg = model.cfg if isinstance(model, Upstream) else None
    if cfg is not None:
        try:
            files.add(str(get_family(cfg.family).source_file))
        except ValueError:  # a family no module registered (a test's): its class file is hashed above
            pass
    h = hashlib.sha256()
    for f in sorted(x for x in files if x and Path(x).exists()):
        h.update(Path(f).read_bytes())
    return FeatureFingerprint(getattr(model, "checkpoint_sha256", None), cfg.to_dict() if cfg else None,
                              h.hexdigest())
