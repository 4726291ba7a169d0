"""Asking an upstream for some hidden states, windows streamed in chunks, and MAE-AST's opt-in windows.

What the caller asks for (``forward(wavs, layers=...)``) must change only what is kept, never a value; windows
encoded a chunk at a time must give the rows of one pass; MAE-AST's ``target_length`` windows must give what
the model gives on each window alone, at a cost linear in the clip's length.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

import upstream
from downstream.config import HeadConfig
from downstream.featurizer import Featurizer
from downstream.model import DownstreamModel
from downstream.validate import validate_upstream
from upstream.frontend import pad_waveforms
from upstream.interface import run_upstream
from upstream.tokenizer import tokens_to_time_rows

MINI = [n for n in upstream.list_upstreams() if n.endswith("_mini")]


def _waves(sr: int, secs: list[float], seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [0.1 * torch.randn(int(sr * s), generator=g) for s in secs]


def _same(a: dict, b: dict, hidden: bool = True) -> None:
    for key in ("last_hidden_state", "clip", "lengths"):
        assert torch.equal(a[key], b[key]), key
    if hidden:
        assert len(a["hidden_states"]) == len(b["hidden_states"])
        for x, y in zip(a["hidden_states"], b["hidden_states"]):
            assert torch.equal(x, y)


# ------------------------------------------------------------------------------------------ layers
@pytest.mark.parametrize("name", MINI)
def test_layers_keep_only_what_was_asked_with_the_same_values(name):
    model = upstream.load(name).eval()
    wavs = _waves(model.sample_rate, [2.3, 1.1])
    with torch.no_grad():
        full = model(wavs)
        picked = model(wavs, layers=[-1, 0, 1])
        none = model(wavs, layers=[])
    assert len(full["hidden_states"]) == model.num_layers == 2
    assert [torch.equal(h, full["hidden_states"][i]) for h, i in zip(picked["hidden_states"], [1, 0, 1])] == [
        True] * 3
    assert none["hidden_states"] == []
    _same(full, none, hidden=False)
    _same(full, picked, hidden=False)


def test_layers_in_utterance_mode_and_forward_fbank():
    model = upstream.load("ssast_patch_mini", window_mode="utterance", target_length=128).eval()
    wavs = _waves(16000, [1.0, 0.7])
    with torch.no_grad():
        full, one = model(wavs), model(wavs, layers=[0])
        x = torch.randn(2, 128, 128, generator=torch.Generator().manual_seed(0))
        fb, fb_all = model.forward_fbank(x, layers=[1, 0]), model.forward_fbank(x)
    assert len(one["hidden_states"]) == 1 and torch.equal(one["hidden_states"][0], full["hidden_states"][0])
    _same(full, one, hidden=False)
    assert [torch.equal(a, fb_all["block_out"][i]) for a, i in zip(fb["block_out"], [1, 0])] == [True, True]
    assert torch.equal(fb["norm_out"], fb_all["norm_out"])


@pytest.mark.parametrize("layers", [[2], [-3], [0.5], [True]])
def test_out_of_range_layers_are_refused_by_name(layers):
    model = upstream.load("asit_mini")
    with pytest.raises(ValueError, match=r"upstream 'asit_mini': layers .* out of range for 2 hidden states"):
        model(_waves(32000, [0.5]), layers=layers)


class _PlainUpstream(nn.Module):
    """A plug-in whose forward takes no ``layers``: run_upstream cuts the list afterwards."""

    def forward(self, wavs):
        x = torch.stack(wavs)[:, None, :4]
        return {"hidden_states": [x, x + 1, x + 2], "last_hidden_state": x + 2, "clip": x[:, 0],
                "lengths": torch.ones(len(wavs), dtype=torch.long)}


def test_run_upstream_cuts_the_list_of_a_plugin_and_passes_layers_to_ours():
    out = run_upstream(_PlainUpstream(), [torch.zeros(8)], [2, 0])
    assert [float(h[0, 0, 0]) for h in out["hidden_states"]] == [2.0, 0.0]
    assert len(run_upstream(_PlainUpstream(), [torch.zeros(8)], None)["hidden_states"]) == 3
    model = upstream.load("ssast_frame_mini").eval()
    seen = []
    blocks = model.encoder.forward_blocks
    model.encoder.forward_blocks = lambda x, kpm=None, indices=None, sink=None: (
        seen.append(indices) or blocks(x, kpm, indices, sink))
    with torch.no_grad():
        run_upstream(model, _waves(16000, [1.0]), [1])
    assert seen == [[1]]


# ------------------------------------------------------------------------------------------ chunks
@pytest.mark.parametrize("name,overrides", [("ssast_patch_mini", {}),
                                            ("ssast_frame_mini", {"pooling": "cls"}),
                                            ("asit_mini", {}), ("asit_mini", {"pooling": "cls"})])
def test_windows_in_chunks_give_the_rows_of_one_pass(name, overrides):
    model = upstream.load(name, **overrides).eval()
    wavs = _waves(model.sample_rate, [4.3, 1.2, 2.0] if name.startswith("ssast") else [13.0, 1.2, 7.0])
    calls = []
    encode = model.encoder.forward_intermediates

    def counting(fbank, *args, **kwargs):
        calls.append(fbank.shape[0])
        return encode(fbank, *args, **kwargs)

    model.encoder.forward_intermediates = counting
    with torch.no_grad():
        model.max_chunk_tokens = 10 ** 9
        one = model(wavs)
        sequences = calls.pop()
        assert calls == []
        seq_tokens = model.encoder.num_prefix_tokens + model.num_freq_patches * model.encoder.cfg.grid[1]
        model.max_chunk_tokens = 3 * seq_tokens + 1  # at most three windows per chunk, chunks of equal size
        chunked = model(wavs)
        picked = model(wavs, layers=[1])
    per_call = calls[:len(calls) // 2]
    assert sequences >= 7 and sum(per_call) == sequences and len(per_call) == -(-sequences // 3)
    assert max(per_call) - min(per_call) <= 1 <= min(per_call)
    # one pass up to float rounding (a BLAS may take another kernel for a short matrix product)
    for key in ("last_hidden_state", "clip"):
        torch.testing.assert_close(chunked[key], one[key], atol=1e-5, rtol=1e-5)
    for a, b in zip(chunked["hidden_states"], one["hidden_states"]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert torch.equal(chunked["lengths"], one["lengths"]) and len(chunked["hidden_states"]) == 2
    torch.testing.assert_close(picked["hidden_states"][0], one["hidden_states"][1], atol=1e-5, rtol=1e-5)


def test_training_mode_never_chunks():
    """Dropout's draws and a BatchNorm's batch statistics must see the whole batch, as before."""
    model = upstream.load("ssast_patch_mini").train()
    model.max_chunk_tokens = 1
    calls = []
    encode = model.encoder.forward_intermediates
    model.encoder.forward_intermediates = lambda fb, *a, **k: calls.append(fb.shape[0]) or encode(fb, *a, **k)
    model(_waves(16000, [3.0]))
    assert calls == [3]


# ------------------------------------------------------------------------------------------ downstream
@pytest.mark.parametrize("feature,layer,psla,want", [("hidden_states", None, False, None),
                                                     ("hidden_states", -1, False, [1]),
                                                     ("last_hidden_state", None, False, []),
                                                     ("hidden_states", None, True, [])])
def test_the_downstream_model_asks_only_for_what_its_head_reads(feature, layer, psla, want):
    up = upstream.load("ssast_frame_mini")
    head = HeadConfig(kind="psla") if psla else HeadConfig(feature=feature)
    model = DownstreamModel(up, 3, head, layer=layer, finetune=True).train()
    asked = []
    forward = up.forward
    up.forward = lambda wavs, layers=None: asked.append(layers) or forward(wavs, layers)
    torch.manual_seed(0)
    logits = model(_waves(16000, [1.5, 0.8]))
    assert asked == [want]
    # the same logits as from every hidden state (dropout draws the same: nothing random in this model)
    up.forward = forward
    if want is not None and not psla:
        full = forward(_waves(16000, [1.5, 0.8]))
        feats = model.featurizer(full["hidden_states"]) if model.featurizer else full["last_hidden_state"]
        assert torch.allclose(model.head(feats, full["lengths"]), logits, atol=1e-6)
    logits.sum().backward()
    assert up.encoder.blocks[0].attn.qkv.weight.grad is not None


def test_featurizer_takes_its_one_layer_alone_or_in_the_full_list():
    f = Featurizer(3, layer=1)
    a, b, c = (torch.full((1, 2, 4), float(i)) for i in range(3))
    assert f.layers == [1] and Featurizer(3).layers is None
    assert torch.equal(f([b]), b) and torch.equal(f([a, b, c]), b)
    with pytest.raises(ValueError, match="built for 3 hidden states got 2"):
        f([a, b])


# ------------------------------------------------------------------------------------------ MAE-AST windows
def _mae_pair(token: str, target: int, partial: bool):
    torch.manual_seed(0)
    whole = upstream.load(f"mae_ast_{token}_mini", partial_patch_valid=partial).eval()
    win = upstream.load(f"mae_ast_{token}_mini", target_length=target, partial_patch_valid=partial).eval()
    win.load_state_dict(whole.state_dict())
    return whole, win


@pytest.mark.parametrize("token,partial", [("patch", False), ("patch", True), ("frame", True)])
def test_mae_ast_windows_equal_the_model_on_each_window_alone(token, partial):
    W = 64
    whole, win = _mae_pair(token, W, partial)
    wavs = _waves(16000, [2.3, 0.9, 0.05, 0.7])
    with torch.no_grad():
        out = win(wavs)
        fbank, frames = win._raw_frontend(*pad_waveforms(wavs))
    e = whole.encoder.cfg
    for b, n in enumerate(frames.tolist()):
        rows = []
        for s in range(0, n, W):
            seg = fbank[b:b + 1, s:min(n, s + W)]
            if seg.shape[1] < e.tshape and s > 0 and not partial:
                continue  # a last window shorter than a patch gives no row, as the end of a whole clip
            if seg.shape[1] < e.tshape or (partial and seg.shape[1] % e.tshape):
                # a partly filled patch counts, zero-filled, as in a padded batch; a clip shorter than one
                # patch keeps that patch (the whole-clip path's rule)
                seg = torch.nn.functional.pad(seg, (0, 0, 0, -seg.shape[1] % e.tshape))
            with torch.no_grad():
                o = whole.forward_fbank(seg)
            n_f, n_t = whole.encoder.grid_for(seg.shape[1])
            rows.append(tokens_to_time_rows(o["norm_out"], n_f, n_t, e.token_order))
        alone = torch.cat(rows, 1)[0]
        assert int(out["lengths"][b]) == len(alone)
        torch.testing.assert_close(out["last_hidden_state"][b, :len(alone)], alone, atol=1e-5, rtol=1e-5)
    assert out["last_hidden_state"].isfinite().all()


def test_mae_ast_default_is_the_whole_clip_and_windows_cost_linear():
    whole, win = _mae_pair("patch", 64, True)
    assert whole.cfg.window_frames is None and win.cfg.window_frames == 64
    shapes = []
    encode = win.encoder.forward_intermediates
    win.encoder.forward_intermediates = lambda fb, *a, **k: shapes.append(fb.shape) or encode(fb, *a, **k)
    with torch.no_grad():
        for secs in (1.0, 4.0, 16.0):
            win(_waves(16000, [secs]))
    # every window is 64 frames: the attention cost per window is fixed, the windows grow with the clip
    windows = [s[0] for s in shapes]
    assert {s[1] for s in shapes} == {64} and windows == [2, 7, 25]  # ceil(98 / 64), ceil(398 / 64), ...


def test_mae_ast_windows_pass_the_contract_and_survive_a_checkpoint(tmp_path):
    _, win = _mae_pair("frame", 100, True)
    assert validate_upstream(win) == []
    win.save(tmp_path / "w.pt")
    back = upstream.load("mae_ast_frame_mini", ckpt=str(tmp_path / "w.pt"))
    assert back.cfg.window_frames == 100 and back.cfg.window_mode == "exact"


@pytest.mark.parametrize("overrides,match", [
    ({"target_length": 70}, "target_length must be None .* 16-frame patch steps"),
    ({"target_length": 8}, "at least 16 frames"),
    ({"window_secs": 2.0}, "give target_length=200"),
])
def test_mae_ast_bad_window_lengths_are_refused_by_name(overrides, match):
    with pytest.raises(ValueError, match=match):
        upstream.load("mae_ast_patch_mini", **overrides)
