"""``s3://bucket/prefix`` backend: botocore, explicit multipart upload with a fixed part size.

Why explicit multipart rather than boto3's transfer manager (``upload_fileobj``): the
pipeline *pushes* bytes as ``pg_dump`` produces them, and we want three guarantees the
transfer manager does not state: every part has the same size (Cloudflare R2 and other
S3-compatible stores reject unequal parts; the transfer manager may raise the part size on
its own for big streams), memory is bounded by ``(MAX_IN_FLIGHT + 1) * part_size`` (one
part being filled, at most two uploading on a background thread), and we hold the
``UploadId`` so a failure aborts it and ``prune`` can find what a killed process left.
An object smaller than one part is one ``PutObject``. Server-side encryption (``AES256``)
is requested on every write, and so is a CRC32 checksum (``repo_s3_checksum``): S3 checks
each part against it on arrival, refuses a part damaged on the way, and keeps the
composite with the object. On a plain-HTTP endpoint botocore also signs each body's
SHA-256. Stores that reject flexible checksums get ``repo_s3_checksum = "off"``: nothing
but what S3 requires is sent. Either way the manifest's SHA-256 covers every object end
to end.

Transient failures (connection errors, throttling, 5xx) of single calls are retried with
tenacity (exponential backoff); botocore's own retries are off so the two do not multiply.

Leases and the prune lock use S3's conditional writes: ``PutObject`` with
``If-None-Match: *`` (create only if absent), ``PutObject`` and ``DeleteObject`` with
``If-Match: <ETag>`` (replace or delete only what we last saw). A precondition that fails
(412) or a concurrent conditional write (409) is an answer, not an error. A store that
does not implement them (501) is refused with a sentence: without them two prunes cannot
exclude each other. moto's server mode implements all three.
"""

from __future__ import annotations

import builtins
import contextlib
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast
from urllib.parse import urlsplit

from ptool_ops.errors import ConfigError, PtoolError, ServiceUnavailable
from ptool_ops.repo.errors import ObjectMissing
from ptool_ops.repo.storage import (
    READ_CHUNK,
    ObjectInfo,
    PartialUpload,
    Storage,
    Versioned,
    Writer,
    check_key,
)

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

MIN_PART_SIZE = 5 * 1024 * 1024
MAX_PART_SIZE = 5 * 1024 * 1024 * 1024
MAX_PARTS = 10_000
MAX_IN_FLIGHT = 2
SSE: Literal["AES256"] = "AES256"
ATTEMPTS = 4

T = TypeVar("T")


def _code(err: Exception) -> str:
    response = getattr(err, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""


#: answers of a conditional request that mean "the condition does not hold"
_PRECONDITION = {"PreconditionFailed", "412", "ConditionalRequestConflict", "409"}
_MISSING = {"NoSuchKey", "404", "NotFound"}


def _transient(err: BaseException) -> bool:
    from botocore.exceptions import ClientError, ConnectionError, HTTPClientError

    if isinstance(err, ConnectionError | HTTPClientError):
        return True
    if isinstance(err, ClientError):
        status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return status >= 500 or _code(err) in {"SlowDown", "Throttling", "RequestTimeout"}
    return False


def _translate(err: Exception, what: str, url: str) -> PtoolError:
    """A boto failure as one sentence; never with credentials."""
    from botocore.exceptions import ClientError, NoCredentialsError

    if isinstance(err, NoCredentialsError):
        return ConfigError(
            f"cannot {what}: no AWS credentials found.",
            hint="Set AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY for this environment.",
        )
    if isinstance(err, ClientError):
        code = _code(err) or "error"
        if code in {"NotImplemented", "501"}:
            return ConfigError(
                f"cannot {what}: the S3 store at {url} does not implement conditional writes "
                "(If-None-Match / If-Match), which leases and the prune lock rely on.",
                hint="Use AWS S3 or a store that implements them (MinIO, Cloudflare R2 do).",
            )
        if code in {"NoSuchBucket", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"}:
            return ConfigError(
                f"cannot {what}: S3 answered {code} for {url}.",
                hint="Check repo_url, the bucket's existence and the credentials' permissions.",
            )
        return ServiceUnavailable(f"cannot {what}: S3 answered {code}.")
    reason = str(err).split("\n")[0].rstrip(".")
    return ServiceUnavailable(
        f"cannot {what}: {reason}.",
        hint="Check that the S3 endpoint (aws_endpoint_url) is reachable and retry.",
    )


class S3Storage(Storage):
    def __init__(
        self,
        bucket: str,
        prefix: str,
        *,
        part_size: int,
        checksum: bool = True,
        region: str | None = None,
        endpoint_url: str | None = None,
    ) -> None:
        if not MIN_PART_SIZE <= part_size <= MAX_PART_SIZE:
            raise ConfigError(
                f"repo_part_size_mb must be between 5 and 5120 MiB, not {part_size // 2**20}.",
            )
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.part_size = part_size
        #: extra arguments of every upload: the checksum S3 verifies on arrival
        self.checksum_args: dict[str, Any] = {"ChecksumAlgorithm": "CRC32"} if checksum else {}
        self.region = region
        self.endpoint_url = endpoint_url
        self.url = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self._client: S3Client | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        part_size: int,
        checksum: bool = True,
        region: str | None = None,
        endpoint_url: str | None = None,
    ) -> S3Storage:
        parts = urlsplit(url)
        if not parts.netloc:
            raise ConfigError(
                f"repository URL {url!r} names no bucket.", hint="Use s3://bucket/prefix."
            )
        return cls(
            parts.netloc,
            parts.path,
            part_size=part_size,
            checksum=checksum,
            region=region,
            endpoint_url=endpoint_url,
        )

    @property
    def client(self) -> S3Client:
        with self._lock:
            if self._client is None:
                from botocore.config import Config

                from ptool_ops import aws

                # off: no flexible checksum unless the operation requires one
                checksums: Literal["when_supported", "when_required"] = (
                    "when_supported" if self.checksum_args else "when_required"
                )
                client = aws.client(
                    "s3",
                    region=self.region,
                    endpoint_url=self.endpoint_url,
                    config=Config(
                        retries={"max_attempts": 1, "mode": "standard"},
                        connect_timeout=5,
                        read_timeout=60,
                        max_pool_connections=MAX_IN_FLIGHT + 4,
                        request_checksum_calculation=checksums,
                        response_checksum_validation=checksums,
                    ),
                )
                self._client = cast("S3Client", client)
            return self._client

    def _key(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _rel(self, full: str) -> str:
        return full[len(self.prefix) + 1 :] if self.prefix else full

    def call(self, what: str, fn: Callable[[], T]) -> T:
        """Run one S3 call with retries; failures become one sentence."""
        from botocore.exceptions import BotoCoreError, ClientError
        from tenacity import (
            Retrying,
            retry_if_exception,
            stop_after_attempt,
            wait_exponential,
        )

        try:
            for attempt in Retrying(
                stop=stop_after_attempt(ATTEMPTS),
                wait=wait_exponential(multiplier=0.2, max=3),
                retry=retry_if_exception(_transient),
                reraise=True,
            ):
                with attempt:
                    return fn()
        except (BotoCoreError, ClientError) as err:
            raise _translate(err, what, self.url) from None
        raise AssertionError("unreachable")  # pragma: no cover

    # --- primitives ------------------------------------------------------------------------

    def open_writer(self, key: str, before_store: Callable[[], None] | None = None) -> Writer:
        return S3Writer(self, self._key(key), before_store)

    def get_stream(self, key: str, chunk_size: int = READ_CHUNK) -> Iterator[bytes]:
        from botocore.exceptions import BotoCoreError, ClientError

        full = self._key(key)
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=full)
        except ClientError as err:
            if _code(err) in {"NoSuchKey", "404"}:
                raise ObjectMissing(f"{key} is not in the repository {self.url}.") from None
            raise _translate(err, f"read {key}", self.url) from None
        except BotoCoreError as err:
            raise _translate(err, f"read {key}", self.url) from None
        body = response["Body"]
        try:
            yield from body.iter_chunks(chunk_size)
        except (BotoCoreError, ClientError) as err:
            raise _translate(err, f"read {key}", self.url) from None
        finally:
            body.close()

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        full = f"{self.prefix}/{prefix}" if self.prefix else prefix
        paginator = self.client.get_paginator("list_objects_v2")
        pages = self.call(
            "list the repository", lambda: list(paginator.paginate(Bucket=self.bucket, Prefix=full))
        )
        for page in pages:
            for item in page.get("Contents", []):
                yield ObjectInfo(self._rel(item["Key"]), item["Size"], item["LastModified"])

    def delete(self, key: str) -> None:
        full = self._key(key)
        self.call(f"delete {key}", lambda: self.client.delete_object(Bucket=self.bucket, Key=full))

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        full = self._key(key)

        def head() -> bool:
            try:
                self.client.head_object(Bucket=self.bucket, Key=full)
            except ClientError as err:
                if _code(err) in {"404", "NoSuchKey", "NotFound"}:
                    return False
                raise
            return True

        return self.call(f"look up {key}", head)

    def list_partial(self, prefix: str = "") -> builtins.list[PartialUpload]:
        full = f"{self.prefix}/{prefix}" if self.prefix else prefix
        paginator = self.client.get_paginator("list_multipart_uploads")
        pages = self.call(
            "list unfinished uploads",
            lambda: list(paginator.paginate(Bucket=self.bucket, Prefix=full)),
        )
        found = []
        for page in pages:
            for upload in page.get("Uploads", []):
                found.append(
                    PartialUpload(
                        self._rel(upload["Key"]),
                        upload["UploadId"],
                        upload.get("Initiated", datetime.now(UTC)),
                    )
                )
        return found

    def abort_partial(self, partial: PartialUpload) -> None:
        full = self._key(partial.key)
        self.call(
            f"abort the unfinished upload of {partial.key}",
            lambda: self.client.abort_multipart_upload(
                Bucket=self.bucket, Key=full, UploadId=partial.upload_id
            ),
        )

    def check_location(self) -> None:
        from botocore.exceptions import ClientError

        def head() -> None:
            try:
                self.client.head_bucket(Bucket=self.bucket)
            except ClientError as err:
                if _code(err) in {"404", "NoSuchBucket", "NotFound"}:
                    raise ClientError(
                        {"Error": {"Code": "NoSuchBucket", "Message": "no such bucket"}},
                        "HeadBucket",
                    ) from None
                if _code(err) in {"403", "Forbidden"}:
                    raise ClientError(
                        {"Error": {"Code": "AccessDenied", "Message": "forbidden"}},
                        "HeadBucket",
                    ) from None
                raise

        self.call(f"reach the bucket {self.bucket}", head)

    # --- compare-and-swap -----------------------------------------------------------------

    def _conditional(self, what: str, fn: Callable[[], T]) -> T | None:
        """``fn``'s answer, or None when its precondition does not hold."""
        from botocore.exceptions import ClientError

        def attempt() -> T | None:
            try:
                return fn()
            except ClientError as err:
                if _code(err) in _PRECONDITION | _MISSING:
                    return None
                raise

        return self.call(what, attempt)

    def read_versioned(self, key: str) -> Versioned | None:
        full = self._key(key)

        def get() -> Versioned:
            response = self.client.get_object(Bucket=self.bucket, Key=full)
            with contextlib.closing(response["Body"]) as body:
                data = body.read()
            return Versioned(data, response["ETag"], response["LastModified"])

        return self._conditional(f"read {key}", get)

    def create_exclusive(self, key: str, data: bytes) -> str | None:
        full = self._key(key)

        def put() -> str:
            response = self.client.put_object(
                Bucket=self.bucket,
                Key=full,
                Body=data,
                IfNoneMatch="*",
                ServerSideEncryption=SSE,
                **self.checksum_args,
            )
            return response["ETag"]

        return self._conditional(f"create {key}", put)

    def replace_if(self, key: str, data: bytes, tag: str) -> str | None:
        full = self._key(key)

        def put() -> str:
            response = self.client.put_object(
                Bucket=self.bucket,
                Key=full,
                Body=data,
                IfMatch=tag,
                ServerSideEncryption=SSE,
                **self.checksum_args,
            )
            return response["ETag"]

        return self._conditional(f"replace {key}", put)

    def delete_if(self, key: str, tag: str) -> bool:
        full = self._key(key)

        def delete() -> bool:
            self.client.delete_object(Bucket=self.bucket, Key=full, IfMatch=tag)
            return True

        return bool(self._conditional(f"delete {key}", delete))


class S3Writer(Writer):
    """Fills one part at a time; small objects become one PutObject at commit."""

    def __init__(
        self, storage: S3Storage, full_key: str, before_store: Callable[[], None] | None = None
    ) -> None:
        self._s3 = storage
        self._key = full_key
        self._before_store = before_store  # run once, before the first request
        self._chunks: list[bytes] = []  # what is not yet a part; joined once per part
        self._buffered = 0
        self._upload_id: str | None = None
        self._parts: list[Future[dict[str, Any]]] = []
        self._pool: ThreadPoolExecutor | None = None
        self._done = False

    def write(self, data: bytes) -> None:
        self._chunks.append(data)
        self._buffered += len(data)
        size = self._s3.part_size
        if self._buffered < size:
            return
        pending = self._take()
        start = 0
        while len(pending) - start >= size:
            self._submit(pending[start : start + size])
            start += size
        if start < len(pending):
            self._chunks, self._buffered = [pending[start:]], len(pending) - start

    def _take(self) -> bytes:
        pending = b"".join(self._chunks)
        self._chunks, self._buffered = [], 0
        return pending

    def _touch(self) -> None:
        if self._before_store is not None:
            before, self._before_store = self._before_store, None
            before()

    def _start(self) -> str:
        self._touch()
        s3 = self._s3
        response = s3.call(
            f"start an upload of {self._key}",
            lambda: s3.client.create_multipart_upload(
                Bucket=s3.bucket, Key=self._key, ServerSideEncryption=SSE, **s3.checksum_args
            ),
        )
        return response["UploadId"]

    def _submit(self, part: bytes) -> None:
        if self._upload_id is None:
            self._upload_id = self._start()
            self._pool = ThreadPoolExecutor(MAX_IN_FLIGHT, thread_name_prefix="s3-part")
        number = len(self._parts) + 1
        if number > MAX_PARTS:
            raise ConfigError(
                f"{self._key} needs more than {MAX_PARTS} parts of "
                f"{self._s3.part_size // 2**20} MiB.",
                hint="Raise repo_part_size_mb.",
            )
        # bounded memory: wait for the oldest part still in flight before queueing another
        pending = [f for f in self._parts if not f.done()]
        if len(pending) >= MAX_IN_FLIGHT:
            pending[0].result()
        for done in (f for f in self._parts if f.done()):
            done.result()  # re-raise a failed part now, not at commit
        assert self._pool is not None
        self._parts.append(self._pool.submit(self._upload_part, number, part))

    def _upload_part(self, number: int, body: bytes) -> dict[str, Any]:
        s3 = self._s3
        upload_id = self._upload_id
        assert upload_id is not None
        response = s3.call(
            f"upload part {number} of {self._key}",
            lambda: s3.client.upload_part(
                Bucket=s3.bucket,
                Key=self._key,
                UploadId=upload_id,
                PartNumber=number,
                Body=body,
                **s3.checksum_args,
            ),
        )
        part = {"PartNumber": number, "ETag": response["ETag"]}
        if response.get("ChecksumCRC32"):
            part["ChecksumCRC32"] = response["ChecksumCRC32"]  # complete names each part's
        return part

    def commit(self) -> None:
        s3 = self._s3
        try:
            if self._upload_id is None:
                self._touch()
                body = self._take()
                s3.call(
                    f"store {self._key}",
                    lambda: s3.client.put_object(
                        Bucket=s3.bucket,
                        Key=self._key,
                        Body=body,
                        ServerSideEncryption=SSE,
                        **s3.checksum_args,
                    ),
                )
            else:
                if self._buffered:
                    self._submit(self._take())
                parts = [f.result() for f in self._parts]
                upload_id = self._upload_id
                s3.call(
                    f"complete the upload of {self._key}",
                    lambda: s3.client.complete_multipart_upload(
                        Bucket=s3.bucket,
                        Key=self._key,
                        UploadId=upload_id,
                        MultipartUpload={"Parts": parts},  # type: ignore[typeddict-item]
                    ),
                )
        except BaseException:
            self.abort()
            raise
        self._done = True
        self._shutdown()

    def _shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        self._chunks, self._buffered = [], 0
        self._shutdown()
        if self._upload_id is not None:
            s3 = self._s3
            upload_id = self._upload_id
            # an unreachable store: 'backup prune' aborts the upload later
            with contextlib.suppress(PtoolError):
                s3.call(
                    f"abort the upload of {self._key}",
                    lambda: s3.client.abort_multipart_upload(
                        Bucket=s3.bucket, Key=self._key, UploadId=upload_id
                    ),
                )
