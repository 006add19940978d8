"""lvsync against a far side, and the edges of its command line and configuration.

The far side here is a fake ``ssh`` on PATH that runs the remote command on
this machine, and a remote "lvpatch" that is the real lvpatch command reading
the stream with ``--check --json`` (no LVM needed): its failures reach lvsync
as lvpatch writes them, ``{"error": {"class", "exit", "message"}}``.
"""

from __future__ import annotations

import io
import json
import os
import stat
import subprocess
import sys

import pytest

from lvdiff import lvm
from lvdiff.blockdev import DeviceError
from lvdiff.cli import lvsync_parser
from lvdiff.cli.common import parse_args
from lvdiff.errors import LvdiffError, TransientError, UsageError
from lvdiff.lvm import LV
from lvdiff.stream import StreamWriter, VolumeRef, encode_zero
from lvdiff.sync.config import load
from lvdiff.sync.naming import Source
from lvdiff.sync.targets import TRANSIENT_REMOTE, Receive, SshTarget, parse_target

from ..builders import make_header

SOURCE = Source("vg0", "vol0", "VGUUID", "here")
RECEIVE = Receive("vol0.x", None, SOURCE, SOURCE.tags("j"))
MAIN = "import sys; from lvdiff.cli import {0}; sys.exit({0}())"


def _error(cls: str, exit_code: int = 3) -> bytes:
    return json.dumps({"error": {"class": cls, "exit": exit_code, "message": "m"}}).encode()


@pytest.mark.parametrize(
    ("rc", "out", "transient"),
    [
        (255, b"", True),  # ssh's own failure: unreachable, refused, the link lost
        (-9, b"", True),  # ssh killed
        (3, _error("TruncatedStream"), True),  # the stream stopped before END: a cut link
        (130, _error("Interrupted", 130), True),  # a dropped session hung up lvpatch
        (3, _error("CorruptStream"), False),
        (3, _error("DigestMismatch"), False),
        (4, _error("BaseMismatch", 4), False),
        (5, _error("VerifyFailed", 5), False),
        (1, _error("DeviceError", 1), False),
        (2, _error("UsageError", 2), False),
        (6, _error("CommandFailed", 6), False),
        (1, b"", False),  # no answer at all: a crash, or another program
    ],
)
def test_the_far_sides_failure_is_read_by_its_class(rc, out, transient):
    """Whether lvsync retries is decided by the failure's identity, never by its words."""
    t = SshTarget("backup@nas", "vg1", "pool", [])
    err = b"lvpatch: stream format 3.0\nlvpatch: error: the stream ends before its END record\n"
    with pytest.raises(LvdiffError) as got:
        t.result(rc, out, err)
    assert isinstance(got.value, TransientError) == transient
    assert {"TruncatedStream", "Interrupted"} == TRANSIENT_REMOTE
    t.close()


def test_a_lost_link_names_ssh_s_own_message_not_the_far_sides_last_line():
    t = SshTarget("backup@nas", "vg1", "pool", [])
    err = b"lvpatch: full stream of vg0/vol0\nClient_loop: send disconnect: Broken pipe\n"
    with pytest.raises(TransientError, match="connection was lost: Client_loop: send disconn"):
        t.result(255, b"", err)
    with pytest.raises(TransientError, match=r"connection was lost$"):
        t.result(255, b"", b"lvpatch: full stream of vg0/vol0\n")
    t.close()


@pytest.fixture
def far_side(tmp_path, monkeypatch):
    """ssh that runs the remote command here; a remote lvpatch that checks what it gets."""
    (tmp_path / "ssh").write_text(
        "#!/bin/sh\n"
        'for a; do shift; [ "$a" = "-O" ] && exit 0; [ "$a" = "--" ] && break; done\n'
        'exec sh -c "$*"\n'
    )
    (tmp_path / "lvpatch").write_text(
        f"#!{sys.executable}\n"
        "import sys\n"
        "from lvdiff.cli import lvpatch_main\n"
        "sys.exit(lvpatch_main(['--check', '--json', '--no-progress']))\n"
    )
    for p in tmp_path.iterdir():
        p.chmod(p.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    t = SshTarget("backup@nas", "vg1", "pool", [], lvpatch=str(tmp_path / "lvpatch"))
    yield t
    t.close()


def _producer(then: BaseException | None):  # noqa: ANN202
    """Half a stream, then ``then`` raised (None: it just stops, as a cut pipe would)."""

    def produce(out: io.BufferedWriter) -> None:
        h = make_header(new=VolumeRef("vol0.x", "u", 1, "ID"), compression="none")
        w = StreamWriter(out, h)
        w.write_record(encode_zero(0, 65536))
        out.flush()
        if then is not None:
            raise then

    return produce


def test_over_ssh_a_read_error_here_is_the_news_not_a_cut_link(far_side):
    """F4: the far side saw a cut stream, but the source disk failed: exit 1, not 75."""
    err = DeviceError("read error on /dev/vg0/vol0.x at byte 65536: Input/output error")
    with pytest.raises(DeviceError, match="read error"):
        far_side.receive(_producer(err), RECEIVE)


def test_over_ssh_sigterm_here_is_not_swallowed(far_side):
    with pytest.raises(KeyboardInterrupt):
        far_side.receive(_producer(KeyboardInterrupt()), RECEIVE)


def test_over_ssh_a_stream_cut_on_the_way_is_transient(far_side):
    """Nothing failed here; the far side's real lvpatch says TruncatedStream."""
    with pytest.raises(TransientError, match=r"cut \(TruncatedStream\)"):
        far_side.receive(_producer(None), RECEIVE)


def test_lvpatch_writes_its_failure_as_data_with_json():
    res = subprocess.run(
        [sys.executable, "-c", "import sys; from lvdiff.cli import lvpatch_main; "
         "sys.exit(lvpatch_main(['--check', '--json']))"],
        input=b"\x89LVDIFF\n\x00\x03", capture_output=True, check=False,
    )  # fmt: skip
    assert res.returncode == 3
    error = json.loads(res.stdout)["error"]
    assert error["class"] == "TruncatedStream" and error["exit"] == 3
    assert len(res.stderr.decode().strip().splitlines()) == 1


@pytest.mark.parametrize(
    "spec", ["root@-oProxyCommand=x:vg1", "-oProxyCommand=x:vg1", "a b@host:vg1", ":vg1", "h@:vg"]
)
def test_a_malformed_host_is_a_usage_error(spec):
    with pytest.raises(UsageError):
        parse_target(spec, [])


def test_json_never_swallows_the_next_argument():
    """`lvsync --json vg/lv TARGET` once wrote JSON into a file named vg/lv."""
    args = parse_args(lvsync_parser(), ["--json", "vg0/vol0", "backup@nas:vg1/pool"])
    assert args.json == "-" and args.volumes == ["vg0/vol0", "backup@nas:vg1/pool"]
    args = parse_args(lvsync_parser(), ["--json=out.json", "vg0/vol0", "vg1"])
    assert args.json == "out.json" and args.volumes == ["vg0/vol0", "vg1"]
    args = parse_args(lvsync_parser(), ["vg0/vol0", "vg1", "--", "--json=x"])
    assert args.json is None


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('compress = "zstd:99"', "compress"),
        ('compress = "lz4"', "compress"),
        ("retention = 3", "retention must be a table"),
        ("[job.x.retention]\nlast = -1", "last must be a whole number"),
        ("[job.x.retention]\nyearly = 1", "retention"),
    ],
)
def test_configuration_mistakes_are_one_line_naming_the_key(tmp_path, text, key):
    f = tmp_path / "lvsync.toml"
    head = '[job.x]\nsources = ["vg0/vol0"]\ntarget = "vg1"\n'
    f.write_text(head + text + "\n")
    with pytest.raises(UsageError, match=key) as got:
        load(f)
    assert "\n" not in str(got.value)
    f.write_text("[defaults]\nretention = 3\n" + head)
    with pytest.raises(UsageError, match="retention must be a table"):
        load(f)


@pytest.mark.parametrize("arg", ["-1", "x", "1.5"])
def test_keep_counts_are_checked_by_the_parser(arg):
    res = subprocess.run(
        [sys.executable, "-c", MAIN.format("lvsync_main"), "--keep-last", arg, "vg0/vol0", "vg1"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert res.returncode == 2 and "whole number" in res.stderr and "Traceback" not in res.stderr


def _lv(name: str, tags: list[str], attr: str = "Vri-a-tz--") -> LV:
    return LV("backup", name, "U", attr, 1, "thin", "pool", 1, tags, 0, "", False, None)


@pytest.mark.parametrize(
    ("tags", "removed"),
    [
        (["lvsync", "lvsync_src:VGUUID/vol0", "lvdiff_identity:I"], True),
        (["pve-managed"], False),  # F9: any volume carrying the tag it was given
        (["lvsync_src:VGUUID/vol0", "lvdiff_identity:I"], False),  # not lvsync's mark
        (["lvsync", "lvsync_src:OTHER/vol0", "lvdiff_identity:I"], False),  # another source
        (["lvsync", "lvsync_source:vol0", "lvdiff_identity:I"], False),  # an older lvsync's
        (["lvsync", "lvsync_src:VGUUID/vol0"], False),  # no identity: not a restored copy
        (["lvsync", "lvsync_src:VGUUID/vol0", "lvdiff_identity:I", "lvdiff_incomplete"], False),
    ],
)
def test_prune_removes_only_complete_copies_of_exactly_that_source(monkeypatch, tags, removed):
    from lvdiff.apply import prune

    gone: list[str] = []
    monkeypatch.setattr(lvm, "get_lv", lambda vg, name, listing=None: _lv(name, tags))
    monkeypatch.setattr(lvm, "remove", lambda lv: gone.append(lv.name))
    if removed:
        prune("backup", "vol0.x", SOURCE.tag)
    else:
        with pytest.raises(UsageError, match="not removing it"):
            prune("backup", "vol0.x", SOURCE.tag)
    assert gone == (["vol0.x"] if removed else [])
    with pytest.raises(UsageError, match="source tag"):
        prune("backup", "vol0.x", "pve-managed")


def test_a_commit_is_one_metadata_change(monkeypatch):
    """F10: read-only and the incomplete tags cleared in one lvchange, or not at all."""
    calls: list[list[str]] = []
    monkeypatch.setattr(lvm, "run", lambda argv, input=None: calls.append(argv) or "")
    lv = _lv("n", ["lvdiff_incomplete", "lvdiff_resume:0:A:-", "lvdiff_identity:A"], "Vwi-a-tz--")
    lvm.set_tags(lv, remove=["lvdiff_incomplete", "lvdiff_resume:0:A:-"], read_only=True)
    assert len(calls) == 1
    argv = calls[0]
    assert argv[:2] == ["lvchange", "-q"] and argv[argv.index("-p") + 1] == "r"
    assert argv.count("--deltag") == 2 and argv[-1] == "backup/n"
    assert lv.tags == ["lvdiff_identity:A"] and not lv.writable


def test_a_target_vg_is_given_its_only_pool_or_refused_naming_them():
    from lvdiff.sync.targets import _pick_pool

    assert _pick_pool("vg1", None, ["pool0"]) == "pool0"
    assert _pick_pool("vg1", "b", ["a", "b"]) == "b"
    with pytest.raises(UsageError, match="thin pools a, b: name one"):
        _pick_pool("vg1", None, ["a", "b"])
    with pytest.raises(UsageError, match="no thin pool"):
        _pick_pool("vg1", None, [])
    with pytest.raises(UsageError, match="no thin pool c"):
        _pick_pool("vg1", "c", ["a", "b"])


def test_a_dir_target_keeps_each_source_apart_and_restores_both(tmp_path, lvm_model):
    """F1 on a dir: target: two machines' `data`, each its own folder and chain."""
    from datetime import UTC, datetime, timedelta

    from lvdiff.sync.chain import chains, restore
    from lvdiff.sync.job import Job, run
    from lvdiff.sync.targets import DirTarget

    from .conftest import VOLUME, content

    for vg in ("vgA", "vgB"):
        lvm_model.add(vg, "data")
    t0 = datetime(2026, 12, 1, 2, tzinfo=UTC)
    for night in range(3):
        for vg in ("vgA", "vgB"):  # both at the same second, as two timers would
            job = Job([(vg, "data")], DirTarget(tmp_path / "store"), volumes=lvm_model)
            (o,) = run(job, now=t0 + timedelta(days=night))
            assert o.status == "synced", o.error
    store = DirTarget(tmp_path / "store")
    found = chains(store, "data")
    assert sorted(c.source for c in found) == ["VG-UUID-vgA/data", "VG-UUID-vgB/data"]
    for c in found:
        assert [s["kind"] for s in c.streams] == ["full", "incremental", "incremental"]
        images = tmp_path / c.source.split("/")[0]
        images.mkdir()
        names = restore(store, c, images=images)
        vg = c.source.split("-")[-1].split("/")[0]
        want = content(vg, names[-1]) + bytes(VOLUME - 65536)
        assert (images / f"{names[-1]}.img").read_bytes() == want
    manifests = sorted(p.relative_to(tmp_path / "store") for p in store.manifests())
    assert [str(m) for m in manifests] == [
        "VG-UUID-vgA/data/manifest.json",
        "VG-UUID-vgB/data/manifest.json",
    ]


def test_an_older_lvsyncs_directory_still_restores_every_chain(tmp_path):
    """A version 2 manifest, two machines' `data` in one folder: both chains restore."""
    from lvdiff.sync.chain import chains
    from lvdiff.sync.targets import DirTarget

    store = tmp_path / "store"
    store.mkdir()
    entries = [
        dict(file=f"data/{n}.lvd", name=n, identity=i, base=None, base_identity=b,
             kind="full" if b is None else "incremental", size=1, digest="",
             tags=["lvsync", "lvsync_source:data"], written="")
        for n, i, b in (
            ("data.20261201T020000Z", "A1", None),
            ("data.20261201T023000Z", "B1", None),
            ("data.20261202T020000Z", "A2", "A1"),
        )
    ]  # fmt: skip
    (store / "manifest.json").write_text(json.dumps({"version": 2, "streams": entries}))
    found = chains(DirTarget(store), "data")
    assert sorted(c.newest for c in found) == ["data.20261201T023000Z", "data.20261202T020000Z"]
    assert all(c.lv == "data" for c in found)


def test_the_far_sides_inventory_names_its_pools():
    from lvdiff.inventory import Held, Inventory

    inv = Inventory([Held("a", "I", 1, True, True, None, ["t"])], ["pool0"])
    assert Inventory.from_dict(json.loads(json.dumps(inv.to_dict()))) == inv
    with pytest.raises(ValueError):
        Inventory.from_dict({"pools": []})
