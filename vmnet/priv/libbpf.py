"""A thin, typed binding of the few calls vmnet needs from the system libbpf.

libbpf.so.1 does the ELF parsing, BTF, map creation and relocation; this
module only declares the C signatures and turns negative returns into
OSError. libbpf >= 1.0 returns -errno directly (and sets errno).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import functools
import os

from ..errors import NotSupported

BPF_XDP = 37                  # enum bpf_attach_type
BPF_LSM_MAC = 27
BPF_ANY, BPF_NOEXIST = 0, 1
XDP_FLAGS_SKB_MODE = 1 << 1
XDP_FLAGS_DRV_MODE = 1 << 2
BPF_LINK_TYPE_XDP = 6

_lib = None


def lib() -> ctypes.CDLL:
    global _lib
    if _lib is None:
        try:
            _lib = ctypes.CDLL("libbpf.so.1", use_errno=True)
        except OSError as exc:
            raise NotSupported("the system libbpf (libbpf.so.1) cannot be loaded",
                               fix="apt-get install libbpf1") from exc
        _declare(_lib)
        # libbpf prints its own diagnostics to stderr; vmnet reports errors
        # itself, with the object and the fix, so keep its log quiet.
        _lib.libbpf_set_print(None)
    return _lib


def _declare(l):
    p, i, u32, c = ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32, ctypes.c_char_p
    sigs = {
        "libbpf_set_print": (p, [p]),
        "bpf_object__open_file": (p, [c, p]),
        "bpf_object__load": (i, [p]),
        "bpf_object__close": (None, [p]),
        "bpf_object__find_map_by_name": (p, [p, c]),
        "bpf_object__find_program_by_name": (p, [p, c]),
        "bpf_map__set_max_entries": (i, [p, u32]),
        "bpf_map__fd": (i, [p]),
        "bpf_map__reuse_fd": (i, [p, i]),
        "bpf_program__fd": (i, [p]),
        "bpf_link_create": (i, [i, i, i, p]),
        "bpf_obj_pin": (i, [i, c]),
        "bpf_obj_get": (i, [c]),
        "bpf_map_update_elem": (i, [i, p, p, ctypes.c_uint64]),
        "bpf_map_delete_elem": (i, [i, p]),
        "bpf_map_lookup_elem": (i, [i, p, p]),
        "bpf_map_get_next_key": (i, [i, p, p]),
        "bpf_obj_get_info_by_fd": (i, [i, p, ctypes.POINTER(u32)]),
        "bpf_prog_get_fd_by_id": (i, [u32]),
        "bpf_map_get_fd_by_id": (i, [u32]),
        "bpf_prog_test_run_opts": (i, [i, p]),
        "libbpf_num_possible_cpus": (i, []),
    }
    for name, (restype, argtypes) in sigs.items():
        fn = getattr(l, name)
        fn.restype, fn.argtypes = restype, argtypes


def _check(ret: int, what: str) -> int:
    if ret < 0:
        err = -ret if ret != -1 else (ctypes.get_errno() or 1)
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return ret


def _not_found(ret: int, what: str) -> bool:
    """For a call that may find nothing: whether it found nothing (ENOENT); other errors raised."""
    if ret < 0 and (-ret if ret != -1 else ctypes.get_errno()) == errno.ENOENT:
        return True
    _check(ret, what)
    return False


def _ptr(ret, what: str):
    if not ret:
        err = ctypes.get_errno() or 2
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return ret


class LinkCreateOpts(ctypes.Structure):
    # The prefix of struct bpf_link_create_opts that XDP uses; libbpf reads
    # only the first `sz` bytes and treats the rest as zero.
    _fields_ = [("sz", ctypes.c_size_t), ("flags", ctypes.c_uint32), ("_pad", ctypes.c_uint32)]


class LinkInfo(ctypes.Structure):
    # struct bpf_link_info: type, id, prog_id, then a union (8-aligned)
    # whose xdp member starts with the ifindex.
    _fields_ = [("type", ctypes.c_uint32), ("id", ctypes.c_uint32), ("prog_id", ctypes.c_uint32),
                ("_pad", ctypes.c_uint32), ("xdp_ifindex", ctypes.c_uint32),
                ("_rest", ctypes.c_uint8 * 60)]


class ProgInfo(ctypes.Structure):
    # struct bpf_prog_info up to run_cnt (run_time_ns/run_cnt count only while the sysctl
    # kernel.bpf_stats_enabled is 1: vmnet bench's cost per packet).
    _fields_ = [("type", ctypes.c_uint32), ("id", ctypes.c_uint32), ("tag", ctypes.c_uint8 * 8),
                ("jited_prog_len", ctypes.c_uint32), ("xlated_prog_len", ctypes.c_uint32),
                ("jited_prog_insns", ctypes.c_uint64), ("xlated_prog_insns", ctypes.c_uint64),
                ("load_time", ctypes.c_uint64), ("created_by_uid", ctypes.c_uint32),
                ("nr_map_ids", ctypes.c_uint32), ("map_ids", ctypes.c_uint64),
                ("name", ctypes.c_char * 16), ("ifindex", ctypes.c_uint32), ("gpl_compatible", ctypes.c_uint32),
                ("netns_dev", ctypes.c_uint64), ("netns_ino", ctypes.c_uint64),
                ("nr_jited_ksyms", ctypes.c_uint32), ("nr_jited_func_lens", ctypes.c_uint32),
                ("jited_ksyms", ctypes.c_uint64), ("jited_func_lens", ctypes.c_uint64),
                ("btf_id", ctypes.c_uint32), ("func_info_rec_size", ctypes.c_uint32), ("func_info", ctypes.c_uint64),
                ("nr_func_info", ctypes.c_uint32), ("nr_line_info", ctypes.c_uint32),
                ("line_info", ctypes.c_uint64), ("jited_line_info", ctypes.c_uint64),
                ("nr_jited_line_info", ctypes.c_uint32), ("line_info_rec_size", ctypes.c_uint32),
                ("jited_line_info_rec_size", ctypes.c_uint32), ("nr_prog_tags", ctypes.c_uint32),
                ("prog_tags", ctypes.c_uint64), ("run_time_ns", ctypes.c_uint64), ("run_cnt", ctypes.c_uint64)]


class MapInfo(ctypes.Structure):
    _fields_ = [("type", ctypes.c_uint32), ("id", ctypes.c_uint32), ("key_size", ctypes.c_uint32),
                ("value_size", ctypes.c_uint32), ("max_entries", ctypes.c_uint32),
                ("map_flags", ctypes.c_uint32), ("name", ctypes.c_char * 16)]


class BpfObject:
    """An opened ELF object; load() creates its maps and programs in the kernel."""

    def __init__(self, path: str):
        self._obj = _ptr(lib().bpf_object__open_file(path.encode(), None), f"open BPF object {path}")

    def resize_map(self, name: str, max_entries: int):
        m = _ptr(lib().bpf_object__find_map_by_name(self._obj, name.encode()), f"map {name}")
        _check(lib().bpf_map__set_max_entries(m, max_entries), f"resize map {name}")

    def load(self):
        _check(lib().bpf_object__load(self._obj), "load BPF object")

    def program_fd(self, name: str) -> int:
        p = _ptr(lib().bpf_object__find_program_by_name(self._obj, name.encode()), f"program {name}")
        return _check(lib().bpf_program__fd(p), f"fd of program {name}")

    def map_fd(self, name: str) -> int:
        m = _ptr(lib().bpf_object__find_map_by_name(self._obj, name.encode()), f"map {name}")
        return _check(lib().bpf_map__fd(m), f"fd of map {name}")

    def close(self):
        """Close the object's own fds; what was dup'ed or pinned stays alive."""
        if self._obj:
            lib().bpf_object__close(self._obj)
            self._obj = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def link_create_xdp(prog_fd: int, ifindex: int, flags: int) -> int:
    opts = LinkCreateOpts(sz=ctypes.sizeof(LinkCreateOpts), flags=flags)
    return _check(lib().bpf_link_create(prog_fd, ifindex, BPF_XDP, ctypes.byref(opts)),
                  f"attach XDP program to ifindex {ifindex}")


def obj_pin(fd: int, path: str):
    _check(lib().bpf_obj_pin(fd, path.encode()), f"pin {path}")


def obj_get(path: str) -> int:
    return _check(lib().bpf_obj_get(path.encode()), f"open pin {path}")


def map_update_u32(map_fd: int, key: int, value: int):
    k, v = ctypes.c_uint32(key), ctypes.c_uint32(value)
    _check(lib().bpf_map_update_elem(map_fd, ctypes.byref(k), ctypes.byref(v), 0),
           f"store key {key} in map")


def link_create_lsm(prog_fd: int) -> int:
    """Attach a BPF LSM program (its hook is fixed at load) through a bpf_link."""
    return _check(lib().bpf_link_create(prog_fd, 0, BPF_LSM_MAC, None), "attach BPF LSM program")


def map_update(map_fd: int, key: bytes, value: bytes, flags: int = BPF_ANY):
    """Store raw key/value bytes (maps whose keys or values are structs, or socket fds)."""
    k, v = ctypes.create_string_buffer(key, len(key)), ctypes.create_string_buffer(value, len(value))
    _check(lib().bpf_map_update_elem(map_fd, k, v, flags), "update map")


def map_lookup(map_fd: int, key: bytes, value_size: int) -> bytes | None:
    """The raw value at key (value_size: all CPUs' values for per-CPU maps), or None."""
    k, v = ctypes.create_string_buffer(key, len(key)), ctypes.create_string_buffer(value_size)
    return None if _not_found(lib().bpf_map_lookup_elem(map_fd, k, v), "look up map") else v.raw


def _next_key(map_fd: int, prev, key_size: int):
    """The key after `prev` (None: the first) as a buffer, or None past the last."""
    nxt = ctypes.create_string_buffer(key_size)
    return None if _not_found(lib().bpf_map_get_next_key(map_fd, prev, nxt), "iterate map") else nxt


def map_keys(map_fd: int, key_size: int) -> list[bytes]:
    """Every key of a hash map (a snapshot: entries added meanwhile may be missed)."""
    keys, key = [], _next_key(map_fd, None, key_size)
    while key is not None:
        keys.append(key.raw)
        key = _next_key(map_fd, key, key_size)
    return keys


def map_any_key(map_fd: int, key_size: int) -> bool:
    """Whether a hash map holds any key (one BPF_MAP_GET_NEXT_KEY)."""
    return _next_key(map_fd, None, key_size) is not None


def map_delete_key(map_fd: int, key: bytes) -> bool:
    """Delete a raw key; False when it was not there."""
    k = ctypes.create_string_buffer(key, len(key))
    ret = lib().bpf_map_delete_elem(map_fd, k)
    if ret < 0:
        err = -ret if ret != -1 else ctypes.get_errno()
        if err == errno.ENOENT:
            return False
        raise OSError(err, f"delete from map: {os.strerror(err)}")
    return True


@functools.lru_cache(maxsize=1)
def possible_cpus() -> int:
    """How many values a per-CPU map holds for each key (fixed at boot)."""
    return _check(lib().libbpf_num_possible_cpus(), "count possible CPUs")


def map_delete(map_fd: int, key: int):
    k = ctypes.c_uint32(key)
    _check(lib().bpf_map_delete_elem(map_fd, ctypes.byref(k)), f"delete key {key} from map")


def _info(fd: int, struct):
    info = struct()
    size = ctypes.c_uint32(ctypes.sizeof(info))
    _check(lib().bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(size)), "read BPF object info")
    return info


def link_info(fd: int) -> LinkInfo:
    return _info(fd, LinkInfo)


def prog_info(fd: int) -> ProgInfo:
    return _info(fd, ProgInfo)


def map_info(fd: int) -> MapInfo:
    return _info(fd, MapInfo)


def prog_map_ids(fd: int) -> list[int]:
    """The ids of the maps a program uses."""
    count = prog_info(fd).nr_map_ids
    ids = (ctypes.c_uint32 * max(count, 1))()
    info = ProgInfo(nr_map_ids=count, map_ids=ctypes.addressof(ids))
    size = ctypes.c_uint32(ctypes.sizeof(info))
    _check(lib().bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(size)), "read a program's maps")
    return list(ids[:min(count, info.nr_map_ids)])


def map_reuse_fd(obj, name: str, fd: int) -> None:
    """Make an opened (not yet loaded) object's map `name` the existing map `fd`."""
    m = _ptr(lib().bpf_object__find_map_by_name(obj, name.encode()), f"map {name}")
    _check(lib().bpf_map__reuse_fd(m, fd), f"reuse map {name}")


def prog_fd_by_id(prog_id: int) -> int:
    return _check(lib().bpf_prog_get_fd_by_id(prog_id), f"open program id {prog_id}")


def map_fd_by_id(map_id: int) -> int:
    return _check(lib().bpf_map_get_fd_by_id(map_id), f"open map id {map_id}")


class TestRunOpts(ctypes.Structure):
    # struct bpf_test_run_opts (libbpf 1.1): what a run is given, and its result
    _fields_ = [("sz", ctypes.c_size_t), ("data_in", ctypes.c_void_p), ("data_out", ctypes.c_void_p),
                ("data_size_in", ctypes.c_uint32), ("data_size_out", ctypes.c_uint32),
                ("ctx_in", ctypes.c_void_p), ("ctx_out", ctypes.c_void_p),
                ("ctx_size_in", ctypes.c_uint32), ("ctx_size_out", ctypes.c_uint32),
                ("retval", ctypes.c_uint32), ("repeat", ctypes.c_int), ("duration", ctypes.c_uint32),
                ("flags", ctypes.c_uint32), ("cpu", ctypes.c_uint32), ("batch_size", ctypes.c_uint32)]


def test_run(prog_fd: int, frame: bytes, repeat: int, ctx: bytes | None = None) -> tuple[int, int]:
    """BPF_PROG_TEST_RUN: the kernel runs the program `repeat` times on `frame` (with an
    xdp_md `ctx`); (its action, ns per run as the kernel measured it)."""
    data = ctypes.create_string_buffer(frame, len(frame))
    c = ctypes.create_string_buffer(ctx, len(ctx)) if ctx else None
    opts = TestRunOpts(sz=ctypes.sizeof(TestRunOpts), data_in=ctypes.addressof(data), data_size_in=len(frame),
                       ctx_in=ctypes.addressof(c) if c else None, ctx_size_in=len(ctx) if ctx else 0,
                       repeat=repeat)
    _check(lib().bpf_prog_test_run_opts(prog_fd, ctypes.byref(opts)), "test-run a program")
    return opts.retval, opts.duration
