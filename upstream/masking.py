"""Masking and corruption for the three pretraining recipes, as pure, vectorised, seeded functions.

* SSAST (Gong et al., "SSAST: Self-Supervised Audio Spectrogram Transformer", AAAI 2022;
  YuanGongND/ssast ``src/models/ast_models.py`` ``gen_maskid_patch`` / ``gen_maskid_frame``):
  :func:`cluster_mask` for the patch model, :func:`random_mask` for the frame model, :func:`ssast_mask`
  picks between them.
* MAE-AST (Baade et al., "MAE-AST: Masked Autoencoding Audio Spectrogram Transformer", Interspeech
  2022; AlanBaade/MAE-AST-Public ``mae_ast/models/mae_ast.py`` ``forward_mask``): :func:`chunk_mask`
  for the patch model, :func:`mae_random_mask` for the frame model, :func:`visible_indices` and
  :func:`gather_tokens` to drop the masked tokens before the encoder (the argsort trick of
  facebookresearch/mae ``random_masking``).
* ASiT (Atito et al., "ASiT: Audio Spectrogram vIsion Transformer for General Audio Representation",
  arXiv v1; Sara-Ahmed/ASiT ``data_transformations.py`` ``GMML_drop_rand_patches``,
  ``utils.py`` ``GMML_replace_list``): :func:`gmml_block_mask`, :func:`gmml_corrupt` and
  :func:`asit_corrupt`, which work on spectrogram bins rather than tokens.

Conventions shared by every function:

* Masks are bool tensors and **True means masked** (hidden from the encoder, or corrupted).
* A token grid is given as ``(n_freq, n_time)``. ``order='freq_major'`` numbers token ``(f, t)`` as
  ``f * n_time + t`` (SSAST); ``order='time_major'`` numbers it ``t * n_freq + f`` (MAE-AST, ASiT),
  matching :mod:`upstream.tokenizer`.
* Randomness comes only from the ``generator`` argument. Numbers are drawn on the generator's device
  and the result is moved to ``device`` (default: the generator's device), so a CPU generator gives
  the same mask on any device. ``generator=None`` uses a fresh generator seeded from OS entropy, so
  torch's global RNG is never read or advanced. There is no module state.
* There is no Python loop over tokens, bins or samples; the only loops run over a bounded number of
  rounds or chunks of candidate squares / rectangles.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from upstream.tokenizer import TOKEN_ORDERS

__all__ = [
    "asit_corrupt",
    "chunk_mask",
    "cluster_mask",
    "frame_mask",
    "gather_tokens",
    "gmml_block_mask",
    "gmml_corrupt",
    "mae_ast_num_masked",
    "mae_random_mask",
    "masked_indices",
    "random_mask",
    "ssast_mask",
    "visible_indices",
]

# Cluster masking draws candidate squares in rounds until every row has enough; this bounds the loop.
# A round holds 3x the squares needed without overlap, so even num_masked = N (a coupon collector that
# waits for token 0, covered by 1 start in N) ends in a few rounds; 1000 is never reached in practice.
_MAX_SQUARE_ROUNDS = 1000
# Rectangles rasterised per bmm in gmml_block_mask: each gets a distinct power-of-two weight, and a
# float64 mantissa holds 53 bits exactly.
_BLOCKS_PER_CHUNK = 48


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------
def _rng(generator: torch.Generator | None,
         device: torch.device | str | None) -> tuple[torch.Generator, torch.device]:
    """Generator to draw from and device to return on (see the module conventions)."""
    if device is not None:
        out_device = torch.device(device)
    elif generator is not None:
        out_device = generator.device
    else:
        out_device = torch.device("cpu")
    if generator is None:
        generator = torch.Generator(device=out_device)
        generator.seed()  # OS entropy: unseeded calls stay random without touching the global RNG
    return generator, out_device


def _check_grid(grid: Sequence[int]) -> tuple[int, int]:
    if len(grid) != 2 or any(int(g) != g or g < 1 for g in grid):
        raise ValueError(f"grid must be (n_freq, n_time) with positive integers, got {tuple(grid)}")
    return int(grid[0]), int(grid[1])


def _check_order(order: str) -> None:
    if order not in TOKEN_ORDERS:
        raise ValueError(f"order must be one of {TOKEN_ORDERS}, got {order!r}")


def _check_batch(batch: int) -> None:
    if int(batch) != batch or batch < 1:
        raise ValueError(f"batch must be a positive integer, got {batch}")


def _check_num_masked(num_masked: int, num_tokens: int) -> None:
    if int(num_masked) != num_masked or not 0 <= num_masked <= num_tokens:
        raise ValueError(f"num_masked must be an integer in [0, num_tokens={num_tokens}], got {num_masked}")


def _check_ratio(name: str, ratio: float) -> None:
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {ratio}")


def _check_align(align: int) -> None:
    if int(align) != align or align < 1:
        raise ValueError(f"align must be a positive integer, got {align}")


# --------------------------------------------------------------------------------------------------
# Uniform random masking (SSAST frame model, MAE-AST frame model)
# --------------------------------------------------------------------------------------------------
def random_mask(batch: int, num_tokens: int, num_masked: int, generator: torch.Generator | None = None,
                device: torch.device | str | None = None) -> torch.Tensor:
    """Mask exactly ``num_masked`` tokens per row, uniformly at random.

    A per-row argsort of uniform noise, as facebookresearch/mae ``random_masking``. It has the same
    distribution as SSAST ``gen_maskid_frame`` (``random.sample(range(512), mask_size)``) and as the
    per-sample shuffle of MAE-AST ``mask_type='random_mask'``.

    Args:
        batch: number of rows B.
        num_tokens: tokens per row N.
        num_masked: masked tokens per row, in [0, N] (``mask_patch`` in YuanGongND/ssast).
        generator: source of randomness (see module conventions).
        device: device of the returned mask.

    Returns:
        (B, N) bool mask, True = masked, exactly ``num_masked`` True per row.
    """
    _check_batch(batch)
    if int(num_tokens) != num_tokens or num_tokens < 1:
        raise ValueError(f"num_tokens must be a positive integer, got {num_tokens}")
    _check_num_masked(num_masked, num_tokens)
    gen, out_device = _rng(generator, device)
    noise = torch.rand(batch, num_tokens, generator=gen, device=gen.device)  # (B, N)
    ids_shuffle = noise.argsort(dim=1)  # (B, N) a uniform random permutation per row
    mask = torch.zeros(batch, num_tokens, dtype=torch.bool, device=gen.device)
    mask.scatter_(1, ids_shuffle[:, :num_masked], True)
    return mask.to(out_device)


# SSAST's frame model masks uniformly at random over the frames (``gen_maskid_frame``).
frame_mask = random_mask


# --------------------------------------------------------------------------------------------------
# Cluster / chunk masking (SSAST patch model, MAE-AST patch model)
# --------------------------------------------------------------------------------------------------
def cluster_mask(batch: int, grid: Sequence[int], num_masked: int,
                 cluster_sizes: Sequence[int] = (3, 4, 5), order: str = "freq_major",
                 generator: torch.Generator | None = None,
                 device: torch.device | str | None = None) -> torch.Tensor:
    """SSAST cluster masking: union of c x c squares of tokens, exactly ``num_masked`` per row.

    Reproduces YuanGongND/ssast ``gen_maskid_patch``, which MAE-AST ``chunk_mask`` copies:

    1. per row, a cluster side ``c`` is drawn uniformly from ``cluster_sizes`` (``randrange(3) + 3``);
    2. squares are added one at a time: a start id ``s`` uniform over all N ids, and the square is the
       flat ids ``s + i * stride + j`` for ``i, j < c``, ids ``>= N`` dropped. ``stride`` is the row
       length of the flat order (``n_time`` for freq_major, ``n_freq`` for time_major), so near the end
       of a row a square wraps onto the next row, exactly as the official flat-id arithmetic does;
    3. squares are added while the union holds ``<= num_masked`` ids (i.e. until it exceeds it);
    4. the union is truncated to ``num_masked`` ids. We keep the **lowest** ids. The official
       ``list(set(ids))[:n]`` keeps the first ids in CPython's hash-table order, slot ``id % table_size``:
       that is increasing order whenever the table has at least N slots. The table grows 8 -> 32 -> 128
       -> 512 -> 2048 slots at 5, 19, 77, 307 ids, so this holds for every recipe of the papers (100 /
       250 / 400 of 512; MAE-AST 384 of 512) and every ``*_mini`` config; a small union over a larger
       grid (e.g. 40 of 512 in the golden fixture, a 128-slot table) keeps other ids.

    Vectorised: every row draws a round of candidate squares at once, each token is scored by the
    index of the first square covering it (``scatter_reduce`` amin), and step 3 becomes "tokens whose
    score is at most the index of the square that pushed the count past ``num_masked``". Rounds repeat
    (bounded) only while some row has not reached the count.

    Deliberate deviations: SSAST also drops id 0 (``mask_cand > 0``, an off-by-one that MAE-AST does not
    have), so token 0 is never masked there; we keep it maskable. When ``num_masked == N`` the official
    loop never ends; here it stops once every token is covered.

    Args:
        batch: number of rows B.
        grid: token grid ``(n_freq, n_time)``; for SSAST base 16x16 patches on 128 x 1024, ``(8, 64)``.
        num_masked: masked tokens per row, in [0, N] (``mask_patch``: 400 default, ablations 100 / 250).
        cluster_sizes: candidate square sides, one drawn per row (``cluster`` in ``gen_maskid_patch``).
        order: flat token order of the returned mask and of the square arithmetic.
        generator: source of randomness (see module conventions).
        device: device of the returned mask.

    Returns:
        (B, N) bool mask in ``order``, True = masked, exactly ``num_masked`` True per row.
    """
    _check_batch(batch)
    n_freq, n_time = _check_grid(grid)
    _check_order(order)
    num_tokens = n_freq * n_time
    _check_num_masked(num_masked, num_tokens)
    sizes = tuple(cluster_sizes)
    if not sizes or any(int(c) != c or c < 1 for c in sizes):
        raise ValueError(f"cluster_sizes must be positive integers, got {sizes}")
    gen, out_device = _rng(generator, device)
    dev = gen.device
    if num_masked == 0:
        return torch.zeros(batch, num_tokens, dtype=torch.bool, device=out_device)

    # Offsets of a c x c square in flat ids, padded to the largest side; `in_square` marks the
    # offsets that belong to each candidate side, so rows with different c share one tensor.
    row_stride = n_time if order == "freq_major" else n_freq
    c_max = max(sizes)
    steps = torch.arange(c_max, device=dev)
    offsets = (steps[:, None] * row_stride + steps[None, :]).flatten()  # (C*C,)
    sides = torch.tensor(sizes, device=dev)[:, None, None]  # (S, 1, 1)
    in_square = ((steps[:, None] < sides) & (steps[None, :] < sides)).flatten(1)  # (S, C*C)
    size_idx = torch.randint(len(sizes), (batch,), generator=gen, device=dev)  # (B,)
    row_in_square = in_square[size_idx]  # (B, C*C)

    # The official loop stops once the union exceeds num_masked; with every token masked it can only
    # reach N.
    target = min(num_masked + 1, num_tokens)
    per_round = math.ceil(3 * target / min(sizes) ** 2) + 8
    never = torch.iinfo(torch.long).max
    # First square covering each token; column N collects the dropped (out-of-range) ids.
    first_square = torch.full((batch, num_tokens + 1), never, dtype=torch.long, device=dev)  # (B, N+1)
    for round_idx in range(_MAX_SQUARE_ROUNDS):
        starts = torch.randint(num_tokens, (batch, per_round), generator=gen, device=dev)  # (B, K)
        ids = starts[:, :, None] + offsets  # (B, K, C*C)
        keep = row_in_square[:, None, :] & (ids < num_tokens)
        ids = torch.where(keep, ids, num_tokens)
        square_idx = round_idx * per_round + torch.arange(per_round, device=dev)  # (K,)
        first_square.scatter_reduce_(1, ids.flatten(1), square_idx[None, :, None].expand_as(ids).flatten(1),
                                     reduce="amin")
        num_squares = (round_idx + 1) * per_round
        score = first_square[:, :num_tokens].clamp(max=num_squares)  # (B, N); num_squares = uncovered
        new_per_square = torch.zeros(batch, num_squares + 1, dtype=torch.long, device=dev)
        new_per_square.scatter_add_(1, score, torch.ones_like(score))
        union_size = new_per_square[:, :num_squares].cumsum(1)  # (B, K_total) after each square
        if bool((union_size[:, -1] >= target).all()):
            break
    else:  # pragma: no cover - needs ~1000 rounds of bad luck
        raise RuntimeError(f"cluster_mask could not cover {target} tokens of grid {tuple(grid)}")

    last_square = (union_size < target).sum(1, keepdim=True)  # (B, 1) the square that crossed the target
    union = score <= last_square  # (B, N)
    mask = union & (union.cumsum(1) <= num_masked)  # keep the lowest ids, as list(set(...))[:n]
    return mask.to(out_device)


def ssast_mask(batch: int, grid: Sequence[int], num_masked: int, cluster: bool | None = None,
               cluster_sizes: Sequence[int] = (3, 4, 5), generator: torch.Generator | None = None,
               device: torch.device | str | None = None) -> torch.Tensor:
    """SSAST pretraining mask: cluster masking for patch models, uniform for frame models.

    The official rule is ``cluster = (num_mel_bins != fshape)``, i.e. cluster masking whenever the
    token grid has more than one frequency row. SSAST tokens are frequency-major.

    Args:
        batch: number of rows B.
        grid: token grid ``(n_freq, n_time)``: ``(8, 64)`` for the patch model, ``(1, 512)`` for frames.
        num_masked: masked tokens per row (``mask_patch``).
        cluster: force cluster (True) or uniform (False) masking; None applies the official rule.
        cluster_sizes: candidate square sides for cluster masking.
        generator: source of randomness (see module conventions).
        device: device of the returned mask.

    Returns:
        (B, N) bool mask, frequency-major, True = masked, exactly ``num_masked`` True per row.
    """
    n_freq, n_time = _check_grid(grid)
    if cluster is None:
        cluster = n_freq > 1
    if cluster:
        return cluster_mask(batch, (n_freq, n_time), num_masked, cluster_sizes, "freq_major", generator,
                            device)
    return random_mask(batch, n_freq * n_time, num_masked, generator, device)


def mae_ast_num_masked(num_tokens: int, mask_ratio: float) -> int:
    """Masked-token count of MAE-AST: ``N - max(1, int((1 - mask_ratio) * N))``.

    This is ``forward_mask``'s rule (at least one token stays visible). It equals ``round(ratio * N)``
    whenever ``ratio * N`` is an integer, e.g. 384 of 512 at the default 0.75.

    Args:
        num_tokens: tokens per row N.
        mask_ratio: ``random_mask_prob`` in MAE-AST, in [0, 1].
    """
    _check_ratio("mask_ratio", mask_ratio)
    if int(num_tokens) != num_tokens or num_tokens < 1:
        raise ValueError(f"num_tokens must be a positive integer, got {num_tokens}")
    return num_tokens - max(1, int((1.0 - mask_ratio) * num_tokens))


def mae_random_mask(batch: int, num_tokens: int, mask_ratio: float = 0.75,
                    generator: torch.Generator | None = None,
                    device: torch.device | str | None = None) -> torch.Tensor:
    """MAE-AST frame-model mask: uniform per row, :func:`mae_ast_num_masked` tokens each.

    Args:
        batch: number of rows B.
        num_tokens: tokens per row N.
        mask_ratio: ``random_mask_prob`` (0.75 in the released checkpoints).
        generator: source of randomness (see module conventions).
        device: device of the returned mask.

    Returns:
        (B, N) bool mask, True = masked, the same count in every row.
    """
    return random_mask(batch, num_tokens, mae_ast_num_masked(num_tokens, mask_ratio), generator, device)


def chunk_mask(batch: int, grid: Sequence[int], mask_ratio: float = 0.75,
               chunk_sizes: Sequence[int] = (3, 4, 5), order: str = "time_major",
               shared_across_batch: bool = True, generator: torch.Generator | None = None,
               device: torch.device | str | None = None) -> torch.Tensor:
    """MAE-AST patch-model chunk masking.

    MAE-AST ``mask_type='chunk_mask'`` runs SSAST's cluster procedure (:func:`cluster_mask`) on its
    time-major ids (``t_topleft + t_offset + chan_adjust * c_offset`` with ``chan_adjust = n_freq``),
    with no id-0 exclusion, and uses **one mask, and one chunk side, for the whole batch** ("because
    SSAST code is very slow"). The count is :func:`mae_ast_num_masked`, so every row keeps the same
    number of visible tokens.

    Args:
        batch: number of rows B.
        grid: token grid ``(n_freq, n_time)``; ``(8, T // 16)`` for the released patch model.
        mask_ratio: ``random_mask_prob`` (0.75).
        chunk_sizes: candidate chunk sides (``random.randrange(3, 5 + 1)``).
        order: flat token order of the mask and of the chunk arithmetic (MAE-AST: time_major).
        shared_across_batch: True (official) repeats one mask over the batch; False draws one per row.
        generator: source of randomness (see module conventions).
        device: device of the returned mask.

    Returns:
        (B, N) bool mask in ``order``, True = masked, exactly :func:`mae_ast_num_masked` per row.
    """
    _check_batch(batch)
    n_freq, n_time = _check_grid(grid)
    num_masked = mae_ast_num_masked(n_freq * n_time, mask_ratio)
    rows = 1 if shared_across_batch else batch
    mask = cluster_mask(rows, (n_freq, n_time), num_masked, chunk_sizes, order, generator, device)
    return mask.expand(batch, -1).clone() if shared_across_batch else mask


# --------------------------------------------------------------------------------------------------
# Dropping masked tokens (MAE-AST encoder input)
# --------------------------------------------------------------------------------------------------
def visible_indices(mask: torch.Tensor, num_masked: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of the visible tokens, and the permutation that restores token order.

    The argsort trick of facebookresearch/mae: a stable sort of the mask puts the visible ids first
    (in increasing token order), then the masked ids. Append the decoder's mask tokens to the
    encoder's output and gather with ``ids_restore`` to get back the original order.

    Args:
        mask: (B, N) bool, True = masked, the same number of True in every row.
        num_masked: that number, when the caller knows it (MAE-AST does). Given, the row counts are
            trusted, not checked, and the host never waits for the device; None counts them (a sync).

    Returns:
        ids_keep: (B, N_vis) long, visible token ids in increasing order.
        ids_restore: (B, N) long; ``cat([visible, masked], 1)`` gathered with it is in token order.

    Raises:
        ValueError: if ``mask`` is not 2-D bool or (``num_masked`` None) the rows mask different numbers
            of tokens.
    """
    if mask.dim() != 2 or mask.dtype != torch.bool:
        raise ValueError(f"mask must be a (B, N) bool tensor, got {tuple(mask.shape)} {mask.dtype}")
    if num_masked is None:
        counts = mask.sum(1)  # (B,)
        if bool((counts != counts[0]).any()):
            raise ValueError(f"every row must mask the same number of tokens, got counts {counts.tolist()}")
        num_masked = int(counts[0])
    ids_shuffle = torch.argsort(mask.to(torch.uint8), dim=1, stable=True)  # (B, N) visible first
    ids_restore = torch.argsort(ids_shuffle, dim=1)  # (B, N)
    return ids_shuffle[:, :mask.shape[1] - num_masked], ids_restore


def masked_indices(mask: torch.Tensor, num_masked: int) -> torch.Tensor:
    """Ids of the masked tokens in increasing order, ``mask.nonzero()`` per row without its host sync.

    Args:
        mask: (B, N) bool, True = masked, exactly ``num_masked`` True per row (not checked).
        num_masked: M.

    Returns:
        (B, M) long.
    """
    return torch.argsort((~mask).to(torch.uint8), dim=1, stable=True)[:, :num_masked]  # masked first


def gather_tokens(x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Pick tokens by index per row.

    Args:
        x: (B, N, D) tokens.
        ids: (B, K) long indices into N.

    Returns:
        (B, K, D) tokens ``x[b, ids[b, k]]``.
    """
    if x.dim() != 3 or ids.dim() != 2 or ids.shape[0] != x.shape[0]:
        raise ValueError(f"need x (B, N, D) and ids (B, K), got {tuple(x.shape)} and {tuple(ids.shape)}")
    return torch.gather(x, 1, ids.unsqueeze(-1).expand(-1, -1, x.shape[-1]))  # (B, K, D)


# --------------------------------------------------------------------------------------------------
# ASiT GMML corruption (spectrogram bins, not tokens)
# --------------------------------------------------------------------------------------------------
def _blocks_until_coverage(top: torch.Tensor, left: torch.Tensor, block_h: torch.Tensor,
                           block_w: torch.Tensor, height: int, width: int,
                           target: torch.Tensor) -> torch.Tensor:
    """Union of the first blocks, in order, up to the one that brings the area to ``target``.

    This is the official ``while mask.sum() < n_drop_pix: add a block`` loop, run on K candidate blocks
    per row drawn up front. If all K together stay below the target, the union of all K is returned.

    Args:
        top, left, block_h, block_w: (B, K) long block corners and sizes (already clipped to the image).
        height, width: image size H, W.
        target: (B,) float area to reach, in bins.

    Returns:
        (B, H, W) bool mask.
    """
    batch, num_blocks = top.shape
    dev = top.device
    rows = torch.arange(height, device=dev)
    cols = torch.arange(width, device=dev)
    in_rows = (rows >= top[..., None]) & (rows < (top + block_h)[..., None])  # (B, K, H)
    in_cols = (cols >= left[..., None]) & (cols < (left + block_w)[..., None])  # (B, K, W)

    # First block covering each bin, without materialising (B, K, H, W): within a chunk of kc blocks,
    # block j gets weight 2**(kc - 1 - j); the (H, kc) @ (kc, W) product sums the weights of the blocks
    # covering a bin and its highest set bit (frexp's exponent) names the first one. These are integers
    # below 2**53, so float64 sums them exactly in any order (also on GPU, where TF32 is float32 only).
    first_block = torch.full((batch, height * width), num_blocks, dtype=torch.long, device=dev)  # (B, HW)
    for k0 in range(0, num_blocks, _BLOCKS_PER_CHUNK):
        k1 = min(k0 + _BLOCKS_PER_CHUNK, num_blocks)
        weights = 2.0 ** torch.arange(k1 - k0 - 1, -1, -1, device=dev, dtype=torch.float64)  # (kc,)
        rows_w = in_rows[:, k0:k1].to(torch.float64) * weights[:, None]  # (B, kc, H)
        hits = torch.bmm(rows_w.transpose(1, 2), in_cols[:, k0:k1].to(torch.float64)).flatten(1)  # (B, HW)
        _, exponent = torch.frexp(hits)
        chunk_first = k1 - exponent.long()  # (B, HW), meaningful where hits > 0
        first_block = torch.where(hits > 0, torch.minimum(first_block, chunk_first), first_block)
        # Area after each block so far; later chunks cannot change it for blocks < k1.
        new_per_block = torch.zeros(batch, k1 + 1, dtype=torch.long, device=dev)
        new_per_block.scatter_add_(1, first_block.clamp(max=k1), torch.ones_like(first_block))
        area = new_per_block[:, :k1].cumsum(1)  # (B, k1)
        if bool((area[:, -1] >= target).all()):
            break
    last_block = (area < target[:, None]).sum(1, keepdim=True).clamp(max=num_blocks - 1)  # (B, 1)
    return (first_block <= last_block).view(batch, height, width)


def _block_sides(start: torch.Tensor, extent: int, max_block_frac: float, align: int,
                 gen: torch.Generator) -> torch.Tensor:
    """Block sides along one axis of length ``extent`` for blocks starting at ``start`` (B, K).

    Official: ``round(min(randint(align, int(0.3 * extent)), extent - start) / align) * align``, with
    numpy's exclusive upper bound and Python's round (half to even, as ``torch.round``), then cut at the
    image edge as the slice does. With ``align = 1``: uniform in ``[1, int(0.3 * extent) - 1]``, clipped.
    max() keeps tiny images valid.
    """
    high = max(int(extent * max_block_frac), align + 1)
    side = torch.randint(align, high, tuple(start.shape), generator=gen, device=gen.device)
    side = torch.minimum(side, extent - start)
    if align > 1:
        side = torch.minimum(torch.round(side / align).long() * align, extent - start)
    return side


def _gmml_mask_for_target(target_frac: torch.Tensor, height: int, width: int, max_block_frac: float,
                          max_blocks: int, gen: torch.Generator, align: int = 1) -> torch.Tensor:
    """GMML block mask with a per-row target fraction; draws on ``gen.device``. (B, H, W) bool."""
    shape = (target_frac.shape[0], max_blocks)
    # The official draws row, column, height, width per block; drawing each for all K blocks at once
    # changes the order of the draws, not their law.
    top = torch.randint(0, max(height - align, 1), shape, generator=gen, device=gen.device) // align * align
    left = torch.randint(0, max(width - align, 1), shape, generator=gen, device=gen.device) // align * align
    block_h = _block_sides(top, height, max_block_frac, align, gen)
    block_w = _block_sides(left, width, max_block_frac, align, gen)
    return _blocks_until_coverage(top, left, block_h, block_w, height, width, target_frac * (height * width))


def gmml_block_mask(batch: int, height: int, width: int, min_ratio: float = 0.5, max_ratio: float = 0.7,
                    max_block_frac: float = 0.3, max_blocks: int = 256, align: int = 1,
                    generator: torch.Generator | None = None,
                    device: torch.device | str | None = None) -> torch.Tensor:
    """GMML random-block mask over spectrogram bins (ASiT ``GMML_drop_rand_patches``).

    Per row a target area ``U(min_ratio, max_ratio) * H * W`` is drawn; rectangles are added in order
    until the masked area first reaches it, the last one being the block that crossed it, as the
    official loop. With ``align = 1`` (the official ``drop_align`` default) each rectangle has its corner
    uniform in ``[0, H-2] x [0, W-2]`` and sides uniform in ``[1, int(max_block_frac * H) - 1] x
    [1, int(max_block_frac * W) - 1]`` (numpy's exclusive upper bound), clipped to the image: blocks are
    not aligned to patches. With ``align = p`` (``drop_align = 16``) corners and sides are snapped to
    multiples of ``p`` as the official code does (see :func:`_block_sides`), so when ``p`` divides H and W
    every ``p x p`` patch is either fully corrupted or untouched.

    ``max_blocks`` candidates are drawn per row. If they cannot reach the target together (rare:
    at 592 x 128 and a 0.7 target about 60 blocks are needed on average), their union is returned,
    so the coverage can fall short of ``min_ratio`` in that case only.

    Args:
        batch: number of rows B.
        height: H, time frames for ASiT (592).
        width: W, mel bins for ASiT (128).
        min_ratio, max_ratio: target area fraction range (``min(0.5, drop_perc)``, ``drop_perc``=0.7).
        max_block_frac: largest block side as a fraction of H and W (``max_block_sz`` = 0.3).
        max_blocks: candidate blocks per row K.
        align: block grid in bins (``drop_align``): 1 = free blocks, the patch size = patch-aligned blocks.
        generator: source of randomness (see module conventions).
        device: device of the returned mask.

    Returns:
        (B, H, W) bool mask, True = corrupted.
    """
    _check_batch(batch)
    if int(height) != height or int(width) != width or height < 1 or width < 1:
        raise ValueError(f"height and width must be positive integers, got {height} x {width}")
    _check_ratio("min_ratio", min_ratio)
    _check_ratio("max_ratio", max_ratio)
    if min_ratio > max_ratio:
        raise ValueError(f"min_ratio must not exceed max_ratio, got {min_ratio} > {max_ratio}")
    if not 0.0 < max_block_frac <= 1.0:
        raise ValueError(f"max_block_frac must be in (0, 1], got {max_block_frac}")
    if int(max_blocks) != max_blocks or max_blocks < 1:
        raise ValueError(f"max_blocks must be a positive integer, got {max_blocks}")
    _check_align(align)
    gen, out_device = _rng(generator, device)
    target = min_ratio + (max_ratio - min_ratio) * torch.rand(batch, generator=gen, device=gen.device)  # (B,)
    mask = _gmml_mask_for_target(target, height, width, max_block_frac, max_blocks, gen, align)
    return mask.to(out_device)


def _other_clip(batch: int, gen: torch.Generator) -> torch.Tensor:
    """Per row, a source row drawn uniformly among the *other* rows. (B,) long on ``gen.device``."""
    # The official draws randint(0, B), which may pick the clip itself; a shift in [1, B-1] cannot.
    shift = torch.randint(1, batch, (batch,), generator=gen, device=gen.device)
    return (torch.arange(batch, device=gen.device) + shift) % batch


def _check_spectrogram_and_mask(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Validate ``x`` (B,1,H,W) or (B,H,W) against ``mask`` (B,H,W); return the mask shaped like x."""
    if x.dim() not in (3, 4) or (x.dim() == 4 and x.shape[1] != 1):
        raise ValueError(f"x must be (B, 1, H, W) or (B, H, W), got {tuple(x.shape)}")
    spatial = (x.shape[0], *x.shape[-2:])
    if mask.dtype != torch.bool or tuple(mask.shape) != spatial:
        raise ValueError(f"mask must be bool {spatial}, got {mask.dtype} {tuple(mask.shape)}")
    return mask.unsqueeze(1) if x.dim() == 4 else mask


def gmml_corrupt(x: torch.Tensor, mask: torch.Tensor, mode: str = "zeros",
                 alien_source: torch.Tensor | None = None, generator: torch.Generator | None = None,
                 noise_mean: float = 0.0, noise_std: float = 1.0) -> torch.Tensor:
    """Corrupt the masked bins of a batch of spectrograms.

    Args:
        x: (B, 1, H, W) or (B, H, W) spectrograms (ASiT: H = 592 frames, W = 128 mel bins).
        mask: (B, H, W) bool, True = corrupt.
        mode: ``'zeros'`` (ASiT ``drop_type='zeros'``, the pretraining default) fills 0; ``'noise'``
            fills ``N(noise_mean, noise_std)`` (``utils.py`` uses N(0, 1); ``data_transformations.py``
            uses the dataset mean/std); ``'alien'`` copies the same bins from another clip of the batch
            (``GMML_replace_list``).
        alien_source: (B,) long, row ``i`` takes its bins from row ``alien_source[i]`` (used as given).
            Default: for each row a uniformly drawn *other* row, so no clip receives its own content.
        generator: source of randomness for ``'noise'`` and the default ``alien_source``.
        noise_mean, noise_std: parameters of the ``'noise'`` fill.

    Returns:
        Tensor shaped like ``x``: masked bins replaced, all other bins untouched.
    """
    m = _check_spectrogram_and_mask(x, mask)
    if mode == "zeros":
        return x.masked_fill(m, 0.0)
    if mode == "noise":
        gen, _ = _rng(generator, x.device)
        noise = torch.randn(x.shape, generator=gen, device=gen.device, dtype=x.dtype).to(x.device)
        return torch.where(m, noise * noise_std + noise_mean, x)
    if mode == "alien":
        batch = x.shape[0]
        if alien_source is None:
            if batch < 2:
                raise ValueError(f"alien corruption needs at least 2 clips in the batch, got {batch}")
            gen, _ = _rng(generator, x.device)
            alien_source = _other_clip(batch, gen).to(x.device)
        elif tuple(alien_source.shape) != (batch,):
            raise ValueError(f"alien_source must have shape ({batch},), got {tuple(alien_source.shape)}")
        return torch.where(m, x[alien_source], x)
    raise ValueError(f"mode must be 'zeros', 'noise' or 'alien', got {mode!r}")


def asit_corrupt(x: torch.Tensor, *, drop_perc: tuple[float, float] = (0.5, 0.7), drop_replace: float = 0.3,
                 replace_prob: float = 0.5, max_block_frac: float = 0.3, max_blocks: int = 256,
                 align: int = 1,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """ASiT student-input corruption: zero blocks, or with probability 0.5 "alien concepts".

    Officially the dataloader zero-fills blocks up to ``U(0.5, 0.7)`` of the area
    (``GMML_drop_rand_patches``), then the collate function (``GMML_replace_list``, ``rep_drop = 1/2``)
    redoes, for each clip with probability ``replace_prob``, the corruption on the clean crop by pasting
    blocks from another clip of the batch until ``drop_replace`` (0.3, exactly: ``U(min(0.5, 0.3), 0.3)``)
    of the area is covered. Here each row draws its branch first and a single block mask is rasterised
    with that row's target. The alien source is a uniformly drawn *other* clip (the official may pick
    the clip itself); with a batch of one no other clip exists, so the row is zero-filled.

    Args:
        x: (B, 1, H, W) or (B, H, W) clean spectrograms (ASiT: ``(B, 1, 592, 128)``).
        drop_perc: ``(min, max)`` area fraction of the zero-fill branch (``min(0.5, drop_perc)``, 0.7).
        drop_replace: area fraction of the alien branch (``--drop_replace``).
        replace_prob: probability of the alien branch per clip.
        max_block_frac: largest block side as a fraction of H and W (``max_block_sz``).
        max_blocks: candidate blocks per row (see :func:`gmml_block_mask`).
        align: block grid in bins for both branches (``--drop_align``, see :func:`gmml_block_mask`).
        generator: source of randomness (see module conventions); numbers are drawn on its device.

    Returns:
        corrupted: shaped like ``x``.
        mask: (B, H, W) bool, True = corrupted bins (the reconstruction-loss positions).
    """
    if x.dim() not in (3, 4) or (x.dim() == 4 and x.shape[1] != 1):
        raise ValueError(f"x must be (B, 1, H, W) or (B, H, W), got {tuple(x.shape)}")
    low, high = drop_perc
    _check_ratio("drop_perc[0]", low)
    _check_ratio("drop_perc[1]", high)
    if low > high:
        raise ValueError(f"drop_perc must be (min, max) with min <= max, got {drop_perc}")
    _check_ratio("drop_replace", drop_replace)
    _check_ratio("replace_prob", replace_prob)
    if not 0.0 < max_block_frac <= 1.0:
        raise ValueError(f"max_block_frac must be in (0, 1], got {max_block_frac}")
    _check_align(align)
    batch, height, width = x.shape[0], x.shape[-2], x.shape[-1]
    gen, _ = _rng(generator, x.device)
    dev = gen.device

    alien = torch.rand(batch, generator=gen, device=dev) < replace_prob  # (B,)
    if batch < 2:
        alien = torch.zeros_like(alien)
    zero_frac = low + (high - low) * torch.rand(batch, generator=gen, device=dev)  # (B,)
    target = torch.where(alien, torch.full_like(zero_frac, drop_replace), zero_frac)  # (B,)
    mask = _gmml_mask_for_target(target, height, width, max_block_frac, max_blocks, gen, align)  # (B, H, W)
    source = _other_clip(batch, gen) if batch > 1 else torch.zeros(1, dtype=torch.long, device=dev)

    mask, alien, source = mask.to(x.device), alien.to(x.device), source.to(x.device)
    m = mask.unsqueeze(1) if x.dim() == 4 else mask
    alien_rows = alien.view(batch, *([1] * (x.dim() - 1)))
    fill = torch.where(alien_rows, x[source], torch.zeros_like(x))
    return torch.where(m, fill, x), mask
