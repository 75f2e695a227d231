"""Direction estimators and layer selectors on synthetic hidden states with planted directions."""

from __future__ import annotations

import pydantic
import pytest
import torch

from chameleon_llm.config import DirectionConfig, FitConfig
from chameleon_llm.directions import (
    ccs,
    ccs_loss,
    estimate,
    neutral_mean_diff,
    pair_accuracy,
    personal_basis,
    select_band,
    select_by_ccs_loss,
    select_by_validation,
    select_layers,
    separation,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # small CCS optimizations: threads only add overhead

D = 16


def unit(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm(dim=-1, keepdim=True)


def cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((unit(a) * unit(b)).sum())


def ccs_pairs(
    v: torch.Tensor, n: int, *, gen: torch.Generator, signal: float = 3.0, noise: float = 0.3
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairs in which only ``v`` separates the two members consistently.

    Each pair shares a class-agnostic part ``b_i`` (large, random sign per pair, so it dominates the
    variance but is identical in both members) and differs along ``v`` by ``±t_i`` where ``t_i`` is
    a random per-pair sign times ``signal`` plus a constant offset: personalized states lie on one
    side of each pair, and the class means differ along ``v`` (the neutral mean lies at −v).
    The shared part's scale differs per dimension (0.3 to 20), so a probe found in CCS's
    std-normalized space is only parallel to ``v`` once mapped back to the raw space.
    """
    d = v.shape[0]
    sign_b = torch.randint(0, 2, (n, 1), generator=gen) * 2 - 1
    base = sign_b * (torch.logspace(-0.5, 1.3, d) * torch.randn(n, d, generator=gen))
    base = base - (base @ v)[:, None] * v  # the shared part carries nothing along v
    t = (torch.randint(0, 2, (n, 1), generator=gen) * 2 - 1) * signal + 1.0
    pos = base + t * v + noise * torch.randn(n, d, generator=gen)
    neg = base - t * v + noise * torch.randn(n, d, generator=gen)
    return pos, neg


def test_ccs_recovers_planted_direction() -> None:
    gen = torch.Generator().manual_seed(0)
    v = unit(torch.randn(D, generator=gen))
    pos, neg = ccs_pairs(v, 96, gen=gen)
    result = ccs(pos[:, None], neg[:, None], restarts=3, epochs=300, seed=0)
    direction = result.directions[0]
    assert direction.shape == (D,)
    assert float(direction.norm()) == pytest.approx(1.0, abs=1e-5)
    assert abs(cos(direction, v)) > 0.95
    assert float(direction @ (neg.mean(0) - pos.mean(0))) > 0  # oriented toward the neutral class
    assert cos(direction, v) < -0.95
    assert float(result.loss[0]) < 0.1
    # the class-agnostic part dominates the variance: a plain PCA would not find v
    top_pc = torch.linalg.svd(pos - pos.mean(0))[2][0]
    assert abs(cos(top_pc, v)) < 0.5
    # swapping the classes flips the oriented direction (the CCS loss itself is symmetric)
    swapped = ccs(neg[:, None], pos[:, None], restarts=3, epochs=300, seed=0).directions[0]
    assert cos(swapped, direction) < -0.99


def test_ccs_loss_is_low_only_where_there_is_signal() -> None:
    gen = torch.Generator().manual_seed(1)
    v = unit(torch.randn(D, generator=gen))
    pos_sig, neg_sig = ccs_pairs(v, 64, gen=gen)
    pos_noise, neg_noise = torch.randn(64, D, generator=gen), torch.randn(64, D, generator=gen)
    pos = torch.stack([pos_noise, pos_sig], dim=1)
    neg = torch.stack([neg_noise, neg_sig], dim=1)
    loss = ccs(pos, neg, restarts=3, epochs=300).loss
    assert loss.shape == (2,)
    assert float(loss[1]) < 0.05 < float(loss[0])


def test_ccs_loss_function() -> None:
    confident = ccs_loss(torch.tensor([0.99, 0.01]), torch.tensor([0.01, 0.99]))
    unsure = ccs_loss(torch.tensor([0.5, 0.5]), torch.tensor([0.5, 0.5]))
    inconsistent = ccs_loss(torch.tensor([0.99, 0.99]), torch.tensor([0.99, 0.99]))
    assert float(confident) < 0.001
    assert float(unsure) == pytest.approx(0.25)
    assert float(inconsistent) > 0.9


def test_ccs_input_validation() -> None:
    with pytest.raises(ValueError, match="n_pairs, n_layers, hidden"):
        ccs(torch.zeros(4, D), torch.zeros(4, D))
    with pytest.raises(ValueError, match="at least 2 pairs"):
        ccs(torch.zeros(1, 1, D), torch.zeros(1, 1, D))


@pytest.mark.parametrize("method", ["svd", "svd-centered", "svd-diff", "mean-diff"])
def test_personal_basis_orientation_and_orthonormality(method: str) -> None:
    """pos and neg both sit on the −u side of the origin (so an unoriented SVD sign is arbitrary);
    the basis must still point from the neutral toward the personalized mean, i.e. along +u."""
    gen = torch.Generator().manual_seed(2)
    u = unit(torch.randn(D, generator=gen))
    n = 40
    scale = 1.0 + torch.rand(n, 1, generator=gen)
    neg = -8.0 * scale * u + 0.3 * torch.randn(n, D, generator=gen)
    pos = -4.0 * scale * u + 0.3 * torch.randn(n, D, generator=gen)
    rank = 1 if method == "mean-diff" else 3
    basis = personal_basis(pos, neg, method, rank)
    assert basis.shape == (rank, D)
    torch.testing.assert_close(basis @ basis.T, torch.eye(rank), atol=1e-5, rtol=0)
    assert (basis @ (pos.mean(0) - neg.mean(0)) >= 0).all()
    assert cos(basis[0], u) > 0.9
    # swapping the classes flips the orientation
    swapped = personal_basis(neg, pos, method, rank)
    assert cos(swapped[0], u) < -0.9


def test_personal_basis_unknown_method() -> None:
    with pytest.raises(ValueError, match="unknown personal estimator"):
        personal_basis(torch.randn(4, D), torch.randn(4, D), "pca", 1)


def test_mean_diff_directions() -> None:
    gen = torch.Generator().manual_seed(3)
    pos = torch.randn(10, 2, D, generator=gen) + 2.0
    neg = torch.randn(10, 2, D, generator=gen)
    neutral = neutral_mean_diff(pos, neg)
    assert neutral.shape == (2, D)
    torch.testing.assert_close(neutral, unit(neg.mean(0) - pos.mean(0)))
    torch.testing.assert_close(personal_basis(pos[:, 0], neg[:, 0], "mean-diff", 1)[0], -neutral[0])


def test_pair_accuracy_and_separation() -> None:
    direction = torch.tensor([[1.0, 0.0]])  # one layer, hidden 2
    neg = torch.zeros(4, 1, 2)
    pos = torch.tensor([[1.0, 5.0], [2.0, -5.0], [3.0, 0.0], [-1.0, 1.0]])[:, None]
    assert pair_accuracy(pos, neg, direction).tolist() == [0.75]
    assert pair_accuracy(pos, neg, -direction).tolist() == [0.25]
    # projections: pos 1, 2, 3, -1 (mean 1.25, var 2.1875); neg all 0 -> d' = 1.25 / sqrt(2.1875 / 2)
    sep = separation(pos, neg, direction)
    assert float(sep[0]) == pytest.approx(1.25 / (2.1875 / 2) ** 0.5, rel=1e-5)
    assert float(separation(pos, neg, -direction)[0]) == pytest.approx(-float(sep[0]), rel=1e-6)


def planted_layers(
    n_layers: int, signal_layers: tuple[int, ...], n: int = 48, seed: int = 4
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pairs whose personalized/neutral contrast lives only on ``signal_layers`` (elsewhere: noise)."""
    gen = torch.Generator().manual_seed(seed)
    v = unit(torch.randn(n_layers, D, generator=gen))
    pos = torch.randn(n, n_layers, D, generator=gen)
    neg = torch.randn(n, n_layers, D, generator=gen)
    for layer in signal_layers:
        pos[:, layer], neg[:, layer] = ccs_pairs(v[layer], n, gen=gen)
    return pos, neg, v


def test_select_by_ccs_loss_picks_planted_layers() -> None:
    pos, neg, _ = planted_layers(5, (1, 3), n=96)
    cfg = DirectionConfig(layer_rule="ccs-loss", n_layers=2, ccs_restarts=2, ccs_epochs=200)
    assert select_by_ccs_loss(pos, neg, cfg, 0) == [1, 3]
    assert select_layers(pos, neg, cfg) == [1, 3]
    # precomputed losses are used as given
    assert select_layers(pos, neg, cfg, ccs_loss_per_layer=torch.tensor([0.0, 1.0, 1.0, 1.0, 0.1])) == [0, 4]


def test_select_by_validation_picks_planted_layers() -> None:
    gen = torch.Generator().manual_seed(5)
    n, n_layers = 40, 6
    pos = torch.randn(n, n_layers, D, generator=gen)
    neg = torch.randn(n, n_layers, D, generator=gen)
    u = unit(torch.randn(D, generator=gen))
    for layer in (2, 5):
        pos[:, layer] += 1.5 * u  # a consistent shift from neutral toward personalized
    cfg = DirectionConfig(layer_rule="validation", n_layers=2, personal="mean-diff")
    assert select_by_validation(pos, neg, cfg, 0) == [2, 5]
    assert select_layers(pos, neg, cfg, seed=1) == [2, 5]
    with pytest.raises(ValueError, match="at least"):
        select_by_validation(pos[:2], neg[:2], cfg, 0)


@pytest.mark.parametrize("n_layers", [1, 2, 3, 4, 7, 12, 24, 30, 32])
@pytest.mark.parametrize("band", [(0.0, 1.0), (0.3, 0.6), (0.5, 0.51), (0.0, 0.01), (0.9, 1.0), (0.25, 0.75)])
def test_band_selector_bounds(n_layers: int, band: tuple[float, float]) -> None:
    cfg = DirectionConfig(band=band)
    dummy = torch.zeros(2, n_layers, 1)
    layers = select_band(dummy, dummy, cfg, 0)
    assert layers, "the band must keep at least one layer"
    assert layers == list(range(layers[0], layers[-1] + 1))  # contiguous
    assert layers[0] >= 0 and layers[-1] < n_layers
    lo, hi = band
    assert layers[0] == int(lo * n_layers)
    assert len(layers) == 1 or layers[-1] < hi * n_layers


def test_band_selector_examples() -> None:
    dummy = torch.zeros(2, 10, 1)
    assert select_band(dummy, dummy, DirectionConfig(band=(0.3, 0.6)), 0) == [3, 4, 5]
    assert select_band(dummy, dummy, DirectionConfig(band=(0.0, 1.0)), 0) == list(range(10))
    assert DirectionConfig().layer_rule == "band"
    assert select_layers(dummy, dummy, DirectionConfig(band=(0.3, 0.6))) == [3, 4, 5]


@pytest.mark.parametrize("band", [(0.6, 0.3), (0.5, 0.5), (-0.1, 0.5), (0.2, 1.5)])
def test_bad_band_is_rejected(band: tuple[float, float]) -> None:
    with pytest.raises(pydantic.ValidationError, match="band must satisfy"):
        DirectionConfig(band=band)
    with pytest.raises(pydantic.ValidationError, match="band must satisfy"):
        FitConfig.from_overrides({"directions.band": list(band)})


def test_config_validation_errors() -> None:
    with pytest.raises(pydantic.ValidationError):
        DirectionConfig(rank=0)
    with pytest.raises(pydantic.ValidationError):
        DirectionConfig(holdout_fraction=1.0)
    with pytest.raises(pydantic.ValidationError):
        DirectionConfig(layer_rule="best")  # type: ignore[arg-type]
    with pytest.raises(pydantic.ValidationError):
        DirectionConfig(unknown=1)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match=r"unknown option 'directions\.nope'"):
        FitConfig.from_overrides({"directions.nope": 1})
    with pytest.raises(ValueError, match="no section 'nowhere'"):
        FitConfig.from_overrides({"nowhere.rank": 1})
    cfg = FitConfig.from_overrides({"directions.rank": 2, "directions.band": [0.1, 0.2]})
    assert cfg.directions.rank == 2 and cfg.directions.band == (0.1, 0.2)


def test_estimate_end_to_end() -> None:
    pos, neg, v = planted_layers(3, (0, 1, 2), n=64, seed=6)
    cfg = DirectionConfig(personal="svd", rank=2, ccs_restarts=2, ccs_epochs=200)
    dirs = estimate(pos, neg, cfg)
    assert dirs.personal.shape == (3, 2, D)
    assert dirs.neutral.shape == (3, D)
    assert dirs.ccs_loss.shape == (3,)
    for layer in range(3):
        assert cos(dirs.neutral[layer], v[layer]) < -0.9
        assert float(dirs.neutral[layer] @ (neg[:, layer].mean(0) - pos[:, layer].mean(0))) > 0
    stats = dirs.stats
    assert set(stats) >= {
        "ccs_loss",
        "personal_pair_accuracy",
        "neutral_pair_accuracy",
        "personal_separation",
    }
    assert all(len(values) == 3 for values in stats.values())
    md = estimate(pos, neg, DirectionConfig(neutral="mean-diff", ccs_restarts=1, ccs_epochs=10))
    torch.testing.assert_close(md.neutral, neutral_mean_diff(pos, neg))
