"""No file runs code unless the user opts in: every entry point that reads a checkpoint, against a malicious
pickle; every real format still loads without the opt-in; MAE-AST's stored sinusoid is used as stored."""
from __future__ import annotations

import dataclasses
import math
import os
import shutil
import sys
import types
import typing
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import fixture_path

import run_downstream
import run_pretrain
import upstream
from benchmark import pretrain_runs
from downstream import engine
from tests.layouts import BUILDERS
from upstream.checkpoint import CheckpointError, read_checkpoint
from upstream.safe_load import TrustedCheckpointWarning, load_checkpoint_file

SYSTEM = f"{os.system.__module__}.system"  # how a pickle names os.system: posix.system (nt.system on Windows)
TINY = ["-o", "runner.total_steps=2", "-o", "runner.eval_step=1", "-o", "runner.batch_size=4",
        "-o", "runner.eval_batch_size=8"]


class Evil:
    """Unpickling this runs ``touch marker`` through os.system, as a hostile checkpoint would run anything."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch '{self.marker}'",)


def evil_file(path: Path, payload: dict | None = None, legacy: bool = False, key: str = "step") -> Path:
    """A checkpoint-shaped dict with the hostile object inside (under ``key``), as a tampered file would
    be."""
    path.parent.mkdir(parents=True, exist_ok=True)
    obj = dict(payload or {"module.v.cls_token": torch.zeros(1)})
    obj[key] = Evil(path.parent / "marker")
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    return path


def assert_refused(message: str, path: Path) -> None:
    assert not (path.parent / "marker").exists(), "the hostile pickle ran"
    assert SYSTEM in message and str(path) in message and "--trust-checkpoint" in message, message


@pytest.fixture(autouse=True)
def _no_trusted_fallback():
    """Outside the opt-in tests, any full unpickling is a failure."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", TrustedCheckpointWarning)
        yield


# ------------------------------------------------------------------------------------------ the loader
@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_loader_refuses_a_hostile_pickle_naming_the_global(tmp_path, legacy):
    path = evil_file(tmp_path / "x.pt", legacy=legacy)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint_file(path)
    assert_refused(str(err.value), path)
    assert "\n" not in str(err.value)


def test_opt_in_unpickles_in_full_and_warns(tmp_path):
    path = evil_file(tmp_path / "x.pt")
    with pytest.warns(TrustedCheckpointWarning, match=SYSTEM):
        obj = load_checkpoint_file(path, trust_checkpoint=True)
    assert (tmp_path / "marker").exists() and obj["step"] == 0  # it really ran: the opt-in is what it says
    plain = tmp_path / "plain.pt"
    torch.save({"w": torch.ones(2)}, plain)
    with warnings.catch_warnings():  # a file that needs nothing more is loaded safely, opt-in or not
        warnings.simplefilter("error")
        assert torch.equal(load_checkpoint_file(plain, trust_checkpoint=True)["w"], torch.ones(2))


def test_unreadable_files_are_one_line_errors(tmp_path):
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "text.pt").write_text("hello")
    for name in ("empty.pt", "text.pt"):
        with pytest.raises(CheckpointError, match=rf"{name} could not be read by torch.load"):
            load_checkpoint_file(tmp_path / name)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint_file(tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match="is not a file"):
        load_checkpoint_file(tmp_path)


# ------------------------------------------------------------------------------------------ entry points
def test_upstream_load_with_ckpt(tmp_path):
    path = evil_file(tmp_path / "SSAST-Base-Patch-400.pth")
    with pytest.raises(CheckpointError) as err:
        upstream.load("ssast_patch_400", ckpt=path)
    assert_refused(str(err.value), path)
    with pytest.warns(TrustedCheckpointWarning):  # the opt-in reaches the read inside the family's builder
        with pytest.raises(CheckpointError, match="not a recognised format|lacks"):
            upstream.load("ssast_patch_400", ckpt=path, trust_checkpoint=True)
    assert (tmp_path / "marker").exists()


def test_official_name_in_checkpoint_dir(tmp_path, monkeypatch):
    path = evil_file(tmp_path / "ckpts" / "SSAST-Base-Patch-400.pth")
    monkeypatch.setenv("ASTBENCH_CHECKPOINTS", str(path.parent))
    with pytest.raises(CheckpointError) as err:
        upstream.load("ssast_patch_400")
    assert_refused(str(err.value), path)


def _cli_error(main, argv: list[str], capsys) -> str:
    """What a CLI said about a refused file: its one-line error (exit 2), or the error it raised."""
    try:
        code = main(argv)
    except CheckpointError as err:
        return str(err)
    assert code == 2
    return capsys.readouterr().err


def test_run_downstream_ckpt(tmp_path, capsys):
    data = BUILDERS["folder"](tmp_path / "data")["root"]
    path = evil_file(tmp_path / "dl" / "model.pth")
    argv = ["-u", "ssast_patch_400", "-d", "folder", "--data-root", str(data), "--ckpt", str(path),
            "--expdir", str(tmp_path / "exp"), "--results", str(tmp_path / "r.jsonl"), *TINY]
    assert_refused(_cli_error(run_downstream.main, argv, capsys), path)
    with pytest.warns(TrustedCheckpointWarning):  # the flag reaches the read (the file then is no format)
        assert "lacks 5 expected key(s)" in _cli_error(run_downstream.main, [*argv, "--trust-checkpoint"],
                                                       capsys)
    assert (path.parent / "marker").exists()


@pytest.fixture(scope="module")
def downstream_run(tmp_path_factory) -> tuple[Path, list[str]]:
    """A real tiny frozen run: its folder (dev-best.ckpt, last.ckpt, config.yaml) and its arguments."""
    root = tmp_path_factory.mktemp("downstream")
    data = BUILDERS["folder"](root / "data")["root"]
    argv = ["-u", "ssast_patch_mini", "-d", "folder", "--data-root", str(data), "--expdir", str(root / "exp"),
            "-n", "run", "--results", str(root / "r.jsonl"), "--cache-dir", str(root / "cache"), *TINY]
    assert run_downstream.main(argv) == 0
    return root / "exp" / "run", argv


def test_real_downstream_checkpoints_load_without_opt_in(downstream_run, tmp_path):
    expdir, argv = downstream_run
    best = load_checkpoint_file(expdir / "dev-best.ckpt")
    last = load_checkpoint_file(expdir / "last.ckpt")  # numpy's RNG state inside
    assert best["step"] >= 1 and last["step"] == 2
    assert isinstance(last["rng"][0]["numpy"][1], np.ndarray)
    assert last["rng"][0]["numpy"][1].dtype == np.uint32
    results = str(tmp_path / "again.jsonl")
    assert run_downstream.main(["-m", "evaluate", "-e", str(expdir), "--results", results]) == 0
    resumed = [a if a != "runner.total_steps=2" else "runner.total_steps=3" for a in argv]
    assert run_downstream.main([*resumed, "--resume"]) == 0
    assert load_checkpoint_file(expdir / "last.ckpt")["step"] == 3


@pytest.mark.parametrize("name", ["dev-best.ckpt", "last.ckpt"])
def test_downstream_evaluate_and_resume_refuse_hostile_run_files(downstream_run, tmp_path, capsys, name):
    expdir, argv = downstream_run
    copy = tmp_path / "exp" / "run"
    shutil.copytree(expdir, copy)
    path = evil_file(copy / name)
    if name == "dev-best.ckpt":  # -m evaluate -e DIR
        args = ["-m", "evaluate", "-e", str(copy), "--results", str(tmp_path / "r.jsonl")]
    else:  # --resume
        args = [a if a != str(expdir.parent) else str(copy.parent) for a in argv] + ["--resume"]
    assert_refused(_cli_error(run_downstream.main, args, capsys), path)


def test_runner_load_for_eval_refuses(tmp_path):
    path = evil_file(tmp_path / "dev-best.ckpt")
    with pytest.raises(CheckpointError) as err:
        engine.load_for_eval(torch.nn.Linear(1, 1), path, torch.device("cpu"))
    assert_refused(str(err.value), path)


@pytest.fixture(scope="module")
def pretrain_run(tmp_path_factory) -> tuple[Path, list[str]]:
    """A real tiny SSAST pretraining run stopped after 1 of 2 steps: its folder and arguments."""
    root = tmp_path_factory.mktemp("pretrain")
    rng = np.random.default_rng(0)
    for i in range(4):
        sf.write(root / f"clip{i}.wav", (0.1 * rng.standard_normal(32000)).astype(np.float32), 16000)
    recipe = Path(__file__).resolve().parents[1] / "configs" / "pretrain" / "ssast_patch_mini.yaml"
    argv = ["-u", "ssast_patch", "-c", str(recipe), "--data", str(root), "-n", "run",
            "--expdir", str(root / "exp"), "--device", "cpu", "-o", "max_steps=2", "-o", "batch_size=2"]
    assert run_pretrain.main([*argv, "--stop-at-step", "1"]) == 0
    return root / "exp" / "run", argv


def test_pretrain_resume_and_sweep_read_real_last_ckpt(pretrain_run, tmp_path):
    out, argv = pretrain_run
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    assert pretrain_runs.pretrain_finished(copy) is False  # the sweep's read: step 1 of 2
    ckpt = load_checkpoint_file(copy / "last.ckpt")
    assert ckpt["step"] == 1 and isinstance(ckpt["rng"]["numpy"][1], np.ndarray)
    resumed = [a if a != str(out.parent) else str(tmp_path) for a in argv]
    assert run_pretrain.main([*resumed, "--resume"]) == 0
    assert pretrain_runs.pretrain_finished(copy) is True
    assert read_checkpoint(copy / "upstream.pt").family == "ssast"  # own upstream.pt


def test_pretrain_resume_and_sweep_refuse_hostile_last_ckpt(pretrain_run, tmp_path, capsys):
    out, argv = pretrain_run
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    path = evil_file(copy / "last.ckpt", payload=torch.load(out / "last.ckpt", weights_only=False),
                     key="evil")
    resumed = [a if a != str(out.parent) else str(tmp_path) for a in argv]
    assert_refused(_cli_error(run_pretrain.main, [*resumed, "--resume"], capsys), path)
    with pytest.raises(CheckpointError) as err:
        pretrain_runs.pretrain_finished(copy)
    assert_refused(str(err.value), path)
    with pytest.warns(TrustedCheckpointWarning):  # the flag reaches the read: the run resumes, the code ran
        assert run_pretrain.main([*resumed, "--resume", "--trust-checkpoint"]) == 0
    assert (path.parent / "marker").exists()


# ------------------------------------------------------------------------------------------ real formats
def test_official_fixture_formats_load_without_opt_in():
    assert read_checkpoint(fixture_path("official", "ssast_tiny_patch_pretrain.pth")).family == "ssast"
    assert read_checkpoint(fixture_path("official", "maeast_tiny_patch.pt")).family == "mae_ast"
    # args: a Namespace
    raw = read_checkpoint(fixture_path("official", "asit_tiny_checkpoint.pth"), num_heads=4)
    assert raw.family == "asit" and raw.extra["data_mean"] is not None


# fairseq before ~2022 pickled its omegaconf DictConfig as is. omegaconf is not installed here, so the test
# defines classes under omegaconf's module names with the fields omegaconf 2.x pickles, writes the file,
# and removes them again: the file then names omegaconf's globals exactly as a real one does.
@dataclasses.dataclass
class _Metadata:
    ref_type: typing.Any = typing.Any
    object_type: typing.Any = None
    optional: bool = True
    key: typing.Any = None
    flags: dict = dataclasses.field(default_factory=dict)
    flags_root: bool = False
    resolver_cache: dict = dataclasses.field(default_factory=lambda: defaultdict(dict))


@dataclasses.dataclass
class _ContainerMetadata(_Metadata):
    key_type: typing.Any = typing.Any
    element_type: typing.Any = typing.Any


class _Node:
    def __init__(self, metadata, parent, **state):
        self.__dict__.update(_metadata=metadata, _parent=parent, **state)


class _DictConfig(_Node): ...


class _ListConfig(_Node): ...


class _AnyNode(_Node): ...


FAKE_OMEGACONF = {"omegaconf.base": {"Metadata": _Metadata, "ContainerMetadata": _ContainerMetadata},
                  "omegaconf.dictconfig": {"DictConfig": _DictConfig},
                  "omegaconf.listconfig": {"ListConfig": _ListConfig},
                  "omegaconf.nodes": {"AnyNode": _AnyNode}}
for _module, _names in FAKE_OMEGACONF.items():  # pickle names a class by its __module__ and __qualname__
    for _name, _cls in _names.items():
        _cls.__module__, _cls.__qualname__ = _module, _name
# what torch.serialization.get_unsafe_globals_in_checkpoint lists for a file written with omegaconf 2.1.1
REAL_OMEGACONF_GLOBALS = ["builtins.dict", "builtins.int", "builtins.list", "collections.defaultdict",
                          "omegaconf.base.ContainerMetadata", "omegaconf.base.Metadata",
                          "omegaconf.dictconfig.DictConfig", "omegaconf.listconfig.ListConfig",
                          "omegaconf.nodes.AnyNode", "typing.Any"]


def _to_omegaconf(value, key=None, parent=None):
    if isinstance(value, dict):
        node = _DictConfig(_ContainerMetadata(object_type=dict if parent is None else None, key=key), parent)
        node._content = {k: _to_omegaconf(v, k, node) for k, v in value.items()}
        return node
    if isinstance(value, list):
        node = _ListConfig(_ContainerMetadata(object_type=list, key=key, key_type=int), parent)
        node._content = [_to_omegaconf(v, i, node) for i, v in enumerate(value)]
        return node
    return _AnyNode(_Metadata(key=key), parent, _val=value, _flags_cache=None)


@pytest.fixture
def omegaconf_mae_ast(tmp_path, monkeypatch) -> Path:
    obj = torch.load(fixture_path("official", "maeast_tiny_patch.pt"), weights_only=True)
    cfg = {**obj["cfg"], "optimization": {"lr": [0.0001], "update_freq": [1], "max_update": 400000}}
    fakes = [types.ModuleType("omegaconf")]  # the package, imported before its modules
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "omegaconf", fakes[0])
        for module, names in FAKE_OMEGACONF.items():
            fakes.append(types.ModuleType(module))
            for name, cls in names.items():
                setattr(fakes[-1], name, cls)
            m.setitem(sys.modules, module, fakes[-1])
        obj["cfg"] = _to_omegaconf(cfg)
        torch.save(obj, tmp_path / "omegaconf_mae_ast.pt")
    assert not any(mod in fakes for mod in sys.modules.values())  # the loader has nothing to import them from
    return tmp_path / "omegaconf_mae_ast.pt"


def test_mae_ast_with_omegaconf_cfg_loads_without_omegaconf(omegaconf_mae_ast):
    unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(omegaconf_mae_ast)
    assert sorted(unsafe) == REAL_OMEGACONF_GLOBALS
    raw = read_checkpoint(omegaconf_mae_ast)
    plain = read_checkpoint(fixture_path("official", "maeast_tiny_patch.pt"))
    assert raw.extra["cfg_model"] == plain.extra["cfg_model"]
    assert raw.extra["cfg_task"] == plain.extra["cfg_task"]
    assert raw.encoder == plain.encoder
    wav = [torch.randn(16000, generator=torch.Generator().manual_seed(0)) * 0.1]
    with torch.no_grad():
        a = upstream.load("mae_ast_patch", ckpt=omegaconf_mae_ast).eval()(wav)["last_hidden_state"]
        b = upstream.load("mae_ast_patch", ckpt=fixture_path("official", "maeast_tiny_patch.pt")).eval()(wav)
    assert torch.equal(a, b["last_hidden_state"])


def test_own_upstream_file_keeps_the_official_position_table(tmp_path):
    model = upstream.load("mae_ast_patch", ckpt=fixture_path("official", "maeast_tiny_patch.pt")).eval()
    model.save(tmp_path / "upstream.pt")
    again = upstream.load("mae_ast_patch", ckpt=tmp_path / "upstream.pt").eval()
    assert torch.equal(again.encoder.sincos_table, model.encoder.sincos_table)
    mini = upstream.load("mae_ast_patch_mini", random_init=True)
    mini.save(tmp_path / "mini.pt")  # a model trained here has no stored table: computed, as before
    assert read_checkpoint(tmp_path / "mini.pt").extra.get("sincos_table") is None


# ------------------------------------------------------------------------------------- MAE-AST cfg and table
def _mae_ast_variant(tmp_path: Path, name: str, edit) -> Path:
    obj = torch.load(fixture_path("official", "maeast_tiny_patch.pt"), weights_only=True)
    edit(obj)
    torch.save(obj, tmp_path / name)
    return tmp_path / name


def test_mae_ast_cfg_missing_keys_are_named(tmp_path):
    def drop(obj):
        del obj["cfg"]["model"]["encoder_embed_dim"], obj["cfg"]["model"]["encoder_layers"]

    path = _mae_ast_variant(tmp_path, "nokeys.pt", drop)
    with pytest.raises(CheckpointError,
                       match=r"nokeys\.pt: cfg\['model'\] lacks encoder_embed_dim, encoder_layers"):
        upstream.load("mae_ast_patch", ckpt=path)

    def garble(obj):
        obj["cfg"]["model"]["encoder_attention_heads"] = "four"

    with pytest.raises(CheckpointError, match=r"'encoder_attention_heads'\] is 'four', not an integer"):
        read_checkpoint(_mae_ast_variant(tmp_path, "garbled.pt", garble))


def _sinusoid_as_another_cpu(L: int, D: int) -> torch.Tensor:
    """MAE-AST's float32 table with every frequency rounded one ulp up, as another CPU's ``exp`` may round."""
    w = torch.exp(torch.arange(0, D, 2, dtype=torch.float64) * (-math.log(10000.0) / D)).float()
    w = torch.nextafter(w, torch.full_like(w, 2.0))
    arg = torch.arange(L, dtype=torch.float32)[:, None] * w
    pe = torch.zeros(L, D)
    pe[:, 0::2], pe[:, 1::2] = torch.sin(arg), torch.cos(arg)
    return pe[None]


def test_stored_sinusoid_from_another_cpu_is_accepted_and_used_as_stored(tmp_path):
    stored = torch.load(fixture_path("official", "maeast_tiny_patch.pt"), weights_only=True)["model"]
    other = _sinusoid_as_another_cpu(1024, 64)
    assert (other - stored["enc_sine_pos_embed.pe"]).abs().max() > 3e-5  # beyond the old check's 1e-5

    def swap(obj):
        obj["model"]["enc_sine_pos_embed.pe"] = other

    path = _mae_ast_variant(tmp_path, "other_cpu.pt", swap)
    enc = upstream.load("mae_ast_patch", ckpt=path).encoder.eval()
    tokens = torch.randn(2, 64, 64)
    pad = torch.zeros(2, 64, dtype=torch.bool)
    pad[1, 48:] = True
    expected = tokens + other[0, :64].masked_fill(pad[..., None], 0.0)
    assert torch.equal(enc.add_position(tokens, pad), expected)  # the file's table, bit for bit
    # the family is named before any family-specific check: a MAE-AST file is refused by an ASiT upstream as
    # such
    for ckpt in (path, fixture_path("official", "maeast_tiny_patch.pt")):
        with pytest.raises(CheckpointError,
                           match="is a mae_ast checkpoint, but 'asit_base' is an ASiT upstream"):
            upstream.load("asit_base", ckpt=ckpt)


@pytest.mark.parametrize("kind", ["bump", "learned", "halves"])
def test_a_table_that_is_not_the_sinusoid_is_refused(tmp_path, kind):
    def swap(obj):
        pe = obj["model"]["enc_sine_pos_embed.pe"].clone()
        if kind == "bump":
            pe[0, 700, 5] += 0.05
        elif kind == "learned":
            pe = torch.randn_like(pe) * 0.02
        else:  # fairseq's other layout: all sines, then all cosines
            pe = torch.cat([pe[..., 0::2], pe[..., 1::2]], dim=-1)
        obj["model"]["enc_sine_pos_embed.pe"] = pe

    path = _mae_ast_variant(tmp_path, f"{kind}.pt", swap)
    with pytest.raises(CheckpointError,
                       match=r"not the standard sinusoid \(at position \d+ it is [\d.e-]+ away"):
        read_checkpoint(path)
    if kind == "bump":
        with pytest.raises(CheckpointError, match="at position 700 it is 0.05"):
            read_checkpoint(path)
