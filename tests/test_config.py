"""Configuration: the default file is valid, and every class of mistake gets a clear message."""

from __future__ import annotations

import argparse
import ipaddress
from pathlib import Path

import pytest

from ivr.config import (
    AGIConfig,
    ConfigError,
    add_parser,
    check_config,
    core_sound_names,
    default_config,
    default_config_path,
    load_config,
    parse_config,
    run,
)
from ivr.domain.hours import is_open

MINIMAL = """
[ami]
secret = "s3cret"

[redis]
hash_key = "0123456789abcdef0123"

[queues.accueil]
service = "mairie"

[queues.etat-civil]
service = "mairie"
timeout_s = 300
priority = 2

[services.mairie]
fallback_queue = "accueil"

[services.mairie.menus.main]
prompt = "decroche/mairie-menu"
[services.mairie.menus.main.options]
"1" = { queue = "etat-civil", reason = "etat-civil" }
"2" = { queue = "accueil" }
"""


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, source="t.toml")
    assert str(info.value) == "\n".join(info.value.problems)
    return info.value.problems


def with_(extra: str, base: str = MINIMAL) -> str:
    if extra.startswith(("sim =", "[sim]")):  # top-level keys must come before any table
        return extra + "\n" + base
    return base + "\n" + extra


# -- valid files ---------------------------------------------------------------------------------


def test_default_config_is_valid_and_realistic() -> None:
    config = default_config()
    assert check_config(default_config_path()) == []
    assert set(config.services) == {"caf", "france-travail", "cpam", "carsat"}
    caf = config.services["caf"]
    assert caf.language == "fr" and caf.languages == ("fr", "en")
    main = caf.menus["main"].options
    assert (main["1"].kind, main["1"].target, main["1"].reason, main["1"].collect) == (
        "queue",
        "caf",
        "aides-logement",
        "case_number",
    )
    assert (main["2"].kind, main["2"].target) == ("menu", "rsa")
    assert (main["3"].kind, main["3"].target, main["3"].reason) == ("queue", "caf", "conseiller")
    assert (main["0"].kind, main["0"].target) == ("action", "repeat")
    spec = caf.inputs["case_number"]
    assert (spec.min_digits, spec.max_digits, spec.retries, spec.variable) == (8, 8, 2, "IVR_CASE")
    for service in config.services.values():
        assert config.queues[service.fallback_queue].service == service.name
    assert config.queues["callback"].service == ""  # the shared callback pool
    assert config.ami.username == "ivr" and config.ami.resolve_secret({}) == "decroche-demo"
    assert config.agi.port == 4573 and config.web.port == 8080
    assert config.redis.stream == "ivr:events"
    assert config.callbacks.allow_premium is False and config.callbacks.attempts == 3
    assert dict(config.sim) == {}


def test_the_recordings_prompts_are_real_core_sounds() -> None:
    names = core_sound_names()
    assert {"queue-thankyou", "vm-enter-num-to-call", "pm-invalid-option", "goodbye", "digits/1"} <= names
    assert "decroche/caf-welcome" not in names


def test_minimal_config_takes_the_defaults() -> None:
    config = parse_config(MINIMAL, source="t.toml")
    assert config.source == "t.toml"
    mairie = config.services["mairie"]
    assert mairie.entry_menu == "main" and mairie.language == "fr" and mairie.languages == ("fr",)
    assert mairie.menus["main"].timeout_s == 5.0 and mairie.menus["main"].retries == 2
    assert mairie.prompts.invalid == "pm-invalid-option"
    assert is_open(mairie.hours, 0.0)  # no [hours]: always open
    assert config.queues["etat-civil"].priority == 2 and config.queues["accueil"].timeout_s == 900
    assert config.agi.allowed_clients == AGIConfig().allowed_clients


def test_load_config_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "decroche.toml"
    path.write_text(MINIMAL, encoding="utf-8")
    assert load_config(path).source == str(path)
    assert check_config(path) == []


def test_sim_table_is_passed_through_read_only() -> None:
    config = parse_config(
        with_('[sim]\nseed = 7\n[sim.traffic]\ncalls_per_hour = 120\nmix = ["caf", "cpam"]')
    )
    assert config.sim["seed"] == 7
    assert config.sim["traffic"]["calls_per_hour"] == 120
    assert config.sim["traffic"]["mix"] == ("caf", "cpam")
    with pytest.raises(TypeError):
        config.sim["seed"] = 8  # type: ignore[index]


def test_agi_allowlist_matching() -> None:
    agi = parse_config(with_('[agi]\nallowed_clients = ["192.0.2.0/24", "2001:db8::/32", "127.0.0.1"]')).agi
    assert agi.allowed_clients[2] == ipaddress.ip_network("127.0.0.1/32")
    assert agi.allows("192.0.2.77") and agi.allows("2001:db8::5") and agi.allows("127.0.0.1")
    assert agi.allows("::ffff:192.0.2.1")  # IPv4-mapped, as a dual-stack socket reports it
    assert not agi.allows("198.51.100.1") and not agi.allows("") and not agi.allows("not-an-ip")


def test_secrets_from_the_environment() -> None:
    text = MINIMAL.replace('secret = "s3cret"', 'secret_env = "DECROCHE_AMI_SECRET"').replace(
        'hash_key = "0123456789abcdef0123"', 'hash_key_env = "DECROCHE_HASH_KEY"'
    )
    config = parse_config(text)
    assert config.ami.resolve_secret({"DECROCHE_AMI_SECRET": "x"}) == "x"
    assert config.redis.resolve_hash_key({"DECROCHE_HASH_KEY": "k" * 32}) == "k" * 32
    with pytest.raises(ConfigError, match="DECROCHE_AMI_SECRET is not set"):
        config.ami.resolve_secret({})


# -- each class of mistake -------------------------------------------------------------------------


def test_brief_example_unknown_queue_names_file_path_and_value() -> None:
    text = MINIMAL.replace('"1" = { queue = "etat-civil"', '"1" = { queue = "etat-civl"')
    assert problems(text) == [
        "t.toml: services.mairie.menus.main.options.\"1\".queue: unknown queue 'etat-civl'; "
        "did you mean 'etat-civil'?"
    ]


def test_invalid_toml_reports_line_and_column() -> None:
    [message] = problems(MINIMAL + "\n[agi\nport = 1\n")
    assert message.startswith("t.toml: invalid TOML: ")
    assert "line 25" in message


def test_unreadable_and_non_utf8_files(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    [message] = check_config(missing)
    assert message.startswith(f"{missing}: cannot read: ")
    latin1 = tmp_path / "latin1.toml"
    latin1.write_bytes(b'[services.x]\nlabel = "Caf\xe9"\n')
    [message] = check_config(latin1)
    assert message.startswith(f"{latin1}: not UTF-8 text")


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("[agii]\nport = 1", "t.toml: agii: unknown key; did you mean 'agi'?"),
        ("[agi]\nmax_session = 3", "t.toml: agi.max_session: unknown key; did you mean 'max_sessions'?"),
        ('[agi]\nport = "4573"', "t.toml: agi.port: expected an integer, got string '4573'"),
        ("[agi]\nport = 70000", "t.toml: agi.port: 70000 is above the maximum 65535"),
        ("[agi]\nmax_sessions = 0", "t.toml: agi.max_sessions: 0 is below the minimum 1"),
        ("[agi]\nmax_sessions = true", "t.toml: agi.max_sessions: expected an integer, got boolean true"),
        ("[agi]\nenv_timeout_s = -1", "t.toml: agi.env_timeout_s: -1.0 is below the minimum 0.01"),
        (
            '[agi]\nallowed_clients = ["10.0.0.0/33"]',
            "t.toml: agi.allowed_clients[0]: '10.0.0.0/33' is not an address or CIDR network",
        ),
        (
            "[agi]\nallowed_clients = []",
            "t.toml: agi.allowed_clients: is empty, so no Asterisk could connect",
        ),
        ("[agi]\nallowed_clients = [1]", "t.toml: agi.allowed_clients[0]: expected a string, got integer 1"),
        ('[web]\nhost = ""', "t.toml: web.host: must not be empty"),
        (
            '[callbacks]\nmode = "both"',
            "t.toml: callbacks.mode: 'both' is not one of 'agent_first', 'caller_first'",
        ),
        (
            "[callbacks]\nallow_premium = 1",
            "t.toml: callbacks.allow_premium: expected true or false, got integer 1",
        ),
        (
            '[calendar]\ntimezone = "Europe/Pariss"',
            "t.toml: calendar.timezone: unknown timezone 'Europe/Pariss'",
        ),
        (
            '[calendar]\nholidays = "DE"',
            "t.toml: calendar.holidays: 'DE' is not one of 'FR', 'FR-57', 'none'",
        ),
        ("sim = 3\n[web]", "t.toml: sim: expected a table, got integer 3"),
        (
            '[prompts]\ncustom_dirs = ["../x"]',
            "t.toml: prompts.custom_dirs[0]: '../x' is not a directory name",
        ),
    ],
)
def test_sections_types_and_ranges(extra: str, expected: str) -> None:
    found = problems(with_(extra))
    assert any(p.startswith(expected) for p in found), found


def test_secrets_and_redis_problems() -> None:
    both = MINIMAL.replace('secret = "s3cret"', 'secret = "s3cret"\nsecret_env = "X"')
    assert problems(both) == ["t.toml: ami.secret_env: give secret or secret_env, not both"]
    neither = MINIMAL.replace('secret = "s3cret"', "")
    assert problems(neither) == [
        "t.toml: ami: set secret, or secret_env (the name of an environment variable holding it)"
    ]
    bad_env = MINIMAL.replace('secret = "s3cret"', 'secret_env = "MY-VAR"')
    assert problems(bad_env) == ["t.toml: ami.secret_env: 'MY-VAR' is not an environment variable name"]
    short = MINIMAL.replace('hash_key = "0123456789abcdef0123"', 'hash_key = "short"')
    assert problems(short)[0].startswith("t.toml: redis.hash_key: too short")
    url = MINIMAL.replace("[redis]\n", '[redis]\nurl = "http://localhost"\n')
    assert problems(url) == [
        "t.toml: redis.url: 'http://localhost' is not a redis://, rediss:// or unix:// URL"
    ]
    backoff = MINIMAL.replace("[ami]\n", "[ami]\nreconnect_min_s = 10\nreconnect_max_s = 1\n")
    assert problems(backoff) == ["t.toml: ami.reconnect_max_s: 1.0 is below reconnect_min_s 10.0"]


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            'service = "mairie"\n\n[queues.etat-civil]',
            'service = "mairy"\n\n[queues.etat-civil]',
            "t.toml: queues.accueil.service: unknown service 'mairy'; did you mean 'mairie'?",
        ),
        (
            "[queues.accueil]",
            '[queues."accueil principal"]',
            't.toml: queues."accueil principal": is not a valid queue name',
        ),
        (
            'fallback_queue = "accueil"',
            "",
            "t.toml: services.mairie.fallback_queue: missing (expected a string)",
        ),
        (
            'fallback_queue = "accueil"',
            'fallback_queue = "accueill"',
            "t.toml: services.mairie.fallback_queue: unknown queue 'accueill'; did you mean 'accueil'?",
        ),
        (
            "[services.mairie]\n",
            '[services.mairie]\nentry_menu = "start"\n',
            "t.toml: services.mairie.entry_menu: unknown menu 'start' (known: main)",
        ),
        (
            "[services.mairie]\n",
            '[services.mairie]\nlanguage = "french"\n',
            "t.toml: services.mairie.language: 'french' is not a language code like 'fr' or 'en'",
        ),
        (
            "[services.mairie]\n",
            '[services.mairie]\nlanguages = ["en"]\n',
            "t.toml: services.mairie.languages: does not include the service language 'fr'",
        ),
        (
            "[services.mairie]\n",
            "[services.Mairie]\n",
            "t.toml: services.Mairie: is not a valid service name",
        ),
        (
            'prompt = "decroche/mairie-menu"\n',
            "",
            "t.toml: services.mairie.menus.main.prompt: missing (expected a string)",
        ),
        (
            '"2" = { queue = "accueil" }',
            '"2" = { menu = "sub" }',
            "t.toml: services.mairie.menus.main.options.\"2\".menu: unknown menu 'sub' (known: main)",
        ),
        (
            '"2" = { queue = "accueil" }',
            '"2" = { queue = "accueil", menu = "main" }',
            't.toml: services.mairie.menus.main.options."2": needs exactly one of menu, queue, info, '
            "callback, action, language (has menu, queue)",
        ),
        (
            '"2" = { queue = "accueil" }',
            '"2" = { reason = "x" }',
            't.toml: services.mairie.menus.main.options."2": needs exactly one of',
        ),
        (
            '"2" = { queue = "accueil" }',
            '"2" = { action = "again" }',
            "t.toml: services.mairie.menus.main.options.\"2\".action: 'again' is not one of 'repeat', "
            "'back', 'hangup'",
        ),
        (
            '"2" = { queue = "accueil" }',
            '"2" = { language = "en" }',
            "t.toml: services.mairie.menus.main.options.\"2\".language: language 'en' is not in the "
            "service's languages (fr)",
        ),
        (
            '"2" = { queue = "accueil" }',
            '"#" = { queue = "accueil" }',
            "t.toml: services.mairie.menus.main.options.\"#\": '#' cannot be a menu key",
        ),
        (
            '"2" = { queue = "accueil" }',
            '"12" = { queue = "accueil" }',
            "t.toml: services.mairie.menus.main.options.\"12\": a menu key is one of 0-9 or '*'",
        ),
        (
            '"2" = { queue = "accueil" }',
            '"2" = { queue = "accueil", collect = "dossier" }',
            "t.toml: services.mairie.menus.main.options.\"2\".collect: unknown input 'dossier' "
            "(none is defined)",
        ),
        (
            '"2" = { queue = "accueil" }',
            '"2" = { action = "repeat", priority = 3 }',
            't.toml: services.mairie.menus.main.options."2".priority: only a queue or callback option '
            "has a priority",
        ),
        (
            '"2" = { queue = "accueil" }',
            '"2" = { queue = "accueil", then = "hangup" }',
            "t.toml: services.mairie.menus.main.options.\"2\".then: only an info option has 'then'",
        ),
        (
            '"2" = { queue = "accueil" }',
            '"2" = { queue = "accueil", reason = "a reason" }',
            "t.toml: services.mairie.menus.main.options.\"2\".reason: 'a reason' is not a short reason slug",
        ),
        (
            '"2" = { queue = "accueil" }',
            '"2" = { queue = "accueil", prio = 1 }',
            "t.toml: services.mairie.menus.main.options.\"2\".prio: unknown key; did you mean 'priority'?",
        ),
    ],
)
def test_services_menus_and_queues(old: str, new: str, expected: str) -> None:
    assert old in MINIMAL
    found = problems(MINIMAL.replace(old, new, 1))
    assert any(p.startswith(expected) for p in found), found


def test_queue_of_another_service_is_refused() -> None:
    text = with_(
        """
[queues.cpam-conseil]
service = "cpam"
[services.cpam]
fallback_queue = "cpam-conseil"
[services.cpam.menus.main]
prompt = "decroche/cpam-menu"
options."1" = { queue = "accueil" }
"""
    )
    assert problems(text) == [
        "t.toml: services.cpam.menus.main.options.\"1\".queue: queue 'accueil' belongs to service 'mairie', "
        "not 'cpam'"
    ]


@pytest.mark.parametrize(
    ("literal", "expected"),
    [
        (
            '"pm-invalid-optoin"',
            "unknown prompt 'pm-invalid-optoin': not a sound of Debian's asterisk-core-sounds-fr, nor "
            "under a custom directory (decroche/); did you mean 'pm-invalid-option'?",
        ),
        (
            '"fr/queue-thankyou"',
            "'fr/queue-thankyou': write prompts without the language directory ('queue-thankyou'); "
            "the IVR adds the caller's language",
        ),
        (
            '"decroche/../secret"',
            "'decroche/../secret' is not a sound name (letters, digits, '_', '-', '.', '/'; no '..')",
        ),
        ('"/tmp/x"', "'/tmp/x' is not a sound name (letters, digits, '_', '-', '.', '/'; no '..')"),
        (
            "'a \"quoted\" name'",
            "'a \"quoted\" name' is not a sound name (letters, digits, '_', '-', '.', '/'; no '..')",
        ),
        ("3", "expected a string, got integer 3"),
    ],
)
def test_prompt_names_are_checked(literal: str, expected: str) -> None:
    found = problems(with_(f"[services.mairie.prompts]\ninvalid = {literal}"))
    assert found == [f"t.toml: services.mairie.prompts.invalid: {expected}"]


def test_custom_prompt_directories() -> None:
    text = with_('[prompts]\ncustom_dirs = ["mairie"]').replace("decroche/mairie-menu", "mairie/menu")
    assert parse_config(text).services["mairie"].menus["main"].prompt == "mairie/menu"
    assert problems(text.replace("mairie/menu", "decroche/menu"))[0].startswith(
        "t.toml: services.mairie.menus.main.prompt: unknown prompt 'decroche/menu'"
    )


WEEKLY = '[services.mairie.hours.weekly]\nmon = "08:00-12:00"'


@pytest.mark.parametrize(
    ("hours", "expected"),
    [
        (
            '[services.mairie.hours.weekly]\nmon = "08:30-25:00"',
            "services.mairie.hours.weekly.mon: invalid time",
        ),
        (
            '[services.mairie.hours.weekly]\nmon = "12:00-08:00"',
            "services.mairie.hours.weekly.mon: mon: invalid range",
        ),
        (
            '[services.mairie.hours.weekly]\nmon = "08:00-12:00, 11:00-13:00"',
            "services.mairie.hours.weekly.mon: mon: ranges overlap",
        ),
        (
            '[services.mairie.hours.weekly]\nmon-fryday = "08:00-12:00"',
            "services.mairie.hours.weekly.mon-fryday: unknown day",
        ),
        ("[services.mairie.hours.weekly]\nlun = 8", "services.mairie.hours.weekly.lun: expected hours like"),
        (
            '[services.mairie.hours.weekly]\nmon-fri = "08:00-12:00"\nmon = "13:00-14:00"',
            "services.mairie.hours: day 'mon' given twice",
        ),
        (
            '[services.mairie.hours]\nclosed_dates = ["2026-13-01"]\n' + WEEKLY,
            "services.mairie.hours: invalid date '2026-13-01'",
        ),
        (
            "[services.mairie.hours]\nclosed_dates = [3]\n" + WEEKLY,
            "services.mairie.hours.closed_dates[0]: expected a date",
        ),
        (
            '[services.mairie.hours]\ntimezone = "Mars/Olympus"\n' + WEEKLY,
            "services.mairie.hours: unknown timezone 'Mars/Olympus'",
        ),
        (
            '[services.mairie.hours]\nholidays = "FR"',
            "services.mairie.hours.weekly: missing: without weekly hours",
        ),
    ],
)
def test_opening_hours_problems(hours: str, expected: str) -> None:
    found = problems(with_(hours))
    assert any(p.startswith(f"t.toml: {expected}") for p in found), found


def test_opening_hours_in_toml_native_dates() -> None:
    text = with_(
        """
[services.mairie.hours]
holidays = "FR-57"
closed_dates = [2026-12-24]
[services.mairie.hours.weekly]
mon-fri = ["08:30-12:00", "13:30-17:00"]
sat = "09:00-12:00"
[services.mairie.hours.special]
"2026-12-31" = "08:30-11:00"
"""
    )
    hours = parse_config(text).services["mairie"].hours
    assert hours.weekly[0] == ((510, 720), (810, 1020)) and hours.weekly[5] == ((540, 720),)
    assert hours.holidays == "FR-57" and len(hours.closed_dates) == 1


def test_input_problems() -> None:
    text = with_(
        """
[services.mairie.inputs.dossier]
prompt = "decroche/mairie-dossier"
min_digits = 9
max_digits = 6
variable = "IVR CASE"
"""
    )
    assert problems(text) == [
        "t.toml: services.mairie.inputs.dossier.max_digits: 6 is below min_digits 9",
        "t.toml: services.mairie.inputs.dossier.variable: 'IVR CASE' is not a channel variable name",
    ]


def test_every_problem_is_reported_at_once() -> None:
    text = (
        MINIMAL.replace("[ami]\n", "[ami]\nport = -1\n")
        .replace('"1" = { queue = "etat-civil"', '"1" = { queue = "nowhere"')
        .replace("[services.mairie]\n", '[services.mairie]\nretries = "two"\n')
    )
    found = problems(text)
    assert len(found) == 3
    assert found[0] == "t.toml: ami.port: -1 is below the minimum 0"


def test_structure_problems() -> None:
    assert problems("") == [
        "t.toml: ami: set secret, or secret_env (the name of an environment variable holding it)",
        "t.toml: redis: set hash_key, or hash_key_env (the name of an environment variable holding it)",
        "t.toml: services: missing (expected a table)",
        "t.toml: queues: missing (expected a table)",
    ]
    assert problems(MINIMAL.split("[queues.accueil]")[0] + "[queues]\n[services]\n") == [
        "t.toml: services: no service is defined",
        "t.toml: queues: no queue is defined (every service needs a fallback queue)",
    ]
    found = problems(MINIMAL.replace("[services.mairie.menus.", "[services.mairie.menuz."))
    assert found == [
        "t.toml: services.mairie.menus: missing (expected a table)",
        "t.toml: services.mairie.menuz: unknown key; did you mean 'menus'?",
    ]
    found = problems(MINIMAL.replace("[queues.accueil]", "[queues]\nx = 1\n[queues.accueil]"))
    assert found == ["t.toml: queues.x: expected a table, got integer 1"]


def test_check_config_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="ivr")
    add_parser(parser.add_subparsers(dest="command"))
    assert run(parser.parse_args(["check-config"])) == 0
    assert "OK (4 services, 5 menus, 5 queues)" in capsys.readouterr().out
    bad = tmp_path / "bad.toml"
    bad.write_text(
        MINIMAL.replace('"1" = { queue = "etat-civil"', '"1" = { queue = "etat-civl"'), encoding="utf-8"
    )
    assert run(parser.parse_args(["check-config", str(bad)])) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith(
        f"{bad}: services.mairie.menus.main.options.\"1\".queue: unknown queue 'etat-civl'"
    )
    assert err[-1] == f"{bad}: 1 problem(s)"


def test_default_config_agrees_with_the_shipped_asterisk_config() -> None:
    """Queue names must exist in queues.conf and each service must have a public number."""
    root = Path(__file__).parent.parent
    queues_conf = (root / "asterisk-conf" / "queues.conf").read_text(encoding="utf-8")
    asterisk_queues = {
        line.split("]")[0][1:]
        for line in queues_conf.splitlines()
        if line.startswith("[") and not line.startswith(("[general]", "[service-queue]"))
    }
    inbound = (root / "dialplans" / "dp-inbound.conf").read_text(encoding="utf-8")
    config = default_config()
    assert set(config.queues) == asterisk_queues
    for name in config.services:
        assert f"Set(IVR_SERVICE={name})" in inbound


def test_shared_pool_queue_cannot_be_a_menu_target() -> None:
    text = with_("[queues.pool]\ntimeout_s = 0").replace(
        '"2" = { queue = "accueil" }', '"2" = { queue = "pool" }'
    )
    assert problems(text) == [
        "t.toml: services.mairie.menus.main.options.\"2\".queue: queue 'pool' belongs to no service "
        "(a shared pool), not 'mairie'"
    ]


def test_the_web_token_inline_or_from_the_environment() -> None:
    assert parse_config(MINIMAL, source="t.toml").web.resolve_token() is None  # no token: no check
    inline = parse_config(with_('[web]\ntoken = "0123456789abcdef-token"'), source="t.toml")
    assert inline.web.resolve_token() == "0123456789abcdef-token"
    from_env = parse_config(with_('[web]\ntoken_env = "DECROCHE_WEB_TOKEN"'), source="t.toml")
    environ = {"DECROCHE_WEB_TOKEN": "from-the-environment"}
    assert from_env.web.resolve_token(environ) == "from-the-environment"
    with pytest.raises(ConfigError, match=r"web\.token_env: environment variable DECROCHE_WEB_TOKEN is not"):
        from_env.web.resolve_token({})


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ('[web]\ntoken = "short"', "t.toml: web.token: too short: use at least 16 characters"),
        ('[web]\ntoken = "0123456789abcdef-token"\ntoken_env = "X"', "t.toml: web.token_env: give token or"),
        ('[web]\ntoken_env = "not a name"', "t.toml: web.token_env:"),
        ("[web]\ntoken = 12", "t.toml: web.token: expected"),
    ],
)
def test_bad_web_tokens_are_refused(extra: str, expected: str) -> None:
    found = problems(with_(extra))
    assert any(p.startswith(expected) for p in found), found
