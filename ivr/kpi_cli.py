"""``ivr report`` (KPIs from the Redis event stream) and ``ivr staffing`` (Erlang A / C).

Both subcommands live here because they share the KPI vocabulary; :func:`add_parser`
registers the two of them (one entry in ``ivr.cli.COMMANDS`` is enough) and :func:`run`
dispatches on ``args.command``. The figures come from :mod:`ivr.domain.kpi` and
:mod:`ivr.domain.staffing`; this module only parses options, reads Redis and prints.

Time options (``--since`` / ``--until``) take an ISO date (local midnight in the report's
timezone), an ISO date-time (local unless it has an offset), epoch seconds, or ``today``,
``yesterday``, ``now``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import math
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import date, datetime, time, timedelta
from typing import TYPE_CHECKING, Any, TextIO
from zoneinfo import ZoneInfo

from ivr.domain.events import CallEvent
from ivr.domain.kpi import KpiAccumulator, KpiSettings, report_document, report_to_csv
from ivr.domain.staffing import (
    agents_for_pickup_target,
    agents_for_service_level,
    erlang_a,
    erlang_c_metrics,
    traffic_erlangs,
)

if TYPE_CHECKING:
    import redis.asyncio

    from ivr.config import Config

__all__ = [
    "add_parser",
    "add_report_parser",
    "add_staffing_parser",
    "parse_when",
    "report_from_redis",
    "run",
    "run_report",
    "run_staffing",
    "settings_from_config",
    "staffing_figures",
]

#: How far before ``--since`` events are read, so that a call that started just before it
#: is recognised as such (and left out) rather than taken for a call starting later.
DEFAULT_LOOKBEHIND_S = 6 * 3600.0
#: How far after ``--until`` events are read: a call started in the range may complete its
#: callback (or answer the survey) later, and that belongs to its figures.
DEFAULT_LOOKAHEAD_S = 24 * 3600.0


# -- shared parsing ---------------------------------------------------------------------------


def parse_when(text: str, tz: ZoneInfo, *, now: float | None = None) -> float:
    """``--since`` / ``--until`` value -> epoch seconds (see the module docstring)."""
    value = text.strip()
    current = datetime.now(tz) if now is None else datetime.fromtimestamp(now, tz)
    lowered = value.lower()
    if lowered == "now":
        return current.timestamp()
    if lowered in ("today", "yesterday"):
        day = current.date() - timedelta(days=1 if lowered == "yesterday" else 0)
        return datetime.combine(day, time(), tz).timestamp()
    try:
        number = float(value)
    except ValueError:
        pass
    else:
        if not math.isfinite(number) or number < 0:
            raise ValueError(f"invalid time {text!r}: epoch seconds must be a finite number >= 0")
        return number
    try:
        if len(value) == 10:
            return datetime.combine(date.fromisoformat(value), time(), tz).timestamp()
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(
            f"invalid time {text!r}: use YYYY-MM-DD, YYYY-MM-DDTHH:MM[:SS][+HH:MM], epoch seconds, "
            "today, yesterday or now"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=tz)
    return moment.timestamp()


def _positive(kind: type[float] | type[int], *, zero_ok: bool = False) -> Callable[[str], Any]:
    def parse(text: str) -> float | int:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value) or value < 0 or (value == 0 and not zero_ok):
            raise argparse.ArgumentTypeError(f"must be {'>= 0' if zero_ok else '> 0'}, got {text!r}")
        return value

    return parse


def _fraction(text: str) -> float:
    """A target as 0.85 or 85%."""
    raw = text.strip()
    try:
        value = float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction like 0.85 or 85%, got {text!r}") from None
    if not (math.isfinite(value) and 0 < value < 1):
        raise argparse.ArgumentTypeError(f"must be strictly between 0 and 1 (or 0% and 100%), got {text!r}")
    return value


# -- ivr report -------------------------------------------------------------------------------


def add_report_parser(subparsers: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "report",
        help="KPIs (pickup rate, service level, waits, callbacks) from the event stream",
        description=(
            "Recompute the KPIs from the Redis event stream for calls started in [since, until). "
            "Uses exactly the code of the live figures, so both agree."
        ),
    )
    p.add_argument("--config", metavar="PATH", help="configuration (opening hours, Redis URL, timezone)")
    p.add_argument("--redis", metavar="URL", help="Redis URL (default: the configuration's, else localhost)")
    p.add_argument(
        "--stream", metavar="KEY", help="stream key (default: the configuration's, else ivr:events)"
    )
    p.add_argument("--since", metavar="T", help="first call start included (default: the stream's start)")
    p.add_argument("--until", metavar="T", help="calls started from T on are left out (default: none)")
    p.add_argument("--queue", metavar="Q", help="only calls that asked for queue Q, as seen from it")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print the report as one JSON object")
    fmt.add_argument("--csv", action="store_true", help="print one CSV row per block")
    p.add_argument(
        "--no-calls",
        dest="calls",
        action="store_false",
        help="leave the call list out of the JSON",
    )
    p.add_argument("--timezone", metavar="TZ", help="timezone of days and hours (default Europe/Paris)")
    p.add_argument(
        "--service-level",
        metavar="S",
        type=_positive(float, zero_ok=True),
        default=20.0,
        help="T of the service level SL(T), seconds (default 20)",
    )
    p.add_argument(
        "--short-abandon",
        metavar="S",
        type=_positive(float, zero_ok=True),
        default=5.0,
        help="abandons shorter than this are reported apart, seconds (default 5)",
    )
    p.add_argument(
        "--lookahead",
        metavar="S",
        type=_positive(float, zero_ok=True),
        default=DEFAULT_LOOKAHEAD_S,
        help="read events this long after --until for late callbacks and surveys (default 86400)",
    )
    p.set_defaults(_module=__name__)
    return p


def settings_from_config(
    config: Config,
    *,
    service_level_s: float = 20.0,
    short_abandon_s: float = 5.0,
    timezone: str | None = None,
) -> KpiSettings:
    """KPI settings from the configuration: each service's opening hours, and the timezone.

    The live controller must build its accumulator with this too, or calls near opening
    and closing times would be classified differently live and in ``ivr report``.
    """
    return KpiSettings(
        service_level_s=service_level_s,
        short_abandon_s=short_abandon_s,
        timezone=timezone or config.timezone,
        schedules={name: svc.hours for name, svc in config.services.items()},
    )


#: Entries per XRANGE. Bigger batches gain nothing (the client's decoding and folding
#: dominate, and the next batch is read while they run) and hold more memory at once;
#: smaller ones add round trips.
READ_BATCH = 2000

_paused = 0


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """Keep Python's cyclic garbage collector out of a bulk fold.

    A day's recomputation creates about a million long-lived objects (events, their data,
    call summaries) and no reference cycles; on CPython 3.11 the collector's full passes
    over that growing heap took a third of the time (``bench/kpi_recompute.py``).
    Reference counting still frees everything as usual. Nested or concurrent folds share
    one pause, and the collector comes back only if it was running before the first one.
    """
    global _paused
    if _paused == 0 and not gc.isenabled():
        yield  # someone else turned it off: leave it to them
        return
    _paused += 1
    gc.disable()
    try:
        yield
    finally:
        _paused -= 1
        if _paused == 0:
            gc.enable()


async def report_from_redis(
    client: redis.asyncio.Redis,
    settings: KpiSettings,
    *,
    since: float | None = None,
    until: float | None = None,
    queue: str | None = None,
    include_calls: bool = False,
    stream_key: str | None = None,
    lookbehind_s: float = DEFAULT_LOOKBEHIND_S,
    lookahead_s: float = DEFAULT_LOOKAHEAD_S,
) -> dict[str, Any]:
    """Read the calls' events from the stream (with the look-behind/ahead margins) and report."""
    from ivr.storage.reader import EventLogReader

    with _collector_paused():
        acc = KpiAccumulator(settings)
        extend = acc.extend
        reader = EventLogReader(client, stream_key=stream_key)
        batches: AsyncIterator[list[CallEvent]] = reader.read_batches(
            None if since is None else since - lookbehind_s,
            None if until is None else until + lookahead_s,
            batch=READ_BATCH,
        )
        async for events in batches:
            extend(events)
        report = acc.report(since, until, queue=queue, include_calls=include_calls)
        # freed now by reference counting: the collector, once back, has nothing to scan
        del acc, extend, batches, reader
    return report


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f} %"


def _sec(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} s"


def _text_report(report: dict[str, Any], out: TextIO) -> None:
    r = report["range"]
    o = report["overall"]
    out.write(f"Calls started {r['since'] or 'from the start'} -> {r['until'] or 'now'} ({r['timezone']})\n")
    out.write(
        f"  asked for an agent {o['asked_for_agent']}, handled {o['handled_by_agent']} "
        f"(immediately {o['handled_immediately']}, by callback {o['handled_by_callback']})\n"
        f"  pickup rate {_pct(o['pickup_rate'])}  immediate {_pct(o['immediate_pickup_rate'])}  "
        f"global {_pct(o['global_rate'])}  SL({report['settings']['service_level_s']:g} s) "
        f"{_pct(o['service_level'])}\n"
        f"  ASA {_sec(o['asa_s'])}  wait p50 {_sec(o['wait_p50_s'])} p90 {_sec(o['wait_p90_s'])} "
        f"max {_sec(o['wait_max_s'])}  abandoned {o['abandoned']} (short {o['abandoned_short']})\n"
    )
    cb = o["callbacks"]
    out.write(
        f"  callbacks requested {cb['requested']}, completed {cb['completed']}, pending {cb['pending']}, "
        f"success {_pct(cb['success_rate'])}\n"
    )
    if report["out_of_hours"]["calls"]:
        out.write(f"  out of hours: {report['out_of_hours']['calls']} calls (not in the pickup rate)\n")
    if report["queues"]:
        out.write(
            f"\n{'queue':<20} {'asked':>6} {'handled':>8} {'pickup':>9} {'SL':>9} {'ASA':>6} {'aband.':>7}\n"
        )
        for name, q in report["queues"].items():
            out.write(
                f"{name:<20} {q['asked_for_agent']:>6} {q['handled_by_agent']:>8} "
                f"{_pct(q['pickup_rate']):>9} "
                f"{_pct(q['service_level']):>9} {_sec(q['asa_s']):>6} {q['abandoned']:>7}\n"
            )
    if report["gaps"]:
        out.write(
            f"\nwarning: {report['gaps']} gap(s) in the event stream in this range: figures may miss calls\n"
        )


def run_report(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """``ivr report``: read, compute, print. Returns the exit status."""
    out = out or sys.stdout
    config = None
    if args.config:
        from ivr.config import ConfigError, load_config

        try:
            config = load_config(args.config)
        except (ConfigError, OSError) as exc:
            print(f"ivr report: {exc}", file=sys.stderr)
            return 2
    tz_name = args.timezone or (config.timezone if config is not None else "Europe/Paris")
    try:
        tz = ZoneInfo(tz_name)
        since = parse_when(args.since, tz) if args.since else None
        until = parse_when(args.until, tz) if args.until else None
        if since is not None and until is not None and until <= since:
            raise ValueError("--until must be after --since")
        if config is not None:
            settings = settings_from_config(
                config,
                service_level_s=args.service_level,
                short_abandon_s=args.short_abandon,
                timezone=tz_name,
            )
        else:
            settings = KpiSettings(
                service_level_s=args.service_level, short_abandon_s=args.short_abandon, timezone=tz_name
            )
    except (ValueError, KeyError) as exc:  # ZoneInfoNotFoundError is a KeyError
        print(f"ivr report: {exc}", file=sys.stderr)
        return 2
    url = args.redis or (config.redis.url if config is not None else "redis://127.0.0.1:6379/0")
    stream = args.stream or (config.redis.stream if config is not None else None)
    try:
        report = asyncio.run(_report_from_url(url, settings, args, since, until, stream))
    except OSError as exc:
        print(f"ivr report: cannot read the event stream at {url}: {exc}", file=sys.stderr)
        return 1
    if args.json:
        json.dump(report_document(report), out, ensure_ascii=False, indent=2)
        out.write("\n")
    elif args.csv:
        out.write(report_to_csv(report))
    else:
        _text_report(report, out)
    return 0


async def _report_from_url(
    url: str,
    settings: KpiSettings,
    args: argparse.Namespace,
    since: float | None,
    until: float | None,
    stream: str | None,
) -> dict[str, Any]:
    import redis.asyncio
    import redis.exceptions

    client = redis.asyncio.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5)
    try:
        return await report_from_redis(
            client,
            settings,
            since=since,
            until=until,
            queue=args.queue,
            include_calls=args.json and args.calls,
            stream_key=stream,
            lookahead_s=args.lookahead,
        )
    except redis.exceptions.RedisError as exc:
        raise OSError(str(exc)) from exc
    finally:
        await client.aclose()


# -- ivr staffing -----------------------------------------------------------------------------


def add_staffing_parser(subparsers: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "staffing",
        help="agents needed for a pickup-rate target (Erlang A) and a service level (Erlang C)",
        description=(
            "Agents needed so that 1 - P(abandon) reaches the pickup target under Erlang A "
            "(callers hang up after an exponential patience), with Erlang C beside it."
        ),
    )
    p.add_argument("--calls-per-hour", required=True, type=_positive(float, zero_ok=True), metavar="N")
    p.add_argument("--aht", required=True, type=_positive(float), metavar="S", help="mean handling time, s")
    p.add_argument("--patience", required=True, type=_positive(float), metavar="S", help="mean patience, s")
    p.add_argument("--target", type=_fraction, default=0.85, help="pickup-rate target (default 0.85)")
    p.add_argument(
        "--answer-within",
        type=_positive(float, zero_ok=True),
        default=20.0,
        metavar="S",
        help="T of the service level, s (default 20)",
    )
    p.add_argument(
        "--sl-target", type=_fraction, default=0.8, help="Erlang C service-level target (default 0.8)"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(_module=__name__)
    return p


def staffing_figures(
    calls_per_hour: float,
    aht_s: float,
    patience_s: float,
    *,
    target: float = 0.85,
    answer_within_s: float = 20.0,
    sl_target: float = 0.8,
) -> dict[str, Any]:
    """The ``ivr staffing --json`` object: Erlang A team for the pickup target, Erlang C beside it."""
    n_a = agents_for_pickup_target(calls_per_hour, aht_s, patience_s, target)
    n_c = agents_for_service_level(calls_per_hour, aht_s, target=sl_target, answer_within_s=answer_within_s)
    rows = []
    for n in range(max(0, n_a - 3), max(n_a, n_c) + 3):
        a = erlang_a(calls_per_hour, aht_s, patience_s, n, answer_within_s=answer_within_s)
        c = erlang_c_metrics(calls_per_hour, aht_s, n, answer_within_s=answer_within_s)
        rows.append(
            {
                "agents": n,
                "pickup_rate": a.pickup_rate,
                "service_level_a": a.service_level,
                "asa_a_s": a.asa_s,
                "service_level_c": c.service_level,
                "asa_c_s": c.asa_s,
            }
        )
    return {
        "inputs": {
            "calls_per_hour": calls_per_hour,
            "aht_s": aht_s,
            "patience_s": patience_s,
            "target": target,
            "answer_within_s": answer_within_s,
            "sl_target": sl_target,
        },
        "traffic_erlangs": traffic_erlangs(calls_per_hour, aht_s),
        "erlang_a": erlang_a(
            calls_per_hour, aht_s, patience_s, n_a, answer_within_s=answer_within_s
        ).to_dict(),
        "erlang_c": {
            "agents_for_sl_target": n_c,
            "at_erlang_a_agents": erlang_c_metrics(
                calls_per_hour, aht_s, n_a, answer_within_s=answer_within_s
            ).to_dict(),
            "at_own_agents": erlang_c_metrics(
                calls_per_hour, aht_s, n_c, answer_within_s=answer_within_s
            ).to_dict(),
        },
        "table": rows,
    }


def run_staffing(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """``ivr staffing``: print the team sizes. Returns the exit status."""
    out = out or sys.stdout
    try:
        fig = staffing_figures(
            args.calls_per_hour,
            args.aht,
            args.patience,
            target=args.target,
            answer_within_s=args.answer_within,
            sl_target=args.sl_target,
        )
    except ValueError as exc:
        print(f"ivr staffing: {exc}", file=sys.stderr)
        return 2
    if args.json:
        json.dump(fig, out, indent=2)
        out.write("\n")
        return 0
    a, c = fig["erlang_a"], fig["erlang_c"]
    t = fig["inputs"]["answer_within_s"]
    out.write(
        f"Offered traffic {fig['traffic_erlangs']:.2f} Erlangs "
        f"({args.calls_per_hour:g} calls/h, AHT {args.aht:g} s, patience {args.patience:g} s)\n"
        f"Erlang A: {a['agents']} agents for a pickup rate >= {_pct(args.target)}: "
        f"pickup {_pct(a['pickup_rate'])}, SL({t:g} s) {_pct(a['service_level'])}, ASA {a['asa_s']:.1f} s\n"
        f"Erlang C: {c['agents_for_sl_target']} agents for SL({t:g} s) >= {_pct(args.sl_target)} "
        f"(no abandonment); with {a['agents']} agents Erlang C gives SL "
        f"{_pct(c['at_erlang_a_agents']['service_level'])}\n\n"
        f"{'agents':>6} {'pickup (A)':>11} {'SL (A)':>8} {'SL (C)':>8} {'ASA (C)':>8}\n"
    )
    for row in fig["table"]:
        out.write(
            f"{row['agents']:>6} {_pct(row['pickup_rate']):>11} {_pct(row['service_level_a']):>8} "
            f"{_pct(row['service_level_c']):>8} {_sec(row['asa_c_s']):>8}\n"
        )
    return 0


# -- ivr.cli entry points -----------------------------------------------------------------------


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``report`` and ``staffing``; returns the ``report`` parser."""
    report = add_report_parser(subparsers)
    add_staffing_parser(subparsers)
    return report


def run(args: argparse.Namespace) -> int:
    """Dispatch on the subcommand name."""
    if args.command == "staffing":
        return run_staffing(args)
    return run_report(args)
