"""The helper's wire protocol: one JSON object per SOCK_SEQPACKET message.

Pure. A request is {"verb": "...", "args": {...}}; a reply is
{"ok": true, "result": {...}} or {"ok": false, "error": {"code", "message",
"fix"}}, with the port's AF_XDP socket fds attached by SCM_RIGHTS when the
verb hands them out. Every message is bounded in size, and anything that is
not exactly this shape is refused with an error naming what was wrong. An
empty message closes the connection without a reply, like the peer hanging
up, credentials or not (SO_PASSCRED gives every message credentials, so the
two could be told apart; they are not). One that carries fds is refused as
any message with fds is.
"""

from __future__ import annotations

import json

from .errors import InvalidInput, VmnetError

MAX_MESSAGE = 192 * 1024     # requests are tiny but for the hook's domain XML; under the
                             # default 208 KiB socket buffer a SEQPACKET message must fit in
MAX_REPLY = 4 * 1024 * 1024
MAX_FDS = 64                 # one per queue of one port
VERBS = ("port-create", "port-delete", "port-list", "port-show", "fds-for-consumer",
         "raise-memlock-for-peer", "status", "domain-prepare", "domain-release", "domain-check",
         "domain-incoming", "domain-stopped")
# all the consumer socket (the one mounted into pods) serves
CONSUMER_VERBS = ("fds-for-consumer", "raise-memlock-for-peer")


def encode_request(verb: str, **args) -> bytes:
    return json.dumps({"verb": verb, "args": args}, separators=(",", ":")).encode()


def decode_request(data: bytes) -> tuple[str, dict]:
    if len(data) > MAX_MESSAGE:
        raise InvalidInput(f"request of {len(data)} bytes is over the {MAX_MESSAGE}-byte limit")
    try:
        msg = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise InvalidInput(f"request is not valid JSON ({exc.__class__.__name__})",
                           fix='send {"verb": "...", "args": {...}}') from None
    if not isinstance(msg, dict) or set(msg) - {"verb", "args"} or "verb" not in msg:
        raise InvalidInput('request must be an object with "verb" and optional "args" only')
    verb, args = msg["verb"], msg.get("args", {})
    if verb not in VERBS:
        raise InvalidInput(f"unknown verb {verb!r}", fix=f"use one of: {', '.join(VERBS)}")
    if not isinstance(args, dict):
        raise InvalidInput('"args" must be an object')
    return verb, args


def encode_reply(result: dict | None = None, error: VmnetError | None = None) -> bytes:
    body = {"ok": False, "error": error.to_dict()} if error else {"ok": True, "result": result or {}}
    return json.dumps(body, separators=(",", ":"), default=str).encode()


RESULT_PREFIX = b'{"ok":true,"result":'


def result_json(data: bytes) -> str | None:
    """A successful reply's result as the helper encoded it (compact JSON, encode_reply), or
    None: what `vmnet --json` prints for a program without decoding and encoding it again
    (status at 1,000 ports is 1.5 MB). Call only on a reply decode_reply accepted."""
    if data.startswith(RESULT_PREFIX) and data.endswith(b"}"):
        return data[len(RESULT_PREFIX):-1].decode()
    return None


def decode_reply(data: bytes) -> dict:
    """The result of a reply, or the VmnetError it carries, raised."""
    fix = "check that the socket is the vmnet helper's, of the same vmnet version as this client"
    try:
        msg = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise VmnetError("the helper sent a reply that is not JSON", fix=fix) from None
    if not isinstance(msg, dict) or not isinstance(msg.get("ok"), bool):
        raise VmnetError('the helper sent a malformed reply (not an object with "ok")', fix=fix)
    if msg["ok"]:
        result = msg.get("result", {})
        if not isinstance(result, dict):
            raise VmnetError('the helper sent a malformed reply ("result" is not an object)', fix=fix)
        return result
    err = msg.get("error") or {}
    if not isinstance(err, dict):
        raise VmnetError('the helper sent a malformed reply ("error" is not an object)', fix=fix)
    raise error_from_dict(err)


def error_from_dict(err: dict) -> VmnetError:
    from . import errors
    cls = next((c for c in vars(errors).values()
                if isinstance(c, type) and issubclass(c, VmnetError) and c.code == err.get("code")),
               VmnetError)
    errno = err.get("errno")
    fix = err.get("fix")
    return cls(str(err.get("message", "the helper refused the request")),
               fix=fix if isinstance(fix, str) else None,
               errno=errno if isinstance(errno, int) and not isinstance(errno, bool) else None)
