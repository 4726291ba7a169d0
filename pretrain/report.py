"""Rank 0's outputs of a pretraining run: ``config.yaml``, ``losses.jsonl`` (every step, and each probe),
tensorboard scalars, and the progress bar or (without a terminal) log lines."""
from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

from common.config import dump_config
from common.rundir import truncate_jsonl

from .config import PretrainConfig

__all__ = ["Reporter"]

log = logging.getLogger(__name__)


class Reporter:
    """Rank-0 outputs of the loop: ``losses.jsonl`` (every step), tensorboard and the bar or log lines."""

    def __init__(self, cfg: PretrainConfig, out: Path, start: int, stop: int, resume: bool, enabled: bool):
        from tqdm import tqdm

        self.cfg, self.stop, self.enabled = cfg, stop, enabled
        self.writer = self.file = None
        self.bar = tqdm(total=stop, initial=start, disable=not enabled or not sys.stderr.isatty(),
                        dynamic_ncols=True, desc="pretrain")
        self.window_loss, self.window_steps, self.t0 = 0.0, 0, time.perf_counter()
        if not enabled:
            return
        out.mkdir(parents=True, exist_ok=True)
        dump_config(cfg, out / "config.yaml")
        truncate_jsonl(out / "losses.jsonl", start)
        self.file = open(out / "losses.jsonl", "a", encoding="utf-8")  # noqa: SIM115 (closed in close())
        if cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(out / "tb"), purge_step=start + 1 if resume else None)

    def step(self, step: int, loss: float, lr: float, wd: float, logs: dict, skipped: int) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps({"step": step, "loss": loss, "lr": lr, "logs": logs}) + "\n")
        self.file.flush()
        self.bar.update(1)
        self.window_loss, self.window_steps = self.window_loss + loss, self.window_steps + 1
        if step % self.cfg.log_every and step != self.stop:
            return
        mean = self.window_loss / self.window_steps
        clips_s = self.window_steps * self.cfg.batch_size / max(time.perf_counter() - self.t0, 1e-9)
        self.bar.set_postfix(loss=f"{mean:.4f}", clips_s=f"{clips_s:.1f}", skipped=skipped)
        if self.writer is not None:
            scalars = {"loss": mean, "lr": lr, "weight_decay": wd, "clips_per_sec": clips_s,
                       "skipped_files": skipped, **logs}
            for k, v in scalars.items():
                self.writer.add_scalar(f"pretrain/{k}", v, step)
        if self.bar.disable:
            log.info("step %d/%d loss %.4f lr %.3g clips/s %.1f skipped files %d", step, self.stop, mean, lr,
                     clips_s, skipped)
        self.window_loss, self.window_steps, self.t0 = 0.0, 0, time.perf_counter()

    def probe(self, step: int, result: dict) -> None:
        """A probe's record: one ``losses.jsonl`` line, its numbers to tensorboard, and a log line."""
        if not self.enabled:
            return
        self.file.write(json.dumps({"step": step, "probe": result}) + "\n")
        self.file.flush()
        numbers = {k: v for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if self.writer is not None:  # one curve per probed task: probe/<task>/<key>
            prefix = f"probe/{result['task']}" if isinstance(result.get("task"), str) else "probe"
            for k, v in numbers.items():
                self.writer.add_scalar(f"{prefix}/{k}", v, step)
        text = ", ".join(f"{k} {v:.4g}" for k, v in numbers.items())
        if self.bar.disable:
            log.info("probe at step %d: %s", step, text)
        else:
            self.bar.write(f"probe at step {step}: {text}")

    def close(self) -> None:
        self.bar.close()
        for f in (self.writer, self.file):
            if f is not None:
                f.close()
