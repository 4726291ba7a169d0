"""The generic fine-tuning recipe (folder / manifest ``-f``): per-group learning rates with an upstream scale
and layer-wise decay, the warm-up + decay schedule, exact resume with parameter groups, the other configs
unchanged, and bad values refused by key."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

import run_downstream
from common.config import ConfigError, load_config
from downstream import engine
from downstream.augment import ScheduleConfig, lr_factor, warmup_decay_factor
from downstream.config import DownstreamConfig, HeadConfig, OptimizerConfig
from downstream.engine import build_optimizer, param_groups, upstream_blocks
from downstream.model import DownstreamModel
from downstream.protocols import CONFIG_DIR
from tests.layouts import BUILDERS
from tests.plugin_upstream import FrameUpstream

CPU = torch.device("cpu")


class TwoBlocks(nn.Module):
    """A 2-block toy upstream: embedding, blocks (a ModuleList of ``num_layers``), final norm."""

    sample_rate, hidden_size, clip_size, num_layers = 16000, 4, 4, 2

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(160, 4)
        self.pos = nn.Parameter(torch.zeros(1, 4))
        self.blocks = nn.ModuleList([nn.Linear(4, 4), nn.Linear(4, 4)])
        self.norm = nn.LayerNorm(4)


def _model(upstream: nn.Module, finetune: bool = True) -> DownstreamModel:
    return DownstreamModel(upstream, 3, HeadConfig(proj_dim=5), finetune=finetune)


def _group_of(optimizer: torch.optim.Optimizer) -> dict[int, dict]:
    return {id(p): g for g in optimizer.param_groups for p in g["params"]}


# ------------------------------------------------------------------------------------------ parameter groups
def test_layer_decay_gives_each_layer_its_hand_computed_lr():
    model = _model(TwoBlocks())
    cfg = OptimizerConfig(lr=1e-3, upstream_lr_scale=0.1, layer_decay=0.5)
    opt = build_optimizer(model, cfg, CPU)
    by_name = {g["name"]: g["lr"] for g in opt.param_groups}
    # L = 2: embeddings 0.5^3, block 0 0.5^2, block 1 0.5^1, final norm 0.5^0, all times 0.1; head at lr
    assert by_name == pytest.approx({"head": 1e-3, "upstream.embeddings": 1.25e-5, "upstream.block0": 2.5e-5,
                                     "upstream.block1": 5e-5, "upstream.top": 1e-4}, rel=1e-12)
    group = _group_of(opt)
    up = model.upstream
    expect = {up.embed.weight: "upstream.embeddings", up.pos: "upstream.embeddings",
              up.blocks[0].bias: "upstream.block0", up.blocks[1].weight: "upstream.block1",
              up.norm.weight: "upstream.top", model.featurizer.weights: "head"}
    assert {group[id(p)]["name"] for p in expect} == set(expect.values())
    assert all(group[id(p)]["name"] == name for p, name in expect.items())
    # every trainable parameter in exactly one group
    assert sorted(map(id, model.parameters())) == sorted(id(p) for g in opt.param_groups for p in g["params"])


def test_registered_upstream_blocks_are_found_and_every_parameter_grouped():
    import upstream

    up = upstream.load("ssast_patch_mini", None)
    assert upstream_blocks(up)[0] == "encoder.blocks"
    model = _model(up)
    groups = param_groups(model, OptimizerConfig(lr=1e-3, upstream_lr_scale=0.1, layer_decay=0.75))
    names = {g["name"]: g for g in groups}
    assert list(names) == ["head", "upstream.embeddings", "upstream.block0", "upstream.block1",
                           "upstream.top"]
    assert names["upstream.block0"]["lr"] == pytest.approx(1e-3 * 0.1 * 0.75 ** 2)
    assert id(up.encoder.pos_embed) in map(id, names["upstream.embeddings"]["params"])
    assert id(up.encoder.norm.weight) in map(id, names["upstream.top"]["params"])
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_upstream_without_blocks_gets_one_group_and_says_so():
    said = []
    model = _model(FrameUpstream())  # a plug-in with no ModuleList
    opt = build_optimizer(model, OptimizerConfig(lr=2e-3, upstream_lr_scale=0.5, layer_decay=0.8), CPU,
                          said.append)
    assert [(g["name"], g["lr"]) for g in opt.param_groups] == [("head", 2e-3), ("upstream", 1e-3)]
    assert "no blocks found" in said[0] and "layer_decay does not apply" in said[0]


def test_defaults_keep_one_group_and_scales_refuse_a_frozen_run():
    model = _model(TwoBlocks())
    opt = build_optimizer(model, OptimizerConfig(), CPU)
    assert len(opt.param_groups) == 1 and "lr_scale" not in opt.param_groups[0]
    assert [id(p) for p in opt.param_groups[0]["params"]] == [id(p) for p in model.parameters()]
    with pytest.raises(ValueError, match="frozen run"):
        build_optimizer(_model(TwoBlocks(), finetune=False), OptimizerConfig(layer_decay=0.75), CPU)


def test_train_steps_scale_every_group_by_the_schedule():
    model = _model(TwoBlocks())
    opt = build_optimizer(model, OptimizerConfig(lr=1e-3, upstream_lr_scale=0.1, layer_decay=0.5), CPU)
    x = [torch.randn(320) for _ in range(4)]
    batches = iter([(x, torch.tensor([0, 1, 2, 0]), None)] * 3)

    def forward(wavs):  # the toy upstream has no forward: hidden states from its layers directly
        h = model.upstream.embed(torch.stack(wavs).view(4, 2, 160)) + model.upstream.pos
        hs = [model.upstream.blocks[0](h)]
        hs.append(model.upstream.norm(model.upstream.blocks[1](hs[0])))
        return model.head(model.featurizer(hs), torch.tensor([2, 2, 2, 2]))

    net = nn.Module()
    net.forward = forward
    net.parameters = model.parameters
    seen = []
    engine.train_steps(net, batches, opt, nn.functional.cross_entropy, 3,
                       load_config(DownstreamConfig).runner, CPU, first_step=5,
                       lr_at=lambda s: 1e-3 * (s + 1) / 10,
                       on_step=lambda *a: seen.append({g["name"]: g["lr"] for g in opt.param_groups}))
    assert seen[-1] == pytest.approx({"head": 8e-4, "upstream.embeddings": 8e-4 * 0.0125,
                                      "upstream.block0": 8e-4 * 0.025, "upstream.block1": 8e-4 * 0.05,
                                      "upstream.top": 8e-4 * 0.1}, rel=1e-12)
    assert seen[0]["head"] == pytest.approx(6e-4)


# ------------------------------------------------------------------------------------------ schedule
def test_warmup_then_cosine_or_linear_decay_at_hand_picked_steps():
    # 100 steps, 10 % warm-up: W = 10 updates at (step + 1) / 10, then p = (step - 10) / 90
    assert [warmup_decay_factor(s, 100, 0.1, "cosine") for s in (0, 4, 9, 10)] == \
        pytest.approx([0.1, 0.5, 1.0, 1.0])
    assert warmup_decay_factor(55, 100, 0.1, "cosine") == pytest.approx(0.5)  # p = 1/2: cos = 0
    assert warmup_decay_factor(40, 100, 0.1, "cosine") == pytest.approx(0.75)  # p = 1/3: (1 + 1/2) / 2
    assert warmup_decay_factor(99, 100, 0.1, "cosine") == pytest.approx((1 + math.cos(math.pi * 89 / 90)) / 2)
    assert [warmup_decay_factor(s, 100, 0.1, "linear") for s in (10, 55, 99)] == \
        pytest.approx([1.0, 0.5, 1 / 90])
    assert [warmup_decay_factor(s, 100, 0.1, "constant") for s in (0, 9, 10, 99)] == \
        pytest.approx([0.1, 1.0, 1.0, 1.0])
    assert warmup_decay_factor(0, 100, 0.0, "linear") == 1.0  # no warm-up: the first update at the full lr
    cfg = ScheduleConfig(warmup_fraction=0.25, decay="linear")
    # W = 2: steps 0, 1 at 1/2, 1; then p = (step - 2) / 6
    assert [lr_factor(s, 7, cfg, total_steps=8) for s in (0, 1, 2, 4, 5)] == \
        pytest.approx([0.5, 1.0, 1.0, 2 / 3, 0.5])
    with pytest.raises(ValueError, match="total_steps"):
        lr_factor(5, 7, cfg)


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_other_configs_keep_one_lr_and_their_schedule(path):
    """Every shipped config but the generic fine-tuning ones trains as before: no scales, and the old
    schedule (SSAST's, or a constant lr) whatever the total."""
    cfg = load_config(DownstreamConfig, path)
    if path.stem in ("folder_finetune", "manifest_finetune"):
        assert cfg.optimizer.scaled and cfg.schedule.warmup_decay
        return
    assert not cfg.optimizer.scaled and not cfg.schedule.warmup_decay
    steps = range(0, cfg.runner.total_steps, max(1, cfg.runner.total_steps // 97))
    assert [lr_factor(s, cfg.runner.eval_step, cfg.schedule, cfg.runner.total_steps) for s in steps] == \
        [lr_factor(s, cfg.runner.eval_step, cfg.schedule) for s in steps]


# ------------------------------------------------------------------------------------------ bad values
@pytest.mark.parametrize("override,key", [
    ("optimizer.upstream_lr_scale=0", "upstream_lr_scale"),
    ("optimizer.upstream_lr_scale=inf", "upstream_lr_scale"),
    ("optimizer.layer_decay=0", "layer_decay"), ("optimizer.layer_decay=1.5", "layer_decay"),
    ("schedule.warmup_fraction=1.0", "schedule.warmup_fraction"),
    ("schedule.warmup_fraction=-0.1", "schedule.warmup_fraction"),
    ("schedule.decay=exponential", "schedule.decay"),
    ("schedule.warmup_steps=1000", "exclude each other"),
])
def test_bad_values_are_refused_in_one_line_naming_the_key(override, key):
    with pytest.raises(ConfigError) as err:
        load_config(DownstreamConfig, CONFIG_DIR / "folder_finetune.yaml", [override])
    assert key in str(err.value) and "\n" not in str(err.value)


def test_cli_refuses_a_bad_value_with_exit_2(tmp_path, capsys):
    root = BUILDERS["folder"](tmp_path / "data")["root"]
    rc = run_downstream.main(["-u", "ssast_patch_mini", "-d", "folder", "-f", "--data-root", str(root),
                              "--expdir", str(tmp_path / "exp"), "-o", "optimizer.layer_decay=2"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "layer_decay" in err[0]


# ------------------------------------------------------------------------------------------ a whole run
def _args(tmp_path: Path, root: Path, name: str, *extra: str) -> list[str]:
    return ["-u", "ssast_patch_mini", "-d", "folder", "-f", "--data-root", str(root), "--expdir",
            str(tmp_path / "exp"), "--results", str(tmp_path / f"{name}.jsonl"), "-n", name,
            "--device", "cpu",
            "-o", "runner.batch_size=4", "-o", "runner.eval_batch_size=8", "-o", "runner.total_steps=6",
            "-o", "runner.eval_step=3", "-o", "runner.log_step=1", *extra]


def test_default_recipe_runs_with_its_groups_and_resumes_exactly(tmp_path, monkeypatch, capsys):
    """folder_finetune.yaml on generated tones: the optimizer in last.ckpt has the recipe's groups at the
    hand-computed lr of the last step, and a run stopped after its first evaluation and resumed ends with the
    same weights and optimizer state (the schedule is over the same total)."""
    root = BUILDERS["folder"](tmp_path / "data")["root"]
    assert run_downstream.main(_args(tmp_path, root, "straight")) == 0
    assert "optimizer: lr x head 1, upstream.embeddings" in capsys.readouterr().out
    cfg = load_config(DownstreamConfig, CONFIG_DIR / "folder_finetune.yaml")
    lr, scale, decay = cfg.optimizer.lr, cfg.optimizer.upstream_lr_scale, cfg.optimizer.layer_decay
    straight = torch.load(tmp_path / "exp/straight/last.ckpt", weights_only=False)
    factor = warmup_decay_factor(5, 6, cfg.schedule.warmup_fraction, cfg.schedule.decay)  # the 6th update
    groups = {g["name"]: g["lr"] for g in straight["optimizer"]["param_groups"]}
    assert groups == pytest.approx({"head": lr * factor,
                                    "upstream.embeddings": lr * factor * scale * decay ** 3,
                                    "upstream.block0": lr * factor * scale * decay ** 2,
                                    "upstream.block1": lr * factor * scale * decay,
                                    "upstream.top": lr * factor * scale}, rel=1e-9)

    save = engine._Trainer.evaluate_and_save

    def stop_after_first(self, *args, **kwargs):
        save(self, *args, **kwargs)
        if self.step == 3:
            raise KeyboardInterrupt  # as a user's Ctrl-C after last.ckpt is written

    monkeypatch.setattr(engine._Trainer, "evaluate_and_save", stop_after_first)
    with pytest.raises(KeyboardInterrupt):
        run_downstream.main(_args(tmp_path, root, "split"))
    monkeypatch.setattr(engine._Trainer, "evaluate_and_save", save)
    assert run_downstream.main(_args(tmp_path, root, "split", "--resume")) == 0
    split = torch.load(tmp_path / "exp/split/last.ckpt", weights_only=False)
    evals = [[json.loads(line)["train_loss"] for line in open(tmp_path / "exp" / n / "evals.jsonl")]
             for n in ("straight", "split")]
    assert evals[0] == evals[1] and len(evals[0]) == 2
    assert all(torch.equal(straight["model"][k], split["model"][k]) for k in straight["model"])
    a, b = straight["optimizer"], split["optimizer"]
    assert [{k: v for k, v in g.items()} for g in a["param_groups"]] == b["param_groups"]
    assert a["state"].keys() == b["state"].keys()
    for i in a["state"]:
        assert all(torch.equal(a["state"][i][k], b["state"][i][k]) for k in a["state"][i])
