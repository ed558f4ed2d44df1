"""agent.toml: typed loading, exact error texts, paths, key files, the example."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from agent import config as c
from agent import paths
from agent.config import (
    ConfigError,
    MqttConfig,
    check_files,
    dump_example,
    load_config,
    loads_config,
    mqtt_password,
    technician_pin_hash,
    trust_problems,
)
from agent.config_docs import REGENERATE
from agent.technician import hash_pin
from cloud.config_schema import EX_CONFIG
from cloud.errors import SadadError
from cloud.signing import generate_key_pem

REPO = Path(__file__).resolve().parents[2]

GOOD = """\
[terminal]
sn = "T0001"
app_id = "T0001"
store_name = "Sandbox Store"
private_key_file = "keys/terminal_private.pem"

[mqtt]
url = "mqtt://127.0.0.1:1883"
keepalive = 30

[gateway]
url = "http://127.0.0.1:8080"
public_key_file = "/abs/gateway_public.pem"

[journal]
path = "journal.db"

[ui]
socket = "/run/sadad-agent/agent.sock"

[readers]
nfc = "pn532:/dev/sadad-nfc"
"""

MQTT_KEYS = (
    "url, fallback_urls, keepalive, session_expiry, protocol, ca_file, cert_file, key_file, "
    "username, password_file"
)
SECTIONS = "terminal, mqtt, gateway, journal, ui, printer, readers"


def edit(old: str, new: str, text: str = GOOD) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text, "utf-8")
    return path


def test_good_file_loads_with_paths_relative_to_its_directory(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    cfg = load_config(path)
    assert cfg.source == path
    assert cfg.terminal.sn == "T0001"
    assert cfg.terminal.store_name == "Sandbox Store"
    assert cfg.terminal.private_key_file == tmp_path / "keys" / "terminal_private.pem"
    assert cfg.gateway.public_key_file == Path("/abs/gateway_public.pem")
    assert cfg.journal.path == tmp_path / "journal.db"
    assert cfg.ui.socket == Path("/run/sadad-agent/agent.sock")
    assert cfg.readers == {"nfc": "pn532:/dev/sadad-nfc"}
    m = cfg.mqtt
    assert (m.host, m.port, m.tls, m.keepalive) == ("127.0.0.1", 1883, False, 30)
    assert (m.session_expiry, m.protocol) == (86_400, "5")
    assert (cfg.gateway.timeout, cfg.gateway.resolve_deadline) == (15.0, 60.0)
    assert cfg.journal.keep_days == 90


def test_relative_config_path_resolves_against_its_own_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "etc").mkdir()
    write(tmp_path / "etc", GOOD)
    monkeypatch.chdir(tmp_path)
    cfg = load_config(Path("etc/agent.toml"))
    assert cfg.source == tmp_path / "etc" / "agent.toml"
    assert cfg.terminal.private_key_file == tmp_path / "etc" / "keys" / "terminal_private.pem"


def test_defaults_for_optional_sections() -> None:
    text = GOOD.split("[journal]")[0]
    cfg = loads_config(text, base_dir=Path("/etc/sadad-agent"))
    assert cfg.journal.path == paths.JOURNAL
    assert cfg.ui.socket == paths.SOCKET
    assert cfg.ui.result_seconds == 4.0
    assert cfg.readers == {}
    assert cfg.terminal.private_key_file == Path("/etc/sadad-agent/keys/terminal_private.pem")
    assert cfg.source is None


def test_brief_example_with_every_option_loads(tmp_path: Path) -> None:
    text = """\
[terminal]
sn = "T0001"
app_id = "T0001"
store_name = "Sandbox Store"
private_key_file = "/abs/terminal_private.pem"
technician_pin_file = "pin"
[mqtt]
url = "mqtts://broker.example:8884"
keepalive = 30
session_expiry = 604800
protocol = "3.1.1"
ca_file = "ca.pem"
cert_file = "t.crt"
key_file = "t.key"
username = "T0001"
password_file = "mqtt.pw"
[gateway]
url = "https://gw.example/sadad"
public_key_file = "/abs/gateway_public.pem"
timeout = 20
resolve_deadline = 90.5
[journal]
path = "/var/lib/sadad-agent/journal.db"
keep_days = 30
[ui]
socket = "/run/sadad-agent/agent.sock"
[readers]
nfc = "pn532:/dev/sadad-nfc"
card = "magstripe:/dev/sadad-msr;baud=9600"
"""
    cfg = load_config(write(tmp_path, text))
    m = cfg.mqtt
    assert (m.host, m.port, m.tls, m.protocol, m.session_expiry) == (
        "broker.example",
        8884,
        True,
        "3.1.1",
        604_800,
    )
    assert m.ca_file == tmp_path / "ca.pem"
    assert m.password_file == tmp_path / "mqtt.pw"
    assert cfg.terminal.technician_pin_file == tmp_path / "pin"
    assert cfg.gateway.timeout == 20.0
    assert isinstance(cfg.gateway.timeout, float)
    assert cfg.journal.keep_days == 30
    assert list(cfg.readers) == ["nfc", "card"]


def test_provision_written_file_loads_as_is(tmp_path: Path) -> None:
    from sandbox.provision import agent_toml

    text = agent_toml(
        sn="T0042",
        store_name="Corner Shop",
        private_key=tmp_path / "terminal_private.pem",
        gateway_public_key=tmp_path / "gateway_public.pem",
        mqtt_url="mqtt://127.0.0.1:18830",
        http_url="http://127.0.0.1:18080",
        journal=tmp_path / "journal.db",
        socket=tmp_path / "agent.sock",
        readers={"nfc": "pn532:/dev/ttyUSB0", "qr": "scanner:socket://127.0.0.1:7000"},
    )
    cfg = load_config(write(tmp_path, text))
    assert cfg.terminal.sn == cfg.terminal.app_id == "T0042"
    assert cfg.mqtt.port == 18830
    assert cfg.mqtt.keepalive == 30
    assert cfg.readers == {"nfc": "pn532:/dev/ttyUSB0", "qr": "scanner:socket://127.0.0.1:7000"}
    # ... and with no readers and no serve yet (the comment-only [readers] table).
    bare = agent_toml(
        sn="T0043",
        store_name="Corner Shop",
        private_key=tmp_path / "k.pem",
        gateway_public_key=tmp_path / "g.pem",
        mqtt_url=None,
        http_url=None,
        journal=tmp_path / "j.db",
        socket=tmp_path / "s.sock",
        readers={},
    )
    assert loads_config(bare).readers == {}


BAD: list[tuple[str, str, str]] = [
    (
        "missing section",
        edit(
            '[gateway]\nurl = "http://127.0.0.1:8080"\n'
            'public_key_file = "/abs/gateway_public.pem"\n',
            "",
        ),
        "gateway: section [gateway] is missing; required keys: url, public_key_file",
    ),
    (
        "missing key",
        edit('private_key_file = "keys/terminal_private.pem"\n', ""),
        "terminal.private_key_file: required key is missing; it must be the path of the "
        "terminal's RSA private key (absolute, or relative to the config file's directory)",
    ),
    (
        "unknown key",
        edit("keepalive = 30", "keepaliv = 30"),
        f"mqtt.keepaliv: unknown key (did you mean keepalive?); allowed: {MQTT_KEYS}",
    ),
    (
        "unknown section",
        edit("[ui]", "[uii]"),
        f"uii: unknown section (did you mean ui?); allowed: {SECTIONS}",
    ),
    (
        "top-level key",
        "debug = true\n" + GOOD,
        f"debug: not allowed at the top level; settings belong in a section: {SECTIONS}",
    ),
    (
        "section is not a table",
        edit('[ui]\nsocket = "/run/sadad-agent/agent.sock"\n', "", 'ui = "tty1"\n' + GOOD),
        'ui: must be a table [ui], got "tty1"',
    ),
    (
        "keepalive wrong type",
        edit("keepalive = 30", 'keepalive = "abc"'),
        'mqtt.keepalive: must be an integer 5..3600, got "abc"',
    ),
    (
        "keepalive out of range",
        edit("keepalive = 30", "keepalive = 3"),
        "mqtt.keepalive: must be an integer 5..3600, got 3",
    ),
    (
        "keepalive boolean",
        edit("keepalive = 30", "keepalive = true"),
        "mqtt.keepalive: must be an integer 5..3600, got true",
    ),
    (
        "keepalive float",
        edit("keepalive = 30", "keepalive = 30.5"),
        "mqtt.keepalive: must be an integer 5..3600, got 30.5",
    ),
    (
        "bad URL scheme",
        edit('url = "mqtt://127.0.0.1:1883"', 'url = "http://127.0.0.1:1883"'),
        'mqtt.url: must be mqtt://HOST[:PORT] or mqtts://HOST[:PORT], got "http://127.0.0.1:1883"',
    ),
    (
        "bad URL port",
        edit('url = "mqtt://127.0.0.1:1883"', 'url = "mqtt://broker:99999"'),
        "mqtt.url: must be mqtt://HOST[:PORT] or mqtts://HOST[:PORT] "
        '(Port out of range 0-65535), got "mqtt://broker:99999"',
    ),
    (
        "credentials in the URL are not echoed",
        edit('url = "mqtt://127.0.0.1:1883"', 'url = "mqtt://t1:s3cret@broker"'),
        "mqtt.url: must be mqtt://HOST[:PORT] or mqtts://HOST[:PORT] "
        "(no user or password in the URL: use username, password_file)",
    ),
    (
        "session expiry under 24 h",
        edit("keepalive = 30", "keepalive = 30\nsession_expiry = 3600"),
        "mqtt.session_expiry: must be an integer 86400..4294967295 (seconds, at least 24 h), "
        "got 3600",
    ),
    (
        "protocol",
        edit("keepalive = 30", 'keepalive = 30\nprotocol = "4"'),
        'mqtt.protocol: must be "5" or "3.1.1", got "4"',
    ),
    (
        "TLS file without mqtts",
        edit("keepalive = 30", 'keepalive = 30\nca_file = "ca.pem"'),
        "mqtt.ca_file: TLS settings need an mqtts:// url",
    ),
    (
        "password without username",
        edit("keepalive = 30", 'keepalive = 30\npassword_file = "pw"'),
        "mqtt.password_file: needs username",
    ),
    (
        "sn wrong type",
        edit('sn = "T0001"', "sn = 42"),
        "terminal.sn: must be 1-32 letters, digits, _ or - (the MQTT client id), got 42",
    ),
    (
        "sn with a topic separator",
        edit('sn = "T0001"', 'sn = "T1/#"'),
        'terminal.sn: must be 1-32 letters, digits, _ or - (the MQTT client id), got "T1/#"',
    ),
    (
        "a plain pin in the config is refused and not echoed",
        edit('store_name = "Sandbox Store"', 'store_name = "x"\ntechnician_pin = "98765"'),
        "terminal.technician_pin: a PIN is never written in the config: make its hash file "
        "with `sadad-agent pin set` and name it in technician_pin_file",
    ),
    (
        "gateway URL",
        edit('url = "http://127.0.0.1:8080"', 'url = "ftp://gw"'),
        'gateway.url: must be http://HOST[:PORT][/PATH] or https://HOST[:PORT][/PATH], got "ftp://gw"',
    ),
    (
        "gateway plain http off the machine",
        edit('url = "http://127.0.0.1:8080"', 'url = "http://gw.example:8080"'),
        "gateway.url: plain http:// is allowed only to a loopback host (127.0.0.1, ::1, "
        "localhost): use https://, or set allow_plain_http = true for a lab "
        "(a warning at every start)",
    ),
    (
        "gateway allow_plain_http not a bool",
        edit(
            'url = "http://127.0.0.1:8080"', 'url = "http://127.0.0.1:8080"\nallow_plain_http = 1'
        ),
        "gateway.allow_plain_http: must be true or false, got 1",
    ),
    (
        "gateway timeout",
        edit(
            'public_key_file = "/abs/gateway_public.pem"', 'public_key_file = "/g.pem"\ntimeout = 0'
        ),
        "gateway.timeout: must be a number of seconds 1..120, got 0",
    ),
    (
        "result time",
        edit('socket = "/run/sadad-agent/agent.sock"', "result_seconds = 0"),
        "ui.result_seconds: must be a number of seconds 0.1..60, got 0",
    ),
    (
        "empty path",
        edit('path = "journal.db"', 'path = ""'),
        "journal.path: must be the path of the journal database (absolute, or relative to the "
        'config file\'s directory), got ""',
    ),
    (
        "bad reader kind",
        edit('nfc = "pn532:/dev/sadad-nfc"', 'nfc = "nfc:/dev/sadad-nfc"'),
        "readers.nfc: reader kind 'nfc' is unknown; use one of pn532, magstripe, scanner, "
        'got "nfc:/dev/sadad-nfc"',
    ),
    (
        "bad reader port",
        edit('nfc = "pn532:/dev/sadad-nfc"', 'nfc = "pn532:ttyUSB0"'),
        "readers.nfc: port 'ttyUSB0' must be an absolute device path (/dev/ttyUSB0) or a URL; "
        "a relative path would depend on the agent's working directory: write it in full "
        'from / (sadad-sandbox provision does that for you), got "pn532:ttyUSB0"',
    ),
    (
        "reader spec not a string",
        edit('nfc = "pn532:/dev/sadad-nfc"', "nfc = 1"),
        "readers.nfc: must be a reader spec KIND:PORT[;key=value...], got 1",
    ),
    (
        "bad reader name",
        edit('nfc = "pn532:/dev/sadad-nfc"', '"front door" = "pn532:/dev/sadad-nfc"'),
        'readers."front door": a reader name must be 1-32 letters, digits, _ or -',
    ),
    (
        "TOML syntax error",
        edit("keepalive = 30", "keepalive = "),
        "line 9, column 13: invalid TOML: Invalid value",
    ),
    (
        "TOML duplicate key",
        edit("keepalive = 30", "keepalive = 30\nkeepalive = 31"),
        "line 10, column 15: invalid TOML: Cannot overwrite a value",
    ),
    (
        "TOML unterminated string",
        GOOD + 'extra = "abc',
        "at the end of the file: invalid TOML: Unterminated string",
    ),
]


@pytest.mark.parametrize(("text", "expected"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_config_error_text(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: {expected}"
    assert info.value.problems == [str(info.value)]
    assert "s3cret" not in str(info.value)
    assert "98765" not in str(info.value)
    assert "98a65" not in str(info.value)


def test_several_problems_are_reported_together(tmp_path: Path) -> None:
    text = edit("keepalive = 30", "keepalive = 0\nbogus = 1")
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems == [
        f"{path}: mqtt.bogus: unknown key; allowed: {MQTT_KEYS}",
        f"{path}: mqtt.keepalive: must be an integer 5..3600, got 0",
    ]
    assert str(info.value) == "\n".join(info.value.problems)


def test_error_class_and_exit_code(tmp_path: Path) -> None:
    assert issubclass(ConfigError, SadadError)
    assert EX_CONFIG == ConfigError.exit_code == 78
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match=r"nope\.toml: cannot read: No such file or directory"):
        load_config(missing)
    binary = tmp_path / "bin.toml"
    binary.write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError, match=r"bin\.toml: not UTF-8 text \(byte 0\)"):
        load_config(binary)


def test_default_path() -> None:
    assert Path("/etc/sadad-agent/agent.toml") == paths.CONFIG_FILE


def test_mqtt_urls() -> None:
    assert c.parse_mqtt_url("mqtts://broker.example") == ("broker.example", 8883, True)
    assert c.parse_mqtt_url("mqtt://broker.example/") == ("broker.example", 1883, False)
    assert c.parse_mqtt_url("mqtt://[::1]:1884") == ("::1", 1884, False)
    for bad in ("mqtt://", "tcp://h", "mqtt://h/path", "mqtt://h?x=1", "mqtt://h:x"):
        with pytest.raises(ConfigError, match=r"must be mqtt://HOST\[:PORT\]"):
            c.parse_mqtt_url(bad)
    assert MqttConfig(url="mqtts://b:9999").port == 9999


# ---------------------------------------------------------------- files


def _files(tmp_path: Path) -> Path:
    private, public = generate_key_pem()
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "terminal_private.pem").write_text(private)
    (tmp_path / "gateway_public.pem").write_text(public)
    text = edit('"/abs/gateway_public.pem"', '"gateway_public.pem"')
    return write(tmp_path, text)


def test_check_files_ok(tmp_path: Path) -> None:
    assert check_files(load_config(_files(tmp_path))) == []


def test_check_files_reports_missing_and_unparsable_keys(tmp_path: Path) -> None:
    path = _files(tmp_path)
    (tmp_path / "keys" / "terminal_private.pem").write_text("not a key")
    (tmp_path / "gateway_public.pem").unlink()
    problems = check_files(load_config(path))
    assert problems == [
        f"{path}: terminal.private_key_file: {tmp_path}/keys/terminal_private.pem: "
        "cannot load RSA private key: neither PEM nor base64 DER",
        f"{path}: gateway.public_key_file: {tmp_path}/gateway_public.pem: "
        "No such file or directory",
    ]


def test_check_files_public_key_in_the_private_slot(tmp_path: Path) -> None:
    path = _files(tmp_path)
    public = (tmp_path / "gateway_public.pem").read_text()
    (tmp_path / "keys" / "terminal_private.pem").write_text(public)
    [problem] = check_files(load_config(path))
    assert problem.startswith(
        f"{path}: terminal.private_key_file: {tmp_path}/keys/terminal_private.pem: "
        "cannot load RSA private key:"
    )


def test_secret_files(tmp_path: Path) -> None:
    path = _files(tmp_path)
    text = path.read_text()
    text = edit(
        'store_name = "Sandbox Store"', 'store_name = "x"\ntechnician_pin_file = "pin"', text
    )
    text = edit(
        "keepalive = 30",
        'keepalive = 30\nusername = "T0001"\npassword_file = "mqtt.pw"',
        text,
    )
    path.write_text(text)
    (tmp_path / "pin").write_text("4321\n")  # the PIN itself, not its hash
    (tmp_path / "mqtt.pw").write_text("")
    cfg = load_config(path)
    assert check_files(cfg) == [
        f"{path}: terminal.technician_pin_file: {tmp_path}/pin: holds a PIN in plain text: "
        "make a hash with `sadad-agent pin set`",
        f"{path}: mqtt.password_file: {tmp_path}/mqtt.pw: the file is empty",
    ]
    hashed = hash_pin("4321")
    (tmp_path / "pin").write_text(hashed + "\n")
    (tmp_path / "mqtt.pw").write_text("s3cret\n")
    assert check_files(cfg) == []
    assert technician_pin_hash(cfg) == hashed
    assert mqtt_password(cfg.mqtt) == "s3cret"
    assert technician_pin_hash(loads_config(GOOD)) is None
    assert mqtt_password(loads_config(GOOD).mqtt) is None


def test_keys_someone_else_could_replace_are_not_trusted(tmp_path: Path) -> None:
    """Like OpenSSH's StrictModes: the gateway key and the PIN hash, and their
    directory, are writable by root (or the agent) only - through a symlink
    too - or the agent does not start."""
    path = _files(tmp_path)
    cfg = load_config(path)
    assert trust_problems(cfg) == []
    key = cfg.gateway.public_key_file
    key.chmod(0o664)
    (problem,) = trust_problems(cfg)
    assert "gateway.public_key_file: not trusted: the file" in problem
    assert "can be written by its group or others" in problem
    key.chmod(0o644)
    tmp_path.chmod(0o775)
    (problem,) = trust_problems(cfg)
    assert f"its directory {tmp_path.resolve()}" in problem
    tmp_path.chmod(0o755)
    outside = tmp_path / "shared"
    outside.mkdir(mode=0o777)
    outside.chmod(0o777)
    (outside / "planted.pem").write_bytes(key.read_bytes())
    key.unlink()
    key.symlink_to(outside / "planted.pem")  # a link to where anyone may write
    (problem,) = trust_problems(cfg)
    assert "planted" not in problem or "shared" in problem
    assert "can be written by its group or others" in problem
    assert any("not trusted" in p for p in check_files(cfg))


def _self_signed(tmp_path: Path) -> None:
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "T0001")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    pem = cert.public_bytes(serialization.Encoding.PEM)
    (tmp_path / "ca.pem").write_bytes(pem)
    (tmp_path / "t.crt").write_bytes(pem)
    (tmp_path / "t.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def test_check_files_tls(tmp_path: Path) -> None:
    path = _files(tmp_path)
    text = edit('url = "mqtt://127.0.0.1:1883"', 'url = "mqtts://127.0.0.1"', path.read_text())
    text = edit(
        "keepalive = 30",
        'keepalive = 30\nca_file = "ca.pem"\ncert_file = "t.crt"\nkey_file = "t.key"',
        text,
    )
    path.write_text(text)
    _self_signed(tmp_path)
    cfg = load_config(path)
    assert check_files(cfg) == []

    (tmp_path / "ca.pem").write_text("garbage")
    (tmp_path / "t.key").unlink()
    problems = check_files(cfg)
    assert len(problems) == 2
    assert problems[0].startswith(
        f"{path}: mqtt.ca_file: {tmp_path}/ca.pem: not a PEM CA certificate"
    )
    assert problems[1] == f"{path}: mqtt.key_file: {tmp_path}/t.key: No such file or directory"

    (tmp_path / "t.key").write_text("garbage")
    problems = check_files(cfg)
    assert len(problems) == 2
    assert problems[1].startswith(
        f"{path}: mqtt.cert_file: {tmp_path}/t.crt: certificate and key do not load as a pair"
    )


# ---------------------------------------------------------------- example


def test_example_loads_and_is_the_shipped_file() -> None:
    text = dump_example()
    cfg = loads_config(text, base_dir=Path("/etc/sadad-agent"))
    assert cfg.terminal.private_key_file == Path("/etc/sadad-agent/keys/terminal_private.pem")
    # The installer makes what the example names (systemd/install.sh, keys/).
    assert cfg.gateway.public_key_file.parent == Path("/etc/sadad-agent/keys")
    assert cfg.ui.socket_group == "sadad-ui"
    assert cfg.readers == {"nfc": "pn532:/dev/sadad-nfc"}
    # Every commented-out option is valid too once uncommented.
    uncommented = "\n".join(
        line[2:] if re.match(r"# [a-z_]+ = ", line) else line for line in text.splitlines()
    )
    uncommented = uncommented.replace('technician_pin = "1234"', "")
    uncommented = uncommented.replace('url = "mqtt://127.0.0.1:1883"', 'url = "mqtts://broker"')
    full = loads_config(uncommented, base_dir=Path("/etc/sadad-agent"))
    assert full.mqtt.cert_file == Path("/etc/sadad-agent/terminal.crt")
    assert set(full.readers) == {"nfc", "card", "qr"}
    assert (REPO / "systemd" / "agent.toml.example").read_text("utf-8") == text, (
        f"systemd/agent.toml.example is out of date: run `{REGENERATE}`"
    )


@pytest.mark.parametrize(
    ("url", "allow", "off_host"),
    [
        ("https://gw.example/sadad", False, False),
        ("http://127.0.0.1:8080", False, False),
        ("http://127.9.9.9", False, False),
        ("http://[::1]:8080", False, False),
        ("http://localhost:8080", False, False),
        ("http://gw.example:8080", True, True),
        ("http://10.0.0.5", True, True),
    ],
)
def test_gateway_https_unless_loopback_or_allowed(
    tmp_path: Path, url: str, allow: bool, off_host: bool
) -> None:
    text = edit('url = "http://127.0.0.1:8080"', f'url = "{url}"')
    if allow:
        with pytest.raises(ConfigError, match="plain http:// is allowed only to a loopback"):
            load_config(write(tmp_path, text))
        text = text.replace(f'url = "{url}"', f'url = "{url}"\nallow_plain_http = true')
    cfg = load_config(write(tmp_path, text))
    assert cfg.gateway.allow_plain_http is allow
    assert cfg.gateway.plain_http_off_host is off_host
