"""Tests for upstream.masking and upstream.corruption: exact counts, seeding, structure, no global RNG use."""
from __future__ import annotations

import pytest
import torch

from upstream import corruption as C
from upstream import masking as M


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def masked_neighbours(mask: torch.Tensor, grid: tuple[int, int]) -> float:
    """Mean number of masked 4-neighbours per masked token, for a freq-major (B, N) mask."""
    m = mask.view(-1, *grid).float()  # (B, F, T)
    padded = torch.nn.functional.pad(m, (1, 1, 1, 1))
    neighbours = padded[:, :-2, 1:-1] + padded[:, 2:, 1:-1] + padded[:, 1:-1, :-2] + padded[:, 1:-1, 2:]
    return float((neighbours * m).sum() / m.sum())


# One call per public mask/corruption function, for the seeding and global-RNG tests.
_FULL = torch.ones(4, 8, 8, dtype=torch.bool)  # (B, H, W) every bin corrupted
_CLIPS = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 1, 8, 8)  # (B, 1, H, W) clip b is constant b
CALLS = {
    "random_mask": lambda g: M.random_mask(4, 512, 400, generator=g),
    "cluster_mask": lambda g: M.cluster_mask(4, (8, 64), 250, generator=g),
    "ssast_mask": lambda g: M.ssast_mask(4, (8, 64), 400, generator=g),
    "chunk_mask": lambda g: M.chunk_mask(4, (8, 20), generator=g),
    "mae_random_mask": lambda g: M.mae_random_mask(4, 512, 0.75, generator=g),
    "gmml_block_mask": lambda g: C.gmml_block_mask(2, 64, 32, generator=g),
    "gmml_corrupt_noise": lambda g: C.gmml_corrupt(_CLIPS, _FULL, mode="noise", generator=g),
    "gmml_corrupt_alien": lambda g: C.gmml_corrupt(_CLIPS, _FULL, mode="alien", generator=g),
    "asit_corrupt": lambda g: C.asit_corrupt(torch.randn(4, 1, 64, 32, generator=gen(9)), generator=g)[0],
    "gmml_block_mask_aligned": lambda g: C.gmml_block_mask(2, 64, 32, align=8, generator=g),
    "asit_corrupt_aligned": lambda g: C.asit_corrupt(torch.randn(4, 1, 64, 32, generator=gen(9)), align=8,
                                                     generator=g)[0],
}


# ---------------------------------------------------------------------------------------------------
# Exact counts
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("num_tokens,num_masked", [(512, 400), (512, 0), (512, 512), (7, 3), (1, 1)])
def test_random_mask_exact_count(num_tokens, num_masked):
    mask = M.random_mask(5, num_tokens, num_masked, generator=gen())
    assert mask.shape == (5, num_tokens) and mask.dtype == torch.bool
    assert (mask.sum(1) == num_masked).all()


@pytest.mark.parametrize("grid,num_masked", [
    ((8, 64), 100), ((8, 64), 250), ((8, 64), 400), ((8, 64), 0), ((1, 512), 400), ((3, 5), 7), ((2, 2), 1),
])
@pytest.mark.parametrize("order", ["freq_major", "time_major"])
def test_cluster_mask_exact_count(grid, num_masked, order):
    mask = M.cluster_mask(6, grid, num_masked, order=order, generator=gen())
    assert mask.shape == (6, grid[0] * grid[1])
    assert (mask.sum(1) == num_masked).all()


def test_cluster_mask_all_tokens_and_unit_clusters():
    assert M.cluster_mask(3, (8, 64), 512, generator=gen()).all()
    # 1x1 clusters still give exact counts (squares reduce to single tokens).
    mask = M.cluster_mask(8, (4, 16), 30, cluster_sizes=(1,), generator=gen())
    assert (mask.sum(1) == 30).all()


@pytest.mark.parametrize("order", ["freq_major", "time_major"])
def test_cluster_mask_hand_computed(order):
    # 2x2 grid, 2x2 squares, 3 masked: the union must exceed 3 ids, i.e. cover all 4 (only start 0 covers
    # id 0), and the official truncation list(set(ids))[:3] keeps the lowest ids: {0, 1, 2}.
    mask = M.cluster_mask(5, (2, 2), 3, cluster_sizes=(2,), order=order, generator=gen())
    assert mask.tolist() == [[True, True, True, False]] * 5
    # MAE-AST at 0.75 on 4 tokens: 4 - max(1, int(0.25 * 4)) = 3 masked, same procedure.
    chunks = M.chunk_mask(2, (2, 2), chunk_sizes=(2,), generator=gen())
    assert chunks.tolist() == [[True, True, True, False]] * 2


def test_mae_ast_num_masked_matches_official_rule():
    assert M.mae_ast_num_masked(512, 0.75) == 384
    assert M.mae_ast_num_masked(296, 0.7) == 296 - int(0.3 * 296)  # 208, where round(0.7 * 296) = 207
    assert M.mae_ast_num_masked(4, 1.0) == 3  # at least one token stays visible
    assert M.mae_ast_num_masked(10, 0.0) == 0


@pytest.mark.parametrize("grid", [(8, 64), (8, 37), (1, 512), (3, 3)])
@pytest.mark.parametrize("shared", [True, False])
def test_chunk_mask_exact_count(grid, shared):
    n = grid[0] * grid[1]
    mask = M.chunk_mask(5, grid, 0.75, shared_across_batch=shared, generator=gen())
    assert (mask.sum(1) == M.mae_ast_num_masked(n, 0.75)).all()


def test_chunk_mask_shared_across_batch():
    shared = M.chunk_mask(6, (8, 64), generator=gen())
    assert (shared == shared[:1]).all()
    shared[0, 0] = ~shared[0, 0]  # rows are independent memory, not views of one row
    assert shared[1, 0] != shared[0, 0]
    per_row = M.chunk_mask(6, (8, 64), shared_across_batch=False, generator=gen())
    assert not (per_row == per_row[:1]).all()


def test_mae_random_mask_exact_count():
    for n, ratio in [(512, 0.75), (100, 0.3), (37, 0.9)]:
        mask = M.mae_random_mask(4, n, ratio, generator=gen())
        assert (mask.sum(1) == M.mae_ast_num_masked(n, ratio)).all()


def test_ssast_mask_dispatch():
    # Frame model (one frequency row): uniform masking, the same draws as random_mask.
    frame = M.ssast_mask(3, (1, 512), 400, generator=gen(3))
    assert torch.equal(frame, M.random_mask(3, 512, 400, generator=gen(3)))
    assert torch.equal(M.frame_mask(3, 512, 400, generator=gen(3)), frame)
    # Patch model: cluster masking on frequency-major ids.
    patch = M.ssast_mask(3, (8, 64), 400, generator=gen(3))
    assert torch.equal(patch, M.cluster_mask(3, (8, 64), 400, order="freq_major", generator=gen(3)))
    forced = M.ssast_mask(3, (8, 64), 400, cluster=False, generator=gen(3))
    assert torch.equal(forced, M.random_mask(3, 512, 400, generator=gen(3)))


# ---------------------------------------------------------------------------------------------------
# Structure
# ---------------------------------------------------------------------------------------------------
def test_cluster_mask_is_clustered():
    grid, k = (8, 64), 100
    clustered = masked_neighbours(M.cluster_mask(64, grid, k, generator=gen()), grid)
    uniform = masked_neighbours(M.random_mask(64, 512, k, generator=gen()), grid)
    # Uniform: about 3.7 neighbours x 99/511 ~ 0.7; 3x3..5x5 squares give well over 2.
    assert uniform < 1.0 and clustered > 2.0


def test_cluster_mask_time_major_squares():
    # The square arithmetic runs on flat ids in the requested order (MAE-AST: time-major, row length
    # n_freq). On a square grid both orders therefore draw the same flat ids, i.e. transposed masks.
    same = M.cluster_mask(4, (16, 16), 60, order="time_major", generator=gen())
    assert torch.equal(same, M.cluster_mask(4, (16, 16), 60, order="freq_major", generator=gen()))
    # On the 8 x 64 grid the time-major squares are still compact in the (freq, time) plane.
    mask = M.cluster_mask(64, (8, 64), 100, order="time_major", generator=gen())  # (B, T*F) ids t*8 + f
    as_freq_major = mask.view(64, 64, 8).transpose(1, 2).reshape(64, -1)
    assert masked_neighbours(as_freq_major, (8, 64)) > 2.0


def test_gmml_coverage_bounds():
    height, width, frac = 592, 128, 0.3
    mask = C.gmml_block_mask(6, height, width, 0.5, 0.7, frac, generator=gen())
    assert mask.shape == (6, height, width) and mask.dtype == torch.bool
    largest_block = (int(height * frac) - 1) * (int(width * frac) - 1)
    area = mask.sum((1, 2))
    assert (area >= 0.5 * height * width).all()
    assert (area < 0.7 * height * width + largest_block).all()


def test_gmml_single_block_is_a_rectangle():
    # A tiny target is crossed by the first block: the mask is exactly one filled rectangle.
    mask = C.gmml_block_mask(16, 64, 48, 1e-6, 1e-6, generator=gen())
    for m in mask:  # 16 tiny masks; the loop is in the test only
        rows, cols = m.any(1).nonzero().squeeze(1), m.any(0).nonzero().squeeze(1)
        assert m[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].all()
        assert m.sum() == (rows[-1] - rows[0] + 1) * (cols[-1] - cols[0] + 1)


def test_gmml_blocks_added_in_order_until_target():
    # Hand-made blocks on a 4x4 image, target 5 bins: block 0 covers 4, block 1 repeats it (still 4),
    # block 2 brings 8 >= 5 and is the last one added; block 3 is never used.
    top = torch.tensor([[0, 0, 2, 0]])
    left = torch.tensor([[0, 0, 2, 2]])
    size = torch.full((1, 4), 2)
    mask = C._blocks_until_coverage(top, left, size, size, 4, 4, torch.tensor([5.0]))
    expected = torch.zeros(4, 4, dtype=torch.bool)
    expected[:2, :2] = expected[2:, 2:] = True
    assert torch.equal(mask[0], expected)
    # Unreachable target: the union of all candidates is returned (the documented cap).
    mask = C._blocks_until_coverage(top, left, size, size, 4, 4, torch.tensor([16.0]))
    assert mask[0].sum() == 12
    # Many blocks: exercises several 48-block chunks of the first-cover computation.
    g = gen()
    k = 150
    top, left = torch.randint(0, 30, (2, k), generator=g), torch.randint(0, 30, (2, k), generator=g)
    size = torch.ones(2, k, dtype=torch.long)
    mask = C._blocks_until_coverage(top, left, size, size, 32, 32, torch.tensor([1e9, 1e9]))
    brute = torch.zeros(2, 32, 32, dtype=torch.bool)
    brute[torch.arange(2)[:, None], top, left] = True
    assert torch.equal(mask, brute)


def _patch_fraction(mask: torch.Tensor, p: int) -> torch.Tensor:
    """Corrupted fraction of each p x p patch of a (B, H, W) mask, H and W multiples of p. (B, H/p, W/p)."""
    B, H, W = mask.shape
    return mask.view(B, H // p, p, W // p, p).float().mean((2, 4))


def test_gmml_aligned_blocks_cover_whole_patches():
    height, width, frac, p = 592, 128, 0.3, 16
    mask = C.gmml_block_mask(8, height, width, 0.5, 0.7, frac, align=p, generator=gen())
    per_patch = _patch_fraction(mask, p)
    assert ((per_patch == 0) | (per_patch == 1)).all()  # every patch fully corrupted or untouched
    # Largest aligned block: each side rounds int(0.3 * side) - 1 to a multiple of the patch.
    largest_block = round((int(height * frac) - 1) / p) * p * round((int(width * frac) - 1) / p) * p
    area = mask.sum((1, 2))
    assert (area >= 0.5 * height * width).all()
    assert (area < 0.7 * height * width + largest_block).all()
    # The free blocks of the default cut through patches.
    free = _patch_fraction(C.gmml_block_mask(8, height, width, 0.5, 0.7, frac, generator=gen()), p)
    assert ((free > 0) & (free < 1)).any()


def test_gmml_aligned_blocks_follow_the_official_rounding():
    # One tiny target: the first block alone is the mask. Its corner sits on the grid and its sides are
    # nonzero multiples of the grid, or reach the image edge.
    for seed in range(20):  # 20 small draws; the loop is in the test only
        m = C.gmml_block_mask(1, 50, 40, 1e-6, 1e-6, align=8, generator=gen(seed))[0]
        rows, cols = m.any(1).nonzero().squeeze(1), m.any(0).nonzero().squeeze(1)
        top, left = int(rows[0]), int(cols[0])
        h, w = int(rows[-1]) - top + 1, int(cols[-1]) - left + 1
        assert top % 8 == 0 and left % 8 == 0
        assert (h % 8 == 0 or top + h == 50) and (w % 8 == 0 or left + w == 40)


def test_asit_corrupt_aligned_branches():
    batch, height, width, p = 8, 64, 48, 8
    x = 10.0 * torch.arange(batch).view(batch, 1, 1) + 1.0 + torch.rand(batch, height, width, generator=gen())
    for prob, (low, high) in [(0.0, (0.5, 0.7)), (1.0, (0.3, 0.3))]:
        out, mask = C.asit_corrupt(x, replace_prob=prob, align=p, generator=gen(3))
        per_patch = _patch_fraction(mask, p)
        assert ((per_patch == 0) | (per_patch == 1)).all()
        assert torch.equal(out[~mask], x[~mask]) and (out[mask] != x[mask]).all()
        largest_block = round((int(height * 0.3) - 1) / p) * p * round((int(width * 0.3) - 1) / p) * p
        area = mask.sum((1, 2))
        assert ((area >= low * height * width) & (area < high * height * width + largest_block)).all()
    # align = 1 is the unaligned default, draw for draw.
    default = C.asit_corrupt(x, generator=gen(5))[1]
    assert torch.equal(C.asit_corrupt(x, align=1, generator=gen(5))[1], default)


def test_gmml_cap_when_candidates_fall_short():
    mask = C.gmml_block_mask(4, 100, 100, 0.9, 0.9, max_blocks=1, generator=gen())
    assert (mask.sum((1, 2)) < 0.9 * 100 * 100).all()  # no error, one block each


def test_gmml_corrupt_zeros_and_noise():
    x = torch.rand(3, 1, 20, 12, generator=gen()) + 1.0  # no zeros in the clean input
    mask = C.gmml_block_mask(3, 20, 12, generator=gen(1))
    zeros = C.gmml_corrupt(x, mask, "zeros")
    assert (zeros[:, 0][mask] == 0).all()
    assert torch.equal(zeros[:, 0][~mask], x[:, 0][~mask])
    noise = C.gmml_corrupt(x[:, 0], mask, "noise", generator=gen())  # (B, H, W) layout too
    assert noise.shape == (3, 20, 12)
    assert torch.equal(noise[~mask], x[:, 0][~mask]) and (noise[mask] != x[:, 0][mask]).all()


def test_gmml_corrupt_alien_comes_from_another_clip():
    batch = 6
    # Clip b holds values in [10 b, 10 b + 1), so a value names the clip it came from.
    x = 10.0 * torch.arange(batch).view(batch, 1, 1, 1) + torch.rand(batch, 1, 16, 8, generator=gen())
    mask = C.gmml_block_mask(batch, 16, 8, generator=gen(1))
    for seed in range(5):
        out = C.gmml_corrupt(x, mask, "alien", generator=gen(seed))
        origin = (out[:, 0] // 10).long()  # (B, H, W)
        own = torch.arange(batch).view(batch, 1, 1).expand_as(origin)
        assert torch.equal(origin[~mask], own[~mask]) and torch.equal(out[:, 0][~mask], x[:, 0][~mask])
        assert (origin[mask] != own[mask]).all()
        # One source clip per row, and its bins at the same positions.
        for b in range(batch):
            src = origin[b][mask[b]].unique()
            assert src.numel() == 1 and torch.equal(out[b, 0][mask[b]], x[src.item(), 0][mask[b]])
    explicit = C.gmml_corrupt(x, mask, "alien", alien_source=torch.tensor([1, 0, 3, 2, 5, 4]))
    assert torch.equal(explicit[0, 0][mask[0]], x[1, 0][mask[0]])
    with pytest.raises(ValueError, match="at least 2 clips"):
        C.gmml_corrupt(x[:1], mask[:1], "alien")


def test_asit_corrupt_branches():
    batch, height, width = 8, 64, 32
    # Clip b holds values in [10 b + 1, 10 b + 2): no zeros, and a value names its clip.
    x = 10.0 * torch.arange(batch).view(batch, 1, 1, 1) + 1.0
    x = x + torch.rand(batch, 1, height, width, generator=gen())
    area = height * width
    largest_block = (int(height * 0.3) - 1) * (int(width * 0.3) - 1)

    zeros, mask = C.asit_corrupt(x, replace_prob=0.0, generator=gen())
    assert zeros.shape == x.shape and mask.shape == (batch, height, width)
    assert (zeros[:, 0][mask] == 0).all() and torch.equal(zeros[:, 0][~mask], x[:, 0][~mask])
    assert ((mask.sum((1, 2)) >= 0.5 * area) & (mask.sum((1, 2)) < 0.7 * area + largest_block)).all()

    alien, mask = C.asit_corrupt(x, replace_prob=1.0, generator=gen())
    assert ((mask.sum((1, 2)) >= 0.3 * area) & (mask.sum((1, 2)) < 0.3 * area + largest_block)).all()
    origin = (alien[:, 0] // 10).long()
    own = torch.arange(batch).view(batch, 1, 1).expand_as(origin)
    assert (origin[mask] != own[mask]).all() and torch.equal(alien[:, 0][~mask], x[:, 0][~mask])

    mixed, mask = C.asit_corrupt(x, generator=gen(4))
    is_zero = (mixed[:, 0] == 0) & mask
    zero_rows = is_zero.flatten(1).any(1)
    assert 0 < int(zero_rows.sum()) < batch  # both branches occur at p = 0.5 for this seed
    # A single clip has no alien source: it is zero-filled.
    single, mask = C.asit_corrupt(x[:1, 0], replace_prob=1.0, generator=gen())
    assert single.shape == (1, height, width) and (single[mask] == 0).all()


# ---------------------------------------------------------------------------------------------------
# Dropping masked tokens
# ---------------------------------------------------------------------------------------------------
def test_visible_indices_round_trip():
    batch, n, d = 4, 40, 3
    mask = M.random_mask(batch, n, 30, generator=gen())
    x = torch.randn(batch, n, d, generator=gen())
    ids_keep, ids_restore = M.visible_indices(mask)
    assert ids_keep.shape == (batch, 10) and ids_restore.shape == (batch, n)
    assert (ids_keep.diff(dim=1) > 0).all()  # increasing token order
    visible = M.gather_tokens(x, ids_keep)  # (B, 10, D)
    assert torch.equal(visible, x[~mask].view(batch, 10, d))
    mask_tokens = torch.full((batch, 30, d), float("nan"))
    restored = M.gather_tokens(torch.cat([visible, mask_tokens], 1), ids_restore)
    assert torch.equal(restored[~mask], x[~mask]) and restored[mask].isnan().all()


def test_indices_with_a_known_count_match_the_checked_ones_and_nonzero():
    mask = M.cluster_mask(3, (8, 12), 50, generator=gen())
    for a, b in zip(M.visible_indices(mask), M.visible_indices(mask, num_masked=50)):
        assert torch.equal(a, b)
    assert torch.equal(M.masked_indices(mask, 50), mask.nonzero()[:, 1].view(3, 50))


def test_visible_indices_rejects_unequal_counts():
    mask = torch.zeros(2, 5, dtype=torch.bool)
    mask[0, :2] = True
    mask[1, :3] = True
    with pytest.raises(ValueError, match=r"\[2, 3\]"):
        M.visible_indices(mask)


# ---------------------------------------------------------------------------------------------------
# Seeding, global RNG, devices, errors
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(CALLS))
def test_same_seed_same_result_different_seed_different(name):
    call = CALLS[name]
    assert torch.equal(call(gen(1)), call(gen(1)))
    assert not torch.equal(call(gen(1)), call(gen(2)))


@pytest.mark.parametrize("name", sorted(CALLS))
def test_global_rng_untouched(name):
    torch.manual_seed(123)
    state = torch.get_rng_state()
    CALLS[name](gen(1))
    CALLS[name](None)  # unseeded: a fresh generator, not the global one
    assert torch.equal(torch.get_rng_state(), state)


def test_unseeded_calls_differ():
    assert not torch.equal(M.random_mask(2, 512, 256), M.random_mask(2, 512, 256))


def test_device_argument():
    mask = M.cluster_mask(2, (8, 64), 100, generator=gen(), device="cpu")
    assert mask.device == torch.device("cpu")
    assert torch.equal(mask, M.cluster_mask(2, (8, 64), 100, generator=gen()))


@pytest.mark.parametrize("call,message", [
    (lambda: M.random_mask(2, 10, 11), "num_masked must be an integer in \\[0, num_tokens=10\\], got 11"),
    (lambda: M.cluster_mask(2, (8, 64), 513), "got 513"),
    (lambda: M.cluster_mask(2, (8, 64), 10, order="row_major"), "'row_major'"),
    (lambda: M.cluster_mask(2, (8, 0), 0), r"\(8, 0\)"),
    (lambda: M.cluster_mask(2, (8, 64), 10, cluster_sizes=(0,)), r"\(0,\)"),
    (lambda: M.chunk_mask(2, (8, 64), mask_ratio=1.5), "mask_ratio must be in \\[0, 1\\], got 1.5"),
    (lambda: C.gmml_block_mask(2, 10, 10, 0.7, 0.5), "0.7 > 0.5"),
    (lambda: C.gmml_corrupt(torch.zeros(2, 4, 4), torch.zeros(2, 4, 4, dtype=torch.bool), "blur"), "'blur'"),
    (lambda: C.gmml_corrupt(torch.zeros(2, 4, 4), torch.zeros(2, 4, 5, dtype=torch.bool)), r"\(2, 4, 5\)"),
    (lambda: C.asit_corrupt(torch.zeros(2, 3, 4, 4)), r"\(2, 3, 4, 4\)"),
    (lambda: C.gmml_block_mask(2, 10, 10, align=0), "align must be a positive integer, got 0"),
    (lambda: C.asit_corrupt(torch.zeros(2, 4, 4), align=2.5), "got 2.5"),
])
def test_errors_name_the_bad_value(call, message):
    with pytest.raises(ValueError, match=message):
        call()
