"""ASiT's group masked model learning (GMML) corruption, on spectrogram bins rather than tokens, as pure,
vectorised, seeded functions (the conventions of :mod:`upstream.masking`: True = corrupted, randomness only
from ``generator``, no Python loop over bins).

ASiT (Atito et al., "ASiT: Audio Spectrogram vIsion Transformer for General Audio Representation", arXiv v1;
Sara-Ahmed/ASiT ``data_transformations.py`` ``GMML_drop_rand_patches``, ``utils.py`` ``GMML_replace_list``):
:func:`gmml_block_mask` draws the blocks, :func:`gmml_corrupt` fills them, :func:`asit_corrupt` is the
official recipe (zeros, or with probability ``replace_prob`` "alien concepts" from another clip).
"""
from __future__ import annotations

import torch

from .masking import _check_align, _check_batch, _check_ratio, _rng  # the argument checks masks share

__all__ = ["asit_corrupt", "gmml_block_mask", "gmml_corrupt"]

# Rectangles rasterised per bmm in gmml_block_mask: each gets a distinct power-of-two weight, and a
# float64 mantissa holds 53 bits exactly.
_BLOCKS_PER_CHUNK = 48


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
