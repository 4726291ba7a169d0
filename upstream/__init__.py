"""astbench upstreams: SSAST, MAE-AST and ASiT behind one s3prl-style contract.

>>> import upstream
>>> model = upstream.load("ssast_patch_400", ckpt="SSAST-Base-Patch-400.pth")
>>> out = model([wav])          # list of 1-D float waveforms at model.sample_rate
>>> out["hidden_states"][-1].shape, out["clip"].shape, out["lengths"]

Each family is one module (``ssast.py``, ``mae_ast.py``, ``asit.py``) ending in its
:class:`~upstream.registry.FamilySpec`; ``upstream.get_family(name)`` and ``upstream.families()`` find them.
"""
from . import asit, mae_ast, ssast  # noqa: F401  (each registers its family and its upstreams)
from .config import UpstreamConfig
from .interface import Upstream
from .registry import (
    describe_upstreams,
    families,
    family_of,
    get_family,
    list_upstreams,
    load,
    register_upstream,
)

__all__ = ["Upstream", "UpstreamConfig", "load", "list_upstreams", "describe_upstreams", "register_upstream",
    "families", "family_of", "get_family"]
