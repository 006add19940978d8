"""A repository in an S3-compatible bucket: AWS S3, Ceph radosgw, MinIO, Backblaze B2, Wasabi.

The same :class:`lvdiff.repo.store.Store` as a directory, through boto3:

- ``s3://BUCKET/PREFIX`` on AWS (the region from the usual AWS configuration),
  or ``s3+https://HOST[:PORT]/BUCKET/PREFIX`` (``s3+http://`` for a test server
  on loopback) on any other endpoint, with path-style addressing;
- credentials and region only from the usual AWS environment variables and
  files (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, ``~/.aws/credentials``,
  ``AWS_PROFILE``): never on the command line, never logged; TLS verified;
- objects are never rewritten in place, and the one write that must not race,
  a point's commit, is a PutObject with ``If-None-Match: *`` (radosgw 16.2
  honours it on PutObject; every object here is one PutObject, never a
  multipart upload, whose completion radosgw would not make conditional);
- transient failures (timeouts, 5xx, throttling) are retried by botocore with
  backoff and then raised as TransientError (exit 75: the next run goes on from
  what was stored); a refused or misconfigured request is a one-line error.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from ..errors import LvdiffError, TransientError, UsageError
from .store import MissingObject, StoredObject

# botocore error codes worth a retry later (after botocore's own retries)
_TRANSIENT = frozenset(
    {
        "SlowDown",
        "ServiceUnavailable",
        "InternalError",
        "RequestTimeout",
        "RequestTimeTooSkewed",
        "Throttling",
        "ThrottlingException",
        "500",
        "502",
        "503",
        "504",
    }
)
# what the user must fix: credentials, permissions, a name
_REFUSED = frozenset(
    {
        "AccessDenied",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "AllAccessDisabled",
        "InvalidBucketName",
        "NoSuchBucket",
        "PermanentRedirect",
        "AuthorizationHeaderMalformed",
        "403",
    }
)


@dataclass(frozen=True)
class S3Location:
    bucket: str
    prefix: str  # "" or ending in "/"
    endpoint: str | None  # None: AWS's own, by region

    @property
    def label(self) -> str:
        where = f"{self.bucket}/{self.prefix}".rstrip("/")
        if self.endpoint:
            scheme = urlsplit(self.endpoint).scheme
            return f"s3+{scheme}://{urlsplit(self.endpoint).netloc}/{where}"
        return f"s3://{where}"


def parse_location(spec: str) -> S3Location:
    """``s3://BUCKET[/PREFIX]``, ``s3+https://HOST[:PORT]/BUCKET[/PREFIX]`` or ``s3+http://...``."""
    if spec.startswith("s3://"):
        endpoint = os.environ.get("LVDIFF_S3_ENDPOINT") or None
        rest = spec[len("s3://") :]
    elif spec.startswith(("s3+https://", "s3+http://")):
        parts = urlsplit(spec[len("s3+") :])
        if not parts.netloc or parts.query or parts.fragment or "@" in parts.netloc:
            raise UsageError(
                f"cannot read {spec!r}: s3+https://HOST[:PORT]/BUCKET[/PREFIX] (credentials "
                "come from the AWS environment or files, never from the command line)"
            )
        endpoint = f"{parts.scheme}://{parts.netloc}"
        rest = parts.path.lstrip("/")
    else:
        raise UsageError(f"not an S3 location: {spec!r}")
    bucket, _, prefix = rest.partition("/")
    if not 3 <= len(bucket) <= 63 or not all(c.isalnum() or c in "-." for c in bucket):
        raise UsageError(f"{spec!r}: {bucket!r} is not a bucket name")
    prefix = prefix.strip("/")
    return S3Location(bucket, f"{prefix}/" if prefix else "", endpoint)


class S3Store:
    """A repository under ``prefix`` in ``bucket`` (see the module docstring)."""

    def __init__(self, where: S3Location, connections: int = 16) -> None:
        self.where = where
        self.label = where.label
        self._client = _client(where, connections)
        self._local = threading.local()

    def _key(self, name: str) -> str:
        if not name or name.startswith("/") or ".." in name.split("/"):
            raise ValueError(f"not an object name: {name!r}")
        return self.where.prefix + name

    def get(self, name: str) -> bytes:
        try:
            obj = self._call("get_object", Bucket=self.where.bucket, Key=self._key(name))
            return obj["Body"].read()
        except _NotFound:
            raise MissingObject(name, self.label) from None

    def put(self, name: str, data: bytes | memoryview, exclusive: bool = False) -> bool:
        args: dict[str, Any] = {
            "Bucket": self.where.bucket,
            "Key": self._key(name),
            "Body": bytes(data) if isinstance(data, memoryview) else data,
        }
        if exclusive:
            args["IfNoneMatch"] = "*"
        try:
            self._call("put_object", **args)
        except _PreconditionFailed:
            return False
        return True

    def exists(self, name: str) -> bool:
        try:
            self._call("head_object", Bucket=self.where.bucket, Key=self._key(name))
            return True
        except _NotFound:
            return False

    def list(self, prefix: str) -> Iterator[StoredObject]:
        pages = self._client.get_paginator("list_objects_v2").paginate(
            Bucket=self.where.bucket, Prefix=self._key(prefix)
        )
        cut = len(self.where.prefix)
        try:
            for page in pages:
                for o in page.get("Contents", ()):
                    yield StoredObject(o["Key"][cut:], o["Size"], o["LastModified"].timestamp())
        except Exception as e:  # noqa: BLE001 - botocore's exceptions, mapped to ours
            raise _mapped(e, "list", prefix, self.label) from None

    def delete(self, name: str) -> None:
        self._call("delete_object", Bucket=self.where.bucket, Key=self._key(name))

    def flush(self) -> None:
        pass  # a PutObject that returned is durable

    def cleanup(self, older_than: float) -> int:
        """Abort multipart uploads under the prefix older than ``older_than`` seconds.

        lvdiff never starts one, but a store shared with other tools, or an
        older writer, may hold some: they cost storage until aborted.
        """
        import time

        cutoff = time.time() - older_than
        done = 0
        pages = self._client.get_paginator("list_multipart_uploads").paginate(
            Bucket=self.where.bucket, Prefix=self.where.prefix
        )
        for page in pages:
            for u in page.get("Uploads", ()):
                if u["Initiated"].timestamp() < cutoff:
                    self._call(
                        "abort_multipart_upload",
                        Bucket=self.where.bucket,
                        Key=u["Key"],
                        UploadId=u["UploadId"],
                    )
                    done += 1
        return done

    def _call(self, op: str, **kwargs: Any) -> Any:
        try:
            return getattr(self._client, op)(**kwargs)
        except Exception as e:  # noqa: BLE001 - botocore's exceptions, mapped to ours
            code = _code(e)
            if code in ("404", "NoSuchKey", "NotFound"):
                raise _NotFound from None
            if code in ("412", "PreconditionFailed"):
                raise _PreconditionFailed from None
            raise _mapped(e, op, kwargs.get("Key", ""), self.label) from None


class _NotFound(Exception):
    pass


class _PreconditionFailed(Exception):
    pass


def _code(e: BaseException) -> str:
    response = getattr(e, "response", None)
    if isinstance(response, dict):
        err = response.get("Error", {})
        code = str(err.get("Code", ""))
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in ("", "Unknown") and status:
            return str(status)
        return code
    return ""


def _mapped(e: BaseException, op: str, key: str, label: str) -> LvdiffError:
    """A botocore failure as ours: transient (75), the user's to fix (2), or a failure (1)."""
    from botocore import exceptions as bex

    code = _code(e)
    where = f"{label}: {op} {key}".rstrip()
    if isinstance(e, bex.NoCredentialsError):
        return UsageError(
            f"{label}: no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
            "or AWS_PROFILE with ~/.aws/credentials"
        )
    if isinstance(e, bex.EndpointConnectionError | bex.ConnectionClosedError):
        return TransientError(f"{where}: cannot reach the S3 endpoint ({type(e).__name__})")
    if isinstance(e, bex.ReadTimeoutError | bex.ConnectTimeoutError):
        return TransientError(f"{where}: the S3 endpoint timed out")
    if isinstance(e, bex.SSLError):
        return UsageError(f"{where}: TLS failed ({e}); the endpoint's certificate is checked")
    if code in _TRANSIENT:
        return TransientError(f"{where}: {code}, after retries; the next run goes on")
    if code == "NoSuchBucket":
        return UsageError(f"{label}: the bucket does not exist (or is not this endpoint's)")
    if code in _REFUSED:
        return UsageError(
            f"{where}: refused ({code}): check the credentials and the bucket's policy "
            "(s3:GetObject, s3:PutObject, s3:DeleteObject, s3:ListBucket on the prefix)"
        )
    if isinstance(e, bex.BotoCoreError | bex.ClientError):
        return LvdiffError(f"{where}: {code or type(e).__name__}: {e}")
    raise e  # not botocore's: a bug of ours, shown as one


def _client(where: S3Location, connections: int) -> Any:
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        raise UsageError(
            "S3 needs boto3: apt install python3-boto3, or pip install boto3"
        ) from None
    options: dict[str, Any] = {
        "retries": {"mode": "standard", "max_attempts": 6},
        "max_pool_connections": connections,
        "connect_timeout": 10,
        "read_timeout": 60,
    }
    if where.endpoint:
        options["s3"] = {"addressing_style": "path"}
    try:  # botocore >= 1.36 adds checksums radosgw 16.2 refuses over https: only when required
        config = Config(**options, request_checksum_calculation="when_required")
    except TypeError:  # an older botocore sends none
        config = Config(**options)
    session = boto3.session.Session()
    client = session.client("s3", endpoint_url=where.endpoint, config=config)
    _enable_if_none_match(client)
    return client


def _enable_if_none_match(client: Any) -> None:
    """Give PutObject an ``IfNoneMatch`` parameter on a botocore that lacks it (< 1.35).

    Debian 12's boto3 1.26 does not know the parameter: it is taken out of the
    parameters before they are validated and sent as the ``If-None-Match``
    header, which radosgw and AWS honour on PutObject.
    """
    shape = client.meta.service_model.operation_model("PutObject").input_shape
    if "IfNoneMatch" in shape.members:
        return
    pending = threading.local()

    def take(params: dict[str, Any], **_kwargs: Any) -> None:
        pending.value = params.pop("IfNoneMatch", None)

    def add(request: Any, **_kwargs: Any) -> None:
        value = getattr(pending, "value", None)
        if value is not None:
            request.headers["If-None-Match"] = value
            pending.value = None

    client.meta.events.register("provide-client-params.s3.PutObject", take)
    client.meta.events.register("before-sign.s3.PutObject", add)
