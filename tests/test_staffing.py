"""Erlang C and Erlang A staffing (ivr.domain.staffing) and the ``ivr staffing`` command."""

from __future__ import annotations

import argparse
import io
import itertools
import json
import math
from fractions import Fraction

import pytest

from ivr import kpi_cli
from ivr.domain.staffing import (
    agents_for_asa,
    agents_for_pickup_target,
    agents_for_service_level,
    erlang_a,
    erlang_b,
    erlang_c,
    erlang_c_metrics,
    traffic_erlangs,
)


def erlang_c_exact(agents: int, traffic: Fraction) -> Fraction:
    """The textbook Erlang C formula in exact rational arithmetic (an independent reference):

    C = (A^N/N! * N/(N-A)) / (sum_{k<N} A^k/k! + A^N/N! * N/(N-A)).
    """
    top = traffic**agents / math.factorial(agents) * Fraction(agents) / (agents - traffic)
    return top / (sum(traffic**k / math.factorial(k) for k in range(agents)) + top)


def poisson_pmf(k: int, mean: float) -> float:
    return math.exp(-mean + k * math.log(mean) - math.lgamma(k + 1))


# -- Erlang C --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "traffic", [Fraction(1, 2), Fraction(2), Fraction(5), Fraction(10), Fraction(25, 2), Fraction(48)]
)
def test_erlang_c_matches_the_exact_formula(traffic: Fraction) -> None:
    base = math.floor(traffic) + 1
    for agents in range(base, base + 6):
        assert erlang_c(agents, float(traffic)) == pytest.approx(
            float(erlang_c_exact(agents, traffic)), abs=1e-12
        )


def test_erlang_c_published_values() -> None:
    # A = 2 Erlangs, N = 3: the basic example of Wolfram Language's ErlangC[3, 2]; by hand
    # (A^3/3! * 3/(3-2) = 4, sum_{k<3} 2^k/k! = 5): C = 4/9 exactly.
    assert erlang_c_exact(3, Fraction(2)) == Fraction(4, 9)
    assert erlang_c(3, 2.0) == pytest.approx(4 / 9, abs=1e-15)
    # A = 10, N = 11: P(wait) = 0.6821 to four places, checked with the exact rational formula.
    assert round(float(erlang_c_exact(11, Fraction(10))), 4) == 0.6821
    assert round(erlang_c(11, 10.0), 4) == 0.6821
    # Erlang B: A = 1, N = 2 -> (1/2) / (1 + 1 + 1/2) = 1/5.
    assert erlang_b(2, 1.0) == pytest.approx(0.2, abs=1e-15)


def test_erlang_c_asa_and_service_level() -> None:
    # 720 calls/h x 240 s = 48 Erlangs on 55 agents.
    m = erlang_c_metrics(720, 240, 55, answer_within_s=20)
    c = float(erlang_c_exact(55, Fraction(48)))
    assert m.traffic_erlangs == 48
    assert m.p_wait == pytest.approx(c, abs=1e-12)
    assert m.asa_s == pytest.approx(c * 240 / 7, rel=1e-12)
    assert m.service_level == pytest.approx(1 - c * math.exp(-7 * 20 / 240), rel=1e-12)
    assert m.occupancy == pytest.approx(48 / 55)
    # The team cannot keep up: everyone waits, the wait is unbounded.
    over = erlang_c_metrics(720, 240, 48)
    assert (over.p_wait, over.asa_s, over.service_level) == (1.0, None, 0.0)
    assert erlang_c(3, 0.0) == 0.0
    assert erlang_c_metrics(0, 240, 2).service_level == 1.0


def test_agents_for_service_level_and_asa_are_minimal() -> None:
    n = agents_for_service_level(720, 240, target=0.8, answer_within_s=20)
    assert erlang_c_metrics(720, 240, n).service_level >= 0.8
    assert erlang_c_metrics(720, 240, n - 1).service_level < 0.8
    n_asa = agents_for_asa(720, 240, asa_s=15)
    asa = erlang_c_metrics(720, 240, n_asa).asa_s
    before = erlang_c_metrics(720, 240, n_asa - 1).asa_s
    assert asa is not None and asa <= 15
    assert before is None or before > 15
    assert agents_for_service_level(0, 240) == 0
    # The application example of Wolfram Language's ErlangC documentation (30 calls/h, 5 min
    # mean service, 90 % of calls not delayed): A = 2.5, smallest N with C(N, 2.5) <= 0.1;
    # the answer is computed here with the exact formula, not copied.
    a = Fraction(5, 2)
    n_exact = next(n for n in range(3, 20) if erlang_c_exact(n, a) <= Fraction(1, 10))
    assert next(n for n in range(3, 20) if erlang_c(n, 2.5) <= 0.1) == n_exact == 6


# -- Erlang A --------------------------------------------------------------------------------


def test_erlang_a_equals_an_infinite_server_queue_when_patience_equals_handling_time() -> None:
    """With θ = μ every caller present leaves at rate μ: the number present is Poisson(A)."""
    a_erl, agents = 10.0, 12
    r = erlang_a(3600 * a_erl / 300, 300, 300, agents)
    assert r.traffic_erlangs == pytest.approx(a_erl)
    tail = 1 - sum(poisson_pmf(k, a_erl) for k in range(agents))
    excess = sum((k - agents) * poisson_pmf(k, a_erl) for k in range(agents + 1, 200))
    assert r.p_wait == pytest.approx(tail, rel=1e-10)
    assert r.p_abandon == pytest.approx(excess / a_erl, rel=1e-10)
    lam = a_erl / 300
    assert r.mean_wait_s == pytest.approx(excess / lam, rel=1e-10)


def test_erlang_a_tends_to_erlang_c_with_endless_patience() -> None:
    a = erlang_a(720, 240, 1e9, 55, answer_within_s=20)
    c = erlang_c_metrics(720, 240, 55, answer_within_s=20)
    assert a.p_wait == pytest.approx(c.p_wait, rel=1e-5)
    assert c.asa_s is not None and a.asa_s == pytest.approx(c.asa_s, rel=1e-5)
    assert a.service_level == pytest.approx(c.service_level, rel=1e-5)
    assert a.p_abandon < 1e-6


def test_erlang_a_is_self_consistent() -> None:
    r = erlang_a(720, 240, 120, 46, answer_within_s=20)
    # served within a very long time = all the served = 1 - P(abandon) (two different
    # computations: per-arrival uniformisation vs Little's law on the chain)
    forever = erlang_a(720, 240, 120, 46, answer_within_s=1e5)
    assert forever.service_level == pytest.approx(r.pickup_rate, abs=1e-9)
    # served within 0 s = did not wait
    assert erlang_a(720, 240, 120, 46, answer_within_s=0).service_level == pytest.approx(
        1 - r.p_wait, abs=1e-12
    )
    assert 1 - r.p_wait < r.service_level < r.pickup_rate
    # busy agents = carried traffic = A (1 - P(abandon))
    assert r.occupancy == pytest.approx(48 * r.pickup_rate / 46, rel=1e-9)
    # waits: the ones who gave up waited too, so the overall mean is positive and, with
    # exponential patience, P(abandon) = θ E[wait]
    assert r.p_abandon == pytest.approx(r.mean_wait_s / 120, rel=1e-9)
    assert r.asa_s > 0


def test_erlang_a_gets_better_with_more_agents() -> None:
    rates = [erlang_a(720, 240, 120, n).pickup_rate for n in range(0, 70, 5)]
    assert rates[0] == 0.0  # no agent: everybody gives up
    assert all(x < y for x, y in itertools.pairwise(rates))
    assert rates[-1] > 0.999


def test_agents_for_pickup_target_is_minimal() -> None:
    for calls, aht, patience, target in [(720, 240, 120, 0.85), (120, 300, 90, 0.85), (30, 600, 60, 0.95)]:
        n = agents_for_pickup_target(calls, aht, patience, target)
        assert erlang_a(calls, aht, patience, n).pickup_rate >= target
        assert erlang_a(calls, aht, patience, n - 1).pickup_rate < target
    # with abandonment fewer agents than Erlangs can reach 85 %
    assert agents_for_pickup_target(720, 240, 120, 0.85) < 48
    assert agents_for_pickup_target(0, 240, 120) == 0


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: traffic_erlangs(-1, 100), "calls_per_hour"),
        (lambda: traffic_erlangs(10, 0), "aht_s"),
        (lambda: erlang_a(10, 100, float("nan"), 2), "patience_s"),
        (lambda: erlang_a(10, 100, 60, -1), "agents"),
        (lambda: agents_for_pickup_target(10, 100, 60, 1.0), "target"),
        (lambda: agents_for_service_level(10, 100, target=0.0), "target"),
        (lambda: erlang_c(-1, 1.0), "agents"),
        (lambda: erlang_c_metrics(10, 100, 2, answer_within_s=-5), "answer_within_s"),
    ],
)
def test_bad_inputs_are_refused(call: object, message: str) -> None:
    assert callable(call)
    with pytest.raises(ValueError, match=message):
        call()


# -- the command --------------------------------------------------------------------------------


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="ivr")
    sub = parser.add_subparsers(dest="command")
    kpi_cli.add_parser(sub)
    return parser.parse_args(argv)


def test_staffing_command_json() -> None:
    out = io.StringIO()
    args = _parse(["staffing", "--calls-per-hour", "120", "--aht", "300", "--patience", "90", "--json"])
    assert kpi_cli.run_staffing(args, out) == 0
    fig = json.loads(out.getvalue())
    n = agents_for_pickup_target(120, 300, 90, 0.85)
    assert fig["erlang_a"]["agents"] == n
    assert fig["erlang_a"]["pickup_rate"] >= 0.85
    assert fig["traffic_erlangs"] == pytest.approx(10.0)
    assert fig["erlang_c"]["agents_for_sl_target"] == agents_for_service_level(120, 300, target=0.8)
    assert fig["table"][0]["agents"] == n - 3
    assert any(
        row["agents"] == n and row["pickup_rate"] == fig["erlang_a"]["pickup_rate"] for row in fig["table"]
    )
    assert fig["inputs"]["target"] == 0.85


def test_staffing_command_text_and_percent_target(capsys: pytest.CaptureFixture[str]) -> None:
    args = _parse(
        ["staffing", "--calls-per-hour", "720", "--aht", "240", "--patience", "120", "--target", "90%"]
    )
    assert args.target == pytest.approx(0.9)
    assert kpi_cli.run(args) == 0  # the ivr.cli entry point dispatches on the subcommand
    text = capsys.readouterr().out
    n = agents_for_pickup_target(720, 240, 120, 0.9)
    assert f"Erlang A: {n} agents" in text
    assert "48.00 Erlangs" in text


@pytest.mark.parametrize(
    "argv",
    [
        ["staffing", "--calls-per-hour", "120", "--aht", "300"],  # no patience
        ["staffing", "--calls-per-hour", "120", "--aht", "0", "--patience", "90"],
        ["staffing", "--calls-per-hour", "-3", "--aht", "300", "--patience", "90"],
        ["staffing", "--calls-per-hour", "120", "--aht", "300", "--patience", "90", "--target", "1.5"],
        ["staffing", "--calls-per-hour", "lots", "--aht", "300", "--patience", "90"],
    ],
)
def test_staffing_command_bad_arguments(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        _parse(argv)
    assert exc.value.code == 2
    assert "error" in capsys.readouterr().err
