"""The configuration file: defaults, every setting's type, and clear refusals."""

import json
import os

import pytest

from vmnet import config
from vmnet.errors import InvalidInput

pytestmark = pytest.mark.unit


def test_defaults_when_the_default_file_is_absent(monkeypatch, tmp_path):
    monkeypatch.setattr(config, "DEFAULT_PATH", str(tmp_path / "absent.toml"))
    monkeypatch.delenv("VMNET_CONFIG", raising=False)
    monkeypatch.delenv("VMNET_SOCKET", raising=False)
    cfg = config.load()
    assert cfg == config.Config()
    assert cfg.socket == "/run/vmnet/helper.sock" and cfg.allow_ipc_lock is False


def test_every_setting_is_read_with_its_type():
    cfg = config.parse('socket = "/run/x.sock"\nsocket_mode = "0660"\nsocket-group = "kvm"\n'
                       'admin_group = "64100"\nstate_dir = "/run/s"\nqemu = "/usr/bin/q"\n'
                       'libvirt_qemu_user = "qemu"\nallow_ipc_lock = true\nidle_timeout = 5\n'
                       'max_clients = 8\nmax_clients_per_uid = 2\n')
    assert cfg.socket_mode == 0o660 and cfg.socket_group == "kvm" and cfg.idle_timeout == 5.0
    assert cfg.allow_ipc_lock is True and cfg.max_clients_per_uid == 2


def test_a_vmnet_table_is_accepted():
    assert config.parse('[vmnet]\nsocket = "/run/y.sock"\n').socket == "/run/y.sock"


@pytest.mark.parametrize("text, words", [
    ("socket = ", "not valid TOML"),
    ('colour = "red"', "unknown setting 'colour'"),
    ("max_clients = true", "is not a int"),
    ('allow_ipc_lock = "yes"', "is not a bool"),
    ('socket_mode = "rw"', "is not octal"),
    ("socket_mode = 4096", "is not a file mode"),
    ('socket = "relative.sock"', "must be an absolute path"),
    ('consumer_socket = "c.sock"', "consumer_socket must be an absolute path"),
    ('consumer_socket = "/run/vmnet/c.sock"', "in the admin socket's directory"),
    ('metrics = "localhost"', "metrics = 'localhost' is not ADDRESS:PORT"),
    ('metrics = "127.0.0.1:99999"', "port 99999"),
])
def test_bad_settings_are_refused_naming_the_problem(text, words):
    with pytest.raises(InvalidInput) as exc:
        config.parse(text, "test.toml")
    assert words in str(exc.value)


def test_an_explicit_file_that_does_not_exist_is_an_error(monkeypatch, tmp_path):
    monkeypatch.setenv("VMNET_CONFIG", str(tmp_path / "nope.toml"))
    with pytest.raises(InvalidInput, match="does not exist"):
        config.load()


def test_vmnet_socket_overrides_the_file(monkeypatch, tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('socket = "/run/a.sock"\n')
    monkeypatch.setenv("VMNET_CONFIG", str(path))
    monkeypatch.setenv("VMNET_SOCKET", "/run/b.sock")
    assert config.load().socket == "/run/b.sock"


def test_replace_changes_one_setting_and_keeps_the_rest():
    cfg = config.Config(max_clients=3)
    other = cfg.replace(socket="/run/z.sock")
    assert (other.socket, other.max_clients) == ("/run/z.sock", 3) and cfg.socket != other.socket


def test_the_consumer_socket_has_a_directory_of_its_own_unless_turned_off():
    assert config.Config().consumer_socket_path == "/run/vmnet/consumer/consumer.sock"
    assert config.parse('socket = "/run/t/h.sock"').consumer_socket_path == "/run/t/consumer/consumer.sock"
    assert config.parse('consumer_socket = ""').consumer_socket_path is None
    assert config.parse('consumer_socket = "/run/pods/c.sock"').consumer_socket_path == "/run/pods/c.sock"


# --- the decoded files root keeps (CACHE_PATH) ----------------------------------

@pytest.fixture(autouse=True)
def decoded(monkeypatch, tmp_path):
    """CACHE_PATH in a directory of the test's own (root-only, as /run/vmnet is), and a
    counter of the files decoded."""
    run = tmp_path / "run"
    run.mkdir(mode=0o755)
    monkeypatch.setattr(config, "CACHE_PATH", str(run / "config-cache.json"))
    decoded = []
    real = config._decode
    monkeypatch.setattr(config, "_decode", lambda text, origin: decoded.append(origin) or real(text, origin))
    return decoded


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="only root keeps decoded files")


@needs_root
def test_root_decodes_a_file_once_while_it_is_unchanged(decoded, tmp_path):
    path = tmp_path / "vmnet.toml"
    path.write_text('socket = "/run/a/h.sock"\nallow_ipc_lock = true\n')
    first = config.load(str(path))
    assert config.load(str(path)) == first and first.socket == "/run/a/h.sock" and first.allow_ipc_lock
    assert decoded == [str(path)]
    path.write_text('socket = "/run/b/h.sock"\nallow_ipc_lock = true\n')    # same size, changed
    assert config.load(str(path)).socket == "/run/b/h.sock"
    assert len(decoded) == 2


@needs_root
def test_every_rule_still_runs_on_a_kept_file(decoded, tmp_path):
    path = tmp_path / "vmnet.toml"
    path.write_text('socket = "/run/a/h.sock"\n')
    config.load(str(path))
    with open(config.CACHE_PATH) as f:
        kept = json.load(f)
    kept[str(path)]["data"] = {"socket": "relative.sock"}     # as a rule of this version would refuse
    with open(config.CACHE_PATH, "w") as f:
        json.dump(kept, f)
    with pytest.raises(InvalidInput, match="socket must be an absolute path"):
        config.load(str(path))


@needs_root
@pytest.mark.parametrize("loosen", ["file", "directory"])
def test_a_kept_file_that_others_could_write_is_not_trusted(decoded, tmp_path, loosen):
    path = tmp_path / "vmnet.toml"
    path.write_text('socket = "/run/a/h.sock"\n')
    config.load(str(path))
    target = config.CACHE_PATH if loosen == "file" else os.path.dirname(config.CACHE_PATH)
    os.chmod(target, 0o777 if loosen == "directory" else 0o666)
    with open(config.CACHE_PATH) as f:
        kept = json.load(f)
    kept[str(path)]["data"] = {"socket": "/run/evil/h.sock"}
    with open(config.CACHE_PATH, "w") as f:
        json.dump(kept, f)
    assert config.load(str(path)).socket == "/run/a/h.sock"
    assert len(decoded) == 2


def test_a_user_other_than_root_decodes_but_keeps_nothing(decoded, tmp_path, monkeypatch):
    monkeypatch.setattr(config.os, "geteuid", lambda: 1000)
    path = tmp_path / "vmnet.toml"
    path.write_text('socket = "/run/a/h.sock"\n')
    config.load(str(path))
    assert not os.path.exists(config.CACHE_PATH)


def test_a_file_that_is_not_utf8_is_a_clear_error(decoded, tmp_path):
    path = tmp_path / "vmnet.toml"
    path.write_bytes(b'socket = "/run/\xff/h.sock"\n')
    with pytest.raises(InvalidInput, match="is not UTF-8 text") as info:
        config.load(str(path))
    assert info.value.fix
