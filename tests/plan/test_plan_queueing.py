"""Erlang C and the response-time quantile against hand computation and closed forms."""

from __future__ import annotations

import math

import pytest

from edgeshift.plan import queueing
from edgeshift.plan.queueing import (
    erlang_c,
    mean_wait_s,
    min_servers,
    response_quantile_ms,
    wait_quantile_s,
)


def test_erlang_c_single_server_is_utilization() -> None:
    # M/M/1: an arrival waits exactly when the server is busy, probability rho.
    assert erlang_c(1, 0.3) == pytest.approx(0.3, rel=1e-12)


def test_erlang_c_two_servers_by_hand() -> None:
    # a = 0.4, c = 2: C = (a^2/2 / (1 - a/2)) / (1 + a + a^2/2 / (1 - a/2)) = 0.1 / 1.5
    assert erlang_c(2, 0.4) == pytest.approx(0.1 / 1.5, rel=1e-12)


def test_erlang_c_matches_factorial_formula() -> None:
    c, a = 7, 5.2
    top = a**c / math.factorial(c) * c / (c - a)
    bottom = sum(a**k / math.factorial(k) for k in range(c)) + top
    assert erlang_c(c, a) == pytest.approx(top / bottom, rel=1e-12)


def test_erlang_c_large_pools_do_not_overflow() -> None:
    value = erlang_c(5000, 4900.0)
    assert 0.0 < value < 1.0


def test_unstable_queue_has_infinite_wait() -> None:
    assert erlang_c(2, 2.0) == 1.0
    assert wait_quantile_s(100.0, 0.02, 2, 0.99) == math.inf
    assert mean_wait_s(100.0, 0.02, 2) == math.inf


def test_mm1_wait_quantile_closed_form() -> None:
    # M/M/1: P(W > t) = rho * exp(-(mu - lambda) t)  =>  t_p = ln(rho / (1 - p)) / (mu - lambda)
    lam, service_s = 30.0, 0.02
    rho = lam * service_s
    expected = math.log(rho / 0.01) / (1 / service_s - lam)
    assert wait_quantile_s(lam, service_s, 1, 0.99) == pytest.approx(expected, rel=1e-12)
    assert mean_wait_s(lam, service_s, 1) == pytest.approx(rho / (1 / service_s - lam))


def test_wait_quantile_is_zero_when_most_arrivals_find_a_free_server() -> None:
    # C(4, 0.2) is far below 1 %: the 99th percentile arrival does not wait.
    assert wait_quantile_s(10.0, 0.02, 4, 0.99) == 0.0
    assert response_quantile_ms(10.0, 20.0, 4, 0.99) == 20.0


def test_response_quantile_by_hand() -> None:
    # lambda 10/s, S 10 ms, c 1: C = 0.1, t_99 = ln(10) / 90 s = 25.58 ms, plus S.
    assert response_quantile_ms(10.0, 10.0, 1, 0.99) == pytest.approx(
        10.0 + 1000 * math.log(10) / 90, rel=1e-12
    )


def test_min_servers_respects_headroom_and_slo() -> None:
    # Load 20/s * 50 ms = 1 Erlang: headroom 0.8 needs 2 servers; the SLO may need more.
    assert min_servers(20.0, 50.0, 0.99, 10_000.0, 0.8) == 2
    two = response_quantile_ms(20.0, 50.0, 2, 0.99)
    three = response_quantile_ms(20.0, 50.0, 3, 0.99)
    assert three < two
    assert min_servers(20.0, 50.0, 0.99, (two + three) / 2, 0.8) == 3
    # Servers per replica: 4 streams per node, 1 Erlang fits in one node at 25 %.
    assert min_servers(20.0, 50.0, 0.99, 10_000.0, 0.8, servers_per_replica=4) == 1


def test_min_servers_none_when_service_alone_exceeds_budget() -> None:
    assert min_servers(1.0, 50.0, 0.99, 40.0, 0.8) is None
    assert min_servers(100.0, 50.0, 0.99, 60.0, 0.8, max_replicas=3) is None


@pytest.mark.parametrize(("servers", "load"), [(1001, 990.0), (1500, 1400.3), (5000, 4900.0)])
def test_erlang_c_closed_form_matches_the_recursion(
    monkeypatch: pytest.MonkeyPatch, servers: int, load: float
) -> None:
    closed_form = erlang_c(servers, load)  # past the recursion's limit of 1,000 servers
    monkeypatch.setattr(queueing, "_RECURSION_MAX_SERVERS", 10**9)
    # Both are exact formulas; 1e-10 leaves room for the rounding of ~5,000 recursion steps.
    assert closed_form == pytest.approx(erlang_c(servers, load), rel=1e-10)


@pytest.mark.parametrize("beta", [0.1, 1.0, 2.0])
def test_erlang_c_at_a_trillion_servers_is_halfin_whitt(beta: float) -> None:
    # Constant time (the recursion would take 10^12 steps). With c = a + beta * sqrt(a),
    # C -> 1 / (1 + beta * Phi(beta) / phi(beta)) as a grows (Halfin & Whitt, 1981); the
    # correction is O(1 / sqrt(a)) = 1e-6 here (1e-7 measured), so 1e-5 is a safe margin.
    servers = 10**12
    load = servers - beta * math.sqrt(servers)  # beta * sqrt(a) differs by ~1e-6 servers
    cdf = 0.5 * (1.0 + math.erf(beta / math.sqrt(2.0)))
    pdf = math.exp(-beta * beta / 2.0) / math.sqrt(2.0 * math.pi)
    assert erlang_c(servers, load) == pytest.approx(1.0 / (1.0 + beta * cdf / pdf), abs=1e-5)
    assert erlang_c(servers, 0.99e12) == 0.0  # 10^4 deviations below: nobody waits


def test_min_servers_at_1e15_requests_per_second() -> None:
    # 1e15/s * 0.2 ms = 2e11 Erlangs: 62.5e9 nodes of 4 streams at 80 %; wait quantile is 0.
    assert min_servers(1e15, 0.2, 0.99, 30.0, 0.8, 4, max_replicas=10**15) == 62_500_000_000
    assert min_servers(1e15, 0.2, 0.99, 30.0, 0.8, 4) is None  # beyond the default cap
    assert min_servers(float("inf"), 0.2, 0.99, 30.0, 0.8) is None
    assert min_servers(float("nan"), 0.2, 0.99, 30.0, 0.8) is None


@pytest.mark.parametrize("budget_ms", [50.3, 51.0, 55.0, 60.0, 80.0])
def test_min_servers_is_the_fewest_that_meet_the_budget(budget_ms: float) -> None:
    # Headroom 1.0 leaves the SLO to bind: the bisection must land on the first count that
    # meets it, as a linear scan would.
    rate, service_ms = 1500.0, 50.0
    found = min_servers(rate, service_ms, 0.99, budget_ms, 1.0)
    assert found is not None
    assert response_quantile_ms(rate, service_ms, found, 0.99) <= budget_ms
    assert response_quantile_ms(rate, service_ms, found - 1, 0.99) > budget_ms
