"""The discrete-event simulation against the queueing model it checks."""

from __future__ import annotations

import pytest

from edgeshift.plan.queueing import mean_wait_s, response_quantile_ms, wait_quantile_s
from edgeshift.plan.simulate import simulate_queue


@pytest.mark.parametrize(("rate", "service_ms", "servers"), [(40.0, 20.0, 1), (150.0, 20.0, 4)])
def test_exponential_service_reproduces_erlang_c(
    rate: float, service_ms: float, servers: int
) -> None:
    # With exponential service the simulation *is* M/M/c, so the formula is exact. 200k
    # requests put ~1,800 measured samples above the 99th percentile: the sampling error of
    # the p99 wait and of the mean wait is a few percent, hence 10 %.
    sim = simulate_queue(rate, service_ms, servers, requests=200_000, service="exponential", seed=1)
    service_s = service_ms / 1000
    assert sim.mean_wait_ms == pytest.approx(1000 * mean_wait_s(rate, service_s, servers), rel=0.10)
    assert sim.p99_wait_ms == pytest.approx(
        1000 * wait_quantile_s(rate, service_s, servers, 0.99), rel=0.10
    )
    assert sim.utilization == pytest.approx(rate * service_s / servers, rel=0.03)


@pytest.mark.parametrize(
    ("rate", "service_ms", "servers"), [(30.0, 20.0, 1), (120.0, 20.0, 3), (700.0, 5.0, 4)]
)
def test_constant_service_is_within_the_conservative_prediction(
    rate: float, service_ms: float, servers: int
) -> None:
    # Inference has near-constant service: the M/M/c prediction over-states the wait, so the
    # simulated p99 must not exceed it (and M/D/c waits are roughly half: not absurdly lower).
    sim = simulate_queue(rate, service_ms, servers, requests=100_000, seed=2)
    predicted = response_quantile_ms(rate, service_ms, servers, 0.99)
    assert sim.p99_ms <= predicted
    assert sim.p99_ms - service_ms >= 0.25 * (predicted - service_ms)


def test_network_time_adds_and_seed_reproduces() -> None:
    a = simulate_queue(50.0, 10.0, 1, requests=5_000, network_ms=7.0, seed=3)
    b = simulate_queue(50.0, 10.0, 1, requests=5_000, network_ms=7.0, seed=3)
    c = simulate_queue(50.0, 10.0, 1, requests=5_000, network_ms=0.0, seed=3)
    assert a == b
    assert a.p99_ms == pytest.approx(c.p99_ms + 7.0)
    assert a.p50_ms >= 17.0  # network + service is the floor


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError):
        simulate_queue(0.0, 10.0, 1)
    with pytest.raises(ValueError):
        simulate_queue(10.0, 10.0, 0)
    with pytest.raises(ValueError, match="seed -1 is negative"):
        simulate_queue(10.0, 10.0, 1, seed=-1)
    with pytest.raises(ValueError):
        simulate_queue(float("inf"), 10.0, 1)


def test_a_pool_larger_than_the_requests_is_not_allocated() -> None:
    # 10^12 servers for 1,000 requests: nobody waits, and no list of 10^12 free times is made.
    result = simulate_queue(1e6, 5.0, 10**12, requests=1_000, seed=1)
    assert result.mean_wait_ms == 0.0 and result.p99_ms == pytest.approx(5.0)
