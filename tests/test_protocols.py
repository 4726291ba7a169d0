"""Family downstream protocols (configs/protocols/, downstream/protocols.py), SSAST's own input pipelines
(upstream window_mode='utterance'), ``run_downstream.py --print-config``, and the pretraining leftovers that
follow each method's official code (SSAST's stepped warm-up, ASiT's per-parameter gradient clipping).

Expected values are written out by hand from shared/spec/recipes.md (sections 3 and 4) and the official files
the protocols cite, not read back from the protocol files.
"""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml
from conftest import fixture_path

import downstream
import pretrain
import run_downstream
import upstream
from benchmark.published import load_tables
from benchmark.suites import SuiteOptions, downstream_job, plan
from common.config import config_to_dict, load_config
from downstream import protocols
from downstream.config import DownstreamConfig
from downstream.protocols import ProtocolError
from pretrain import engine as pt  # the loop's module: its clip_gradients is patched below
from upstream.frontend import AUDIOSET_MEAN, AUDIOSET_STD, FbankConfig, pad_waveforms

REPO = Path(__file__).resolve().parents[1]
AS = (AUDIOSET_MEAN, AUDIOSET_STD)
ESC, KS = (-6.6268077, 5.358466), (-6.845978, 5.5654526)
SUPERB_TASKS = ("speech_commands_v1", "voxceleb1", "iemocap")
PSLA_TASKS = ("as20k", "esc50", "speech_commands_v2")

# (upstream, task) -> what the family's own pipeline fine-tunes with (recipes.md sections 3-4)
EXPECTED = {
    ("ssast_patch_400", "as20k"): dict(lr=5e-5, window="utterance", frames=1024, stats=AS, mean_first=True,
                                       pad_first=True, head="psla"),
    ("ssast_patch_400", "esc50"): dict(lr=1e-4, window="utterance", frames=512, stats=ESC, mean_first=True,
                                       pad_first=True, head="psla"),
    ("ssast_frame_400", "speech_commands_v2"): dict(lr=2.5e-4, window="utterance", frames=128, stats=KS,
                                                    mean_first=True, pad_first=True, head="psla"),
    ("ssast_patch_400", "speech_commands_v1"): dict(lr=1e-4, window="utterance", frames=100, stats=AS,
                                                    mean_first=False, pad_first=False,
                                                    feature="hidden_states"),
    ("ssast_frame_400", "speech_commands_v1"): dict(lr=5e-5, window="utterance", frames=100, stats=AS,
                                                    mean_first=False, pad_first=False),
    ("ssast_patch_400", "voxceleb1"): dict(lr=1e-4, window="utterance", frames=1000, stats=AS, batch=4,
                                           accum=8),
    ("ssast_frame_400", "iemocap"): dict(lr=1e-4, window="utterance", frames=600, stats=AS, batch=4, accum=8),
    ("mae_ast_patch", "speech_commands_v1"): dict(lr=1e-5, batch=512, accum=1, steps=10000, eval_step=100,
                                                  feature="last_hidden_state", window="whole clip"),
    ("mae_ast_frame", "voxceleb1"): dict(lr=1e-4, batch=4, accum=4, eval_batch=16, steps=60000, eval_step=500,
                                         feature="hidden_states"),
    ("mae_ast_patch", "iemocap"): dict(lr=1e-4, batch=6, accum=5, eval_batch=16, steps=3000, eval_step=150,
                                       feature="last_hidden_state"),
    # "no settings changed"
    ("mae_ast_patch", "esc50"): dict(lr=1e-4, batch=48, head="psla", window="whole clip"),
    ("asit_base", "as20k"): dict(lr=5e-5, batch=12, window="exact", frames=592, stats=AS),
    ("asit_base", "voxceleb1"): dict(lr=1e-4, batch=4, accum=8, window="exact", frames=592),
}


def _printed(capsys, *argv: str) -> dict:
    assert run_downstream.main([*argv, "--print-config"]) == 0
    return yaml.safe_load(capsys.readouterr().out)


# ------------------------------------------------------------------------------------------ the data
def test_protocol_files_load_and_every_value_has_its_source():
    families = {f.family: f for f in protocols.load_protocols()}
    assert set(families) == {"ssast", "mae_ast", "asit"}
    for fam in families.values():
        for (_task, mode), p in fam.protocols.items():
            assert mode == "finetune"  # no paper ran a frozen probe (recipes.md section 0)
            for s in p.settings + tuple(s for v in p.variants for s in v.settings):
                assert len(s.source) > 10, f"{p.name} {s.key} has no real source"
    for task in PSLA_TASKS + SUPERB_TASKS:
        # every paper column of SSAST and MAE-AST has its family's protocol
        assert all((task, "finetune") in families[f].protocols for f in ("ssast", "mae_ast")), task
    assert protocols.protocol_for("tests.plugin_upstream:build", "esc50", True) is None
    assert protocols.protocol_for("ssast_patch_400", "esc50", False) is None


@pytest.mark.parametrize("up,task", sorted(EXPECTED))
def test_resolved_values_per_family_and_task(capsys, up, task):
    want = EXPECTED[(up, task)]
    out = _printed(capsys, "-u", up, "-d", task, "-f")
    fe = out["upstream"]["frontend"]
    assert out["optimizer"]["lr"] == pytest.approx(want["lr"])
    checks = {"window": out["upstream"]["window_mode"], "frames": fe["target_length"],
              "stats": (fe["norm_mean"], fe["norm_std"]), "mean_first": fe["remove_mean_first"],
              "pad_first": fe["pad_then_normalise"], "head": out["head"]["kind"],
              "feature": out["head"]["feature"],
              "batch": out["runner"]["batch_size"], "accum": out["runner"]["gradient_accumulate_steps"],
              "eval_batch": out["runner"]["eval_batch_size"], "steps": out["runner"]["total_steps"],
              "eval_step": out["runner"]["eval_step"]}
    for key, value in want.items():
        if key != "lr":
            assert checks[key] == (pytest.approx(value) if key == "stats" else value), key
    for key in out["provenance"]["settings"]:  # every protocol value printed with its source is in the config
        assert key.split(".")[0] in out


def test_ssast_from_scratch_frame_rows_get_the_frame_lr(capsys):
    out = _printed(capsys, "-u", "ssast_frame_400", "-d", "speech_commands_v1", "-f",
                   "-o", "upstream_overrides.random_init=true")
    assert out["optimizer"]["lr"] == pytest.approx(5e-5)
    assert "run_ks.sh" in out["provenance"]["settings"]["optimizer.lr"]


@pytest.mark.parametrize("up", ["ssast_patch_400", "mae_ast_patch", "asit_base", "ssast_patch_mini"])
@pytest.mark.parametrize("task", PSLA_TASKS + SUPERB_TASKS)
@pytest.mark.parametrize("finetune", [False, True], ids=["frozen", "finetune"])
def test_print_config_needs_no_data_or_checkpoint(capsys, monkeypatch, tmp_path, up, task, finetune):
    monkeypatch.delenv("ASTBENCH_DATA", raising=False)
    monkeypatch.setenv("ASTBENCH_CHECKPOINTS", str(tmp_path))  # empty: no official file anywhere
    out = _printed(capsys, "-u", up, "-d", task, *(["-f"] if finetune else []))
    fe, prov = out["upstream"]["frontend"], out["provenance"]
    assert out["optimizer"]["lr"] > 0 and out["run"]["upstream"] == up and out["protocol"] == "official"
    assert set(fe) >= {"norm_mean", "norm_std", "target_length", "sample_rate"}
    if not finetune:  # frozen probes: the task config alone, s3prl's SSAST expert
        assert prov["settings"] == {} and prov["protocol"].startswith("none")
        if up.startswith("ssast"):
            assert out["upstream"]["window_mode"] == "s3prl" and fe["target_length"] == 100
    elif up.startswith("ssast"):
        assert out["upstream"]["window_mode"] == "utterance" and prov["settings"]


# ------------------------------------------------------------------------------------------ the layering
def test_layers_task_config_then_protocol_then_c_then_o(tmp_path):
    task_only = load_config(DownstreamConfig, protocols.task_config_path("speech_commands_v1", True))
    assert task_only.optimizer.lr == pytest.approx(1e-4) and task_only.runner.batch_size == 32
    mae = protocols.resolve("mae_ast_patch", "speech_commands_v1", True)
    # log_step: task's
    assert (mae.optimizer.lr, mae.runner.batch_size, mae.runner.log_step) == (1e-5, 512, 100)
    assert protocols.resolve("mae_ast_patch", "speech_commands_v1", True, overrides=["optimizer.lr=3e-5"]) \
        .optimizer.lr == pytest.approx(3e-5)
    mine = tmp_path / "mine.yaml"
    mine.write_text("runner:\n  batch_size: 64\n")
    with_c = protocols.resolve("mae_ast_patch", "speech_commands_v1", True, mine)
    # -c takes the task config's place above the protocol: its batch wins, the protocol's lr stays
    assert (with_c.runner.batch_size, with_c.optimizer.lr, with_c.runner.log_step) == (64, 1e-5, 100)
    none = protocols.resolve("mae_ast_patch", "speech_commands_v1", True, overrides=["protocol=none"])
    assert config_to_dict(none) == {**config_to_dict(task_only), "protocol": "none"}
    s3prl = protocols.resolve("ssast_patch_400", "esc50", True, overrides=["protocol=s3prl"])
    assert s3prl.upstream_overrides == {} and s3prl.head.kind == "psla"  # recipe kept, s3prl's upstream
    ssast = protocols.resolve("ssast_patch_400", "esc50", True)
    assert ssast.overrides_for("ssast_patch_400")["norm_mean"] == pytest.approx(ESC[0])


def test_bad_protocol_choice_and_upstream_fail_in_one_line(capsys):
    assert run_downstream.main(["-u", "ssast_patch_400", "-d", "esc50", "-f", "-o", "protocol=ssast",
                                "--print-config"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "protocol must be 'official', 's3prl' or 'none'" in err
    assert run_downstream.main(["-u", "ssast_nope", "-d", "esc50", "--print-config"]) == 2
    assert "unknown upstream 'ssast_nope'" in capsys.readouterr().err


@pytest.mark.parametrize("text,match", [
    ("family: x\nprotocols: {esc50/finetune: {pipeline: p, settings: {optimizer.lr: "
     "{value: 1.0e-4}}}}",
     r"x.yaml: protocols.esc50/finetune.settings.optimizer.lr: missing key\(s\) \['source'\]"),
    ("family: x\nprotocols: {esc50/finetune: {pipeline: p, settings: {optimizer.lrr: "
     "{value: 1, source: somewhere}}}}", r"optimizer.lrr.*'optimizer.lrr'"),
    ("family: x\nprotocols: {esc50/finetune: {pipeline: p, settings: {runner.batch_size: "
     "{value: many, source: somewhere}}}}", r"runner.batch_size.*expects int"),
    ("family: x\nprotocols: {esc5/finetune: {pipeline: p, settings: {}}}",
     r"unknown task 'esc5'"),
    ("family: x\nprotocols: {esc50/finetune: {pipeline: p, settings: {run.seed: "
     "{value: 1, source: s}}}}", r"'run.seed' cannot be set by a protocol"),
    ("family: x\nprotocols: {esc50/tuned: {pipeline: p, settings: {}}}", r"mode in"),
])
def test_bad_protocol_files_are_named_by_file_and_key(tmp_path, text, match):
    (tmp_path / "x.yaml").write_text(text)
    with pytest.raises(ProtocolError, match=match):
        protocols.load_protocols(tmp_path)


def test_every_published_row_of_the_three_families_runs_with_its_protocol():
    opts = SuiteOptions(expdir="/nonexistent/suites")
    seen = set()
    for table in load_tables():
        for job in plan(table, opts):
            cfg, _ = downstream.resolve(downstream_job(job, None, opts, "x"))
            p = protocols.protocol_for(job.run.upstream, job.task, job.mode == "finetune")
            tree = config_to_dict(cfg)
            for s in protocols.applied_settings(p, job.run.upstream, cfg.protocol):
                node = tree
                for part in s.key.split("."):
                    node = node[part]
                assert node == s.value, (f"{table.id} {job.label} {job.task}: {s.key} = {node!r}, "
                                         f"not {s.value!r}")
            seen.add((job.run.upstream.split("_")[0], job.task, p is not None))
    assert ("ssast", "esc50", True) in seen and ("mae", "speech_commands_v1", True) in seen
    assert ("asit", "voxceleb1", True) in seen


def test_published_pretraining_lengths():
    rows = {(t.id, r.label): r for t in load_tables() for r in t.rows}
    asit = rows[("asit_main", "asit_base")].run
    assert asit.pretrain == "configs/pretrain/asit_base_40ep.yaml"
    base = load_config(pretrain.PretrainConfig, REPO / "configs/pretrain/asit_base.yaml")
    paper = load_config(pretrain.PretrainConfig, REPO / asit.pretrain)
    assert paper.max_steps == 40 * 15_625 and base.max_steps == 100 * 15_625
    # nothing else differs
    assert config_to_dict(paper) == {**config_to_dict(base), "max_steps": paper.max_steps}
    steps = {label: r.run.pretrain_overrides for (tid, label), r in rows.items()
             if tid == "ssast_pretrain_data"
             and r.run is not None and r.run.pretrain}
    # 10 epochs of each corpus at 24 clips per step, as the recipe's 950k steps are 10 epochs of AS-2M + LS
    assert steps == {"ssast_patch_400_as20k": ("max_steps=9240",),
                     "ssast_patch_400_as2m": ("max_steps=833333",),
                     "ssast_patch_400_librispeech": ("max_steps=117184",)}


# ---------------------------------------------------------------------------------------- SSAST's own inputs
def test_psla_input_reproduces_the_official_dataloader_and_finetune_model():
    """The PSLA protocol's upstream, from waveforms, against src/dataloader.py + ASTModel(ft_avgtok)."""
    ref = torch.load(fixture_path("official", "ssast_patch_reference.pt"), weights_only=False)
    case = ref["ft_main"]  # input_tdim 128, strides 10, AudioSet statistics
    model = upstream.load("ssast_patch_tiny", ckpt=fixture_path("official", "ssast_tiny_patch_pretrain.pth"),
                          window_mode="utterance", target_length=128, norm_mean=AS[0], norm_std=AS[1],
                          remove_mean_first=True, pad_then_normalise=True).eval()
    assert model.cfg.frontend == FbankConfig.ssast(128)
    waves = list(ref["wave_float32"])
    with torch.no_grad():
        feats, _ = model.frontend(*pad_waveforms(waves))
        out = model(waves)
    assert (feats - case["input"]).abs().max() <= 1e-4  # pad, then normalise: padded rows are 0.46703
    assert (out["clip"] - case["pooled_avgtok"]).abs().max() <= 1e-4
    assert (out["last_hidden_state"] - case["norm_out"]).abs().max() <= 1e-4
    for ours, theirs in zip(out["hidden_states"], case["block_out"], strict=True):
        assert (ours - theirs).abs().max() <= 1e-4
    # the PSLA preset of each task is what its protocol builds
    for task, (dataset, frames) in {"esc50": ("esc50", 512),
                                    "speech_commands_v2": ("speechcommands", 128)}.items():
        ov = protocols.resolve("ssast_patch_400", task, True).overrides_for("ssast_patch_400")
        built = upstream.load("ssast_patch_mini", **ov).cfg.frontend
        assert built == FbankConfig.ssast_psla(dataset, frames)


def test_ssast_superb_upstream_is_the_whole_utterance_with_cls_tokens():
    ov = protocols.resolve("ssast_patch_mini", "speech_commands_v1", True).overrides_for("ssast_patch_mini")
    model = upstream.load("ssast_patch_mini", **ov).eval()
    assert model.cfg.frontend == FbankConfig.ssast_superb(100) and model.get_downsample_rates() == 160
    g = torch.Generator().manual_seed(0)
    waves = [0.1 * torch.randn(16000, generator=g), 0.1 * torch.randn(12000, generator=g)]
    with torch.no_grad():
        out = model(waves)
        x, frames = model.frontend(*pad_waveforms(waves))
        direct = model.forward_fbank(x)
    # 12 x 9 patches (strides 10 over 128 x 100) + cls + dist, every block's raw output, D wide
    T = 2 + 12 * 9
    assert [tuple(h.shape) for h in out["hidden_states"]] == [(2, T, 64)] * 2 and model.hidden_size == 64
    assert torch.equal(out["hidden_states"][1], direct["block_out"][1])
    assert torch.equal(out["last_hidden_state"], direct["norm_out"])
    assert frames.tolist() == [98, 73] and (x[1, 73:] == 0).all()  # normalised, then zero-padded (audio.py)
    # old s3prl tolist: round(len / (max_len / T)); 12000 / (16000 / 110) = 82.5, rounded half to even
    assert out["lengths"].tolist() == [110, round(12000 / (16000 / 110))] == [110, 82]


def test_a_model_pretrained_here_keeps_its_statistics_unless_a_psla_recipe_sets_them(tmp_path):
    own = upstream.load("ssast_patch_mini", norm_mean=-6.5, norm_std=4.0)
    own.save(tmp_path / "up.pt")
    ckpt = str(tmp_path / "up.pt")
    superb = protocols.resolve("ssast_patch_mini", "voxceleb1", True).overrides_for("ssast_patch_mini")
    fe = upstream.load("ssast_patch_mini", ckpt=ckpt, **superb).cfg.frontend
    assert (fe.norm_mean, fe.norm_std, fe.target_length) == (-6.5, 4.0, 1000)
    psla = protocols.resolve("ssast_patch_mini", "esc50", True).overrides_for("ssast_patch_mini")
    fe = upstream.load("ssast_patch_mini", ckpt=ckpt, **psla).cfg.frontend
    assert (fe.norm_mean, fe.norm_std, fe.target_length) == (ESC[0], ESC[1], 512)


def test_bad_window_mode_is_named():
    with pytest.raises(ValueError, match="window_mode must be one of"):
        upstream.load("ssast_patch_mini", window_mode="windows")


# ------------------------------------------------------------------------------------------ pretraining
def test_ssast_warmup_is_a_step_function_and_the_linear_one_stays_an_option():
    step = pretrain.Schedule(pretrain.OptimConfig(lr=1e-4, warmup_steps=1000, warmup="step",
                                                  schedule="constant"), 10_000)
    # traintest_mask.py: at global_step % 50 == 0 (<= 1000) lr = global_step / 1000 * 1e-4, kept in between
    assert [step.lr(s) for s in (0, 49, 50, 99, 100, 999, 1000, 5000)] == pytest.approx(
        [0.0, 0.0, 5e-6, 5e-6, 1e-5, 9.5e-5, 1e-4, 1e-4])
    linear = pretrain.Schedule(pretrain.OptimConfig(lr=1e-4, warmup_steps=1000, schedule="constant"), 10_000)
    assert [linear.lr(s) for s in (0, 49, 999, 1000)] == pytest.approx([1e-7, 5e-6, 1e-4, 1e-4])
    for name in ("ssast_patch_400", "ssast_frame_400", "ssast_patch_100", "ssast_patch_250",
                 "ssast_patch_400_disc", "ssast_patch_400_gen"):
        o = load_config(pretrain.PretrainConfig, REPO / f"configs/pretrain/{name}.yaml").optim
        assert (o.warmup, o.warmup_every, o.warmup_steps, o.clip_grad) == ("step", 50, 1000, None), name
    with pytest.raises(ValueError, match="warmup_every must be > 0"):
        pretrain.OptimConfig(warmup_every=0)


def test_gradient_clipping_per_parameter_and_global_by_hand():
    def params():
        a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
        a.grad, b.grad = torch.tensor([3.0, 4.0]), torch.tensor([0.3, 0.4])  # norms 5 and 0.5
        return a, b

    a, b = params()
    total = pt.clip_gradients([a, b], 3.0, "per_parameter")
    assert total.item() == pytest.approx(math.sqrt(25.25))  # the norm before clipping, as logged
    # DINO: clip/(norm+1e-6)
    assert a.grad.tolist() == pytest.approx([3.0 * 3 / (5 + 1e-6), 4.0 * 3 / (5 + 1e-6)])
    assert b.grad.tolist() == pytest.approx([0.3, 0.4])  # under the threshold: untouched
    a, b = params()
    pt.clip_gradients([a, b], 3.0, "global")
    scale = 3.0 / (math.sqrt(25.25) + 1e-6)
    assert a.grad.tolist() == pytest.approx([3 * scale, 4 * scale]) and b.grad.tolist() == pytest.approx(
        [0.3 * scale, 0.4 * scale])
    asit = load_config(pretrain.PretrainConfig, REPO / "configs/pretrain/asit_base.yaml").optim
    mae = load_config(pretrain.PretrainConfig, REPO / "configs/pretrain/mae_ast_patch.yaml").optim
    assert (asit.clip_grad, asit.clip_mode) == (3.0, "per_parameter") and (mae.clip_grad, mae.clip_mode) == (
        10.0, "global")


def test_train_step_clips_with_the_configured_mode(tmp_path, monkeypatch):
    import numpy as np
    import soundfile as sf

    from tests.test_pretrain import make_cfg  # the fake objective's recipe

    data = tmp_path / "audio"
    data.mkdir()
    for i in range(4):
        sf.write(data / f"c{i}.wav", (0.3 * np.sin(np.arange(16000) * (0.05 + 0.01 * i))).astype(np.float32),
                 16000)
    calls = []
    real = pt.clip_gradients

    def spy(params, max_norm, mode="global"):
        params = list(params)
        norm = real(params, max_norm, mode)
        calls.append((mode, max_norm, max(p.grad.norm().item() for p in params if p.grad is not None)))
        return norm

    monkeypatch.setattr(pt, "clip_gradients", spy)
    cfg = make_cfg(tmp_path / "run", data, "max_steps=2", "optim.clip_grad=1e-3",
                   "optim.clip_mode=per_parameter")
    pt.run(cfg)
    assert [c[:2] for c in calls] == [("per_parameter", 1e-3)] * 2
    assert all(biggest <= 1e-3 * (1 + 1e-5) for _, _, biggest in calls)  # every parameter clipped on its own
