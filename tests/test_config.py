"""The configuration file: defaults, every setting's type, and clear refusals."""

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
