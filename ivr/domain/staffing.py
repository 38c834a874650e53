"""How many agents a line needs: Erlang C (callers wait forever) and Erlang A (callers give up).

Erlang C (M/M/N) is the classic staffing formula, but it assumes nobody hangs up, which on a
public-service line is exactly what the pickup rate measures; it over-staffs when the
service is comfortable and is undefined once traffic reaches the number of agents. Erlang A
(M/M/N+M, Palm 1943; Garnett, Mandelbaum & Reiman 2002) adds exponentially distributed
patience with mean ``patience_s``, so it always has an answer and gives the abandon
probability directly: the pickup rate an N-agent team can reach is ``1 - P(abandon)``.

Units: ``calls_per_hour`` arrivals (Poisson), ``aht_s`` mean handling time (talk + wrap-up,
exponential), offered traffic ``A = calls_per_hour * aht_s / 3600`` Erlangs.

Erlang C, with the Erlang B recursion ``B(0) = 1, B(k) = A B(k-1) / (k + A B(k-1))``
(stable for hundreds of agents, no factorials)::

    P(wait) = C(N, A) = N B(N, A) / (N - A (1 - B(N, A)))       for N > A, else 1
    ASA     = C * AHT / (N - A)
    SL(T)   = 1 - C * exp(-(N - A) * T / AHT)                    (answered within T / all calls)

Erlang A is computed exactly on its birth-death chain rather than with the closed forms
(which need incomplete gamma functions and lose precision for large teams): state ``k`` =
calls present, birth rate ``λ``, death rate ``μ min(k, N) + θ max(k - N, 0)`` with
``μ = 1/AHT``, ``θ = 1/patience``. The stationary weights are built in log space (no
overflow) and the chain is cut once the weights fall below ``e^-45`` of the largest, far
below float precision of the results. Then, by PASTA and Little's law::

    P(wait)    = sum_{k >= N} π_k
    E[queue]   = sum_{k > N} (k - N) π_k
    P(abandon) = θ E[queue] / λ            (abandonment flow / arrival flow)
    mean wait  = E[queue] / λ              (over all callers, those who give up included)

For the fate of one caller who finds ``m`` callers waiting ahead of them (FCFS), each step
"one fewer ahead" happens at rate ``q_m = Nμ + mθ`` and they give up at rate ``θ``, so with
``R_m = q_m + θ``: ``P(served) = s_m = (q_m / R_m) s_{m-1}`` (``s_{-1} = 1``) and
``E[wait; served] = w_m = (q_m / R_m)(s_{m-1} / R_m + w_{m-1})``. That gives the ASA of
served callers and, by uniformisation of the same small chain, the service level
``SL(T) = P(served within T)`` over all callers -- the same definition as the KPI engine's
SL(T) (answered within T ÷ asked for an agent).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Final

__all__ = [
    "ErlangAResult",
    "ErlangCResult",
    "agents_for_asa",
    "agents_for_pickup_target",
    "agents_for_service_level",
    "erlang_a",
    "erlang_b",
    "erlang_c",
    "erlang_c_metrics",
    "traffic_erlangs",
]

#: Chain states beyond this many are refused (patience so long and traffic so far above
#: capacity that the queue would hold millions of callers: not a staffing question).
_MAX_STATES: Final = 2_000_000
#: Relative weight below which chain states are dropped (e^-45 ~ 3e-20).
_LOG_CUT: Final = -45.0
#: Largest team the ``agents_for_*`` searches try.
_MAX_AGENTS: Final = 100_000


def _check_positive(name: str, value: float, *, zero_ok: bool = False) -> None:
    if not math.isfinite(value) or value < 0 or (value == 0 and not zero_ok):
        bound = ">= 0" if zero_ok else "> 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")


def _check_target(target: float) -> None:
    if not (math.isfinite(target) and 0 < target < 1):
        raise ValueError(f"target must be strictly between 0 and 1, got {target!r}")


def traffic_erlangs(calls_per_hour: float, aht_s: float) -> float:
    """Offered traffic in Erlangs: arrivals per second × mean handling time."""
    _check_positive("calls_per_hour", calls_per_hour, zero_ok=True)
    _check_positive("aht_s", aht_s)
    return calls_per_hour * aht_s / 3600.0


def erlang_b(agents: int, traffic: float) -> float:
    """Blocking probability of N servers without a queue (Erlang B), by the stable recursion."""
    if agents < 0:
        raise ValueError(f"agents must be >= 0, got {agents}")
    _check_positive("traffic", traffic, zero_ok=True)
    b = 1.0
    for k in range(1, agents + 1):
        b = traffic * b / (k + traffic * b)
    return b


def erlang_c(agents: int, traffic: float) -> float:
    """Probability that a caller waits (Erlang C); 1 when the team cannot keep up (N <= A)."""
    if agents < 0:
        raise ValueError(f"agents must be >= 0, got {agents}")
    _check_positive("traffic", traffic, zero_ok=True)
    if traffic == 0:
        return 0.0
    if agents <= traffic:
        return 1.0
    b = erlang_b(agents, traffic)
    return agents * b / (agents - traffic * (1 - b))


@dataclass(frozen=True, slots=True)
class ErlangCResult:
    """Erlang C figures for one team size. ``asa_s`` is None when the queue grows without bound."""

    agents: int
    traffic_erlangs: float
    occupancy: float
    p_wait: float
    asa_s: float | None
    service_level: float
    answer_within_s: float

    def to_dict(self) -> dict[str, float | int | None]:
        return asdict(self)


def erlang_c_metrics(
    calls_per_hour: float, aht_s: float, agents: int, *, answer_within_s: float = 20.0
) -> ErlangCResult:
    """P(wait), ASA and SL(T) of an N-agent team under Erlang C."""
    _check_positive("answer_within_s", answer_within_s, zero_ok=True)
    a = traffic_erlangs(calls_per_hour, aht_s)
    c = erlang_c(agents, a)
    if a == 0:
        return ErlangCResult(agents, a, 0.0, 0.0, 0.0, 1.0, answer_within_s)
    if agents <= a:
        return ErlangCResult(agents, a, 1.0, 1.0, None, 0.0, answer_within_s)
    asa = c * aht_s / (agents - a)
    sl = 1.0 - c * math.exp(-(agents - a) * answer_within_s / aht_s)
    return ErlangCResult(agents, a, a / agents, c, asa, sl, answer_within_s)


def _search(ok: Callable[[int], bool], start: int, what: str) -> int:
    n = start
    while n <= _MAX_AGENTS:
        if ok(n):
            return n
        n += 1
    raise ValueError(f"{what}: no team of up to {_MAX_AGENTS} agents reaches the target")


def agents_for_service_level(
    calls_per_hour: float, aht_s: float, *, target: float = 0.8, answer_within_s: float = 20.0
) -> int:
    """Smallest team whose Erlang C SL(T) reaches ``target`` (0 when there is no traffic)."""
    _check_target(target)
    a = traffic_erlangs(calls_per_hour, aht_s)
    if a == 0:
        return 0
    return _search(
        lambda n: (
            erlang_c_metrics(calls_per_hour, aht_s, n, answer_within_s=answer_within_s).service_level
            >= target
        ),
        math.floor(a) + 1,
        "service level",
    )


def agents_for_asa(calls_per_hour: float, aht_s: float, *, asa_s: float) -> int:
    """Smallest team whose Erlang C ASA is at most ``asa_s`` seconds."""
    _check_positive("asa_s", asa_s, zero_ok=True)
    a = traffic_erlangs(calls_per_hour, aht_s)
    if a == 0:
        return 0

    def ok(n: int) -> bool:
        asa = erlang_c_metrics(calls_per_hour, aht_s, n).asa_s
        return asa is not None and asa <= asa_s

    return _search(ok, math.floor(a) + 1, "ASA")


@dataclass(frozen=True, slots=True)
class ErlangAResult:
    """Erlang A figures for one team size.

    ``pickup_rate = 1 - p_abandon``; ``asa_s`` is the mean wait of the callers who were
    served, ``mean_wait_s`` that of every caller (the ones who gave up included);
    ``service_level`` = P(served within ``answer_within_s``) over all callers.
    """

    agents: int
    traffic_erlangs: float
    patience_s: float
    occupancy: float
    p_wait: float
    p_abandon: float
    pickup_rate: float
    asa_s: float
    mean_wait_s: float
    service_level: float
    answer_within_s: float

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def _chain(lam: float, mu: float, theta: float, agents: int) -> list[float]:
    """Normalised stationary distribution of the M/M/N+M chain, cut where it is negligible."""
    logs = [0.0]
    log_lam = math.log(lam)
    top = 0.0
    k = 0
    while True:
        k += 1
        death = mu * min(k, agents) + theta * max(k - agents, 0)
        value = logs[-1] + log_lam - math.log(death)
        logs.append(value)
        top = max(top, value)
        # past the mode (weights falling) and negligible: stop
        if k > agents and lam < death and value < top + _LOG_CUT:
            break
        if k > _MAX_STATES:
            raise ValueError("Erlang A: the queue would hold millions of callers; check the inputs")
    weights = [math.exp(v - top) for v in logs]
    total = math.fsum(weights)
    return [w / total for w in weights]


def _poisson_terms(x: float) -> list[float]:
    """Poisson(x) probabilities for n = 0.. until the tail is below 1e-15 (log space, no underflow)."""
    out: list[float] = []
    n = 0
    acc = 0.0
    while True:
        p = math.exp(-x + n * math.log(x) - math.lgamma(n + 1)) if x > 0 else (1.0 if n == 0 else 0.0)
        out.append(p)
        acc += p
        if n > x and (1.0 - acc < 1e-15 or p < 1e-300):
            return out
        n += 1


def _served_within(q: list[float], theta: float, horizon: float) -> list[float]:
    """P(served within ``horizon``) for a caller with m = 0..M callers ahead, by uniformisation.

    State m moves to m-1 (m = 0: served) at rate ``q[m]``, is lost at rate ``θ``; with the
    uniform rate Λ = max(q) + θ, after n jumps ``h_n[m] = P(served within n jumps)`` obeys
    ``h_n[m] = (q[m]/Λ) h_{n-1}[m-1] + (1 - (q[m]+θ)/Λ) h_{n-1}[m]`` with ``h[-1] = 1``,
    and P(served by T) = sum_n Poisson(n; ΛT) h_n.
    """
    size = len(q)
    if horizon <= 0 or size == 0:
        return [0.0] * size
    rate = max(q) + theta
    terms = _poisson_terms(rate * horizon)
    down = [qm / rate for qm in q]
    stay = [1.0 - (qm + theta) / rate for qm in q]
    h = [0.0] * size
    out = [terms[0] * v for v in h]
    for p in terms[1:]:
        h = [down[m] * (h[m - 1] if m else 1.0) + stay[m] * h[m] for m in range(size)]
        for m in range(size):
            out[m] += p * h[m]
    return out


def erlang_a(
    calls_per_hour: float,
    aht_s: float,
    patience_s: float,
    agents: int,
    *,
    answer_within_s: float = 20.0,
) -> ErlangAResult:
    """Erlang A (M/M/N+M) figures for an N-agent team; see the module docstring for the method."""
    if agents < 0:
        raise ValueError(f"agents must be >= 0, got {agents}")
    _check_positive("patience_s", patience_s)
    _check_positive("answer_within_s", answer_within_s, zero_ok=True)
    a = traffic_erlangs(calls_per_hour, aht_s)
    if a == 0:
        return ErlangAResult(agents, 0.0, patience_s, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 1.0, answer_within_s)
    lam = calls_per_hour / 3600.0
    mu = 1.0 / aht_s
    theta = 1.0 / patience_s
    pi = _chain(lam, mu, theta, agents)
    tail = pi[agents:]  # states with m = k - N callers waiting ahead of an arrival
    p_wait = math.fsum(tail)
    queue_len = math.fsum(m * p for m, p in enumerate(tail))
    p_abandon = min(1.0, theta * queue_len / lam)
    q = [agents * mu + m * theta for m in range(len(tail))]
    served = [0.0] * len(tail)
    wait_served = [0.0] * len(tail)
    s_prev, w_prev = 1.0, 0.0
    for m, qm in enumerate(q):
        r = qm + theta
        s = qm / r * s_prev
        w = qm / r * (s_prev / r + w_prev)
        served[m], wait_served[m] = s, w
        s_prev, w_prev = s, w
    p_served = math.fsum(pi[:agents]) + math.fsum(p * s for p, s in zip(tail, served, strict=True))
    asa = math.fsum(p * w for p, w in zip(tail, wait_served, strict=True)) / p_served if p_served > 0 else 0.0
    within = _served_within(q, theta, answer_within_s)
    sl = math.fsum(pi[:agents]) + math.fsum(p * u for p, u in zip(tail, within, strict=True))
    busy = math.fsum(min(k, agents) * p for k, p in enumerate(pi))
    occupancy = busy / agents if agents else 0.0
    return ErlangAResult(
        agents=agents,
        traffic_erlangs=a,
        patience_s=patience_s,
        occupancy=occupancy,
        p_wait=p_wait,
        p_abandon=p_abandon,
        pickup_rate=1.0 - p_abandon,
        asa_s=asa,
        mean_wait_s=queue_len / lam,
        service_level=sl,
        answer_within_s=answer_within_s,
    )


def _p_abandon(lam: float, mu: float, theta: float, agents: int) -> float:
    pi = _chain(lam, mu, theta, agents)
    return min(1.0, theta * math.fsum(m * p for m, p in enumerate(pi[agents:])) / lam)


def agents_for_pickup_target(
    calls_per_hour: float, aht_s: float, patience_s: float, target: float = 0.85
) -> int:
    """Smallest team whose Erlang A pickup rate ``1 - P(abandon)`` reaches ``target``.

    P(abandon) falls as agents are added, so the first team that reaches the target is the
    answer; the search starts a little under the offered traffic (with abandonment fewer
    agents than Erlangs can already be enough).
    """
    _check_target(target)
    _check_positive("patience_s", patience_s)
    a = traffic_erlangs(calls_per_hour, aht_s)
    if a == 0:
        return 0
    lam, mu, theta = calls_per_hour / 3600.0, 1.0 / aht_s, 1.0 / patience_s
    start = max(0, math.floor(a * target) - 1)
    while start > 0 and 1.0 - _p_abandon(lam, mu, theta, start) >= target:
        start //= 2
    return _search(lambda n: 1.0 - _p_abandon(lam, mu, theta, n) >= target, start, "pickup rate")
