"""A network link between the edge and the server: ``--link`` specs, typed.

Two kinds, one interface (``Link.up`` / ``Link.down``, each a channel with
``transfer_seconds(nbytes, start)``, and the round-trip time ``rtt``):

- a constant link ``UP[/DOWN][@RTT]``: rates in kbit, mbit or gbit per second (decimal:
  1mbit = 10^6 bit/s), RTT in ms or s; DOWN defaults to UP, RTT to 0. ``1mbit@50ms``,
  ``10mbit/50mbit@20ms``. Sending n bytes takes 8·n / rate, whenever it starts.
- a recorded trace ``trace:UP_FILE[,DOWN_FILE][@RTT]`` in mahimahi's format: one line per
  1500-byte delivery opportunity, its time in milliseconds since the trace's start (several
  lines may share a millisecond; the lines do not decrease). The trace repeats with a period of
  its last timestamp, as mahimahi replays it. Sending n bytes from time t takes until the
  ceil(n / 1500)-th opportunity at or after t (0 bytes: no time). DOWN_FILE defaults to UP_FILE.

Only the transmission is here; the propagation delay (RTT/2 per message) is added where a
sample's latency is defined (``collab_eval.analysis.latency``).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PACKET_BYTES = 1500  # one mahimahi delivery opportunity
RATE_UNITS = {"kbit": 1e3, "mbit": 1e6, "gbit": 1e9}  # bits per second
TIME_UNITS = {"ms": 1e-3, "s": 1.0}
NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"
RATE = re.compile(rf"^([+-]?{NUMBER})\s*(kbit|mbit|gbit)$", re.IGNORECASE)  # signed: "-1mbit" is said negative
MAX_TIMESTAMP_MS = 10 ** 15  # a trace timestamp beyond ~31,700 years is no trace (and overflows numpy's int64 sums)
DURATION = re.compile(rf"^({NUMBER})\s*(ms|s)$", re.IGNORECASE)
FORMAT = ("expected UP[/DOWN][@RTT] (rates in kbit, mbit or gbit per second, RTT in ms or s: 1mbit@50ms, "
          "10mbit/50mbit@20ms) or trace:UP_FILE[,DOWN_FILE][@RTT] (mahimahi traces)")


class LinkError(ValueError):
    """A ``--link`` spec that is not one, or a trace that cannot be read: says which and why."""


@dataclass(frozen=True)
class ConstantRate:
    """A channel of constant rate."""
    bits_per_second: float

    def transfer_seconds(self, nbytes: int, start: float = 0.0) -> float:
        return 8 * nbytes / self.bits_per_second

    def describe(self) -> str:
        return rate_text(self.bits_per_second)


@dataclass(frozen=True)
class Trace:
    """A mahimahi trace: delivery opportunities (ms, sorted) repeating every ``period_ms``."""
    path: str
    opportunities_ms: tuple[int, ...]

    @property
    def period_ms(self) -> int:
        return self.opportunities_ms[-1]

    @property
    def length_seconds(self) -> float:
        return self.period_ms / 1000

    def transfer_seconds(self, nbytes: int, start: float = 0.0) -> float:
        """Seconds from ``start`` (seconds on the trace's clock, any value: the trace wraps) until
        the last of the ceil(nbytes / 1500) opportunities at or after ``start`` that carry them."""
        packets = math.ceil(nbytes / PACKET_BYTES)
        if packets <= 0:
            return 0.0
        opportunities = np.asarray(self.opportunities_ms, dtype=np.int64)
        period, count = self.period_ms, len(opportunities)
        start_ms = start * 1000
        # The unrolled trace: opportunity g is at opportunities[g % count] + (g // count) * period, in
        # time order (the last of a pass, at the period, comes no later than the next pass's first).
        # The first one at or after the start lies within three passes from the one before the start's.
        base = max(math.floor(start_ms / period) - 1, 0)
        window = np.concatenate([opportunities + (base + k) * period for k in range(3)])
        first = base * count + int(np.searchsorted(window, start_ms, side="left"))
        wraps, index = divmod(first + packets - 1, count)
        done_ms = wraps * period + int(opportunities[index])
        return (done_ms - start_ms) / 1000

    def mean_bits_per_second(self) -> float:
        return 8 * PACKET_BYTES * len(self.opportunities_ms) / self.length_seconds

    def describe(self) -> str:
        return (f"trace {self.path} ({len(self.opportunities_ms)} opportunities over {self.length_seconds:g} s, "
                f"mean {rate_text(self.mean_bits_per_second())})")


Channel = ConstantRate | Trace


@dataclass(frozen=True)
class Link:
    """One link profile: the edge-to-server (up) and server-to-edge (down) channels and the RTT."""
    spec: str  # as the user wrote it: the profile's name in the report and summary.json
    up: Channel
    down: Channel
    rtt: float = 0.0  # seconds

    @property
    def is_trace(self) -> bool:
        return isinstance(self.up, Trace) or isinstance(self.down, Trace)

    @property
    def trace_length(self) -> float:
        """Seconds of the up trace (else of the down trace) over which samples are spread; 0 for a constant link."""
        for channel in (self.up, self.down):
            if isinstance(channel, Trace):
                return channel.length_seconds
        return 0.0

    def describe(self) -> str:
        return f"up {self.up.describe()}, down {self.down.describe()}, RTT {self.rtt * 1000:g} ms"


def rate_text(bits_per_second: float) -> str:
    for unit, scale in (("gbit/s", 1e9), ("mbit/s", 1e6), ("kbit/s", 1e3)):
        if bits_per_second >= scale:
            return f"{bits_per_second / scale:g} {unit}"
    return f"{bits_per_second:g} bit/s"


def parse_rate(text: str, spec: str) -> float:
    match = RATE.match(text.strip())
    if not match:
        raise LinkError(f"--link {spec!r}: {text!r} is not a rate (a number with kbit, mbit or gbit: 1mbit, 2.5mbit); "
                        f"{FORMAT}")
    value = float(match[1]) * RATE_UNITS[match[2].lower()]
    if not math.isfinite(value):
        raise LinkError(f"--link {spec!r}: the rate {text!r} is not finite (it overflows a float); "
                        "a rate must be a finite positive number")
    if not value > 0:
        raise LinkError(f"--link {spec!r}: the rate {text!r} must be positive")
    return value


def parse_duration(text: str, spec: str) -> float:
    match = DURATION.match(text.strip())
    if not match:
        raise LinkError(f"--link {spec!r}: {text!r} is not a round-trip time (a number with ms or s: 50ms, 0.2s); "
                        f"{FORMAT}")
    value = float(match[1]) * TIME_UNITS[match[2].lower()]
    if not math.isfinite(value):
        raise LinkError(f"--link {spec!r}: the round-trip time {text!r} must be finite")
    return value


def read_trace(path: str, spec: str) -> Trace:
    """A mahimahi trace file; a LinkError naming the file (and line) when it is not one."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise LinkError(f"--link {spec!r}: cannot read the trace {path}: {err.strerror or err}") from None
    except UnicodeDecodeError:
        raise LinkError(f"--link {spec!r}: the trace {path} is not a text file (expected mahimahi's format: one "
                        "millisecond timestamp per line)") from None
    times: list[int] = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line:
            raise LinkError(f"--link {spec!r}: {path} line {number} is empty (mahimahi's format: one whole number "
                            "of milliseconds per line, no blank lines)")
        if not (line.isascii() and line.isdigit()):
            raise LinkError(f"--link {spec!r}: {path} line {number}: {line[:40]!r} is not a whole number of "
                            "milliseconds (mahimahi's format: one timestamp per line)")
        value = int(line)
        if value > MAX_TIMESTAMP_MS:
            raise LinkError(f"--link {spec!r}: {path} line {number}: {line[:40]} ms is too large (at most "
                            f"{MAX_TIMESTAMP_MS} ms)")
        if times and value < times[-1]:
            raise LinkError(f"--link {spec!r}: {path} line {number}: {value} ms comes after {times[-1]} ms "
                            "(timestamps must not decrease)")
        times.append(value)
    if not times:
        raise LinkError(f"--link {spec!r}: the trace {path} has no delivery opportunity (it is empty)")
    if times[-1] <= 0:
        raise LinkError(f"--link {spec!r}: the trace {path} ends at {times[-1]} ms; its last timestamp is its "
                        "period and must be positive")
    return Trace(str(path), tuple(times))


def parse_link(spec: str) -> Link:
    """A ``--link`` value as a Link; a LinkError saying what is wrong otherwise."""
    text = spec.strip()
    if not text:
        raise LinkError(f"--link {spec!r}: empty; {FORMAT}")
    body, rtt = text, 0.0
    at = text.rfind("@")
    if at >= 0 and not (text.lower().startswith("trace:") and not DURATION.match(text[at + 1:].strip())):
        body, rtt = text[:at], parse_duration(text[at + 1:], spec)
    if rtt < 0:
        raise LinkError(f"--link {spec!r}: the round-trip time must not be negative")
    if body.lower().startswith("trace:"):
        files = body[len("trace:"):].split(",")
        if not 1 <= len(files) <= 2 or not all(f.strip() for f in files):
            raise LinkError(f"--link {spec!r}: expected trace:UP_FILE[,DOWN_FILE][@RTT]")
        up = read_trace(files[0].strip(), spec)
        down = read_trace(files[1].strip(), spec) if len(files) == 2 else up
        return Link(spec, up, down, rtt)
    rates = body.split("/")
    if len(rates) > 2 or not all(r.strip() for r in rates):
        raise LinkError(f"--link {spec!r}: {FORMAT}")
    up = parse_rate(rates[0], spec)
    down = parse_rate(rates[1], spec) if len(rates) == 2 else up
    return Link(spec, ConstantRate(up), ConstantRate(down), rtt)
