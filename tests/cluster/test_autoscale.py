"""The autoscaling policy, without Ray: counts from in-flight samples and the queueing model."""

from __future__ import annotations

import pytest

from edgeshift.cluster.autoscale import (
    AutoscalePolicy,
    Autoscaler,
    LoadSample,
    in_flight_total,
    requests_total,
    wanted_replicas,
)
from edgeshift.errors import ConfigError


def test_wanted_replicas_is_in_flight_over_the_target() -> None:
    policy = AutoscalePolicy(min_replicas=1, max_replicas=8, target_in_flight=4)
    assert wanted_replicas(LoadSample(0), policy) == 0
    assert wanted_replicas(LoadSample(4), policy) == 1
    assert wanted_replicas(LoadSample(4.5), policy) == 2
    assert wanted_replicas(LoadSample(16), policy) == 4


def test_the_queueing_model_asks_for_more_when_the_rate_needs_it() -> None:
    policy = AutoscalePolicy(1, 10, target_in_flight=4, latency_budget_ms=20)
    # 1000 req/s of 5 ms each is 5 servers busy: at 80 % that is >= 7 (plus the p99 wait).
    got = wanted_replicas(LoadSample(1, arrival_rps=1000, service_ms=5), policy)
    assert 7 <= got <= 10
    # A budget the service time alone exceeds: as many as allowed.
    tight = AutoscalePolicy(1, 10, latency_budget_ms=2)
    assert wanted_replicas(LoadSample(1, arrival_rps=10, service_ms=5), tight) == 10


def test_scale_up_is_immediate_and_clamped() -> None:
    scaler = Autoscaler(AutoscalePolicy(min_replicas=1, max_replicas=3, target_in_flight=2))
    assert scaler.step(0.0, 1, LoadSample(1)) == 1
    # A load step: two samples above capacity act before the window's mean catches up.
    assert scaler.step(0.5, 1, LoadSample(12)) in (1, 3)
    assert scaler.step(1.0, 1, LoadSample(12)) == 3  # 6 wanted, clamped to max 3


def test_scale_down_waits_for_the_delay_and_respects_min() -> None:
    scaler = Autoscaler(AutoscalePolicy(2, 6, target_in_flight=2, downscale_delay_s=10, window=1))
    assert scaler.step(0.0, 5, LoadSample(0)) == 5
    assert scaler.step(9.9, 5, LoadSample(0)) == 5
    assert scaler.step(10.0, 5, LoadSample(0)) == 2  # min_replicas, not 0
    # A burst in between restarts the delay.
    assert scaler.step(11.0, 2, LoadSample(0)) == 2
    assert scaler.step(20.0, 4, LoadSample(8)) == 4
    assert scaler.step(21.0, 4, LoadSample(0)) == 4
    assert scaler.step(30.9, 4, LoadSample(0)) == 4
    assert scaler.step(31.0, 4, LoadSample(0)) == 2


@pytest.mark.parametrize(
    ("low", "high", "message"),
    [(-1, 2, "--min-replicas must be >= 0"), (3, 2, "--max-replicas"), (0, 0, "--max-replicas")],
)
def test_bad_counts_are_one_line_errors(low: int, high: int, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        AutoscalePolicy(low, high)


def test_in_flight_total_sums_every_model() -> None:
    text = (
        "# HELP edgeshift_inference_in_flight x\n"
        'edgeshift_inference_in_flight{model="a"} 3.0\n'
        'edgeshift_inference_in_flight{model="b"} 2.0\n'
        'edgeshift_queue_depth{model="a"} 7.0\n'
    )
    assert in_flight_total(text) == 5.0
    assert in_flight_total("") == 0.0


def test_requests_total_reads_the_counter_not_its_creation_time() -> None:
    text = (
        'edgeshift_inference_requests_total{model="a",status="200",version="1"} 10.0\n'
        'edgeshift_inference_requests_total{model="a",status="400",version="1"} 2.0\n'
        'edgeshift_inference_requests_created{model="a",status="200",version="1"} 1.7e9\n'
    )
    assert requests_total(text) == 12.0
