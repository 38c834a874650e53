"""The simulated PBX's model: dialplan, queues, agents, prompts, traffic -- read from TOML.

The engine interprets this model; nothing about the recording rig is hard-coded in it.
:func:`default_config` reproduces the rig the transcripts under
``tests/fixtures/asterisk`` were recorded with (``config/extensions.conf`` and
``config/queues.conf`` there), so a simulated run can be compared with a real one.

A TOML file has these tables (all optional; a missing table keeps the default)::

    [sim]            start_epoch, answer_media_wait, agi_connect_timeout,
                     default_prompt_seconds, dtmf_gap, queue_log, version, agi_server
    [prompts]        "fr/queue-thankyou" = 1.82        # seconds of audio per file
    [globals]        DEF201 = "2:5"                    # dialplan globals (agent plans)
    [general]        autofill, shared_lastcall          # queues.conf [general]
    [queues.NAME]    strategy, timeout, retry, wrapuptime, ringinuse, joinempty,
                     leavewhenempty, autofill, context, servicelevel, maxlen, weight,
                     musicclass, members = ["Local/201@agents", {interface=..., name=...,
                     penalty=..., paused=...}]
    [dialplan.CONTEXT]  "EXTEN" = ["Answer()", "Queue(support,c,,,${QT})", ...]
    [agents.EXTEN]   answer_delay = [min, max], talk_time = [min, max], no_answer = 0.3
    [endpoints]      "PJSIP/*@trunk-operator" = "Local/*@sim-customers"   # see below
    [traffic]        see :class:`TrafficConfig`

``[endpoints]`` maps the dial strings of channel technologies the simulator does not have
(PJSIP phones and trunks) onto Local channels it does: ``Dial()`` rewrites a target that
matches a key (``*`` stands for any text, at most once) into the value, with ``*``
replaced by the matched text. A target of another technology with no mapping is an error
when reached.

A file whose ``[sim]`` table names ``dialplan_conf`` (an Asterisk ``extensions.conf``) or
that has ``[profiles]`` is a product configuration: see :mod:`ivr.sim.conf_loader`.

Dialplan steps use Asterisk's ``App(args)`` syntax with ``${VAR}`` substitution (see
:mod:`ivr.sim.dialplan`); a step may carry a label as ``"label:App(args)"``.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final

__all__ = [
    "DEFAULT_CALLBACK_KEYS",
    "AgentModel",
    "MemberConfig",
    "QueueConfig",
    "SimConfig",
    "SimConfigError",
    "TrafficConfig",
    "TrafficLine",
    "check_config",
    "default_config",
    "load_config",
    "parse_config",
    "parse_empty_options",
    "queue_from_table",
]


class SimConfigError(ValueError):
    """The simulator configuration is invalid; the message names the offending key."""


# ``enum empty_conditions`` of apps/app_queue.c
EMPTY_PENALTY: Final = 1 << 0
EMPTY_PAUSED: Final = 1 << 1
EMPTY_INUSE: Final = 1 << 2
EMPTY_RINGING: Final = 1 << 3
EMPTY_UNAVAILABLE: Final = 1 << 4
EMPTY_INVALID: Final = 1 << 5
EMPTY_UNKNOWN: Final = 1 << 6
EMPTY_WRAPUP: Final = 1 << 7

_TRUE: Final = frozenset({"yes", "true", "y", "t", "1", "on"})
_FALSE: Final = frozenset({"no", "false", "n", "f", "0", "off"})
STRATEGIES: Final = (
    "ringall",
    "leastrecent",
    "fewestcalls",
    "random",
    "rrmemory",
    "linear",
    "wrandom",
    "rrordered",
)


#: The options of joinempty/leavewhenempty that name one condition each (``parse_empty_options``).
_EMPTY_CONDITIONS: Final = {
    "paused": EMPTY_PAUSED,
    "penalty": EMPTY_PENALTY,
    "inuse": EMPTY_INUSE,
    "ringing": EMPTY_RINGING,
    "invalid": EMPTY_INVALID,
    "wrapup": EMPTY_WRAPUP,
    "unavailable": EMPTY_UNAVAILABLE,
    "unknown": EMPTY_UNKNOWN,
}


def parse_empty_options(value: str | bool, *, joinempty: bool) -> int:
    """``parse_empty_options`` of apps/app_queue.c: a joinempty/leavewhenempty value as bits."""
    if isinstance(value, bool):
        value = "yes" if value else "no"
    empty = 0
    for option in value.split(","):
        option = option.strip().lower()
        if option in _EMPTY_CONDITIONS:
            empty |= _EMPTY_CONDITIONS[option]
        elif option == "loose":
            empty = EMPTY_PENALTY | EMPTY_INVALID
        elif option == "strict":
            empty = EMPTY_PENALTY | EMPTY_INVALID | EMPTY_PAUSED | EMPTY_UNAVAILABLE
        elif (option in _FALSE and joinempty) or (option in _TRUE and not joinempty):
            empty = EMPTY_PENALTY | EMPTY_INVALID | EMPTY_PAUSED
        elif option in _FALSE or option in _TRUE:
            empty = 0
        else:
            what = "joinempty" if joinempty else "leavewhenempty"
            raise SimConfigError(f"unknown {what} option {option!r}")
    return empty


@dataclass(frozen=True, slots=True)
class MemberConfig:
    """A static queue member (``member => interface,penalty,name`` in queues.conf)."""

    interface: str
    name: str = ""
    penalty: int = 0
    paused: bool = False

    @property
    def membername(self) -> str:
        return self.name or self.interface


@dataclass(frozen=True, slots=True)
class QueueConfig:
    """One queue of queues.conf, with app_queue's defaults for what is not given."""

    name: str
    strategy: str = "ringall"
    timeout: int = 15
    retry: int = 5
    wrapuptime: int = 0
    ringinuse: bool = True
    joinempty: int = 0
    leavewhenempty: int = 0
    autofill: bool | None = None  # None: the [general] value
    context: str = ""
    servicelevel: int = 0
    maxlen: int = 0
    weight: int = 0
    musicclass: str = "default"
    members: tuple[MemberConfig, ...] = ()


@dataclass(frozen=True, slots=True)
class AgentModel:
    """Random behaviour of an agent extension when no dialplan plan global covers a ring.

    Each ring draws ``no_answer`` (probability of never answering), then a ring delay
    uniform in ``answer_delay`` and a talk time uniform in ``talk_time`` (seconds).
    """

    answer_delay: tuple[float, float] = (1.0, 3.0)
    talk_time: tuple[float, float] = (60.0, 240.0)
    no_answer: float = 0.0


#: Keys of a caller who takes a callback (``TrafficConfig.callback_keys``): after a 4 s pause,
#: 1 every 3 s for 45 s -- the offer's "this number", its "confirm", or the queue's exit key.
DEFAULT_CALLBACK_KEYS: Final = "WWWW" + "1WW" * 15


@dataclass(frozen=True, slots=True)
class TrafficLine:
    """One public number of generated traffic: its share of the calls and its callers' keys.

    ``weight`` is the line's share of the arrivals; ``digits``/``digit_weights`` the DTMF
    scripts its callers send (``w``/``W`` pause 0.5/1 s, as SendDTMF does), starting
    ``wait_before_digits`` seconds after the call is answered (the line's welcome prompt).
    """

    exten: str
    weight: float = 1.0
    wait_before_digits: float = 5.5
    digits: tuple[str, ...] = ("",)
    digit_weights: tuple[float, ...] = (1.0,)


@dataclass(frozen=True, slots=True)
class TrafficConfig:
    """Generated callers: Poisson arrivals into ``context``/``exten``.

    Each caller is an Originate of ``Local/<exten>@<context>`` whose ``;1`` side (the
    caller's phone) runs ``caller_context``/``caller_exten`` with the variables WAIT1
    (seconds before the IVR digits), DIGITS (drawn from ``digits`` with ``digit_weights``)
    and PATIENCE (uniform in ``patience``). The default ``patient`` hangs up after PATIENCE
    seconds unless bridged; ``ivr-patient`` first sends DIGITS at WAIT1 (for an IVR's GET
    DATA: with no IVR in front of the queue such a digit would be a queue exit key).
    ``calls`` bounds the number of callers (0 = unbounded), ``duration`` the arrival window
    in virtual seconds (0 = unbounded).

    ``lines`` (optional) spread the calls over several public numbers, each with its own
    DTMF scripts (:class:`TrafficLine`); they replace ``exten``, ``digits`` and
    ``wait_before_digits``. ``survey``/``survey_weights`` draw the SURVEY variable: the key
    a caller presses after talking to an agent (``Patience(${PATIENCE},${SURVEY})``;
    ``""`` = does not answer).

    ``callback_share`` is the share of callers (0 to 1) who take a callback when one is
    offered: after their menu keys they go on with ``callback_keys``. The default keys --
    a 4 s pause, then 1 every 3 s for 45 s -- answer the IVR's callback offer with "call me
    back on this number" and then "confirm" (``ivr.domain.ivr_flow``); a caller already in
    a queue that offers callbacks leaves it with that same key (the queue's exit key) and
    gets the same offer. The other callers wait. With ``callback_keys = ""`` the callers
    are drawn the same way but press nothing more: the same seed then gives the same calls
    with and without callbacks taken.
    """

    enabled: bool = False
    arrivals_per_hour: float = 600.0
    calls: int = 0
    duration: float = 0.0
    context: str = "public"
    exten: str = "100"
    caller_context: str = "caller"
    caller_exten: str = "patient"
    patience: tuple[float, float] = (20.0, 180.0)
    wait_before_digits: float = 5.5
    digits: tuple[str, ...] = ("1",)
    digit_weights: tuple[float, ...] = (1.0,)
    number_prefix: str = "06"
    queue_timeout: int = 0  # sets QTIMEOUT when > 0
    originate_timeout_ms: int = 30000
    lines: tuple[TrafficLine, ...] = ()
    survey: tuple[str, ...] = ()
    survey_weights: tuple[float, ...] = ()
    callback_share: float = 0.0
    callback_keys: str = DEFAULT_CALLBACK_KEYS


@dataclass(slots=True)
class SimConfig:
    """Everything the engine interprets."""

    start_epoch: float | None = None
    version: str = "22.10.1"
    answer_media_wait: float = 0.5
    agi_connect_timeout: float = 2.0
    default_prompt_seconds: float = 1.8
    dtmf_gap: float = 0.46
    queue_log: str | None = None
    #: ``host:port`` that every ``agi://`` URL is sent to instead of its own (tests, demos).
    agi_server: str | None = None
    prompts: dict[str, float] = field(default_factory=dict)
    globals: dict[str, str] = field(default_factory=dict)
    autofill: bool = False
    shared_lastcall: bool = True
    queues: dict[str, QueueConfig] = field(default_factory=dict)
    dialplan: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    agents: dict[str, AgentModel] = field(default_factory=dict)
    traffic: TrafficConfig = field(default_factory=TrafficConfig)
    #: Dial string pattern -> Local channel (see the module docstring).
    endpoints: dict[str, str] = field(default_factory=dict)

    def prompt_seconds(self, name: str) -> float:
        return self.prompts.get(name, self.default_prompt_seconds)


# -- the recording rig -----------------------------------------------------------------------

_AGI = "agi://127.0.0.1:4573"

#: ``config/extensions.conf`` of the rig, as engine steps.
RIG_DIALPLAN: Final[dict[str, dict[str, list[str]]]] = {
    "public": {
        "100": [
            "Answer()",
            f"AGI({_AGI}/ivr?service=caf)",
            "Set(QT=${DEFAULT(QTIMEOUT,60)})",
            "Queue(support,c,,,${QT})",
            f"AGI({_AGI}/after-queue,${{QUEUESTATUS}})",
            "Hangup()",
        ],
        "105": [
            "Answer()",
            "Queue(overflow,c,,,10)",
            f"AGI({_AGI}/after-queue,${{QUEUESTATUS}})",
            "Hangup()",
        ],
        "107": [
            "Answer()",
            "Queue(empty,c,,,30)",
            f"AGI({_AGI}/after-queue,${{QUEUESTATUS}})",
            "Hangup()",
        ],
    },
    "queue-exit": {
        "1": [
            "NoOp(left queue support with key 1, QUEUESTATUS=${QUEUESTATUS})",
            f"AGI({_AGI}/exit-key,${{QUEUESTATUS}})",
            "Hangup()",
        ],
    },
    "caller": {
        "ivr": ["Wait(${WAIT1})", "SendDTMF(${DIGITS},250)", "Wait(${STAY})", "Hangup()"],
        "ivrkey": [
            "Wait(${WAIT1})",
            "SendDTMF(${DIGITS},250)",
            "Wait(${KEY_AT})",
            "SendDTMF(${KEY},250)",
            "Wait(${STAY})",
            "Hangup()",
        ],
        "ivr-patient": ["Wait(${WAIT1})", "SendDTMF(${DIGITS},250)", "Goto(patient,1)"],
        "patient": ["Patience(${PATIENCE})", "Hangup()"],
    },
    "agents": {
        "_2XX": ["AgentPlan()"],
        "_29X": ["Ringing()", "Wait(600)", "Hangup()"],
    },
    "callback": {
        "_X.": [
            "NoOp(callback ${IVR_CALLBACK_ID} -> ${EXTEN})",
            "Dial(Local/${EXTEN}@customers,30)",
            "NoOp(DIALSTATUS=${DIALSTATUS})",
            "Hangup()",
        ],
    },
    "customers": {
        "_06XXXXXXXX": ["Ringing()", "Wait(3)", "Answer()", "Wait(4)", "Hangup()"],
        "0600000486": ["Busy(10)"],
        "0600000503": ["Congestion(10)"],
    },
    "misc": {
        "live": ["Answer()", "Wait(40)", "Hangup()"],
    },
}


def _rig_queues() -> dict[str, QueueConfig]:
    common: dict[str, Any] = {"wrapuptime": 0, "ringinuse": False, "musicclass": "default"}
    return {
        "support": QueueConfig(
            name="support",
            strategy="rrmemory",
            timeout=15,
            retry=2,
            joinempty=parse_empty_options("yes", joinempty=True),
            leavewhenempty=parse_empty_options("no", joinempty=False),
            context="queue-exit",
            members=(MemberConfig("Local/201@agents"), MemberConfig("Local/202@agents")),
            **common,
        ),
        "empty": QueueConfig(
            name="empty",
            strategy="ringall",
            joinempty=parse_empty_options("no", joinempty=True),
            leavewhenempty=parse_empty_options("no", joinempty=False),
            ringinuse=True,
            musicclass="default",
        ),
        "overflow": QueueConfig(
            name="overflow",
            strategy="ringall",
            timeout=4,
            retry=1,
            joinempty=parse_empty_options("yes", joinempty=True),
            leavewhenempty=parse_empty_options("no", joinempty=False),
            members=(MemberConfig("Local/291@agents"),),
            **common,
        ),
    }


def default_config() -> SimConfig:
    """The recording rig: queues support/empty/overflow, exten 100/105/107, agents 2xx."""
    return SimConfig(
        prompts={"fr/queue-thankyou": 1.82, "fr/vm-enter-num-to-call": 2.4, "beep": 0.25},
        globals={"DEF201": "2:5", "DEF202": "2:5"},
        autofill=True,
        shared_lastcall=True,
        queues=_rig_queues(),
        dialplan={
            ctx: {ext: list(steps) for ext, steps in extens.items()} for ctx, extens in RIG_DIALPLAN.items()
        },
    )


# -- parsing -----------------------------------------------------------------------------------


def load_config(path: str | Path) -> SimConfig:
    """Read a TOML file over :func:`default_config` (tables given replace the defaults)."""
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SimConfigError(f"cannot read simulator config {p}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SimConfigError(f"{p}: invalid TOML: {exc}") from None
    from ivr.sim.conf_loader import config_from_toml, is_product  # imports this module

    if is_product(data):  # the shipped Asterisk files with simulated people
        return config_from_toml(data, base_dir=p.parent, source=str(p))
    try:
        return parse_config(data)
    except SimConfigError as exc:
        raise SimConfigError(f"{p}: {exc}") from None


_SIM_KEYS: Final = {
    "start_epoch",
    "version",
    "answer_media_wait",
    "agi_connect_timeout",
    "default_prompt_seconds",
    "dtmf_gap",
    "queue_log",
    "agi_server",
}
_TOP_KEYS: Final = {
    "sim",
    "prompts",
    "globals",
    "general",
    "queues",
    "dialplan",
    "agents",
    "traffic",
    "endpoints",
}


def parse_config(data: Mapping[str, Any]) -> SimConfig:
    """Build a :class:`SimConfig` from parsed TOML; unknown keys are errors (typos bite)."""
    unknown = set(data) - _TOP_KEYS
    if unknown:
        raise SimConfigError(f"unknown top-level table(s): {', '.join(sorted(unknown))}")
    cfg = default_config()
    sim = _table(data, "sim")
    for key, value in sim.items():
        if key not in _SIM_KEYS:
            raise SimConfigError(f"unknown key sim.{key}")
        if key == "queue_log":
            cfg.queue_log = _str(value, "sim.queue_log")
        elif key == "agi_server":
            cfg.agi_server = _str(value, "sim.agi_server")
        elif key == "version":
            cfg.version = _str(value, "sim.version")
        elif key == "start_epoch":
            cfg.start_epoch = _number(value, "sim.start_epoch", minimum=0.0)
        else:
            setattr(cfg, key, _number(value, f"sim.{key}", minimum=0.0))
    if "prompts" in data:
        cfg.prompts = {
            _str(k, "prompts key"): _number(v, f"prompts.{k}", minimum=0.0)
            for k, v in _table(data, "prompts").items()
        }
    if "globals" in data:
        cfg.globals = {str(k): _scalar_str(v, f"globals.{k}") for k, v in _table(data, "globals").items()}
    general = _table(data, "general")
    for key, value in general.items():
        if key == "autofill":
            cfg.autofill = _bool(value, "general.autofill")
        elif key == "shared_lastcall":
            cfg.shared_lastcall = _bool(value, "general.shared_lastcall")
        else:
            raise SimConfigError(f"unknown key general.{key}")
    if "queues" in data:
        cfg.queues = {name: _queue(name, body) for name, body in _table(data, "queues").items()}
    if "dialplan" in data:
        cfg.dialplan = {}
        for ctx, extens in _table(data, "dialplan").items():
            if not isinstance(extens, Mapping):
                raise SimConfigError(f"dialplan.{ctx} must be a table of extensions")
            cfg.dialplan[ctx] = {}
            for ext, steps in extens.items():
                if not isinstance(steps, list) or not steps or not all(isinstance(s, str) for s in steps):
                    raise SimConfigError(
                        f"dialplan.{ctx}.{ext} must be a non-empty list of 'App(args)' strings"
                    )
                cfg.dialplan[ctx][str(ext)] = list(steps)
    if "agents" in data:
        cfg.agents = {str(ext): _agent(str(ext), body) for ext, body in _table(data, "agents").items()}
    if "traffic" in data:
        cfg.traffic = _traffic(_table(data, "traffic"))
    if "endpoints" in data:
        cfg.endpoints = {
            _endpoint_key(str(k)): _endpoint_value(str(k), v) for k, v in _table(data, "endpoints").items()
        }
    _check_dialplan(cfg)
    return cfg


def queue_from_table(name: str, body: Mapping[str, Any]) -> QueueConfig:
    """One ``[queues.NAME]`` table (TOML types) as a :class:`QueueConfig`; errors name the key."""
    return _queue(name, body)


def check_config(cfg: SimConfig) -> None:
    """Cross-checks of a built config: every step parses, queue contexts exist."""
    _check_dialplan(cfg)


def _check_dialplan(cfg: SimConfig) -> None:
    from ivr.sim.dialplan import parse_step  # local: dialplan imports nothing from here at module level

    for ctx, extens in cfg.dialplan.items():
        for ext, steps in extens.items():
            for i, step in enumerate(steps, 1):
                try:
                    parse_step(step)
                except ValueError as exc:
                    raise SimConfigError(f"dialplan.{ctx}.{ext} step {i}: {exc}") from None
    for name, q in cfg.queues.items():
        if q.context and q.context not in cfg.dialplan:
            raise SimConfigError(f"queues.{name}.context: no dialplan context {q.context!r}")


def _table(data: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, Mapping):
        raise SimConfigError(f"{key} must be a table")
    return value


def _str(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise SimConfigError(f"{where} must be a string, got {type(value).__name__}")
    return value


def _scalar_str(value: object, where: str) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise SimConfigError(f"{where} must be a string or a number")
    return str(value)


def _number(value: object, where: str, *, minimum: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise SimConfigError(f"{where} must be a finite number, got {value!r}")
    if minimum is not None and value < minimum:
        raise SimConfigError(f"{where} must be >= {minimum}, got {value!r}")
    return float(value)


def _int(value: object, where: str, *, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SimConfigError(f"{where} must be an integer, got {value!r}")
    if value < minimum:
        raise SimConfigError(f"{where} must be >= {minimum}, got {value!r}")
    return value


def _bool(value: object, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
        return value.lower() in _TRUE
    raise SimConfigError(f"{where} must be a boolean, got {value!r}")


def _range(value: object, where: str) -> tuple[float, float]:
    if isinstance(value, int | float) and not isinstance(value, bool):
        v = _number(value, where, minimum=0.0)
        return (v, v)
    if not isinstance(value, list) or len(value) != 2:
        raise SimConfigError(f"{where} must be a number or [min, max]")
    lo, hi = (_number(v, where, minimum=0.0) for v in value)
    if lo > hi:
        raise SimConfigError(f"{where}: min {lo} > max {hi}")
    return (lo, hi)


_QUEUE_KEYS: Final = {
    "strategy",
    "timeout",
    "retry",
    "wrapuptime",
    "ringinuse",
    "joinempty",
    "leavewhenempty",
    "autofill",
    "context",
    "servicelevel",
    "maxlen",
    "weight",
    "musicclass",
    "members",
}


def _queue(name: str, body: object) -> QueueConfig:
    if not isinstance(body, Mapping):
        raise SimConfigError(f"queues.{name} must be a table")
    unknown = set(body) - _QUEUE_KEYS
    if unknown:
        raise SimConfigError(f"unknown key(s) in queues.{name}: {', '.join(sorted(unknown))}")
    where = f"queues.{name}"
    kw: dict[str, Any] = {"name": name}
    if "strategy" in body:
        strategy = _str(body["strategy"], f"{where}.strategy").lower()
        if strategy not in STRATEGIES:
            raise SimConfigError(f"{where}.strategy: unknown strategy {strategy!r}")
        kw["strategy"] = strategy
    for key in ("timeout", "retry", "wrapuptime", "servicelevel", "maxlen", "weight"):
        if key in body:
            kw[key] = _int(body[key], f"{where}.{key}")
    for key in ("ringinuse", "autofill"):
        if key in body:
            kw[key] = _bool(body[key], f"{where}.{key}")
    for key, join in (("joinempty", True), ("leavewhenempty", False)):
        if key in body:
            value = body[key]
            if not isinstance(value, str | bool):
                raise SimConfigError(f"{where}.{key} must be a string or a boolean")
            try:
                kw[key] = parse_empty_options(value, joinempty=join)
            except SimConfigError as exc:
                raise SimConfigError(f"{where}.{key}: {exc}") from None
    for key in ("context", "musicclass"):
        if key in body:
            kw[key] = _str(body[key], f"{where}.{key}")
    members: list[MemberConfig] = []
    raw_members = body.get("members", [])
    if not isinstance(raw_members, list):
        raise SimConfigError(f"{where}.members must be a list")
    for i, m in enumerate(raw_members):
        mw = f"{where}.members[{i}]"
        if isinstance(m, str):
            members.append(MemberConfig(_interface(m, mw)))
        elif isinstance(m, Mapping):
            extra = set(m) - {"interface", "name", "penalty", "paused"}
            if extra:
                raise SimConfigError(f"unknown key(s) in {mw}: {', '.join(sorted(extra))}")
            members.append(
                MemberConfig(
                    _interface(_str(m.get("interface"), f"{mw}.interface"), mw),
                    _str(m.get("name", ""), f"{mw}.name"),
                    _int(m.get("penalty", 0), f"{mw}.penalty"),
                    _bool(m.get("paused", False), f"{mw}.paused"),
                )
            )
        else:
            raise SimConfigError(f"{mw} must be an interface string or a table")
    if len({m.interface for m in members}) != len(members):
        raise SimConfigError(f"{where}.members lists an interface twice")
    kw["members"] = tuple(members)
    return QueueConfig(**kw)


def _interface(value: str, where: str) -> str:
    tech, sep, rest = value.partition("/")
    if not sep or not tech or not rest:
        raise SimConfigError(f"{where}: member interface must look like Local/201@agents, got {value!r}")
    if tech.lower() == "local" and "@" not in rest:
        raise SimConfigError(f"{where}: a Local interface needs exten@context, got {value!r}")
    return value


def _endpoint_key(key: str) -> str:
    tech, sep, rest = key.partition("/")
    if not sep or not tech or not rest or key.count("*") > 1:
        raise SimConfigError(
            f"endpoints: key {key!r} must look like TECH/resource with at most one '*', "
            "e.g. 'PJSIP/*@trunk-operator'"
        )
    return key


def _endpoint_value(key: str, value: object) -> str:
    target = _str(value, f"endpoints.{key}")
    if not target.lower().startswith("local/") or "@" not in target:
        raise SimConfigError(
            f"endpoints.{key}: the target must be a Local channel exten@context, got {target!r}"
        )
    if target.count("*") != key.count("*"):
        raise SimConfigError(f"endpoints.{key}: the target must use '*' exactly as the key does")
    return target


def _dtmf(value: object, where: str) -> str:
    """What SendDTMF sends: keys, and ``w``/``W`` for pauses."""
    keys = _str(value, where)
    if any(c not in _DTMF_SCRIPT for c in keys):
        raise SimConfigError(f"{where}: {keys!r} is not a DTMF string (0-9 * # A-D, w/W pauses)")
    return keys


def _dtmf_list(value: object, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise SimConfigError(f"{where} must be a non-empty list of DTMF strings")
    digits = tuple(_str(v, where) for v in value)
    return tuple(_dtmf(d, where) for d in digits)


def _weights(value: object, where: str, count: int) -> tuple[float, ...]:
    if not isinstance(value, list) or not value:
        raise SimConfigError(f"{where} must be a non-empty list of numbers")
    weights = tuple(_number(v, where, minimum=0.0) for v in value)
    if len(weights) != count:
        raise SimConfigError(f"{where} must have one weight per entry ({count})")
    if not any(weights):
        raise SimConfigError(f"{where}: at least one weight must be > 0")
    return weights


_DTMF_SCRIPT: Final = frozenset("0123456789*#ABCDwW")
_LINE_KEYS: Final = {"exten", "weight", "wait_before_digits", "digits", "digit_weights"}


def _line(value: object, where: str) -> TrafficLine:
    if not isinstance(value, Mapping):
        raise SimConfigError(f"{where} must be a table")
    extra = set(value) - _LINE_KEYS
    if extra:
        raise SimConfigError(f"unknown key(s) in {where}: {', '.join(sorted(extra))}")
    exten = _str(value.get("exten"), f"{where}.exten")
    if not exten:
        raise SimConfigError(f"{where}.exten must not be empty")
    digits = _dtmf_list(value.get("digits", [""]), f"{where}.digits")
    weights = (
        _weights(value["digit_weights"], f"{where}.digit_weights", len(digits))
        if "digit_weights" in value
        else (1.0,) * len(digits)
    )
    return TrafficLine(
        exten=exten,
        weight=_number(value.get("weight", 1.0), f"{where}.weight", minimum=0.0),
        wait_before_digits=_number(
            value.get("wait_before_digits", 5.5), f"{where}.wait_before_digits", minimum=0.0
        ),
        digits=digits,
        digit_weights=weights,
    )


def _agent(ext: str, body: object) -> AgentModel:
    if not isinstance(body, Mapping):
        raise SimConfigError(f"agents.{ext} must be a table")
    extra = set(body) - {"answer_delay", "talk_time", "no_answer"}
    if extra:
        raise SimConfigError(f"unknown key(s) in agents.{ext}: {', '.join(sorted(extra))}")
    model = AgentModel()
    no_answer = _number(body.get("no_answer", model.no_answer), f"agents.{ext}.no_answer", minimum=0.0)
    if no_answer > 1:
        raise SimConfigError(f"agents.{ext}.no_answer is a probability, got {no_answer}")
    return AgentModel(
        answer_delay=_range(body.get("answer_delay", list(model.answer_delay)), f"agents.{ext}.answer_delay"),
        talk_time=_range(body.get("talk_time", list(model.talk_time)), f"agents.{ext}.talk_time"),
        no_answer=no_answer,
    )


def _traffic(body: Mapping[str, Any]) -> TrafficConfig:
    kw: dict[str, Any] = {}
    for key, value in body.items():
        where = f"traffic.{key}"
        if key == "enabled":
            kw[key] = _bool(value, where)
        elif key in ("arrivals_per_hour", "duration", "wait_before_digits"):
            kw[key] = _number(value, where, minimum=0.0)
        elif key in ("calls", "queue_timeout", "originate_timeout_ms"):
            kw[key] = _int(value, where)
        elif key in ("context", "exten", "caller_context", "caller_exten", "number_prefix"):
            kw[key] = _str(value, where)
        elif key == "patience":
            kw[key] = _range(value, where)
        elif key in ("digits", "survey"):
            kw[key] = _dtmf_list(value, where)
        elif key == "callback_share":
            share = _number(value, where, minimum=0.0)
            if share > 1:
                raise SimConfigError(f"{where} is a share of the callers, from 0 to 1, got {share}")
            kw[key] = share
        elif key == "callback_keys":
            kw[key] = _dtmf(value, where)
        elif key in ("digit_weights", "survey_weights"):
            if not isinstance(value, list) or not value:
                raise SimConfigError(f"{where} must be a non-empty list of numbers")
            kw[key] = tuple(_number(v, where, minimum=0.0) for v in value)
        elif key == "lines":
            if not isinstance(value, list) or not value:
                raise SimConfigError(f"{where} must be a non-empty list of tables")
            lines = tuple(_line(v, f"{where}[{i}]") for i, v in enumerate(value))
            if not any(line.weight for line in lines):
                raise SimConfigError(f"{where}: at least one line needs a weight > 0")
            kw[key] = lines
        else:
            raise SimConfigError(f"unknown key {where}")
    out = TrafficConfig(**kw)
    if len(out.digit_weights) != len(out.digits):
        if "digit_weights" in kw:
            raise SimConfigError("traffic.digit_weights must have one weight per traffic.digits entry")
        out = replace(out, digit_weights=(1.0,) * len(out.digits))
    if out.survey_weights and len(out.survey_weights) != len(out.survey):
        raise SimConfigError("traffic.survey_weights must have one weight per traffic.survey entry")
    if out.survey_weights and not any(out.survey_weights):
        raise SimConfigError("traffic.survey_weights: at least one weight must be > 0")
    if out.survey and not out.survey_weights:
        out = replace(out, survey_weights=(1.0,) * len(out.survey))
    if out.enabled and out.arrivals_per_hour <= 0:
        raise SimConfigError("traffic.arrivals_per_hour must be > 0 when traffic is enabled")
    return out
