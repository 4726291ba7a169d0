"""astbench: the distribution's own namespace, next to the ``upstream``, ``downstream`` and ``benchmark``
packages.

It holds the adapters that face outside this repository (shipped configs and tables are found through
:mod:`common.resources`):

* :mod:`astbench.hear`: the HEAR 2021 API (``hear-validator astbench.hear --model ssast_patch_400``);
* :mod:`astbench.xares`: an X-ARES audio encoder (``ASTBenchEncoder``);
* :mod:`astbench.s3prl`: s3prl both ways, an ``UpstreamExpert`` shim and hub entries for s3prl's runner, and
  the adapter behind ``run_downstream.py -u s3prl:NAME``.

Importing this package imports nothing heavy; each module is imported on its own.
"""
from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("astbench")
except PackageNotFoundError:  # a checkout that was never installed
    __version__ = "0.1.0+checkout"
