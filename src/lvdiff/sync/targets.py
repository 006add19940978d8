"""Where lvsync sends: a volume group here, one over ssh, or a directory of stream files.

All three answer the same small interface (:class:`Target`), so another store
(the repository to come) can be added behind it: reach the target once and
say what it holds (:meth:`Target.prepare`), receive a stream under a name,
remove one of this source's copies, give up a kept restore.  Results are
typed (:class:`Received`); the command line only renders them.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from .. import __version__, lvm
from ..errors import LvdiffError, TransientError, UsageError
from ..events import Note, Reporter, ignore
from ..inventory import Held, Inventory, inventory
from ..stream.digest import Digest, HashingWriter
from .naming import Source

Producer = Callable[[BinaryIO], Any]  # writes one lvdiff stream into the file it is given

# The far side's failures worth a retry, by class (lvpatch --json's "error"): the
# stream stopped before its END (the link was cut), or lvpatch was interrupted
# (a dropped ssh session hangs up its command).
TRANSIENT_REMOTE = frozenset({"TruncatedStream", "Interrupted"})
_HOST_RE = re.compile(r"^(?:[A-Za-z0-9_.][A-Za-z0-9_.-]*@)?[A-Za-z0-9_][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class Receive:
    """What to make of one stream on the target."""

    name: str  # the copy's name (the snapshot's)
    base: str | None  # the target volume it applies onto; None for a full stream
    source: Source
    tags: tuple[str, ...]  # the copy's (naming.Source.tags): lvsync's, the source's, the job's
    resume: bool = False  # continue a kept restore instead of starting one
    checkpoint_mib: int = 64


@dataclass(frozen=True)
class Received:
    """What the target made of one stream."""

    target: str  # where it went, for people
    identity: str | None  # of the copy: NEW's
    kind: str
    written: int  # bytes of data written
    zeroed: int  # bytes written or discarded as zeros
    digest: str | None  # algorithm:hex of the stream
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_summary(cls, obj: dict[str, Any]) -> Received:
        """From the summary ``lvpatch --json`` writes after a restore (README)."""
        try:
            return cls(
                obj["target"],
                obj["new"]["identity"],
                obj["kind"],
                int(obj["bytes"]["written"]),
                int(obj["bytes"]["zeroed"]),
                obj.get("stream_digest"),
                float(obj.get("seconds", 0.0)),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise LvdiffError(f"the far side's lvpatch did not describe a restore: {e}") from None


class Target(Protocol):
    label: str  # for people
    key: str  # the target spelled canonically: what names the job
    prunable: bool  # whether retention may remove what it holds

    def prepare(self, report: Reporter = ignore) -> list[Held]:
        """Reach the target once: what it holds; refuse, before anything is made, what
        cannot work (a VG without one thin pool to put a full stream in)."""
        ...

    def receive(self, produce: Producer, what: Receive) -> Received: ...
    def remove(self, name: str, source: Source) -> None: ...
    def abandon(self, name: str) -> None: ...
    def close(self) -> None: ...


def parse_target(spec: str, ssh_options: list[str], remote_lvpatch: str = "lvpatch") -> Target:
    """``VG[/POOL]``, ``[user@]host:VG[/POOL]``, ``dir:/path`` or an S3 location."""
    if spec.startswith(("s3://", "s3+https://", "s3+http://")):
        return RepoTarget(spec)
    if spec.startswith("dir:"):
        if not spec[4:]:
            raise UsageError("dir: needs a path: dir:/srv/lvsync")
        return RepoTarget(spec)
    host, sep, where = spec.rpartition(":")
    vg, _, pool = where.partition("/")
    lvm.check_name(vg, "VG name")
    if pool:
        lvm.check_name(pool, "pool name")
    if sep:
        if not _HOST_RE.match(host):
            raise UsageError(
                f"cannot read the target host in {spec!r}: give [user@]host (letters, digits, "
                "'.', '_', '-'; an ssh_config Host alias for anything else)"
            )
        return SshTarget(host, vg, pool or None, ssh_options, remote_lvpatch)
    return LocalTarget(vg, pool or None)


def _pick_pool(where: str, wanted: str | None, pools: list[str]) -> str:
    """The pool a full stream goes to: the one named, else the VG's only one."""
    if wanted:
        if wanted not in pools:
            raise UsageError(f"{where} has no thin pool {wanted} (it has: {', '.join(pools)})")
        return wanted
    if len(pools) == 1:
        return pools[0]
    if not pools:
        raise UsageError(f"{where} has no thin pool to restore into")
    raise UsageError(f"{where} has thin pools {', '.join(pools)}: name one, as VG/POOL")


@dataclass
class LocalTarget:
    """A volume group on this machine: lvpatch runs in-process, fed through a pipe."""

    vg: str
    pool: str | None
    prunable: bool = True

    @property
    def label(self) -> str:
        return f"{self.vg}/{self.pool}" if self.pool else self.vg

    @property
    def key(self) -> str:
        return f"local:{self.vg}"

    def prepare(self, report: Reporter = ignore) -> list[Held]:
        found = inventory(self.vg)
        self.pool = _pick_pool(f"volume group {self.vg}", self.pool, found.pools)
        return found.volumes

    def receive(self, produce: Producer, what: Receive) -> Received:
        from ..apply import ApplyOptions, apply_stream

        r, w = os.pipe()
        failure: list[BaseException] = []

        def feed() -> None:
            try:
                with open(w, "wb") as out:
                    produce(out)
            except BaseException as e:  # noqa: BLE001 - reported after the reader ends
                failure.append(e)

        started = datetime.now(UTC)
        writer = threading.Thread(target=feed, name="lvsync-send")
        writer.start()
        try:
            with open(r, "rb", buffering=0) as inp:  # no lock a blocked reader could hold
                res = apply_stream(
                    inp,
                    self.vg,
                    base=what.base,
                    pool=self.pool,
                    name=what.name,
                    options=ApplyOptions(
                        resumable=True,
                        resume=what.resume,
                        tags=what.tags,
                        checkpoint_bytes=what.checkpoint_mib << 20,
                    ),
                )
        except BaseException as e:
            writer.join()  # the sender gets EPIPE once the pipe's reader is closed
            cause = next((f for f in failure if not isinstance(f, BrokenPipeError)), None)
            if cause is not None:  # the sending side failed first: that is the news
                raise cause from e
            raise
        writer.join()
        if failure:
            raise failure[0]
        t = res.totals
        return Received(
            res.target,
            res.header.new.identity,
            res.header.kind,
            t.data_bytes,
            t.zero_bytes,
            str(res.digest) if res.digest else None,
            (datetime.now(UTC) - started).total_seconds(),
        )

    def close(self) -> None:
        pass

    def remove(self, name: str, source: Source) -> None:
        from ..apply import prune

        prune(self.vg, name, source.tag)

    def abandon(self, name: str) -> None:
        from ..apply import abandon

        abandon(self.vg, name)


@dataclass
class SshTarget:
    """A volume group on another machine: OpenSSH runs its own lvpatch.

    BatchMode (no prompts), one ControlMaster connection per run, the user's
    ~/.ssh/config honoured; ``ssh_options`` pass through (-p, -i, -o ...).
    The far side is asked for its inventory once per run; a failure there
    comes back as data (``lvpatch --json``'s error class), never read from
    the words of a message.
    """

    host: str
    vg: str
    pool: str | None
    ssh_options: list[str]
    lvpatch: str = "lvpatch"
    prunable: bool = True
    _control: str = field(default_factory=lambda: tempfile.mkdtemp(prefix="lvsync-ssh-"))

    @property
    def label(self) -> str:
        return f"{self.host}:{self.vg}" + (f"/{self.pool}" if self.pool else "")

    @property
    def key(self) -> str:
        return f"ssh:{self.host}:{self.vg}"

    def _ssh(self, *remote: str) -> list[str]:
        return [
            "ssh",
            "-o",
            "BatchMode=yes",
            "-o",
            "ControlMaster=auto",
            "-o",
            f"ControlPath={self._control}/%C",
            "-o",
            "ControlPersist=120",
            *self.ssh_options,
            self.host,
            "--",
            shlex.join([*shlex.split(self.lvpatch), *remote]),
        ]

    def _run(self, *remote: str) -> dict[str, Any]:
        """Run the far side's lvpatch with --json; its summary, or its failure raised."""
        try:
            proc = subprocess.run(
                self._ssh(*remote, "--json"),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                check=False,
            )
        except FileNotFoundError:
            raise UsageError("ssh not found: install openssh-client") from None
        return self.result(proc.returncode, proc.stdout, proc.stderr)

    def result(self, rc: int, out: bytes, err: bytes) -> dict[str, Any]:
        """What the far side's answer means: its JSON summary, or an error of the right kind.

        ssh exits 255 for its own failures (unreachable, refused, the link
        lost): worth a retry.  Otherwise the far side's lvpatch says what
        failed as ``{"error": {"class", "exit", "message"}}``; only a cut
        stream or an interrupted lvpatch is transient.
        """
        try:
            obj = json.loads(out.decode(errors="replace").strip().splitlines()[-1])
        except (ValueError, IndexError):
            obj = None
        obj = obj if isinstance(obj, dict) else {}
        if rc == 255:
            raise TransientError(
                f"cannot reach {self.host} over ssh, or the connection was lost"
                + (f": {m}" if (m := _ssh_message(err)) else "")
            )
        if rc < 0:  # ssh itself was killed: the connection is gone, whatever the far side did
            raise TransientError(f"the ssh connection to {self.host} was lost (signal {-rc})")
        error = obj.get("error")
        if rc == 0 and not error:
            return obj
        if isinstance(error, dict):
            cls, message = str(error.get("class")), str(error.get("message"))
            if cls in TRANSIENT_REMOTE:
                raise TransientError(f"the transfer to {self.host} was cut ({cls}): {message}")
            raise LvdiffError(f"lvpatch on {self.host} failed ({cls}): {message}")
        last = (err.decode(errors="replace").strip().splitlines() or [""])[-1]
        raise LvdiffError(f"lvpatch on {self.host} failed (exit {rc}): {last}")

    def prepare(self, report: Reporter = ignore) -> list[Held]:
        obj = self._run("--list", "-g", self.vg)
        if obj.get("tool") != f"lvpatch {__version__}":
            raise LvdiffError(
                f"{self.host} runs {obj.get('tool') or 'an lvpatch that cannot list'}, this is "
                f"lvsync {__version__}: install the same lvdiff version on both sides"
            )
        try:
            found = Inventory.from_dict(obj)
        except ValueError as e:
            raise LvdiffError(f"{self.host}: {e}") from None
        self.pool = _pick_pool(f"{self.host}:{self.vg}", self.pool, found.pools)
        return found.volumes

    def receive(self, produce: Producer, what: Receive) -> Received:
        # the stream's own digest: free, where SHA-256 would cost the far side a core
        args = ["--no-progress", "--digest", "xxh128", "-g", self.vg]
        if what.resume:
            args.append("--resume")
        else:
            args += ["-s", "--checkpoint-mib", str(what.checkpoint_mib)]
            args += ["-l", what.base] if what.base else ["-p", self.pool or ""]
        for t in what.tags:
            args += ["--tag", t]
        try:
            proc = subprocess.Popen(
                self._ssh(*args, "--json", what.name),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
        except FileNotFoundError:
            raise UsageError("ssh not found: install openssh-client") from None
        outputs: dict[str, bytes] = {}
        drain = threading.Thread(target=lambda: outputs.update(_read_both(proc)))
        drain.start()
        sent: BaseException | None = None
        try:
            assert proc.stdin is not None
            produce(proc.stdin)
        except BrokenPipeError:
            pass  # the far side stopped reading: its answer says why
        except BaseException as e:
            sent = e
        finally:
            if proc.stdin:
                with contextlib.suppress(BrokenPipeError):
                    proc.stdin.close()
            proc.wait()
            drain.join()
        if sent is not None:
            # The sending side failed first (a read error, Ctrl-C, SIGTERM): that is the
            # news; the far side only saw the stream stop.
            raise sent
        obj = self.result(proc.returncode, outputs.get("out", b""), outputs.get("err", b""))
        return Received.from_summary(obj)

    def remove(self, name: str, source: Source) -> None:
        self._run("--prune", source.tag, "-g", self.vg, name)

    def abandon(self, name: str) -> None:
        self._run("--abandon", "-g", self.vg, name)

    def close(self) -> None:
        """End the shared connection and its socket directory."""
        with contextlib.suppress(FileNotFoundError):
            subprocess.run(
                ["ssh", "-o", f"ControlPath={self._control}/%C", "-O", "exit", self.host],
                capture_output=True,
                check=False,
            )
        shutil.rmtree(self._control, ignore_errors=True)


def _ssh_message(err: bytes) -> str:
    """ssh's own last line: the far side's lvpatch starts each of its lines with its name."""
    lines = [ln for ln in err.decode(errors="replace").strip().splitlines() if ln.strip()]
    own = [ln for ln in lines if not ln.startswith("lvpatch")]
    return own[-1].strip() if own else ""


def _read_both(proc: subprocess.Popen[bytes]) -> dict[str, bytes]:
    out = proc.stdout.read() if proc.stdout else b""
    err = proc.stderr.read() if proc.stderr else b""
    return {"out": out, "err": err}


MANIFEST = "manifest.json"
MANIFEST_VERSION = 3  # 3: one per source folder; 2: one for the whole directory (still read)


@dataclass
class DirTarget:
    """A directory of stream files, one folder per source, each with a manifest.

    ``<path>/<VG UUID>/<LV>/<snapshot>.lvd`` and ``.../manifest.json`` (see
    docs/FORMAT.md): several machines can write into one directory at once,
    since no two sources share a file.  A stream is written under a temporary
    name, digested (SHA-256) as it is written, renamed once complete, then
    the manifest is replaced; a cut transfer leaves a ``.partial`` file the
    next run of that source removes (these targets do not resume).  Streams
    of a chain depend on each other, so retention never removes them here.
    A directory an older lvsync wrote (one ``<path>/manifest.json``) still
    restores; lvsync starts new chains beside it.
    """

    path: Path
    prunable: bool = False

    @property
    def label(self) -> str:
        return f"dir:{self.path}"

    @property
    def key(self) -> str:
        return f"dir:{self.path.resolve()}"

    def prepare(self, report: Reporter = ignore) -> list[Held]:
        self.path.mkdir(parents=True, exist_ok=True)
        return [
            Held(s["name"], s["identity"], s["size"], True, True, None, list(s["tags"]))
            for s in self.streams()
        ]

    def folder(self, source_key: str) -> Path:
        return self.path / source_key

    def manifests(self) -> list[Path]:
        """Each source's manifest (version 3), then the directory-wide one of version 2."""
        found = sorted(self.path.glob(f"*/*/{MANIFEST}"))
        legacy = self.path / MANIFEST
        return found + ([legacy] if legacy.exists() else [])

    def streams(self, manifest: Path | None = None) -> list[dict[str, Any]]:
        """The streams one manifest lists (all of them with none given), in the order written."""
        out: list[dict[str, Any]] = []
        for m in [manifest] if manifest else self.manifests():
            try:
                doc = json.loads(m.read_text())
            except FileNotFoundError:
                continue
            except ValueError as e:
                raise LvdiffError(f"{m} is not a manifest lvsync wrote: {e}") from None
            if not isinstance(doc, dict) or doc.get("version", 0) > MANIFEST_VERSION:
                raise LvdiffError(f"{m} was written by a newer lvsync (manifest version > 3)")
            out += doc["streams"]
        return out

    def receive(self, produce: Producer, what: Receive) -> Received:
        if what.resume:
            raise UsageError("a dir: target does not resume transfers")
        started = datetime.now(UTC)
        folder = self.folder(what.source.key)
        folder.mkdir(parents=True, exist_ok=True)
        for partial in folder.glob("*.partial"):  # this source's cut transfers
            partial.unlink(missing_ok=True)
        final = folder / f"{what.name}.lvd"
        partial = folder / f"{what.name}.lvd.partial"
        try:
            with open(partial, "xb") as f:
                out = HashingWriter(f, Digest.SHA256)  # kept to check each stream by
                result = produce(out)
                f.flush()
                os.fsync(f.fileno())
            os.rename(partial, final)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        h, digest = result.header, str(out.digest())
        entry = {
            "file": str(final.relative_to(self.path)),
            "name": what.name,
            "identity": h.new.identity,
            "base": what.base,
            "base_identity": h.base.identity if h.base else None,
            "kind": h.kind,
            "size": h.volume_size,
            "digest": digest,
            "tags": list(what.tags),
            "written": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        manifest = folder / MANIFEST
        doc = {
            "version": MANIFEST_VERSION,
            "source": what.source.to_dict(),
            "streams": self.streams(manifest) + [entry],
        }
        tmp = folder / f".{MANIFEST}.tmp"
        tmp.write_text(json.dumps(doc, indent=1) + "\n")
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.rename(tmp, manifest)
        t = result.totals
        return Received(
            str(final),
            h.new.identity,
            h.kind,
            t.data_bytes,
            t.zero_bytes,
            digest,
            (datetime.now(UTC) - started).total_seconds(),
        )

    def remove(self, name: str, source: Source) -> None:
        raise LvdiffError("streams in a dir: target are never pruned (a chain needs them all)")

    def abandon(self, name: str) -> None:
        pass

    def close(self) -> None:
        pass


@dataclass
class RepoTarget:
    """A repository (``dir:`` since issue 20, or S3): one point per stream received.

    Each point stands alone, so retention prunes any of them (``prunable``);
    a point's chunks go at the repository's next ``lvrepo gc``.  A new point
    reads from the snapshot only the slots thin_delta says changed since the
    previous point of the source (the job's newest common snapshot), and
    takes the rest from that point's index.  A directory an older lvsync
    filled with stream folders becomes a repository beside them (those still
    restore with ``lvsync --restore``); a directory without a repository gets
    an unencrypted one, an S3 location must be made with ``lvrepo init``.  An
    encrypted repository is opened with ``key_file`` (and the passphrase in
    ``passphrase_file``).
    """

    spec: str  # dir:/path, s3://BUCKET/PREFIX or s3+https://HOST/BUCKET/PREFIX
    key_file: Path | None = None
    passphrase_file: Path | None = None
    level: int = 2
    prunable: bool = True
    notes: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return self.spec if not self.spec.startswith("/") else f"dir:{self.spec}"

    @property
    def key(self) -> str:
        from ..repo.access import is_s3

        if is_s3(self.spec):
            return self.spec.rstrip("/")
        return f"dir:{Path(self.spec.removeprefix('dir:')).resolve()}"

    def _open(self):  # noqa: ANN202 - repo.repository.Repository
        from ..repo.access import is_s3, open_repository, store_for
        from ..repo.crypto import new_keys
        from ..repo.format import CONFIG
        from ..repo.repository import Repository

        if not is_s3(self.spec):
            path = Path(self.spec.removeprefix("dir:"))
            if not (path / CONFIG).exists():
                self.notes.append(
                    f"made an unencrypted repository in {path}; for an encrypted one, "
                    "make it first: lvrepo init --encryption aes-256-gcm dir:PATH"
                )
                return Repository.create(store_for(self.spec, create=True), new_keys("none"))
        return open_repository(self.spec, self.key_file, self.passphrase_file)

    def prepare(self, report: Reporter = ignore) -> list[Held]:
        self.repo = self._open()
        for text in self.notes:
            report(Note(text))
        self.points = self.repo.points()
        return [
            Held(p.name, p.identity, p.size, True, True, None, list(p.tags)) for p in self.points
        ]

    def receive(self, produce: Producer, what: Receive) -> Received:
        from ..repo.format import SourceRef
        from ..repo.make import make_from_volume

        if what.resume:
            raise UsageError("a repository does not resume transfers: the next run sends again")
        src = what.source
        mine = [p for p in self.points if p.source.key == src.key]
        previous = next((p for p in reversed(mine) if p.name == what.base), None)
        started = datetime.now(UTC)
        with produce.prepared() as prepared:  # type: ignore[attr-defined]
            made = make_from_volume(
                self.repo,
                prepared,
                SourceRef(src.key, src.host, src.vg, src.lv),
                previous if what.base else None,
                level=self.level,
                tags=list(what.tags),
            )
        self.points.append(made.point)
        st = made.stats
        return Received(
            made.point.id,
            made.point.identity,
            "incremental" if previous else "full",
            st.read_bytes,
            st.zero_bytes,
            None,
            (datetime.now(UTC) - started).total_seconds(),
        )

    def remove(self, name: str, source: Source) -> None:
        for p in [p for p in self.points if p.name == name and p.source.key == source.key]:
            self.repo.delete_point(p)
            self.points.remove(p)

    def abandon(self, name: str) -> None:
        pass

    def close(self) -> None:
        pass
