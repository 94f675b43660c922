"""`meshguard export-wg`: the config text (parsed back as wg-quick reads it), the QR code,
storage, --list and --remove, and what bad input gets (one line, exit 1, nothing written)."""

from __future__ import annotations

import ipaddress
import stat
from pathlib import Path

import pytest

from meshguard.cli.export_wg_command import qr_text
from meshguard.cli.main import main
from meshguard.crypto.keys import Ed25519PrivateKey, X25519PrivateKey, b64encode
from meshguard.identity import keygen, store, wg_devices
from meshguard.identity.addressing import mesh_ipv4
from meshguard.policy.signed import sign_policy
from meshguard.policy.store import PolicyStore
from meshguard.testing.rng import SeededRng

Sections = list[tuple[str, dict[str, str]]]


def parse_wg_quick(text: str) -> Sections:
    """wg-quick's reading: [Section] headers, `Key = value` lines, # comments; a key given
    twice in a section or a line outside a section is an error."""
    out: Sections = []
    for no, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("[") and line.endswith("]"):
            out.append((line[1:-1], {}))
            continue
        key, eq, value = line.partition("=")
        assert eq and out, f"line {no} outside a section or not Key = value: {raw!r}"
        section = out[-1][1]
        assert key.strip() not in section, f"line {no}: {key.strip()} twice"
        section[key.strip()] = value.strip()
    return out


class Cli:
    def __init__(self, tmp: Path, capsys: pytest.CaptureFixture[str],
                 monkeypatch: pytest.MonkeyPatch) -> None:
        self.cfg = tmp / "cfg"
        self.capsys = capsys
        monkeypatch.setenv("MESHGUARD_CONFIG_DIR", str(self.cfg))
        monkeypatch.setenv("MESHGUARD_RUN_DIR", str(tmp / "run"))  # no daemon there
        keys = keygen.generate_node_keys(self.cfg, SeededRng(3), 1.7e9, force=False)
        self.identity = keys.identity.public_key.raw
        self.wg_pub = keys.wireguard.public_key.b64()

    def run(self, *argv: str) -> tuple[int, str, str]:
        rc = main(["export-wg", *argv])
        out, err = self.capsys.readouterr()
        return rc, out, err

    def ok(self, *argv: str) -> tuple[str, str]:
        rc, out, err = self.run(*argv)
        assert rc == 0, err
        return out, err

    def fails(self, *argv: str, match: str) -> None:
        before = sorted(p.name for p in self.cfg.rglob("*"))
        rc, out, err = self.run(*argv)
        assert rc == 1, (out, err)
        assert err.startswith("meshguard: error: ") and err.count("\n") == 1, err
        assert match in err, err
        assert sorted(p.name for p in self.cfg.rglob("*")) == before


@pytest.fixture
def cli(tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> Cli:
    return Cli(tmp_path, capsys, monkeypatch)


def config_of(out: str) -> str:
    """The config part of stdout (the QR code follows a blank line after the [Peer])."""
    head, _, _ = out.partition("\n\n█")
    return head + "\n"


def test_the_config_reads_back_and_matches_what_the_gateway_stored(cli: Cli) -> None:
    out, err = cli.ok("phone", "--endpoint", "203.0.113.7:51821")
    conf = parse_wg_quick(config_of(out))
    assert [name for name, _ in conf] == ["Interface", "Peer"]
    iface, peer = conf[0][1], conf[1][1]
    assert set(iface) == {"PrivateKey", "Address"}
    assert set(peer) == {"PublicKey", "PresharedKey", "Endpoint", "AllowedIPs",
                         "PersistentKeepalive"}
    (dev,), problems = wg_devices.load_devices(cli.cfg)
    assert problems == []
    # the device's key pair: the gateway stored the public half of the printed private key
    assert X25519PrivateKey.from_b64(iface["PrivateKey"]).public_key.raw == dev.public_key
    assert iface["Address"] == f"{dev.address}/32"
    assert ipaddress.ip_address(dev.address) in wg_devices.device_subnet(cli.identity)
    assert peer["PublicKey"] == cli.wg_pub  # this member's WireGuard key
    assert peer["PresharedKey"] == b64encode(dev.preshared_key)
    assert peer["Endpoint"] == "203.0.113.7:51821"
    assert peer["AllowedIPs"] == "10.99.0.0/16, fd99:6d67::/64"
    assert peer["PersistentKeepalive"] == "25"
    assert f"device phone at {dev.address}" in err
    sub = wg_devices.device_subnet(cli.identity)
    assert f"`up --advertise-routes {sub}`" in err and f"`route {sub} via" in err


def test_the_qr_code_encodes_the_printed_config(cli: Cli) -> None:
    out, _ = cli.ok("phone", "--endpoint", "203.0.113.7:51821")
    text = config_of(out)
    qr = out[len(text) + 1:]
    assert qr == qr_text(text)
    rows = qr.splitlines()
    assert len(rows) > 20 and len({len(r) for r in rows}) == 1
    assert set("".join(rows)) <= set("█▀▄\xa0")
    # and it is not any config: another device's differs
    out2, _ = cli.ok("tablet", "--endpoint", "203.0.113.7:51821")
    assert out2[len(config_of(out2)) + 1:] != qr


def test_no_qr_and_out_file(cli: Cli, tmp_path: Path) -> None:
    out, _ = cli.ok("phone", "--endpoint", "[2001:db8::1]:51821", "--no-qr")
    assert "█" not in out
    assert parse_wg_quick(out)[1][1]["Endpoint"] == "[2001:db8::1]:51821"
    target = tmp_path / "tablet.conf"
    out, err = cli.ok("tablet", "--endpoint", "gw.example.org:51821", "--out", str(target),
                      "--no-qr")
    assert out == "" and f"wrote {target}" in err
    assert stat.S_IMODE(target.stat().st_mode) == 0o600  # it holds the private key
    assert parse_wg_quick(target.read_text())[1][1]["Endpoint"] == "gw.example.org:51821"


def test_dns_is_this_members_mesh_resolver(cli: Cli) -> None:
    out, _ = cli.ok("phone", "--endpoint", "203.0.113.7:51821", "--dns", "--no-qr")
    assert parse_wg_quick(out)[0][1]["DNS"] == f"{mesh_ipv4(cli.identity)}, mesh"


def test_given_address_list_and_remove(cli: Cli) -> None:
    _, err = cli.ok("phone", "--endpoint", "203.0.113.7:51821", "--address", "10.98.250.9",
                    "--no-qr")
    assert "`route 10.98.250.9/32 via" in err  # outside the device subnet: its own address
    cli.ok("tablet", "--endpoint", "203.0.113.7:51821", "--no-qr")
    out, _ = cli.ok("--list")
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "ADDRESS", "PUBLIC", "KEY"]
    assert [r.split()[:2] for r in lines[1:]] == [
        ["phone", "10.98.250.9"], ["tablet", str(next(wg_devices.device_subnet(
            cli.identity).hosts()))]]
    cli.ok("--remove", "phone")
    assert not (cli.cfg / "devices" / "phone.peer").exists()
    out, _ = cli.ok("--list")
    assert "phone" not in out and "tablet" in out


@pytest.mark.parametrize(("argv", "match"), [
    (("phone",), "no daemon runs here, so this member's endpoint is unknown; give --endpoint"),
    (("phone", "--endpoint", "203.0.113.7"), "bad endpoint '203.0.113.7'"),
    (("phone", "--endpoint", "203.0.113.7:99999"), "the port must be 1-65535"),
    (("phone", "--endpoint", "[nothost]:5"), "is not an IPv6 address"),
    (("phone", "--endpoint", "2001:db8::1:5"), "bad endpoint"),
    (("phone", "--endpoint", "h:1", "--address", "10.98.1.300"), "bad --address"),
    (("phone", "--endpoint", "h:1", "--address", "10.99.1.3"), "inside the mesh prefix"),
    (("../etc", "--endpoint", "h:1"), "is not a DNS label"),
    (("--remove", "ghost"), "no device ghost"),
    (("phone", "--list"), "--list takes no device name"),
    ((), "name the device"),
])
def test_bad_input_is_one_line_and_changes_nothing(cli: Cli, argv: tuple[str, ...],
                                                   match: str) -> None:
    cli.fails(*argv, match=match)


def test_an_unwritable_out_file_stores_no_device(cli: Cli, tmp_path: Path) -> None:
    cli.fails("phone", "--endpoint", "h:1", "--out", str(tmp_path / "no" / "such" / "x.conf"),
              match="cannot write")
    assert wg_devices.load_devices(cli.cfg) == ([], [])


def test_a_taken_name_or_address_is_refused(cli: Cli) -> None:
    cli.ok("phone", "--endpoint", "h:1", "--address", "10.98.250.9", "--no-qr")
    cli.fails("phone", "--endpoint", "h:1", match="device phone exists")
    cli.fails("tab", "--endpoint", "h:1", "--address", "10.98.250.9",
              match="10.98.250.9 is taken by device phone")


def test_no_identity_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESHGUARD_CONFIG_DIR", str(tmp_path / "empty"))
    assert main(["export-wg", "phone", "--endpoint", "h:1"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("meshguard: error: ") and err.count("\n") == 1, err
    assert not (tmp_path / "empty" / "devices").exists()


def test_the_address_comes_from_a_device_subnet_the_policy_grants(cli: Cli) -> None:
    """An org policy in force grants this member 10.98.5.0/24: devices get addresses there
    (a grant outside the device range, a LAN, is not used for devices)."""
    org = Ed25519PrivateKey(bytes(range(32)))
    (cli.cfg / "trusted_orgs").mkdir(mode=0o700, exist_ok=True)
    (cli.cfg / "trusted_orgs" / "acme.org").write_bytes(store.public_key_file(org.public_key.raw))
    me = b64encode(cli.identity)
    text = f"route 10.20.0.0/24 via {me}\nroute 10.98.5.0/24 via {me}\n"
    st = PolicyStore.load(cli.cfg)
    assert st.offer(sign_policy(org, text, 7, 0), {org.public_key.raw}) == "accepted"
    _, err = cli.ok("phone", "--endpoint", "h:1", "--no-qr")
    (dev,), _ = wg_devices.load_devices(cli.cfg)
    assert str(dev.address) == "10.98.5.1"
    assert wg_devices.device_subnet(cli.identity) != ipaddress.IPv4Network("10.98.5.0/24")
    assert "`up --advertise-routes 10.98.5.0/24`" in err
