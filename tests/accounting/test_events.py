"""Event algebra: builders, validation, JSON round trip, normalisation."""

from __future__ import annotations

import json
import math

import dp_accounting
import pytest

from privacy_accounting import (
    InvalidParameterError,
    UnsupportedEventError,
    compose_events,
    dp_sgd_event,
    event_from_json,
    event_to_json,
    gaussian_event,
)
from privacy_accounting.events import (
    describe_event,
    gaussian_history,
    is_non_private,
    merged_history,
    normalize_event,
    sgd_parameters,
    total_steps,
)


def test_dp_sgd_event_is_self_composed_poisson_sampled_gaussian() -> None:
    event = dp_sgd_event(1.1, 0.05, 300)
    assert event == dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(0.05, dp_accounting.GaussianDpEvent(1.1)), 300
    )
    params = sgd_parameters(event)
    assert (params.noise_multiplier, params.sample_rate, params.steps) == (1.1, 0.05, 300)


@pytest.mark.parametrize(
    "sigma, q, steps",
    [(0.0, 0.1, 10), (-1.0, 0.1, 10), (math.nan, 0.1, 10), (math.inf, 0.1, 10), (1.0, 0.0, 10),
     (1.0, 1.5, 10), (1.0, -0.1, 10), (1.0, 0.1, 0), (1.0, 0.1, -3), (1.0, 0.1, 2.5), (1.0, 0.1, True)],
)
def test_dp_sgd_event_rejects_bad_parameters(sigma: float, q: float, steps: int) -> None:
    with pytest.raises(InvalidParameterError) as info:
        dp_sgd_event(sigma, q, steps)
    assert "\n" not in str(info.value)


def test_sample_rate_one_is_allowed() -> None:
    assert sgd_parameters(dp_sgd_event(2.0, 1.0, 3)).sample_rate == 1.0


EVENTS = [
    dp_accounting.GaussianDpEvent(0.7),
    gaussian_event(2.0, 5),
    dp_sgd_event(1.0, 256 / 50000, 1953),
    dp_accounting.ComposedDpEvent([dp_sgd_event(1.1, 0.05, 300), gaussian_event(3.0), dp_accounting.NoOpDpEvent()]),
    dp_accounting.SelfComposedDpEvent(dp_accounting.ComposedDpEvent([dp_sgd_event(1.0, 0.1, 2)]), 3),
    dp_accounting.NonPrivateDpEvent(),
    dp_accounting.NoOpDpEvent(),
]


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: type(e).__name__)
def test_json_round_trip_is_exact(event: dp_accounting.DpEvent) -> None:
    text = event_to_json(event)
    assert event_from_json(text) == event
    assert event_to_json(event_from_json(text)) == text


def test_json_format_is_explicit() -> None:
    data = json.loads(event_to_json(dp_sgd_event(1.1, 0.05, 300)))
    assert data == {
        "type": "self_composed",
        "count": 300,
        "event": {"type": "poisson_sampled", "sampling_probability": 0.05,
                  "event": {"type": "gaussian", "noise_multiplier": 1.1}},
    }


@pytest.mark.parametrize(
    "text",
    [
        '{"type": "laplace", "noise_multiplier": 1.0}',
        '{"type": "gaussian"}',
        '{"type": "gaussian", "noise_multiplier": 1.0, "extra": 1}',
        '{"noise_multiplier": 1.0}',
        '[1, 2]',
        "not json",
        '{"type": "composed", "events": {"type": "no_op"}}',
        '{"type": "poisson_sampled", "sampling_probability": 0.1, "event": {"type": "no_op"}}',
    ],
)
def test_deserialiser_rejects_unknown_or_malformed(text: str) -> None:
    with pytest.raises(UnsupportedEventError):
        event_from_json(text)


@pytest.mark.parametrize(
    "text",
    [
        '{"type": "gaussian", "noise_multiplier": 0.0}',
        '{"type": "gaussian", "noise_multiplier": "1"}',
        '{"type": "self_composed", "count": 0, "event": {"type": "no_op"}}',
        '{"type": "self_composed", "count": 1.5, "event": {"type": "no_op"}}',
        '{"type": "poisson_sampled", "sampling_probability": 1.5, '
        '"event": {"type": "gaussian", "noise_multiplier": 1}}',
    ],
)
def test_deserialiser_rejects_out_of_range_values(text: str) -> None:
    with pytest.raises(InvalidParameterError):
        event_from_json(text)


def test_unsupported_dp_accounting_events_are_rejected_clearly() -> None:
    with pytest.raises(UnsupportedEventError, match="LaplaceDpEvent"):
        event_to_json(dp_accounting.LaplaceDpEvent(1.0))
    with pytest.raises(UnsupportedEventError, match="GaussianDpEvent"):
        event_to_json(dp_accounting.PoissonSampledDpEvent(0.1, dp_accounting.LaplaceDpEvent(1.0)))


def test_history_flattens_nested_compositions() -> None:
    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.ComposedDpEvent([dp_sgd_event(1.0, 0.1, 2), dp_accounting.GaussianDpEvent(3.0)]), 4
    )
    assert gaussian_history(event) == [(1.0, 0.1, 8), (3.0, 1.0, 4)]
    assert total_steps(event) == 12


def test_normalisation_merges_equal_mechanisms_in_first_seen_order() -> None:
    event = compose_events([dp_sgd_event(1.1, 0.05, 300), gaussian_event(2.0), dp_sgd_event(1.1, 0.05, 200)])
    assert merged_history(event) == [(1.1, 0.05, 500), (2.0, 1.0, 1)]
    assert normalize_event(event) == dp_accounting.ComposedDpEvent(
        [dp_sgd_event(1.1, 0.05, 500), dp_accounting.GaussianDpEvent(2.0)]
    )
    assert normalize_event(compose_events([])) == dp_accounting.NoOpDpEvent()
    with_non_private = compose_events([event, dp_accounting.NonPrivateDpEvent()])
    assert normalize_event(with_non_private) == dp_accounting.NonPrivateDpEvent()


def test_non_private_detection_and_description() -> None:
    assert is_non_private(compose_events([dp_sgd_event(1.0, 0.1, 1), dp_accounting.NonPrivateDpEvent()]))
    assert not is_non_private(dp_sgd_event(1.0, 0.1, 1))
    assert describe_event(dp_sgd_event(1.1, 0.05, 300)) == "Poisson-subsampled Gaussian (sigma=1.1, q=0.05) x 300"
    assert sgd_parameters(compose_events([dp_sgd_event(1.0, 0.1, 1), gaussian_event(2.0)])) is None
