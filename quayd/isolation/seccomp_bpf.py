"""The seccomp filter compiled once per profile and handed to crun ready-made.

crun compiles ``linux.seccomp`` with libseccomp at every ``create``: about 23 ms of a 36 ms
``crun create`` with containers-common's default profile (crun 1.8.1; its own cache of compiled
filters never fills on Debian 12). crun also accepts the compiled program as the
``run.oci.seccomp_bpf_data`` annotation (base64 of the ``struct sock_filter`` array, the raw
argument of ``seccomp(SECCOMP_SET_MODE_FILTER)``) and then compiles nothing. So quay compiles each
distinct filter once, with the same libseccomp (``libseccomp.so.2``, through ctypes) and the
same calls crun makes, keeps the program in memory and under the state dir, and passes it in
the annotation.

- :func:`plan` (pure) turns an OCI ``linux.seccomp`` object into the libseccomp calls crun 1.8.1
  would make (``src/libcrun/seccomp.c``): the default action, the architectures, one
  :class:`RuleCall` per syscall name and argument group. It raises :class:`NotPrecompilableError`
  for what raw data cannot carry (``SCMP_ACT_NOTIFY``, a ``listenerPath``) or what crun itself
  would refuse: those containers keep the JSON path, where crun decides.
- :func:`cache_key` (pure): a hash of the canonical JSON, the machine, libseccomp's version and
  API level.
- :class:`Libseccomp` (I/O) runs a plan through libseccomp and exports the program.
- :class:`BpfCache` (I/O): memory, then ``DIR/KEY.bpf``, then compile and write atomically.
  Any failure is logged once and gives None: the start goes on with the JSON filter.

The JSON ``linux.seccomp`` stays in ``config.json`` next to the annotation: crun does not compile
it when the annotation is present (measured: its CPU time is that of a container without a
filter), it takes the filter's ``flags`` from it on either path, and runc, which does not know
the annotation, uses only it.
"""

from __future__ import annotations

import base64
import ctypes
import errno
import hashlib
import json
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from quayd.atomicfile import replace_file

log = structlog.get_logger("quayd.isolation")

ANNOTATION = "run.oci.seccomp_bpf_data"
LIBRARY = "libseccomp.so.2"
MAX_PROGRAM_BYTES = 4096 * 8  # BPF_MAXINSNS instructions of 8 bytes: the kernel's limit

# libseccomp's action values (seccomp.h).
ACT_KILL_PROCESS = 0x80000000
ACT_KILL_THREAD = 0x00000000
ACT_TRAP = 0x00030000
ACT_NOTIFY = 0x7FC00000
ACT_LOG = 0x7FFC0000
ACT_ALLOW = 0x7FFF0000
_ACT_ERRNO = 0x00050000
_ACT_TRACE = 0x7FF00000
_PLAIN_ACTIONS = {
    "SCMP_ACT_ALLOW": ACT_ALLOW,
    "SCMP_ACT_KILL": ACT_KILL_THREAD,
    "SCMP_ACT_KILL_THREAD": ACT_KILL_THREAD,
    "SCMP_ACT_KILL_PROCESS": ACT_KILL_PROCESS,
    "SCMP_ACT_TRAP": ACT_TRAP,
    "SCMP_ACT_LOG": ACT_LOG,
}
_ERRNO_ACTIONS = {"SCMP_ACT_ERRNO": _ACT_ERRNO, "SCMP_ACT_TRACE": _ACT_TRACE}

# enum scmp_compare (seccomp.h).
OPERATORS = {
    "SCMP_CMP_NE": 1,
    "SCMP_CMP_LT": 2,
    "SCMP_CMP_LE": 3,
    "SCMP_CMP_EQ": 4,
    "SCMP_CMP_GE": 5,
    "SCMP_CMP_GT": 6,
    "SCMP_CMP_MASKED_EQ": 7,
}
# The flags crun 1.8.1 knows. They travel in the JSON ``flags`` (kept in config.json), which
# crun applies to the precompiled program exactly as to its own; any other makes crun refuse
# the container, so it is left to crun on the JSON path.
FLAGS = frozenset(
    {
        "SECCOMP_FILTER_FLAG_TSYNC",
        "SECCOMP_FILTER_FLAG_SPEC_ALLOW",
        "SECCOMP_FILTER_FLAG_LOG",
        "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV",
    }
)
_MAX_ARGS = 6


class NotPrecompilableError(Exception):
    """The filter needs crun's own JSON path (the message says why)."""


class CompileError(Exception):
    """libseccomp could not be loaded or refused a call."""


@dataclass(frozen=True)
class ArgCmp:
    """One ``struct scmp_arg_cmp``: argument ``index``, operator ``op`` (enum scmp_compare),
    ``datum_a = value``, ``datum_b = value_two``, both 64-bit. For ``SCMP_CMP_MASKED_EQ`` that
    is ``(arg & value) == value_two``: OCI's valueTwo is the value and value the mask."""

    index: int
    op: int
    value: int
    value_two: int


@dataclass(frozen=True)
class RuleCall:
    """One ``seccomp_rule_add_array(ctx, action, resolve(syscall), len(args), args)``."""

    action: int
    syscall: str
    args: tuple[ArgCmp, ...] = ()


@dataclass(frozen=True)
class FilterPlan:
    default_action: int
    architectures: tuple[str, ...]
    """libseccomp's names (``x86_64``, ``x86``, ``x32``), for ``seccomp_arch_resolve_name``."""
    rules: tuple[RuleCall, ...]


# --- pure ----------------------------------------------------------------------------------------


def action_value(name: Any, errno_ret: int | None) -> int:
    """libseccomp's value of an OCI action (``SCMP_ACT_ERRNO`` with ``errno_ret``, else EPERM)."""
    if name == "SCMP_ACT_NOTIFY":
        raise NotPrecompilableError("SCMP_ACT_NOTIFY needs a listener, which raw data cannot carry")
    if name in _ERRNO_ACTIONS:
        code = errno.EPERM if errno_ret is None else errno_ret
        return _ERRNO_ACTIONS[name] | (code & 0xFFFF)
    if name in _PLAIN_ACTIONS:
        if errno_ret is not None:
            raise NotPrecompilableError(f"errnoRet given for {name}, which takes none")
        return _PLAIN_ACTIONS[name]
    raise NotPrecompilableError(f"unknown seccomp action {name!r}")


def plan(seccomp: Mapping[str, Any]) -> FilterPlan:
    """The libseccomp calls crun 1.8.1 makes for ``seccomp`` (an OCI ``linux.seccomp``).

    As crun: rules whose action is the default action are left out; the names are resolved
    later (unknown ones skipped); a rule's comparisons go in one call (all must match) unless
    two compare the same argument, in which case each is a rule of its own (any may match).
    """
    if seccomp.get("listenerPath"):
        raise NotPrecompilableError("a listenerPath (seccomp notify) needs crun's own setup")
    unknown = [flag for flag in seccomp.get("flags") or [] if flag not in FLAGS]
    if unknown:
        raise NotPrecompilableError(f"seccomp flags crun 1.8.1 does not know: {', '.join(unknown)}")
    default = action_value(seccomp.get("defaultAction"), seccomp.get("defaultErrnoRet"))
    architectures = tuple(_arch_name(arch) for arch in seccomp.get("architectures") or [])
    rules: list[RuleCall] = []
    for rule in seccomp.get("syscalls") or []:
        action = action_value(rule.get("action"), rule.get("errnoRet"))
        if action == default:
            continue
        args = tuple(_arg_cmp(arg) for arg in (rule.get("args") or [])[:_MAX_ARGS])
        indexes = [arg.index for arg in args]
        groups = [(arg,) for arg in args] if len(set(indexes)) < len(indexes) else [args]
        rules += [
            RuleCall(action=action, syscall=name, args=group)
            for name in rule.get("names") or []
            for group in groups
        ]
    return FilterPlan(default_action=default, architectures=architectures, rules=tuple(rules))


def cache_key(
    seccomp: Mapping[str, Any],
    *,
    machine: str,
    library_version: tuple[int, int, int],
    api_level: int,
) -> str:
    """What a compiled program depends on, hashed: the filter (canonical JSON), the machine
    (its native architecture is always in the filter), libseccomp's version and API level (what
    libseccomp generates for this kernel)."""
    canonical = json.dumps(seccomp, sort_keys=True, separators=(",", ":"))
    text = f"{canonical}\n{machine}\n{'.'.join(map(str, library_version))}\n{api_level}"
    return hashlib.sha256(text.encode()).hexdigest()


def annotation(program: bytes) -> dict[str, str]:
    """The annotation that makes crun load ``program`` instead of compiling ``linux.seccomp``."""
    return {ANNOTATION: base64.b64encode(program).decode("ascii")}


def valid_program(program: bytes) -> bool:
    """Whole ``struct sock_filter`` instructions (8 bytes each), within the kernel's limit."""
    return 0 < len(program) <= MAX_PROGRAM_BYTES and len(program) % 8 == 0


def _arch_name(arch: Any) -> str:
    if not isinstance(arch, str) or not arch:
        raise NotPrecompilableError(f"architecture {arch!r} is not a name")
    return arch.removeprefix("SCMP_ARCH_").lower()


def _arg_cmp(arg: Mapping[str, Any]) -> ArgCmp:
    index = arg.get("index")
    if not isinstance(index, int) or not 0 <= index < _MAX_ARGS:
        raise NotPrecompilableError(f"seccomp argument index {index!r} is not 0 to 5")
    op = OPERATORS.get(arg.get("op", ""))
    if op is None:
        raise NotPrecompilableError(f"unknown seccomp operator {arg.get('op')!r}")
    return ArgCmp(
        index=index, op=op, value=int(arg.get("value", 0)), value_two=int(arg.get("valueTwo", 0))
    )


# --- libseccomp ----------------------------------------------------------------------------------


class _ScmpArgCmp(ctypes.Structure):
    _fields_ = (
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    )


class _ScmpVersion(ctypes.Structure):
    _fields_ = (("major", ctypes.c_uint), ("minor", ctypes.c_uint), ("micro", ctypes.c_uint))


_NR_SCMP_ERROR = -1


class Libseccomp:
    """libseccomp through ctypes (it is installed with crun; no compiler is needed)."""

    def __init__(self, name: str = LIBRARY) -> None:
        try:
            lib = ctypes.CDLL(name, use_errno=True)
        except OSError as error:
            raise CompileError(f"cannot load {name}: {error}") from None
        lib.seccomp_version.restype = ctypes.POINTER(_ScmpVersion)
        lib.seccomp_version.argtypes = []
        lib.seccomp_api_get.restype = ctypes.c_uint
        lib.seccomp_api_get.argtypes = []
        lib.seccomp_init.restype = ctypes.c_void_p
        lib.seccomp_init.argtypes = [ctypes.c_uint32]
        lib.seccomp_release.restype = None
        lib.seccomp_release.argtypes = [ctypes.c_void_p]
        lib.seccomp_arch_resolve_name.restype = ctypes.c_uint32
        lib.seccomp_arch_resolve_name.argtypes = [ctypes.c_char_p]
        lib.seccomp_arch_add.restype = ctypes.c_int
        lib.seccomp_arch_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
        lib.seccomp_syscall_resolve_name.restype = ctypes.c_int
        lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
        lib.seccomp_rule_add_array.restype = ctypes.c_int
        lib.seccomp_rule_add_array.argtypes = [
            ctypes.c_void_p,
            ctypes.c_uint32,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.POINTER(_ScmpArgCmp),
        ]
        lib.seccomp_export_bpf.restype = ctypes.c_int
        lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
        self._lib = lib
        version = lib.seccomp_version().contents
        self.version = (int(version.major), int(version.minor), int(version.micro))
        self.api_level = int(lib.seccomp_api_get())

    def compile(self, filter_plan: FilterPlan) -> tuple[bytes, list[str]]:
        """The program of ``filter_plan`` and the syscall names libseccomp did not know
        (skipped, as crun skips them)."""
        lib = self._lib
        ctx = lib.seccomp_init(filter_plan.default_action)
        if not ctx:
            raise CompileError(f"seccomp_init({filter_plan.default_action:#x}) failed")
        try:
            for arch in filter_plan.architectures:
                token = lib.seccomp_arch_resolve_name(arch.encode())
                if token == 0:
                    raise CompileError(f"libseccomp does not know the architecture {arch!r}")
                _check(lib.seccomp_arch_add(ctx, token), f"seccomp_arch_add({arch})", ok=-17)
            unknown: list[str] = []
            numbers: dict[str, int] = {}
            for rule in filter_plan.rules:
                number = numbers.get(rule.syscall)
                if number is None:
                    number = numbers[rule.syscall] = lib.seccomp_syscall_resolve_name(
                        rule.syscall.encode()
                    )
                if number == _NR_SCMP_ERROR:
                    if rule.syscall not in unknown:
                        unknown.append(rule.syscall)
                    continue
                args = (_ScmpArgCmp * max(len(rule.args), 1))(
                    *(_ScmpArgCmp(a.index, a.op, a.value, a.value_two) for a in rule.args)
                )
                _check(
                    lib.seccomp_rule_add_array(ctx, rule.action, number, len(rule.args), args),
                    f"seccomp_rule_add_array({rule.syscall})",
                )
            return _export(lib, ctx), unknown
        finally:
            lib.seccomp_release(ctx)


def _check(result: int, what: str, *, ok: int | None = None) -> None:
    if result < 0 and result != ok:
        raise CompileError(f"{what}: {os.strerror(-result)}")


def _export(lib: Any, ctx: int) -> bytes:
    fd = os.memfd_create("quay-seccomp", os.MFD_CLOEXEC)
    try:
        _check(lib.seccomp_export_bpf(ctx, fd), "seccomp_export_bpf")
        size = os.lseek(fd, 0, os.SEEK_END)
        return os.pread(fd, size, 0)
    finally:
        os.close(fd)


# --- the cache -----------------------------------------------------------------------------------


class BpfCache:
    """Compiled programs by :func:`cache_key`: in memory, then ``directory/KEY.bpf``.

    Thread-safe (starts run in a pool). Never raises: :meth:`program` gives None when the filter
    must take the JSON path, and says why in the log (once per reason).
    """

    def __init__(self, directory: Path, *, library: str = LIBRARY) -> None:
        self.directory = directory
        self._library_name = library
        self._library: Libseccomp | None = None
        self._broken: str | None = None
        self._programs: dict[str, bytes | None] = {}
        self._lock = threading.Lock()
        self._logged: set[str] = set()

    def program(self, seccomp: Mapping[str, Any]) -> bytes | None:
        """The compiled ``seccomp`` filter, or None (the caller uses the JSON filter)."""
        with self._lock:
            library = self._load()
            if library is None:
                return None
            key = cache_key(
                seccomp,
                machine=os.uname().machine,
                library_version=library.version,
                api_level=library.api_level,
            )
            if key in self._programs:
                return self._programs[key]
            program = self._read(key)
            if program is None:
                program = self._compile(library, seccomp, key)
            self._programs[key] = program
            return program

    def _load(self) -> Libseccomp | None:
        if self._library is None and self._broken is None:
            try:
                self._library = Libseccomp(self._library_name)
            except CompileError as error:
                self._broken = str(error)
                self._warn(
                    "the seccomp filter is compiled by the runtime at each start",
                    reason=self._broken,
                )
        return self._library

    def _read(self, key: str) -> bytes | None:
        try:
            program = (self.directory / f"{key}.bpf").read_bytes()
        except OSError:
            return None
        return program if valid_program(program) else None

    def _compile(self, library: Libseccomp, seccomp: Mapping[str, Any], key: str) -> bytes | None:
        try:
            program, unknown = library.compile(plan(seccomp))
        except (NotPrecompilableError, CompileError) as error:
            self._warn("this seccomp filter is compiled by the runtime", reason=str(error))
            return None
        if not valid_program(program):
            self._warn(
                "this seccomp filter is compiled by the runtime",
                reason=f"libseccomp exported {len(program)} bytes",
            )
            return None
        if unknown:
            log.info(
                "seccomp: syscalls libseccomp does not know are left out, as crun does",
                syscalls=" ".join(unknown),
            )
        try:
            _write_atomically(self.directory, f"{key}.bpf", program)
        except OSError as error:  # kept in memory all the same
            self._warn("cannot cache a compiled seccomp filter", reason=str(error))
        return program

    def _warn(self, message: str, *, reason: str) -> None:
        if reason not in self._logged:
            self._logged.add(reason)
            log.warning(message, reason=reason)


def _write_atomically(directory: Path, name: str, data: bytes) -> None:
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    replace_file(directory / name, data, mode=0o600)


_caches: dict[Path, BpfCache] = {}
_caches_lock = threading.Lock()


def bpf_cache(directory: Path) -> BpfCache:
    """The process's one cache for ``directory`` (so its memory part outlives each start)."""
    with _caches_lock:
        cache = _caches.get(directory)
        if cache is None:
            cache = _caches[directory] = BpfCache(directory)
        return cache


def precompiled(seccomp: Mapping[str, Any] | None, directory: Path | None) -> bytes | None:
    """The compiled ``seccomp`` from the cache in ``directory``; None without either, or when
    it must take the JSON path."""
    if seccomp is None or directory is None:
        return None
    return bpf_cache(directory).program(seccomp)
