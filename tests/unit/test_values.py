"""The value syntaxes of unit files: durations, sizes, signals, capabilities, ports, kinds."""

from __future__ import annotations

import ipaddress
import signal
from collections.abc import Callable
from datetime import date, datetime, time, timedelta

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from quayd.units.values import (
    CAPABILITIES,
    CAPABILITY_ACCEPTED,
    DURATION_ACCEPTED,
    MAX_DURATION,
    PORT_ACCEPTED,
    SIGNAL_ACCEPTED,
    SIZE_ACCEPTED,
    PortMapping,
    PortSpec,
    ValueSyntaxError,
    format_duration,
    format_size,
    kind_of,
    parse_capability,
    parse_duration,
    parse_port_spec,
    parse_signal,
    parse_size,
    signal_number,
)

RTMIN = int(signal.SIGRTMIN)
RTMAX = int(signal.SIGRTMAX)
MS = timedelta(milliseconds=1)
SECONDS_PER_YEAR = 365 * 86400
SIZE_LIMIT = 1 << 62
# Python refuses int() of strings longer than this by default; parsers must not trip on it.
VERY_LONG_NUMBER = "1" * 5000

# --- durations -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("500ms", timedelta(milliseconds=500), id="milliseconds"),
        pytest.param("10s", timedelta(seconds=10), id="seconds"),
        pytest.param("5m", timedelta(minutes=5), id="minutes"),
        pytest.param("2h", timedelta(hours=2), id="hours"),
        pytest.param("3d", timedelta(days=3), id="days"),
        pytest.param("1h30m", timedelta(hours=1, minutes=30), id="hours-minutes"),
        pytest.param(
            "1d2h3m4s5ms",
            timedelta(days=1, hours=2, minutes=3, seconds=4, milliseconds=5),
            id="every-unit",
        ),
        pytest.param("5m5s", timedelta(minutes=5, seconds=5), id="m-then-s-not-ms"),
        pytest.param("2.5s", timedelta(milliseconds=2500), id="fractional-seconds"),
        pytest.param("1.5h", timedelta(minutes=90), id="fractional-hours"),
        pytest.param("0.5ms", timedelta(0), id="half-ms-rounds-to-even"),
        pytest.param("10", timedelta(seconds=10), id="bare-number-is-seconds"),
        pytest.param("1.25", timedelta(milliseconds=1250), id="bare-fraction-is-seconds"),
        pytest.param("0", timedelta(0), id="zero-text"),
        pytest.param("0s", timedelta(0), id="zero-seconds"),
        pytest.param("  10s\t", timedelta(seconds=10), id="surrounding-space"),
        pytest.param("1m1m", timedelta(minutes=2), id="repeated-unit-adds-up"),
        pytest.param("365d", MAX_DURATION, id="text-at-limit"),
        pytest.param(10, timedelta(seconds=10), id="int-seconds"),
        pytest.param(0, timedelta(0), id="int-zero"),
        pytest.param(0.25, timedelta(milliseconds=250), id="float-seconds"),
        pytest.param(0.0004, timedelta(0), id="float-below-ms-rounds-down"),
        pytest.param(SECONDS_PER_YEAR, MAX_DURATION, id="int-at-limit"),
        pytest.param(timedelta(seconds=3), timedelta(seconds=3), id="timedelta"),
        pytest.param(timedelta(microseconds=1500), timedelta(milliseconds=2), id="timedelta-to-ms"),
    ],
)
def test_parse_duration(value: object, expected: timedelta) -> None:
    assert parse_duration(value) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        pytest.param("", "not a duration", id="empty"),
        pytest.param("   ", "not a duration", id="blank"),
        pytest.param("soon", "not a duration", id="word"),
        pytest.param("10x", "not a duration", id="unknown-unit"),
        pytest.param("s", "not a duration", id="unit-without-number"),
        pytest.param("1h 30m", "not a duration", id="space-between-parts"),
        pytest.param("5 s", "not a duration", id="space-before-unit"),
        pytest.param("1e3", "not a duration", id="exponent"),
        pytest.param(".5s", "not a duration", id="no-leading-digit"),
        pytest.param("5.", "not a duration", id="trailing-dot"),
        pytest.param("1.5.5s", "not a duration", id="two-dots"),
        pytest.param("10S", "not a duration", id="uppercase-unit"),
        pytest.param("+5s", "not a duration", id="plus-sign"),
        pytest.param("\u0663s", "not a duration", id="arabic-indic-digit"),
        pytest.param("-5s", "a duration cannot be negative", id="negative-text"),
        pytest.param("-5", "a duration cannot be negative", id="negative-bare-text"),
        pytest.param(-1, "a duration cannot be negative", id="negative-int"),
        pytest.param(-0.5, "a duration cannot be negative", id="negative-float"),
        pytest.param(float("nan"), "a duration cannot be negative", id="nan"),
        pytest.param(
            timedelta(seconds=-1), "a duration cannot be negative", id="negative-timedelta"
        ),
        pytest.param("366d", "a duration longer than 365 days is not sensible", id="too-long"),
        pytest.param("365d1ms", "longer than 365 days", id="just-too-long"),
        pytest.param(SECONDS_PER_YEAR + 1, "longer than 365 days", id="int-too-long"),
        pytest.param(float("inf"), "longer than 365 days", id="infinity"),
        pytest.param("9" * 400, "longer than 365 days", id="text-overflows-float"),
        pytest.param(10**400, "longer than 365 days", id="int-overflows-float"),
        pytest.param(-(10**400), "a duration cannot be negative", id="negative-int-overflows"),
        pytest.param(timedelta(days=400), "longer than 365 days", id="timedelta-too-long"),
        pytest.param(True, "expected a duration, not a boolean", id="boolean"),
        pytest.param(None, "expected a duration, not nothing", id="none"),
        pytest.param(["10s"], "expected a duration, not an array", id="array"),
        pytest.param({"s": 1}, "expected a duration, not a table", id="table"),
        pytest.param(date(2024, 1, 1), "expected a duration, not a date or time", id="date"),
    ],
)
def test_parse_duration_rejects(value: object, message: str) -> None:
    with pytest.raises(ValueSyntaxError) as caught:
        parse_duration(value)
    assert message in caught.value.message
    assert str(caught.value) == caught.value.message
    assert caught.value.accepted == DURATION_ACCEPTED


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param(timedelta(0), "0s", id="zero"),
        pytest.param(timedelta(microseconds=400), "0s", id="below-ms"),
        pytest.param(timedelta(milliseconds=500), "500ms", id="ms"),
        pytest.param(timedelta(milliseconds=1500), "1s500ms", id="s-and-ms"),
        pytest.param(timedelta(seconds=10), "10s", id="seconds"),
        pytest.param(timedelta(seconds=61), "1m1s", id="minute-and-second"),
        pytest.param(timedelta(minutes=90), "1h30m", id="hour-and-half"),
        pytest.param(timedelta(hours=1), "1h", id="hour"),
        pytest.param(timedelta(days=1, milliseconds=1), "1d1ms", id="day-and-ms"),
        pytest.param(timedelta(days=1, hours=2, minutes=3, seconds=4), "1d2h3m4s", id="all"),
        pytest.param(MAX_DURATION, "365d", id="limit"),
    ],
)
def test_format_duration(value: timedelta, expected: str) -> None:
    assert format_duration(value) == expected
    assert parse_duration(expected) == parse_duration(value)


durations = st.integers(min_value=0, max_value=SECONDS_PER_YEAR * 1000).map(lambda ms: ms * MS)


@settings(max_examples=200)
@given(durations)
@example(MAX_DURATION)
@example(MAX_DURATION - MS)
@example(timedelta(0))
def test_format_duration_round_trips(value: timedelta) -> None:
    text = format_duration(value)
    assert parse_duration(text) == value
    assert format_duration(parse_duration(text)) == text


@settings(max_examples=200)
@given(st.timedeltas(min_value=timedelta(0), max_value=MAX_DURATION))
def test_parse_duration_of_timedelta_is_a_fixed_point_of_formatting(value: timedelta) -> None:
    parsed = parse_duration(value)
    assert abs(parsed - value) <= MS / 2
    assert parse_duration(format_duration(parsed)) == parsed


@settings(max_examples=200)
@given(
    st.lists(
        st.tuples(st.integers(0, 999), st.sampled_from(["ms", "s", "m", "h", "d"])),
        min_size=1,
        max_size=5,
    )
)
def test_parse_duration_adds_up_its_parts(parts: list[tuple[int, str]]) -> None:
    factors = {
        "ms": MS,
        "s": 1000 * MS,
        "m": 60_000 * MS,
        "h": 3_600_000 * MS,
        "d": 86_400_000 * MS,
    }
    expected = sum((count * factors[unit] for count, unit in parts), timedelta(0))
    text = "".join(f"{count}{unit}" for count, unit in parts)
    if expected > MAX_DURATION:
        with pytest.raises(ValueSyntaxError):
            parse_duration(text)
    else:
        assert parse_duration(text) == expected


# --- sizes ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("256M", 256 << 20, id="megabytes"),
        pytest.param("1G", 1 << 30, id="gigabyte"),
        pytest.param("1T", 1 << 40, id="terabyte"),
        pytest.param("512k", 512 << 10, id="lowercase-k"),
        pytest.param("512K", 512 << 10, id="uppercase-k"),
        pytest.param("1.5G", 3 << 29, id="fraction-of-gigabyte"),
        pytest.param("0.5K", 512, id="half-kilobyte"),
        pytest.param("1.25K", 1280, id="quarter-fraction"),
        pytest.param("64MiB", 64 << 20, id="mib-suffix"),
        pytest.param("64mb", 64 << 20, id="mb-suffix"),
        pytest.param("64 M", 64 << 20, id="space-before-unit"),
        pytest.param(" 2K\n", 2048, id="surrounding-space"),
        pytest.param("1024", 1024, id="bare-number"),
        pytest.param("0", 0, id="zero-text"),
        pytest.param("100b", 100, id="b-suffix-is-bytes"),
        pytest.param("100ib", 100, id="ib-without-unit-is-bytes"),
        pytest.param("4611686018427387903", SIZE_LIMIT - 1, id="largest-text-exact"),
        pytest.param("9007199254740993", 2**53 + 1, id="beyond-float-precision"),
        pytest.param("4194303.5T", SIZE_LIMIT - (1 << 39), id="fraction-near-limit"),
        pytest.param(1024, 1024, id="int"),
        pytest.param(0, 0, id="int-zero"),
        pytest.param(SIZE_LIMIT - 1, SIZE_LIMIT - 1, id="int-at-limit"),
    ],
)
def test_parse_size(value: object, expected: int) -> None:
    assert parse_size(value) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        pytest.param("lots", "not a size", id="word"),
        pytest.param("", "not a size", id="empty"),
        pytest.param("K", "not a size", id="unit-only"),
        pytest.param("1P", "not a size", id="petabytes-unknown"),
        pytest.param("1KK", "not a size", id="double-unit"),
        pytest.param("1.K", "not a size", id="trailing-dot"),
        pytest.param("1e3", "not a size", id="exponent"),
        pytest.param("1 000", "not a size", id="digit-groups"),
        pytest.param("\u0663K", "not a size", id="arabic-indic-digit"),
        pytest.param("1\u212a", "not a size", id="kelvin-sign-is-not-k"),
        pytest.param("1.5", "not a whole number of bytes", id="fraction-of-byte"),
        pytest.param("0.1K", "not a whole number of bytes", id="fraction-of-kilobyte"),
        pytest.param("-1G", "a size cannot be negative", id="negative-text"),
        pytest.param(-5, "a size cannot be negative", id="negative-int"),
        pytest.param(SIZE_LIMIT, "size too large", id="int-at-2-62"),
        pytest.param("4194304T", "size too large", id="text-at-2-62"),
        pytest.param("4611686018427387904", "size too large", id="digits-at-2-62"),
        pytest.param("9" * 400, "size too large", id="overflows-float"),
        pytest.param(VERY_LONG_NUMBER, "size too large", id="beyond-int-digit-limit"),
        pytest.param(1.5, "a number of bytes must be whole; use a suffix", id="float"),
        pytest.param(1024.0, "must be whole", id="whole-float"),
        pytest.param(True, "expected a size, not a boolean", id="boolean"),
        pytest.param(None, "expected a size, not nothing", id="none"),
        pytest.param([1], "expected a size, not an array", id="array"),
    ],
)
def test_parse_size_rejects(value: object, message: str) -> None:
    with pytest.raises(ValueSyntaxError) as caught:
        parse_size(value)
    assert message in caught.value.message
    assert caught.value.accepted == SIZE_ACCEPTED


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        pytest.param(0, "0", id="zero"),
        pytest.param(1, "1", id="one"),
        pytest.param(1023, "1023", id="below-k"),
        pytest.param(1024, "1K", id="k"),
        pytest.param(1536, "1536", id="not-divisible-by-k-stays-bytes"),
        pytest.param(1025 << 10, "1025K", id="k-not-m"),
        pytest.param(256 << 20, "256M", id="m"),
        pytest.param(3 << 29, "1536M", id="fraction-of-g-is-m"),
        pytest.param(1 << 30, "1G", id="g"),
        pytest.param(3 << 40, "3T", id="t"),
        pytest.param(1 << 50, "1024T", id="no-unit-above-t"),
        pytest.param(SIZE_LIMIT - 1, str(SIZE_LIMIT - 1), id="largest"),
    ],
)
def test_format_size(size: int, expected: str) -> None:
    assert format_size(size) == expected


@settings(max_examples=200)
@given(
    st.one_of(
        st.integers(min_value=0, max_value=SIZE_LIMIT - 1),
        st.builds(
            lambda n, shift: n << shift,
            st.integers(0, 1 << 20),
            st.sampled_from([0, 10, 20, 30, 40]),
        ),
    )
)
@example(2**53 + 1)
@example(SIZE_LIMIT - 1)
def test_format_size_round_trips(size: int) -> None:
    text = format_size(size)
    assert parse_size(text) == size
    assert parse_size(text.lower()) == size


# --- signals -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("SIGTERM", "SIGTERM", id="canonical"),
        pytest.param("TERM", "SIGTERM", id="without-sig"),
        pytest.param("term", "SIGTERM", id="lowercase"),
        pytest.param(" sigkill ", "SIGKILL", id="lowercase-spaced"),
        pytest.param("HUP", "SIGHUP", id="hup"),
        pytest.param("9", "SIGKILL", id="number-text"),
        pytest.param(" 15 ", "SIGTERM", id="number-text-spaced"),
        pytest.param(15, "SIGTERM", id="number"),
        pytest.param(6, "SIGABRT", id="abrt-not-iot"),
        pytest.param(int(signal.SIGCHLD), "SIGCHLD", id="chld-not-cld"),
        pytest.param(int(signal.SIGIO), "SIGIO", id="io-not-poll"),
        pytest.param("SIGIOT", "SIGABRT", id="alias-iot"),
        pytest.param("cld", "SIGCHLD", id="alias-cld"),
        pytest.param("POLL", "SIGIO", id="alias-poll"),
        pytest.param("SIGRTMIN", "SIGRTMIN", id="rtmin"),
        pytest.param("rtmin+3", "SIGRTMIN+3", id="rtmin-plus"),
        pytest.param("SIGRTMIN+0", "SIGRTMIN", id="rtmin-plus-zero"),
        pytest.param("SIGRTMAX-1", f"SIGRTMIN+{RTMAX - 1 - RTMIN}", id="rtmax-minus"),
        pytest.param("SIGRTMAX-0", f"SIGRTMIN+{RTMAX - RTMIN}", id="rtmax-minus-zero"),
        pytest.param("SIGRTMAX", f"SIGRTMIN+{RTMAX - RTMIN}", id="rtmax"),
        pytest.param(RTMIN, "SIGRTMIN", id="rtmin-number"),
        pytest.param(RTMIN + 3, "SIGRTMIN+3", id="rt-number"),
        pytest.param(str(RTMIN + 3), "SIGRTMIN+3", id="rt-number-text"),
        pytest.param(RTMAX, f"SIGRTMIN+{RTMAX - RTMIN}", id="rtmax-number"),
    ],
)
def test_parse_signal(value: object, expected: str) -> None:
    assert parse_signal(value) == expected
    assert parse_signal(expected) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        pytest.param("SIGFOO", "not a signal name", id="unknown"),
        pytest.param("", "not a signal name", id="empty"),
        pytest.param("SIG", "not a signal name", id="sig-only"),
        pytest.param("SIG_DFL", "not a signal name", id="handler-constant"),
        pytest.param("DFL", "not a signal name", id="handler-constant-short"),
        pytest.param("-9", "not a signal name", id="negative-text"),
        pytest.param("SIGRTMIN-1", "not a signal name", id="below-rtmin"),
        pytest.param("SIGRTMAX+1", "not a signal name", id="above-rtmax"),
        pytest.param("SIGRTMIN+99", "not a signal name", id="far-above-rtmin"),
        pytest.param("SIGRTMIN+", "not a signal name", id="rtmin-dangling-plus"),
        pytest.param("\u00b2", "not a signal name", id="superscript-two"),
        pytest.param("\u0669", "not a signal name", id="arabic-indic-nine"),
        pytest.param(VERY_LONG_NUMBER, "signal", id="beyond-int-digit-limit"),
        pytest.param("SIGRTMIN+" + VERY_LONG_NUMBER, "not a signal name", id="long-rt-offset"),
        pytest.param(0, "there is no signal number 0", id="zero"),
        pytest.param(-1, "there is no signal number -1", id="negative"),
        pytest.param(RTMAX + 1, f"there is no signal number {RTMAX + 1}", id="above-rtmax-number"),
        pytest.param(RTMIN - 1, f"there is no signal number {RTMIN - 1}", id="glibc-reserved"),
        pytest.param("0", "there is no signal number 0", id="zero-text"),
        pytest.param(True, "expected a signal, not a boolean", id="boolean"),
        pytest.param(9.0, "expected a signal, not a number", id="float"),
        pytest.param(None, "expected a signal, not nothing", id="none"),
    ],
)
def test_parse_signal_rejects(value: object, message: str) -> None:
    with pytest.raises(ValueSyntaxError) as caught:
        parse_signal(value)
    assert message in caught.value.message
    assert caught.value.accepted == SIGNAL_ACCEPTED


@pytest.mark.parametrize(
    ("name", "number"),
    [
        pytest.param("SIGTERM", 15, id="term"),
        pytest.param("SIGKILL", 9, id="kill"),
        pytest.param("SIGIOT", 6, id="alias"),
        pytest.param("SIGRTMIN", RTMIN, id="rtmin"),
        pytest.param("SIGRTMIN+3", RTMIN + 3, id="rtmin-plus"),
        pytest.param("SIGRTMAX", RTMAX, id="rtmax"),
    ],
)
def test_signal_number(name: str, number: int) -> None:
    assert signal_number(name) == number


VALID_SIGNAL_NUMBERS = sorted({int(s) for s in signal.Signals} | set(range(RTMIN, RTMAX + 1)))


@pytest.mark.parametrize("number", VALID_SIGNAL_NUMBERS)
def test_every_signal_number_round_trips(number: int) -> None:
    name = parse_signal(number)
    assert signal_number(name) == number
    assert parse_signal(name) == name
    assert parse_signal(str(number)) == name
    assert parse_signal(name.removeprefix("SIG").lower()) == name


@pytest.mark.parametrize("name", sorted(signal.Signals.__members__))
def test_every_python_signal_name_is_accepted(name: str) -> None:
    assert signal_number(parse_signal(name)) == signal.Signals[name]


@settings(max_examples=200)
@given(
    st.one_of(
        st.text(max_size=12),
        st.integers(-100, 200),
        st.from_regex(r"SIGRTM(IN|AX)[+-]\d{1,3}", fullmatch=True),
    )
)
def test_parse_signal_accepts_or_explains(value: str | int) -> None:
    try:
        name = parse_signal(value)
    except ValueSyntaxError as error:
        accepted = error.accepted
    else:
        assert parse_signal(name) == name
        assert 1 <= signal_number(name) <= RTMAX
        return
    assert accepted == SIGNAL_ACCEPTED


# --- capabilities --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("NET_ADMIN", "CAP_NET_ADMIN", id="without-prefix"),
        pytest.param("CAP_NET_ADMIN", "CAP_NET_ADMIN", id="canonical"),
        pytest.param("cap_net_admin", "CAP_NET_ADMIN", id="lowercase"),
        pytest.param(" sys_admin\t", "CAP_SYS_ADMIN", id="spaced"),
        pytest.param("checkpoint_restore", "CAP_CHECKPOINT_RESTORE", id="newest"),
        pytest.param("all", "ALL", id="all-lowercase"),
        pytest.param("ALL", "ALL", id="all"),
        pytest.param(" All ", "ALL", id="all-mixed-spaced"),
    ],
)
def test_parse_capability(value: object, expected: str) -> None:
    assert parse_capability(value) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        pytest.param("NET_ADMINX", "not a Linux capability", id="misspelt"),
        pytest.param("CAP_ALL", "not a Linux capability", id="cap-all"),
        pytest.param("", "not a Linux capability", id="empty"),
        pytest.param("CAP_", "not a Linux capability", id="prefix-only"),
        pytest.param("NET ADMIN", "not a Linux capability", id="space-inside"),
        pytest.param(12, "expected a capability name, not a whole number", id="number"),
        pytest.param(None, "expected a capability name, not nothing", id="none"),
        pytest.param(["NET_ADMIN"], "expected a capability name, not an array", id="array"),
    ],
)
def test_parse_capability_rejects(value: object, message: str) -> None:
    with pytest.raises(ValueSyntaxError) as caught:
        parse_capability(value)
    assert caught.value.message == message
    assert caught.value.accepted == CAPABILITY_ACCEPTED


def test_capability_set_is_the_linux_set() -> None:
    assert len(CAPABILITIES) == 41
    assert all(name.startswith("CAP_") and name.isupper() for name in CAPABILITIES)
    for name in CAPABILITIES:
        assert parse_capability(name) == name
        assert parse_capability(name.removeprefix("CAP_").lower()) == name


# --- published ports -----------------------------------------------------------------------------


def tcp(host: int, container: int, ip: str | None = None) -> PortMapping:
    return PortMapping(host_port=host, container_port=container, protocol="tcp", host_ip=ip)


def udp(host: int, container: int, ip: str | None = None) -> PortMapping:
    return PortMapping(host_port=host, container_port=container, protocol="udp", host_ip=ip)


@pytest.mark.parametrize(
    ("value", "text", "mappings"),
    [
        pytest.param("8080:80", "8080:80", [tcp(8080, 80)], id="host-container"),
        pytest.param("8080:80/tcp", "8080:80", [tcp(8080, 80)], id="explicit-tcp-dropped"),
        pytest.param("8080:80/TCP", "8080:80", [tcp(8080, 80)], id="uppercase-tcp"),
        pytest.param("53:53/udp", "53:53/udp", [udp(53, 53)], id="udp"),
        pytest.param("53:53/UDP", "53:53/udp", [udp(53, 53)], id="uppercase-udp"),
        pytest.param(" 80:80 ", "80:80", [tcp(80, 80)], id="surrounding-space"),
        pytest.param("1:65535", "1:65535", [tcp(1, 65535)], id="port-bounds"),
        pytest.param(
            "127.0.0.1:53:53/udp",
            "127.0.0.1:53:53/udp",
            [udp(53, 53, "127.0.0.1")],
            id="ipv4-host",
        ),
        pytest.param("0.0.0.0:80:80", "80:80", [tcp(80, 80)], id="ipv4-any-is-none"),
        pytest.param(
            "[::1]:8443:443", "[::1]:8443:443", [tcp(8443, 443, "::1")], id="ipv6-loopback"
        ),
        pytest.param("[::]:80:80", "80:80", [tcp(80, 80)], id="ipv6-any-is-none"),
        pytest.param(
            "[0:0:0:0:0:0:0:1]:80:80",
            "[::1]:80:80",
            [tcp(80, 80, "::1")],
            id="ipv6-long-form-compressed-in-mapping",
        ),
        pytest.param(
            "[FE80::1]:80:80", "[fe80::1]:80:80", [tcp(80, 80, "fe80::1")], id="ipv6-uppercase"
        ),
        pytest.param(
            "[10.0.0.1]:80:80", "10.0.0.1:80:80", [tcp(80, 80, "10.0.0.1")], id="bracketed-ipv4"
        ),
        pytest.param(
            "8000-8002:9000-9002",
            "8000-8002:9000-9002",
            [tcp(8000, 9000), tcp(8001, 9001), tcp(8002, 9002)],
            id="range",
        ),
        pytest.param(
            "10.0.0.1:7000-7001:7000-7001/udp",
            "10.0.0.1:7000-7001:7000-7001/udp",
            [udp(7000, 7000, "10.0.0.1"), udp(7001, 7001, "10.0.0.1")],
            id="range-with-ip-udp",
        ),
        pytest.param("5-5:6-6", "5-5:6-6", [tcp(5, 6)], id="one-port-range"),
    ],
)
def test_parse_port_spec(value: str, text: str, mappings: list[PortMapping]) -> None:
    spec = parse_port_spec(value)
    assert spec == PortSpec(text=text, mappings=tuple(mappings))
    assert str(spec) == text


@pytest.mark.parametrize(
    ("value", "message"),
    [
        pytest.param("80", "name the host port too; quay does not pick random", id="one-port"),
        pytest.param("80/udp", "name the host port too", id="one-port-proto"),
        pytest.param("", "not a port mapping", id="empty"),
        pytest.param("http:80", "not a port mapping", id="named-port"),
        pytest.param("80:80/", "not a port mapping", id="empty-proto"),
        pytest.param("80:80:80:80", "not a port mapping", id="too-many-parts"),
        pytest.param("localhost:80:80", "not a port mapping", id="host-name"),
        pytest.param("::1:80:80", "not a port mapping", id="ipv6-without-brackets"),
        pytest.param("[::g]:80:80", "not a port mapping", id="ipv6-bad-char"),
        pytest.param("80 :80", "not a port mapping", id="space-inside"),
        pytest.param("-80:80", "not a port mapping", id="negative"),
        pytest.param("\u0668\u0660:\u0668\u0660", "not a port mapping", id="arabic-indic-digits"),
        pytest.param("80:80/sctp", "unknown protocol 'sctp'", id="sctp"),
        pytest.param("0:80", "port 0 is outside 1-65535", id="port-zero"),
        pytest.param("80:65536", "port 65536 is outside 1-65535", id="port-too-high"),
        pytest.param("65535-65536:1-2", "port 65536 is outside 1-65535", id="range-end-too-high"),
        pytest.param(VERY_LONG_NUMBER + ":80", "is outside 1-65535", id="beyond-int-digit-limit"),
        pytest.param("8002-8000:9002-9000", "the range 8002-8000 runs backwards", id="backwards"),
        pytest.param(
            "8000-8002:9000", "the host and container ranges must have the same length", id="1-3"
        ),
        pytest.param("8000-8001:9000-9002", "same length", id="2-3"),
        pytest.param("1.2.3:80:80", "'1.2.3' is not an IP address", id="short-ipv4"),
        pytest.param("256.0.0.1:80:80", "'256.0.0.1' is not an IP address", id="ipv4-octet"),
        pytest.param("[1::2::3]:80:80", "'[1::2::3]' is not an IP address", id="ipv6-two-gaps"),
        pytest.param(8080, "expected a string, not a whole number", id="number"),
        pytest.param(None, "expected a string, not nothing", id="none"),
        pytest.param({"host": 80}, "expected a string, not a table", id="table"),
    ],
)
def test_parse_port_spec_rejects(value: object, message: str) -> None:
    with pytest.raises(ValueSyntaxError) as caught:
        parse_port_spec(value)
    assert message in caught.value.message
    assert caught.value.accepted == PORT_ACCEPTED


@pytest.mark.parametrize(
    ("mapping", "text"),
    [
        pytest.param(tcp(80, 8080), "80:8080", id="tcp"),
        pytest.param(udp(53, 53), "53:53/udp", id="udp"),
        pytest.param(tcp(80, 80, "10.1.2.3"), "10.1.2.3:80:80", id="ipv4"),
        pytest.param(udp(80, 80, "fe80::1"), "[fe80::1]:80:80/udp", id="ipv6-udp"),
    ],
)
def test_port_mapping_str_parses_back(mapping: PortMapping, text: str) -> None:
    assert str(mapping) == text
    assert parse_port_spec(text).mappings == (mapping,)


@pytest.mark.parametrize(
    ("first", "second", "conflict"),
    [
        pytest.param(tcp(80, 80), tcp(80, 8080), True, id="same-port-any-address"),
        pytest.param(tcp(80, 80), tcp(80, 80, "10.0.0.1"), True, id="any-covers-specific"),
        pytest.param(tcp(80, 80, "10.0.0.1"), tcp(80, 81, "10.0.0.1"), True, id="same-address"),
        pytest.param(tcp(80, 80, "::1"), tcp(80, 80, "::1"), True, id="same-ipv6"),
        pytest.param(tcp(80, 80, "10.0.0.1"), tcp(80, 80, "10.0.0.2"), False, id="other-address"),
        pytest.param(tcp(80, 80, "127.0.0.1"), tcp(80, 80, "::1"), False, id="v4-and-v6"),
        pytest.param(tcp(53, 53), udp(53, 53), False, id="other-protocol"),
        pytest.param(tcp(80, 80), tcp(81, 80), False, id="other-host-port"),
        pytest.param(udp(53, 53), udp(53, 5353), True, id="udp-same-port"),
    ],
)
def test_conflicts_with(first: PortMapping, second: PortMapping, conflict: bool) -> None:
    assert first.conflicts_with(second) is conflict
    assert second.conflicts_with(first) is conflict
    assert first.conflicts_with(first)


host_ips = st.one_of(
    st.none(),
    st.just("0.0.0.0"),
    st.just("[::]"),
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(lambda address: f"[{address}]"),
    st.ip_addresses(v=6).map(lambda address: f"[{address.exploded}]"),
)


@st.composite
def port_spec_texts(draw: st.DrawFn) -> str:
    length = draw(st.integers(1, 4))
    host = draw(st.integers(1, 65536 - length))
    container = draw(st.integers(1, 65536 - length))
    as_range = length > 1 or draw(st.booleans())

    def ports(start: int) -> str:
        return f"{start}-{start + length - 1}" if as_range else str(start)

    text = f"{ports(host)}:{ports(container)}"
    ip = draw(host_ips)
    if ip is not None:
        text = f"{ip}:{text}"
    return text + draw(st.sampled_from(["", "/tcp", "/udp", "/TCP", "/Udp"]))


@settings(max_examples=200)
@given(port_spec_texts())
def test_port_spec_round_trips(text: str) -> None:
    spec = parse_port_spec(text)
    again = parse_port_spec(str(spec))
    assert again.mappings == spec.mappings
    assert str(again) == str(spec)
    for mapping in spec.mappings:
        assert parse_port_spec(str(mapping)).mappings == (mapping,)
        if mapping.host_ip is not None:
            address = ipaddress.ip_address(mapping.host_ip)
            assert str(address) == mapping.host_ip
            assert not address.is_unspecified
    assert len({(m.host_port, m.container_port) for m in spec.mappings}) == len(spec.mappings)


# --- any input -----------------------------------------------------------------------------------

PARSERS = [parse_duration, parse_size, parse_signal, parse_capability, parse_port_spec]


@settings(max_examples=200)
@given(
    st.sampled_from(PARSERS),
    st.one_of(
        st.text(max_size=20),
        st.text(alphabet="0123456789.:-/[]kmgtKMGTsmhdib udpSIGRTMAX+", max_size=20),
        st.integers(),
        st.floats(),
        st.none(),
        st.booleans(),
        st.lists(st.integers(), max_size=2),
    ),
)
def test_parsers_only_raise_value_syntax_errors(
    parser: Callable[[object], object], value: object
) -> None:
    try:
        parser(value)
    except ValueSyntaxError as error:
        explained = (error.message, error.accepted)
    else:
        return
    assert all(explained)


# --- kinds ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param(True, "a boolean", id="bool"),
        pytest.param(False, "a boolean", id="false"),
        pytest.param(0, "a whole number", id="int"),
        pytest.param(1.5, "a number", id="float"),
        pytest.param("x", "a string", id="str"),
        pytest.param("", "a string", id="empty-str"),
        pytest.param([], "an array", id="list"),
        pytest.param({}, "a table", id="dict"),
        pytest.param(None, "nothing", id="none"),
        pytest.param(date(2024, 1, 1), "a date or time", id="date"),
        pytest.param(time(12, 0), "a date or time", id="time"),
        pytest.param(datetime(2024, 1, 1, 12, 0), "a date or time", id="datetime"),
    ],
)
def test_kind_of(value: object, expected: str) -> None:
    assert kind_of(value) == expected
