"""Direction estimators (SVD variants, CCS, mean difference) and layer selectors, as plain functions.

Inputs are paired hidden states ``pos`` (personalized responses) and ``neg`` (neutral responses) of
shape (n_pairs, n_layers, hidden). Every direction is oriented by the class means: the personalized
basis points from neutral toward personalized, the neutral direction from personalized toward neutral.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .config import DirectionConfig


@dataclass(frozen=True)
class CCSResult:
    """A CCS probe per layer: unit directions in the raw hidden space and the best loss."""

    directions: torch.Tensor  # (n_layers, hidden)
    loss: torch.Tensor  # (n_layers,)


def _unit(v: torch.Tensor, dim: int = -1) -> torch.Tensor:
    return v / v.norm(dim=dim, keepdim=True).clamp_min(1e-12)


def _orient(basis: torch.Tensor, toward: torch.Tensor) -> torch.Tensor:
    """Flip each row of ``basis`` (r, d) so its dot product with ``toward`` (d) is non-negative."""
    sign = torch.sign(basis @ toward)
    sign[sign == 0] = 1.0
    return basis * sign[:, None]


def _top_right_singular(mat: torch.Tensor, rank: int) -> torch.Tensor:
    _, _, vh = torch.linalg.svd(mat, full_matrices=False)
    return vh[: min(rank, vh.shape[0])]


def personal_basis(pos: torch.Tensor, neg: torch.Tensor, method: str, rank: int) -> torch.Tensor:
    """Personalized subspace of one layer: (rank, hidden), orthonormal rows, oriented to pos − neg.

    * ``svd``: top right singular vectors of the uncentred personalized states (the paper's wording);
    * ``svd-centered``: of the personalized states centred on the mean of both classes;
    * ``svd-diff``: of the pair differences pos − neg;
    * ``mean-diff``: the normalized difference of class means (rank 1).
    """
    shift = pos.mean(0) - neg.mean(0)
    if method == "svd":
        basis = _top_right_singular(pos, rank)
    elif method == "svd-centered":
        basis = _top_right_singular(pos - torch.cat([pos, neg]).mean(0), rank)
    elif method == "svd-diff":
        basis = _top_right_singular(pos - neg, rank)
    elif method == "mean-diff":
        basis = _unit(shift)[None, :]
    else:
        raise ValueError(f"unknown personal estimator {method!r}")
    return _orient(basis, shift)


def neutral_mean_diff(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """Unit vector from the personalized toward the neutral class mean: (n_layers, hidden)."""
    return _unit(neg.mean(0) - pos.mean(0))


def ccs_loss(p_pos: torch.Tensor, p_neg: torch.Tensor) -> torch.Tensor:
    """Burns et al. (2022): consistency (p⁺ ≈ 1 − p⁻) + confidence (min(p⁺, p⁻)² small), mean over pairs."""
    consistency = (p_pos - (1.0 - p_neg)) ** 2
    confidence = torch.minimum(p_pos, p_neg) ** 2
    return (consistency + confidence).mean(dim=-1)


def ccs(
    pos: torch.Tensor,
    neg: torch.Tensor,
    *,
    restarts: int = 5,
    epochs: int = 300,
    lr: float = 1e-2,
    weight_decay: float = 1e-2,
    seed: int = 0,
) -> CCSResult:
    """Contrast-Consistent Search on every layer at once, with random restarts (best loss kept).

    Each class is normalized (mean removed, divided by its per-dimension std) as in Burns et al.;
    the probe weight is mapped back to the raw space and oriented toward the neutral class.
    """
    if pos.shape != neg.shape or pos.ndim != 3:
        raise ValueError(
            f"pos and neg must both be (n_pairs, n_layers, hidden), got {pos.shape}, {neg.shape}"
        )
    n, n_layers, d = pos.shape
    if n < 2:
        raise ValueError(f"CCS needs at least 2 pairs, got {n}")
    eps = 1e-6
    std = torch.cat([pos, neg]).std(0) + eps  # (L, d)
    xp = ((pos - pos.mean(0)) / std).transpose(0, 1)  # (L, n, d)
    xn = ((neg - neg.mean(0)) / std).transpose(0, 1)
    gen = torch.Generator().manual_seed(seed)
    w = (torch.randn(n_layers, restarts, d, generator=gen) / d**0.5).requires_grad_(True)
    b = torch.zeros(n_layers, restarts, 1, requires_grad=True)
    opt = torch.optim.AdamW([w, b], lr=lr, weight_decay=weight_decay)
    with torch.enable_grad():
        for _ in range(epochs):
            opt.zero_grad()
            p_pos = torch.sigmoid(torch.einsum("lrd,lnd->lrn", w, xp) + b)
            p_neg = torch.sigmoid(torch.einsum("lrd,lnd->lrn", w, xn) + b)
            ccs_loss(p_pos, p_neg).sum().backward()
            opt.step()
    with torch.no_grad():
        p_pos = torch.sigmoid(torch.einsum("lrd,lnd->lrn", w, xp) + b)
        p_neg = torch.sigmoid(torch.einsum("lrd,lnd->lrn", w, xn) + b)
        losses = ccs_loss(p_pos, p_neg)  # (L, R)
        best = losses.argmin(dim=1)
        w_best = w[torch.arange(n_layers), best]  # (L, d) in normalized space
        raw = _unit(w_best / std)
        toward_neutral = neg.mean(0) - pos.mean(0)
        sign = torch.sign((raw * toward_neutral).sum(-1))
        sign[sign == 0] = 1.0
        return CCSResult(directions=raw * sign[:, None], loss=losses.min(dim=1).values)


def pair_accuracy(pos: torch.Tensor, neg: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """Per layer, the fraction of pairs whose personalized state projects higher on ``direction``."""
    return ((pos - neg) * direction.unsqueeze(0)).sum(-1).gt(0).float().mean(0)


def separation(pos: torch.Tensor, neg: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """Per layer, (mean projection gap) / pooled std of projections: a d′ along ``direction``."""
    pp = (pos * direction.unsqueeze(0)).sum(-1)
    pn = (neg * direction.unsqueeze(0)).sum(-1)
    pooled = torch.sqrt(0.5 * (pp.var(0, unbiased=False) + pn.var(0, unbiased=False))).clamp_min(1e-6)
    return (pp.mean(0) - pn.mean(0)) / pooled


@dataclass(frozen=True)
class Directions:
    """Directions on every layer plus the per-layer statistics recorded in the edit."""

    personal: torch.Tensor  # (n_layers, rank, hidden)
    neutral: torch.Tensor  # (n_layers, hidden)
    gap: torch.Tensor  # (n_layers, rank): class-mean gap along each personalized basis row
    ccs_loss: torch.Tensor  # (n_layers,)
    stats: dict[str, list[float]]


def estimate(pos: torch.Tensor, neg: torch.Tensor, cfg: DirectionConfig, *, seed: int = 0) -> Directions:
    """Fit personalized and neutral directions on every layer."""
    n_layers = pos.shape[1]
    personal = torch.stack(
        [personal_basis(pos[:, i], neg[:, i], cfg.personal, cfg.rank) for i in range(n_layers)]
    )
    result = ccs(
        pos,
        neg,
        restarts=cfg.ccs_restarts,
        epochs=cfg.ccs_epochs,
        lr=cfg.ccs_lr,
        weight_decay=cfg.ccs_weight_decay,
        seed=seed,
    )
    neutral = result.directions if cfg.neutral == "ccs" else neutral_mean_diff(pos, neg)
    gap = torch.einsum("lrd,ld->lr", personal, pos.mean(0) - neg.mean(0))
    top = personal[:, 0]
    stats = {
        "ccs_loss": result.loss.tolist(),
        "personal_pair_accuracy": pair_accuracy(pos, neg, top).tolist(),
        "personal_separation": separation(pos, neg, top).tolist(),
        "neutral_pair_accuracy": (1.0 - pair_accuracy(pos, neg, neutral)).tolist(),
        "personal_neutral_cosine": (top * neutral).sum(-1).tolist(),
    }
    return Directions(personal=personal, neutral=neutral, gap=gap, ccs_loss=result.loss, stats=stats)


LayerSelector = Callable[[torch.Tensor, torch.Tensor, DirectionConfig, int], list[int]]


def select_by_ccs_loss(pos: torch.Tensor, neg: torch.Tensor, cfg: DirectionConfig, seed: int) -> list[int]:
    """The paper's rule: the layers with the lowest CCS loss."""
    loss = ccs(
        pos,
        neg,
        restarts=cfg.ccs_restarts,
        epochs=cfg.ccs_epochs,
        lr=cfg.ccs_lr,
        weight_decay=cfg.ccs_weight_decay,
        seed=seed,
    ).loss
    return sorted(torch.argsort(loss)[: cfg.n_layers].tolist())


def band_layers(n_layers: int, band: tuple[float, float]) -> list[int]:
    """The layers in a band of depth, e.g. (0.3, 0.4) of 30 layers: 9, 10, 11 (at least one)."""
    lo, hi = band
    first, last = int(lo * n_layers), max(int(lo * n_layers) + 1, round(hi * n_layers))
    return list(range(min(first, n_layers - 1), min(last, n_layers)))


def select_band(pos: torch.Tensor, neg: torch.Tensor, cfg: DirectionConfig, seed: int) -> list[int]:
    """A fixed band of depth, e.g. (0.3, 0.6) of the layers."""
    return band_layers(pos.shape[1], cfg.band)


def select_by_validation(pos: torch.Tensor, neg: torch.Tensor, cfg: DirectionConfig, seed: int) -> list[int]:
    """Fit on part of the pairs, keep the layers whose personalized direction best separates the rest."""
    n = pos.shape[0]
    n_hold = max(1, round(cfg.holdout_fraction * n))
    if n - n_hold < 2:
        raise ValueError(f"validation layer selection needs at least {n_hold + 2} pairs, got {n}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    fit_idx, hold_idx = perm[n_hold:], perm[:n_hold]
    basis = torch.stack(
        [personal_basis(pos[fit_idx, i], neg[fit_idx, i], cfg.personal, 1)[0] for i in range(pos.shape[1])]
    )
    score = (
        separation(pos[hold_idx], neg[hold_idx], basis)
        if n_hold > 1
        else (((pos[hold_idx] - neg[hold_idx]) * basis).sum(-1).mean(0))
    )
    return sorted(torch.argsort(score, descending=True)[: cfg.n_layers].tolist())


LAYER_SELECTORS: dict[str, LayerSelector] = {
    "ccs-loss": select_by_ccs_loss,
    "band": select_band,
    "validation": select_by_validation,
}


def select_layers(
    pos: torch.Tensor,
    neg: torch.Tensor,
    cfg: DirectionConfig,
    *,
    seed: int = 0,
    ccs_loss_per_layer: torch.Tensor | None = None,
) -> list[int]:
    """Apply the configured layer selector (reusing already-computed CCS losses when given)."""
    if cfg.layer_rule == "ccs-loss" and ccs_loss_per_layer is not None:
        return sorted(torch.argsort(ccs_loss_per_layer)[: cfg.n_layers].tolist())
    return LAYER_SELECTORS[cfg.layer_rule](pos, neg, cfg, seed)
