"""The compose rig in docker/, checked without Docker.

Docker may not be at hand where the tests run, so what can be checked without it is:
the compose files parse and point at files that exist, the internal ports stay on the
internal network, the fixed addresses agree between the compose file, the controller's
config.toml and the Asterisk config the init script writes, and that script itself
(run here with plain ``sh`` on temporary directories).
"""

from __future__ import annotations

import ipaddress
import os
import re
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest

from ivr.config import load_config

REPO = Path(__file__).resolve().parent.parent
DOCKER = REPO / "docker"
INIT = DOCKER / "asterisk-init.sh"
SECRET = "s3cret-for-the-test-rig_0123"


def _yaml(name: str) -> dict[str, Any]:
    yaml = pytest.importorskip("yaml", reason="PyYAML (test extras) parses the compose files")
    data = yaml.safe_load((DOCKER / name).read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def _default(value: str) -> str:
    """``${VAR:-default}`` -> ``default`` (compose interpolation, the default branch)."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)


def _sections(path: Path) -> list[str]:
    return re.findall(r"^\[([^\]]+)\](?!\(!\))", path.read_text(encoding="utf-8"), flags=re.MULTILINE)


# -- compose files ------------------------------------------------------------------------------


def test_compose_files_parse_and_point_at_real_files() -> None:
    main = _yaml("docker-compose.yml")
    sip = _yaml("docker-compose.sip-test.yml")
    services = main["services"]
    assert set(services) == {"asterisk-config", "asterisk", "redis", "controller"}
    assert set(sip["services"]) == {"asterisk-config", "sipp"}

    for compose in (main, sip):
        for name, service in compose["services"].items():
            for volume in service.get("volumes", []):
                source = _default(volume.split(":", 1)[0])
                if source.startswith("."):
                    if "sounds" in source:  # ops' own prompt files, git-ignored
                        continue
                    assert (DOCKER / source).exists(), f"{name}: {volume}"
            build = service.get("build")
            if build:
                assert (DOCKER / build["context"] / build["dockerfile"]).is_file(), name

    # A prebuilt Asterisk 22 image, replaceable; the official Redis image.
    image = services["asterisk"]["image"]
    assert image.startswith("${ASTERISK_IMAGE:-") and _default(image).endswith(":22")
    assert services["asterisk-config"]["image"] == image
    assert re.fullmatch(r"redis:\d+", _default(services["redis"]["image"]))
    # The config step must have finished before Asterisk starts.
    assert services["asterisk"]["depends_on"]["asterisk-config"] == {
        "condition": "service_completed_successfully"
    }
    # No Dockerfile here builds Asterisk.
    for dockerfile in DOCKER.glob("*Dockerfile"):
        text = dockerfile.read_text(encoding="utf-8")
        assert "asterisk" not in " ".join(re.findall(r"^(?:FROM|RUN) .*", text, flags=re.MULTILINE)).lower()


def test_ami_agi_and_redis_stay_on_the_internal_network() -> None:
    compose = _yaml("docker-compose.yml")
    assert compose["networks"]["pbx"]["internal"] is True
    published = [
        str(port).rsplit(":", 1)[-1].split("/")[0]
        for service in compose["services"].values()
        for port in service.get("ports", [])
    ]
    for port in ("5038", "4573", "6379"):
        assert port not in published
    assert set(compose["services"]["redis"]["networks"]) == {"pbx"}
    dashboard = compose["services"]["controller"]["ports"]
    assert all(str(p).startswith("127.0.0.1:") for p in dashboard), "dashboard on loopback only"


def test_addresses_agree_between_compose_config_toml_and_asterisk() -> None:
    compose = _yaml("docker-compose.yml")
    sip = _yaml("docker-compose.sip-test.yml")
    services = compose["services"]
    subnet = ipaddress.ip_network(compose["networks"]["pbx"]["ipam"]["config"][0]["subnet"])

    def address(service: dict[str, Any]) -> str:
        ip: str = service["networks"]["pbx"]["ipv4_address"]
        assert ipaddress.ip_address(ip) in subnet
        return ip

    asterisk_ip = address(services["asterisk"])
    controller_ip = address(services["controller"])
    sipp_ip = address(sip["services"]["sipp"])
    assert len({asterisk_ip, controller_ip, address(services["redis"]), sipp_ip}) == 4

    init_env = services["asterisk-config"]["environment"]
    assert init_env["AMI_BINDADDR"] == asterisk_ip
    assert init_env["AMI_PERMIT"] == f"{controller_ip}/255.255.255.255"
    assert init_env["AGI_HOST"] == "controller" and "controller" in services
    assert sip["services"]["asterisk-config"]["environment"]["TRUNK_MATCH"] == sipp_ip
    assert sip["services"]["sipp"]["command"][-1] == f"{asterisk_ip}:5060"

    config = load_config(DOCKER / "config.toml")
    assert config.ami.host == "asterisk" and config.ami.port == 5038
    assert config.ami.secret_env == "DECROCHE_AMI_SECRET"
    assert config.agi.port == int(init_env["AGI_PORT"])
    assert config.agi.allows(asterisk_ip) and not config.agi.allows(sipp_ip)
    assert config.redis.url.startswith("redis://redis:")
    assert config.redis.hash_key_env == "DECROCHE_HASH_KEY"
    controller_env = services["controller"]["environment"]
    assert {"DECROCHE_AMI_SECRET", "DECROCHE_HASH_KEY", "DECROCHE_WEB_TOKEN"} <= set(controller_env)
    assert config.web.token_env == "DECROCHE_WEB_TOKEN"  # the dashboard listens on 0.0.0.0 in there
    mounts = services["controller"]["volumes"]
    assert "./config.toml:/etc/decroche/config.toml:ro" in mounts
    dockerfile = (DOCKER / "controller.Dockerfile").read_text(encoding="utf-8")
    assert re.search(r"^FROM python:3\.11-slim$", dockerfile, flags=re.MULTILINE)
    assert '"run", "--config", "/etc/decroche/config.toml"' in dockerfile


def test_controller_config_matches_the_shipped_asterisk_config() -> None:
    config = load_config(DOCKER / "config.toml")
    assert config.ami.username in _sections(REPO / "asterisk-conf" / "manager.conf")
    queues_conf = set(_sections(REPO / "asterisk-conf" / "queues.conf")) - {"general"}
    assert set(config.queues) <= queues_conf
    inbound = (REPO / "dialplans" / "dp-inbound.conf").read_text(encoding="utf-8")
    assert set(config.services) == set(re.findall(r"Set\(IVR_SERVICE=([\w-]+)\)", inbound))


# -- the init script ----------------------------------------------------------------------------


def _run_init(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    src = tmp_path / "src"
    if not src.exists():
        src.mkdir()
        (src / "asterisk-conf").symlink_to(REPO / "asterisk-conf")
        (src / "dialplans").symlink_to(REPO / "dialplans")
    etc = tmp_path / "etc"
    etc.mkdir(exist_ok=True)
    environ = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "DECROCHE_SRC": str(src),
        "ASTERISK_ETC": str(etc),
        "ASTERISK_USER": "no-such-user-here",
        "ASTERISK_GROUP": "no-such-group-here",
        **env,
    }
    return subprocess.run(
        ["sh", str(INIT)], env=environ, capture_output=True, text=True, timeout=30, check=False
    )


def test_init_script_assembles_the_flat_config(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "sip.conf").write_text("; a sample file of the image\n")
    result = _run_init(
        tmp_path,
        DECROCHE_AMI_SECRET=SECRET,
        AGI_HOST="controller",
        AGI_PORT="4573",
        AMI_BINDADDR="172.28.53.10",
        AMI_PERMIT="172.28.53.20/255.255.255.255",
        TRUNK_MATCH="172.28.53.40",
        ASTDB_DIR=str(tmp_path / "astdb"),
    )
    assert result.returncode == 0, result.stderr

    shipped = {
        p.name for p in [*(REPO / "asterisk-conf").glob("*.conf"), *(REPO / "dialplans").glob("*.conf")]
    }
    assert {p.name for p in etc.iterdir()} == shipped | {"rtp.conf"}, "flat, and nothing stale"
    for name in shipped:
        assert stat.S_IMODE((etc / name).stat().st_mode) == 0o640, name

    def lines(name: str) -> list[str]:
        return (etc / name).read_text(encoding="utf-8").splitlines()

    assert "IVR_AGI_HOST=controller" in lines("extensions.conf")
    assert "IVR_AGI_PORT=4573" in lines("extensions.conf")
    manager = lines("manager.conf")
    assert "bindaddr = 172.28.53.10" in manager
    assert "permit = 172.28.53.20/255.255.255.255" in manager
    assert f"secret = {SECRET}" in manager and not any("CHANGE_ME" in line for line in manager)
    pjsip = lines("pjsip.conf")
    assert [line for line in pjsip if line.startswith("match = ")] == ["match = 172.28.53.40"]
    assert "contact = sip:172.28.53.40:5060" in pjsip
    assert lines("rtp.conf")[-2:] == ["rtpstart = 10000", "rtpend = 10199"]
    assert f"astdbdir => {tmp_path / 'astdb'}" in lines("asterisk.conf")
    assert (tmp_path / "astdb").is_dir()
    # Everything else is byte for byte what the repository ships.
    for name in shipped - {"extensions.conf", "manager.conf", "pjsip.conf", "asterisk.conf"}:
        source = REPO / ("dialplans" if name.startswith(("dp-", "extensions")) else "asterisk-conf") / name
        assert (etc / name).read_bytes() == source.read_bytes(), name

    # Run again without TRUNK_MATCH: rebuilt from scratch, the shipped trunk is back.
    again = _run_init(tmp_path, DECROCHE_AMI_SECRET=SECRET)
    assert again.returncode == 0, again.stderr
    assert (
        lines("pjsip.conf")
        == (REPO / "asterisk-conf" / "pjsip.conf").read_text(encoding="utf-8").splitlines()
    )
    assert "IVR_AGI_HOST=controller" in lines("extensions.conf")  # the default
    assert not any(line.startswith("astdbdir") for line in lines("asterisk.conf"))


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "DECROCHE_AMI_SECRET is not set"),
        ({"DECROCHE_AMI_SECRET": "CHANGE_ME_ivr_ami_secret"}, "placeholder"),
        ({"DECROCHE_AMI_SECRET": "short"}, "too short"),
        ({"DECROCHE_AMI_SECRET": "with space and | pipe 0123"}, "may only hold"),
        ({"DECROCHE_AMI_SECRET": SECRET, "AGI_PORT": "70000"}, "is not a port"),
        ({"DECROCHE_AMI_SECRET": SECRET, "AGI_HOST": "a;b"}, "host names and addresses only"),
        ({"DECROCHE_AMI_SECRET": SECRET, "RTP_START": "20000", "RTP_END": "10000"}, "above RTP_END"),
        ({"DECROCHE_AMI_SECRET": SECRET, "ASTDB_DIR": "relative/dir"}, "absolute path"),
    ],
)
def test_init_script_refuses_bad_input_and_touches_nothing(
    tmp_path: Path, env: dict[str, str], message: str
) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "keep.conf").write_text("; left alone\n")
    result = _run_init(tmp_path, **env)
    assert result.returncode != 0
    assert message in result.stderr
    assert [p.name for p in etc.iterdir()] == ["keep.conf"]


def test_init_script_fails_when_a_shipped_line_it_patches_is_gone(tmp_path: Path) -> None:
    """A reshaped manager.conf must stop the rig, not leave the placeholder secret in place."""
    src = tmp_path / "src"
    (src / "asterisk-conf").mkdir(parents=True)
    (src / "dialplans").symlink_to(REPO / "dialplans")
    for path in (REPO / "asterisk-conf").glob("*.conf"):
        text = path.read_text(encoding="utf-8")
        if path.name == "manager.conf":
            text = text.replace("\nsecret = ", "\nsecret=")
        (src / "asterisk-conf" / path.name).write_text(text, encoding="utf-8")
    result = _run_init(tmp_path, DECROCHE_AMI_SECRET=SECRET)
    assert result.returncode != 0
    assert "manager.conf: no line matched '^secret = .*$'" in result.stderr
