#!/usr/bin/env python3
"""lvdiff's benchmark: our pipelines against the standard tools, on the same bytes, in one run.

What it drives is the real code: lvdiff's read/compress/write path
(``lvdiff.dump.send`` into a ``StreamWriter``) and lvpatch's
read/check/decompress/write path (``lvdiff.apply_records.write_records`` through a
``ChunkWriter``), over files, each in a child process so its peak RSS is
its own.  Every figure is a ratio against a standard pipeline timed in the
same run on the same bytes (ours / theirs: higher is better), with MiB/s.
Caches are dropped before every timed run when we are root, so both sides
read from the disk.  Nothing here asserts a time: it prints figures.

usage: bench.py [--size MIB] [--ranges N] [--quick] [--json FILE] [--dir DIR] [--s3]
                [--only pipelines,scale,repository,s3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shlex
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

M = 1 << 20
BLOCK = 4 * M
CHUNK = 64 * 1024
# text-like: letters, spaces and newlines at roughly English frequencies
_LETTERS = (
    b"eeeeeeeeeeeetttttttttaaaaaaaaooooooooiiiiiiinnnnnnnsssssshhhhhhrrrrrr"
    b"ddddlllluuucccmmmwwffggyyppbbvkjxqz"
)
_TEXT = bytes((_LETTERS + b"          \n")[i % (len(_LETTERS) + 11)] for i in range(256))


def make_source(path: Path, size: int) -> dict[str, int]:
    """A file of 4 MiB blocks, in turn incompressible, text-like and all zeros."""
    kinds = {"random": 0, "text": 0, "zeros": 0}
    with open(path, "wb") as f:
        for i in range(0, size, BLOCK):
            n = min(BLOCK, size - i)
            kind = ("random", "text", "zeros")[(i // BLOCK) % 3]
            if kind == "random":
                f.write(os.urandom(n))
            elif kind == "text":
                f.write(os.urandom(n).translate(_TEXT))
            else:
                f.seek(n, 1)
            kinds[kind] += n
        f.truncate(size)
    return kinds


COLD = True  # drop the page cache before each timed run (root only)
RUNS = 5  # each side of each comparison runs this often, in turn; the medians are compared


def drop_caches() -> None:
    os.sync()
    if COLD and os.geteuid() == 0:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")


def timed(argv: list[str]) -> tuple[float, str]:
    """Seconds one child process takes (from cold caches), and what it printed."""
    drop_caches()
    start = time.perf_counter()
    proc = subprocess.run(argv, stdout=subprocess.PIPE, text=True, check=False)
    took = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"bench: {shlex.join(argv)} failed")
    return took, proc.stdout


def shell(cmd: str) -> float:
    return timed(["bash", "-o", "pipefail", "-c", cmd])[0]


def ours(*args: str) -> tuple[float, int, float]:
    """Seconds of the data path, peak RSS in KiB (VmHWM: since exec), seconds of the process.

    The child times its data path itself, from after its imports (before it
    opens its input) to after its output is flushed: Python's start and imports
    are a fixed cost per run (about 0.2 s here), which the process time includes.
    """
    took, out = timed([sys.executable, __file__, *args])
    work = float(out.split("WORK")[-1].split()[0])
    return work, int(out.split("VmHWM")[-1].split()[0]), took


def peak_rss_report(started: float) -> None:
    """Print the data path's time, and this process's peak RSS (ru_maxrss would count the fork)."""
    print("WORK", time.perf_counter() - started, flush=True)
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                print("VmHWM", line.split()[1], flush=True)


def median(got: list):  # noqa: ANN201 - a tiny helper
    """The median measurement (time first, for tuples)."""
    got = sorted(got, key=lambda r: r[0] if isinstance(r, tuple) else r)
    return got[len(got) // 2]


def interleaved(runs: int, theirs, ours):  # noqa: ANN001, ANN201 - a tiny helper
    """Medians of ``runs`` measurements of each side, taken in turn.

    This machine's virtual disk changes speed by 2x and more from one minute
    to the next; alternating the two sides exposes both to the same phases,
    where timing all of one side and then all of the other would not.
    """
    a, b = [], []
    for _ in range(runs):
        a.append(theirs())
        b.append(ours())
    return median(a), median(b)


# ---------------------------------------------------------------- the pipelines, in a child


def child_dump(
    src: str,
    out: str,
    level: str,
    workers: str,
    extents_file: str = "",
    report: bool = True,
    digest: str = "sha256",
) -> None:
    """lvdiff's data path: read, detect zeros, compress, frame, hash, write.

    ``digest`` is lvdiff's --digest: sha256 (its default) digests the output
    as the command does, in a helper thread; xxh128 is the stream's own.
    """
    from lvdiff.blockdev import BlockDevice
    from lvdiff.dump import DumpOptions, send
    from lvdiff.plan import plan
    from lvdiff.spool import RangeSpool
    from lvdiff.stream import Digest, HashingWriter
    from lvdiff.thindelta import Delta, DeltaRange, DeltaStream

    started = time.perf_counter()  # imports are part of Python's start

    opt = DumpOptions(zstd_level=None if level == "none" else int(level), workers=int(workers))
    with BlockDevice(src) as dev, open(out, "wb") as raw:
        f = HashingWriter(raw, Digest.SHA256) if digest == "sha256" else raw
        if extents_file:  # a synthetic thin_delta output, parsed and spooled as lvdiff does
            with open(extents_file, "rb") as x:
                delta = DeltaStream(iter(lambda: x.read(1 << 16), b""))
                ranges = RangeSpool(delta.ranges())
        else:
            ranges = RangeSpool([DeltaRange(Delta.SAME, 0, -(-dev.size // CHUNK))])
        w = _writer(f, dev.size)
        send(plan(ranges, CHUNK, dev.size, None), dev, w, opt)
        w.close()
        f.flush()
        if isinstance(f, HashingWriter):
            f.digest()  # the line lvdiff prints waits for it
        if out != os.devnull:
            os.fsync(raw.fileno())
    if report:
        peak_rss_report(started)


def child_patch(stream: str, target: str, workers: str, digest: str = "sha256") -> None:
    """lvpatch's data path: read, check, decompress, write, flush; digest as --digest does."""
    from lvdiff.apply_records import write_records
    from lvdiff.blockdev import BlockDevice
    from lvdiff.chunk_writer import ChunkWriter, TargetKind
    from lvdiff.stream import Digest, StreamReader

    started = time.perf_counter()  # imports are part of Python's start

    with open(stream, "rb") as f, BlockDevice(target, writable=True, direct_writes=True) as dev:
        reader = StreamReader(f, Digest(digest))
        writer = ChunkWriter(dev, TargetKind(4096, thin=False, fresh=True))  # a new sparse file
        write_records(reader, writer, workers=int(workers))
        writer.finish()
        dev.sync()
    peak_rss_report(started)


def child_preads(src: str, extents_file: str) -> None:
    """The device's own random-read speed: one pread per range, in order, nothing else."""
    import re

    started = time.perf_counter()
    with open(extents_file, "rb") as x:
        spans = [
            (int(b), int(n)) for b, n in re.findall(rb'begin="(\d+)" length="(\d+)"', x.read())
        ]
    fd = os.open(src, os.O_RDONLY)
    try:
        for begin, n in spans:
            os.pread(fd, n * CHUNK, begin * CHUNK)
    finally:
        os.close(fd)
    peak_rss_report(started)


def _writer(f, size: int):  # noqa: ANN001 - a file, or a HashingWriter around one
    from lvdiff.stream import Header, StreamWriter, VolumeRef

    h = Header(
        kind="full",
        volume_size=size,
        chunk_size=CHUNK,
        vg="bench",
        pool="pool",
        transaction_id=0,
        new=VolumeRef("bench", "bench", 1, "bench"),
        compression="zstd",
        detect_level=0,
    )
    return StreamWriter(f, h)


# ---------------------------------------------------------------- the comparisons


def row(
    name: str, size: int, ours: tuple[float, int, float], theirs_s: float, baseline: str
) -> dict:
    ours_s, rss_kib, process_s = ours
    r = {
        "name": name,
        "baseline": baseline,
        "ours_mib_s": round(size / M / ours_s, 1),
        "theirs_mib_s": round(size / M / theirs_s, 1),
        "ratio": round(theirs_s / ours_s, 3),
        "ratio_whole_process": round(theirs_s / process_s, 3),
        "start_s": round(process_s - ours_s, 3),
        "peak_rss_mib": round(rss_kib / 1024, 1),
    }
    print(
        f"  {name:<40} {r['ours_mib_s']:>8.1f} MiB/s vs {r['theirs_mib_s']:>8.1f}  "
        f"ratio {r['ratio']:>5.2f} ({r['ratio_whole_process']:.2f} with Python's start, "
        f"{r['start_s']:.2f} s)  rss {r['peak_rss_mib']:>6.1f} MiB   ({baseline})",
        flush=True,
    )
    return r


def pipelines(work: Path, size: int, workers: int) -> list[dict]:
    src = work / "source"
    mix = make_source(src, size)
    print(
        f"== pipelines on {size // M} MiB: "
        + ", ".join(f"{k} {v // M} MiB" for k, v in mix.items())
        + f"; {workers} workers",
        flush=True,
    )
    rows = []
    q = shlex.quote
    streams = {level: work / f"stream-{level}" for level in ("3", "none")}
    for level, path in streams.items():  # lvpatch's inputs, made untimed
        child_dump(str(src), str(path), level, str(workers), report=False, digest="xxh128")
    zst = work / "source.zst"
    subprocess.run(["zstd", "-3", "-T0", "-q", "-f", str(src), "-o", str(zst)], check=True)
    target = work / "target"

    def into_fresh_target(measure):  # noqa: ANN001, ANN202
        def run():  # noqa: ANN202
            target.unlink(missing_ok=True)
            with open(target, "wb") as f:
                f.truncate(size)
            return measure()

        return run

    cases = [
        (
            "lvdiff, zstd -3",
            lambda: ours("_dump", str(src), os.devnull, "3", str(workers)),
            lambda: shell(f"zstd -3 -T0 -q -c {q(str(src))} | sha256sum > /dev/null"),
            "zstd -3 -T0 | sha256sum",
        ),
        (
            "lvdiff, no compression",
            lambda: ours("_dump", str(src), os.devnull, "none", str(workers)),
            lambda: shell(f"cat {q(str(src))} > /dev/null"),
            "cat > /dev/null",
        ),
        # where SHA-256 is the limit: the same with the stream's own digest, and
        # against sha256sum itself (one core's SHA-256 of the same bytes)
        (
            "lvdiff, no compression, --digest xxh128",
            lambda: ours("_dump", str(src), os.devnull, "none", str(workers), "", "1", "xxh128"),
            lambda: shell(f"cat {q(str(src))} > /dev/null"),
            "cat > /dev/null",
        ),
        (
            "lvdiff, no compression, vs sha256sum",
            lambda: ours("_dump", str(src), os.devnull, "none", str(workers)),
            lambda: shell(f"sha256sum {q(str(src))} > /dev/null"),
            "sha256sum",
        ),
        (
            "lvpatch, zstd stream",
            into_fresh_target(lambda: ours("_patch", str(streams["3"]), str(target), str(workers))),
            into_fresh_target(
                lambda: shell(
                    f"zstd -d -q -f {q(str(zst))} -o {q(str(target))} && sync {q(str(target))}"
                )
            ),
            "zstd -d into the target, sync",
        ),
        (
            "lvpatch, zstd stream, --digest xxh128",
            into_fresh_target(
                lambda: ours("_patch", str(streams["3"]), str(target), str(workers), "xxh128")
            ),
            into_fresh_target(
                lambda: shell(
                    f"zstd -d -q -f {q(str(zst))} -o {q(str(target))} && sync {q(str(target))}"
                )
            ),
            "zstd -d into the target, sync",
        ),
        (
            "lvpatch, uncompressed stream",
            into_fresh_target(
                lambda: ours("_patch", str(streams["none"]), str(target), str(workers))
            ),
            into_fresh_target(
                lambda: shell(
                    f"dd if={q(str(src))} of={q(str(target))} bs=4M conv=notrunc,fsync status=none"
                )
            ),
            "dd bs=4M conv=fsync",
        ),
    ]
    for name, mine, theirs, baseline in cases:
        t_theirs, t_ours = interleaved(RUNS, theirs, mine)
        rows.append(row(name, size, t_ours, t_theirs, baseline))
    for p in (src, zst, target, *streams.values()):
        p.unlink(missing_ok=True)
    return rows


def synthetic_delta(path: Path, ranges: list[tuple[int, int]]) -> None:
    """thin_delta's XML for ``ranges`` (chunk, count), all "different"."""
    with open(path, "w") as f:
        f.write(f'<superblock uuid="" time="1" transaction="2" data_block_size="{CHUNK // 512}">\n')
        f.write(' <diff left="1" right="2">\n')
        for begin, length in ranges:
            f.write(f'  <different begin="{begin}" length="{length}"/>\n')
        f.write(" </diff>\n</superblock>\n")


def scale(work: Path, n_ranges: int, changed: int, workers: int) -> list[dict]:
    print(
        f"== scale: {n_ranges} ranges over a sparse 1 TiB volume; {changed // M} MiB of changes",
        flush=True,
    )
    rows = []
    tib = 1 << 40
    vol = work / "sparse"
    # every range one chunk, spread over the whole TiB; one in 100 holds data
    step = tib // CHUNK // n_ranges
    ranges = [(i * step, 1) for i in range(n_ranges)]
    with open(vol, "wb") as f:
        f.truncate(tib)
        rnd = random.Random(1)
        for begin, _ in ranges[::100]:
            f.seek(begin * CHUNK)
            f.write(rnd.randbytes(CHUNK))
    xml = work / "delta.xml"
    synthetic_delta(xml, ranges)
    t, rss, _ = ours("_dump", str(vol), os.devnull, "3", str(workers), str(xml))
    t_reads = ours("_preads", str(vol), str(xml))[0]
    r = {
        "name": f"{n_ranges} one-chunk ranges",
        "seconds": round(t, 2),
        "ranges_per_s": round(n_ranges / t),
        "plain_reads_per_s": round(n_ranges / t_reads),
        "ratio": round(t_reads / t, 3),
        "peak_rss_mib": round(rss / 1024, 1),
    }
    print(
        f"  {r['name']:<34} {r['ranges_per_s']:>8} ranges/s vs {r['plain_reads_per_s']:>8}  "
        f"ratio {r['ratio']:>5.2f}  rss {r['peak_rss_mib']:>6.1f} MiB   "
        "(one pread per range, in order)",
        flush=True,
    )
    rows.append(r)
    vol.unlink()

    # the same changes inside a small and a huge volume: cost follows the changes
    spans = [(i * 4 * (BLOCK // CHUNK), BLOCK // CHUNK) for i in range(changed // BLOCK)]
    synthetic_delta(xml, spans)
    times = {}
    for label, size in (("16 GiB", 16 << 30), ("1 TiB", tib)):
        with open(vol, "wb") as f:
            f.truncate(size)
            rnd = random.Random(2)
            for begin, n in spans:
                f.seek(begin * CHUNK)
                f.write(rnd.randbytes(n * CHUNK))
        t, rss, _ = ours("_dump", str(vol), os.devnull, "3", str(workers), str(xml))
        times[label] = t
        r = {
            "name": f"{changed // M} MiB changed in {label}",
            "seconds": round(t, 2),
            "peak_rss_mib": round(rss / 1024, 1),
        }
        print(f"  {r['name']:<34} {t:8.2f} s  rss {r['peak_rss_mib']:>6.1f} MiB", flush=True)
        rows.append(r)
        vol.unlink()
    ratio = times["1 TiB"] / times["16 GiB"]
    print(
        f"  time in 1 TiB / time in 16 GiB: {ratio:.2f} (1.00: cost grows with changes, not size)"
    )
    rows.append({"name": "1 TiB / 16 GiB time", "ratio": round(ratio, 3)})
    xml.unlink()
    return rows


# ---------------------------------------------------------------- the repository


def _repo(path: str, mode: str = "aes-256-gcm"):  # noqa: ANN202 - a Repository
    from lvdiff.repo.crypto import Keys, load_key_file
    from lvdiff.repo.repository import Repository
    from lvdiff.repo.store import DirStore

    store = DirStore(Path(path))
    key = Path(path + ".key")
    if not (Path(path) / "config").exists():
        from lvdiff.repo.crypto import dump_key_file, new_keys

        keys = new_keys(mode)
        if mode != "none":
            key.write_bytes(dump_key_file(keys, None))
        return Repository.create(store, keys)
    return Repository.open(
        store,
        lambda c: (
            Keys(c.id, "none", b"", b"")
            if c.encryption == "none"
            else load_key_file(key.read_bytes(), None)
        ),
    )


def child_repo_make(src: str, repo: str, workers: str, mode: str = "aes-256-gcm") -> None:
    """Making a point of a whole volume: read, hash (keyed), compress, encrypt, store, commit."""
    from lvdiff.blockdev import BlockDevice
    from lvdiff.plan import DATA, Extent
    from lvdiff.repo.format import SourceRef
    from lvdiff.repo.make import make_point, slots_from_extents

    started = time.perf_counter()
    r = _repo(repo, mode)
    with BlockDevice(src) as dev:

        def read(offset: int, length: int) -> bytes:
            data = dev.read(offset, length)
            dev.drop_cache(offset, length)
            return data

        size = dev.size
        slots = slots_from_extents(
            [Extent(DATA, 0, size)], size, r.config.chunk_size, read, False, None
        )
        make_point(
            r, SourceRef("bench", "bench", "vg", "vol"), "vol", "bench-id", size, slots, None, None,
            workers=int(workers),
        )  # fmt: skip
    peak_rss_report(started)


def child_repo_restore(repo: str, image: str, workers: str) -> None:
    """Restoring the newest point into a new image file, through lvpatch's engine."""
    from lvdiff.repo.emit import restore_image

    started = time.perf_counter()
    r = _repo(repo)
    point = r.points()[-1]
    restore_image(r, point, Path(image), workers=int(workers))
    peak_rss_report(started)


def child_repo_changed(vol: str, repo: str, extents_file: str, workers: str) -> None:
    """An incremental point of ``vol``: the previous point's index, thin_delta's changes read."""
    import re

    from lvdiff.blockdev import BlockDevice
    from lvdiff.plan import DATA, Extent
    from lvdiff.repo.format import SourceRef
    from lvdiff.repo.make import make_point, slots_from_extents

    started = time.perf_counter()
    r = _repo(repo, "none")
    with open(extents_file, "rb") as x:
        spans = [
            (int(b), int(n)) for b, n in re.findall(rb'begin="(\d+)" length="(\d+)"', x.read())
        ]
    previous = r.points()[-1] if r.points() else None
    with BlockDevice(vol) as dev:
        size = dev.size
        if previous is None:  # the first point of an empty volume: every slot zeros
            extents: list = []
        else:
            extents = [Extent(DATA, b * CHUNK, n * CHUNK) for b, n in spans]
        slots = slots_from_extents(
            extents, size, r.config.chunk_size, dev.read, previous is not None,
            previous.size if previous else None,
        )  # fmt: skip
        make_point(
            r, SourceRef("bench", "bench", "vg", "vol"), "vol", f"id-{time.time()}", size, slots,
            previous, None, workers=int(workers),
        )  # fmt: skip
    peak_rss_report(started)


def repository(work: Path, size: int, changed: int, workers: int) -> list[dict]:
    """Making and restoring points, against the standard tools on the same bytes."""
    print(f"== repository (encrypted, 4 MiB chunks) on {size // M} MiB", flush=True)
    src = work / "repo-source"
    make_source(src, size)
    zst = work / "repo-source.zst"
    subprocess.run(["zstd", "-3", "-T0", "-q", "-f", str(src), "-o", str(zst)], check=True)
    q = shlex.quote
    rows = []
    image = work / "repo-restored.img"

    def fresh_repo() -> str:
        path = work / f"repo-{time.monotonic_ns()}"
        return str(path)

    made: list[str] = []

    def make() -> tuple[float, int, float]:
        path = fresh_repo()
        made.append(path)
        return ours("_repo_make", str(src), path, str(workers))

    t_theirs, t_ours = interleaved(
        RUNS, lambda: shell(f"zstd -3 -T0 -q -c {q(str(src))} | sha256sum > /dev/null"), make
    )
    rows.append(row("repository: make a point", size, t_ours, t_theirs, "zstd -3 -T0 | sha256sum"))

    def restore() -> tuple[float, int, float]:
        image.unlink(missing_ok=True)
        return ours("_repo_restore", made[-1], str(image), str(workers))

    def unzstd() -> float:
        image.unlink(missing_ok=True)
        return shell(f"zstd -d -q -f {q(str(zst))} -o {q(str(image))} && sync {q(str(image))}")

    t_theirs, t_ours = interleaved(RUNS, unzstd, restore)
    rows.append(row("repository: restore a point", size, t_ours, t_theirs, "zstd -d, sync"))
    for p in (src, zst, image):
        p.unlink(missing_ok=True)
    import shutil

    for path in made:
        shutil.rmtree(path, ignore_errors=True)
        Path(path + ".key").unlink(missing_ok=True)

    # the cost of a point follows the changes, not the volume's size
    spans = [(i * 4 * (BLOCK // CHUNK), BLOCK // CHUNK) for i in range(changed // BLOCK)]
    xml = work / "repo-delta.xml"
    synthetic_delta(xml, spans)
    vol = work / "repo-sparse"
    times = {}
    for label, vsize in (("16 GiB", 16 << 30), ("1 TiB", 1 << 40)):
        with open(vol, "wb") as f:
            f.truncate(vsize)
            rnd = random.Random(3)
            for begin, n in spans:
                f.seek(begin * CHUNK)
                f.write(rnd.randbytes(n * CHUNK))
        path = fresh_repo()
        ours("_repo_changed", str(vol), path, str(xml), str(workers))  # the first, empty point
        t, rss, _ = ours("_repo_changed", str(vol), path, str(xml), str(workers))
        times[label] = t
        print(
            f"  {f'point of {changed // M} MiB changed in {label}':<40} {t:8.2f} s  "
            f"rss {rss / 1024:>6.1f} MiB",
            flush=True,
        )
        rows.append({"name": f"point of {changed // M} MiB changed in {label}",
                     "seconds": round(t, 2), "peak_rss_mib": round(rss / 1024, 1)})  # fmt: skip
        shutil.rmtree(path, ignore_errors=True)
        vol.unlink()
    ratio = times["1 TiB"] / times["16 GiB"]
    print(f"  point time in 1 TiB / in 16 GiB: {ratio:.2f} (1.00: it follows the changes)")
    rows.append({"name": "point: 1 TiB / 16 GiB time", "ratio": round(ratio, 3)})
    xml.unlink()
    return rows


# ---------------------------------------------------------------- the repository on S3


def _boto3_client():  # noqa: ANN202 - a boto3 client and a TransferConfig
    import boto3
    from boto3.s3.transfer import TransferConfig
    from botocore.config import Config

    client = boto3.client(
        "s3",
        endpoint_url=os.environ["LVDIFF_S3_ENDPOINT"],
        config=Config(s3={"addressing_style": "path"}, max_pool_connections=16),
    )
    return client, TransferConfig(max_concurrency=8)


def child_s3_upload(path: str, bucket: str, key: str) -> None:
    """boto3's own managed upload of one file (the baseline)."""
    client, transfer = _boto3_client()
    started = time.perf_counter()  # like ours: after the imports and the client
    client.upload_file(path, bucket, key, Config=transfer)
    peak_rss_report(started)


def child_s3_download(path: str, bucket: str, key: str) -> None:
    client, transfer = _boto3_client()
    started = time.perf_counter()
    client.download_file(bucket, key, path, Config=transfer)
    with open(path, "rb+") as f:  # durable, as a restore is
        os.fsync(f.fileno())
    peak_rss_report(started)


def child_s3_make(src: str, spec: str, workers: str) -> None:
    """Making a point of a whole volume in a bucket: read, hash, compress, encrypt, PUT."""
    from lvdiff.blockdev import BlockDevice
    from lvdiff.plan import DATA, Extent
    from lvdiff.repo.access import open_repository, store_for
    from lvdiff.repo.crypto import dump_key_file, new_keys
    from lvdiff.repo.format import CONFIG, SourceRef
    from lvdiff.repo.make import make_point, slots_from_extents
    from lvdiff.repo.repository import Repository

    started = time.perf_counter()
    key = Path(os.environ["LVDIFF_REPO_KEY"])
    store = store_for(spec)
    if not store.exists(CONFIG):
        keys = new_keys("aes-256-gcm")
        key.write_bytes(dump_key_file(keys, None))
        r = Repository.create(store, keys)
    else:
        r = open_repository(spec)
    with BlockDevice(src) as dev:
        size = dev.size
        slots = slots_from_extents(
            [Extent(DATA, 0, size)], size, r.config.chunk_size, dev.read, False, None
        )
        make_point(
            r, SourceRef("bench", "bench", "vg", "vol"), "vol", "bench-id", size, slots, None,
            None, workers=int(workers),
        )  # fmt: skip
    peak_rss_report(started)


def child_s3_restore(spec: str, image: str, workers: str) -> None:
    from lvdiff.repo.access import open_repository
    from lvdiff.repo.emit import restore_image

    started = time.perf_counter()
    r = open_repository(spec)
    restore_image(r, r.points()[-1], Path(image), workers=int(workers))
    peak_rss_report(started)


def s3_figures(work: Path, size: int, workers: int) -> list[dict]:
    """A point made into and restored from a real radosgw on loopback, against boto3's own
    upload_file and download_file of as many bytes as the point stored, in the same run."""
    sys.path.insert(0, str(ROOT))
    from tests.s3server import S3Server, missing_binaries

    if missing_binaries():
        print("== S3: skipped (Ceph is not installed: scripts/setup)", flush=True)
        return []
    server = S3Server.start(work / "s3")
    os.environ.update(server.env())
    os.environ["NO_PROXY"] = "127.0.0.1"
    os.environ["LVDIFF_REPO_KEY"] = str(work / "s3.key")
    workers = max(workers, 8)  # requests wait on the network: more in flight
    rows: list[dict] = []
    try:
        print(f"== repository on S3 (radosgw on loopback), {size // M} MiB, encrypted", flush=True)
        src = work / "s3-source"
        make_source(src, size)
        client = server.client()
        runs = iter(range(1000))
        stored = 0
        specs: list[str] = []

        def make() -> tuple[float, int, float]:
            nonlocal stored
            spec = f"s3+{server.endpoint}/{server.bucket}/r{next(runs)}"
            specs.append(spec)
            Path(os.environ["LVDIFF_REPO_KEY"]).unlink(missing_ok=True)
            got = ours("_s3_make", str(src), spec, str(workers))
            prefix = spec.rsplit("/", 1)[1] + "/data/"
            pages = client.get_paginator("list_objects_v2").paginate(
                Bucket=server.bucket, Prefix=prefix
            )
            stored = sum(o["Size"] for page in pages for o in page.get("Contents", ()))
            return got

        blob = work / "s3-blob"

        def upload() -> float:
            if not blob.exists() or blob.stat().st_size != stored:
                with open(blob, "wb") as f:
                    f.write(os.urandom(stored))
            return ours("_s3_upload", str(blob), server.bucket, "baseline")[0]

        make()  # once, so the baseline knows how many bytes a point stores
        t_theirs, t_ours = interleaved(RUNS, upload, make)
        rows.append(
            row("S3: make a point", size, t_ours, t_theirs, "boto3 upload_file, as many bytes")
        )
        image = work / "s3-restored.img"

        def restore() -> tuple[float, int, float]:
            image.unlink(missing_ok=True)
            return ours("_s3_restore", specs[-1], str(image), str(workers))

        def download() -> float:
            image.unlink(missing_ok=True)
            return ours("_s3_download", str(image), server.bucket, "baseline")[0]

        t_theirs, t_ours = interleaved(RUNS, download, restore)
        rows.append(
            row(
                "S3: restore a point",
                size,
                t_ours,
                t_theirs,
                "boto3 download_file, as many bytes, fsync",
            )
        )
        for p in (src, blob, image):
            p.unlink(missing_ok=True)
    finally:
        server.stop()
        import shutil

        shutil.rmtree(work / "s3", ignore_errors=True)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=1024, help="MiB of data for the pipelines")
    ap.add_argument("--ranges", type=int, default=1_000_000, help="ranges in the scale test")
    ap.add_argument("--changed", type=int, default=1024, help="MiB changed in the scale test")
    ap.add_argument("--workers", type=int, default=max(2, min(8, os.cpu_count() or 2)))
    ap.add_argument("--quick", action="store_true", help="a small run that proves the script works")
    ap.add_argument("--json", type=Path, default=ROOT / "results" / "bench.json")
    ap.add_argument("--dir", type=Path, default=None, help="where the test files go")
    ap.add_argument("--warm", action="store_true", help="keep the page cache between runs")
    ap.add_argument(
        "--s3", action="store_true", help="also the repository on a real radosgw on loopback"
    )
    ap.add_argument(
        "--only",
        metavar="SECTIONS",
        help="only these, comma-separated: pipelines, scale, repository, s3",
    )
    args = ap.parse_args()
    only = set(args.only.split(",")) if args.only else {"pipelines", "scale", "repository"}
    if args.s3:
        only.add("s3")
    global COLD
    COLD = not args.warm
    if args.quick:
        args.size, args.ranges, args.changed = 24, 10_000, 16
        global RUNS
        RUNS = 1
    work = Path(tempfile.mkdtemp(prefix="lvdiff-bench-", dir=args.dir))
    try:
        result = {
            "when": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "machine": {
                "cpu": _cpu(),
                "cpus": os.cpu_count(),
                "kernel": platform.release(),
                "python": platform.python_version(),
            },
            "cold_cache": COLD and os.geteuid() == 0,
            "pipelines": (
                pipelines(work, args.size * M, args.workers) if "pipelines" in only else []
            ),
            "scale": (
                scale(work, args.ranges, args.changed * M, args.workers) if "scale" in only else []
            ),
            "repository": (
                repository(work, args.size * M, args.changed * M, args.workers)
                if "repository" in only
                else []
            ),
            "s3": s3_figures(work, args.size * M, args.workers) if "s3" in only else [],
        }
    finally:
        for p in work.iterdir():
            p.unlink()
        work.rmdir()
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"== results in {args.json}")
    return 0


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


CHILDREN = {  # bench.py _NAME ARGS...: one measured side, in a process of its own
    "_dump": child_dump,
    "_patch": child_patch,
    "_s3_make": child_s3_make,
    "_s3_restore": child_s3_restore,
    "_s3_upload": child_s3_upload,
    "_s3_download": child_s3_download,
    "_repo_make": child_repo_make,
    "_repo_restore": child_repo_restore,
    "_repo_changed": child_repo_changed,
    "_preads": child_preads,
    "_mix": lambda path, size: make_source(Path(path), int(size)),
}

if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] in CHILDREN:
        CHILDREN[sys.argv[1]](*sys.argv[2:])
    else:
        sys.exit(main())
