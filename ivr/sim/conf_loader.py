"""The shipped Asterisk configuration as the simulator's model: ``extensions.conf``, ``queues.conf``.

The product requirement is that the simulator runs *the* dialplan Décroché ships
(``dialplans/``), not a look-alike kept in TOML. This module reads the subset of Asterisk's
config format those files use and turns it into :class:`~ivr.sim.config.SimConfig`:

* the file format (``main/config.c``): ``[category]`` and ``[name](template,...)`` /
  ``(!)`` templates, ``key => value`` / ``key = value``, ``;`` comments (``\\;`` escapes
  one), ``;-- ... --;`` block comments, ``#include`` / ``#tryinclude`` resolved against
  the including file's directory (as asterisklint does; Asterisk itself uses its config
  directory, where the files are installed side by side);
* ``extensions.conf`` (``pbx/pbx_config.c``): ``[general]`` (ignored), ``[globals]`` (the
  simulator's globals), contexts with ``exten => X,1,App(args)``, ``same => n,...``,
  explicit priorities, labels ``n(label)``, ``include => other`` (flattened: the included
  extensions the context does not define itself are copied in), hints ignored;
* ``queues.conf`` (``apps/app_queue.c``): ``[general]`` autofill/shared_lastcall, queues
  built from their templates, ``member =>`` lines; options the simulator does not model
  (announcements, autopause ...) are recorded in :attr:`ConfQueues.ignored`.

Apps are not checked here: an app the simulator cannot run (``Echo``, ``Dial`` of a
PJSIP endpoint without an ``[endpoints]`` mapping) raises
:class:`~ivr.sim.apps.SimUnsupportedError` only when a call reaches it.

A *product configuration* is a simulator TOML file whose ``[sim]`` table names the
Asterisk files (paths relative to the TOML file) and overlays what a simulation needs and
Asterisk does not have -- people::

    [sim]
    dialplan_conf = "../../dialplans/extensions.conf"
    queues_conf = "../../asterisk-conf/queues.conf"
    profile = "normal"                  # default profile

    [globals]        # over the [globals] of extensions.conf
    [dialplan.CTX]   # replaces (or adds) context CTX, e.g. [agents] -> AgentPlan()
    [queues.NAME]    # replaces queue NAME of queues.conf
    [members]        # caf = ["Local/201@agents", {interface = ..., name = ...}]: static members
    [endpoints]      # "PJSIP/*@trunk-operator" = "Local/*@sim-customers"
    [agents.EXT] [traffic] [prompts] [general]   # as in any simulator config
    [profiles.NAME]  # tables merged over the rest when profile NAME is chosen

:func:`product_config` loads the one packaged with the simulator (``product.toml``).
"""

from __future__ import annotations

import glob
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final

from ivr.sim.config import (
    MemberConfig,
    QueueConfig,
    SimConfig,
    SimConfigError,
    check_config,
    parse_config,
    queue_from_table,
)
from ivr.sim.dialplan import Dialplan, parse_step

__all__ = [
    "PRODUCT_TOML",
    "ConfDialplan",
    "ConfError",
    "ConfQueues",
    "config_from_toml",
    "is_product",
    "load_product",
    "parse_extensions_conf",
    "parse_queues_conf",
    "product_config",
    "profiles",
]

#: The product configuration packaged with the simulator.
PRODUCT_TOML: Final = Path(__file__).with_name("product.toml")

#: Keys of ``[sim]`` this module consumes (the rest goes to :func:`parse_config`).
_PRODUCT_SIM_KEYS: Final = ("dialplan_conf", "queues_conf", "profile")
#: Include depth beyond which a chain of ``#include`` is taken for a loop.
_MAX_INCLUDE_DEPTH: Final = 16


class ConfError(SimConfigError):
    """An Asterisk config file the simulator cannot read; the message names file and line."""


# -- the config file format ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Line:
    """One meaningful line: a category header or a ``key => value`` item."""

    path: Path
    lineno: int
    category: str | None  # set for a header
    options: tuple[str, ...]  # header options: "!" (template), "+" (append), template names
    key: str
    value: str

    @property
    def where(self) -> str:
        return f"{self.path}:{self.lineno}"


def _strip_comment(text: str, in_block: bool) -> tuple[str, bool]:
    """Remove ``;`` comments and ``;-- --;`` blocks; ``\\;`` is a literal semicolon."""
    out: list[str] = []
    i = 0
    n = len(text)
    while i < n:
        if in_block:
            end = text.find("--;", i)
            if end < 0:
                return "".join(out), True
            i = end + 3
            in_block = False
            continue
        ch = text[i]
        if ch == "\\" and i + 1 < n and text[i + 1] == ";":
            out.append(";")
            i += 2
            continue
        if ch == ";":
            if text.startswith(";--", i):
                in_block = True
                i += 3
                continue
            break
        out.append(ch)
        i += 1
    return "".join(out), in_block


def _read_lines(path: Path, depth: int = 0, stack: tuple[Path, ...] = ()) -> Iterator[_Line]:
    """Every category header and item of ``path``, ``#include`` files spliced in place."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        where = f" (included from {stack[-1]})" if stack else ""
        raise ConfError(f"cannot read {path}{where}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfError(f"{path}: not UTF-8 text ({exc.reason})") from None
    in_block = False
    for lineno, raw in enumerate(text.splitlines(), 1):
        line, in_block = _strip_comment(raw, in_block)
        line = line.strip()
        if not line:
            continue
        where = f"{path}:{lineno}"
        if line.startswith("#"):
            directive, _, arg = line[1:].partition(" ")
            directive = directive.strip().lower()
            arg = arg.strip().strip('"').strip("<>").strip()
            if directive in ("include", "tryinclude"):
                if not arg:
                    raise ConfError(f"{where}: #{directive} without a file name")
                if depth >= _MAX_INCLUDE_DEPTH:
                    raise ConfError(f"{where}: #include nested deeper than {_MAX_INCLUDE_DEPTH} (a loop?)")
                target = Path(arg) if Path(arg).is_absolute() else path.parent / arg
                matches = sorted(Path(p) for p in glob.glob(str(target))) if glob.has_magic(arg) else [target]
                for inc in matches:
                    if directive == "tryinclude" and not inc.exists():
                        continue
                    if inc.resolve() in {p.resolve() for p in (*stack, path)}:
                        raise ConfError(f"{where}: #include {arg} includes itself")
                    yield from _read_lines(inc, depth + 1, (*stack, path))
                continue
            if directive == "exec":
                raise ConfError(f"{where}: #exec is not supported by the simulator")
            raise ConfError(f"{where}: unknown directive #{directive}")
        if line.startswith("["):
            close = line.find("]")
            if close < 0:
                raise ConfError(f"{where}: category without ']': {line!r}")
            name = line[1:close].strip()
            if not name:
                raise ConfError(f"{where}: empty category name")
            rest = line[close + 1 :].strip()
            options: tuple[str, ...] = ()
            if rest:
                if not (rest.startswith("(") and rest.endswith(")")):
                    raise ConfError(f"{where}: unexpected text after the category: {rest!r}")
                options = tuple(o.strip() for o in rest[1:-1].split(",") if o.strip())
            yield _Line(path, lineno, name, options, "", "")
            continue
        eq = line.find("=")
        if eq <= 0:
            raise ConfError(f"{where}: expected 'key => value' or a [category], got {line!r}")
        key = line[:eq].strip()
        value = line[eq + 1 :]
        if value.startswith(">"):
            value = value[1:]
        yield _Line(path, lineno, None, (), key, value.strip())


# -- extensions.conf ---------------------------------------------------------------------------


@dataclass(slots=True)
class ConfDialplan:
    """A parsed ``extensions.conf``: contexts as simulator steps, and its ``[globals]``.

    ``contexts`` maps context -> extension -> steps (``"App(args)"``, ``"label:App(args)"``
    for labelled priorities), priorities 1..N in order. ``files`` lists every file read.
    """

    contexts: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    globals: dict[str, str] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)

    def apps(self) -> set[str]:
        """The applications the dialplan uses (lower case)."""
        return {
            parse_step(step).app.lower()
            for extens in self.contexts.values()
            for steps in extens.values()
            for step in steps
        }


def _app_text(raw: str, where: str) -> str:
    """``App(args)``, ``App`` or the old ``App,args`` as the simulator's ``App(args)``."""
    raw = raw.strip()
    if not raw:
        raise ConfError(f"{where}: extension without an application")
    paren = raw.find("(")
    comma = raw.find(",")
    if paren >= 0 and (comma < 0 or paren < comma):
        name = raw[:paren].strip()
        close = raw.rfind(")")
        if close < paren:
            raise ConfError(f"{where}: no ')' closing the arguments of {name}")
        if raw[close + 1 :].strip():
            raise ConfError(f"{where}: text after the closing ')': {raw[close + 1 :].strip()!r}")
        args = raw[paren + 1 : close]
    elif comma >= 0:
        name, args = raw[:comma].strip(), raw[comma + 1 :]
    else:
        name, args = raw, ""
    if not name.replace("_", "").isalnum() or not name[0].isalpha():
        raise ConfError(f"{where}: {name!r} is not an application name")
    return f"{name}({args})"


def _split_priority(text: str, where: str) -> tuple[str, str | None]:
    text = text.strip()
    label: str | None = None
    if text.endswith(")") and "(" in text:
        text, _, rest = text.partition("(")
        label = rest[:-1].strip()
        if not label or not label.replace("_", "").replace("-", "").isalnum():
            raise ConfError(f"{where}: priority label {label!r} must be letters, digits, '_' or '-'")
        text = text.strip()
    return text, label


def parse_extensions_conf(path: str | Path) -> ConfDialplan:
    """Read ``extensions.conf`` (and its includes) into a :class:`ConfDialplan`."""
    root = Path(path)
    out = ConfDialplan()
    # context -> exten -> [(priority, label, step text, where)]
    raw: dict[str, dict[str, list[tuple[int, str | None, str, str]]]] = {}
    includes: dict[str, list[tuple[str, str]]] = {}
    context: str | None = None
    last_exten: dict[str, str] = {}
    seen_files: set[Path] = set()
    for line in _read_lines(root):
        if line.path not in seen_files:
            seen_files.add(line.path)
            out.files.append(line.path)
        if line.category is not None:
            opts = set(line.options) - {"+"}
            if opts:
                raise ConfError(f"{line.where}: context templates are not supported by the simulator")
            context = line.category
            if context not in ("general", "globals"):
                raw.setdefault(context, {})
            continue
        if context is None:
            raise ConfError(f"{line.where}: {line.key!r} outside any [context]")
        if context == "general":
            continue
        if context == "globals":
            out.globals[line.key] = line.value
            continue
        key = line.key.lower()
        if key == "include":
            target, _, timing = line.value.partition(",")
            if timing.strip():
                raise ConfError(f"{line.where}: timed includes are not supported by the simulator")
            includes.setdefault(context, []).append((target.strip(), line.where))
            continue
        if key == "ignorepat":
            continue
        if key in ("switch", "eswitch", "lswitch"):
            raise ConfError(f"{line.where}: '{key} =>' is not supported by the simulator")
        if key not in ("exten", "same"):
            raise ConfError(f"{line.where}: unknown dialplan keyword {line.key!r}")
        if key == "exten":
            name, sep, rest = line.value.partition(",")
            name = name.strip()
            if not sep or not name:
                raise ConfError(f"{line.where}: expected 'exten => name,priority,App(args)'")
            if "/" in name and not name.startswith("_"):
                raise ConfError(f"{line.where}: caller-id matching ({name}) is not supported")
        else:
            name = last_exten.get(context, "")
            if not name:
                raise ConfError(f"{line.where}: 'same =>' before any 'exten =>' in [{context}]")
            rest = line.value
        prio_text, sep, app = rest.partition(",")
        if not sep:
            raise ConfError(f"{line.where}: expected 'priority,App(args)' after the extension")
        prio_text, label = _split_priority(prio_text, line.where)
        last_exten[context] = name
        if prio_text.lower() == "hint":
            continue
        steps = raw[context].setdefault(name, [])
        previous = steps[-1][0] if steps else 0
        if prio_text.lower() == "n":
            if not steps:
                raise ConfError(f"{line.where}: priority 'n' before priority 1 of {name}")
            prio = previous + 1
        elif prio_text.isdigit():
            prio = int(prio_text)
        else:
            raise ConfError(f"{line.where}: priority must be a number, 'n' or 'hint', got {prio_text!r}")
        if prio <= previous:
            raise ConfError(f"{line.where}: priority {prio} of {name}@{context} is already in use")
        if prio != previous + 1:
            raise ConfError(
                f"{line.where}: priority {prio} of {name}@{context} leaves a gap after {previous} "
                "(the simulator numbers priorities 1, 2, 3 ...)"
            )
        text = _app_text(app, line.where)
        step = f"{label}:{text}" if label else text
        try:
            parse_step(step)
        except ValueError as exc:
            raise ConfError(f"{line.where}: {exc}") from None
        steps.append((prio, label, step, line.where))
    for ctx, extens in raw.items():
        out.contexts[ctx] = {ext: [s[2] for s in steps] for ext, steps in extens.items() if steps}
    _flatten_includes(out.contexts, includes)
    return out


def _flatten_includes(
    contexts: dict[str, dict[str, list[str]]], includes: dict[str, list[tuple[str, str]]]
) -> None:
    """Copy each included context's extensions into the including one (own ones first)."""
    done: set[str] = set()

    def visit(ctx: str, chain: tuple[str, ...]) -> None:
        if ctx in done:
            return
        for target, where in includes.get(ctx, ()):
            if target in chain:
                raise ConfError(
                    f"{where}: include => {target} makes a loop ({' -> '.join((*chain, target))})"
                )
            if target not in contexts:
                raise ConfError(f"{where}: include => {target}: no such context")
            visit(target, (*chain, target))
            for ext, steps in contexts[target].items():
                contexts[ctx].setdefault(ext, list(steps))
        done.add(ctx)

    for ctx in list(contexts):
        visit(ctx, (ctx,))


# -- queues.conf -------------------------------------------------------------------------------

#: queues.conf options and the TOML type the simulator's queue table takes them as.
_QUEUE_INT: Final = ("timeout", "retry", "wrapuptime", "servicelevel", "maxlen", "weight")
_QUEUE_STR: Final = ("strategy", "joinempty", "leavewhenempty", "context", "musicclass")
_QUEUE_BOOL: Final = ("ringinuse", "autofill")


@dataclass(slots=True)
class ConfQueues:
    """A parsed ``queues.conf``: the queues, ``[general]``, and what was not modelled."""

    queues: dict[str, QueueConfig] = field(default_factory=dict)
    autofill: bool | None = None
    shared_lastcall: bool | None = None
    #: ``queue.option`` (or ``general.option``) -> value, for options the simulator ignores.
    ignored: dict[str, str] = field(default_factory=dict)


def _yes(value: str, where: str) -> bool:
    folded = value.strip().lower()
    if folded in ("yes", "true", "y", "t", "1", "on"):
        return True
    if folded in ("no", "false", "n", "f", "0", "off"):
        return False
    raise ConfError(f"{where}: expected yes or no, got {value!r}")


def _member(value: str, where: str) -> dict[str, Any]:
    """``member => interface[,penalty][,membername][,state_interface][,...]``."""
    parts = [p.strip() for p in value.split(",")]
    member: dict[str, Any] = {"interface": parts[0]}
    if len(parts) > 1 and parts[1]:
        if not parts[1].isdigit():
            raise ConfError(f"{where}: member penalty must be a number, got {parts[1]!r}")
        member["penalty"] = int(parts[1])
    if len(parts) > 2 and parts[2]:
        member["name"] = parts[2]
    if len(parts) > 6 and parts[6]:
        member["paused"] = _yes(parts[6], where)
    return member


def parse_queues_conf(path: str | Path) -> ConfQueues:
    """Read ``queues.conf`` into :class:`ConfQueues` (templates applied)."""
    out = ConfQueues()
    categories: dict[str, list[_Line]] = {}
    headers: dict[str, _Line] = {}
    current: str | None = None
    for line in _read_lines(Path(path)):
        if line.category is not None:
            current = line.category
            if current in headers and "+" not in line.options:
                raise ConfError(f"{line.where}: queue [{current}] defined twice")
            headers.setdefault(current, line)
            categories.setdefault(current, [])
            continue
        if current is None:
            raise ConfError(f"{line.where}: {line.key!r} outside any [queue]")
        categories[current].append(line)
    for line in categories.pop("general", []):
        key = line.key.lower()
        if key == "autofill":
            out.autofill = _yes(line.value, line.where)
        elif key == "shared_lastcall":
            out.shared_lastcall = _yes(line.value, line.where)
        else:
            out.ignored[f"general.{key}"] = line.value
    headers.pop("general", None)

    def lines_of(name: str, chain: tuple[str, ...]) -> list[_Line]:
        head = headers[name]
        inherited: list[_Line] = []
        for opt in head.options:
            if opt in ("!", "+"):
                continue
            if opt in chain:
                raise ConfError(f"{head.where}: template {opt} inherits from itself")
            if opt not in headers:
                raise ConfError(f"{head.where}: no template [{opt}]")
            inherited += lines_of(opt, (*chain, opt))
        return inherited + categories[name]

    for name, head in headers.items():
        if "!" in head.options:
            continue
        body: dict[str, Any] = {}
        members: list[dict[str, Any]] = []
        for line in lines_of(name, (name,)):
            key = line.key.lower()
            where = line.where
            if key == "member":
                members.append(_member(line.value, where))
            elif key in _QUEUE_INT:
                if not line.value.strip().isdigit():
                    raise ConfError(f"{where}: {key} must be a whole number, got {line.value!r}")
                body[key] = int(line.value)
            elif key in _QUEUE_STR:
                body[key] = line.value
            elif key in _QUEUE_BOOL:
                body[key] = _yes(line.value, where)
            else:
                out.ignored[f"{name}.{key}"] = line.value
        # members by interface: a later line for the same interface replaces the earlier one
        by_interface = {m["interface"]: m for m in members}
        body["members"] = list(by_interface.values())
        try:
            out.queues[name] = queue_from_table(name, body)
        except SimConfigError as exc:
            raise ConfError(f"{head.where}: queue [{name}]: {exc}") from None
    return out


# -- product configurations --------------------------------------------------------------------


def _merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``base``: tables merge key by key, anything else is replaced."""
    out = dict(base)
    for key, value in over.items():
        old = out.get(key)
        if isinstance(old, Mapping) and isinstance(value, Mapping):
            out[key] = _merge(old, value)
        else:
            out[key] = value
    return out


def _path(sim: Mapping[str, Any], key: str, base_dir: Path) -> Path | None:
    value = sim.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise SimConfigError(f"sim.{key} must be a file path")
    p = Path(value)
    return p if p.is_absolute() else base_dir / p


def profiles(path: str | Path | None = None) -> tuple[str, ...]:
    """The profile names of a product configuration (default: the packaged one)."""
    data = _read_toml(Path(path) if path is not None else PRODUCT_TOML)
    table = data.get("profiles", {})
    return tuple(table) if isinstance(table, Mapping) else ()


def _read_toml(p: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SimConfigError(f"cannot read simulator config {p}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SimConfigError(f"{p}: invalid TOML: {exc}") from None


def config_from_toml(
    data: Mapping[str, Any],
    *,
    base_dir: str | Path = ".",
    source: str = "<config>",
    profile: str | None = None,
) -> SimConfig:
    """Build a product :class:`SimConfig` from parsed TOML (see the module docstring).

    ``profile`` picks ``[profiles.NAME]`` (default: ``[sim] profile``, else none). Errors
    are :class:`~ivr.sim.config.SimConfigError` naming ``source`` (and the conf file and
    line for errors in the Asterisk files).
    """
    try:
        return _build(data, Path(base_dir), profile)
    except ConfError:
        raise
    except SimConfigError as exc:
        raise SimConfigError(f"{source}: {exc}") from None


def _build(data: Mapping[str, Any], base_dir: Path, profile: str | None) -> SimConfig:
    table = data.get("profiles", {})
    if not isinstance(table, Mapping) or not all(isinstance(v, Mapping) for v in table.values()):
        raise SimConfigError("profiles must be a table of [profiles.NAME] tables")
    sim0 = data.get("sim", {})
    if not isinstance(sim0, Mapping):
        raise SimConfigError("sim must be a table")
    chosen = profile if profile is not None else sim0.get("profile")
    if chosen is not None:
        if not isinstance(chosen, str) or chosen not in table:
            known = ", ".join(sorted(table)) or "none"
            raise SimConfigError(f"unknown profile {chosen!r} (profiles: {known})")
        over = table[chosen]
        if "profiles" in over or any(k in over.get("sim", {}) for k in _PRODUCT_SIM_KEYS):
            raise SimConfigError(f"profiles.{chosen} cannot change profiles or the Asterisk files")
        data = _merge(data, over)
    rest = {
        k: v for k, v in data.items() if k not in ("profiles", "dialplan", "queues", "members", "globals")
    }
    sim = dict(rest.get("sim", {}))
    dialplan_path = _path(sim, "dialplan_conf", base_dir)
    queues_path = _path(sim, "queues_conf", base_dir)
    for key in _PRODUCT_SIM_KEYS:
        sim.pop(key, None)
    rest["sim"] = sim
    general = rest.pop("general", None)
    cfg = parse_config(rest)

    # The dialplan: extensions.conf, then the TOML's contexts over it (each replaces or adds
    # one context). Without the conf file the TOML tables replace the rig's, as in any
    # simulator config.
    overlay = (
        parse_config({"dialplan": data["dialplan"], "queues": {}}).dialplan if "dialplan" in data else None
    )
    own_globals = parse_config({"globals": data["globals"]}).globals if "globals" in data else None
    if dialplan_path is not None:
        conf = parse_extensions_conf(dialplan_path)
        cfg.dialplan = {ctx: {e: list(s) for e, s in ext.items()} for ctx, ext in conf.contexts.items()}
        cfg.dialplan.update(overlay or {})
        cfg.globals = {**conf.globals, **(own_globals or {})}
    else:
        if overlay is not None:
            cfg.dialplan = overlay
        if own_globals is not None:
            cfg.globals = own_globals

    # Queues: queues.conf, then [queues.NAME] over it (or, without the file, instead of the
    # rig's), then the [members] added to them.
    tables: dict[str, QueueConfig] = {}
    if "queues" in data:
        queue_tables = data["queues"]
        if not isinstance(queue_tables, Mapping):
            raise SimConfigError("queues must be a table")
        tables = {name: queue_from_table(name, body) for name, body in queue_tables.items()}
    if queues_path is not None:
        queues = parse_queues_conf(queues_path)
        cfg.queues = {**queues.queues, **tables}
        if queues.autofill is not None:
            cfg.autofill = queues.autofill
        if queues.shared_lastcall is not None:
            cfg.shared_lastcall = queues.shared_lastcall
    elif "queues" in data or dialplan_path is not None:
        cfg.queues = tables  # the rig's queues belong to the rig's dialplan
    if general is not None:
        if not isinstance(general, Mapping):
            raise SimConfigError("general must be a table")
        given = parse_config({"general": general})
        for key in general:
            setattr(cfg, key, getattr(given, key))
    if "members" in data:
        members = data["members"]
        if not isinstance(members, Mapping):
            raise SimConfigError("members must be a table: queue = [members]")
        for name, listed in members.items():
            q = cfg.queues.get(name)
            if q is None:
                raise SimConfigError(f"members.{name}: no queue {name!r}")
            added = queue_from_table(name, {"members": listed}).members
            cfg.queues[name] = _with_members(q, added)
    check_config(cfg)
    _check_product(cfg)
    return cfg


def _with_members(q: QueueConfig, added: tuple[MemberConfig, ...]) -> QueueConfig:
    have = {m.interface.lower() for m in q.members}
    for m in added:
        if m.interface.lower() in have:
            raise SimConfigError(f"members.{q.name}: {m.interface} is already a member")
    return replace(q, members=q.members + added)


def _local_target(interface: str) -> tuple[str, str] | None:
    tech, _, rest = interface.partition("/")
    if tech.lower() != "local":
        return None
    exten, _, context = rest.split("/", 1)[0].partition("@")
    return exten, context


def _check_product(cfg: SimConfig) -> None:
    """What would otherwise fail silently at run time: every name the model uses exists."""
    dialplan = Dialplan(cfg.dialplan)
    for q in cfg.queues.values():
        for m in q.members:
            target = _local_target(m.interface)
            if target is not None and not dialplan.exists(target[1], target[0]):
                raise SimConfigError(
                    f"queue {q.name}: member {m.interface} has no extension {target[0]} in [{target[1]}]"
                )
    for key, value in cfg.endpoints.items():
        target = _local_target(value)
        if target is not None and target[1] not in cfg.dialplan:
            raise SimConfigError(f"endpoints.{key}: no dialplan context [{target[1]}]")
    t = cfg.traffic
    if not t.enabled:
        return
    extens = [line.exten for line in t.lines] or [t.exten]
    for exten in extens:
        if not dialplan.exists(t.context, exten):
            raise SimConfigError(f"traffic: no extension {exten} in [{t.context}] for the callers to dial")
    if not dialplan.exists(t.caller_context, t.caller_exten):
        raise SimConfigError(
            f"traffic: no extension {t.caller_exten} in [{t.caller_context}] for the callers"
        )


def is_product(data: Mapping[str, Any]) -> bool:
    """Whether parsed TOML is a product configuration (names Asterisk files, or has profiles)."""
    sim = data.get("sim")
    return "profiles" in data or (
        isinstance(sim, Mapping) and any(k in sim for k in ("dialplan_conf", "queues_conf"))
    )


def load_product(path: str | Path | None = None, profile: str | None = None) -> SimConfig:
    """Read a simulator configuration (default: the packaged ``product.toml``) with a profile.

    A file that is not a product configuration is read as :func:`ivr.sim.config.load_config`
    does (over the recording rig); it has no profiles.
    """
    p = Path(path) if path is not None else PRODUCT_TOML
    data = _read_toml(p)
    if not is_product(data):
        if profile is not None:
            raise SimConfigError(f"{p}: unknown profile {profile!r} (the file has no [profiles])")
        try:
            return parse_config(data)
        except SimConfigError as exc:
            raise SimConfigError(f"{p}: {exc}") from None
    return config_from_toml(data, base_dir=p.parent, source=str(p), profile=profile)


def product_config(profile: str = "normal") -> SimConfig:
    """The shipped dialplan and queues with the packaged simulated people, for ``profile``."""
    return load_product(PRODUCT_TOML, profile)
