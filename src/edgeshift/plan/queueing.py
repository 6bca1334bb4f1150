"""Response-time percentiles of a pool of c identical servers (M/M/c, Erlang C).

Model: requests arrive as a Poisson process at rate ``lambda`` (the workload's peak rate), wait
in one FIFO queue, and are served by ``c`` identical servers, each at rate ``mu = 1 / S``.
For M/M/c the waiting time satisfies

    P(W > t) = C(c, a) * exp(-(c*mu - lambda) * t),     a = lambda / mu,  rho = a / c < 1

where C(c, a) is the Erlang C probability that an arrival has to wait. The p-quantile of the
response time is approximated as ``S + W_p`` with ``W_p`` the p-quantile of the wait: inference
service times are nearly constant, so adding the fixed service time to the M/M/c wait is the
honest shape, and M/M/c's exponential service over-states the wait (for c = 1 the mean M/D/1
wait is half the M/M/1 wait) — the prediction is conservative. The simulation checks it.
"""

from __future__ import annotations

import math

# Up to this many servers Erlang B's recursion is exact and cheap; beyond it the closed form
# through the regularized incomplete gamma function costs the same at any pool size.
_RECURSION_MAX_SERVERS = 1_000


def erlang_c(servers: int, offered_load: float) -> float:
    """Probability that an arrival waits, C(c, a); 1.0 when the queue is unstable (a >= c).

    Constant time at any ``servers`` (a rate of 10^15 requests/s asks for ~10^12 servers).
    """
    if servers < 1:
        raise ValueError("servers must be >= 1")
    if not offered_load > 0.0:  # also catches nan
        return 0.0 if offered_load <= 0.0 else 1.0
    if offered_load >= servers:
        return 1.0
    blocking = _erlang_b(servers, offered_load)
    rho = offered_load / servers
    return blocking / (1.0 - rho * (1.0 - blocking))


def _erlang_b(servers: int, offered_load: float) -> float:
    if servers <= _RECURSION_MAX_SERVERS:
        # The stable recursion: no factorials, no overflow.
        blocking = 1.0
        for k in range(1, servers + 1):
            blocking = offered_load * blocking / (k + offered_load * blocking)
        return blocking
    from scipy.special import gammaincc

    # B(c, a) = Poisson pmf(c; a) / Poisson cdf(c; a), the cdf being Q(c + 1, a). Here a < c,
    # so the cdf is >= ~1/2 and the division loses nothing. The pmf is taken in Loader's
    # saddle-point form: c log a - a - lgamma(c + 1) would cancel terms of 10^13 at c = 10^12.
    c = float(servers)
    log_pmf = -0.5 * math.log(2.0 * math.pi * c) - _stirling_error(c) - _deviance(c, offered_load)
    return min(1.0, math.exp(log_pmf) / float(gammaincc(c + 1.0, offered_load)))


def _stirling_error(n: float) -> float:
    """lgamma(n + 1) - (n + 1/2) log n + n - log(2 pi) / 2, by its series (n > 1000 here)."""
    return (1.0 / 12.0 - (1.0 / 360.0 - 1.0 / (1260.0 * n * n)) / (n * n)) / n


def _deviance(x: float, mean: float) -> float:
    """x log(x / mean) + mean - x without cancellation (x > mean here)."""
    excess = x - mean
    ratio = excess / mean
    if ratio < 0.1:
        # x log(1 + r) - excess = mean * sum_k (-1)^k r^k / (k (k - 1)), k >= 2, alternating.
        total, term, k = 0.0, ratio, 2
        while True:
            term *= -ratio
            step = -term / (k * (k - 1))
            total += step
            if abs(step) <= 1e-17 * abs(total):
                return mean * total
            k += 1
    return x * math.log1p(ratio) - excess


def wait_quantile_s(arrival_rps: float, service_s: float, servers: int, quantile: float) -> float:
    """The ``quantile`` of the M/M/c waiting time in seconds; ``inf`` when rho >= 1."""
    if not 0.0 < quantile < 1.0:
        raise ValueError("quantile must be in (0, 1)")
    if arrival_rps <= 0.0:
        return 0.0
    mu = 1.0 / service_s
    drain_rate = servers * mu - arrival_rps
    if drain_rate <= 0.0:
        return math.inf
    p_wait = erlang_c(servers, arrival_rps / mu)
    tail = 1.0 - quantile
    if p_wait <= tail:
        return 0.0  # at least ``quantile`` of arrivals find a free server
    return math.log(p_wait / tail) / drain_rate


def mean_wait_s(arrival_rps: float, service_s: float, servers: int) -> float:
    """Mean M/M/c waiting time in seconds, C(c, a) / (c*mu - lambda); ``inf`` when rho >= 1."""
    if arrival_rps <= 0.0:
        return 0.0
    mu = 1.0 / service_s
    drain_rate = servers * mu - arrival_rps
    if drain_rate <= 0.0:
        return math.inf
    return erlang_c(servers, arrival_rps / mu) / drain_rate


def response_quantile_ms(
    arrival_rps: float, service_ms: float, servers: int, quantile: float
) -> float:
    """Approximate ``quantile`` of the response time (service + M/M/c wait) in milliseconds."""
    wait_s = wait_quantile_s(arrival_rps, service_ms / 1000.0, servers, quantile)
    return service_ms + wait_s * 1000.0


def min_servers(
    arrival_rps: float,
    service_ms: float,
    quantile: float,
    budget_ms: float,
    max_utilization: float,
    servers_per_replica: int = 1,
    max_replicas: int = 1_000_000,
) -> int | None:
    """Fewest replicas (each ``servers_per_replica`` servers) that keep utilization at peak
    within ``max_utilization`` and the response ``quantile`` within ``budget_ms``.

    None when no count up to ``max_replicas`` does it (the service time alone exceeds the
    budget, or the replicas run out). At most ~2 log2(max_replicas) evaluations, whatever
    the rate: the response quantile only falls as servers are added, so the answer is found
    by doubling, then bisection.
    """
    if not (service_ms <= budget_ms and max_utilization > 0.0 and servers_per_replica >= 1):
        return None  # also refuses nan
    service_s = service_ms / 1000.0
    load = arrival_rps * service_s  # Erlangs: servers kept busy on average at peak
    needed = load / (max_utilization * servers_per_replica) - 1e-12
    if not needed <= max_replicas:  # also refuses inf and nan
        return None
    start = max(1, math.ceil(needed))

    def meets(replicas: int) -> bool:
        servers = replicas * servers_per_replica
        return response_quantile_ms(arrival_rps, service_ms, servers, quantile) <= budget_ms

    if meets(start):
        return start
    low, step = start, 1  # invariant: ``low`` does not meet the budget
    while True:
        high = min(low + step, max_replicas)
        if meets(high):
            break
        if high == max_replicas:
            return None
        low, step = high, step * 2
    while high - low > 1:
        mid = (low + high) // 2
        if meets(mid):
            high = mid
        else:
            low = mid
    return high
