"""astbench upstreams: SSAST, MAE-AST and ASiT behind one s3prl-style contract.

>>> import upstream
>>> model = upstream.load("ssast_patch_400", ckpt="SSAST-Base-Patch-400.pth")
>>> out = model([wav])          # list of 1-D float waveforms at model.sample_rate
>>> out["hidden_states"][-1].shape, out["clip"].shape, out["lengths"]
"""
from . import asit, mae_ast, ssast  # noqa: F401  (each registers its builders)
from .interface import Upstream, UpstreamConfig
from .registry import describe_upstreams, list_upstreams, load, register_upstream

__all__ = ["Upstream", "UpstreamConfig", "load", "list_upstreams", "describe_upstreams", "register_upstream"]
