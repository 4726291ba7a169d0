"""Token masks for the pretraining recipes, as pure, vectorised, seeded functions.

* SSAST (Gong et al., "SSAST: Self-Supervised Audio Spectrogram Transformer", AAAI 2022;
  YuanGongND/ssast ``src/models/ast_models.py`` ``gen_maskid_patch`` / ``gen_maskid_frame``):
  :func:`cluster_mask` for the patch model, :func:`random_mask` for the frame model, :func:`ssast_mask`
  picks between them.
* MAE-AST (Baade et al., "MAE-AST: Masked Autoencoding Audio Spectrogram Transformer", Interspeech
  2022; AlanBaade/MAE-AST-Public ``mae_ast/models/mae_ast.py`` ``forward_mask``): :func:`chunk_mask`
  for the patch model, :func:`mae_random_mask` for the frame model, :func:`visible_indices` and
  :func:`gather_tokens` to drop the masked tokens before the encoder (the argsort trick of
  facebookresearch/mae ``random_masking``).
* ASiT corrupts spectrogram bins rather than masking tokens: :mod:`upstream.corruption`, with the same
  conventions.

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
    "chunk_mask",
    "cluster_mask",
    "frame_mask",
    "gather_tokens",
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
