"""Secret stores that rotation drives: versions of one secret, told apart by staging labels.

Both stores follow AWS Secrets Manager's model, so the rotation engine is written once:

* a *version* has an id (the run's ``ClientRequestToken``), an opaque string value and a set
  of labels; a label sits on at most one version at a time;
* :data:`CURRENT` is what applications read, :data:`PENDING` the credential a run is
  introducing, :data:`PREVIOUS` the last known good one: moving ``CURRENT`` puts
  ``PREVIOUS`` on the version it leaves (and takes it off any other), as AWS does;
* writes are idempotent by token: the same token with the same value is a no-op, the same
  token with another value is refused and nothing changes.

:class:`AwsSecretStore` drives Secrets Manager with ``put_secret_value`` and
``update_secret_version_stage`` (never ``rotate_secret``), and checks a token's existing
version itself before writing: moto silently replaces a pending version and drops
``AWSCURRENT`` where AWS refuses. :class:`FileSecretStore` keeps the versions in one JSON
file (mode 0600) for local environments, written atomically under an exclusive ``flock``.

No message built here ever contains a secret value: botocore's exceptions can quote request
parameters, so AWS failures are described by their error code and the secret's name only.
"""

from __future__ import annotations

import contextlib
import fcntl
import hmac
import json
import os
import re
import secrets
import stat
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, Protocol, cast

from pydantic import SecretStr

from ptool_ops.errors import (
    ConfigError,
    Conflict,
    OperationFailed,
    PtoolError,
    ServiceUnavailable,
)

if TYPE_CHECKING:
    from botocore.config import Config
    from mypy_boto3_secretsmanager import SecretsManagerClient

__all__ = [
    "CURRENT",
    "PENDING",
    "PREVIOUS",
    "AwsSecretStore",
    "FileSecretStore",
    "SecretStore",
    "Version",
    "open_store",
]

CURRENT, PENDING, PREVIOUS = "AWSCURRENT", "AWSPENDING", "AWSPREVIOUS"

#: unlabelled versions a file store keeps (newest first) beyond the labelled ones
KEEP_UNLABELLED = 5
#: how long a file store waits for another run's write to finish
LOCK_TIMEOUT = 10.0
FILE_FORMAT = 1
#: Secrets Manager's ClientRequestToken: 32 to 64 characters (a UUID is 36)
_TOKEN = re.compile(r"[\x21-\x7e]{32,64}")


@dataclass(frozen=True)
class Version:
    id: str
    labels: frozenset[str]
    created: datetime | None  # tz-aware UTC


class SecretStore(Protocol):
    """What the rotation engine needs of a secret's home; see the module's docstring."""

    name: str

    def describe(self) -> list[Version]:
        """Every version with at least one label, newest first; ConfigError if the secret
        does not exist."""
        ...

    def exists(self) -> bool: ...

    def value(self, *, label: str | None = None, version_id: str | None = None) -> SecretStr | None:
        """The value of the version with ``label`` and/or ``version_id`` (both must match
        when both are given; AWSCURRENT when neither is); None when there is none."""
        ...

    def create(self, value: str, token: str) -> None:
        """The secret's first version, labelled AWSCURRENT."""
        ...

    def put_pending(self, token: str, value: str) -> None:
        """A new version labelled only AWSPENDING (taken off any other version)."""
        ...

    def move_label(self, label: str, to_version: str, *, from_version: str | None) -> None:
        """Move ``label`` to ``to_version``; ``from_version`` is where it is expected to be
        (None: on no version). Conflict when it is elsewhere; no-op when already there."""
        ...

    def remove_label(self, label: str, from_version: str) -> None:
        """Take ``label`` off ``from_version``; no-op if it is not there. AWSCURRENT can
        only be moved, never removed."""
        ...


def open_store(
    ref: str,
    *,
    aws_region: str | None,
    aws_endpoint_url: str | None,
    local_dir: Path | None = None,
) -> SecretStore:
    """The store a reference names: ``aws-sm:NAME`` or ``file:PATH`` (a relative PATH is
    taken relative to ``local_dir``, else the working directory)."""
    scheme, _, rest = ref.partition(":")
    if scheme == "aws-sm" and rest:
        if "#" in rest:
            raise ConfigError(
                f"cannot rotate {ref}: a rotated secret is named without #KEY.",
                hint="Name the whole secret (aws-sm:NAME); rotation rewrites all its keys.",
            )
        return AwsSecretStore(rest, region=aws_region, endpoint_url=aws_endpoint_url)
    if scheme == "file" and rest:
        path = Path(rest).expanduser()
        if not path.is_absolute():
            path = (local_dir or Path.cwd()) / path
        return FileSecretStore(path)
    raise ConfigError(
        f"cannot rotate the secret {ref}: a rotated secret must be aws-sm:NAME or file:PATH.",
        hint="Secrets in environment variables cannot be rotated in place; move it to one "
        "of those stores.",
    )


# --- rules both stores share -----------------------------------------------------------------


def check_token(token: str) -> None:
    """A run's token must be usable as a Secrets Manager ClientRequestToken."""
    if not _TOKEN.fullmatch(token):
        raise ValueError("a version token must be 32 to 64 printable characters, e.g. a UUID")


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def _refused_token(name: str, token: str) -> OperationFailed:
    return OperationFailed(
        f"version {token} of secret {name} already holds a different value; nothing was changed.",
        hint="A run's token must not be reused for a new value: start a new rotation run.",
    )


def _plan_move(
    name: str, versions: Sequence[Version], label: str, to_version: str, from_version: str | None
) -> tuple[bool, str | None]:
    """Whether ``label`` must move to ``to_version``, and the version it leaves."""
    target = next((v for v in versions if v.id == to_version), None)
    if target is None:
        raise OperationFailed(
            f"secret {name} has no version {to_version}, so {label} cannot move to it."
        )
    if label in target.labels:
        return False, None
    holder = next((v.id for v in versions if label in v.labels), None)
    if holder is not None and holder != from_version:
        raise Conflict(
            f"{label} of secret {name} is on version {holder}, not on "
            f"{from_version or 'no version'} as expected: the secret changed meanwhile.",
            hint="Look at the secret's versions and start the rotation again.",
        )
    return True, holder


def _no_current_removal(label: str) -> None:
    if label == CURRENT:
        raise ValueError(f"{CURRENT} can only be moved to another version, never removed")


# --- AWS Secrets Manager ---------------------------------------------------------------------

#: answers that mean the caller's identity or credentials are not allowed
_DENIED = {
    "AccessDeniedException",
    "AccessDenied",
    "UnrecognizedClientException",
    "InvalidSignatureException",
    "IncompleteSignature",
    "InvalidClientTokenId",
    "ExpiredTokenException",
    "MissingAuthenticationToken",
    "DecryptionFailure",  # the KMS key's policy
}
_BUSY = {"ThrottlingException", "Throttling", "InternalServiceError", "ServiceUnavailable"}


class AwsSecretStore:
    """One secret of AWS Secrets Manager."""

    def __init__(
        self,
        name: str,
        *,
        region: str | None = None,
        endpoint_url: str | None = None,
        client: Any = None,
    ) -> None:
        self.name = name
        self._region = region
        self._endpoint_url = endpoint_url
        self._client = cast("SecretsManagerClient | None", client)

    @property
    def client(self) -> SecretsManagerClient:
        if self._client is None:
            from botocore.config import Config

            from ptool_ops import aws

            config: Config = Config(
                retries={"mode": "standard", "max_attempts": 3},
                connect_timeout=5,
                read_timeout=30,
            )
            self._client = cast(
                "SecretsManagerClient",
                aws.client(
                    "secretsmanager",
                    region=self._region,
                    endpoint_url=self._endpoint_url,
                    config=config,
                ),
            )
        return self._client

    # every call goes through here: the one place botocore's errors become ours

    def _call(self, doing: str, method: Callable[..., Any], **params: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return method(SecretId=self.name, **params)
        except ClientError as err:
            raise self._translate(doing, err) from None
        except BotoCoreError as err:
            raise self._translate(doing, err) from None

    def _code(self, err: Exception) -> str:
        response = getattr(err, "response", None)
        if isinstance(response, dict):
            return str(response.get("Error", {}).get("Code", "")) or "error"
        return ""

    def _translate(self, doing: str, err: Exception) -> PtoolError:
        """One sentence from the error's code or class and the secret's name, never from
        the error's text (which can quote the request, and so a value)."""
        from botocore.exceptions import (
            ClientError,
            NoCredentialsError,
            NoRegionError,
            ParamValidationError,
            PartialCredentialsError,
            ProfileNotFound,
        )

        region = self.client.meta.region_name
        if isinstance(err, NoCredentialsError | PartialCredentialsError | ProfileNotFound):
            return ConfigError(
                f"cannot {doing} secret {self.name}: no usable AWS credentials "
                f"({type(err).__name__}).",
                hint="Set AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY.",
            )
        if isinstance(err, NoRegionError):
            return ConfigError(
                f"cannot {doing} secret {self.name}: no AWS region.",
                hint="Set aws_region or AWS_REGION.",
            )
        if isinstance(err, ParamValidationError):
            return OperationFailed(
                f"cannot {doing} secret {self.name}: the request was invalid "
                "(ParamValidationError)."
            )
        if not isinstance(err, ClientError):
            return ServiceUnavailable(
                f"cannot reach Secrets Manager ({region}) to {doing} secret {self.name} "
                f"({type(err).__name__}).",
                hint="Check the network, AWS_REGION and aws_endpoint_url, then retry.",
            )
        code = self._code(err)
        if code == "ResourceNotFoundException":
            return ConfigError(
                f"secret {self.name} does not exist in Secrets Manager ({region}).",
                hint="Check the secret's name and the region, or create the secret first.",
            )
        if code in _DENIED:
            return ConfigError(
                f"Secrets Manager denied the request to {doing} secret {self.name} ({code}).",
                hint=f"Allow secretsmanager:{err.operation_name} on the secret (and its KMS "
                "key) for the identity running ptool-ops, or check its AWS credentials.",
            )
        status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if code in _BUSY or status >= 500:
            return ServiceUnavailable(
                f"Secrets Manager ({region}) could not {doing} secret {self.name} ({code}).",
                hint="Retry in a while.",
            )
        return OperationFailed(f"Secrets Manager refused to {doing} secret {self.name} ({code}).")

    def _secret(self) -> dict[str, Any]:
        """describe_secret: ConfigError when the secret is missing or marked for deletion."""
        info: dict[str, Any] = self._call("describe", self.client.describe_secret)
        if info.get("DeletedDate"):
            raise ConfigError(
                f"secret {self.name} is scheduled for deletion in Secrets Manager.",
                hint=f"Restore it (aws secretsmanager restore-secret --secret-id {self.name})"
                " or name another secret.",
            )
        return info

    def _versions(self) -> list[Version]:
        """Every version, labelled or not, newest first."""
        self._secret()  # moto answers list_secret_version_ids on a missing secret with a 500
        listed: list[Version] = []
        params: dict[str, Any] = {"IncludeDeprecated": True, "MaxResults": 100}
        while True:
            page = self._call("list the versions of", self.client.list_secret_version_ids, **params)
            for item in page.get("Versions", []):
                created = item.get("CreatedDate")
                listed.append(
                    Version(
                        id=item["VersionId"],
                        labels=frozenset(item.get("VersionStages") or ()),
                        created=created.astimezone(UTC) if created else None,
                    )
                )
            if not page.get("NextToken"):
                break
            params["NextToken"] = page["NextToken"]
        # dates have whole seconds: among equals, the later listed (AWS lists oldest first)
        # is the newer
        listed.reverse()
        listed.sort(key=lambda v: v.created or datetime.min.replace(tzinfo=UTC), reverse=True)
        return listed

    def describe(self) -> list[Version]:
        return [v for v in self._versions() if v.labels]

    def exists(self) -> bool:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.describe_secret(SecretId=self.name)
        except ClientError as err:
            if self._code(err) == "ResourceNotFoundException":
                return False
            raise self._translate("describe", err) from None
        except BotoCoreError as err:
            raise self._translate("describe", err) from None
        return True

    def value(self, *, label: str | None = None, version_id: str | None = None) -> SecretStr | None:
        from botocore.exceptions import BotoCoreError, ClientError

        params: dict[str, str] = {}
        if version_id is not None:
            params["VersionId"] = version_id
        if label is not None or version_id is None:
            params["VersionStage"] = label or CURRENT
        try:
            answer = self.client.get_secret_value(SecretId=self.name, **params)
        except ClientError as err:
            # a missing secret, one marked for deletion, and a missing label/version all
            # answer this way (moto: a label on another version, InvalidRequest): tell apart
            if self._code(err) not in {"ResourceNotFoundException", "InvalidRequestException"}:
                raise self._translate("read", err) from None
            self._secret()
            return None
        except BotoCoreError as err:
            raise self._translate("read", err) from None
        text = answer.get("SecretString")
        if text is None:
            raise ConfigError(
                f"secret {self.name} holds binary data; rotation needs a string secret."
            )
        return SecretStr(text)

    def create(self, value: str, token: str) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        check_token(token)
        try:
            self.client.create_secret(Name=self.name, SecretString=value, ClientRequestToken=token)
        except ClientError as err:
            if self._code(err) != "ResourceExistsException":
                raise self._translate("create", err) from None
        except BotoCoreError as err:
            raise self._translate("create", err) from None
        else:
            return
        # the name is taken: fine only if it is this very version (a retried create)
        existing = self.value(version_id=token, label=CURRENT)
        if existing is None or not _same(existing.get_secret_value(), value):
            raise Conflict(
                f"secret {self.name} already exists in Secrets Manager.",
                hint="Rotate it instead, or choose another name.",
            )

    def put_pending(self, token: str, value: str) -> None:
        check_token(token)
        # moto replaces a pending version put again with another value (and drops
        # AWSCURRENT from the secret): compare first, whatever the service does
        if self._settled(token, value):
            return
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.put_secret_value(
                SecretId=self.name,
                ClientRequestToken=token,
                SecretString=value,
                VersionStages=[PENDING],
            )
        except ClientError as err:
            if self._code(err) != "ResourceExistsException":
                raise self._translate("write a version of", err) from None
        except BotoCoreError as err:
            raise self._translate("write a version of", err) from None
        else:
            return
        if not self._settled(token, value):  # another run wrote the token meanwhile
            raise _refused_token(self.name, token)

    def _settled(self, token: str, value: str) -> bool:
        """True when version ``token`` holds ``value``; refuses when it holds another."""
        existing = self.value(version_id=token)
        if existing is None:
            return False
        if not _same(existing.get_secret_value(), value):
            raise _refused_token(self.name, token)
        return True

    def move_label(self, label: str, to_version: str, *, from_version: str | None) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        needed, holder = _plan_move(self.name, self._versions(), label, to_version, from_version)
        if not needed:
            return
        params: dict[str, str] = {"VersionStage": label, "MoveToVersionId": to_version}
        if holder is not None:
            params["RemoveFromVersionId"] = holder
        try:
            self.client.update_secret_version_stage(SecretId=self.name, **params)
        except ClientError as err:
            if self._code(err) != "InvalidParameterException":
                raise self._translate("move a label of", err) from None
            # the label moved between our look and the call: say how (or settle)
            needed, _ = _plan_move(self.name, self._versions(), label, to_version, from_version)
            if needed:
                raise self._translate("move a label of", err) from None
        except BotoCoreError as err:
            raise self._translate("move a label of", err) from None

    def remove_label(self, label: str, from_version: str) -> None:
        _no_current_removal(label)
        version = next((v for v in self._versions() if v.id == from_version), None)
        if version is None or label not in version.labels:
            return
        self._call(
            "remove a label of",
            self.client.update_secret_version_stage,
            VersionStage=label,
            RemoveFromVersionId=from_version,
        )


# --- a JSON file ------------------------------------------------------------------------------


@dataclass
class _Entry:
    id: str
    value: str
    labels: set[str] = field(default_factory=set)
    created: datetime | None = None

    def version(self) -> Version:
        return Version(self.id, frozenset(self.labels), self.created)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FileSecretStore:
    """The versions of one secret in a JSON file (mode 0600), oldest first::

        {"format": 1, "versions": [{"id": ..., "value": ..., "labels": [...],
                                    "created": "2026-01-01T00:00:00+00:00"}, ...]}

    Every change is a read-modify-write under an exclusive ``flock`` on ``.NAME.lock``
    beside the file, ending in an fsynced temp file renamed over it: readers (who take no
    lock) see the old document or the new one, never half of one.
    """

    def __init__(self, path: Path) -> None:
        self.path = path.absolute()
        self.name = str(self.path)
        self._lock_path = self.path.with_name(f".{self.path.name}.lock")

    # --- reading ------------------------------------------------------------------------------

    def _load(self) -> list[_Entry] | None:
        """The versions, oldest first; None when the file does not exist."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        except OSError as err:
            raise ConfigError(f"cannot read secret file {self.path}: {err.strerror}.") from None
        try:
            mode = stat.S_IMODE(os.fstat(fd).st_mode)
            if mode & 0o077:
                raise ConfigError(
                    f"secret file {self.path} is open to other users (mode {mode:04o}).",
                    hint=f"Run: chmod 600 {self.path}",
                )
            with os.fdopen(fd, "rb", closefd=False) as handle:
                data = handle.read()
        except OSError as err:
            raise ConfigError(f"cannot read secret file {self.path}: {err.strerror}.") from None
        finally:
            os.close(fd)
        return self._parse(data)

    def _parse(self, data: bytes) -> list[_Entry]:
        """The document's versions; ConfigError (never quoting the file) when malformed."""
        try:
            document = json.loads(data)
            if document.get("format") != FILE_FORMAT:
                raise ValueError("format")
            entries = []
            for item in document["versions"]:
                labels = item["labels"]
                created = item.get("created")
                if not (
                    isinstance(item["id"], str)
                    and isinstance(item["value"], str)
                    and isinstance(labels, list)
                    and all(isinstance(label, str) for label in labels)
                ):
                    raise ValueError("version")
                entries.append(
                    _Entry(
                        item["id"],
                        item["value"],
                        set(labels),
                        datetime.fromisoformat(created).astimezone(UTC) if created else None,
                    )
                )
        except (ValueError, TypeError, KeyError, AttributeError):
            raise ConfigError(
                f"secret file {self.path} is not a ptool-ops secret file (format {FILE_FORMAT}).",
                hint="Restore it from a backup, or move it away and create the secret again.",
            ) from None
        return entries

    def _existing(self) -> list[_Entry]:
        entries = self._load()
        if entries is None:
            self._missing()
        return entries

    def _missing(self) -> NoReturn:
        raise ConfigError(
            f"secret file {self.path} does not exist.",
            hint="Check the path, or create the secret first.",
        )

    def describe(self) -> list[Version]:
        return [e.version() for e in reversed(self._existing()) if e.labels]

    def exists(self) -> bool:
        return os.path.lexists(self.path)

    def value(self, *, label: str | None = None, version_id: str | None = None) -> SecretStr | None:
        if label is None and version_id is None:
            label = CURRENT
        for entry in self._existing():
            if (version_id is None or entry.id == version_id) and (
                label is None or label in entry.labels
            ):
                return SecretStr(entry.value)
        return None

    # --- writing ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        parent = self.path.parent
        try:
            if not parent.is_dir():
                parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                os.chmod(parent, 0o700)
            fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as err:
            raise OperationFailed(
                f"cannot lock secret file {self.path}: {err.strerror}.",
                hint="Check that its directory exists and is writable.",
            ) from None
        try:
            deadline = time.monotonic() + LOCK_TIMEOUT
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise Conflict(
                            f"secret file {self.path} stayed locked by another run for "
                            f"{LOCK_TIMEOUT:.0f} s.",
                            hint="Wait for the other ptool-ops run to finish, then retry.",
                        ) from None
                    time.sleep(0.01)
                except OSError as err:
                    raise OperationFailed(
                        f"cannot lock secret file {self.path}: {err.strerror}.",
                        hint="It must be on a file system with working locks (local disks).",
                    ) from None
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def _update(self, change: Callable[[list[_Entry] | None], list[_Entry] | None]) -> None:
        """Read, ``change`` (None: nothing to write), prune and write, under the lock."""
        with self._locked():
            changed = change(self._load())
            if changed is not None:
                self._write(self._pruned(changed))

    def _pruned(self, entries: list[_Entry]) -> list[_Entry]:
        unlabelled = [e.id for e in entries if not e.labels]
        dropped = set(unlabelled[: max(0, len(unlabelled) - KEEP_UNLABELLED)])
        return [e for e in entries if e.id not in dropped]

    def _write(self, entries: list[_Entry]) -> None:
        document = {
            "format": FILE_FORMAT,
            "versions": [
                {
                    "id": e.id,
                    "value": e.value,
                    "labels": sorted(e.labels),
                    "created": e.created.isoformat() if e.created else None,
                }
                for e in entries
            ],
        }
        data = (json.dumps(document, indent=2) + "\n").encode()
        temp = self.path.with_name(f".{self.path.name}.{secrets.token_hex(6)}.tmp")
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(temp, self.path)
            except BaseException:
                temp.unlink(missing_ok=True)
                raise
            _fsync_dir(self.path.parent)
        except OSError as err:
            raise OperationFailed(
                f"cannot write secret file {self.path}: {err.strerror}; it is unchanged.",
                hint="Check free space and the permissions of its directory.",
            ) from None

    def create(self, value: str, token: str) -> None:
        check_token(token)

        def change(entries: list[_Entry] | None) -> list[_Entry] | None:
            if entries is None:
                return [_Entry(token, value, {CURRENT}, datetime.now(UTC))]
            if any(
                e.id == token and CURRENT in e.labels and _same(e.value, value) for e in entries
            ):
                return None  # a retried create
            raise Conflict(
                f"secret file {self.path} already exists.",
                hint="Rotate it instead, or choose another path.",
            )

        self._update(change)

    def put_pending(self, token: str, value: str) -> None:
        check_token(token)

        def change(entries: list[_Entry] | None) -> list[_Entry] | None:
            if entries is None:
                self._missing()
            existing = next((e for e in entries if e.id == token), None)
            if existing is not None:
                if _same(existing.value, value):
                    return None
                raise _refused_token(self.name, token)
            for entry in entries:
                entry.labels.discard(PENDING)
            return [*entries, _Entry(token, value, {PENDING}, datetime.now(UTC))]

        self._update(change)

    def move_label(self, label: str, to_version: str, *, from_version: str | None) -> None:
        def change(entries: list[_Entry] | None) -> list[_Entry] | None:
            if entries is None:
                self._missing()
            versions = [e.version() for e in entries]
            needed, holder = _plan_move(self.name, versions, label, to_version, from_version)
            if not needed:
                return None
            for entry in entries:
                entry.labels.discard(label)
                if label == CURRENT and holder is not None:
                    entry.labels.discard(PREVIOUS)
            for entry in entries:
                if entry.id == to_version:
                    entry.labels.add(label)
                if label == CURRENT and entry.id == holder:
                    entry.labels.add(PREVIOUS)
            return entries

        self._update(change)

    def remove_label(self, label: str, from_version: str) -> None:
        _no_current_removal(label)

        def change(entries: list[_Entry] | None) -> list[_Entry] | None:
            if entries is None:
                self._missing()
            entry = next((e for e in entries if e.id == from_version), None)
            if entry is None or label not in entry.labels:
                return None
            entry.labels.discard(label)
            return entries

        self._update(change)
