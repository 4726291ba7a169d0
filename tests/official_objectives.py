"""Replay one official pretraining step (a golden objective fixture) with this project's objective.

The fixtures (``shared/fixtures/objectives/``, see its README) hold what the official training code of SSAST,
MAE-AST or ASiT computed in one step from seeded weights: the masks or corrupted views it drew, what entered
each loss, every loss term, the total and every parameter's gradient norm. :func:`replay` builds this
project's objective from the official checkpoint the fixture names, gives it the fixture's inputs and masks
(or views) through the objective's own seam, runs it in train mode with dropout and drop-path off, backprops
the total loss and collects our numbers next to the official ones. :func:`compare` reduces that to
``name -> (|ours - official|, tolerance)`` with the README's tolerances:

* ``loss/<term>`` and ``loss/total``: rtol 1e-5;
* ``grad/<official parameter name>`` (gradient L2 norms): rtol 1e-4, 1e-3 for ASiT's
  ``head_recons.convTrans.bias`` (an average of L1 signs), and 1e-6 absolute for the parameters whose
  gradient is zero in exact arithmetic (the fixture's ``near_zero_grad_params``).

Which method and configuration a fixture holds is read from the file (``method``, ``config``, the keys
present), so any fixture made the same way replays, not only the shared ones.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from upstream.asit import ASiTObjective, ASiTPretrainConfig
from upstream.checkpoint import file_sha256, read_checkpoint
from upstream.mae_ast import MAEASTObjective, MAEASTPretrainConfig
from upstream.masking import masked_indices
from upstream.ssast import SSASTObjective, SSASTPretrainConfig, ssast_patches
from upstream.tokenizer import patchify

LOSS_RTOL, GRAD_RTOL, NEAR_ZERO_ATOL = 1e-5, 1e-4, 1e-6
GRAD_RTOL_PARAM = {"module.head_recons.convTrans.bias": 1e-3}  # fp64 vs fp32 moves it by 7.4e-5 already
PRED_ATOL, TARGET_ATOL = 1e-5, 2e-6
ARCH = ("embed_dim", "depth", "num_heads", "mlp_ratio")  # the shape read from the checkpoint
NO_DROPOUT = dict(dropout=0.0, attn_dropout=0.0, activation_dropout=0.0, dropout_input=0.0, layerdrop=0.0,
                  drop_path=0.0)


@dataclass
class Replay:
    """Our numbers next to the official ones. ``tensors`` are intermediate values for debugging."""

    method: str
    losses: dict[str, tuple[float, float]] = field(default_factory=dict)  # name -> (ours, official)
    # official name -> (ours, official)
    grad_norms: dict[str, tuple[float, float]] = field(default_factory=dict)
    near_zero: set[str] = field(default_factory=set)  # official names whose exact gradient is zero
    # (ours, ref, atol)
    tensors: dict[str, tuple[torch.Tensor, torch.Tensor, float]] = field(default_factory=dict)


def compare(fixture_path: str | Path) -> dict[str, tuple[float, float]]:
    """``name -> (measured |ours - official|, tolerance)`` for every loss term, the total loss and every
    parameter gradient norm of the fixture (official parameter names)."""
    r = replay(fixture_path)
    out = {name: (abs(ours - ref), LOSS_RTOL * abs(ref)) for name, (ours, ref) in r.losses.items()}
    for name, (ours, ref) in r.grad_norms.items():
        tol = NEAR_ZERO_ATOL if name in r.near_zero else GRAD_RTOL_PARAM.get(name, GRAD_RTOL) * abs(ref)
        out[f"grad/{name}"] = (abs(ours - ref), tol)
    return out


def within(difference: float, tolerance: float) -> bool:
    """One entry of :func:`compare` passes (a NaN difference never does)."""
    return math.isfinite(difference) and difference <= tolerance


def replay(fixture_path: str | Path) -> Replay:
    """Run this project's objective on a fixture; see the module docstring."""
    path = Path(fixture_path)
    # trusted fixture (README: weights_only=False)
    fx = torch.load(path, map_location="cpu", weights_only=False)
    ckpt = _checkpoint_file(path, fx)
    runners = {"ssast": _ssast, "maeast": _mae_ast, "mae_ast": _mae_ast, "asit": _asit}
    if fx.get("method") not in runners:
        raise ValueError(f"{path}: unknown objective fixture method {fx.get('method')!r}")
    with torch.random.fork_rng():
        torch.manual_seed(0)  # nothing random should remain; this only makes a slip reproducible
        r = runners[fx["method"]](fx, ckpt)
    r.near_zero = set(fx.get("fp64_vs_fp32_rel", {}).get("near_zero_grad_params", {}))
    missing = set(fx["grad_norm"]) - set(r.grad_norms)
    if missing:
        raise AssertionError(f"{path}: no gradient of ours maps to official parameter(s) {sorted(missing)}")
    return r


def _checkpoint_file(fixture: Path, fx: dict) -> Path:
    """The official checkpoint the fixture starts from: next to it or in ``../official/``; sha256 checked."""
    name = Path(fx["checkpoint_file"]).name
    for cand in (fixture.parent / name, fixture.parent.parent / "official" / name):
        if cand.exists():
            if fx.get("checkpoint_sha256") and file_sha256(cand) != fx["checkpoint_sha256"]:
                raise AssertionError(f"{cand} is not the checkpoint {fixture} was made from (sha256 differs)")
            return cand
    raise FileNotFoundError(f"{fixture} needs {name}, found neither next to it nor in ../official/")


def _load_state(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # fairseq / argparse payloads: a trusted fixture file
        return torch.load(path, map_location="cpu", weights_only=False)


def _record(module: nn.Module, store: dict, key: str, what: str = "output") -> None:
    """Keep a module's input (``what='input'``) or output of the next call, detached."""
    if what == "input":
        module.register_forward_pre_hook(lambda m, args: store.__setitem__(key, args[0].detach()))
    else:
        module.register_forward_hook(lambda m, args, out: store.__setitem__(
            key, tuple(o.detach() for o in out) if isinstance(out, tuple) else out.detach()))


def _grad_norms(model: nn.Module, rename) -> dict[str, float]:
    """Official name -> gradient L2 norm (float64 of the fp32 gradient). ``rename(name, grad)`` yields
    ``(official name, gradient piece)`` pairs (one parameter of ours may be several official ones)."""
    out = {}
    for name, p in model.named_parameters():
        if p.requires_grad and p.grad is not None:
            for official, g in rename(name, p.grad):
                out[official] = float(g.double().norm())
    return out


def _split(grad: torch.Tensor, names: list[str], dim: int = 0) -> list[tuple[str, torch.Tensor]]:
    return list(zip(names, grad.chunk(len(names), dim)))


def _bool_mask(ids: torch.Tensor, n: int) -> torch.Tensor:
    """(B, M) token ids -> (B, N) bool, True = masked."""
    return torch.zeros(ids.shape[0], n, dtype=torch.bool).scatter_(1, ids, True)


def _rows_by_id(x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Reorder the official per-clip rows (in ``ids`` order) into increasing token order, as ours come."""
    return torch.gather(x, 1, ids.argsort(1).unsqueeze(-1).expand_as(x))


def _arch(raw) -> dict:
    return {k: getattr(raw.encoder, k) for k in ARCH}


# ------------------------------------------------------------------------------------------------ SSAST
def _ssast(fx: dict, ckpt: Path) -> Replay:
    c, raw, sd = fx["config"], read_checkpoint(ckpt), _load_state(ckpt)
    passes = [k for k in ("mpc", "mpg") if k in fx]  # pretrain_joint: both; pretrain_mpc / _mpg: one
    objective = {("mpc", "mpg"): "joint", ("mpc",): "discriminative", ("mpg",): "generative"}[tuple(passes)]
    token = "patch" if (c["fshape"], c["tshape"]) == (16, 16) else "frame"
    o = SSASTObjective(SSASTPretrainConfig(
        token=token, mask_patch=c["mask_patch"], cluster=c["cluster"], objective=objective,
        gen_weight=c.get("joint_weight_mse", 10.0), two_pass=True, target_length=c["input_tdim"],
        norm_mean=c["norm_mean"], norm_std=c["norm_std"], encoder=_arch(raw)))
    o.load_state_dict({k: raw.state[k[len("encoder."):]] if k.startswith("encoder.") else sd["module." + k]
                       for k in o.state_dict()})
    seen: dict = {}
    _record(o.cpredlayer, seen, "mpc")
    _record(o.gpredlayer, seen, "mpg")

    x = fx["input"]  # (B, T, F) normalised fbank
    n = o.encoder.cfg.grid[0] * o.encoder.cfg.grid[1]
    masks = [_bool_mask(fx[k]["mask_index"], n) for k in passes]
    o.train()
    loss, logs = o(x, None, masks=masks)
    loss.backward()

    r = Replay("ssast")
    total = fx["joint_loss"] if "joint_loss" in fx else fx[passes[0]]["nce" if passes == ["mpc"] else "mse"]
    r.losses["loss/total"] = (loss.item(), total.item())  # a one-objective step's loss is its term
    targets = ssast_patches(x, o.encoder.cfg.fshape, o.encoder.cfg.tshape)  # (B, N, p)
    for k in passes:
        term = "nce" if k == "mpc" else "mse"
        r.losses[f"loss/{term}"] = (logs[term].item(), fx[k][term].item())
        ids = fx[k]["mask_index"]
        mine = masked_indices(masks[passes.index(k)], ids.shape[1])
        r.tensors[f"{k}/mask_index"] = (mine, ids.sort(1).values, 0.0)
        r.tensors[f"{k}/pred"] = (seen[k], _rows_by_id(fx[k]["pred"], ids), PRED_ATOL)
        r.tensors[f"{k}/target"] = (torch.gather(targets, 1,
                                                 mine[..., None].expand(-1, -1, targets.shape[-1])),
                                    _rows_by_id(fx[k]["target"], ids), TARGET_ATOL)
    if "mpc" in fx:
        r.tensors["mpc/acc"] = (logs["masked_acc"], fx["mpc"]["acc"], 0.0)

    def rename(name, g):
        if name == "encoder.prefix_tokens":  # cls + dist
            return _split(g, ["v.cls_token", "v.dist_token"][: g.shape[1]], dim=1)
        return [(name.replace("encoder.", "v.", 1) if name.startswith("encoder.") else name, g)]

    r.grad_norms = _pair(_grad_norms(o, rename), fx["grad_norm"])
    _full_grads(r, o, rename, fx)
    return r


# ------------------------------------------------------------------------------------------------ MAE-AST
FAIRSEQ_LAYER = {"attn.proj": "self_attn.out_proj", "norm1": "self_attn_layer_norm",
                 "norm2": "final_layer_norm", "mlp.fc1": "fc1", "mlp.fc2": "fc2"}


def _fairseq_names(name: str) -> list[str]:
    """Our MAE-AST parameter name -> the official fairseq name(s): a fused qkv is three projections."""
    for ours, theirs in (("encoder.patch_embed.proj.", "post_extract_proj."), ("encoder.input_norm.",
                         "encoder.layer_norm."), ("decoder.input_norm.", "decoder.layer_norm.")):
        if name.startswith(ours):
            return [theirs + name[len(ours):]]
    parts = name.split(".")  # {encoder,decoder}.blocks.i.<inner>.{weight,bias}
    if parts[0] in ("encoder", "decoder") and parts[1] == "blocks":
        stem, inner = f"{parts[0]}.layers.{parts[2]}", ".".join(parts[3:-1])
        if inner == "attn.qkv":
            return [f"{stem}.self_attn.{p}_proj.{parts[-1]}" for p in "qkv"]
        return [f"{stem}.{FAIRSEQ_LAYER[inner]}.{parts[-1]}"]
    return [name]


def _mae_ast(fx: dict, ckpt: Path) -> Replay:
    c, raw, sd = fx["config"], read_checkpoint(ckpt), _load_state(ckpt)["model"]
    m, crit = c["model_cfg_used"], c["criterion"]
    token = "patch" if (raw.encoder.fshape, raw.encoder.tshape) == (16, 16) else "frame"
    o = MAEASTObjective(MAEASTPretrainConfig(
        token=token, mask_ratio=c["random_mask_prob"],  # the mask type only matters for drawing: given here
        mask_type="chunk" if c["mask_type"] == "chunk_mask" else "random",
        recon_weight=crit["reconstruction_weight"], class_weight=crit["classification_weight"],
        decoder_depth=m["decoder_layers"],
        objective="joint" if crit["classification_weight"] > 0 else "generative",
        encoder={**_arch(raw), **NO_DROPOUT}))
    o.load_state_dict({k: raw.state[k[len("encoder."):]] if k.startswith("encoder.")
                       else torch.cat([sd[n] for n in _fairseq_names(k)]) for k in o.state_dict()})
    o.encoder.sincos_table = raw.extra.get("sincos_table")  # the file's position table, exact on any machine
    seen: dict = {}
    _record(o.encoder.patch_embed, seen, "normalised", "input")
    _record(o.encoder.patch_embed, seen, "tokens_after_proj")
    _record(o.encoder.input_norm, seen, "encoder_input", "input")
    _record(o.encoder.blocks[-1], seen, "encoder_out")
    _record(o.decoder, seen, "decoder_input", "input")
    _record(o.decoder, seen, "decoder_out")
    _record(o.final_proj_reconstruction, seen, "logit_m_list_recon")
    if o.final_proj_classification is not None:
        _record(o.final_proj_classification, seen, "logit_m_list_class")

    mask = fx["mask"]["mask_indices"]  # (B, N) bool
    o.train()
    loss, logs = o(fx["sample"]["source"], None, mask=mask)
    loss.backward()

    r = Replay("mae_ast")
    r.losses["loss/total"] = (loss.item(), fx["loss"].item())
    r.losses["loss/recon"] = (logs["recon"].item(), fx["loss_recon"].item())
    if "loss_info_nce" in fx:
        r.losses["loss/info_nce"] = (logs["nce"].item(), fx["loss_info_nce"].item())
    e = o.encoder.cfg
    retained = fx["mask"]["retained_idx"]
    r.tensors["unfold_patches"] = (patchify(seen["normalised"], e.fshape, e.tshape, "time_major"),
                                   fx["unfold_patches"], TARGET_ATOL)
    r.tensors["encoder_input"] = (seen["encoder_input"], _rows_by_id(fx["encoder_input"], retained),
                                  PRED_ATOL)
    r.tensors["encoder_out"] = (seen["encoder_out"], _rows_by_id(fx["encoder_out"], retained), PRED_ATOL)
    for k in ("tokens_after_proj", "decoder_input", "decoder_out", "logit_m_list_recon",
              "logit_m_list_class"):
        if k in seen:
            r.tensors[k] = (seen[k], fx[k], PRED_ATOL)
    mean, var = fx["batch_norm_running_after"]
    r.tensors["batch_norm_running_mean"] = (o.encoder.input_bn.running_mean, mean,
                                            1e-5 * float(mean.abs().max()))
    r.tensors["batch_norm_running_var"] = (o.encoder.input_bn.running_var, var, 1e-5 * float(var.abs().max()))

    def rename(name, g):
        return _split(g, _fairseq_names(name))

    ours = _grad_norms(o, rename)
    # The official model writes encoder_mask_emb into masked tokens that are then discarded: its gradient is
    # exactly 0, and this project has no such parameter (the masked tokens are never built).
    if "encoder_mask_emb" in fx["grad_norm"]:
        ours["encoder_mask_emb"] = 0.0
    r.grad_norms = _pair(ours, fx["grad_norm"])
    _full_grads(r, o, rename, fx)
    return r


# ------------------------------------------------------------------------------------------------ ASiT
def _asit_name(name: str) -> str:
    """Our ASiT student parameter name -> the official ``module.*`` one."""
    for ours, theirs in (("encoder.prefix_tokens", "backbone.cls_token"), ("encoder.", "backbone."),
                         ("head.cls_v", "head_cls.cls_layer.weight_v"),
                         ("head.data_v", "head_cls.data_layer.weight_v"),
                         ("head.", "head_cls."), ("rec_head.conv_trans.", "head_recons.convTrans."),
                         ("rec_head.", "head_recons.")):
        if name.startswith(ours):
            return "module." + theirs + name[len(ours):]
    return name


def _asit_state(o: ASiTObjective, ckpt: dict, student, teacher) -> dict:
    """Our objective's state dict from the official ``checkpoint.pth`` (backbones already converted)."""
    for who, prefix in (("student", "module."), ("teacher", "")):
        for layer in ("cls_layer", "data_layer"):
            g = ckpt[who][f"{prefix}head_cls.{layer}.weight_g"]
            if not torch.equal(g, torch.ones_like(g)):
                raise AssertionError(f"{who} head_cls.{layer}.weight_g is not 1; "
                                     "this project fixes the gain at 1")
    state = {}
    for k in o.state_dict():
        if k.startswith("encoder."):
            state[k] = student.state[k[len("encoder."):]]
        elif k.startswith("teacher."):
            state[k] = teacher.state[k[len("teacher."):]]
        elif k.startswith("teacher_head."):
            state[k] = ckpt["teacher"][_asit_name(k[len("teacher_"):])[len("module."):]]
        elif k in ("center_cls", "center_data"):
            state[k] = ckpt["loss_cls" if k == "center_cls" else "loss_data"]["center"].view_as(getattr(o, k))
        elif k == "step":
            # the official schedule is per epoch: one step per epoch
            state[k] = torch.tensor(int(ckpt["epoch"]))
        else:
            state[k] = ckpt["student"][_asit_name(k)]
    return state


def _asit(fx: dict, ckpt: Path) -> Replay:
    c, cl, dl = fx["config"], fx["cls_loss"], fx["data_loss"]
    student = read_checkpoint(ckpt, backbone="student", num_heads=c["num_heads"])
    teacher = read_checkpoint(ckpt, backbone="teacher", num_heads=c["num_heads"])
    w = c["loss_weights"]
    if w["cls"] not in (0, 1) or w["data"] not in (0, 1):
        raise ValueError(f"ASiT loss weights {w}: only 0 or 1 for the cls and data terms are supported")
    o = ASiTObjective(ASiTPretrainConfig(
        size="mini", target_length=student.encoder.input_tdim, out_dim_cls=c["out_dim_cls"],
        out_dim_data=c["out_dim_data"],
        student_temp=cl["student_temp"], teacher_temp=c["teacher_temp"],
        warmup_teacher_temp=c["warmup_teacher_temp"],
        warmup_teacher_temp_steps=c["warmup_teacher_temp_epochs"], center_momentum=cl["center_momentum"],
        recon_weight=float(w["rec"]), drop_path=0.0, use_cls=w["cls"] > 0, use_data=w["data"] > 0,
        use_recon=w["rec"] > 0, norm_mean=c["data_mean"], norm_std=c["data_std"],
        head_hidden=c["cls_hidden_dim"], head_bottleneck=c["cls_bottleneck_dim"],
        rec_hidden=c["rec_hidden_dim"], rec_bottleneck=c["rec_bottleneck_dim"], encoder=_arch(student)))
    o.load_state_dict(_asit_state(o, _load_state(ckpt), student, teacher))
    seen: dict = {}
    _record(o.teacher_head, seen, "teacher")
    _record(o.head, seen, "student")
    _record(o.rec_head, seen, "recons")
    _record(o.teacher.norm, seen, "teacher_norm")
    _record(o.encoder.norm, seen, "student_norm")

    v = fx["views"]  # (crop, clip, 1, T, F) -> ours (clip, crop, T, F)
    clean, corrupted, mask = (v[k].permute(1, 0, 2, 3, 4)[:, :, 0] for k in ("clean", "corrupted", "mask"))
    B, V = clean.shape[:2]
    o.train()
    loss, logs = o(clean, None, corruption=(corrupted, mask))
    loss.backward()
    o.update_centers()

    r = Replay("asit")
    r.losses["loss/total"] = (loss.item(), fx["total_loss"].item())
    for ours, theirs in (("cls", "cls_loss"), ("data", "data_loss"), ("recon", "rec_loss")):
        if ours in logs:
            ref = fx[theirs]["loss"] if isinstance(fx[theirs], dict) else fx[theirs]
            r.losses[f"loss/{ours}"] = (logs[ours].item(), ref.item())

    def official_rows(x):  # ours: row clip * V + crop; official torch.cat(crops): row crop * B + clip
        return x.reshape(B, V, *x.shape[1:]).transpose(0, 1).reshape(B * V, *x.shape[1:])

    for who in ("teacher", "student"):
        cls, data = seen[who]
        r.tensors[f"{who}_out/cls"] = (official_rows(cls), fx[f"{who}_out"]["cls"], PRED_ATOL)
        r.tensors[f"{who}_out/data"] = (official_rows(data).flatten(0, 1), fx[f"{who}_out"]["data"],
                                        PRED_ATOL)
        r.tensors[f"{who}_out/backbone_norm_out"] = (official_rows(seen[f"{who}_norm"]),
                                                     fx[f"{who}_out"]["backbone_norm_out"], PRED_ATOL)
    r.tensors["student_out/recons"] = (official_rows(seen["recons"]).unsqueeze(1),
                                       fx["student_out"]["recons"], PRED_ATOL)
    for ours, theirs in ((o.center_cls, cl), (o.center_data, dl)):
        ref = theirs["center_after"]
        r.tensors[f"center_after/{ref.shape[-1]}"] = (ours.view_as(ref), ref, 1e-5 * float(ref.abs().max()))
    r.tensors["teacher_temp"] = (logs["teacher_temp"].double(),
                                 torch.tensor(cl["teacher_temp"], dtype=torch.float64), 1e-7)

    rename = lambda name, g: [(_asit_name(name), g)]  # noqa: E731
    r.grad_norms = _pair(_grad_norms(o, rename), fx["grad_norm"])
    _full_grads(r, o, rename, fx)
    return r


# ------------------------------------------------------------------------------------------------ shared
def _pair(ours: dict[str, float], official: dict) -> dict[str, tuple[float, float]]:
    """(ours, official) for every official gradient norm; a parameter of ours with no official twin is an
    error."""
    extra = set(ours) - set(official)
    if extra:
        raise AssertionError(f"gradients of ours with no official parameter: {sorted(extra)}")
    return {k: (ours[k], float(v)) for k, v in official.items() if k in ours}


def _full_grads(r: Replay, model: nn.Module, rename, fx: dict) -> None:
    """The fixture's full gradients of a few small parameters, as debugging tensors."""
    grads = {off: g for name, p in model.named_parameters() if p.grad is not None
             for off, g in rename(name, p.grad)}
    for name, ref in fx.get("grad", {}).items():
        if name in grads:
            near_zero = name in fx.get("fp64_vs_fp32_rel", {}).get("near_zero_grad_params", {})
            atol = NEAR_ZERO_ATOL if near_zero else GRAD_RTOL * float(ref.abs().max()) + 1e-8
            r.tensors[f"grad/{name}"] = (grads[name].reshape(ref.shape), ref, atol)
