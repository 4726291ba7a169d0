"""Progress bars for the long downstream steps: training, evaluation and building the feature cache.

A bar is drawn only when stderr is a terminal (and on the process that writes, rank 0 under ``torchrun``), so
logs, pipes and CI output carry the plain lines alone; ``TQDM_DISABLE=1`` turns bars off anywhere.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable

from tqdm.auto import tqdm


def progress(iterable: Iterable | None = None, *, total: int | None = None, desc: str = "", initial: int = 0,
             unit: str = "it", enabled: bool = True) -> tqdm:
    """A ``tqdm`` bar over ``iterable`` (or updated by hand), silent unless stderr is a terminal and
    ``enabled``."""
    silent = not (enabled and sys.stderr.isatty()) or os.environ.get("TQDM_DISABLE", "") not in ("", "0")
    return tqdm(iterable, total=total, desc=desc, initial=initial, unit=unit, leave=False, dynamic_ncols=True,
                disable=silent)


def printer(bar: tqdm, log: Callable[[str], None] = print) -> Callable[[str], None]:
    """``log``, or, while ``bar`` is drawn and ``log`` is plain ``print``, ``bar.write`` (a line above the bar
    instead of one broken across it)."""
    return bar.write if (log is print and not bar.disable) else log
