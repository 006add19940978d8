"""lvsync's decisions through its seam: whose copies, whose base, what a failure leaves behind.

Each test is one finding of the 2026-12-03 review (F1-F4) or one promise of
the README's lvsync section, driven through the real ``job.run`` against the
in-memory LVM and target of conftest.py.  The real-kernel suite runs the
same settings on real LVM and a real sshd (tests/kernel/test_lvsync.py).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from lvdiff import tags
from lvdiff.blockdev import DeviceError
from lvdiff.errors import TransientError, UsageError
from lvdiff.events import Note
from lvdiff.inventory import Held
from lvdiff.retention import Retention
from lvdiff.sync import naming
from lvdiff.sync.job import Job, exit_status, run
from lvdiff.sync.naming import Source

from .conftest import ModelTarget, ModelVolumes

T0 = datetime(2026, 12, 1, 2, 0, tzinfo=UTC)


def sync(vols: ModelVolumes, target: ModelTarget, *sources: str, when=T0, **kw):  # noqa: ANN001, ANN201
    notes: list[str] = []
    job = Job([tuple(s.split("/")) for s in sources], target, volumes=vols, host="hostA", **kw)
    outcomes = run(job, lambda e: notes.append(e.text) if isinstance(e, Note) else None, when)
    return outcomes, notes


def snaps(vols: ModelVolumes, vg: str) -> list[str]:
    return [n for n in vols.names(vg) if naming.taken_at(n)]


def test_one_machine_never_prunes_or_gives_up_another_machines_copies(lvm_model, target_model):
    """F1: hostA's and hostB's `data` are two sources, even sent to one target VG."""
    vols, target = lvm_model, target_model
    vols.add("vgA", "data")
    vols.add("vgB", "data")
    (b,), _ = sync(vols, target, "vgB/data", when=T0 + timedelta(minutes=30))
    assert b.status == "synced"
    b_copy = target.names()
    for night in range(1, 5):  # hostA, nightly, keeping the last two
        (a,), _ = sync(vols, target, "vgA/data", when=T0 + timedelta(days=night))
        assert a.status == "synced" and a.key == "VG-UUID-vgA/data"
        assert all(n not in a.pruned_there for n in b_copy)
    assert set(b_copy) <= set(target.names())  # B's only copy survives
    assert len(target.names()) == 1 + 2  # B's one, and A's last two
    # B's cut transfer, kept resumable, is B's: A neither resumes nor gives it up
    cut = naming.snapshot_name(Source("vgB", "data", "VG-UUID-vgB"), "x", T0 + timedelta(days=6))
    target.held.append(
        Held(
            cut, "IDB", 1, False, False, "1048576:IDB:-", ["lvsync", "lvsync_src:VG-UUID-vgB/data"]
        )
    )
    (a,), _ = sync(vols, target, "vgA/data", when=T0 + timedelta(days=7))
    assert a.status == "synced" and cut in target.names()
    assert not any(line.startswith(("abandon", "resume")) for line in target.log)


def test_two_jobs_of_one_volume_keep_each_others_base(lvm_model):
    """F2: an hourly local job never removes the nightly off-site job's common base."""
    vols = lvm_model
    vols.add("vg0", "vol0")
    local = ModelTarget("local/pool", "local:local")
    offsite = ModelTarget("nas:vg1/pool", "ssh:nas:vg1")
    steps = [(local, 1), (offsite, 2), (local, 3), (local, 4), (local, 5), (offsite, 26)]
    for target, hours in steps:
        (o,), _ = sync(vols, target, "vg0/vol0", when=T0 + timedelta(hours=hours))
        assert o.status == "synced"
    assert o.base is not None  # the second off-site run is incremental
    assert offsite.log[-1] == f"restore {o.snapshot} from {o.base}"
    # each job kept its own last two snapshots, and no more
    for t in (local, offsite):
        key = naming.job_key(t.key)
        held = [
            n for n in snaps(vols, "vg0") if tags.LVSYNC_JOB_PREFIX + key in vols.vgs["vg0"][n].tags
        ]
        assert len(held) == 2, t.label


def test_one_bad_source_fails_alone_and_leaks_no_snapshot(lvm_model, target_model):
    """F3: a removed volume and one that cannot be snapshotted each get their own outcome."""
    vols, target = lvm_model, target_model
    vols.add("vg0", "vol0")
    vols.add("vg0", "full")
    vols.fail_snapshot.add("vg0/full")
    for night in range(3):
        outcomes, _ = sync(
            vols, target, "vg0/vol0", "vg0/gone", "vg0/full", when=T0 + timedelta(days=night)
        )
        by = {o.source: o for o in outcomes}
        assert by["vg0/vol0"].status == "synced"
        assert by["vg0/gone"].status == "failed" and "not found" in by["vg0/gone"].error
        assert by["vg0/full"].status == "failed" and "Metadata is full" in by["vg0/full"].error
        assert exit_status(outcomes) == 1  # a hard failure (the snapshot); the typo is 2
    assert len([n for n in snaps(vols, "vg0") if n.startswith("vol0.")]) == 2  # retention held
    assert not [n for n in snaps(vols, "vg0") if n.startswith("full.")]
    outcomes, _ = sync(vols, target, "vg0/vol0", "vg0/gone", when=T0 + timedelta(days=4))
    assert exit_status(outcomes) == 2  # only a configuration mistake: a volume not found


def test_a_snapshot_whose_send_never_started_is_removed(lvm_model, target_model):
    """A failed resume blocks the new send of that source: its new snapshot goes again."""
    vols, target = lvm_model, target_model
    vols.add("vg0", "vol0")
    vols.add("vg0", "vol1")
    target.cut.add(
        naming.snapshot_name(Source("vg0", "vol0", "VG-UUID-vg0"), naming.job_key(target.key), T0)
    )
    outcomes, _ = sync(vols, target, "vg0/vol0", "vg0/vol1")
    assert [o.transient for o in outcomes] == [True, False] and exit_status(outcomes) == 75
    kept = snaps(vols, "vg0")
    assert len(kept) == 2  # vol0's is kept: the target holds a resumable part of it
    vols.fail_send[kept[0]] = DeviceError("read error on /dev/vg0/x at byte 0: Input/output error")
    outcomes, notes = sync(vols, target, "vg0/vol0", "vg0/vol1", when=T0 + timedelta(days=1))
    assert outcomes[0].status == "failed" and not outcomes[0].transient  # the news: local
    assert outcomes[1].status == "synced"
    assert kept[0] in snaps(vols, "vg0")  # still needed for the resume
    assert not any(n.startswith("vol0.20261202") for n in snaps(vols, "vg0"))  # none taken


def test_a_failing_hook_fails_every_source_and_its_snapshots_go(lvm_model, target_model):
    vols = lvm_model
    vols.add("vg0", "vol0")
    vols.add("vg0", "vol1")
    outcomes, notes = sync(vols, target_model, "vg0/vol0", "vg0/vol1", post_snapshot="exit 3")
    assert all(o.status == "failed" and "post-snapshot hook" in o.error for o in outcomes)
    assert snaps(vols, "vg0") == [] and sum("was not sent" in n for n in notes) == 2
    outcomes, _ = sync(vols, target_model, "vg0/vol0", pre_snapshot="echo frozen >&2; false")
    assert "pre-snapshot hook failed (exit 1): frozen" in outcomes[0].error
    assert snaps(vols, "vg0") == [] and exit_status(outcomes) == 1


def test_sigterm_ends_the_run_at_once_and_starts_nothing_new(lvm_model, target_model):
    """F4: SIGTERM during one send is not a per-volume failure: the run stops there."""
    vols, target = lvm_model, target_model
    vols.add("vg0", "vol0")
    vols.add("vg0", "vol1")
    name = naming.snapshot_name(
        Source("vg0", "vol0", "VG-UUID-vg0"), naming.job_key(target.key), T0
    )
    vols.fail_send[name] = KeyboardInterrupt()
    with pytest.raises(KeyboardInterrupt):
        sync(vols, target, "vg0/vol0", "vg0/vol1")
    assert not any(line.startswith("send vg0/vol1") for line in vols.log)
    assert [n.split(".")[0] for n in snaps(vols, "vg0")] == ["vol0"]  # vol1's was not sent


def test_an_older_lvsyncs_copies_are_kept_with_one_note_naming_how_to_adopt_them(
    lvm_model, target_model
):
    vols, target = lvm_model, target_model
    vols.add("vg0", "data")
    old = vols.add(
        "vg0", "data.20261101T020000Z", attr="Vri---tz-k", tags_=["lvsync", "lvsync_source:data"]
    )
    for name, ident in (
        ("data.20261101T020000Z", old.uuid),
        ("data.20261102T020000Z", "ELSEWHERE"),
    ):
        target.held.append(
            Held(
                name,
                ident,
                1,
                True,
                True,
                None,
                ["lvsync", "lvsync_source:data", f"lvdiff_identity:{ident}"],
            )
        )
    for night in range(4):
        (o,), notes = sync(vols, target, "vg0/data", when=T0 + timedelta(days=night))
        assert o.status == "synced" and o.base != old.name
    assert "data.20261101T020000Z" in vols.names("vg0")
    assert {"data.20261101T020000Z", "data.20261102T020000Z"} <= set(target.names())
    note = next(n for n in notes if "lvsync_source:data" in n)
    assert (
        "kept and never pruned" in note and "lvchange --addtag lvsync_src:VG-UUID-vg0/data" in note
    )
    assert "vg0/data.20261101T020000Z" in note and "backup/data.20261101T020000Z" in note
    assert note.count("data.20261102T020000Z") == 0  # its identity proves nothing: not named


def test_a_target_vg_without_one_pool_is_refused_before_any_snapshot(lvm_model, target_model):
    vols, target = lvm_model, target_model
    vols.add("vg0", "vol0")

    def refuse(report=None):  # noqa: ANN001 - as LocalTarget/SshTarget.prepare do
        raise UsageError("volume group backup has thin pools p1, p2: name one, as VG/POOL")

    target.prepare = refuse
    outcomes, _ = sync(vols, target, "vg0/vol0")
    assert outcomes[0].status == "failed" and "p1, p2" in outcomes[0].error
    assert exit_status(outcomes) == 2 and snaps(vols, "vg0") == []


def test_an_unreachable_target_is_transient_and_takes_no_snapshot(lvm_model, target_model):
    lvm_model.add("vg0", "vol0")
    target_model.unreachable = True
    outcomes, _ = sync(lvm_model, target_model, "vg0/vol0")
    assert outcomes[0].transient and exit_status(outcomes) == 75
    assert snaps(lvm_model, "vg0") == []


def test_a_second_run_of_one_job_starts_nothing(lvm_model, target_model):
    lvm_model.add("vg0", "vol0")
    job_key = naming.job_key(target_model.key)
    lvm_model.locked.add(job_key)
    outcomes, _ = sync(lvm_model, target_model, "vg0/vol0")
    assert outcomes[0].transient and "another lvsync" in outcomes[0].error
    assert lvm_model.log == [] and target_model.prepared == 0


def test_the_target_is_asked_once_per_run(lvm_model, target_model):
    """One remote start for the inventory, whatever the run does with it (item 12)."""
    for lv in ("a", "b", "c"):
        lvm_model.add("vg0", lv)
    for night in range(3):
        outcomes, _ = sync(
            lvm_model, target_model, "vg0/a", "vg0/b", "vg0/c", when=T0 + timedelta(days=night)
        )
        assert [o.status for o in outcomes] == ["synced"] * 3
    assert target_model.prepared == 3
    assert len(target_model.names()) == 3 * 2  # pruned from what the run kept up to date


def test_unchanged_removes_its_snapshot_and_says_nothing_to_do(lvm_model, target_model):
    lvm_model.add("vg0", "vol0")
    sync(lvm_model, target_model, "vg0/vol0")
    before = snaps(lvm_model, "vg0")
    lvm_model.unchanged_all = True
    outcomes, _ = sync(lvm_model, target_model, "vg0/vol0", when=T0 + timedelta(hours=1))
    assert outcomes[0].status == "unchanged" and exit_status(outcomes) == 3
    assert snaps(lvm_model, "vg0") == before


def test_a_run_over_many_unchanged_volumes_costs_one_snapshot_and_one_compare_each(
    lvm_model, target_model
):
    """Issue 22: per unchanged volume, a snapshot and its share of one comparison; the VG is
    listed, compared and cleaned once per run, whatever the number of volumes."""
    names = [f"vol{i:03d}" for i in range(100)]
    for n in names:
        lvm_model.add("vg0", n)
    sync(lvm_model, target_model, *(f"vg0/{n}" for n in names))
    lvm_model.unchanged_all = True
    lvm_model.calls.clear()
    outcomes, _ = sync(
        lvm_model, target_model, *(f"vg0/{n}" for n in names), when=T0 + timedelta(hours=1)
    )
    assert {o.status for o in outcomes} == {"unchanged"}
    assert lvm_model.calls == {"listing": 2, "snapshot": 100, "unchanged": 1, "remove": 1}


def test_a_runs_sends_are_activated_in_one_command_and_deactivated_in_one(lvm_model, target_model):
    """Issue 22: NEW and BASE of every send active when it is read, made so by one lvchange
    per run (not two per volume), and inactive again after the run."""
    names = [f"vol{i:03d}" for i in range(100)]
    for n in names:
        lvm_model.add("vg0", n)
    for night in range(2):  # full, then incremental from the first night's snapshots
        lvm_model.calls.clear()
        outcomes, _ = sync(
            lvm_model, target_model, *(f"vg0/{n}" for n in names), when=T0 + timedelta(days=night)
        )
        assert {o.status for o in outcomes} == {"synced"}
        assert (lvm_model.calls["activate"], lvm_model.calls["deactivate"]) == (1, 1)
        assert lvm_model.calls["listing"] == 2 and lvm_model.calls["send"] == 100
        assert lvm_model.active("vg0") == names  # the sources only: every snapshot inactive
    assert lvm_model.sent_active == [True] * 200
    assert all(o.base for o in outcomes)


def test_if_that_activation_fails_each_send_still_goes_and_nothing_stays_active(
    lvm_model, target_model
):
    lvm_model.add("vg0", "a")
    lvm_model.add("vg0", "b")
    lvm_model.fail_activate = True
    outcomes, notes = sync(lvm_model, target_model, "vg0/a", "vg0/b")
    assert [o.status for o in outcomes] == ["synced", "synced"]
    assert any("could not activate" in n for n in notes)
    assert lvm_model.calls["deactivate"] == 1 and lvm_model.active("vg0") == ["a", "b"]


def test_a_dry_run_changes_nothing(lvm_model, target_model):
    lvm_model.add("vg0", "vol0")
    sync(lvm_model, target_model, "vg0/vol0")
    log, held = list(lvm_model.log), list(target_model.held)
    outcomes, notes = sync(
        lvm_model, target_model, "vg0/vol0", when=T0 + timedelta(days=1), dry_run=True
    )
    assert outcomes[0].status == "would-sync" and outcomes[0].estimate["bytes_to_read"] > 0
    assert lvm_model.log == log and target_model.held == held
    assert any(n.startswith("would snapshot") for n in notes)


def test_this_sources_cut_transfer_is_resumed_first(lvm_model, target_model):
    vols, target = lvm_model, target_model
    vols.add("vg0", "vol0")
    sync(vols, target, "vg0/vol0")  # a first copy
    name = naming.snapshot_name(
        Source("vg0", "vol0", "VG-UUID-vg0"), naming.job_key(target.key), T0 + timedelta(days=1)
    )
    target.cut.add(name)
    (o,), _ = sync(vols, target, "vg0/vol0", when=T0 + timedelta(days=1))
    assert o.transient
    target.cut.clear()
    (o,), _ = sync(vols, target, "vg0/vol0", when=T0 + timedelta(days=2))
    assert o.status == "synced" and o.resumed == name and o.resumed_bytes == 7
    assert o.base == name  # the resumed copy is the base of this run's send


def test_retention_is_per_job_and_never_the_newest_common_pair(lvm_model, target_model):
    lvm_model.add("vg0", "vol0")
    for night in range(6):
        (o,), _ = sync(
            lvm_model, target_model, "vg0/vol0", when=T0 + timedelta(days=night),
            retention=Retention(last=1),
        )  # fmt: skip
        assert o.status == "synced"
    assert snaps(lvm_model, "vg0") == [o.snapshot] == target_model.names()


def test_names_are_unique_per_source_and_job_and_read_back():
    a = Source("pve", "vm-100-disk-0", "UUID-A", "hostA")
    b = Source("pve", "vm-100-disk-0", "UUID-B", "hostB")
    names = {naming.snapshot_name(s, j, T0) for s in (a, b) for j in ("job1", "job2")}
    assert len(names) == 4
    for n in names:
        assert n.startswith("vm-100-disk-0.20261201T020000Z.") and naming.taken_at(n) == T0
    long = Source("vg", "x" * 200, "U")
    assert len(naming.snapshot_name(long, "j", T0)) <= 127
    assert naming.taken_at("vol0.20261201T020000Z") == T0  # an older lvsync's still reads
    assert naming.is_ours(a, "j", "v.20261201T020000Z.0a0b0c0d", list(a.tags("j")))
    assert not naming.is_ours(b, "j", "v.20261201T020000Z.0a0b0c0d", list(a.tags("j")))
    assert not naming.is_ours(a, "k", "v.20261201T020000Z.0a0b0c0d", list(a.tags("j")))
    assert not naming.is_ours(a, "j", "v.20261201T020000Z", ["lvsync", "lvsync_source:v"])
    assert naming.is_legacy("v", "v.20261201T020000Z", ["lvsync", "lvsync_source:v"])
    assert all(len(t) < 1024 and " " not in t for t in a.tags("abc"))


def test_a_transient_target_error_is_still_this_sources_alone(lvm_model):
    """A target that fails one receive transiently does not stop the other sources."""

    class Flaky(ModelTarget):
        def receive(self, produce, what):  # noqa: ANN001, ANN201
            if what.source.lv == "vol0":
                raise TransientError("the transfer was cut")
            return super().receive(produce, what)

    lvm_model.add("vg0", "vol0")
    lvm_model.add("vg0", "vol1")
    outcomes, _ = sync(lvm_model, Flaky(), "vg0/vol0", "vg0/vol1")
    assert [(o.status, o.transient) for o in outcomes] == [("failed", True), ("synced", False)]
