"""meshguard.toml (settings/, docs/config.md): every `up` option is a key and takes effect,
a bad file is one line naming file, line and key, and flags override the file."""

from __future__ import annotations

import argparse
import ipaddress
from collections.abc import Callable
from pathlib import Path

import pytest

from meshguard.cli.main import build_parser, main
from meshguard.daemon.daemon_config import DaemonConfig
from meshguard.mesh.routes import DEFAULT_ROUTES
from meshguard.settings.config_file import ConfigFileError, load_config_file
from meshguard.settings.daemon_options import daemon_config
from meshguard.settings.schema import BY_KEY, SETTINGS
from meshguard.settings.sources import (
    DEFAULT,
    FILE,
    FLAG,
    flag_argv,
    given_flags,
    load_settings,
    settings_from_args,
)

REPO = Path(__file__).resolve().parents[2]
# `up` options that are not settings: how `up` runs, where its sockets go, the file itself
NOT_KEYS = {"foreground", "run_dir", "config", "help"}


def _up_parser() -> argparse.ArgumentParser:
    parser = build_parser(("meshguard.cli.up_command",))
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["up"]


def test_every_up_option_is_a_key_named_after_its_flag() -> None:
    actions = {a.dest: a for a in _up_parser()._actions}
    assert set(actions) - NOT_KEYS == set(BY_KEY)
    for s in SETTINGS:
        a = actions[s.key]
        assert s.flag in a.option_strings, s.key
        assert a.default is None, f"{s.flag} needs default None, so a flag given is seen"
        assert tuple(a.choices or ()) == s.choices, s.key


def _config(tmp_path: Path, text: str, *flags: str) -> DaemonConfig:
    path = tmp_path / "meshguard.toml"
    path.write_text(text)
    args = build_parser().parse_args(["up", "--config", str(path), *flags])
    return daemon_config(settings_from_args(args, {"MESHGUARD_CONFIG_DIR": str(tmp_path)}),
                         tmp_path / "run")


Check = Callable[[DaemonConfig], bool]
NET = ipaddress.ip_network
# key -> (the TOML that sets it to something else than its default, what the daemon then does)
CASES: dict[str, tuple[str, Check]] = {
    "interface": ('interface = "mgcfg0"', lambda c: c.interface == "mgcfg0"),
    "port": ("port = 5000", lambda c: c.port == 5000),
    "seed": ('seed = ["192.0.2.1:5000", "seed.example.org"]',
             lambda c: c.seeds == [("192.0.2.1", 5000), ("seed.example.org", 51821)]),
    "dns": ('dns = ["Example.org."]', lambda c: c.seed_domains == ["example.org"]),
    "mdns": ("mdns = true", lambda c: c.mdns),
    "announce": ('announce = "2001:db8::0:7"', lambda c: c.announce == "2001:db8::7"),
    "stun": ('stun = ["stun.example.org", "192.0.2.3:3479"]',
             lambda c: c.stun == [("stun.example.org", 3478), ("192.0.2.3", 3479)]),
    "kernel": ("kernel = true", lambda c: c.kernel and c.split),
    "split_port": ("split_port = true", lambda c: c.split_port and c.split and not c.kernel),
    "open": ("open = true", lambda c: c.open_mesh),
    "dns_port": ("dns_port = 5353", lambda c: c.dns_port == 5353),
    "no_dns": ("no_dns = true", lambda c: not c.dns),
    "no_resolved": ("no_resolved = true", lambda c: not c.resolved),
    "no_portmap": ("no_portmap = true", lambda c: c.portmap == ()),
    "portmap_methods": ('portmap_methods = "upnp, pcp"', lambda c: c.portmap == ("upnp", "pcp")),
    "advertise_routes": ('advertise_routes = ["10.20.0.0/24,fd00:20::/64"]',
                         lambda c: c.routes.advertise == (NET("10.20.0.0/24"),
                                                          NET("fd00:20::/64"))),
    "advertise_exit_node": ("advertise_exit_node = true",
                            lambda c: set(c.routes.advertise) == set(DEFAULT_ROUTES)),
    "accept_routes": ("accept_routes = true", lambda c: c.routes.accept_routes),
    "exit_node": ('exit_node = "gw-1"', lambda c: c.routes.exit_node == "gw-1"),
    "exit_node_allow_lan_access": ('exit_node = "gw-1"\nexit_node_allow_lan_access = true',
                                   lambda c: c.routes.exit_node_allow_lan_access),
    "log_level": ('log_level = "debug"', lambda c: c.log_level == "debug"),
    "log_format": ('log_format = "json"', lambda c: c.log_format == "json"),
    "metrics": ('metrics = "9586"', lambda c: c.metrics == ("127.0.0.1", 9586)),
}


def test_every_key_has_a_case() -> None:
    assert set(CASES) == set(BY_KEY)


@pytest.mark.parametrize("key", sorted(BY_KEY))
def test_every_key_takes_effect(key: str, tmp_path: Path) -> None:
    text, check = CASES[key]
    default = _config(tmp_path, "")
    assert not check(default), f"{key}: the default already passes the check"
    from_file = _config(tmp_path, text + "\n")
    assert check(from_file)
    assert from_file.settings is not None and from_file.settings.source(key).kind == FILE
    # the same value given as a flag does the same (a backgrounding `up` passes it so)
    file_values = load_config_file(tmp_path / "meshguard.toml").values
    from_flags = _config(tmp_path, "", *flag_argv(file_values))
    assert check(from_flags)
    assert from_flags.settings is not None and from_flags.settings.source(key).kind == FLAG


def test_no_file_and_an_empty_file_give_the_defaults(tmp_path: Path) -> None:
    settings = load_settings({}, None, {"MESHGUARD_CONFIG_DIR": str(tmp_path)})
    assert settings.file is None
    assert all(settings.source(s.key).kind == DEFAULT for s in SETTINGS)
    assert all(settings.value(s.key) == s.default for s in SETTINGS)
    plain = daemon_config(settings, tmp_path)
    empty = _config(tmp_path, "# nothing\n")
    assert [plain.interface, plain.port, plain.portmap, plain.dns, plain.log_level] == \
        [empty.interface, empty.port, empty.portmap, empty.dns, empty.log_level] == \
        ["mg0", 51821, ("pcp", "nat-pmp", "upnp"), True, "info"]


def test_the_config_dirs_file_is_read_without_config(tmp_path: Path) -> None:
    (tmp_path / "meshguard.toml").write_text("port = 5001\n")
    args = build_parser().parse_args(["up"])
    s = settings_from_args(args, {"MESHGUARD_CONFIG_DIR": str(tmp_path)})
    assert s.value("port") == 5001 and s.source("port").where == f"{tmp_path}/meshguard.toml:1"


def test_flags_override_the_file(tmp_path: Path) -> None:
    text = 'log_level = "debug"\nport = 5000\nseed = ["192.0.2.1:1"]\naccept_routes = true\n'
    c = _config(tmp_path, text, "--port", "6000", "--seed", "192.0.2.2:2")
    assert c.port == 6000 and c.seeds == [("192.0.2.2", 2)]  # a flag's list replaces the file's
    assert c.log_level == "debug" and c.routes.accept_routes
    assert c.settings is not None
    assert str(c.settings.source("port")) == "flag --port"
    assert str(c.settings.source("log_level")) == f"file {tmp_path}/meshguard.toml:1"
    assert str(c.settings.source("interface")) == "default"
    # a value the flag replaces is not checked; a bad flag is the usual usage line
    assert _config(tmp_path, 'metrics = "nope"\n', "--metrics", "9000").metrics == \
        ("127.0.0.1", 9000)


BAD: list[tuple[str, int, str]] = [
    ("port = 1\nprot = 2\n", 2, "key 'prot': unknown key; did you mean 'port'?"),
    ('\n\nport = "51821"\n', 3, "key 'port': must be a number such as 51821, got a string"),
    ("seed = \"192.0.2.1:1\"\n", 1, "key 'seed': must be an array of strings"),
    ("mdns = 1\n", 1, "key 'mdns': must be true or false, got a number (1)"),
    ('# a comment\nannounce = "not-an-ip"\n', 2, "key 'announce': announce needs an IP address"),
    ('metrics = "localhost:9586"\n', 1, "key 'metrics': metrics needs PORT or ADDR:PORT"),
    ('advertise_routes = ["10.20.0.1/24"]\n', 1, "key 'advertise_routes': advertise_routes "
                                                 "needs networks"),
    ('advertise_routes = ["10.99.0.0/24"]\n', 1, "overlaps the mesh prefixes"),
    ("\nexit_node_allow_lan_access = true\n", 2,
     "key 'exit_node_allow_lan_access': exit_node_allow_lan_access needs exit_node"),
    ('seed = ["192.0.2.1:99999"]\n', 1, "key 'seed': bad seed '192.0.2.1:99999': port out of"),
    ("port = 70000\n", 1, "key 'port': port must be between 1 and 65534"),
    ('log_level = "loud"\n', 1, "key 'log_level': must be one of debug, info, warning, error"),
    ('interface = "a/b"\n', 1, "key 'interface': invalid interface name"),
    ('dns = ["not a domain"]\n', 1, "key 'dns': bad dns domain"),
    ('portmap_methods = "igd"\n', 1, "key 'portmap_methods': portmap_methods takes a list"),
    ("port = 1\n[seed]\nx = 1\n", 2,
     "key 'seed': must be an array of strings such as [\"203.0.113.7:51821\"], got a table"),
    ("port = 1\nport = 2\n", 2, "not valid TOML: cannot overwrite a value"),
    ("port = 1\nseed = [\n", 2, "not valid TOML: invalid value"),
    ("port = 1\nmdns = yes\n", 2, "not valid TOML: invalid value"),
]


@pytest.mark.parametrize(("text", "line", "says"), BAD)
def test_a_bad_file_is_one_line_naming_file_line_and_key(
        text: str, line: int, says: str, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "meshguard.toml"
    path.write_text(text)
    with pytest.raises(ConfigFileError) as exc:
        _config(tmp_path, text)
    assert str(exc.value).startswith(f"{path}:{line}: "), exc.value
    assert says in str(exc.value)
    # `up` prints it as one line and exits 1, before starting anything
    assert main(["up", "-f", "--config", str(path), "--run-dir", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err
    assert err == f"meshguard: error: {exc.value}\n"
    assert not (tmp_path / "run").exists()


def test_unreadable_and_binary_files_are_one_line(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "missing.toml"
    assert main(["up", "-f", "--config", str(missing)]) == 1
    assert capsys.readouterr().err == (f"meshguard: error: {missing}: cannot read the config "
                                       "file: No such file or directory\n")
    binary = tmp_path / "bin.toml"
    binary.write_bytes(b"port = 1\n\xff\xfe\n")
    with pytest.raises(ConfigFileError, match=rf"^{binary}:2: not UTF-8 text$"):
        load_config_file(binary)


def test_a_bad_flag_stays_a_usage_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "meshguard.toml").write_text("port = 5000\n")
    assert main(["up", "-f", "--config", str(tmp_path / "meshguard.toml"),
                 "--metrics", "nope"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("meshguard: error: --metrics needs PORT") and err.count("\n") == 1


def test_given_flags_are_only_those_given() -> None:
    args = build_parser().parse_args(["up", "--port", "7", "--accept-routes", "-f"])
    assert given_flags(args) == {"port": 7, "accept_routes": True}
    assert flag_argv(given_flags(args)) == ["--port=7", "--accept-routes"]


def _example_uncommented() -> str:
    lines = (REPO / "contrib" / "meshguard.toml").read_text().splitlines()
    return "\n".join(ln[2:] if ln.startswith("# ") and " = " in ln and ln[2:3].isalpha()
                     and ln[2:].split(" = ")[0] in BY_KEY else ln for ln in lines) + "\n"


def test_the_example_file_names_every_key_and_its_values_are_the_defaults(
        tmp_path: Path) -> None:
    example = REPO / "contrib" / "meshguard.toml"
    assert load_config_file(example).values == {}  # as shipped: everything commented out
    path = tmp_path / "meshguard.toml"
    path.write_text(_example_uncommented())
    values = load_config_file(path).values
    assert set(values) == set(BY_KEY)
    for s in SETTINGS:
        if s.default is not None:
            assert values[s.key] == s.default, s.key
    # the example values of the keys without a default are valid too
    daemon_config(load_settings({}, path, {}), tmp_path)


def test_docs_list_every_key_with_its_type_flag_and_reload() -> None:
    rows: dict[str, list[str]] = {}
    for line in (REPO / "docs" / "config.md").read_text().splitlines():
        if line.startswith("| `"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[0].strip("`")] = cells
    assert set(rows) == set(BY_KEY)
    for s in SETTINGS:
        _, kind, _, flag, reload = rows[s.key][:5]
        assert (kind, flag) == (s.kind, f"`{s.flag}`"), s.key
        assert reload.startswith("live") == s.live, s.key
