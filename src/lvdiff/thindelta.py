"""Run ``thin_delta`` and parse its XML as a stream.

Both generations of thin-provisioning-tools are supported: 0.9 (C++) and
1.x (Rust).  Their outputs differ in attribute order, an optional ``flags``
attribute, and whether ranges come bare (``<same begin= length=/>``) or
grouped (``<same><range .../></same>`` with ``--verbose``).  The parser
accepts all of these and keeps only one range in memory at a time, because a
fragmented multi-terabyte volume can produce millions of ranges.

Units in the output are pool chunks (``data_block_size`` 512-byte sectors);
``left`` is ``--snap1``.
"""

from __future__ import annotations

import enum
import re
import subprocess
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from xml.parsers import expat

from .errors import CommandFailed, UsageError


class Delta(enum.Enum):
    """How a run of chunks compares between --snap1 (left) and --snap2 (right).

    The element names of thin_delta's output, as thin-provisioning-tools'
    own ``Delta`` enum names them.
    """

    SAME = "same"  # both map the same data blocks
    DIFFERENT = "different"  # both map it, to different blocks
    LEFT_ONLY = "left_only"  # only --snap1 maps it
    RIGHT_ONLY = "right_only"  # only --snap2 maps it

    @property
    def in_left(self) -> bool:
        return self is not Delta.RIGHT_ONLY

    @property
    def in_right(self) -> bool:
        return self is not Delta.LEFT_ONLY


_KINDS = {d.value: d for d in Delta}

# 1.0.0 ignores -m and reads the live metadata; up to 1.0.5 changed blocks are
# reported as "same".  Either would silently lose data.
_BROKEN = ((1, 0, 0), (1, 0, 5))


@dataclass(frozen=True)
class DeltaRange:
    """A run of pool chunks ``[begin, begin+length)`` in one of the four kinds."""

    kind: Delta
    begin: int
    length: int

    @property
    def end(self) -> int:
        return self.begin + self.length


@dataclass(frozen=True)
class Superblock:
    data_block_size: int  # sectors of 512 bytes
    transaction: int
    left: int
    right: int

    @property
    def chunk_bytes(self) -> int:
        return self.data_block_size * 512


class DeltaParseError(Exception):
    pass


def parse_version(text: str) -> tuple[int, int, int]:
    m = re.search(r"(\d+)\.(\d+)\.(\d+)", text)
    if not m:
        raise UsageError(f"cannot tell the version of thin_delta from {text.strip()!r}")
    return int(m[1]), int(m[2]), int(m[3])


def check_version(thin_delta: str = "thin_delta") -> tuple[int, int, int]:
    """Refuse thin-provisioning-tools releases whose thin_delta loses data."""
    try:
        proc = subprocess.run([thin_delta, "--version"], capture_output=True, check=False)
    except FileNotFoundError:
        raise UsageError(f"{thin_delta} not found: install thin-provisioning-tools") from None
    version = parse_version(proc.stdout.decode(errors="replace") or proc.stderr.decode())
    if _BROKEN[0] <= version <= _BROKEN[1]:
        raise UsageError(
            f"thin_delta {'.'.join(map(str, version))} is unsafe (thin-provisioning-tools "
            "1.0.0 to 1.0.5 ignore -m or report changed blocks as unchanged); "
            "use 0.9.x or 1.0.6 and later"
        )
    return version


class DeltaStream:
    """Incremental parser over chunks of thin_delta's XML output.

    ``superblock`` is available once the opening ``<diff>`` has been seen;
    ``ranges()`` yields each range in ascending order and checks that order,
    which later stages rely on.  expat's callbacks collect the ranges of one
    chunk of input at a time, so memory stays flat however long the output,
    and a range costs about a microsecond, not an element tree's worth.
    """

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self._parser = expat.ParserCreate()
        self._parser.buffer_text = True
        self._parser.StartElementHandler = self._start
        self._parser.EndElementHandler = self._end
        self._sb_attrs: dict[str, str] | None = None
        self.superblock: Superblock | None = None
        self._group: Delta | None = None
        self._got: list[tuple[Delta, dict[str, str]]] = []
        self._done = False
        while self.superblock is None:
            if not self._feed():
                raise DeltaParseError("thin_delta output has no <superblock>/<diff>")

    def _feed(self) -> bool:
        """Parse one more chunk of input; False at its end."""
        if self._done:
            return False
        chunk = next(self._chunks, None)
        try:
            if chunk is None:
                self._done = True
                self._parser.Parse(b"", True)
            else:
                self._parser.Parse(chunk, False)
        except expat.ExpatError as e:
            raise DeltaParseError(f"thin_delta output is not valid XML: {e}") from None
        return True

    def _start(self, tag: str, attrs: dict[str, str]) -> None:
        kind = _KINDS.get(tag)
        if kind is not None:
            if "begin" in attrs:
                self._got.append((kind, attrs))
            else:  # --verbose: <same><range .../></same>
                self._group = kind
        elif tag == "range" and self._group is not None:
            self._got.append((self._group, attrs))
        elif tag == "superblock":
            self._sb_attrs = attrs
        elif tag == "diff":
            sb = self._sb_attrs or {}
            try:
                self.superblock = Superblock(
                    data_block_size=int(sb["data_block_size"]),
                    transaction=int(sb.get("transaction", -1)),
                    left=int(attrs["left"]),
                    right=int(attrs["right"]),
                )
            except (KeyError, ValueError) as e:
                raise DeltaParseError(f"thin_delta header lacks {e}") from None

    def _end(self, tag: str) -> None:
        if tag in _KINDS:
            self._group = None

    def ranges(self) -> Iterator[DeltaRange]:
        last_end = 0
        while True:
            got, self._got = self._got, []
            for kind, attrs in got:
                try:
                    r = DeltaRange(kind, int(attrs["begin"]), int(attrs["length"]))
                except (KeyError, ValueError):
                    raise DeltaParseError(f"bad thin_delta range {attrs}") from None
                if r.begin < last_end or r.length <= 0:
                    raise DeltaParseError(
                        f"thin_delta ranges out of order or empty at chunk {r.begin}"
                    )
                last_end = r.end
                yield r
            if not self._got and not self._feed():
                return


@contextmanager
def thin_delta(tool: str, metadata_dev: str, snap1: int, snap2: int) -> Iterator[DeltaStream]:
    """``thin_delta -m`` on a reserved metadata snapshot, as a DeltaStream.

    The process's exit status is checked when the block ends, so a tool that
    fails half-way through its output fails the caller too (an lvdiff stream
    then gets no END record).  ``-m`` goes first and bare: 0.9 only accepts it
    bare or as ``-m123``, and 1.x would take a following positional argument
    as its block number.
    """
    argv = [tool, "-m", "--snap1", str(snap1), "--snap2", str(snap2), metadata_dev]
    try:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    except FileNotFoundError:
        raise UsageError(f"{tool} not found: install thin-provisioning-tools") from None
    assert proc.stdout is not None
    out = proc.stdout
    try:
        try:
            yield DeltaStream(iter(lambda: out.read(1 << 16), b""))
        except DeltaParseError as e:
            proc.kill()
            _, err = proc.communicate()
            msg = f"{err.decode(errors='replace')} {e}"
            raise CommandFailed(argv, proc.returncode, msg) from None
        _, err = proc.communicate()
        if proc.returncode != 0:
            raise CommandFailed(argv, proc.returncode, err.decode(errors="replace"))
    finally:
        if proc.returncode is None:
            proc.kill()
            proc.communicate()
