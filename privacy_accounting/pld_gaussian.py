"""The one-step PLD of the Poisson-subsampled Gaussian, built as dp-accounting builds it, its grid at once.

``privacy_loss_distribution.from_gaussian_mechanism`` (connect-the-dots, pessimistic) asks its
``GaussianPrivacyLoss`` for the hockey-stick divergence at every grid point of the privacy loss, delta(eps) =
mu_upper_cdf(x) - e^eps * mu_lower_cdf(x) at x = inverse_privacy_loss(eps), and ``get_delta_for_epsilon`` finds
each x with one Python call per point: about 5e4 calls per adjacency for sigma = 1, q = 0.005 on the 1e-4 grid,
90% of building the PLD. :class:`GridGaussianPrivacyLoss` computes those x for the whole grid in numpy, by the
same formulas in the same order of operations (``_inverse_privacy_loss_add``/``_remove``,
``common.log_a_times_exp_b_plus_c``, ``_log_sub``), numpy's functions on arrays being the ones dp-accounting
calls on scalars, so the PLD is the stock one bit for bit (tests/accounting/test_pld_gaussian.py), and the
inverse's errors are raised where dp-accounting raises them. :func:`one_step_pld` builds with it for
add-or-remove-one and 0 < q < 1 (DP-SGD's case) on the dp-accounting versions the module was checked against
(``pld_accountant.CHECKED_VERSIONS``), with sigma, q and the grid as Python floats (as the ledger's events hold
them); every other case is ``from_gaussian_mechanism`` itself.
"""

from __future__ import annotations

import math
from typing import Sequence, Union

import numpy as np
from dp_accounting import NeighboringRelation
from dp_accounting.pld import privacy_loss_distribution
from dp_accounting.pld.privacy_loss_mechanism import AdjacencyType, GaussianPrivacyLoss

PLD = privacy_loss_distribution.PrivacyLossDistribution


class GridGaussianPrivacyLoss(GaussianPrivacyLoss):
    """``GaussianPrivacyLoss`` whose ``get_delta_for_epsilon`` inverts the privacy loss of a whole array at once
    (add or remove adjacency, 0 < q < 1; anything else is the parent's)."""

    def get_delta_for_epsilon(self, epsilon: Union[float, Sequence[float]]) -> Union[float, np.ndarray]:
        q = self.sampling_prob
        if (isinstance(epsilon, (int, float)) or not 0 < q < 1
                or self.adjacency_type not in (AdjacencyType.ADD, AdjacencyType.REMOVE)):
            return super().get_delta_for_epsilon(epsilon)
        epsilons = np.asarray(epsilon)
        deltas = np.zeros_like(epsilons, dtype=float)
        if self.adjacency_type == AdjacencyType.ADD:
            inverse = epsilons < -math.log1p(-q)  # the divergence is 0 above -log(1 - q)
        else:
            inverse = epsilons > math.log1p(-q)
            deltas[~inverse] = -np.expm1(epsilons[~inverse])
        x_cutoffs = self._inverse_privacy_losses(epsilons[inverse])
        deltas[inverse] = self.mu_upper_cdf(x_cutoffs) - np.exp(epsilons[inverse] + self.mu_lower_log_cdf(x_cutoffs))
        return np.clip(deltas, 0, 1)

    def _inverse_privacy_losses(self, losses: np.ndarray) -> np.ndarray:
        """``inverse_privacy_loss`` of each entry: for remove, with l0 = log(e^l/q + 1 - 1/q), the x where the
        unsubsampled loss is l0, x = -s/2 - l0 sigma^2 / s; for add, l0 = -log(e^-l/q + 1 - 1/q) and x shifted
        by s."""
        q, s, variance = self.sampling_prob, self.sensitivity, self._standard_deviation**2
        add = self.adjacency_type == AdjacencyType.ADD
        edge = -math.log(1 - q) if add else math.log(1 - q)
        b = -losses if add else losses
        at_edge = np.abs(losses - edge) <= 1e-9 * np.maximum(np.abs(losses), abs(edge))  # math.isclose's rule
        beyond = (losses > edge) if add else (losses <= edge)  # where dp-accounting's scalar inverse raises
        if np.any(~at_edge & beyond):
            raise ValueError(f"a privacy loss beyond the subsampled mechanism's range ({edge})")
        a, c = 1 / q, 1 - 1 / q
        d = b + np.log(a)
        log_c = np.log(-c)
        if np.any(~at_edge & (b != 0) & (log_c >= d)):
            raise ValueError("a exp(b) + c must be positive")
        with np.errstate(divide="ignore", invalid="ignore"):
            unsubsampled = np.where(b == 0, np.log(a + c), d + np.log1p(-np.exp(log_c - d)))  # log_a_times_exp_b_plus_c
        if add:
            unsubsampled = -unsubsampled
        x = -0.5 * s - unsubsampled * variance / s
        if add:
            x = s + x
        return np.where(at_edge, -math.inf if add else math.inf, x)


def one_step_pld(noise_multiplier: float, sampling_probability: float, interval: float, relation: object) -> PLD:
    """``from_gaussian_mechanism(standard_deviation=noise_multiplier, value_discretization_interval=interval,
    sampling_prob=sampling_probability, neighboring_relation=relation)``, its defaults included (sensitivity 1,
    pessimistic, connect-the-dots, log mass truncation -50), with the grid inverted at once where that applies."""
    plain = all(isinstance(v, (int, float)) for v in (noise_multiplier, sampling_probability, interval))
    if not plain or relation != NeighboringRelation.ADD_OR_REMOVE_ONE or not 0 < sampling_probability < 1:
        # other relations and q = 1 as dp-accounting builds them; so too numpy's float32 and other non-Python
        # floats, whose arithmetic with arrays and with scalars promotes differently (NEP 50)
        return privacy_loss_distribution.from_gaussian_mechanism(
            standard_deviation=noise_multiplier, value_discretization_interval=interval,
            sampling_prob=sampling_probability, neighboring_relation=relation)

    def single(adjacency: AdjacencyType):  # noqa: ANN202 - a pld_pmf.PLDPmf
        mechanism = GridGaussianPrivacyLoss(noise_multiplier, sensitivity=1, pessimistic_estimate=True,
                                            log_mass_truncation_bound=-50, sampling_prob=sampling_probability,
                                            adjacency_type=adjacency)
        return privacy_loss_distribution._create_pld_pmf_from_monotone_privacy_loss(
            mechanism, pessimistic_estimate=True, value_discretization_interval=interval, use_connect_dots=True)

    return privacy_loss_distribution._pld_for_subsampled_mechanism(single, sampling_probability)
