"""Secret references: where a setting's secret value lives, instead of the value itself.

* ``env:NAME`` — the value of an environment variable;
* ``file:/path`` — the contents of a file (trailing newline stripped), e.g. a mounted secret;
* ``aws-sm:NAME`` — the AWSCURRENT version of an AWS Secrets Manager secret. A secret holding
  JSON in the RDS shape (``username``, ``password``, ``host``, ``port``, ``dbname``) becomes a
  ``postgresql://`` URL; ``aws-sm:NAME#key`` picks one key of a JSON secret.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from pydantic import SecretStr

from ptool_ops.errors import ConfigError, ServiceUnavailable

SCHEMES = ("env", "file", "aws-sm")


@dataclass(frozen=True)
class SecretRef:
    scheme: str
    name: str
    key: str | None = None

    def __str__(self) -> str:
        return f"{self.scheme}:{self.name}" + (f"#{self.key}" if self.key else "")


def parse_ref(text: str) -> SecretRef:
    scheme, sep, rest = text.partition(":")
    if not sep or scheme not in SCHEMES or not rest:
        raise ValueError(f"must look like {', '.join(s + ':NAME' for s in SCHEMES)}")
    name, _, key = rest.partition("#")
    return SecretRef(scheme, name, key or None)


def resolve(
    ref: SecretRef, *, aws_region: str | None = None, aws_endpoint_url: str | None = None
) -> SecretStr:
    """Fetch the secret's value. Failures name the reference, never the value."""
    if ref.scheme == "env":
        value = os.environ.get(ref.name)
        if value is None:
            raise ConfigError(f"secret {ref} is not set: variable {ref.name} is missing.")
        return SecretStr(value)
    if ref.scheme == "file":
        try:
            return SecretStr(Path(ref.name).read_text(encoding="utf-8").rstrip("\n"))
        except OSError as err:
            raise ConfigError(f"cannot read secret {ref}: {err.strerror}.") from None
    return _aws_secret(ref, aws_region, aws_endpoint_url)


def _aws_secret(ref: SecretRef, region: str | None, endpoint_url: str | None) -> SecretStr:
    from botocore.exceptions import BotoCoreError, ClientError

    from ptool_ops import aws

    client = aws.client("secretsmanager", region=region, endpoint_url=endpoint_url)
    try:
        raw = client.get_secret_value(SecretId=ref.name, VersionStage="AWSCURRENT")
    except ClientError as err:
        code = err.response.get("Error", {}).get("Code", "error")
        if code == "ResourceNotFoundException":
            raise ConfigError(f"secret {ref} does not exist in Secrets Manager.") from None
        raise ServiceUnavailable(f"Secrets Manager refused to read {ref}: {code}.") from None
    except BotoCoreError as err:
        raise ServiceUnavailable(f"cannot reach Secrets Manager to read {ref}: {err}.") from None
    text = raw.get("SecretString")
    if text is None:
        raise ConfigError(f"secret {ref} holds binary data; ptool-ops needs a string.")
    return SecretStr(_pick(ref, text))


def _pick(ref: SecretRef, text: str) -> str:
    try:
        document = json.loads(text)
    except ValueError:
        document = None
    if not isinstance(document, dict):
        if ref.key:
            raise ConfigError(f"secret {ref} is not JSON, so it has no key {ref.key!r}.")
        return text
    if ref.key:
        if ref.key not in document:
            raise ConfigError(f"secret {ref} has no key {ref.key!r}.")
        return str(document[ref.key])
    if {"username", "password", "host"} <= document.keys():
        user = quote(str(document["username"]), safe="")
        password = quote(str(document["password"]), safe="")
        port = document.get("port", 5432)
        dbname = quote(str(document.get("dbname", "postgres")), safe="")
        host = str(document["host"])
        # a credential for a remote server (Neon) is used over TLS, as libpq's default
        # 'prefer' would not insist on
        sslmode = document.get("sslmode") or (
            None if host in {"localhost", "127.0.0.1", "::1"} else "require"
        )
        query = f"?sslmode={quote(str(sslmode), safe='')}" if sslmode else ""
        return f"postgresql://{user}:{password}@{host}:{port}/{dbname}{query}"
    raise ConfigError(
        f"secret {ref} is JSON without username/password/host; name a key with {ref}#KEY."
    )
