"""What vmnet.protocol puts on the wire and what it accepts from it, without a helper."""

from __future__ import annotations

import json

import pytest

from vmnet import errors, protocol, requests
from vmnet.errors import InvalidInput, PermissionDenied, VmnetError

pytestmark = pytest.mark.unit


def assert_invalid(data: bytes) -> InvalidInput:
    with pytest.raises(InvalidInput) as info:
        protocol.decode_request(data)
    assert info.value.code == "invalid-input"
    return info.value


# --- requests ----------------------------------------------------------------

@pytest.mark.parametrize("verb", protocol.VERBS)
def test_every_verb_round_trips_through_encode_and_decode_request(verb):
    args = {"name": "vm1", "queues": 2, "missing_ok": True, "ports": ["a", "b"], "mtu": None}
    assert protocol.decode_request(protocol.encode_request(verb, **args)) == (verb, args)


def test_a_request_without_args_decodes_to_empty_args():
    assert protocol.decode_request(protocol.encode_request("status")) == ("status", {})
    assert protocol.decode_request(b'{"verb": "status"}') == ("status", {})


def test_an_encoded_request_is_compact_json_within_the_size_limit():
    data = protocol.encode_request("port-show", name="vm1")
    assert data == b'{"verb":"port-show","args":{"name":"vm1"}}'
    assert len(protocol.encode_request("port-create", name="x" * 11, owner="o" * 128)) < protocol.MAX_MESSAGE


@pytest.mark.parametrize("data", [b"[]", b'["status"]', b'"status"', b"1", b"null", b"true"])
def test_json_that_is_not_an_object_is_refused(data):
    assert "must be an object" in assert_invalid(data).message


@pytest.mark.parametrize("data", [
    b'{"verb": "status", "extra": 1}',
    b'{"verb": "status", "args": {}, "fds": [3]}',
    b'{"args": {}}',
    b"{}",
])
def test_an_object_with_extra_keys_or_without_a_verb_is_refused(data):
    assert '"verb" and optional "args" only' in assert_invalid(data).message


@pytest.mark.parametrize("args", ["[]", '"name=vm1"', "1", "null", "true", '[["name", "vm1"]]'])
def test_args_that_are_not_an_object_are_refused(args):
    data = b'{"verb": "port-show", "args": ' + args.encode() + b"}"
    assert assert_invalid(data).message == '"args" must be an object'


@pytest.mark.parametrize("data", [
    b'{"verb": "\xff"}',
    b"\xfe\xff\x00{",
    b'{"verb": "st\xe9tus"}',
    b'{"verb": "status", "args": {"name": "\xc3"}}',       # truncated multi-byte sequence
])
def test_a_request_that_is_not_utf8_is_refused_as_not_json(data):
    err = assert_invalid(data)
    assert err.message == "request is not valid JSON (UnicodeDecodeError)"
    assert err.fix


@pytest.mark.parametrize("data", [b"", b"{", b"{'verb': 'status'}", b'{"verb": "status",}', b"\x00"])
def test_malformed_json_is_refused_with_a_fix_showing_the_shape(data):
    err = assert_invalid(data)
    assert err.message.startswith("request is not valid JSON")
    assert '"verb"' in err.fix


@pytest.mark.parametrize("verb", ["nope", "", "Status", "status ", 5, None, True, ["status"], {"v": 1}])
def test_an_unknown_or_non_string_verb_is_refused_naming_every_known_verb(verb):
    err = assert_invalid(json.dumps({"verb": verb}).encode())
    assert err.message.startswith("unknown verb")
    assert all(known in err.fix for known in protocol.VERBS)


def test_a_lone_surrogate_in_a_verb_is_refused_as_unknown():
    assert assert_invalid(b'{"verb": "\\ud800"}').message == "unknown verb '\\ud800'"


def test_a_request_over_the_limit_is_refused_naming_the_limit_before_parsing():
    err = assert_invalid(b"{" * (protocol.MAX_MESSAGE + 1))
    assert f"{protocol.MAX_MESSAGE + 1} bytes" in err.message
    assert f"{protocol.MAX_MESSAGE}-byte limit" in err.message


def test_a_request_of_exactly_the_limit_is_parsed():
    data = b'{"verb":"status"}'
    data += b" " * (protocol.MAX_MESSAGE - len(data))
    assert protocol.decode_request(data) == ("status", {})


@pytest.mark.parametrize("data", [b"[" * 5000, b'{"verb": "status", "args": ' + b'{"a":' * 5000])
def test_deeply_nested_json_is_refused_as_invalid_input(data):
    assert_invalid(data)


# --- replies -----------------------------------------------------------------

def test_a_result_round_trips_through_encode_and_decode_reply():
    result = {"ports": [{"name": "vm1", "queues": 2, "handed_out": False}], "note": None}
    assert protocol.decode_reply(protocol.encode_reply(result)) == result


def test_an_empty_or_missing_result_decodes_to_an_empty_dict():
    assert protocol.decode_reply(protocol.encode_reply()) == {}
    assert protocol.decode_reply(protocol.encode_reply({})) == {}
    assert protocol.decode_reply(b'{"ok": true}') == {}


def test_a_result_with_values_json_cannot_hold_is_encoded_as_their_text():
    class Odd:
        def __str__(self):
            return "odd"
    assert protocol.decode_reply(protocol.encode_reply({"value": Odd()})) == {"value": "odd"}


def _error_classes() -> list[type[VmnetError]]:
    return [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, VmnetError)]


def test_every_error_class_has_its_own_code():
    codes = [c.code for c in _error_classes()]
    assert len(codes) == len(set(codes)), codes


@pytest.mark.parametrize("cls", _error_classes(), ids=lambda c: c.code)
def test_an_error_reply_is_raised_as_the_class_of_its_code_with_message_fix_and_errno(cls):
    sent = cls(f"the {cls.code} message", fix="do this instead", errno=13)
    with pytest.raises(VmnetError) as info:
        protocol.decode_reply(protocol.encode_reply(error=sent))
    got = info.value
    assert type(got) is cls
    assert (got.code, got.message, got.fix, got.errno) == (cls.code, sent.message, "do this instead", 13)
    assert got.exit_code == cls.exit_code


def test_a_permission_denied_reply_keeps_its_fix():
    data = json.dumps({"ok": False, "error": {"code": "permission-denied",
                                              "message": "uid 1000 may not create ports",
                                              "fix": "add uid 1000 to the admin_group"}}).encode()
    with pytest.raises(PermissionDenied) as info:
        protocol.decode_reply(data)
    assert info.value.message == "uid 1000 may not create ports"
    assert info.value.fix == "add uid 1000 to the admin_group"
    assert info.value.exit_code == 8


def test_an_error_reply_with_an_unknown_code_is_raised_as_the_base_error():
    with pytest.raises(VmnetError) as info:
        protocol.decode_reply(b'{"ok": false, "error": {"code": "from-the-future", "message": "m"}}')
    assert type(info.value) is VmnetError and info.value.message == "m"


@pytest.mark.parametrize("data", [b'{"ok": false}', b'{"ok": false, "error": null}',
                                  b'{"ok": false, "error": {}}'])
def test_an_error_reply_without_details_still_raises_a_vmnet_error_with_a_message(data):
    with pytest.raises(VmnetError) as info:
        protocol.decode_reply(data)
    assert info.value.message == "the helper refused the request"


@pytest.mark.parametrize("data", [b"", b"{", b"\xff", b"nonsense"])
def test_a_reply_that_is_not_json_raises_a_vmnet_error(data):
    with pytest.raises(VmnetError, match="not JSON"):
        protocol.decode_reply(data)


@pytest.mark.parametrize("data", [b"[]", b"null", b'"ok"', b'{"result": {}}'])
def test_a_reply_that_is_not_an_object_with_ok_raises_a_vmnet_error(data):
    with pytest.raises(VmnetError, match="malformed reply"):
        protocol.decode_reply(data)


@pytest.mark.parametrize("error", ['"boom"', "[1]", "5"])
def test_an_error_reply_whose_error_is_not_an_object_raises_a_vmnet_error(error):
    with pytest.raises(VmnetError):
        protocol.decode_reply(b'{"ok": false, "error": ' + error.encode() + b"}")


def test_replies_are_ascii_even_for_text_with_lone_surrogates():
    data = protocol.encode_reply(error=errors.NotFound("port \ud800 does not exist"))
    data.decode("ascii")
    with pytest.raises(errors.NotFound) as info:
        protocol.decode_reply(data)
    assert info.value.message == "port \ud800 does not exist"


# --- the verbs' declared arguments (vmnet.requests) ---------------------------------

def test_every_verb_is_declared():
    assert set(requests.VERBS) == set(protocol.VERBS)


def test_defaults_are_filled_and_attributes_read():
    args = requests.parse("port-create", {"name": "vm1", "consumer_uid": 107})
    assert (args.name, args.queues, args.backend, args.netns, args.receive_only) == ("vm1", 1, "veth", None, False)


def test_a_missing_argument_is_named():
    with pytest.raises(InvalidInput, match="port-show: argument 'name' is missing"):
        requests.parse("port-show", {})


def test_unknown_arguments_are_refused_naming_them_and_what_the_verb_takes():
    with pytest.raises(InvalidInput) as info:
        requests.parse("port-delete", {"name": "a", "force": True, "nmae": "b"})
    assert info.value.message == "port-delete: unknown argument(s) 'force', 'nmae'"
    assert info.value.fix == "port-delete takes name, missing_ok"
    with pytest.raises(InvalidInput, match="status takes no arguments"):
        requests.parse("status", {"x": 1})


@pytest.mark.parametrize("verb, args, words", [
    ("port-create", {"name": "a", "consumer_uid": True}, "'consumer_uid' must be an integer, not true or false"),
    ("port-create", {"name": "a", "consumer_uid": "0"}, "'consumer_uid' must be an integer, not a string"),
    ("port-create", {"name": "a", "consumer_uid": 1.0}, "'consumer_uid' must be an integer, not float"),
    ("port-create", {"name": "a", "consumer_uid": -1}, "'consumer_uid' must be 0 to 4294967294"),
    ("port-create", {"name": "a", "consumer_uid": 0, "queues": "2"}, "'queues' must be an integer, not a string"),
    ("port-create", {"name": "a", "consumer_uid": 0, "receive_only": 1}, "'receive_only' must be true or false"),
    ("port-create", {"name": "a", "consumer_uid": 0, "consumer_scope": []}, "'consumer_scope' must hold 1 to 8"),
    ("port-create", {"name": "a", "consumer_uid": 0, "consumer_scope": [1]}, "must hold only strings"),
    ("port-create", {"name": "a", "consumer_uid": 0, "owner": "o" * 129}, "'owner' is longer than 128"),
    ("port-create", {"name": "a" * 65, "consumer_uid": 0}, "'name' is longer than 64"),
    ("port-show", {"name": None}, "'name' must be a string, not null"),
    ("port-show", {"name": ["a"]}, "'name' must be a string, not a list"),
    ("fds-for-consumer", {"name": "a", "holder_pid": 0}, "'holder_pid' must be 1 to 4194304"),
    ("raise-memlock-for-peer", {"ports": []}, "'ports' must hold 1 to 4096 item(s)"),
    ("raise-memlock-for-peer", {"ports": ["a"] * 4097}, "'ports' must hold 1 to 4096 item(s)"),
    ("domain-check", {"xml": {}}, "'xml' must be a string, not an object"),
])
def test_a_value_of_the_wrong_type_or_range_is_refused_saying_what_it_must_be(verb, args, words):
    with pytest.raises(InvalidInput) as info:
        requests.parse(verb, args)
    assert info.value.message.startswith(f"{verb}: argument") and words in info.value.message


def test_null_stands_for_an_absent_optional_argument_only():
    assert requests.parse("port-create", {"name": "a", "consumer_uid": 0, "netns": None}).netns is None
    with pytest.raises(InvalidInput, match="'consumer_uid' must be an integer, not null"):
        requests.parse("port-create", {"name": "a", "consumer_uid": None})


def test_a_results_own_encoding_is_what_the_cli_prints_for_a_program():
    """vmnet --json status prints the helper's encoding of the result as it is (1.5 MB at
    1,000 ports: decoding and encoding it again cost more than the request)."""
    from vmnet.errors import NotFound
    result = {"ports": [{"name": "vm1", "queues": 2, "note": 'a "quoted" } brace'}], "helper": {"pid": 7}}
    reply = protocol.encode_reply(result)
    assert protocol.decode_reply(reply) == result
    assert json.loads(protocol.result_json(reply)) == result
    assert protocol.result_json(protocol.encode_reply(error=NotFound("no port vm1"))) is None
    assert protocol.result_json(b'{"result":{},"ok":true}') is None
