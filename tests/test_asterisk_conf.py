"""The Asterisk configuration we ship (``asterisk-conf/``, ``dialplans/``).

* the dialplan is clean under ``asterisklint dialplan-check --asterisk-version 22``;
* ``manager.conf``: timestamps on, loopback, a least-privilege ``ivr`` user, and event
  filters that drop the noise but keep what the controller reads -- checked by evaluating
  them the way Asterisk 22 does (``main/manager.c``: ``manager_add_filter``,
  ``filter_cmp_fn``, ``should_send_event``), with the C library's POSIX regex on Linux;
* ``queues.conf``: every queue has the options the controller relies on;
* the files agree with each other (contexts, queues, modules, the IVR variable contract).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "asterisk-conf"
DIALPLANS = ROOT / "dialplans"
EXTENSIONS = DIALPLANS / "extensions.conf"

# The variables the IVR server sets for the dialplan: the contract, names exactly.
CONTRACT_VARS = {
    "IVR_ACTION",
    "IVR_QUEUE",
    "IVR_PRIO",
    "IVR_QTIMEOUT",
    "IVR_SERVICE",
    "IVR_REASON",
    "IVR_CASE",
    "IVR_CALLBACK_ID",
    "IVR_CALLBACK_DIAL",
    "IVR_CB_FORGET",
}
# [globals] of extensions.conf that also start with IVR_ (not channel variables).
IVR_GLOBALS = {"IVR_AGI_HOST", "IVR_AGI_PORT", "IVR_TRUNK", "IVR_DEFAULT_QTIMEOUT"}
SERVICES = {"caf", "france-travail", "cpam", "carsat"}


# --------------------------------------------------------------------------- config parser


@dataclass
class Section:
    name: str
    is_template: bool = False
    templates: list[str] = field(default_factory=list)
    entries: list[tuple[str, str]] = field(default_factory=list)


def _strip_comment(line: str, in_block: bool) -> tuple[str, bool]:
    """Drop ``;`` comments (``\\;`` is a literal) and ``;-- ... --;`` block comments."""
    out: list[str] = []
    i = 0
    while i < len(line):
        if in_block:
            end = line.find("--;", i)
            if end < 0:
                return "".join(out), True
            in_block, i = False, end + 3
            continue
        ch = line[i]
        if ch == "\\" and line[i + 1 : i + 2] == ";":
            out.append(";")
            i += 2
        elif line.startswith(";--", i):
            in_block, i = True, i + 3
        elif ch == ";":
            break
        else:
            out.append(ch)
            i += 1
    return "".join(out), in_block


def parse_conf(path: Path) -> list[Section]:
    """Asterisk config syntax: ``[cat]``, ``[cat](!)``, ``[cat](tmpl,...)``, ``k = v``, ``k => v``."""
    sections: list[Section] = []
    in_block = False
    for raw in path.read_text(encoding="utf-8").splitlines():
        text, in_block = _strip_comment(raw, in_block)
        text = text.strip()
        if not text or text.startswith("#"):
            continue
        head = re.fullmatch(r"\[([^\]]+)\](?:\(([^)]*)\))?", text)
        if head:
            opts = [o.strip() for o in (head.group(2) or "").split(",") if o.strip()]
            sections.append(
                Section(
                    head.group(1),
                    is_template="!" in opts,
                    templates=[o for o in opts if o not in ("!", "+")],
                )
            )
            continue
        key, sep, value = text.partition("=")
        assert sep, f"{path.name}: not a key = value line: {raw!r}"
        assert sections, f"{path.name}: entry before any [section]: {raw!r}"
        sections[-1].entries.append((key.strip(), value.removeprefix(">").strip()))
    return sections


def resolved(sections: list[Section], section: Section) -> list[tuple[str, str]]:
    """Entries of ``section`` with its templates' entries first (as Asterisk inherits them)."""
    by_name = {s.name: s for s in sections if s.is_template}
    out: list[tuple[str, str]] = []
    for tmpl in section.templates:
        assert tmpl in by_name, f"[{section.name}] uses unknown template {tmpl}"
        out += resolved(sections, by_name[tmpl])
    return out + section.entries


def only(sections: list[Section], name: str) -> Section:
    found = [s for s in sections if s.name == name]
    assert len(found) == 1, f"expected one [{name}], found {len(found)}"
    return found[0]


def is_true(value: str) -> bool:
    """Asterisk's ast_true()."""
    return value.strip().lower() in {"yes", "true", "y", "t", "1", "on"}


# ------------------------------------------------------------------------------ asterisklint


def _asterisklint_cmd() -> list[str]:
    """The asterisklint of this interpreter's environment (the venv), else the one on PATH."""
    exe = Path(sys.executable).parent / "asterisklint"
    if exe.is_file():
        return [sys.executable, str(exe)]
    found = shutil.which("asterisklint")
    if found:
        return [found]
    if importlib.util.find_spec("asterisklint") is not None:
        code = "import os, sys; from asterisklint.main import main; sys.exit(main(sys.argv[1:], os.environ))"
        return [sys.executable, "-c", code]
    pytest.skip("asterisklint is not installed (pip install asterisklint-jjs, part of the test extra)")


def run_asterisklint(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALINT_")}  # no muted checks
    return subprocess.run(
        [*_asterisklint_cmd(), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
        check=False,
    )


def test_dialplan_is_clean_under_asterisklint_for_asterisk_22() -> None:
    proc = run_asterisklint("dialplan-check", "--asterisk-version", "22", str(EXTENSIONS))
    report = proc.stdout + proc.stderr
    assert proc.returncode == 0, report
    assert report.strip() == "", report


def test_asterisklint_reads_every_included_file() -> None:
    """A missing #include is only a warning to asterisklint: make sure every file is reached."""
    proc = run_asterisklint("dialplan-show", "--asterisk-version", "22", str(EXTENSIONS))
    assert proc.returncode == 0, proc.stderr
    contexts = set(re.findall(r"^\[ Context '([^']+)'", proc.stdout, flags=re.MULTILINE))
    declared = {s.name for path in DIALPLANS.glob("dp-*.conf") for s in parse_conf(path)}
    assert declared
    assert declared <= contexts, declared - contexts


def test_includes_name_existing_sibling_files_and_deploy_flat() -> None:
    text = EXTENSIONS.read_text(encoding="utf-8")
    included = re.findall(r"^#include\s+\"?([^\"\s]+)\"?\s*$", text, flags=re.MULTILINE)
    assert sorted(included) == sorted(p.name for p in DIALPLANS.glob("dp-*.conf"))
    for name in included:
        assert "/" not in name and "*" not in name, name
    # Both directories are installed into /etc/asterisk: no file may shadow another.
    assert not {p.name for p in CONF.glob("*.conf")} & {p.name for p in DIALPLANS.glob("*.conf")}


# ------------------------------------------------------------------------------- manager.conf

READ_EXPECTED = {"call", "agent", "user", "dialplan", "agi"}
WRITE_EXPECTED = {"call", "agent", "user", "originate", "reporting"}

# Event -> its class in Asterisk 22.10.1 (see the comments of manager.conf for file:line).
_CALL_EVENTS = "Newchannel Hangup DialBegin DialEnd BridgeEnter BridgeLeave OriginateResponse"
_AGENT_EVENTS = (
    "QueueCallerJoin QueueCallerLeave QueueCallerAbandon AgentCalled AgentConnect AgentComplete"
    " AgentRingNoAnswer QueueMemberStatus QueueMemberAdded QueueMemberRemoved QueueMemberPause"
    " QueueMemberPenalty QueueMemberRinginuse"
)
EVENT_CLASS: dict[str, str] = {
    **{event: "call" for event in _CALL_EVENTS.split()},
    **{event: "agent" for event in _AGENT_EVENTS.split()},
    "VarSet": "dialplan",
    "AGIExecStart": "agi",
    "AGIExecEnd": "agi",
    "UserEvent": "user",
}
# Action -> its classes (any one of them suffices; none = every logged-in user).
ACTION_CLASSES: dict[str, set[str]] = {
    "Originate": {"originate"},
    "QueueStatus": set(),
    "QueueSummary": set(),
    "CoreShowChannels": {"system", "reporting"},
    "QueueAdd": {"agent"},
    "QueueRemove": {"agent"},
    "QueuePause": {"agent"},
    "QueueWithdrawCaller": set(),
    "Hangup": {"system", "call"},
    "Getvar": {"call", "reporting"},
    "Setvar": {"call"},
    "Ping": set(),
    "UserEvent": {"user"},
}
# VarSet variables the controller reads (kept) and a sample of the rest (dropped).
VARSET_KEPT = [
    "QUEUESTATUS",
    "CALLBACK_ID",
    *sorted(CONTRACT_VARS),
    "IVR_CHOICE",
    "_IVR_CASE",
    "__IVR_CALLBACK_ID",
    "__CALLBACK_ID",
]
VARSET_DROPPED = [
    "BRIDGEPEER",
    "DIALSTATUS",
    "DIALEDPEERNUMBER",
    "ANSWEREDTIME",
    "QUEUEWAIT",
    "QUEUEWAIT_MS",
    "QUEUEPOSITION",
    "QUEUE_PRIO",
    "AGISTATUS",
    "ABANDONED",
    "DP_QUEUE",
    "DP_CBSTATUS",
    "QT",
    "Q",
    "QUEUESTATU",
    "QUEUESTATUSX",
    "CALLBACK",
    "CALLBACK_IDX",
    "IVR",
    "IVRX",
    "__IVR",
    "ivr_action",
    "_",
    "__DIALSTATUS",
    "CHANNEL(language)",
]


class PosixRegex:
    """A regex compiled as Asterisk does: regcomp(REG_EXTENDED | REG_NOSUB), regexec != 0.

    Uses the C library on Linux (glibc or musl: REG_EXTENDED=1, REG_NOSUB=8); elsewhere
    Python's ``re``, which agrees with POSIX ERE on the constructs used in manager.conf.
    """

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        self._libc: ctypes.CDLL | None = None
        libname = ctypes.util.find_library("c") if sys.platform.startswith("linux") else None
        if libname:
            self._libc = ctypes.CDLL(libname)
            self._buf = ctypes.create_string_buffer(1024)  # >= sizeof(regex_t)
            rc = self._libc.regcomp(self._buf, pattern.encode(), 1 | 8)
            assert rc == 0, f"regcomp failed ({rc}) for {pattern!r}"
        else:
            self._re = re.compile(pattern)

    def search(self, text: str) -> bool:
        if self._libc is not None:
            return bool(self._libc.regexec(self._buf, text.encode(), 0, None, 0) == 0)
        return self._re.search(text) is not None

    def __del__(self) -> None:
        libc = getattr(self, "_libc", None)
        if libc is not None:
            libc.regfree(self._buf)


@dataclass
class EventFilter:
    exclude: bool
    name: str | None
    header: str | None
    method: str
    pattern: str
    regex: PosixRegex | None = None

    def _match_data(self, data: str) -> bool:
        if self.method == "regex":
            assert self.regex is not None
            return self.regex.search(data)
        return {
            "exact": data == self.pattern,
            "starts_with": data.startswith(self.pattern),
            "ends_with": data.endswith(self.pattern),
            "contains": self.pattern in data,
            "none": True,
        }[self.method]

    def matches(self, event: str, headers: list[tuple[str, str]]) -> bool:
        """``filter_cmp_fn``: event name first, then the whole payload or one header's values."""
        if self.name is not None and self.name != event:
            return False
        lines = [f"Event: {event}", "Privilege: x,all", *(f"{k}: {v}" for k, v in headers)]
        if self.header is None:
            return self._match_data("\r\n".join(lines) + "\r\n")
        prefix = f"{self.header}:"
        for line in lines:
            if line.startswith(prefix):
                value = line[len(prefix) :].lstrip(" \t")
                if value and self._match_data(value):
                    return True
        return False


_METHODS = {"regex", "exact", "starts_with", "ends_with", "contains", "none"}


def parse_eventfilter(key: str, value: str) -> EventFilter:
    """``manager_add_filter`` of Asterisk 22: legacy ``eventfilter = [!]regex`` or advanced form."""
    assert key.startswith("eventfilter"), key
    exclude = value.startswith("!")
    pattern = value[1:] if exclude else value
    if "(" not in key:
        assert key == "eventfilter" and pattern, f"bad legacy filter {key} = {value}"
        return EventFilter(exclude, None, None, "regex", pattern, PosixRegex(pattern))
    m = re.fullmatch(r"eventfilter\((.*)\)", key)
    assert m, f"advanced filter must be eventfilter(<criteria>): {key}"
    seen: dict[str, str] = {}
    for opt in m.group(1).split(","):
        om = re.fullmatch(r"(action|name|header|method)\(([^()\s,]+)\)", opt.strip())
        assert om, f"unknown or malformed filter option {opt!r} in {key}"
        assert om.group(1) not in seen, f"option {om.group(1)} twice in {key}"
        seen[om.group(1)] = om.group(2)
    action = seen.get("action")
    assert action in (None, "include", "exclude"), key
    if action is not None:
        exclude = action == "exclude"
    method = seen.get("method", "none")
    assert method in _METHODS, key
    assert not (pattern == "" and method != "none"), f"method {method} needs a pattern: {key}"
    assert not (pattern != "" and method == "none"), f"method none takes no pattern: {key}"
    assert "name" in seen or "header" in seen or method != "none", f"matches nothing: {key}"
    regex = PosixRegex(pattern) if method == "regex" else None
    return EventFilter(exclude, seen.get("name"), seen.get("header"), method, pattern, regex)


def should_send(filters: list[EventFilter], event: str, headers: list[tuple[str, str]]) -> bool:
    """``should_send_event`` of Asterisk 22."""
    includes = [f for f in filters if not f.exclude]
    excludes = [f for f in filters if f.exclude]
    if includes and not any(f.matches(event, headers) for f in includes):
        return False
    return not any(f.matches(event, headers) for f in excludes)


@cache
def manager() -> list[Section]:
    return parse_conf(CONF / "manager.conf")


def ivr_user() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for key, value in only(manager(), "ivr").entries:
        out.setdefault(key, []).append(value)
    return out


def ivr_filters() -> list[EventFilter]:
    return [parse_eventfilter(k, v) for k, v in only(manager(), "ivr").entries if k.startswith("eventfilter")]


def test_manager_general_timestamps_and_loopback() -> None:
    general = dict(only(manager(), "general").entries)
    assert is_true(general["enabled"])
    assert is_true(general["timestampevents"])
    assert general["bindaddr"] == "127.0.0.1"
    assert not is_true(general.get("webenabled", "no"))
    assert general.get("port", "5038") == "5038"


def _is_everyone(acl: str) -> bool:
    addr, _, mask = acl.strip().partition("/")
    return addr in {"0.0.0.0", "::", "0::0"} and mask in {"", "0", "0.0.0.0"}


def test_manager_ivr_user_acl_and_placeholder_secret() -> None:
    user = ivr_user()
    assert [s.name for s in manager()] == ["general", "ivr"], "one AMI user only"
    assert user["secret"] == [user["secret"][0]] and user["secret"][0].startswith("CHANGE_ME"), (
        "ship an obvious placeholder secret, never a real one"
    )
    assert user.get("permit"), "the ivr user needs a permit list"
    for permit in user["permit"]:
        assert not _is_everyone(permit), f"permit {permit} lets anyone in"
    acl = [(k, v) for k, v in only(manager(), "ivr").entries if k in ("deny", "permit")]
    assert acl[0][0] == "deny" and _is_everyone(acl[0][1]), "start the ACL by denying everyone"


def _classes(value: str) -> set[str]:
    return {c.strip().lower() for c in value.split(",") if c.strip()}


def test_manager_ivr_user_is_least_privilege() -> None:
    user = ivr_user()
    read, write = _classes(user["read"][-1]), _classes(user["write"][-1])
    assert read == READ_EXPECTED
    assert write == WRITE_EXPECTED
    assert not {"all", "system", "command", "config"} & (read | write)
    for event, cls in EVENT_CLASS.items():
        assert cls in read, f"{event} needs read={cls}"
    for action, classes in ACTION_CLASSES.items():
        assert not classes or classes & write, f"{action} needs one of write={classes}"


def test_manager_eventfilters_drop_noise_and_keep_what_the_controller_reads() -> None:
    filters = ivr_filters()
    assert filters, "no eventfilter for the ivr user"
    for noise in ("Newexten", "DeviceStateChange"):
        assert not should_send(filters, noise, [("Channel", "PJSIP/201-00000001")]), noise
    for event in EVENT_CLASS:
        if event != "VarSet":
            assert should_send(filters, event, [("Channel", "Local/201@agents-00000000;1")]), event
    for variable in VARSET_KEPT:
        headers = [("Channel", "PJSIP/trunk-operator-00000001"), ("Variable", variable), ("Value", "x")]
        assert should_send(filters, "VarSet", headers), f"VarSet {variable} must be kept"
    for variable in VARSET_DROPPED:
        headers = [("Channel", "PJSIP/trunk-operator-00000001"), ("Variable", variable), ("Value", "x")]
        assert not should_send(filters, "VarSet", headers), f"VarSet {variable} must be dropped"


# -------------------------------------------------------------------------------- queues.conf

# Every keyword app_queue 22 accepts in a queue (queue_set_param) and for members.
QUEUE_KEYWORDS = {
    "musicclass", "music", "musiconhold", "announce", "context", "timeout", "ringinuse",
    "setinterfacevar", "setqueuevar", "setqueueentryvar", "monitor-format", "membergosub",
    "queue-youarenext", "queue-thereare", "queue-callswaiting", "queue-holdtime", "queue-minutes",
    "queue-minute", "queue-seconds", "queue-thankyou", "queue-callerannounce", "queue-reporthold",
    "announce-frequency", "announce-to-first-user", "min-announce-frequency", "announce-round-seconds",
    "announce-holdtime", "announce-position", "announce-position-only-up", "announce-position-limit",
    "periodic-announce", "periodic-announce-startdelay", "periodic-announce-frequency",
    "relative-periodic-announce", "random-periodic-announce", "retry", "wrapuptime",
    "penaltymemberslimit", "autofill", "autopause", "autopausedelay", "autopausebusy",
    "autopauseunavail", "maxlen", "servicelevel", "strategy", "joinempty", "leavewhenempty",
    "reportholdtime", "memberdelay", "weight", "timeoutrestart", "defaultrule", "timeoutpriority",
    "log-restricted-caller-id", "member",
}  # fmt: skip
EMPTY_CONDITIONS = {"paused", "penalty", "inuse", "ringing", "invalid", "wrapup", "unavailable", "unknown"}


@cache
def queues() -> list[Section]:
    return parse_conf(CONF / "queues.conf")


def queue_names() -> list[str]:
    return [s.name for s in queues() if s.name != "general" and not s.is_template]


def test_queues_general() -> None:
    general = dict(only(queues(), "general").entries)
    assert is_true(general["persistentmembers"])
    assert is_true(general["autofill"])
    assert is_true(general["shared_lastcall"])


def test_queues_one_per_service_plus_callback() -> None:
    assert set(queue_names()) == SERVICES | {"callback"}


@pytest.mark.parametrize("name", queue_names())
def test_queue_has_what_the_controller_relies_on(name: str) -> None:
    entries = resolved(queues(), only(queues(), name))
    for key, _ in entries:
        assert key in QUEUE_KEYWORDS, f"[{name}]: {key} is not an Asterisk 22 queue option"
    q = dict(entries)
    assert q["strategy"] == "rrmemory"
    assert q["context"] == "queue-exit"
    assert not is_true(q["ringinuse"])
    assert int(q["timeout"]) > 0 and int(q["retry"]) > 0
    assert int(q["wrapuptime"]) >= 0
    assert q["musicclass"] == "default"
    assert q["announce-frequency"] == "0" and q["periodic-announce-frequency"] == "0"
    assert not is_true(q["announce-holdtime"]) and not is_true(q["announce-position"])
    for option in ("joinempty", "leavewhenempty"):
        conditions = {c.strip() for c in q[option].split(",")}
        assert conditions <= EMPTY_CONDITIONS, f"{option} = {q[option]}"
        assert {"unavailable", "invalid"} <= conditions, f"{option}: nobody registered must count as empty"
        assert "paused" not in conditions, f"{option}: a break must not empty the queue"


# ----------------------------------------------------------------------- cross-file agreement


@cache
def dialplan_sections() -> list[Section]:
    sections = parse_conf(EXTENSIONS)
    for path in sorted(DIALPLANS.glob("dp-*.conf")):
        sections += parse_conf(path)
    return sections


def dialplan_contexts() -> set[str]:
    return {s.name for s in dialplan_sections()} - {"general", "globals"}


def dialplan_text() -> Iterator[str]:
    for path in sorted(DIALPLANS.glob("*.conf")):
        yield path.read_text(encoding="utf-8")


def test_ivr_contract_variables_are_used_and_documented() -> None:
    used = {v for text in dialplan_text() for v in re.findall(r"\bIVR_[A-Z0-9_]+", text)}
    assert used - IVR_GLOBALS == CONTRACT_VARS, "an IVR_* name outside the contract (typo?)"
    globals_ = dict(only(dialplan_sections(), "globals").entries)
    assert IVR_GLOBALS <= set(globals_)
    readme = (CONF / "README.md").read_text(encoding="utf-8")
    for name in CONTRACT_VARS:
        assert name in readme, f"{name} missing from asterisk-conf/README.md"


def test_every_service_has_a_did_a_queue_and_a_callback_number() -> None:
    inbound = (DIALPLANS / "dp-inbound.conf").read_text(encoding="utf-8")
    did_services = set(re.findall(r"Set\(IVR_SERVICE=([a-z-]+)\)", inbound))
    assert did_services == SERVICES
    globals_ = dict(only(dialplan_sections(), "globals").entries)
    for service in SERVICES:
        assert service in queue_names()
        assert globals_.get(f"CLI_{service}"), f"no CLI_{service} in [globals]"


def test_contexts_named_by_other_files_exist() -> None:
    contexts = dialplan_contexts()
    for name in queue_names():
        assert dict(resolved(queues(), only(queues(), name)))["context"] in contexts
    pjsip = parse_conf(CONF / "pjsip.conf")
    endpoints = [s for s in pjsip if not s.is_template and dict(resolved(pjsip, s)).get("type") == "endpoint"]
    assert endpoints
    for endpoint in endpoints:
        assert dict(resolved(pjsip, endpoint))["context"] in contexts, endpoint.name
    trunk = dict(only(dialplan_sections(), "globals").entries)["IVR_TRUNK"]
    assert trunk in {e.name for e in endpoints}
    moh = {s.name for s in parse_conf(CONF / "musiconhold.conf")}
    assert all(dict(resolved(queues(), only(queues(), n)))["musicclass"] in moh for n in queue_names())


def all_conf_files() -> list[Path]:
    return sorted([*CONF.glob("*.conf"), *DIALPLANS.glob("*.conf")])


def test_only_placeholder_secrets_are_shipped() -> None:
    for path in all_conf_files():
        for section in parse_conf(path):
            for key, value in section.entries:
                if key in ("secret", "password"):
                    assert value.startswith("CHANGE_ME"), f"{path.name} [{section.name}] {key}"


def test_lines_fit_asterisk_config_reader() -> None:
    """config.c skips lines of 511+ bytes when Asterisk is built with LOW_MEMORY (8191 otherwise)."""
    for path in all_conf_files():
        for number, line in enumerate(path.read_bytes().splitlines(), 1):
            assert len(line) < 511, f"{path.name}:{number} is {len(line)} bytes"


def test_queue_log_is_on() -> None:
    general = dict(only(parse_conf(CONF / "logger.conf"), "general").entries)
    assert is_true(general.get("queue_log", "yes"))


def test_modules_required_for_the_dialplan() -> None:
    entries = only(parse_conf(CONF / "modules.conf"), "modules").entries
    required = {v for k, v in entries if k == "require"}
    noload = {v for k, v in entries if k == "noload"}
    assert not required & noload
    proc = run_asterisklint("modules-show", "--asterisk-version", "22", str(EXTENSIONS))
    assert proc.returncode == 0, proc.stderr
    used = set(re.findall(r"^load => (\S+)$", proc.stdout, flags=re.MULTILINE))
    assert used, proc.stdout
    assert used <= required, f"modules.conf should require: {used - required}"
    assert {"pbx_config.so", "res_agi.so", "app_queue.so", "chan_pjsip.so"} <= required
