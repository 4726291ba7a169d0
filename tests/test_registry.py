"""The family registry: one FamilySpec per family, one name for the input length, a family in one module."""
from __future__ import annotations

import re
from dataclasses import dataclass, replace

import pytest
import torch
import yaml

import upstream
from common.resources import shipped_path
from upstream import download, registry
from upstream.checkpoint import CheckpointError, RawCheckpoint, read_checkpoint
from upstream.config import UpstreamConfig
from upstream.encoder import ASTEncoder, EncoderConfig
from upstream.frontend import FbankConfig
from upstream.interface import upstream_with_weights
from upstream.objective import Objective


# ------------------------------------------------------------------------------------- the three families
def test_every_registered_upstream_belongs_to_its_family():
    assert [f.name for f in upstream.families()] == ["asit", "mae_ast", "ssast"]
    members = [n for f in upstream.families() for n in f.upstreams()]
    assert sorted(members) == upstream.list_upstreams()  # no upstream of this package is without a family
    for name in members:
        family = upstream.family_of(name)
        assert name.startswith(family.name + "_") and family is upstream.get_family(family.name)
        assert family.module == f"upstream.{family.name}" and family.source_file.name == f"{family.name}.py"
    assert upstream.family_of("tests.plugin_upstream:build") is None  # plug-ins and s3prl have no family
    assert upstream.family_of("s3prl:hubert") is None and upstream.family_of("ssast_patch_999") is None
    with pytest.raises(ValueError, match="unknown family 'byol'; families: asit, mae_ast, ssast"):
        upstream.get_family("byol")


@pytest.mark.parametrize("family", ["ssast", "mae_ast", "asit"])
def test_each_spec_s_recipes_protocols_and_objective_agree(family):
    """Every shortcut's recipes parse into the family's objective config, name the family, and pretrain an
    encoder that loads as the shortcut's mini upstream; the protocol file is the family's."""
    spec = upstream.get_family(family)
    assert spec.objective.family == family and spec.shortcuts
    protocols = yaml.safe_load(shipped_path(spec.protocol_file, prefer_shipped=True).read_text())
    assert protocols["family"] == family
    for shortcut in spec.shortcuts:
        assert shortcut.objective["family"] == family and upstream.family_of(shortcut.mini_upstream) is spec
        for recipe in (shortcut.recipe, shortcut.mini_recipe):
            objective = yaml.safe_load(shipped_path(recipe, prefer_shipped=True).read_text())["objective"]
            assert {k: objective.get(k, v) for k, v in shortcut.objective.items()} == dict(shortcut.objective)
            cfg = spec.parse_objective(objective)
            assert isinstance(cfg, spec.objective_config)
            prefix = spec.upstream_prefix(cfg)
            assert any(n.startswith(prefix) for n in spec.upstreams()), (recipe, prefix)
        mini = spec.parse_objective(yaml.safe_load(shipped_path(shortcut.mini_recipe,
                                                                prefer_shipped=True).read_text())["objective"])
        assert shortcut.mini_upstream.startswith(spec.upstream_prefix(mini))
    assert registry.pretrain_shortcuts()[spec.shortcuts[0].name] is spec.shortcuts[0]


# ------------------------------------------------------------------------------------- one input-length name
@pytest.mark.parametrize("name,old,value,hint", [
    ("ssast_patch_mini", "window_secs", 2.0, "(fbank frames, 100 per second): give target_length=200"),
    ("ssast_patch_mini", "input_tdim", 200, "(fbank frames per model input)"),
    ("asit_mini", "num_frames", 192, "(fbank frames per model input)"),
])
def test_old_length_overrides_are_refused_naming_target_length(name, old, value, hint):
    with pytest.raises(ValueError) as err:
        upstream.load(name, **{old: value})
    assert str(err.value) == f"upstream '{name}': override '{old}' is now target_length {hint}"


@pytest.mark.parametrize("family,old", [("ssast", "input_tdim"), ("asit", "num_frames")])
def test_old_length_objective_keys_are_refused_naming_target_length(family, old):
    with pytest.raises(ValueError, match=f"{family} objective key '{old}' is now target_length"):
        upstream.get_family(family).parse_objective({"family": family, old: 128})
    parsed = upstream.get_family(family).parse_objective({"family": family, "target_length": 128})
    assert parsed.target_length == 128


@pytest.mark.parametrize("name,frames", [("ssast_patch_mini", 200), ("ssast_patch_mini", 100),
                                         ("asit_mini", 192), ("asit_mini", 592)])
def test_target_length_sets_window_front_end_and_position_table(name, frames):
    cfg = upstream.load(name, target_length=frames).cfg
    assert cfg.window_frames == cfg.frontend.target_length == cfg.encoder.input_tdim == frames
    with pytest.raises(AttributeError):  # derived from the front end: nothing to keep in step
        cfg.window_frames = 7


def test_asit_checkpoint_fixes_its_length(tmp_path):
    path = tmp_path / "asit.pt"
    upstream.load("asit_mini", target_length=96).save(path)
    assert upstream.load("asit_mini", ckpt=path).cfg.window_frames == 96
    assert upstream.load("asit_mini", ckpt=path, target_length=96).cfg.window_frames == 96
    with pytest.raises(ValueError, match="target_length=192, but .* was trained on 96-frame inputs"):
        upstream.load("asit_mini", ckpt=path, target_length=192)


def test_format_1_checkpoints_with_window_frames_still_load(tmp_path):
    """A checkpoint written before the one name (format 1) stored window_frames too: read, checked,
    dropped."""
    model = upstream.load("ssast_patch_mini", target_length=120).eval()
    model.save(tmp_path / "v2.pt")
    payload = torch.load(tmp_path / "v2.pt", weights_only=True)
    assert payload["version"] == 2 and "window_frames" not in payload["upstream_config"]
    old = {**payload, "version": 1, "upstream_config": {**payload["upstream_config"], "window_frames": 120}}
    torch.save(old, tmp_path / "v1.pt")
    again = upstream.load("ssast_patch_mini", ckpt=tmp_path / "v1.pt").eval()
    wav = [0.1 * torch.randn(16000, generator=torch.Generator().manual_seed(0))]
    with torch.no_grad():
        torch.testing.assert_close(again(wav)["hidden_states"][-1], model(wav)["hidden_states"][-1])
    old["upstream_config"]["window_frames"] = 100
    torch.save(old, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="window_frames=100 disagrees with frontend.target_length=120"):
        read_checkpoint(tmp_path / "bad.pt")


# ------------------------------------------------------------------------------------------ a new family
# The README's worked example, registered for one test only: everything below would be upstream/toy.py.
@dataclass
class ToyPretrainConfig:
    target_length: int = 96
    width: int = 32


class ToyObjective(Objective):
    family = "toy"

    def __init__(self, cfg: ToyPretrainConfig):
        super().__init__()
        self.cfg, self.frontend, self.crop_secs = cfg, FbankConfig.asit(cfg.target_length), 1.0
        self.encoder = ASTEncoder(toy_encoder(cfg.width, cfg.target_length))

    def forward(self, fbank, num_frames, generator=None):
        loss = self.encoder.forward_features(fbank).pow(2).mean()
        return loss, {"energy": loss.detach()}

    def upstream_config(self) -> UpstreamConfig:
        return UpstreamConfig("toy", self.encoder.cfg, self.frontend, window_mode="exact")


def toy_encoder(width: int, target_length: int) -> EncoderConfig:
    return EncoderConfig(embed_dim=width, depth=1, num_heads=2, fshape=16, tshape=16, fstride=16, tstride=16,
                         input_tdim=target_length, token_order="time_major", num_prefix_tokens=1,
                         pos_embed="learned")


def read_toy(obj: dict, path, sha: str, *, num_heads: int | None = None) -> RawCheckpoint:
    """The toy's official format: ``{"toy_state": ASTEncoder state, "toy_width": D, "toy_length": T}``."""
    return RawCheckpoint("toy", "official", str(path), sha, toy_encoder(obj["toy_width"], obj["toy_length"]),
                         obj["toy_state"])


def build_toy(ckpt=None, **overrides):
    registry.check_overrides("toy_mini", overrides, {"target_length"})
    raw = read_checkpoint(ckpt) if ckpt is not None else None
    enc = raw.encoder if raw is not None else toy_encoder(32, overrides.get("target_length", 96))
    cfg = UpstreamConfig("toy", enc, FbankConfig.asit(enc.input_tdim), window_mode="exact")
    return upstream_with_weights(cfg, "toy_mini", raw)


def test_a_new_family_is_one_spec(monkeypatch, tmp_path):
    """Registering one FamilySpec (and its upstreams) is all it takes: checkpoint detection, the download
    table, the pretraining shortcuts, family_of and the objective builder find it; no other module changes."""
    for table in ("_FAMILIES", "_REGISTRY", "_DESCRIPTIONS", "_UPSTREAM_FAMILY"):  # undone after the test
        monkeypatch.setattr(registry, table, dict(getattr(registry, table)))
    registry.register_upstream("toy_mini", "a toy family's test-size model", family="toy")(build_toy)
    spec = registry.register_family(registry.FamilySpec(
        name="toy", title="Toy", module=__name__, objective=ToyObjective, objective_config=ToyPretrainConfig,
        frontend=FbankConfig.asit, overrides=frozenset({"target_length"}), checkpoint_format="toy .pt",
        detect_checkpoint=lambda obj: "toy_state" in obj, read_checkpoint=read_toy,
        shortcuts=(registry.PretrainShortcut("toy", {"family": "toy"}, "configs/pretrain/toy.yaml",
                                             "configs/pretrain/toy_mini.yaml", "toy_mini"),),
        upstream_prefix=lambda cfg: "toy_mini",
        releases=(download.OfficialCheckpoint("toy_mini", "toy.pt", ("https://example.org/toy.pt",),
                                              "tests"),),
    ))
    assert upstream.get_family("toy") is spec and upstream.family_of("toy_mini") is spec
    assert spec.upstreams() == ["toy_mini"] and registry.pretrain_shortcuts()["toy"] is spec.shortcuts[0]
    assert download.released()[-1].file == "toy.pt"
    assert "download toy_mini" in download.download_hint("toy.pt")

    objective = spec.build_objective({"family": "toy", "target_length": 64})
    loss, logs = objective(torch.randn(2, 64, 128), None)
    assert loss.ndim == 0 and set(logs) == {"energy"}
    official = tmp_path / "toy.pt"  # a file in the toy's own format: detected and read by its reader
    torch.save({"toy_state": objective.encoder.state_dict(), "toy_width": 32, "toy_length": 64}, official)
    assert read_checkpoint(official).family == "toy"
    model = upstream.load("toy_mini", ckpt=official).eval()
    assert model.cfg.window_frames == 64 and model.num_layers == 1
    model.save(tmp_path / "own.pt")  # this project's format carries family 'toy' and loads back the same
    wav = [0.1 * torch.randn(32000, generator=torch.Generator().manual_seed(0))]
    with torch.no_grad():
        again = upstream.load("toy_mini", ckpt=tmp_path / "own.pt")
        torch.testing.assert_close(again(wav)["clip"], model(wav)["clip"])
    with pytest.raises(ValueError, match="override 'num_frames' is now target_length"):
        upstream.load("toy_mini", num_frames=64)
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    formats = "(ASiT checkpoint.pth, MAE-AST fairseq .pt, SSAST .pth, toy .pt or astbench)"
    with pytest.raises(CheckpointError, match=re.escape(formats)):
        read_checkpoint(tmp_path / "other.pt")


def test_a_file_two_families_claim_is_refused(monkeypatch, tmp_path):
    monkeypatch.setattr(registry, "_FAMILIES", dict(registry._FAMILIES))
    greedy = replace(upstream.get_family("ssast"), name="greedy", detect_checkpoint=lambda obj: True)
    registry.register_family(greedy)
    torch.save({"teacher": {}, "student": {}}, tmp_path / "asit_like.pth")
    with pytest.raises(CheckpointError, match=r"the formats of several families: \['asit', 'greedy'\]"):
        read_checkpoint(tmp_path / "asit_like.pth")
