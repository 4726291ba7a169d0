"""The speed benchmark's measurements (:mod:`benchmark.speed` prints and records them): fbank throughput,
frozen feature extraction and full pretraining steps, timed on a device, plus the largest batch that fits.

Timings are averages over a window after warm-up calls, with the device synchronised around it. MFU is
analytic FLOPs per second over the device's bf16 dense peak: a pretraining step counts its objective's
``step_flops`` (each family's module), feature extraction its encoder blocks forward
(``upstream.objective.block_train_flops``).
Nothing here is asserted by a test: these are measurements.
"""
from __future__ import annotations

import gc
import math
import time

import torch

import pretrain
import upstream
from common.config import load_config
from common.distributed import StepBatchSampler
from common.resources import shipped_path
from upstream.frontend import Fbank
from upstream.kaldi import kaldi_fbank, kaldi_fbank_batch
from upstream.objective import block_train_flops
from upstream.registry import get_family

__all__ = ["DEFAULT_BATCH", "OFFICIAL_EXPERTS", "PRETRAIN_RECIPES", "batch_fbank", "bench_fbank",
           "bench_features", "bench_pretrain_step", "build_recipe", "fbank_rows", "feature_rows",
           "free_memory", "largest_batch", "long_clip_case", "long_clip_rows", "official_clips_per_sec",
           "random_crops"]

FBANK_KW = dict(htk_compat=True, use_energy=False, window_type="hanning", num_mel_bins=128, dither=0.0,
                frame_shift=10, sample_frequency=16000.0)
# method: (base recipe, mini recipe), each family's default pretraining shortcut (the paper's recipe)
PRETRAIN_RECIPES = {name: (get_family(name).shortcuts[0].recipe, get_family(name).shortcuts[0].mini_recipe)
                    for name in ("ssast", "mae_ast", "asit")}
DEFAULT_BATCH = {"base": {"ssast": 24, "mae_ast": 32, "asit": 32},  # the recipes' per-GPU batches
                 "mini": {"ssast": 4, "mae_ast": 4, "asit": 4}}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timeit(fn, device: str, min_secs: float = 2.0, warmup: int = 2) -> float:
    """Seconds per call, averaged over at least ``min_secs``."""
    for _ in range(warmup):
        fn()
    _sync(device)
    n, start = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        _sync(device)
        elapsed = time.perf_counter() - start
        if elapsed >= min_secs:
            return elapsed / n


_CORE_SECS: dict[float, float] = {}  # clip length -> seconds of one clip's fbank on one CPU core


def fbank_rows(device: str, batch: int, secs: float = 10.0, compile_modes: tuple[bool, ...] = (False,),
               min_secs: float = 2.0, one_core: bool = True) -> list[dict]:
    """Fbank clips/s: one clip at a time on one CPU core (the row only with ``one_core``; measured once per
    process), and batches of ``batch`` on ``device`` for each compile mode, as a multiple of that core."""
    rows = []
    if secs not in _CORE_SECS:
        wav = 0.1 * torch.randn(int(16000 * secs))
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            _CORE_SECS[secs] = _timeit(lambda: kaldi_fbank(wav, **FBANK_KW), "cpu", min_secs)
        finally:
            torch.set_num_threads(threads)
    t_core = _CORE_SECS[secs]
    if one_core:
        rows.append({"what": "fbank, one clip at a time", "device": "cpu (1 core)", "compile": False,
                     "batch": 1, "clips/s": 1 / t_core, "x one CPU core": 1.0})
    waves = 0.1 * torch.randn(batch, int(16000 * secs), device=device)
    lens = torch.full((batch,), waves.shape[1], device=device)
    for compiled in compile_modes:
        fn = torch.compile(kaldi_fbank_batch, dynamic=False) if compiled else kaldi_fbank_batch
        t = _timeit(lambda fn=fn: fn(waves, lens, **FBANK_KW), device, min_secs)
        threads_note = "" if device != "cpu" else f" ({torch.get_num_threads()} threads)"
        rows.append({"what": f"fbank, batched x{batch}", "device": device + threads_note, "compile": compiled,
                     "batch": batch, "clips/s": batch / t, "x one CPU core": (batch / t) * t_core})
    return rows


def bench_fbank(device: str, batch: int, secs: float = 10.0) -> list[tuple]:
    rows = fbank_rows(device, batch, secs, compile_modes=(False,) if device != "cpu" else ())
    return [(r["what"], r["device"], f"{r['clips/s']:.1f}", "" if r["batch"] == 1 else
             f"{r['x one CPU core']:.0f}x cpu core") for r in rows]


def feature_rows(name: str, device: str, batch: int, secs: float, peak: float | None, compiled: bool = False,
                 min_secs: float = 2.0) -> dict:
    """Frozen feature extraction (the upstream's default s3prl settings) of ``batch`` random clips: clips/s
    and MFU.

    bf16 autocast off CPU, fp32 on CPU; MFU counts the encoder's matrix products (see the module docstring).
    """
    model = upstream.load(name, random_init=True).to(device).eval()
    waves = [0.1 * torch.randn(int(model.sample_rate * secs), device=device) for _ in range(batch)]
    dtype = torch.bfloat16 if device != "cpu" else torch.float32
    forward = torch.compile(model) if compiled else model

    def run():
        autocast = torch.autocast(device.split(":")[0], dtype=dtype, enabled=device != "cpu")
        with torch.inference_mode(), autocast:
            return forward(waves)

    out = run()
    e = model.encoder.cfg
    # sequences per clip and tokens per sequence, as the upstream ran them
    if model.cfg.window_frames is None:
        seqs, tokens = 1, out["hidden_states"][0].shape[1] * model.num_freq_patches
    else:
        n_f, n_t = e.grid
        seqs = -(-out["hidden_states"][0].shape[1] // n_t)
        tokens = n_f * n_t + e.num_prefix_tokens
    flops = batch * seqs * block_train_flops(tokens, e.embed_dim, e.depth, e.mlp_ratio, train=False)
    t = _timeit(run, device, min_secs)
    return {"upstream": name, "compile": compiled, "clip s": secs, "batch": batch, "clips/s": batch / t,
            "TFLOP/s": flops / t / 1e12, "MFU %": 100 * flops / t / (peak * 1e12) if peak else math.nan}


# this project's upstream -> the s3prl hub entry of the same model (s3prl/upstream/{ssast,mae_ast}/hubconf.py;
# s3prl has no ASiT expert). Their features are what ours reproduce (the official-fixture tests).
OFFICIAL_EXPERTS = {"ssast_patch_400": "ssast_patch_base", "ssast_frame_400": "ssast_frame_base",
                    "mae_ast_patch": "mae_ast_patch", "mae_ast_frame": "mae_ast_frame"}
NEEDS_S3PRL = "needs the s3prl extra (pip install 'astbench[s3prl]')"


def official_clips_per_sec(name: str, device: str, batch: int, secs: float,
                           min_secs: float = 2.0) -> float | str:
    """Clips/s of the official s3prl expert of ``name`` (``OFFICIAL_EXPERTS``) on ``batch`` random clips of
    ``secs`` seconds, timed as :func:`feature_rows` times ours; or why there is no figure (no expert, s3prl
    not installed, the expert could not be built: its checkpoint is downloaded by s3prl)."""
    import importlib.util

    expert = OFFICIAL_EXPERTS.get(name)
    if expert is None:
        return "no s3prl expert"
    if importlib.util.find_spec("s3prl") is None:
        return NEEDS_S3PRL
    try:
        model = upstream.load(f"s3prl:{expert}").to(device).eval()
    except Exception as err:  # noqa: BLE001 - offline, a changed hub: the row says why, the others go on
        return f"s3prl:{expert} not built: {type(err).__name__}: {str(err).strip().splitlines()[:1]}"
    waves = [0.1 * torch.randn(int(model.sample_rate * secs), device=device) for _ in range(batch)]

    def run():
        with torch.inference_mode():
            return model(waves)

    return batch / _timeit(run, device, min_secs)


def bench_features(names: list[str], device: str, batch: int, secs: float, peak: float | None,
                   official: bool = False, min_secs: float = 2.0) -> list[tuple]:
    """Rows ``(what, device, clips/s, note)``; with ``official`` each upstream's official s3prl expert on
    clips of the same length and number follows it, the note giving ours / official."""
    rows = []
    for name in names:
        r = feature_rows(name, device, batch, secs, peak, min_secs=min_secs)
        mfu = "n/a" if math.isnan(r["MFU %"]) else f"{r['MFU %']:.1f}%"
        rows.append((f"{name} features ({secs:g} s clips, x{batch})", device, f"{r['clips/s']:.2f}",
                     f"MFU {mfu}"))
        if official:
            o = official_clips_per_sec(name, device, batch, secs, min_secs)
            figure = isinstance(o, float)
            rows.append((f"  official s3prl:{OFFICIAL_EXPERTS.get(name, '-')}", device,
                         f"{o:.2f}" if figure else "n/a", f"ours / official {r['clips/s'] / o:.2f}x" if figure
                         else o))
    return rows


def long_clip_case(name: str, secs: float, layers: list[int] | None, overrides: dict | None = None) -> dict:
    """One long clip through a frozen upstream on CPU, in this process: peak RSS (``getrusage``, so run it
    in a fresh process: :func:`long_clip_rows`), CPU and wall seconds of the forward, MB returned."""
    import resource

    def rss_mb() -> float:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux

    torch.manual_seed(0)
    model = upstream.load(name, **{"random_init": True, **(overrides or {})}).eval()
    wav = 0.1 * torch.randn(int(model.sample_rate * secs), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        model([wav[:model.sample_rate]])  # kernels and allocator warm
        loaded = rss_mb()
        t0, c0 = time.perf_counter(), time.process_time()
        out = model([wav], layers=layers)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    kept = out["hidden_states"] + [out["last_hidden_state"]]
    return {"upstream": name, "overrides": overrides or {}, "clip s": secs,
            "layers": "all" if layers is None else layers, "model RSS MB": loaded, "peak RSS MB": rss_mb(),
            "returned MB": sum(t.numel() * t.element_size() for t in kept) / 2 ** 20, "CPU s": cpu,
            "wall s": wall}


def long_clip_rows(name: str, secs: float, layer_sets: list[list[int] | None],
                   overrides: dict | None = None) -> list[dict]:
    """:func:`long_clip_case` for each of ``layer_sets``, each in a fresh Python process (peak RSS is a
    process's high-water mark), one after the other."""
    import json
    import subprocess
    import sys

    rows = []
    for layers in layer_sets:
        code = ("import json, sys; from benchmark.speed_measure import long_clip_case; "
                "print(json.dumps(long_clip_case(*json.loads(sys.argv[1]))))")
        args = json.dumps([name, secs, layers, overrides or {}])
        done = subprocess.run([sys.executable, "-c", code, args], capture_output=True, text=True, check=False)
        if done.returncode:
            raise RuntimeError(f"long clip {name} layers={layers}: {done.stderr.strip().splitlines()[-1:]}")
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return rows


# ============================================================================================ pretraining
def build_recipe(method: str, size: str, device: torch.device):
    """The method's base or mini recipe and its objective (seed 0), on ``device`` in train mode."""
    recipe = PRETRAIN_RECIPES[method][0 if size == "base" else 1]
    cfg = load_config(pretrain.PretrainConfig, shipped_path(recipe, prefer_shipped=True))
    torch.manual_seed(0)
    return cfg, pretrain.build_objective(cfg.objective).to(device).train()


def random_crops(objective, batch: int, device: torch.device,
                 gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random full-length crops ``(B, V, S)`` and their lengths ``(B, V)``, as the data loader gives them."""
    fe = objective.frontend
    secs = objective.crop_secs if objective.crop_secs is not None else 10.0
    samples = round(secs * fe.sample_rate)
    wavs = 0.1 * torch.randn(batch, objective.num_views, samples, generator=gen, device=device)
    return wavs, torch.full((batch, objective.num_views), samples, dtype=torch.long, device=device)


def batch_fbank(fbank, wavs: torch.Tensor, lengths: torch.Tensor, num_views: int):
    """Batched fbank on the waveforms' device: (B, V, S) -> (B, [V,] T, F), frames (B, [V])."""
    with torch.no_grad():
        feats, frames = fbank(wavs.flatten(0, 1), lengths.flatten())
    feats, frames = feats.unflatten(0, wavs.shape[:2]), frames.view(wavs.shape[:2])
    return (feats[:, 0], frames[:, 0]) if num_views == 1 else (feats, frames)


def bench_pretrain_step(method: str, size: str, device: str, batch: int, steps: int, warmup: int, amp: str,
                        compile_model: bool = False, peak_tflops: float = 989.0,
                        data: str | None = None, workers: int = 8) -> list[dict]:
    """Time full pretraining steps (forward, backward, AdamW step, EMA/centre update) of one method.

    Rows: ``model step`` (fbank precomputed on the device), ``with data path`` (waveforms on the device ->
    batched fbank -> step) and, with ``data``, ``with decoding`` (files decoded by DataLoader workers).
    """

    dev = torch.device(device)
    cfg, objective = build_recipe(method, size, dev)
    model = torch.compile(objective) if compile_model else objective
    optimizer = pretrain.build_optimizer(objective, cfg.optim, dev)  # as pretraining: fused where it can
    fbank = Fbank(objective.frontend).to(dev)
    gen = torch.Generator(device=dev).manual_seed(0)
    wavs, lengths = random_crops(objective, batch, dev, gen)
    feats, frames = batch_fbank(fbank, wavs, lengths, objective.num_views)
    flops = batch * objective.step_flops(feats.shape[-2])
    use_bf16 = amp == "bf16"
    counter = iter(range(10**9))

    def step(x, n) -> None:
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_bf16):
            loss, _ = model(x, n, gen)
        loss.float().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        objective.after_step(next(counter), 10**6)

    paths = {"model step": lambda: step(feats, frames),
             "with data path": lambda: step(*batch_fbank(fbank, wavs, lengths, objective.num_views))}
    if data:
        paths["with decoding"] = _decoding_path(objective, cfg, data, batch, steps + warmup, workers, dev,
                                                fbank, step)
    rows = []
    for path, fn in paths.items():
        for _ in range(warmup):
            fn()
        _sync(device)
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        start = time.perf_counter()
        for _ in range(steps):
            fn()
        _sync(device)
        secs = (time.perf_counter() - start) / steps
        mem = torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else math.nan
        rows.append({"method": method, "path": path, "batch": batch, "step ms": 1e3 * secs,
                     "clips/s": batch / secs, "TFLOP/step": flops / 1e12, "TFLOP/s": flops / secs / 1e12,
                     "MFU %": 100 * flops / secs / (peak_tflops * 1e12), "peak mem GiB": mem})
    return rows


def _decoding_path(objective, cfg, data: str, batch: int, total_steps: int, workers: int, dev, fbank, step):
    """A step fed by the pretraining DataLoader (decode, crop, collate in workers), not fixed waveforms."""
    from torch.utils.data import DataLoader

    files = pretrain.list_audio_files(data, cfg.data.min_secs)
    fe = objective.frontend
    dataset = pretrain.UnlabeledAudio(files, fe.sample_rate, objective.crop_secs, objective.num_views, 0,
                                      cfg.data)
    sampler = StepBatchSampler(len(files), batch, 0, 0, total_steps, stream=0, keyed=True)  # as pretraining
    loader = iter(DataLoader(dataset, batch_sampler=sampler, collate_fn=pretrain.collate_views,
                             num_workers=workers, pin_memory=dev.type == "cuda",
                             prefetch_factor=4 if workers else None))

    def run() -> None:
        wavs, lengths, _ = next(loader)
        w, n = wavs.to(dev, non_blocking=True), lengths.to(dev, non_blocking=True)
        step(*batch_fbank(fbank, w, n, objective.num_views))

    return run


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _fits(method: str, size: str, device: torch.device, batch: int, amp: str) -> bool:
    """Whether one pretraining step with the data path (fbank on the device) runs at ``batch`` without OOM."""
    try:
        bench_pretrain_step(method, size, str(device), batch, steps=1, warmup=1, amp=amp)
        return True
    except torch.OutOfMemoryError:
        return False
    finally:
        free_memory(device)


def largest_batch(method: str, size: str, device: torch.device, start: int, cap: int, amp: str) -> int:
    """The largest batch in ``[start, cap]`` whose step fits: doubling from ``start``, then bisection to 1/8.

    Memory is what bounds it on a GPU; on a CPU nothing runs out first, so the search simply reaches ``cap``.
    """
    lo, hi = start, None  # lo fits (the recipe batch is assumed to), hi does not
    while hi is None and lo < cap:
        trial = min(2 * lo, cap)
        if _fits(method, size, device, trial, amp):
            lo = trial
        else:
            hi = trial
    while hi is not None and hi - lo > max(1, lo // 8):
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if _fits(method, size, device, mid, amp) else (lo, mid)
    return lo
