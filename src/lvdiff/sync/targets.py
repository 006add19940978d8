"""Where lvsync sends: a volume group here, one over ssh, or a directory of stream files.

All three answer the same small interface (:class:`Target`), so another store
(object storage) can be added behind it later: say what you hold (volumes
with their identities, restores kept for resuming), receive a stream under a
name, remove one of lvsync's volumes, give up a kept restore.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from .. import __version__, lvm
from ..errors import LvdiffError, UsageError
from ..inventory import Held, inventory
from ..stream.digest import Digest, HashingWriter

Producer = Callable[[BinaryIO], Any]  # writes one lvdiff stream into the file it is given


class TransientError(LvdiffError):
    """Worth a retry later: the target was unreachable, or the link dropped."""

    exit_code = 75


@dataclass(frozen=True)
class Receive:
    """What to make of one stream on the target."""

    name: str  # the restored volume's name (the snapshot's)
    base: str | None  # the target volume it applies onto; None for a full stream
    resume: bool = False  # continue a kept restore instead of starting one
    tags: tuple[str, ...] = ()
    checkpoint_mib: int = 64


class Target(Protocol):
    label: str
    prunable: bool  # whether retention may remove what it holds

    def prepare(self) -> None: ...
    def inventory(self) -> list[Held]: ...
    def receive(self, produce: Producer, what: Receive) -> dict[str, Any]: ...
    def remove(self, name: str, required_tags: tuple[str, ...]) -> None: ...
    def abandon(self, name: str) -> None: ...
    def close(self) -> None: ...


def parse_target(spec: str, ssh_options: list[str], remote_lvpatch: str = "lvpatch") -> Target:
    """``VG[/POOL]``, ``[user@]host:VG[/POOL]`` or ``dir:/path``."""
    if spec.startswith("dir:"):
        return DirTarget(Path(spec[4:]))
    host, sep, where = spec.rpartition(":")
    vg, _, pool = where.partition("/")
    lvm.check_name(vg, "VG name")
    if pool:
        lvm.check_name(pool, "pool name")
    if sep:
        if not host or host.startswith("-"):
            raise UsageError(f"cannot read the target host in {spec!r}")
        return SshTarget(host, vg, pool or None, ssh_options, remote_lvpatch)
    return LocalTarget(vg, pool or None)


@dataclass
class LocalTarget:
    """A volume group on this machine: lvpatch runs in-process, fed through a pipe."""

    vg: str
    pool: str | None
    prunable: bool = True

    @property
    def label(self) -> str:
        return f"{self.vg}/{self.pool}" if self.pool else self.vg

    def prepare(self) -> None:
        pass  # inventory() is what reaches the VG

    def inventory(self) -> list[Held]:
        return inventory(self.vg)

    def receive(self, produce: Producer, what: Receive) -> dict[str, Any]:
        from ..apply import ApplyOptions, apply_stream
        from ..cli.lvpatch import summary

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
        return summary(res, (datetime.now(UTC) - started).total_seconds(), res.digest)

    def close(self) -> None:
        pass

    def remove(self, name: str, required_tags: tuple[str, ...]) -> None:
        lv = lvm.get_lv(self.vg, name)
        if not set(required_tags) <= set(lv.tags):
            raise LvdiffError(f"{lv.full_name} is not lvsync's; not removing it")
        lvm.remove(lv)

    def abandon(self, name: str) -> None:
        from ..apply import abandon

        abandon(self.vg, name)


@dataclass
class SshTarget:
    """A volume group on another machine: OpenSSH runs its own lvpatch.

    BatchMode (no prompts), one ControlMaster connection per run, the user's
    ~/.ssh/config honoured; ``ssh_options`` pass through (-p, -i, -o ...).
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

    def _run(self, *remote: str) -> str:
        try:
            proc = subprocess.run(
                self._ssh(*remote), stdin=subprocess.DEVNULL, capture_output=True, check=False
            )
        except FileNotFoundError:
            raise UsageError("ssh not found: install openssh-client") from None
        return self._result(proc.returncode, proc.stdout, proc.stderr)

    def _result(self, rc: int, out: bytes, err: bytes) -> str:
        text = err.decode(errors="replace").strip().splitlines()
        last = text[-1] if text else ""
        if rc == 255:
            raise TransientError(f"cannot reach {self.host} over ssh: {last}")
        if rc < 0:  # ssh itself was killed: the connection is gone, whatever the far side did
            raise TransientError(f"the ssh connection to {self.host} was lost (signal {-rc})")
        if rc != 0:
            if "stream ends before" in last or "interrupted" in last:
                raise TransientError(f"the transfer to {self.host} was cut: {last}")
            raise LvdiffError(f"lvpatch on {self.host} failed (exit {rc}): {last}")
        return out.decode(errors="replace")

    def prepare(self) -> None:
        pass  # inventory() is what reaches the host, and names its version

    def inventory(self) -> list[Held]:
        try:
            obj = json.loads(self._run("--list", "-g", self.vg, "--json"))
        except ValueError:
            obj = {}
        if obj.get("tool") != f"lvpatch {__version__}":
            raise LvdiffError(
                f"{self.host} runs {obj.get('tool') or 'an lvpatch that cannot list'}, this is "
                f"lvsync {__version__}: install the same lvdiff version on both sides"
            )
        return [Held(**v) for v in obj["volumes"]]

    def receive(self, produce: Producer, what: Receive) -> dict[str, Any]:
        # the stream's own digest: free, where SHA-256 would cost the far side a core
        args = ["--no-progress", "--json", "--digest", "xxh128", "-g", self.vg]
        if what.resume:
            args.append("--resume")
        else:
            args += ["-s", "--checkpoint-mib", str(what.checkpoint_mib)]
            args += ["-l", what.base] if what.base else ["-p", self.pool or ""]
            if not what.base and not self.pool:
                raise UsageError(f"a full stream needs a pool on {self.host}: give VG/POOL")
        for t in what.tags:
            args += ["--tag", t]
        proc = subprocess.Popen(
            self._ssh(*args, what.name),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        outputs: dict[str, bytes] = {}
        drain = threading.Thread(target=lambda: outputs.update(_read_both(proc)))
        drain.start()
        sent: BaseException | None = None
        try:
            assert proc.stdin is not None
            produce(proc.stdin)
        except BrokenPipeError:
            pass  # the far side stopped reading: its exit status says why
        except BaseException as e:
            sent = e
        finally:
            if proc.stdin:
                with contextlib.suppress(BrokenPipeError):
                    proc.stdin.close()
            proc.wait()
            drain.join()
        result = self._result(proc.returncode, outputs.get("out", b""), outputs.get("err", b""))
        if sent is not None:
            raise sent
        return json.loads(result)

    def remove(self, name: str, required_tags: tuple[str, ...]) -> None:
        args = ["--prune", "-g", self.vg]
        for t in required_tags:
            args += ["--tag", t]
        self._run(*args, name)

    def abandon(self, name: str) -> None:
        self._run("--abandon", "-g", self.vg, name)

    def close(self) -> None:
        """End the shared connection and its socket directory."""
        subprocess.run(
            ["ssh", "-o", f"ControlPath={self._control}/%C", "-O", "exit", self.host],
            capture_output=True,
            check=False,
        )
        shutil.rmtree(self._control, ignore_errors=True)


def _read_both(proc: subprocess.Popen[bytes]) -> dict[str, bytes]:
    out = proc.stdout.read() if proc.stdout else b""
    err = proc.stderr.read() if proc.stderr else b""
    return {"out": out, "err": err}


@dataclass
class DirTarget:
    """A directory of stream files and a manifest naming each stream's base and NEW.

    ``<path>/<volume>/<snapshot>.lvd`` plus ``<path>/manifest.json``.  A stream
    is written under a temporary name and renamed once complete, then the
    manifest is replaced; a cut transfer leaves a ``.partial`` file the next
    run removes (these targets do not resume).  Streams of a chain depend on
    each other, so retention never removes them here.
    """

    path: Path
    prunable: bool = False

    @property
    def label(self) -> str:
        return f"dir:{self.path}"

    def prepare(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        for partial in self.path.glob("*/*.partial"):
            partial.unlink()

    def manifest(self) -> list[dict[str, Any]]:
        try:
            return json.loads((self.path / "manifest.json").read_text())["streams"]
        except FileNotFoundError:
            return []

    def inventory(self) -> list[Held]:
        return [
            Held(s["name"], s["identity"], s["size"], True, True, None, list(s["tags"]))
            for s in self.manifest()
        ]

    def receive(self, produce: Producer, what: Receive) -> dict[str, Any]:
        if what.resume:
            raise UsageError("a dir: target does not resume transfers")
        lv = next(t for t in what.tags if t.startswith("lvsync_source:")).split(":", 1)[1]
        folder = self.path / lv
        folder.mkdir(parents=True, exist_ok=True)
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
        h = result.header
        entry = {
            "file": str(final.relative_to(self.path)),
            "name": what.name,
            "identity": h.new.identity,
            "base": what.base,
            "base_identity": h.base.identity if h.base else None,
            "kind": h.kind,
            "size": h.volume_size,
            "digest": str(out.digest()),
            "tags": list(what.tags),
            "written": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        streams = self.manifest() + [entry]
        tmp = self.path / ".manifest.json.tmp"
        tmp.write_text(json.dumps({"version": 2, "streams": streams}, indent=1) + "\n")
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.rename(tmp, self.path / "manifest.json")
        return {"target": str(final), "stream_digest": str(out.digest()), "kind": h.kind}

    def remove(self, name: str, required_tags: tuple[str, ...]) -> None:
        raise LvdiffError("streams in a dir: target are never pruned (a chain needs them all)")

    def abandon(self, name: str) -> None:
        pass

    def close(self) -> None:
        pass
