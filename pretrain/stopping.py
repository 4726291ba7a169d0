"""What ends a pretraining run early: SIGTERM / SIGINT (caught, so the step under way finishes and
``last.ckpt`` is saved) and a non-finite loss, and the exceptions that say so to the caller."""
from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Any

__all__ = ["NonFiniteLossError", "PretrainStopped", "StopFlag"]


class NonFiniteLossError(RuntimeError):
    """The loss became NaN/inf; the last good checkpoint (if any) is left as it was."""

    def __init__(self, step: int, value: float, out_dir: str, kept_step: int | None = None):
        self.step, self.kept_step = step, kept_step
        if kept_step is None:
            kept = (f"No checkpoint exists yet in {out_dir} (none was due before step {step}): lower "
                    f"optim.lr or fix the data and start the run again")
        else:
            kept = (f"{Path(out_dir) / 'last.ckpt'} of step {kept_step}, the last one saved before the loss "
                    f"became non-finite, was kept: continue from it with --resume --allow-config-change "
                    f"-o optim.lr=LOWER (or after fixing the data)")
        super().__init__(f"non-finite loss {value} at step {step}; stopping. {kept}")


class PretrainStopped(Exception):
    """SIGTERM / SIGINT (here or on a peer rank) stopped the run: ``last.ckpt`` holds the step reached and no
    ``upstream.pt`` was written; ``run(cfg, resume=True)`` continues exactly."""

    def __init__(self, signal_name: str, step: int, max_steps: int, out_dir: str):
        self.signal_name, self.step, self.max_steps, self.out_dir = signal_name, step, max_steps, out_dir
        # a peer's signal reaches this rank as a flag, not a signal: counted as SIGTERM (exit code 143)
        self.signum = int(getattr(signal.Signals, signal_name, signal.SIGTERM))
        super().__init__(f"stopped by {signal_name} at step {step} of {max_steps}: last.ckpt saved in "
                         f"{out_dir}, no upstream.pt written")


class StopFlag:
    """SIGTERM / SIGINT set a flag; the loop finishes the step under way, checkpoints and returns."""

    def __init__(self):
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self):
        if hasattr(signal, "SIGTERM") and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.signal = signum
        signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))  # a second signal acts at once

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
