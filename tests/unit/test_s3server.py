"""tests/s3server.py: a real S3 server (Ceph radosgw) on loopback, and what it does for S3.

One cluster serves the whole module (start-up takes ~3 s), in $LVDIFF_S3_WORKDIR if set (an
earlier cluster there is stopped and replaced) or in a pytest temporary directory; the last
test stops it.  Skipped where Ceph is not installed (scripts/setup installs it).
"""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..s3server import (
    S3Server,
    S3ServerError,
    _alive,
    _hook_if_none_match,
    missing_binaries,
    put_if_absent,
    stop_workdir,
)

SCRIPT = Path(__file__).resolve().parents[1] / "s3server.py"
MiB = 1 << 20


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    missing = missing_binaries()
    if missing:
        pytest.skip(f"Ceph is not installed (no {', '.join(missing)}): run scripts/setup")
    pytest.importorskip("boto3", reason="boto3 is not installed: run scripts/setup")
    # CI names a fixed directory, so that its next run (or `scripts/s3-server stop DIR`)
    # ends what a killed run left running there
    workdir = os.environ.get("LVDIFF_S3_WORKDIR") or tmp_path_factory.mktemp("s3")
    server = S3Server.start(Path(workdir))
    yield server
    server.stop()


@pytest.fixture
def client(s3: S3Server):
    return s3.client()


def error_status(exc: BaseException) -> int:
    return exc.response["ResponseMetadata"]["HTTPStatusCode"]  # type: ignore[attr-defined]


def test_server_is_private_and_on_loopback(s3: S3Server) -> None:
    assert set(s3.pids()) == {"mon", "osd", "rgw"}
    assert s3.endpoint == f"http://127.0.0.1:{s3.port}"
    env = s3.env()
    assert env["AWS_ACCESS_KEY_ID"] == s3.access_key
    assert env["AWS_SECRET_ACCESS_KEY"] == s3.secret_key
    assert env["AWS_DEFAULT_REGION"] == s3.region
    assert env["LVDIFF_S3_ENDPOINT"] == s3.endpoint
    for pid in s3.pids().values():
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        assert os.fsencode(s3.workdir / "ceph.conf") in args
    # every socket of the cluster's processes is on 127.0.0.1 (no wildcard, no IPv6)
    inodes = {
        os.readlink(f"/proc/{pid}/fd/{fd}")[8:-1]
        for pid in s3.pids().values()
        for fd in os.listdir(f"/proc/{pid}/fd")
        if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:[")
    }
    listening = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        f = line.split()
        if f[3] == "0A" and f[9] in inodes:  # LISTEN
            listening.append(f[1])
    assert listening and all(a.startswith("0100007F:") for a in listening), listening
    assert not any(
        line.split()[9] in inodes and line.split()[3] == "0A"
        for line in Path("/proc/net/tcp6").read_text().splitlines()[1:]
    )


def test_wrong_secret_is_refused(s3: S3Server) -> None:
    import boto3
    from botocore.config import Config
    from botocore.exceptions import ClientError

    bad = boto3.session.Session().client(
        "s3",
        endpoint_url=s3.endpoint,
        aws_access_key_id=s3.access_key,
        aws_secret_access_key="x" * 40,
        region_name=s3.region,
        config=Config(s3={"addressing_style": "path"}, proxies={}),
    )
    with pytest.raises(ClientError) as e:
        bad.list_objects_v2(Bucket=s3.bucket)
    assert error_status(e.value) == 403


def test_put_get_list_delete(s3: S3Server, client) -> None:
    from botocore.exceptions import ClientError

    b = s3.bucket
    for i in range(5):
        client.put_object(Bucket=b, Key=f"crud/{i}", Body=f"object {i}".encode())
    client.put_object(Bucket=b, Key="crud/sub/x", Body=b"")
    assert client.get_object(Bucket=b, Key="crud/3")["Body"].read() == b"object 3"

    pages = client.get_paginator("list_objects_v2").paginate(
        Bucket=b, Prefix="crud/", Delimiter="/", PaginationConfig={"PageSize": 2}
    )
    keys, prefixes = [], []
    for page in pages:
        keys += [o["Key"] for o in page.get("Contents", [])]
        prefixes += [p["Prefix"] for p in page.get("CommonPrefixes", [])]
    assert keys == [f"crud/{i}" for i in range(5)]
    assert prefixes == ["crud/sub/"]

    client.delete_object(Bucket=b, Key="crud/3")
    with pytest.raises(ClientError) as e:
        client.get_object(Bucket=b, Key="crud/3")
    assert error_status(e.value) == 404
    left = client.list_objects_v2(Bucket=b, Prefix="crud/")
    assert [o["Key"] for o in left["Contents"]] == [
        "crud/0",
        "crud/1",
        "crud/2",
        "crud/4",
        "crud/sub/x",
    ]


def test_put_if_absent_refuses_an_existing_key_and_keeps_it(s3: S3Server, client) -> None:
    b = s3.bucket
    assert put_if_absent(client, b, "commit/1", b"first") is True
    etag = client.head_object(Bucket=b, Key="commit/1")["ETag"]
    assert put_if_absent(client, b, "commit/1", b"second, longer") is False
    head = client.head_object(Bucket=b, Key="commit/1")
    assert head["ETag"] == etag and head["ContentLength"] == len(b"first")
    assert client.get_object(Bucket=b, Key="commit/1")["Body"].read() == b"first"
    # the keyword itself works on this client, whatever boto3's version
    from botocore.exceptions import ClientError

    with pytest.raises(ClientError) as e:
        client.put_object(Bucket=b, Key="commit/1", Body=b"third", IfNoneMatch="*")
    assert error_status(e.value) == 412
    # and only where asked: a plain PUT still overwrites
    client.put_object(Bucket=b, Key="commit/1", Body=b"overwritten")
    assert client.get_object(Bucket=b, Key="commit/1")["Body"].read() == b"overwritten"


def test_if_none_match_header_for_boto3_without_the_parameter(s3: S3Server) -> None:
    """The path Debian 12's boto3 1.26 takes, tried on whichever boto3 runs this."""
    client = s3.client()
    _hook_if_none_match(client)
    _hook_if_none_match(client)  # once per client, whatever the calls
    b = s3.bucket
    assert put_if_absent(client, b, "commit/hooked", b"first") is True
    assert put_if_absent(client, b, "commit/hooked", b"second") is False
    assert client.get_object(Bucket=b, Key="commit/hooked")["Body"].read() == b"first"
    client.put_object(Bucket=b, Key="commit/hooked", Body=b"plain")  # no header unless asked
    assert client.get_object(Bucket=b, Key="commit/hooked")["Body"].read() == b"plain"


def test_ranged_get(s3: S3Server, client) -> None:
    data = bytes(range(256)) * 64
    client.put_object(Bucket=s3.bucket, Key="ranged", Body=data)
    got = client.get_object(Bucket=s3.bucket, Key="ranged", Range="bytes=1000-1999")
    assert got["ContentRange"] == f"bytes 1000-1999/{len(data)}"
    assert got["Body"].read() == data[1000:2000]
    tail = client.get_object(Bucket=s3.bucket, Key="ranged", Range="bytes=-10")
    assert tail["Body"].read() == data[-10:]


def test_multipart_upload_of_three_5_mib_parts(s3: S3Server, client) -> None:
    b, key = s3.bucket, "multipart"
    parts = [bytes([i]) * (5 * MiB) for i in (1, 2, 3)]
    parts[2] = parts[2][:-123]  # the last part may be short
    up = client.create_multipart_upload(Bucket=b, Key=key)["UploadId"]
    done = []
    for n, part in enumerate(parts, 1):
        r = client.upload_part(Bucket=b, Key=key, UploadId=up, PartNumber=n, Body=part)
        done.append({"PartNumber": n, "ETag": r["ETag"]})
    listed = client.list_parts(Bucket=b, Key=key, UploadId=up)["Parts"]
    assert [p["Size"] for p in listed] == [len(p) for p in parts]
    client.complete_multipart_upload(
        Bucket=b, Key=key, UploadId=up, MultipartUpload={"Parts": done}
    )
    whole = b"".join(parts)
    head = client.head_object(Bucket=b, Key=key)
    assert head["ContentLength"] == len(whole)
    assert head["ETag"].strip('"').endswith("-3")
    got = client.get_object(Bucket=b, Key=key)["Body"].read()
    assert hashlib.sha256(got).digest() == hashlib.sha256(whole).digest()
    edge = client.get_object(Bucket=b, Key=key, Range=f"bytes={5 * MiB - 2}-{5 * MiB + 1}")
    assert edge["Body"].read() == b"\1\1\2\2"


def test_stopped_rgw_refuses_connections_and_keeps_data_when_started(s3: S3Server) -> None:
    from botocore.exceptions import EndpointConnectionError

    client = s3.client(retries={"max_attempts": 1}, connect_timeout=2)
    client.put_object(Bucket=s3.bucket, Key="durable", Body=b"still here")
    old = s3.pids()["rgw"]
    s3.stop_rgw()
    assert not _alive(old)
    assert set(s3.pids()) == {"mon", "osd"}
    with pytest.raises(EndpointConnectionError):
        client.get_object(Bucket=s3.bucket, Key="durable")
    s3.start_rgw()
    assert s3.pids()["rgw"] != old
    assert client.get_object(Bucket=s3.bucket, Key="durable")["Body"].read() == b"still here"
    s3.restart_rgw()
    assert client.get_object(Bucket=s3.bucket, Key="durable")["Body"].read() == b"still here"


def test_rgw_start_fails_clearly_when_its_port_is_taken(s3: S3Server) -> None:
    s3.stop_rgw()
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past TIME_WAIT
        squatter.bind(("127.0.0.1", s3.port))
        squatter.listen()
        with pytest.raises(S3ServerError, match="could not bind 127.0.0.1"):
            s3.start_rgw(timeout=60)
        assert "rgw" not in s3.pids()  # not left running without its port
    s3.start_rgw()
    assert s3.client().head_bucket(Bucket=s3.bucket)


def test_stop_by_workdir_signals_only_processes_naming_its_config(tmp_path: Path) -> None:
    """What a CI run does after a killed one: stop by pid files, after checking each PID."""
    conf = tmp_path / "ceph.conf"
    conf.write_text("")
    (tmp_path / "run").mkdir()
    loop = "while :; do sleep 0.05; done"
    ours = subprocess.Popen(["sh", "-c", loop, "ceph-mon", "-c", str(conf)])
    other = subprocess.Popen(["sh", "-c", loop, "ceph-osd", "-c", str(tmp_path / "other.conf")])
    try:
        (tmp_path / "run/mon.a.pid").write_text(f"{ours.pid}\n")
        (tmp_path / "run/osd.0.pid").write_text(f"{other.pid}\n")
        (tmp_path / "run/client.rgw.s3.pid").write_text("999999999\n")  # no such process
        res = subprocess.run(
            [sys.executable, str(SCRIPT), "stop", str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert res.returncode == 0, res.stderr
        assert ours.wait(timeout=10) == -15  # SIGTERM
        assert other.poll() is None
        assert stop_workdir(tmp_path) == []  # nothing of ours is left
    finally:
        for p in (ours, other):
            p.kill()
            p.wait()


def test_stop_ends_every_daemon(s3: S3Server) -> None:
    """Last: it stops the module's server."""
    pids = s3.pids()
    assert set(pids) == {"mon", "osd", "rgw"}
    t0 = time.monotonic()
    s3.stop()
    assert time.monotonic() - t0 < 30
    for name, pid in pids.items():
        assert not _alive(pid), f"{name} (PID {pid}) is still alive"
    assert s3.pids() == {}
    s3.stop()  # idempotent
    assert not list((s3.workdir / "run").glob("*.pid"))  # none left to name a recycled PID
