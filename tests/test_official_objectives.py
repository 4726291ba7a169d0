"""The three pretraining objectives reproduce one official training step loss for loss and gradient for
gradient (golden fixtures in ``shared/fixtures/objectives``, replayed by ``tests/official_objectives.py``)."""
from __future__ import annotations

import official_objectives as oo
import pytest
import torch
from conftest import FIXTURES_DIR, fixture_path

from upstream import asit, mae_ast

SHARED = ("ssast_patch_objective.pt", "maeast_patch_objective.pt", "asit_a_objective.pt")
# every objective fixture in the folder (a new configuration made the same way is picked up), at least the
# shared
FIXTURES = sorted({*SHARED, *(p.name for p in (FIXTURES_DIR / "objectives").glob("*_objective.pt"))})


@pytest.fixture(scope="module", params=FIXTURES)
def fixture(request):
    return fixture_path("objectives", request.param)


def test_every_loss_and_gradient_norm_is_within_the_readme_tolerance(fixture):
    result = oo.compare(fixture)
    ref = torch.load(fixture, weights_only=False)
    # every official parameter is compared
    assert {f"grad/{name}" for name in ref["grad_norm"]} <= set(result)
    assert "loss/total" in result and sum("loss" in k for k in result) >= 2
    assert all(("loss" in k) != ("grad" in k) for k in result)
    bad = {k: v for k, v in result.items() if not oo.within(*v)}
    assert not bad, (f"{len(bad)} of {len(result)} quantities out of tolerance, "
                     f"e.g. {dict(list(bad.items())[:5])}")


def test_intermediate_tensors_match(fixture):
    """Masks, views and index lists exactly; what enters each loss within the README's atol (for debugging:
    the first mismatch in data-flow order names the stage that differs)."""
    r = oo.replay(fixture)
    assert r.tensors
    for name, (ours, ref, atol) in r.tensors.items():
        assert ours.shape == ref.shape, f"{name}: shape {tuple(ours.shape)} vs official {tuple(ref.shape)}"
        diff = (ours.double() - ref.double()).abs().max().item()
        assert diff <= atol, f"{name}: max |ours - official| = {diff:.3g} > {atol:.3g}"


def test_the_comparison_catches_a_transposed_info_nce(monkeypatch):
    """MAE-AST normalises over targets; SSAST's direction (over predictions) gives 6.5946, not 12.2348."""
    path = fixture_path("objectives", "maeast_patch_objective.pt")
    real = mae_ast.info_nce
    monkeypatch.setattr(mae_ast, "info_nce", lambda pred, target, over: real(pred, target, "predictions"))
    result = oo.compare(path)
    r = oo.replay(path)
    assert r.losses["loss/info_nce"][0] == pytest.approx(6.5946, abs=1e-4)
    assert r.losses["loss/info_nce"][1] == pytest.approx(12.2348, abs=1e-4)
    assert not oo.within(*result["loss/info_nce"]) and not oo.within(*result["loss/total"])


def test_the_comparison_catches_a_missing_reconstruction_gelu(monkeypatch):
    """ASiT's RECHead has a GELU after its bottleneck Linear; without it the loss moves by ~1e-4 relative
    and the reconstruction head's gradients leave their tolerance."""
    path = fixture_path("objectives", "asit_a_objective.pt")
    init = asit.RECHead.__init__

    def without_last_gelu(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.mlp = self.mlp[:5]

    monkeypatch.setattr(asit.RECHead, "__init__", without_last_gelu)
    result = oo.compare(path)
    assert not oo.within(*result["loss/recon"])
    assert not oo.within(*result["grad/module.head_recons.mlp.4.bias"])
