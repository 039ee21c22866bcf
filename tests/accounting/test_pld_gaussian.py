"""The one-step PLD built with the grid inverted at once is dp-accounting's ``from_gaussian_mechanism`` PLD bit
for bit, and its inverse privacy loss is dp-accounting's, value for value and error for error."""

from __future__ import annotations

import itertools
import math

import dp_accounting
import numpy as np
import pytest
from dp_accounting.pld import privacy_loss_distribution
from dp_accounting.pld.privacy_loss_mechanism import AdjacencyType, GaussianPrivacyLoss

from privacy_accounting.pld_gaussian import GridGaussianPrivacyLoss, one_step_pld

ADD_OR_REMOVE = dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE
# small and large sigma (a sparse PMF), q from tiny to nearly 1, the default grid and coarser ones
CASES = list(itertools.product((0.3, 1.0, 10.0), (1e-5, 256 / 50000, 0.3, 0.999), (1e-4, 1e-2)))


def _state(pmf: object) -> tuple:
    """Everything a PMF holds: its type, infinity mass and values (dense: lower loss and array; sparse: dict)."""
    values = (pmf._lower_loss, pmf._probs.tobytes()) if hasattr(pmf, "_probs") else sorted(pmf._loss_probs.items())
    return type(pmf).__name__, pmf._infinity_mass.hex(), values


@pytest.mark.parametrize(("sigma", "q", "interval"), CASES)
def test_the_one_step_pld_is_from_gaussian_mechanisms_bit_for_bit(sigma: float, q: float, interval: float) -> None:
    stock = privacy_loss_distribution.from_gaussian_mechanism(
        standard_deviation=sigma, value_discretization_interval=interval, sampling_prob=q,
        neighboring_relation=ADD_OR_REMOVE)
    built = one_step_pld(sigma, q, interval, ADD_OR_REMOVE)
    assert _state(built._pmf_remove) == _state(stock._pmf_remove)
    assert _state(built._pmf_add) == _state(stock._pmf_add)
    assert float(built.get_epsilon_for_delta(1e-5)).hex() == float(stock.get_epsilon_for_delta(1e-5)).hex()


@pytest.mark.parametrize("adjacency", [AdjacencyType.ADD, AdjacencyType.REMOVE], ids=lambda a: a.name)
def test_the_inverse_privacy_loss_is_dp_accountings_value_for_value(adjacency: AdjacencyType) -> None:
    for sigma, q in ((0.5, 0.01), (2.0, 0.5)):
        stock = GaussianPrivacyLoss(sigma, sampling_prob=q, adjacency_type=adjacency)
        grid = GridGaussianPrivacyLoss(sigma, sampling_prob=q, adjacency_type=adjacency)
        edge = -math.log(1 - q) if adjacency == AdjacencyType.ADD else math.log(1 - q)
        inside = -1 if adjacency == AdjacencyType.ADD else 1  # the side of the edge the inverse is defined on
        losses = np.concatenate([
            edge + inside * np.geomspace(1e-12, 20, 500),  # from right at the edge to far inside
            [edge, edge * (1 + 1e-10), 0.0, -0.0, edge + inside * 1e-9]])  # the edge, within isclose, b == 0
        expected = np.array([stock.inverse_privacy_loss(float(loss)) for loss in losses])
        assert grid._inverse_privacy_losses(losses).tobytes() == expected.tobytes()
        epsilons = np.concatenate([losses, np.linspace(-5, 5, 301)])
        assert grid.get_delta_for_epsilon(epsilons).tobytes() == stock.get_delta_for_epsilon(epsilons).tobytes()
        assert grid.get_delta_for_epsilon(0.5) == stock.get_delta_for_epsilon(0.5)  # a scalar: the parent's


def test_a_loss_beyond_the_range_is_refused_as_dp_accounting_refuses_it() -> None:
    for adjacency, beyond in ((AdjacencyType.ADD, 1.0), (AdjacencyType.REMOVE, -1.0)):
        stock = GaussianPrivacyLoss(1.0, sampling_prob=0.1, adjacency_type=adjacency)
        grid = GridGaussianPrivacyLoss(1.0, sampling_prob=0.1, adjacency_type=adjacency)
        with pytest.raises(ValueError):
            stock.inverse_privacy_loss(beyond)
        with pytest.raises(ValueError):
            grid._inverse_privacy_losses(np.array([0.01, beyond]))


REPLACE_ONE = dp_accounting.NeighboringRelation.REPLACE_ONE


@pytest.mark.parametrize(("q", "relation"),
                         [(1.0, ADD_OR_REMOVE), (0.01, REPLACE_ONE), (np.float32(0.01), ADD_OR_REMOVE)])
def test_other_cases_are_from_gaussian_mechanism_itself(q: float, relation: object) -> None:
    stock = privacy_loss_distribution.from_gaussian_mechanism(
        standard_deviation=1.0, value_discretization_interval=1e-3, sampling_prob=q, neighboring_relation=relation)
    built = one_step_pld(1.0, q, 1e-3, relation)
    assert _state(built._pmf_remove) == _state(stock._pmf_remove)
    assert _state(built._pmf_add) == _state(stock._pmf_add)
