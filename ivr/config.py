"""The controller's configuration: one TOML file, read into frozen, typed dataclasses.

Why it is strict: this file decides what a caller hears and where the call goes. A typo
in a queue name sends callers to a queue nobody staffs; a misspelt key silently falls back
to a default; a prompt name Asterisk cannot find is skipped without a sound. So every
value is checked when the file is loaded -- types, ranges, cross-references (a menu option
names a queue that exists, of the same service; a queue names a service), prompt names
against Debian's ``asterisk-core-sounds-fr`` -- unknown keys are refused with a
suggestion, and *all* problems are reported at once, each naming the file, the key path
and what is wrong::

    decroche.toml: services.caf.menus.main.options."1".queue: unknown queue 'cafx'; did you mean 'caf'?

:func:`load_config` raises :class:`ConfigError` (its ``problems`` list holds the lines);
:func:`check_config` returns the lines (``ivr check-config PATH``); :func:`default_config`
is the packaged ``ivr/data/default.toml`` (a CAF, France Travail and CPAM set-up, used by
``ivr demo``).

Prompts are written without a language directory (``queue-thankyou``,
``decroche/caf-welcome``): the IVR adds the caller's language (``fr/queue-thankyou``),
which is how the recordings call Asterisk's sounds. A name must be a sound of Debian's
``asterisk-core-sounds-fr`` package or live under one of ``[prompts] custom_dirs``
(``decroche/`` by default: recordings the deployment provides).
"""

from __future__ import annotations

import argparse
import difflib
import ipaddress
import json
import os
import re
import sys
import tomllib
from collections.abc import Container, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import date
from functools import lru_cache
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final, Literal, TypeVar

from ivr.domain.hours import HOLIDAY_CALENDARS, Schedule, schedule_from_mapping

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

__all__ = [
    "CALLBACK_QUESTIONS",
    "AGIConfig",
    "AMIConfig",
    "AppointmentConfig",
    "AppointmentPrompts",
    "CallbackConfig",
    "CallbackPrompts",
    "Config",
    "ConfigError",
    "InputSpec",
    "Menu",
    "MenuOption",
    "Prompts",
    "QueueConfig",
    "RedisConfig",
    "ServiceConfig",
    "SurveyConfig",
    "WebConfig",
    "add_parser",
    "check_config",
    "core_sound_names",
    "default_config",
    "default_config_path",
    "load_config",
    "parse_config",
    "run",
]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

OptionKind = Literal["menu", "queue", "info", "callback", "action", "language"]
OPTION_KINDS: Final[tuple[OptionKind, ...]] = ("menu", "queue", "info", "callback", "action", "language")
MENU_ACTIONS: Final = ("repeat", "back", "hangup")
#: Keys a menu option may use: 0-9 and ``*``. ``#`` ends GET DATA input in Asterisk
#: (``ast_readstring_full`` in main/app.c is called with ``"#"`` as the end key), so a
#: caller pressing it sends nothing: it cannot select an option.
OPTION_KEYS: Final = frozenset("0123456789*")

_NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}")
_SERVICE_RE: Final = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
_REASON_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
_LANG_RE: Final = re.compile(r"[a-z]{2}(?:_[A-Z]{2})?")
_PROMPT_RE: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*(?:/[A-Za-z0-9_][A-Za-z0-9_.-]*)*")
_VAR_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_ENV_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_BARE_KEY_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")


class ConfigError(ValueError):
    """The configuration has problems; ``problems`` lists them, one line each."""

    def __init__(self, problems: Iterable[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


# -- the schema ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AMIConfig:
    """How to reach Asterisk's manager interface (``manager.conf``)."""

    host: str = "127.0.0.1"
    port: int = 5038
    username: str = "ivr"
    secret: str | None = None
    secret_env: str | None = None
    connect_timeout_s: float = 5.0
    ping_interval_s: float = 20.0
    ping_timeout_s: float = 5.0
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 30.0

    def resolve_secret(self, environ: Mapping[str, str] | None = None) -> str:
        """The secret itself: from ``secret_env`` (read now, not at load time) or ``secret``."""
        return _resolve_secret("ami", "secret", self.secret, self.secret_env, environ)


@dataclass(frozen=True, slots=True)
class AGIConfig:
    """The FastAGI server. FastAGI has no authentication: ``allowed_clients`` is the only gate."""

    host: str = "127.0.0.1"
    port: int = 4573
    max_sessions: int = 200
    env_timeout_s: float = 5.0
    command_timeout_s: float = 10.0
    media_timeout_s: float = 300.0
    shutdown_grace_s: float = 10.0
    allowed_clients: tuple[IPNetwork, ...] = (
        ipaddress.ip_network("127.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
    )

    def allows(self, address: str) -> bool:
        """Whether a peer address may open a session (IPv4-mapped IPv6 counts as IPv4)."""
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in net for net in self.allowed_clients)


@dataclass(frozen=True, slots=True)
class RedisConfig:
    """The event log and callback store."""

    url: str = "redis://127.0.0.1:6379/0"
    key_prefix: str = "ivr"
    stream: str = "ivr:events"
    retention_days: int = 400
    spool_path: str = "decroche-spool.jsonl"
    hash_key: str | None = None
    hash_key_env: str | None = None

    def resolve_hash_key(self, environ: Mapping[str, str] | None = None) -> str:
        """The key that pseudonymises caller numbers (``hash_key_env`` is read now)."""
        return _resolve_secret("redis", "hash_key", self.hash_key, self.hash_key_env, environ)


def _resolve_secret(
    table: str, key: str, inline: str | None, env_name: str | None, environ: Mapping[str, str] | None
) -> str:
    """A secret given inline (``key``) or by the environment variable ``key_env`` names.

    The environment is read when the secret is needed, not when the file is loaded, so
    that the configuration can be checked where the secret is not available.
    """
    env = os.environ if environ is None else environ
    if env_name is not None:
        value = env.get(env_name)
        if not value:
            raise ConfigError([f"{table}.{key}_env: environment variable {env_name} is not set"])
        return value
    if inline is None:
        raise ConfigError([f"{table}: neither {key} nor {key}_env is set"])
    return inline


@dataclass(frozen=True, slots=True)
class WebConfig:
    """The supervisors' HTTP side.

    ``token`` / ``token_env``: a bearer token that every request changing something
    (cancelling a callback) must carry; reads stay open (aggregate figures and masked
    numbers). Without one, changes are open to whoever reaches the port, which is why the
    port listens on the loopback by default.
    """

    host: str = "127.0.0.1"
    port: int = 8080
    token: str | None = None
    token_env: str | None = None

    def resolve_token(self, environ: Mapping[str, str] | None = None) -> str | None:
        """The token (None when none is configured), read from the environment now."""
        if self.token is None and self.token_env is None:
            return None
        return _resolve_secret("web", "token", self.token, self.token_env, environ)


@dataclass(frozen=True, slots=True)
class QueueConfig:
    """One app_queue queue (``queues.conf``) and its overflow thresholds.

    ``timeout_s`` is the ``Queue()`` timeout handed to the dialplan (``IVR_QTIMEOUT``, 0 = none);
    ``exit_key`` what the ``exit-key`` script does when a caller leaves it with a key.
    ``service`` is empty for a shared pool (the ``callback`` queue): menus cannot route there.

    ``announce_position`` / ``announce_wait``: a caller about to wait in the queue, or
    offered a callback for it, hears its place in line / the estimated wait (None: when the
    queue offers callbacks, :attr:`announces_position`). ``wrapup_s`` must be the queue's
    ``wrapuptime`` in queues.conf: after a call app_queue does not ring the agent for that
    long, and AMI does not tell it (QueueParams has no wrap-up), so the controller must
    know it to count free agents and handle times right.
    """

    name: str
    service: str
    timeout_s: int = 900
    priority: int = 0
    max_estimated_wait_s: float = 600.0
    max_callers_per_agent: float = 5.0
    offer_callback: bool = False
    exit_key: Literal["requeue", "hangup"] = "requeue"
    announce_position: bool | None = None
    announce_wait: bool | None = None
    wrapup_s: float = 0.0

    @property
    def announces_position(self) -> bool:
        return self.offer_callback if self.announce_position is None else self.announce_position

    @property
    def announces_wait(self) -> bool:
        return self.offer_callback if self.announce_wait is None else self.announce_wait


@dataclass(frozen=True, slots=True)
class MenuOption:
    """What one key of a menu does.

    ``kind`` says which: ``menu`` (go to the submenu ``target``), ``queue`` (to the queue
    ``target``), ``info`` (play the prompt ``target``, then ``then``), ``callback`` (offer a
    callback for the queue ``target``), ``action`` (``repeat``, ``back`` or ``hangup``),
    ``language`` (switch to ``target`` and replay the menu).
    """

    key: str
    kind: OptionKind
    target: str
    reason: str = ""
    priority: int | None = None
    collect: str | None = None
    then: Literal["menu", "hangup"] = "menu"


@dataclass(frozen=True, slots=True)
class Menu:
    name: str
    prompt: str
    timeout_s: float
    retries: int
    options: Mapping[str, MenuOption]


@dataclass(frozen=True, slots=True)
class InputSpec:
    """A number the caller types (a case number): never required to reach a human.

    After ``retries`` failed attempts (or ``#`` alone) the input is skipped and the call
    goes on without it.
    """

    name: str
    prompt: str
    invalid_prompt: str
    min_digits: int
    max_digits: int
    timeout_s: float
    retries: int
    variable: str = "IVR_CASE"
    readback: bool = False


@dataclass(frozen=True, slots=True)
class Prompts:
    """A service's generic prompts ("" = play nothing)."""

    welcome: str = ""
    closed: str = ""
    invalid: str = "pm-invalid-option"
    no_input: str = "please-try-again"
    transfer: str = ""
    goodbye: str = "goodbye"
    queue_timeout: str = "please-try-call-later"
    exit_key: str = "one-moment-please"
    you_entered: str = "you-entered"


@dataclass(frozen=True, slots=True)
class AppointmentPrompts:
    """What the appointment offer says (``[services.NAME.appointments.prompts]``).

    Between them the IVR says the slot itself ("mardi 2 décembre à 14 heures 30") with
    Asterisk's own French date sounds (``ivr.appointments.speech``).
    """

    #: Once, before the first slot: "Nous pouvons vous rappeler à l'heure de votre choix."
    offer: str = "decroche/appointment-offer"
    #: After each slot: "Pour ce créneau, tapez 1. Pour le suivant, tapez 2. Pour attendre un
    #: conseiller, tapez 0."
    choice: str = "decroche/appointment-choice"
    #: Before the chosen slot is read back: "Vous avez choisi".
    chosen: str = "decroche/appointment-chosen"
    #: After it: "Pour confirmer, tapez 1. Pour choisir un autre créneau, tapez 2."
    confirm: str = "decroche/appointment-confirm"
    #: Before the booked slot: "Votre rendez-vous est enregistré. Un conseiller vous rappellera".
    booked: str = "decroche/appointment-booked"
    #: "Ce créneau vient d'être réservé par un autre usager."
    taken: str = "decroche/appointment-taken"
    #: No (more) slot: "Nous vous mettons en relation avec un conseiller."
    none: str = "decroche/appointment-none"


@dataclass(frozen=True, slots=True)
class AppointmentConfig:
    """Appointments (``[services.NAME.appointments]``): a caller who cannot be answered soon picks
    a time and the service calls back then.

    Slots of ``slot_minutes`` are cut from the opening hours (public holidays and closed
    dates skipped), from ``min_lead_minutes`` after the call to ``horizon_days`` ahead; each
    takes ``capacity`` bookings (the agents who will call back in that slot). The IVR reads
    the first ``offered`` free slots one by one. ``queue`` is where the callback goes at the
    slot time (the service's fallback queue when empty). Off by default: a slot nobody
    staffs is a broken promise.
    """

    enabled: bool = False
    queue: str = ""
    slot_minutes: int = 30
    capacity: int = 1
    horizon_days: int = 14
    min_lead_minutes: int = 60
    offered: int = 3
    timeout_s: float = 6.0
    retries: int = 2
    prompts: AppointmentPrompts = AppointmentPrompts()


@dataclass(frozen=True, slots=True)
class ServiceConfig:
    """One public service line: its hours, menus, inputs and the queue that is always there."""

    name: str
    label: str
    language: str
    languages: tuple[str, ...]
    fallback_queue: str
    entry_menu: str
    hours: Schedule
    menus: Mapping[str, Menu]
    inputs: Mapping[str, InputSpec]
    prompts: Prompts
    appointments: AppointmentConfig = AppointmentConfig()


@dataclass(frozen=True, slots=True)
class SurveyConfig:
    """The post-call satisfaction question (a score from 1 to 5).

    ``enabled``: after a call with an agent, ``after-queue`` sends the caller to the survey
    (``IVR_ACTION=survey``).
    """

    enabled: bool = True
    prompt: str = "decroche/survey-question"
    invalid: str = "pm-invalid-option"
    thanks: str = "auth-thankyou"
    timeout_s: float = 5.0
    retries: int = 1


@dataclass(frozen=True, slots=True)
class CallbackPrompts:
    """What the callback offer says (``[callbacks.prompts]``). Names without the language
    directory, like every prompt.

    Nothing like them exists in Asterisk's core sounds, so they are the deployment's own
    recordings (``decroche/``); the announcements of position and wait use the core
    ``queue-*`` sounds and Asterisk's French numbers. The prompts that ask a question
    (:data:`CALLBACK_QUESTIONS`) must not be empty; the others may be ("" = say nothing).
    """

    #: Before the options when the queue is overloaded: "Tous nos conseillers sont occupés."
    busy: str = "decroche/callback-busy"
    #: Option 1, number known: "Pour être rappelé sur le numéro de ce téléphone, tapez 1."
    press_this_number: str = "decroche/callback-press-this-number"
    #: Option 1, no usable number: "Pour être rappelé, tapez 1."
    press_callback: str = "decroche/callback-press-callback"
    #: Option 2: "Pour être rappelé sur un autre numéro, tapez 2."
    press_other_number: str = "decroche/callback-press-other-number"
    #: Option 3: "Pour prendre rendez-vous avec un conseiller, tapez 3."
    press_appointment: str = "decroche/callback-press-appointment"
    #: Option 0: "Pour continuer à patienter, tapez 0."
    press_wait: str = "decroche/callback-press-wait"
    #: Before the number is read back: "Nous vous rappellerons au".
    number_is: str = "decroche/callback-number-is"
    #: After it: "Pour confirmer, tapez 1. Pour donner un autre numéro, tapez 2."
    confirm: str = "decroche/callback-confirm"
    #: "Tapez le numéro à dix chiffres auquel nous pouvons vous rappeler, puis la touche dièse."
    enter_number: str = "decroche/callback-enter-number"
    #: "Nous n'avons pas reçu de numéro."
    number_missing: str = "decroche/callback-number-missing"
    #: "Ce numéro n'est pas valide."
    number_invalid: str = "decroche/callback-number-invalid"
    #: "Un numéro de téléphone compte dix chiffres."
    number_length: str = "decroche/callback-number-length"
    #: "Nous ne pouvons pas rappeler les numéros spéciaux ou surtaxés."
    number_premium: str = "decroche/callback-number-premium"
    #: "Nous ne pouvons rappeler qu'un numéro de téléphone fixe ou mobile en France."
    number_refused: str = "decroche/callback-number-refused"
    #: "Votre demande de rappel est enregistrée. Vous gardez votre place : un conseiller vous rappellera."
    recorded: str = "decroche/callback-recorded"
    #: "Nous ne pouvons pas enregistrer votre demande pour le moment."
    failed: str = "decroche/callback-failed"
    #: "Un conseiller est déjà en train de vous rappeler."
    in_progress: str = "decroche/callback-in-progress"
    #: On a new call: "Vous avez déjà demandé à être rappelé."
    existing: str = "decroche/callback-existing"
    #: On a new call: "Vous avez un rendez-vous téléphonique" (then the slot).
    existing_appointment: str = "decroche/callback-existing-appointment"
    #: "Pour l'annuler, tapez 1. Pour le conserver, restez en ligne."
    cancel_choice: str = "decroche/callback-cancel-choice"
    #: "Votre demande est annulée."
    cancelled: str = "decroche/callback-cancelled"
    #: A caller-first callback, to the customer who answered: "Bonjour, vous avez demandé à
    #: être rappelé. Un conseiller va vous répondre."
    greet: str = "decroche/callback-greet"

    def for_problem(self, problem: str) -> str:
        """The prompt that tells a caller what was wrong with the number typed."""
        return {
            "missing": self.number_missing,
            "error": self.number_missing,
            "invalid": self.number_invalid,
            "too_short": self.number_length,
            "too_long": self.number_length,
            "premium": self.number_premium,
        }.get(problem, self.number_refused)


#: Callback prompts the caller answers with a key (GET DATA): without one the question is silent.
CALLBACK_QUESTIONS: Final = frozenset(
    {
        "press_this_number",
        "press_callback",
        "press_other_number",
        "press_appointment",
        "press_wait",
        "confirm",
        "enter_number",
        "cancel_choice",
    }
)


@dataclass(frozen=True, slots=True)
class CallbackConfig:
    """Callbacks that keep the caller's place in line, and which numbers may be called back.

    While ``enabled`` is false a menu's callback option queues the caller instead.
    ``choice_timeout_s`` / ``number_timeout_s``: how long the offer waits for a key and for a
    typed number; ``offer_retries``: wrong or missing answers to each question of the offer
    before it gives up (the caller then waits, never hung up on).
    """

    enabled: bool = True
    mode: Literal["agent_first", "caller_first"] = "agent_first"
    attempts: int = 3
    retry_delay_s: float = 300.0
    expiry_s: float = 8 * 3600.0
    ring_timeout_s: float = 30.0
    allow_mobile: bool = True
    allow_geographic: bool = True
    allow_nongeographic: bool = True
    allow_premium: bool = False
    allow_international: bool = False
    allow_short_codes: bool = False
    choice_timeout_s: float = 6.0
    number_timeout_s: float = 10.0
    offer_retries: int = 2
    prompts: CallbackPrompts = CallbackPrompts()
    # How the dispatcher places calls (ivr.callbacks.dispatcher.DispatchSettings): through
    # the service's queue (app_queue picks the agent) or to a free member picked here; how
    # long a claim holds without renewal (a dead controller's dial is taken over after
    # that); how often a dial whose channel went quiet is checked with Asterisk, and how
    # long after the call ended an outcome may still arrive before it counts as unknown.
    route: Literal["queue", "member"] = "queue"
    lease_s: float = 15.0
    check_interval_s: float = 20.0
    outcome_grace_s: float = 30.0
    agent_retry_delay_s: float = 20.0


@dataclass(frozen=True, slots=True)
class Config:
    """The whole controller configuration. ``sim`` is the simulator's own table, passed as is."""

    source: str
    ami: AMIConfig
    agi: AGIConfig
    redis: RedisConfig
    web: WebConfig
    queues: Mapping[str, QueueConfig]
    services: Mapping[str, ServiceConfig]
    callbacks: CallbackConfig
    survey: SurveyConfig
    timezone: str = "Europe/Paris"
    custom_prompt_dirs: tuple[str, ...] = ("decroche",)
    sim: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))


# -- public entry points ------------------------------------------------------------------------


def default_config_path() -> Path:
    """The packaged default configuration file."""
    return Path(str(resources.files("ivr") / "data" / "default.toml"))


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and check a configuration file; :class:`ConfigError` lists every problem."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{p}: cannot read: {exc.strerror or exc}"]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{p}: not UTF-8 text ({exc.reason} at byte {exc.start})"]) from None
    return parse_config(text, source=str(p))


def check_config(path: str | os.PathLike[str]) -> list[str]:
    """The problems of a configuration file (empty when it is good)."""
    try:
        load_config(path)
    except ConfigError as exc:
        return exc.problems
    return []


def default_config() -> Config:
    """The packaged default configuration (the demo's)."""
    return load_config(default_config_path())


def parse_config(text: str, *, source: str = "<config>") -> Config:
    """Parse and check configuration text; ``source`` names it in messages."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{source}: invalid TOML: {exc}"]) from None
    problems = _Problems(source)
    config = _build(problems, data, source)
    if problems.items or config is None:
        raise ConfigError(problems.items)
    return config


@lru_cache(maxsize=1)
def core_sound_names() -> frozenset[str]:
    """Names of Debian's asterisk-core-sounds-fr sounds (``ivr/data/asterisk-core-sounds-fr.txt``)."""
    text = (resources.files("ivr") / "data" / "asterisk-core-sounds-fr.txt").read_text(encoding="utf-8")
    return frozenset(line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#"))


# -- ``ivr check-config PATH`` ---------------------------------------------------------------


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """The ``check-config`` subcommand (see ``ivr.cli``)."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "check-config",
        help="check a configuration file and list every problem",
        description="Check a Décroché configuration file; exit 1 and list the problems if it has any.",
    )
    parser.add_argument("path", nargs="?", help="the TOML file (default: the packaged default configuration)")
    return parser


def run(args: argparse.Namespace) -> int:
    path = Path(args.path) if getattr(args, "path", None) else default_config_path()
    try:
        config = load_config(path)
    except ConfigError as exc:
        for line in exc.problems:
            print(line, file=sys.stderr)
        print(f"{path}: {len(exc.problems)} problem(s)", file=sys.stderr)
        return 1
    menus = sum(len(s.menus) for s in config.services.values())
    print(f"{path}: OK ({len(config.services)} services, {menus} menus, {len(config.queues)} queues)")
    return 0


# -- reading tables with paths and collected problems ------------------------------------------

_MISSING: Final[Any] = object()
T = TypeVar("T")
P = TypeVar("P", bound="DataclassInstance")


def _key(k: str) -> str:
    return k if _BARE_KEY_RE.fullmatch(k) else json.dumps(k, ensure_ascii=False)


def _join(path: str, k: str) -> str:
    return f"{path}.{_key(k)}" if path else _key(k)


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, int):
        return f"integer {value}"
    if isinstance(value, float):
        return f"float {value}"
    if isinstance(value, str):
        return f"string {value!r}"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return f"{type(value).__name__} {value!r}"


class _Problems:
    def __init__(self, source: str) -> None:
        self.source = source
        self.items: list[str] = []

    def add(self, path: str, message: str) -> None:
        self.items.append(f"{self.source}: {path}: {message}" if path else f"{self.source}: {message}")


class _Table:
    """One TOML table being read: typed getters that record problems and return a default."""

    def __init__(self, problems: _Problems, path: str, data: Mapping[str, Any]) -> None:
        self.p = problems
        self.path = path
        self.data = data
        self._seen: set[str] = set()

    def has(self, key: str) -> bool:
        return key in self.data

    def at(self, key: str) -> str:
        return _join(self.path, key)

    def error(self, key: str, message: str) -> None:
        self.p.add(self.at(key) if key else self.path, message)

    def raw(self, key: str) -> Any:
        self._seen.add(key)
        return self.data.get(key, _MISSING)

    def _get(self, key: str, default: T, check: type | tuple[type, ...], expected: str) -> Any:
        value = self.raw(key)
        if value is _MISSING:
            if default is _MISSING:
                self.error(key, f"missing (expected {expected})")
                return None
            return default
        if isinstance(value, bool) and bool not in (check if isinstance(check, tuple) else (check,)):
            self.error(key, f"expected {expected}, got {_describe(value)}")
            return None
        if not isinstance(value, check):
            self.error(key, f"expected {expected}, got {_describe(value)}")
            return None
        return value

    def text(
        self,
        key: str,
        default: Any = _MISSING,
        *,
        pattern: re.Pattern[str] | None = None,
        what: str = "",
        choices: Iterable[str] | None = None,
        allow_empty: bool = False,
    ) -> Any:
        value = self._get(key, default, str, "a string")
        if value is None or value is default:
            return value
        if not value and not allow_empty:
            self.error(key, "must not be empty")
            return None
        if choices is not None:
            allowed = tuple(choices)
            if value not in allowed:
                self.error(key, f"{value!r} is not one of {', '.join(map(repr, allowed))}")
                return None
        if pattern is not None and value and not pattern.fullmatch(value):
            self.error(key, f"{value!r} is not {what or 'valid'}")
            return None
        return value

    def opt_text(self, key: str, *, pattern: re.Pattern[str] | None = None, what: str = "") -> str | None:
        value: str | None = self.text(key, None, pattern=pattern, what=what)
        return value

    def integer(
        self, key: str, default: Any = _MISSING, *, lo: int | None = None, hi: int | None = None
    ) -> Any:
        value = self._get(key, default, int, "an integer")
        if value is None or value is default:
            return value
        return self._range(key, value, lo, hi)

    def number(
        self, key: str, default: Any = _MISSING, *, lo: float | None = None, hi: float | None = None
    ) -> Any:
        value = self._get(key, default, (int, float), "a number")
        if value is None or value is default:
            return value
        return self._range(key, float(value), lo, hi)

    def _range(self, key: str, value: Any, lo: Any, hi: Any) -> Any:
        if lo is not None and value < lo:
            self.error(key, f"{value} is below the minimum {lo}")
            return None
        if hi is not None and value > hi:
            self.error(key, f"{value} is above the maximum {hi}")
            return None
        return value

    def flag(self, key: str, default: Any = _MISSING) -> Any:
        return self._get(key, default, bool, "true or false")

    def texts(self, key: str, default: Any = _MISSING) -> Any:
        value = self._get(key, default, list, "an array of strings")
        if value is None or value is default:
            return value
        out: list[str] = []
        for i, item in enumerate(value):
            if not isinstance(item, str):
                self.p.add(f"{self.at(key)}[{i}]", f"expected a string, got {_describe(item)}")
                return None
            out.append(item)
        return tuple(out)

    def table(self, key: str, *, required: bool = False) -> _Table:
        value = self.raw(key)
        path = self.at(key)
        if value is _MISSING:
            if required:
                self.p.add(path, "missing (expected a table)")
            return _Table(self.p, path, {})
        if not isinstance(value, dict):
            self.p.add(path, f"expected a table, got {_describe(value)}")
            return _Table(self.p, path, {})
        return _Table(self.p, path, value)

    def children(self) -> list[tuple[str, _Table | None]]:
        """Every key of this table as a sub-table (None, with a problem, when it is not one)."""
        out: list[tuple[str, _Table | None]] = []
        for k, v in self.data.items():
            self._seen.add(k)
            if isinstance(v, dict):
                out.append((k, _Table(self.p, self.at(k), v)))
            else:
                self.p.add(self.at(k), f"expected a table, got {_describe(v)}")
                out.append((k, None))
        return out

    def done(self) -> None:
        """Refuse keys nobody read, with the nearest known key as a hint."""
        known = sorted(self._seen)
        for k in self.data:
            if k in self._seen:
                continue
            hint = difflib.get_close_matches(k, known, n=1)
            more = f"; did you mean {_key(hint[0])!r}?" if hint else f" (known keys: {', '.join(known)})"
            self.p.add(self.at(k), f"unknown key{more}")


def _suggest(value: str, known: Iterable[str]) -> str:
    names = sorted(known)
    hint = difflib.get_close_matches(value, names, n=1)
    if hint:
        return f"; did you mean {hint[0]!r}?"
    return f" (known: {', '.join(names)})" if names else " (none is defined)"


# -- building the config ------------------------------------------------------------------------


def _build(p: _Problems, data: dict[str, Any], source: str) -> Config | None:
    root = _Table(p, "", data)
    cal = root.table("calendar")
    timezone = cal.text("timezone", "Europe/Paris")
    holidays = cal.text("holidays", "FR", choices=(*sorted(HOLIDAY_CALENDARS), "none"))
    if isinstance(timezone, str) and not _tz_ok(timezone):
        cal.error("timezone", f"unknown timezone {timezone!r} (an IANA name like 'Europe/Paris')")
        timezone = None
    cal.done()
    prompts_t = root.table("prompts")
    custom_dirs = prompts_t.texts("custom_dirs", ("decroche",)) or ()
    for i, d in enumerate(custom_dirs):
        if not _NAME_RE.fullmatch(d):
            p.add(f"prompts.custom_dirs[{i}]", f"{d!r} is not a directory name")
    prompts_t.done()
    checker = _PromptChecker(p, tuple(custom_dirs))

    ami = _ami(root.table("ami"))
    agi = _agi(root.table("agi"))
    redis = _redis(root.table("redis"))
    web = _web(root.table("web"))
    callbacks = _callbacks(root.table("callbacks"), checker)
    survey = _survey(root.table("survey"), checker)

    services_t = root.table("services", required=True)
    service_names = [k for k in services_t.data]
    queues = _queues(root.table("queues", required=True), set(service_names))
    services: dict[str, ServiceConfig] = {}
    for name, t in services_t.children():
        if t is None:
            continue
        svc = _service(name, t, queues, checker, timezone or "Europe/Paris", holidays)
        if svc is not None:
            services[name] = svc
    if "services" in data and isinstance(data["services"], dict) and not data["services"]:
        p.add("services", "no service is defined")
    if "queues" in data and isinstance(data["queues"], dict) and not data["queues"]:
        p.add("queues", "no queue is defined (every service needs a fallback queue)")

    sim_raw = root.raw("sim")
    sim: Mapping[str, Any] = MappingProxyType({})
    if sim_raw is not _MISSING:
        if isinstance(sim_raw, dict):
            sim = _freeze(sim_raw)
        else:
            p.add("sim", f"expected a table, got {_describe(sim_raw)}")
    root.done()
    if p.items:
        return None
    return Config(
        source=source,
        ami=ami,
        agi=agi,
        redis=redis,
        web=web,
        queues=MappingProxyType(queues),
        services=MappingProxyType(services),
        callbacks=callbacks,
        survey=survey,
        timezone=timezone,
        custom_prompt_dirs=tuple(custom_dirs),
        sim=sim,
    )


def _freeze(value: Any) -> Any:
    if isinstance(value, dict):
        return MappingProxyType({k: _freeze(v) for k, v in value.items()})
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    return value


def _port(t: _Table, key: str, default: int) -> Any:
    return t.integer(key, default, lo=0, hi=65535)


def _secret_pair(t: _Table, key: str, env_key: str) -> tuple[str | None, str | None]:
    """A secret given inline or by the name of the environment variable that holds it."""
    secret = t.opt_text(key)
    env = t.opt_text(env_key, pattern=_ENV_RE, what="an environment variable name")
    if t.has(key) and t.has(env_key):
        t.error(env_key, f"give {key} or {env_key}, not both")
    elif not t.has(key) and not t.has(env_key):
        t.error("", f"set {key}, or {env_key} (the name of an environment variable holding it)")
    return secret, env


def _ami(t: _Table) -> AMIConfig:
    d = AMIConfig()
    secret, secret_env = _secret_pair(t, "secret", "secret_env")
    cfg = AMIConfig(
        host=t.text("host", d.host),
        port=_port(t, "port", d.port),
        username=t.text("username", d.username),
        secret=secret,
        secret_env=secret_env,
        connect_timeout_s=t.number("connect_timeout_s", d.connect_timeout_s, lo=0.1, hi=300),
        ping_interval_s=t.number("ping_interval_s", d.ping_interval_s, lo=0.1, hi=3600),
        ping_timeout_s=t.number("ping_timeout_s", d.ping_timeout_s, lo=0.1, hi=300),
        reconnect_min_s=t.number("reconnect_min_s", d.reconnect_min_s, lo=0.01, hi=3600),
        reconnect_max_s=t.number("reconnect_max_s", d.reconnect_max_s, lo=0.01, hi=3600),
    )
    if (
        isinstance(cfg.reconnect_min_s, float)
        and isinstance(cfg.reconnect_max_s, float)
        and cfg.reconnect_max_s < cfg.reconnect_min_s
    ):
        t.error("reconnect_max_s", f"{cfg.reconnect_max_s} is below reconnect_min_s {cfg.reconnect_min_s}")
    t.done()
    return cfg


def _agi(t: _Table) -> AGIConfig:
    d = AGIConfig()
    nets: list[IPNetwork] = []
    raw = t.texts("allowed_clients", None)
    if raw is None:
        nets = list(d.allowed_clients)
    else:
        for i, text in enumerate(raw):
            try:
                nets.append(ipaddress.ip_network(text, strict=False))
            except ValueError as exc:
                t.p.add(
                    f"{t.at('allowed_clients')}[{i}]", f"{text!r} is not an address or CIDR network ({exc})"
                )
        if not raw:
            t.error(
                "allowed_clients",
                "is empty, so no Asterisk could connect; FastAGI has no authentication, so list the PBX "
                "addresses (or '0.0.0.0/0' and '::/0' to allow any, behind a firewall)",
            )
    cfg = AGIConfig(
        host=t.text("host", d.host),
        port=_port(t, "port", d.port),
        max_sessions=t.integer("max_sessions", d.max_sessions, lo=1, hi=100_000),
        env_timeout_s=t.number("env_timeout_s", d.env_timeout_s, lo=0.01, hi=300),
        command_timeout_s=t.number("command_timeout_s", d.command_timeout_s, lo=0.01, hi=3600),
        media_timeout_s=t.number("media_timeout_s", d.media_timeout_s, lo=0.01, hi=3600),
        shutdown_grace_s=t.number("shutdown_grace_s", d.shutdown_grace_s, lo=0, hi=3600),
        allowed_clients=tuple(nets),
    )
    t.done()
    return cfg


def _redis(t: _Table) -> RedisConfig:
    d = RedisConfig()
    url = t.text("url", d.url)
    if isinstance(url, str) and not url.startswith(("redis://", "rediss://", "unix://")):
        t.error("url", f"{url!r} is not a redis://, rediss:// or unix:// URL")
    prefix = t.text(
        "key_prefix", d.key_prefix, pattern=re.compile(r"[^\s:]+(?::[^\s:]+)*"), what="a key prefix"
    )
    stream = t.text(
        "stream", f"{prefix or d.key_prefix}:events", pattern=re.compile(r"\S+"), what="a key name"
    )
    hash_key, hash_key_env = _secret_pair(t, "hash_key", "hash_key_env")
    if hash_key is not None and len(hash_key.encode()) < 16:
        t.error("hash_key", "too short: use at least 16 random bytes (e.g. `openssl rand -hex 32`)")
    cfg = RedisConfig(
        url=url,
        key_prefix=prefix,
        stream=stream,
        retention_days=t.integer("retention_days", d.retention_days, lo=1, hi=36_500),
        spool_path=t.text("spool_path", d.spool_path),
        hash_key=hash_key,
        hash_key_env=hash_key_env,
    )
    t.done()
    return cfg


def _web(t: _Table) -> WebConfig:
    d = WebConfig()
    token = t.opt_text("token")
    token_env = t.opt_text("token_env", pattern=_ENV_RE, what="an environment variable name")
    if t.has("token") and t.has("token_env"):
        t.error("token_env", "give token or token_env, not both")
    if token is not None and len(token) < 16:
        t.error("token", "too short: use at least 16 characters (e.g. `openssl rand -hex 16`)")
    cfg = WebConfig(
        host=t.text("host", d.host), port=_port(t, "port", d.port), token=token, token_env=token_env
    )
    t.done()
    return cfg


def _callbacks(t: _Table, checker: _PromptChecker) -> CallbackConfig:
    d = CallbackConfig()
    prompts = checker.table(t.table("prompts"), CallbackPrompts(), required=CALLBACK_QUESTIONS)
    cfg = CallbackConfig(
        enabled=t.flag("enabled", d.enabled),
        mode=t.text("mode", d.mode, choices=("agent_first", "caller_first")),
        attempts=t.integer("attempts", d.attempts, lo=1, hi=20),
        retry_delay_s=t.number("retry_delay_s", d.retry_delay_s, lo=1, hi=7 * 86400),
        expiry_s=t.number("expiry_s", d.expiry_s, lo=60, hi=30 * 86400),
        ring_timeout_s=t.number("ring_timeout_s", d.ring_timeout_s, lo=5, hi=300),
        allow_mobile=t.flag("allow_mobile", d.allow_mobile),
        allow_geographic=t.flag("allow_geographic", d.allow_geographic),
        allow_nongeographic=t.flag("allow_nongeographic", d.allow_nongeographic),
        allow_premium=t.flag("allow_premium", d.allow_premium),
        allow_international=t.flag("allow_international", d.allow_international),
        allow_short_codes=t.flag("allow_short_codes", d.allow_short_codes),
        choice_timeout_s=t.number("choice_timeout_s", d.choice_timeout_s, lo=1, hi=60),
        number_timeout_s=t.number("number_timeout_s", d.number_timeout_s, lo=3, hi=120),
        offer_retries=t.integer("offer_retries", d.offer_retries, lo=0, hi=10),
        prompts=prompts,
        route=t.text("route", d.route, choices=("queue", "member")),
        lease_s=t.number("lease_s", d.lease_s, lo=3, hi=600),
        check_interval_s=t.number("check_interval_s", d.check_interval_s, lo=1, hi=3600),
        outcome_grace_s=t.number("outcome_grace_s", d.outcome_grace_s, lo=1, hi=3600),
        agent_retry_delay_s=t.number("agent_retry_delay_s", d.agent_retry_delay_s, lo=0, hi=3600),
    )
    t.done()
    return cfg


def _survey(t: _Table, checker: _PromptChecker) -> SurveyConfig:
    d = SurveyConfig()
    cfg = SurveyConfig(
        enabled=t.flag("enabled", d.enabled),
        prompt=checker.get(t, "prompt", d.prompt, required=True),
        invalid=checker.get(t, "invalid", d.invalid),
        thanks=checker.get(t, "thanks", d.thanks),
        timeout_s=t.number("timeout_s", d.timeout_s, lo=0.5, hi=120),
        retries=t.integer("retries", d.retries, lo=0, hi=10),
    )
    t.done()
    return cfg


def _queues(t: _Table, services: set[str]) -> dict[str, QueueConfig]:
    out: dict[str, QueueConfig] = {}
    d = QueueConfig(name="", service="")
    for name, q in t.children():
        if q is None:
            continue
        if not _NAME_RE.fullmatch(name):
            t.error(name, "is not a valid queue name (letters, digits, '-' and '_', as in queues.conf)")
        service = q.text("service", "")
        if isinstance(service, str) and service and service not in services:
            q.error("service", f"unknown service {service!r}{_suggest(service, services)}")
        cfg = QueueConfig(
            name=name,
            service=service,
            timeout_s=q.integer("timeout_s", d.timeout_s, lo=0, hi=86_400),
            priority=q.integer("priority", d.priority, lo=0, hi=1_000_000),
            max_estimated_wait_s=q.number("max_estimated_wait_s", d.max_estimated_wait_s, lo=0, hi=86_400),
            max_callers_per_agent=q.number("max_callers_per_agent", d.max_callers_per_agent, lo=0, hi=10_000),
            offer_callback=q.flag("offer_callback", d.offer_callback),
            exit_key=q.text("exit_key", d.exit_key, choices=("requeue", "hangup")),
            announce_position=q.flag("announce_position", None),
            announce_wait=q.flag("announce_wait", None),
            wrapup_s=q.number("wrapup_s", d.wrapup_s, lo=0, hi=3600),
        )
        if cfg.offer_callback is False:
            for key in ("announce_position", "announce_wait"):
                if getattr(cfg, key) is True:
                    q.error(
                        key,
                        "needs offer_callback = true: the place in line and the wait are those of "
                        "the overflow check, made only for queues that offer callbacks",
                    )
        q.done()
        out[name] = cfg
    return out


class _PromptChecker:
    """Prompt names: no language directory, and a real core sound or a custom directory."""

    def __init__(self, problems: _Problems, custom_dirs: tuple[str, ...]) -> None:
        self.p = problems
        self.custom_dirs = custom_dirs

    def check(self, path: str, name: str) -> bool:
        if not _PROMPT_RE.fullmatch(name) or any(part in {".", ".."} for part in name.split("/")):
            self.p.add(path, f"{name!r} is not a sound name (letters, digits, '_', '-', '.', '/'; no '..')")
            return False
        first, _, rest = name.partition("/")
        if rest and _LANG_RE.fullmatch(first) and first not in self.custom_dirs:
            self.p.add(
                path,
                f"{name!r}: write prompts without the language directory ({rest!r}); "
                "the IVR adds the caller's language",
            )
            return False
        if rest and first in self.custom_dirs:
            return True
        core = core_sound_names()
        if name not in core:
            dirs = ", ".join(f"{d}/" for d in self.custom_dirs) or "none"
            self.p.add(
                path,
                f"unknown prompt {name!r}: not a sound of Debian's asterisk-core-sounds-fr, nor under a "
                f"custom directory ({dirs}){_hint(name, core)}",
            )
            return False
        return True

    def get(self, t: _Table, key: str, default: Any = _MISSING, *, required: bool = False) -> Any:
        value = t.text(key, default, allow_empty=not required)
        if isinstance(value, str) and value and t.has(key):
            self.check(t.at(key), value)
        return value

    def table(self, t: _Table, defaults: P, *, required: Container[str] = ()) -> P:
        """A table of prompts read over ``defaults`` (a dataclass of prompt names, one field a key).

        The prompts named in ``required`` may not be empty: a question nobody hears cannot
        be answered. Other keys of the table are refused.
        """
        values = {
            f: self.get(t, f, getattr(defaults, f), required=f in required)
            for f in defaults.__dataclass_fields__
        }
        t.done()
        return replace(defaults, **values)


def _hint(name: str, known: Iterable[str]) -> str:
    hint = difflib.get_close_matches(name, sorted(known), n=1)
    return f"; did you mean {hint[0]!r}?" if hint else ""


def _service(
    name: str,
    t: _Table,
    queues: Mapping[str, QueueConfig],
    checker: _PromptChecker,
    timezone: str,
    holidays: str | None,
) -> ServiceConfig | None:
    start = len(t.p.items)
    if not _SERVICE_RE.fullmatch(name):
        t.p.add(t.path, "is not a valid service name (lower-case letters, digits, '-' and '_')")
    label = t.text("label", name)
    language = t.text("language", "fr", pattern=_LANG_RE, what="a language code like 'fr' or 'en'")
    languages = t.texts("languages", (language,) if isinstance(language, str) else ("fr",))
    if languages is not None:
        for i, lang in enumerate(languages):
            if not _LANG_RE.fullmatch(lang):
                t.p.add(f"{t.at('languages')}[{i}]", f"{lang!r} is not a language code like 'fr' or 'en'")
        if isinstance(language, str) and language not in languages:
            t.error("languages", f"does not include the service language {language!r}")
    retries = t.integer("retries", 2, lo=0, hi=10)
    timeout_s = t.number("timeout_s", 5.0, lo=0.5, hi=120)

    fallback = t.text("fallback_queue")
    if isinstance(fallback, str):
        _check_queue(t, "fallback_queue", fallback, name, queues)

    prompts = checker.table(t.table("prompts"), Prompts())
    hours = _hours(t.table("hours"), timezone, holidays)

    inputs: dict[str, InputSpec] = {}
    for iname, it in t.table("inputs").children():
        if it is None:
            continue
        spec = _input(iname, it, checker)
        if spec is not None:
            inputs[iname] = spec

    menus_t = t.table("menus", required=True)
    menu_names = set(menus_t.data)
    entry = t.text("entry_menu", "main")
    if isinstance(entry, str) and menu_names and entry not in menu_names:
        t.error("entry_menu", f"unknown menu {entry!r}{_suggest(entry, menu_names)}")
    ctx = _MenuContext(name, queues, menu_names, inputs, languages or (), checker, retries, timeout_s)
    menus: dict[str, Menu] = {}
    for mname, mt in menus_t.children():
        if mt is None:
            continue
        menu = _menu(mname, mt, ctx)
        if menu is not None:
            menus[mname] = menu
    appointments = _appointments(t.table("appointments"), name, fallback, queues, checker, hours)
    t.done()
    if len(t.p.items) > start:
        return None
    return ServiceConfig(
        name=name,
        label=label,
        language=language,
        languages=tuple(languages),
        fallback_queue=fallback,
        entry_menu=entry,
        hours=hours,  # type: ignore[arg-type]  # not None when no problem was recorded
        menus=MappingProxyType(menus),
        inputs=MappingProxyType(inputs),
        prompts=prompts,
        appointments=appointments,
    )


def _check_queue(t: _Table, key: str, queue: str, service: str, queues: Mapping[str, QueueConfig]) -> bool:
    q = queues.get(queue)
    if q is None:
        t.error(key, f"unknown queue {queue!r}{_suggest(queue, queues)}")
        return False
    if q.service != service:
        owner = f"service {q.service!r}" if q.service else "no service (a shared pool)"
        t.error(key, f"queue {queue!r} belongs to {owner}, not {service!r}")
        return False
    return True


def _appointments(
    t: _Table,
    service: str,
    fallback: Any,
    queues: Mapping[str, QueueConfig],
    checker: _PromptChecker,
    hours: Schedule | None,
) -> AppointmentConfig:
    """``[services.NAME.appointments]``; cross-checks that a slot can exist at all."""
    d = AppointmentConfig()
    queue = t.text("queue", fallback if isinstance(fallback, str) else "")
    if t.has("queue") and isinstance(queue, str):
        _check_queue(t, "queue", queue, service, queues)
    prompts = checker.table(
        t.table("prompts"), AppointmentPrompts(), required=AppointmentPrompts.__dataclass_fields__
    )
    cfg = AppointmentConfig(
        enabled=t.flag("enabled", d.enabled),
        queue=queue,
        slot_minutes=t.integer("slot_minutes", d.slot_minutes, lo=5, hi=8 * 60),
        capacity=t.integer("capacity", d.capacity, lo=1, hi=10_000),
        horizon_days=t.integer("horizon_days", d.horizon_days, lo=1, hi=90),
        min_lead_minutes=t.integer("min_lead_minutes", d.min_lead_minutes, lo=0, hi=90 * 24 * 60),
        offered=t.integer("offered", d.offered, lo=1, hi=9),
        timeout_s=t.number("timeout_s", d.timeout_s, lo=0.5, hi=120),
        retries=t.integer("retries", d.retries, lo=0, hi=10),
        prompts=prompts,
    )
    lead, horizon, slot = cfg.min_lead_minutes, cfg.horizon_days, cfg.slot_minutes
    if isinstance(lead, int) and isinstance(horizon, int) and lead >= horizon * 24 * 60:
        t.error(
            "min_lead_minutes",
            f"{lead} minutes is not before the horizon of {horizon} day(s): no slot could ever be offered",
        )
    if cfg.enabled is True and isinstance(slot, int) and hours is not None:
        ranges = [r for day in (*hours.weekly, *hours.special.values()) for r in day]
        if not any(end - start >= slot for start, end in ranges):
            t.error(
                "slot_minutes",
                f"{slot} minutes is longer than every opening range of the service's hours: "
                "no slot fits, so none could be offered",
            )
    t.done()
    return cfg


def _hours(t: _Table, timezone: str, holidays: str | None) -> Schedule | None:
    tz = t.text("timezone", timezone)
    cal = t.text("holidays", holidays, choices=(*sorted(HOLIDAY_CALENDARS), "none"))
    closed_raw = t.raw("closed_dates")
    closed: list[str | date] = []
    if closed_raw is not _MISSING:
        if not isinstance(closed_raw, list):
            t.error("closed_dates", f"expected an array of dates, got {_describe(closed_raw)}")
        else:
            for i, item in enumerate(closed_raw):
                if isinstance(item, date | str) and not hasattr(item, "hour"):
                    closed.append(item)
                else:
                    t.p.add(
                        f"{t.at('closed_dates')}[{i}]", f"expected a date (YYYY-MM-DD), got {_describe(item)}"
                    )
    weekly_t = t.table("weekly")
    weekly: dict[str, str] = {}
    for day, text in weekly_t.data.items():
        weekly_t.raw(day)
        if isinstance(text, list) and all(isinstance(x, str) for x in text):
            text = ", ".join(text)
        if isinstance(text, str):
            try:  # checked alone first, so that a problem names its own key
                schedule_from_mapping({day: text}, timezone="UTC", holidays=None)
            except ValueError as exc:
                weekly_t.error(day, str(exc))
                continue
            weekly[day] = text
        else:
            weekly_t.error(day, f'expected hours like "08:30-12:00, 13:30-16:30", got {_describe(text)}')
    special_t = t.table("special")
    special: dict[str | date, str] = {}
    for day, text in special_t.data.items():
        special_t.raw(day)
        if isinstance(text, str):
            special[day] = text
        else:
            special_t.error(day, f'expected hours like "08:30-12:00", got {_describe(text)}')
    always = not t.data
    if t.data and not weekly_t.data:
        t.error("weekly", "missing: without weekly hours the service would never open")
    t.done()
    if always:
        return Schedule.always_open(timezone) if _tz_ok(timezone) else None
    try:
        return schedule_from_mapping(
            weekly,
            timezone=tz if isinstance(tz, str) else timezone,
            holidays=None if cal in (None, "none") else cal,
            closed_dates=closed,
            special=special,
        )
    except ValueError as exc:
        t.error("", str(exc))
        return None


def _tz_ok(name: str) -> bool:
    try:
        Schedule.always_open(name)
    except ValueError:
        return False
    return True


def _input(name: str, t: _Table, checker: _PromptChecker) -> InputSpec | None:
    if not _NAME_RE.fullmatch(name):
        t.p.add(t.path, "is not a valid input name")
    prompt = checker.get(t, "prompt", required=True)
    invalid = checker.get(t, "invalid", "pm-invalid-option")
    lo = t.integer("min_digits", 1, lo=1, hi=64)
    hi = t.integer("max_digits", lo if isinstance(lo, int) else 1, lo=1, hi=64)
    if isinstance(lo, int) and isinstance(hi, int) and hi < lo:
        t.error("max_digits", f"{hi} is below min_digits {lo}")
    spec = InputSpec(
        name=name,
        prompt=prompt,
        invalid_prompt=invalid,
        min_digits=lo,
        max_digits=hi,
        timeout_s=t.number("timeout_s", 8.0, lo=0.5, hi=120),
        retries=t.integer("retries", 2, lo=0, hi=10),
        variable=t.text("variable", "IVR_CASE", pattern=_VAR_RE, what="a channel variable name"),
        readback=t.flag("readback", False),
    )
    t.done()
    return spec


@dataclass(frozen=True, slots=True)
class _MenuContext:
    service: str
    queues: Mapping[str, QueueConfig]
    menus: set[str]
    inputs: Mapping[str, InputSpec]
    languages: tuple[str, ...]
    checker: _PromptChecker
    retries: int
    timeout_s: float


def _menu(name: str, t: _Table, ctx: _MenuContext) -> Menu | None:
    if not _NAME_RE.fullmatch(name):
        t.p.add(t.path, "is not a valid menu name")
    prompt = ctx.checker.get(t, "prompt", required=True)
    timeout_s = t.number("timeout_s", ctx.timeout_s, lo=0.5, hi=120)
    retries = t.integer("retries", ctx.retries, lo=0, hi=10)
    options_t = t.table("options", required=True)
    options: dict[str, MenuOption] = {}
    for key, ot in options_t.children():
        if ot is None:
            continue
        if key == "#":
            options_t.error(
                key, "'#' cannot be a menu key: Asterisk ends digit input with it, it never reaches us"
            )
            continue
        if key not in OPTION_KEYS:
            options_t.error(key, "a menu key is one of 0-9 or '*'")
            continue
        option = _option(key, ot, ctx)
        if option is not None:
            options[key] = option
    if not options_t.data and options_t.path:
        options_t.error("", "a menu needs at least one option")
    t.done()
    return Menu(
        name=name, prompt=prompt, timeout_s=timeout_s, retries=retries, options=MappingProxyType(options)
    )


def _option(key: str, t: _Table, ctx: _MenuContext) -> MenuOption | None:
    present = [k for k in OPTION_KINDS if t.has(k)]
    if len(present) != 1:
        t.error(
            "",
            f"needs exactly one of {', '.join(OPTION_KINDS)}"
            + (f" (has {', '.join(present)})" if present else ""),
        )
        for k in OPTION_KINDS:
            t.raw(k)
        for extra in ("reason", "priority", "collect", "then"):
            t.raw(extra)
        t.done()
        return None
    kind = present[0]
    target = t.text(kind)
    ok = isinstance(target, str)
    if ok and kind == "menu" and target not in ctx.menus:
        t.error(kind, f"unknown menu {target!r}{_suggest(target, ctx.menus)}")
        ok = False
    elif ok and kind in ("queue", "callback"):
        ok = _check_queue(t, kind, target, ctx.service, ctx.queues)
    elif ok and kind == "info":
        ok = ctx.checker.check(t.at(kind), target)
    elif ok and kind == "action" and target not in MENU_ACTIONS:
        t.error(kind, f"{target!r} is not one of {', '.join(map(repr, MENU_ACTIONS))}")
        ok = False
    elif ok and kind == "language" and target not in ctx.languages:
        t.error(kind, f"language {target!r} is not in the service's languages ({', '.join(ctx.languages)})")
        ok = False
    reason = t.text("reason", "", pattern=_REASON_RE, what="a short reason slug", allow_empty=True)
    priority = t.integer("priority", None, lo=0, hi=1_000_000)
    collect = t.opt_text("collect")
    if collect is not None:
        if kind not in ("queue", "callback"):
            t.error("collect", f"only a queue or callback option collects an input, not {kind!r}")
            ok = False
        elif collect not in ctx.inputs:
            t.error("collect", f"unknown input {collect!r}{_suggest(collect, ctx.inputs)}")
            ok = False
    if priority is not None and kind not in ("queue", "callback"):
        t.error("priority", f"only a queue or callback option has a priority, not {kind!r}")
        ok = False
    then = t.text("then", "menu", choices=("menu", "hangup"))
    if t.has("then") and kind != "info":
        t.error("then", f"only an info option has 'then', not {kind!r}")
        ok = False
    t.done()
    if not ok or reason is None or then is None:
        return None
    return MenuOption(
        key=key, kind=kind, target=target, reason=reason, priority=priority, collect=collect, then=then
    )
