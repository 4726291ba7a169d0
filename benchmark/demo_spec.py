"""What the built-in demo runs (:mod:`benchmark.demo`): its settings, its table and its sweep options.

The demo's table is built in code, like a published table without numbers (:mod:`benchmark.published`): per
family a row pretrained with its ``configs/pretrain/*_mini.yaml`` recipe and a row from random weights, and
per task (keywords, ESC) a frozen-probe and a fine-tuned column. The suite runner (:mod:`benchmark.suites`)
runs it with :func:`demo_options`; the tables and ``results/demo`` check its records against the same
options.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from common.resources import config_path
from downstream.tasks import get_task
from upstream.registry import get_family

from .demo_data import SIZES, DemoSize
from .published import Column, PaperTable, Row, RunSpec
from .suites import SuiteOptions

__all__ = ["FAMILIES", "SETTINGS", "Family", "Setting", "demo_options", "demo_table", "setting_from_dict"]

DEMO_CONFIGS = config_path("demo")
SOURCE = "python -m benchmark demo"


@dataclass(frozen=True)
class Family:
    """A family's two demo rows: pretrained with its mini recipe, and the same architecture from scratch."""

    name: str  # row label prefix
    title: str
    pretrain_upstream: str  # the pretraining shortcut (run_pretrain.py -u)
    recipe: str  # configs/pretrain/<recipe>
    upstream: str  # registered upstream the checkpoint loads as
    scratch_overrides: tuple[str, ...] = ()  # downstream -o making the random-init model match


def _family(name: str, scratch_overrides: tuple[str, ...] = ()) -> Family:
    """The demo rows of family ``name``: its default pretraining shortcut at test size (``FamilySpec``)."""
    spec = get_family(name)
    shortcut = spec.shortcuts[0]
    return Family(spec.name, spec.title, shortcut.name, shortcut.mini_recipe, shortcut.mini_upstream,
                  scratch_overrides)


# in the order of the table's rows. The SSAST and ASiT mini recipes pretrain on 192-frame inputs, which the
# checkpoint carries into its upstream (SSAST: 192-frame windows, ASiT: 192-frame inputs); the random
# initialisation must be the same model, so it gets the same length (the registry's default: 1 s, 100
# frames). MAE-AST has no fixed input length.
SAME_LENGTH = ("upstream_overrides.target_length=192",)
FAMILIES = (_family("ssast", SAME_LENGTH), _family("mae_ast"), _family("asit", SAME_LENGTH))


@dataclass(frozen=True)
class Setting:
    """One size of the demo. ``pretrain_steps`` is per family; batch sizes are the recipes' own unless set."""

    data_size: str | DemoSize  # a benchmark.demo_data.SIZES name or a DemoSize
    pretrain_steps: dict
    pretrain_overrides: tuple[str, ...]
    folds: tuple[int, ...]  # ESC-50 folds evaluated
    downstream_overrides: tuple[str, ...] = ()
    ssast_objectives: bool = False  # add SSAST discriminative-only and generative-only rows
    seeds: tuple[int, ...] = (1337,)  # downstream seeds of every cell (one pretraining run per row)
    finetune_seeds: tuple[int, ...] | None = None  # the fine-tuned columns' seeds (None: ``seeds``)
    probe_tasks: tuple[str, ...] = ()  # k-NN probes of the pretraining runs (probe_every: pretrain_overrides)
    probe_clips: int = 4000  # clips per probed task


PROBE_TASKS = ("speech_commands_v2", "esc50")
SETTINGS = {
    "cpu": Setting("small", {"ssast": 1200, "mae_ast": 1200, "asit": 600},
                   ("batch_size=8", "ckpt_every=200", "log_every=100", "optim.warmup_steps=50",
                    "probe_every=200"),
                   folds=get_task("esc50").folds, seeds=(1337, 1338, 1339), finetune_seeds=(1337,),
                   probe_tasks=PROBE_TASKS,
                   probe_clips=1200),  # keywords: 1,200 of 2,400 clips (+-3 points); ESC: all 1,000
    "large": Setting("large", {"ssast": 6000, "mae_ast": 6000, "asit": 4000},
                     ("batch_size=64", "ckpt_every=500", "log_every=100", "optim.warmup_steps=200",
                      "data.num_workers=4", "probe_every=500"),
                     folds=get_task("esc50").folds,
                     downstream_overrides=("runner.total_steps=2000", "runner.eval_step=200"),
                     ssast_objectives=True, seeds=(1337, 1338, 1339), probe_tasks=PROBE_TASKS),
}


def demo_table(setting: Setting) -> PaperTable:
    """The demo's table: each family pretrained vs from scratch, keyword and ESC tasks, frozen and fine-tuned.
    There are no published numbers for it, so every paper value is ``None``."""
    columns = (
        Column("ks_frozen", "speech_commands_v2", "frozen", "accuracy", 100.0, "Keywords, frozen probe"),
        Column("ks_ft", "speech_commands_v2", "finetune", "accuracy", 100.0, "Keywords, fine-tuned"),
        Column("esc_frozen", "esc50", "frozen", "accuracy", 100.0, "ESC, frozen probe"),
        Column("esc_ft", "esc50", "finetune", "accuracy", 100.0, "ESC, fine-tuned"),
    )
    empty = {c.key: None for c in columns}
    rows = []
    for fam in FAMILIES:
        overrides = setting.pretrain_overrides + (f"max_steps={setting.pretrain_steps[fam.name]}",)
        rows.append(Row(f"{fam.name}_pretrained", f"{fam.title}, pretrained", SOURCE, empty,
                        RunSpec(fam.upstream, pretrain=fam.recipe, pretrain_upstream=fam.pretrain_upstream,
                                pretrain_overrides=overrides)))
        if fam.name == "ssast" and setting.ssast_objectives:
            for objective in ("discriminative", "generative"):
                only = overrides + (f"objective.objective={objective}",)
                rows.append(Row(f"ssast_{objective}", f"SSAST {objective} only, pretrained", SOURCE, empty,
                                RunSpec(fam.upstream, pretrain=fam.recipe,
                                        pretrain_upstream=fam.pretrain_upstream, pretrain_overrides=only)))
        rows.append(Row(f"{fam.name}_scratch", f"{fam.title}, from scratch", SOURCE, empty,
                        RunSpec(fam.upstream, overrides=fam.scratch_overrides)))
    title = "Demo: self-supervised pretraining vs from scratch on the generated corpus"
    return PaperTable("demo", "demo", title, SOURCE, columns, tuple(rows),
                      notes=f"Accuracy (%) on the generated corpus (test sets: {_test_clips(setting)}); ESC "
                            "is the mean over its 5 folds at one step chosen on the fold-averaged curve. "
                            f"{_seeds_note(setting)} Tiny models (D=64, 2 blocks) pretrained with "
                            "configs/pretrain/{ssast_patch,mae_ast_patch,asit}_mini.yaml: SSAST patch, "
                            "joint objective, cluster masking; MAE-AST patch, chunked masking, joint; ASiT "
                            "with GMML, alien corruption, local and global DINO heads and reconstruction. "
                            "From scratch = same architecture, random weights.")


def _test_clips(setting: Setting) -> str:
    """The test sets of ``setting``'s corpus, in words."""
    size = SIZES[setting.data_size] if isinstance(setting.data_size, str) else setting.data_size
    keywords = size.quota()["testing"] * size.n_words * size.takes_per_speaker
    per_fold = size.esc_classes * size.esc_clips_per_class // 5
    return f"{keywords:,} keyword clips, 5 x {per_fold} ESC clips"


def _seeds_note(setting: Setting) -> str:
    def count(seeds: tuple[int, ...]) -> str:
        return "1 downstream seed" if len(seeds) == 1 else f"{len(seeds)} downstream seeds"

    ft = setting.seeds if setting.finetune_seeds is None else setting.finetune_seeds
    said = (f"{count(setting.seeds)} per cell" if ft == setting.seeds else
            f"{count(setting.seeds)} per frozen-probe cell and {count(ft)} per fine-tuned cell (the CPU "
            "budget)")
    return (f"{said.capitalize()}, over one pretraining run per row: the seeds cover the downstream's "
            "variance (and, from scratch, the random initialisation's), not the pretraining's.")


def setting_from_dict(data: dict) -> Setting:
    """The :class:`Setting` that ``asdict`` wrote (``demo_run.json``): lists back to tuples, sizes to
    :class:`DemoSize`."""
    size = data["data_size"]
    return Setting(DemoSize(**size) if isinstance(size, dict) else size, dict(data["pretrain_steps"]),
                   tuple(data["pretrain_overrides"]), tuple(data["folds"]),
                   tuple(data["downstream_overrides"]), bool(data["ssast_objectives"]),
                   tuple(data.get("seeds", (1337,))),
                   None if data.get("finetune_seeds") is None else tuple(data["finetune_seeds"]),
                   tuple(data.get("probe_tasks", ())), int(data.get("probe_clips", 4000)))  # older: 1 seed


def demo_options(out: Path, setting: Setting, rows=(), device: str | None = None,
                 data: dict[str, Path] | None = None) -> SuiteOptions:
    """The sweep settings of the demo in ``out``: its suite runs with them, and its table checks records
    against them (``data``: the corpus folders of ``demo_data.generate``, needed only to run)."""
    return SuiteOptions(data_root=str(data["root"]) if data else None,
                        pretrain_data=str(data["unlabeled"]) if data else None, rows=rows,
                        folds=setting.folds, expdir=str(out), results=str(out / "results.jsonl"),
                        device=device, cache_dir=str(out / "feature_cache"), config_dir=str(DEMO_CONFIGS),
                        downstream_overrides=setting.downstream_overrides, seeds=setting.seeds,
                        mode_seeds={} if setting.finetune_seeds is None else
                        {"finetune": setting.finetune_seeds},
                        probe_tasks=setting.probe_tasks, probe_clips=setting.probe_clips)
