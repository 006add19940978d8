"""A real S3 server on loopback for the tests: Ceph's radosgw on a private one-node cluster.

One monitor, one OSD (BlueStore on a sparse file) and radosgw (beast frontend), all from
Debian 12's own packages (``ceph-mon ceph-osd radosgw``), all in one directory: config,
keys, data, logs, admin sockets and pid files.  Every tool gets ``-c WORKDIR/ceph.conf``,
so /etc/ceph is never read; everything listens on 127.0.0.1, on ports found free at start
(the OSD takes the first free ones of Ceph's own 6800-7300 range).  No ceph-mgr.

    server = S3Server.start(workdir)       # or: with S3Server.start(workdir) as server:
    server.client().put_object(Bucket=server.bucket, Key="k", Body=b"v")
    subprocess.run([...], env={**os.environ, **server.env()})
    server.stop_rgw(); server.start_rgw()  # S3 goes away and comes back, data kept
    server.stop()                          # idempotent; also registered with atexit

The daemons detach, so a killed run leaves them behind: each writes a pid file in
WORKDIR/run, and ``python3 tests/s3server.py stop WORKDIR`` (or ``scripts/s3-server stop
WORKDIR``) stops them by PID, signalling only a process whose command line names
WORKDIR/ceph.conf.  :meth:`S3Server.start` does the same first when WORKDIR holds an old
cluster, then builds a new one there.

This module uses the standard library only (boto3 is imported by :meth:`S3Server.client`),
so it runs under any Python 3.11 and as a script.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import http.client
import json
import os
import secrets
import shutil
import signal
import socket
import string
import struct
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

DAEMONS = ("rgw", "osd", "mon")  # stop order; start order is the reverse
BINARIES = ("ceph-mon", "ceph-osd", "radosgw", "radosgw-admin", "ceph", "monmaptool")
RGW_NAME = "client.rgw.s3"
STATE = "s3server.json"  # what a later process (the CLI) needs: ports, keys, bucket
REGION = "default"  # radosgw's zonegroup; it takes any region in a SigV4 scope

# boto3 >= 1.36 adds a CRC32 to every upload by default: over https as an aws-chunked
# trailer, which radosgw 16.2 refuses (400 MissingContentLength), over http (as here) as a
# header it ignores.  So the loopback tests cannot catch it: the storage layer must send
# checksums only "when_required" (older boto3 lacks the option and never sends them).
CHECKSUM_ENV = {
    "AWS_REQUEST_CHECKSUM_CALCULATION": "when_required",
    "AWS_RESPONSE_CHECKSUM_VALIDATION": "when_required",
}


class S3ServerError(Exception):
    """The cluster did not start (the message ends with the relevant log lines)."""


class PortTaken(S3ServerError):
    """Another process holds radosgw's port."""


def missing_binaries() -> list[str]:
    """The Ceph programs this needs that are not on PATH (empty: all installed)."""
    return [b for b in BINARIES if shutil.which(b) is None]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cephx_key() -> str:
    """A new cephx secret as ceph-authtool --gen-key writes it (type AES, 16 random bytes)."""
    return base64.b64encode(
        struct.pack("<HIIH", 1, int(time.time()), 0, 16) + secrets.token_bytes(16)
    ).decode()


def _token(n: int, alphabet: str) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(n))


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return f"  ({path}: no log)"
    return "\n".join(f"  {path.name}: {line}" for line in text)


# ---------------------------------------------------------------------------
# processes: found by pid file, signalled only after their command line is checked


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")  # a zombie has exited


def _is_ours(pid: int, conf: Path) -> bool:
    """Whether PID is alive and was started with ``-c CONF`` (pid files go stale, PIDs recycle)."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return _alive(pid) and os.fsencode(conf) in args


def _listeners(port: int) -> set[str]:
    """The inodes of the TCP sockets listening on PORT (any address, IPv4 or IPv6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                f = line.split()
                if f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port:
                    found.add(f[9])
    return found


def _sockets(pid: int) -> set[str]:
    """The inodes of PID's open sockets."""
    found = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:["):
                    found.add(link[8:-1])
    return found


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _stop_pid(pid: int, conf: Path, timeout: float = 20.0) -> None:
    """SIGTERM, wait up to TIMEOUT, then SIGKILL: only if PID is a daemon of CONF."""
    if not _is_ours(pid, conf):
        return
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not _alive(pid):
                return
            time.sleep(0.05)
    raise S3ServerError(f"PID {pid} ({conf}) survived SIGKILL")


def _pid_files(workdir: Path) -> dict[str, Path]:
    run = workdir / "run"
    return {"mon": run / "mon.a.pid", "osd": run / "osd.0.pid", "rgw": run / f"{RGW_NAME}.pid"}


def stop_workdir(workdir: Path, extra: dict[str, int] | None = None) -> list[int]:
    """Stop the daemons of the cluster in WORKDIR (rgw, OSD, mon) by the PIDs in their pid
    files (and EXTRA's, remembered at start), then remove those files.  Returns the PIDs
    signalled; safe to call when nothing runs."""
    workdir = Path(workdir).resolve()
    conf = workdir / "ceph.conf"
    files = _pid_files(workdir)
    stopped = []
    for name in DAEMONS:
        pids = {_read_pid(files[name]), (extra or {}).get(name)} - {None}
        for pid in pids:
            if _is_ours(pid, conf):
                _stop_pid(pid, conf)
                stopped.append(pid)
        # stale now (ceph-osd leaves its own behind), and a PID that may be recycled
        with contextlib.suppress(FileNotFoundError):
            files[name].unlink()
    return stopped


# ---------------------------------------------------------------------------
# conditional PUT: the storage layer needs the same helper


def _native_if_none_match(client: Any) -> bool:
    shape = client.meta.service_model.operation_model("PutObject").input_shape
    return "IfNoneMatch" in shape.members


def enable_if_none_match(client: Any) -> None:
    """Let ``client.put_object(..., IfNoneMatch="*")`` work on boto3 < 1.35 (Debian 12's 1.26),
    whose model lacks the parameter: it is taken out of the call's parameters before they are
    validated and sent as the ``If-None-Match`` header (signed).  A no-op on newer boto3."""
    if not _native_if_none_match(client):
        _hook_if_none_match(client)


def _hook_if_none_match(client: Any) -> None:
    if getattr(client, "_if_none_match_hooked", False):
        return

    def take(params: dict, context: dict, **_: Any) -> None:
        value = params.pop("IfNoneMatch", None)
        if value is not None:
            context["if_none_match"] = value

    def send(params: dict, context: dict, **_: Any) -> None:
        if "if_none_match" in context:
            params["headers"]["If-None-Match"] = context["if_none_match"]

    client.meta.events.register("before-parameter-build.s3.PutObject", take)
    client.meta.events.register("before-call.s3.PutObject", send)
    client._if_none_match_hooked = True


def put_if_absent(client: Any, bucket: str, key: str, body: bytes) -> bool:
    """PUT KEY only if no object has that name (``If-None-Match: *``): True if it was written,
    False if one already existed (HTTP 412; that object is left as it was)."""
    from botocore.exceptions import ClientError

    enable_if_none_match(client)
    try:
        client.put_object(Bucket=bucket, Key=key, Body=body, IfNoneMatch="*")
    except ClientError as e:
        if e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 412:
            return False
        raise
    return True


# ---------------------------------------------------------------------------


class S3Server:
    """A private Ceph cluster serving S3 on 127.0.0.1 (see the module's docstring)."""

    def __init__(self, workdir: Path, state: dict[str, Any]) -> None:
        self.workdir = Path(workdir).resolve()
        self.conf = self.workdir / "ceph.conf"
        self.mon_port: int = state["mon_port"]
        self.port: int = state["rgw_port"]
        self.access_key: str = state["access_key"]
        self.secret_key: str = state["secret_key"]
        self.bucket: str = state["bucket"]
        self.region: str = state.get("region", REGION)
        self.timings: dict[str, float] = {}  # seconds, per start-up step
        self._pids: dict[str, int] = {}
        self._stopped = False

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # --- building and starting -------------------------------------------------

    @classmethod
    def start(
        cls, workdir: Path, *, bucket: str = "lvdiff-test", block_size: int = 10 << 30
    ) -> S3Server:
        """Build a new cluster in WORKDIR (empty, or an earlier S3Server's: its daemons are
        stopped and it is replaced), start it, create a user and BUCKET.  BLOCK_SIZE is the
        OSD's sparse block file (it reserves nothing: a full disk fails the OSD)."""
        missing = missing_binaries()
        if missing:
            raise S3ServerError(
                f"not installed: {' '.join(missing)} (apt-get install ceph-mon ceph-osd radosgw)"
            )
        workdir = Path(workdir).resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        if (workdir / STATE).exists() or (workdir / "ceph.conf").exists():
            stop_workdir(workdir)
            for child in workdir.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
        elif any(workdir.iterdir()):
            raise S3ServerError(f"{workdir} is neither empty nor an S3Server's directory")
        state = {
            "mon_port": free_port(),
            "rgw_port": free_port(),
            "access_key": _token(20, string.ascii_uppercase + string.digits),
            "secret_key": _token(40, string.ascii_letters + string.digits),
            "bucket": bucket,
            "region": REGION,
            "fsid": str(uuid.uuid4()),
            "osd_uuid": str(uuid.uuid4()),
            "block_size": block_size,
        }
        server = cls(workdir, state)
        atexit.register(server.stop)
        try:
            server._build(state)
        except BaseException:
            server.stop()
            raise
        return server

    @classmethod
    def attach(cls, workdir: Path) -> S3Server:
        """The running cluster in WORKDIR, started by another process (e.g. the CLI).
        Its stop() is not registered with atexit."""
        workdir = Path(workdir).resolve()
        server = cls(workdir, json.loads((workdir / STATE).read_text()))
        server._pids = server.pids()
        return server

    def _build(self, state: dict[str, Any]) -> None:
        w = self.workdir
        for d in ("mon/ceph-a", "osd/ceph-0", "rgw", "run", "log", "crash"):
            (w / d).mkdir(parents=True)
        state_file = w / STATE
        state_file.touch(mode=0o600)
        state_file.write_text(json.dumps(state, indent=1) + "\n")
        self._write_conf(state)
        keys = {
            "mon.": {"mon": "allow *"},
            "client.admin": {"mon": "allow *", "osd": "allow *", "mgr": "allow *"},
            "osd.0": {"mon": "allow profile osd", "osd": "allow *", "mgr": "allow profile osd"},
            RGW_NAME: {"mon": "allow *", "osd": "allow *"},
        }
        keyring = w / "keyring"
        keyring.touch(mode=0o600)
        keyring.write_text(
            "".join(
                f"[{name}]\n\tkey = {cephx_key()}\n"
                + "".join(f'\tcaps {k} = "{v}"\n' for k, v in caps.items())
                for name, caps in keys.items()
            )
        )
        t0 = time.monotonic()
        monmap, mon_addr = str(w / "monmap"), f"[v2:127.0.0.1:{self.mon_port}]"
        self._run("monmaptool", "--create", "--fsid", state["fsid"], monmap, conf=False)
        self._run("monmaptool", "--addv", "a", mon_addr, monmap, conf=False)
        self._run("ceph-mon", "--mkfs", "-i", "a", "--monmap", monmap, "--keyring", str(keyring))
        self._must_start("mon", "ceph-mon", "-i", "a")
        self.timings["mon"] = time.monotonic() - t0
        # osd.0 into the OSD map (its key is in the mon's auth database, from the keyring)
        self._run("ceph", "--connect-timeout", "30", "osd", "new", state["osd_uuid"], "0")
        self._run("ceph-osd", "-i", "0", "--mkfs", "--osd-uuid", state["osd_uuid"])
        self._must_start("osd", "ceph-osd", "-i", "0")
        self.timings["osd"] = time.monotonic() - t0
        # radosgw creates its pools: it answers once the OSD is up and they are active.
        # A port found free may be taken before radosgw binds it: then another one.
        for attempt in (1, 2, 3):
            try:
                self.start_rgw()
                break
            except PortTaken:
                if attempt == 3:
                    raise
                self.port = state["rgw_port"] = free_port()
                state_file.write_text(json.dumps(state, indent=1) + "\n")
                self._write_conf(state)
        self.timings["rgw"] = time.monotonic() - t0
        user = ["--uid", "lvdiff", "--display-name", "lvdiff tests"]
        keys_ = ["--access-key", self.access_key, "--secret-key", self.secret_key]
        self._run("radosgw-admin", "user", "create", *user, *keys_)
        self.timings["user"] = time.monotonic() - t0
        self.client().create_bucket(Bucket=self.bucket)
        self.timings["bucket"] = time.monotonic() - t0

    def _write_conf(self, state: dict[str, Any]) -> None:
        w = self.workdir
        self.conf.write_text(
            f"""\
# A private test cluster (tests/s3server.py): every path is under {w}
[global]
fsid = {state["fsid"]}
mon host = [v2:127.0.0.1:{self.mon_port}]
mon initial members = a
public addr = 127.0.0.1
cluster addr = 127.0.0.1
ms bind ipv6 = false
ms bind msgr1 = false
ms bind msgr2 = true
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
keyring = {w}/keyring
run dir = {w}/run
pid file = {w}/run/$name.pid
log file = {w}/log/$name.log
log to stderr = false
err to stderr = false
crash dir = {w}/crash
mon cluster log file = {w}/log/cluster.log
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon warn on pool no redundancy = false
mon warn on insecure global id reclaim allowed = false
# radosgw creates ~6 pools at start, each a Paxos round: 16 s by default, 6-7 s with these
paxos propose interval = 0.05
paxos min wait = 0.01
# A radosgw that ended without unwatching (SIGKILL, or its port taken) stalls the next
# one's metadata writes (bucket or user created) until the OSD drops its watches: 30 s by
# default.  5 s here, with the clients' watch pings every second instead of every 5.
osd client watch timeout = 5
objecter tick interval = 1
# No erasure-code plugin preloaded (every pool here is replicated): jerasure's field setup
# runs instructions a plain qemu64 guest CPU lacks, and ceph-mon died of SIGILL in the rig.
osd erasure code plugins =

[mon]
mon data = {w}/mon/$cluster-$id

[osd]
osd data = {w}/osd/$cluster-$id
osd objectstore = bluestore
bluestore block create = true
bluestore block size = {state["block_size"]}
osd memory target = 1073741824
# start-up: skip the check of the store just made, and close the block file in 50 ms, not
# the 250 ms its aio thread sleeps (mkfs and start open and close it ~8 times)
bluestore fsck on mkfs = false
bdev aio poll ms = 50

[{RGW_NAME}]
rgw data = {w}/rgw
rgw frontends = beast endpoint=127.0.0.1:{self.port}
rgw dynamic resharding = false
"""
        )

    def _run(self, *args: str, conf: bool = True, timeout: float = 120) -> str:
        cmd = [args[0], *(["-c", str(self.conf)] if conf else []), *args[1:]]
        res = subprocess.run(
            cmd,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.workdir,
        )
        if res.returncode != 0:
            raise S3ServerError(f"{' '.join(cmd)}: exit {res.returncode}\n{res.stdout}{res.stderr}")
        return res.stdout

    def _daemon(self, name: str, *args: str) -> int | None:
        """Start a daemon (it forks; its parent returns once the daemon has written its pid
        file) and return the PID it wrote: None if that process has already ended."""
        pidfile = _pid_files(self.workdir)[name]
        with contextlib.suppress(FileNotFoundError):
            pidfile.unlink()  # a stale one from a killed daemon
        out = self.workdir / "log" / f"{name}.out"
        cmd = [args[0], "-c", str(self.conf), *args[1:]]
        with out.open("ab") as f:
            # not a pipe: the daemon keeps it open, and reading it would wait for its end
            res = subprocess.run(
                cmd, stdin=subprocess.DEVNULL, stdout=f, stderr=f, timeout=120, cwd=self.workdir
            )
        if res.returncode != 0:
            raise S3ServerError(f"{' '.join(cmd)}: exit {res.returncode}\n{_tail(out)}")
        deadline = time.monotonic() + 10
        while (pid := _read_pid(pidfile)) is None and time.monotonic() < deadline:
            time.sleep(0.02)
        if pid is None or not _is_ours(pid, self.conf):
            return None
        self._pids[name] = pid
        return pid

    def _must_start(self, name: str, *args: str) -> None:
        if self._daemon(name, *args) is None:
            raise S3ServerError(f"{name} did not start or ended at once\n{self._logs(name)}")

    def _logs(self, name: str) -> str:
        log = {"mon": "mon.a", "osd": "osd.0", "rgw": RGW_NAME}[name]
        return (
            _tail(self.workdir / "log" / f"{log}.log")
            + "\n"
            + _tail(self.workdir / "log" / f"{name}.out", 5)
        )

    # --- radosgw alone ----------------------------------------------------------

    def start_rgw(self, timeout: float = 120) -> None:
        """Start radosgw and wait until it listens on its port and ``GET /`` answers."""
        if self.pids().get("rgw"):
            return
        log = self.workdir / "log" / f"{RGW_NAME}.log"
        offset = log.stat().st_size if log.exists() else 0
        self._daemon("rgw", "radosgw", "-n", RGW_NAME)
        self._stopped = False
        deadline = time.monotonic() + timeout
        while True:
            pid = self.pids().get("rgw")
            # the listening socket must be radosgw's: another server may hold the port
            if pid and _listeners(self.port) & _sockets(pid) and self._get_root():
                return
            # radosgw logs this when its port is taken; detached, it may then exit before
            # the line reaches its log
            bind_failed = False
            with contextlib.suppress(OSError), log.open("rb") as f:
                f.seek(offset)
                bind_failed = b"failed to bind" in f.read()
            if bind_failed or (not pid and _listeners(self.port)):
                self.stop_rgw()
                raise PortTaken(
                    f"radosgw could not bind 127.0.0.1:{self.port}: another process holds it\n"
                    + _tail(log)
                )
            dead = [n for n in ("mon", "osd", "rgw") if not self.pids().get(n)]
            if dead:
                self.stop_rgw()
                raise S3ServerError(
                    f"{', '.join(dead)} exited while radosgw started\n"
                    + "\n".join(self._logs(n) for n in dead)
                )
            if time.monotonic() > deadline:
                self.stop_rgw()
                raise S3ServerError(f"radosgw did not answer in {timeout} s\n{_tail(log)}")
            time.sleep(0.1)

    def _get_root(self) -> bool:
        # http.client, not urllib: no proxy from the environment on the way to 127.0.0.1
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
        try:
            conn.request("GET", "/")
            return conn.getresponse().status == 200
        except OSError:
            return False
        finally:
            conn.close()

    def stop_rgw(self) -> None:
        pid = self._pids.pop("rgw", None) or _read_pid(_pid_files(self.workdir)["rgw"])
        if pid is not None:
            _stop_pid(pid, self.conf)

    def restart_rgw(self) -> None:
        self.stop_rgw()
        self.start_rgw()

    # --- the whole cluster --------------------------------------------------------

    def pids(self) -> dict[str, int]:
        """The live daemons: {"mon": PID, "osd": PID, "rgw": PID} (those that run)."""
        found = {}
        files = _pid_files(self.workdir)
        for name in DAEMONS:
            for pid in (self._pids.get(name), _read_pid(files[name])):
                if pid is not None and _is_ours(pid, self.conf):
                    found[name] = pid
                    break
        return found

    def stop(self) -> None:
        """Stop every daemon (rgw, OSD, mon), by PID; idempotent."""
        if self._stopped:
            return
        stop_workdir(self.workdir, self._pids)
        self._pids.clear()
        self._stopped = True

    def __enter__(self) -> S3Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- clients ----------------------------------------------------------------

    def env(self) -> dict[str, str]:
        """The environment a program (lvdiff) needs to reach this server."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
            "LVDIFF_S3_ENDPOINT": self.endpoint,
            "LVDIFF_S3_BUCKET": self.bucket,
            **CHECKSUM_ENV,
        }

    def client(self, **config: Any) -> Any:
        """A boto3 S3 client for this server: path-style, its endpoint and keys, no proxy.
        CONFIG goes to botocore's Config (e.g. retries={"max_attempts": 1})."""
        import boto3
        from botocore.config import Config

        opts: dict[str, Any] = {
            "s3": {"addressing_style": "path"},
            "proxies": {},  # not None: no http_proxy from the environment
            "retries": {"max_attempts": 3, "mode": "standard"},
        }
        if "request_checksum_calculation" in Config.OPTION_DEFAULTS:
            opts["request_checksum_calculation"] = "when_required"
            opts["response_checksum_validation"] = "when_required"
        opts.update(config)
        client = boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            config=Config(**opts),
        )
        enable_if_none_match(client)
        return client


def rss_kib(pid: int) -> int:
    """A process's resident memory (VmRSS), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def main(argv: list[str]) -> int:
    usage = (
        "usage: s3server.py start|stop|status|env WORKDIR\n"
        "  start   build and start a cluster in WORKDIR, print its environment, leave it running\n"
        "  stop    stop WORKDIR's daemons by the PIDs in their pid files (checked first)\n"
        "  status  print the live daemons' PIDs and RSS\n"
        "  env     print the shell exports that reach the running cluster"
    )
    if len(argv) != 2 or argv[0] not in ("start", "stop", "status", "env"):
        print(usage, file=sys.stderr)
        return 2
    cmd, workdir = argv[0], Path(argv[1]).resolve()
    if cmd == "stop":
        pids = stop_workdir(workdir)
        print(f"stopped {len(pids)} daemon(s) of {workdir}: {' '.join(map(str, pids))}".rstrip())
        return 0
    if cmd == "start":
        t0 = time.monotonic()
        server = S3Server.start(workdir)
        atexit.unregister(server.stop)  # left running: `stop WORKDIR` ends it
        steps = " ".join(f"{k} {v:.1f}" for k, v in server.timings.items())
        print(
            f"# started in {time.monotonic() - t0:.1f} s ({steps}): {server.pids()}",
            file=sys.stderr,
        )
    else:
        if not (workdir / STATE).exists():
            print(f"no cluster in {workdir}", file=sys.stderr)
            return 1
        server = S3Server.attach(workdir)
    if cmd == "status":
        pids = server.pids()
        for name in ("mon", "osd", "rgw"):
            if name in pids:
                print(f"{name} {pids[name]} {rss_kib(pids[name]) // 1024} MiB")
            else:
                print(f"{name} not running")
        return 0 if len(pids) == 3 else 1
    for k, v in server.env().items():
        print(f"export {k}={v}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
