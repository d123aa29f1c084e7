"""Settings: precedence, sources named in errors, secret references, redaction."""

from __future__ import annotations

from pathlib import Path

import boto3
import pytest
from pydantic import SecretStr

from ptool_ops.console import Redactor
from ptool_ops.environment import Environment
from ptool_ops.errors import ConfigError
from ptool_ops.secrets.refs import parse_ref, resolve
from ptool_ops.settings import EnvironmentSettings, load_environment

from .conftest import CANARY


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for key in [k for k in __import__("os").environ if k.startswith("PTOOL_")]:
        monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "ptool-ops.toml"
    path.write_text(text)
    return path


def test_local_is_the_default_and_needs_no_file(tmp_path: Path) -> None:
    settings = load_environment()
    assert settings.name == "local"
    assert settings.is_local
    assert settings.local_dir == (tmp_path / ".ptool" / "local").resolve()


def test_precedence_defaults_toml_env_flags(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(
        tmp_path,
        '[environments.staging]\napi_url = "https://toml.example"\nrepo_url = "file:///r"\n',
    )
    settings = load_environment("staging")
    assert settings.api_url == "https://toml.example"
    assert settings.kind == "postgres"
    monkeypatch.setenv("PTOOL_API_URL", "https://env.example/")
    settings = load_environment("staging")
    assert settings.api_url == "https://env.example"  # trailing slash normalised
    assert settings.repo_url == "file:///r"
    settings = load_environment("staging", overrides={"api_url": "https://flag.example"})
    assert settings.api_url == "https://flag.example"


def test_ptool_env_selects_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, "[environments.staging]\n")
    monkeypatch.setenv("PTOOL_ENV", "staging")
    assert load_environment().name == "staging"


def test_unknown_environment_names_the_known_ones(tmp_path: Path) -> None:
    write(tmp_path, "[environments.staging]\n")
    with pytest.raises(ConfigError) as err:
        load_environment("prdo")
    assert "unknown environment 'prdo'" in err.value.message
    assert "local, staging" in err.value.message


def test_bad_toml_names_the_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "[environments.prod\napi_url = 1\n")
    with pytest.raises(ConfigError) as err:
        load_environment("prod")
    assert str(path) in err.value.message
    assert "line 1" in err.value.message


def test_invalid_value_names_key_and_table(tmp_path: Path) -> None:
    write(tmp_path, '[environments.prod]\nrepo_url = "ftp://nope"\n')
    with pytest.raises(ConfigError) as err:
        load_environment("prod")
    assert "'repo_url'" in err.value.message
    assert "[environments.prod]" in err.value.message
    assert "s3:// or file://" in err.value.message


def test_invalid_value_from_variable_names_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, "[environments.prod]\n")
    monkeypatch.setenv("PTOOL_LOCAL_PORT", "not-a-port")
    with pytest.raises(ConfigError) as err:
        load_environment("prod")
    assert "PTOOL_LOCAL_PORT" in err.value.message


def test_unknown_key_is_rejected(tmp_path: Path) -> None:
    write(tmp_path, '[environments.prod]\ndatabse_url = "postgresql://x"\n')
    with pytest.raises(ConfigError) as err:
        load_environment("prod")
    assert "unknown setting 'databse_url'" in err.value.message


def test_invalid_database_url_does_not_echo_the_value(tmp_path: Path) -> None:
    write(tmp_path, f'[environments.prod]\ndatabase_url = "mysql://u:{CANARY}@h/db"\n')
    with pytest.raises(ConfigError) as err:
        load_environment("prod")
    assert CANARY not in err.value.message
    assert "'database_url'" in err.value.message


def database_url(settings: EnvironmentSettings) -> SecretStr:
    """The operator's URL, as every command without a login of its own gets it."""
    return Environment(settings).database("status").url


def test_missing_database_is_one_clear_sentence(tmp_path: Path) -> None:
    write(tmp_path, "[environments.prod]\n")
    with pytest.raises(ConfigError) as err:
        database_url(load_environment("prod"))
    assert "has no database configured" in err.value.message
    assert "PTOOL_DATABASE_URL" in (err.value.hint or "")


def test_secrets_are_secretstr_and_hidden_in_describe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, "[environments.prod]\n")
    monkeypatch.setenv("PTOOL_DATABASE_URL", f"postgresql://u:{CANARY}@db.example/app")
    settings = load_environment("prod")
    assert CANARY not in repr(settings)
    assert CANARY not in str(settings.describe())
    assert settings.describe()["database_url"] == "(set)"
    assert CANARY in settings.secret_values()
    assert settings.needs_confirmation


def test_secret_reference_env_and_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DB_URL_FOR_TEST", "postgresql://a:b@h/d")
    assert resolve(parse_ref("env:DB_URL_FOR_TEST")).get_secret_value().endswith("/d")
    secret_file = tmp_path / "db-url"
    secret_file.write_text("postgresql://a:b@h/e\n")
    assert resolve(parse_ref(f"file:{secret_file}")).get_secret_value().endswith("/e")
    with pytest.raises(ConfigError, match="variable NOPE_NOT_SET is missing"):
        resolve(parse_ref("env:NOPE_NOT_SET"))


def test_bad_secret_reference_is_a_config_error(tmp_path: Path) -> None:
    write(tmp_path, '[environments.prod]\ndatabase_secret = "vault:x"\n')
    with pytest.raises(ConfigError, match="'database_secret'"):
        load_environment("prod")


def test_secret_reference_from_secrets_manager(
    tmp_path: Path, aws_env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = boto3.client("secretsmanager", endpoint_url=aws_env, region_name="us-east-1")
    client.create_secret(
        Name="prod/booking/migrator",
        SecretString=(
            '{"username": "booking_migrator", "password": "p@ss:word", '
            '"host": "db.example", "port": 5432, "dbname": "booking"}'
        ),
    )
    write(
        tmp_path,
        "[environments.prod]\n"
        f'database_secret = "aws-sm:prod/booking/migrator"\naws_endpoint_url = "{aws_env}"\n',
    )
    url = database_url(load_environment("prod")).get_secret_value()
    assert url == (
        "postgresql://booking_migrator:p%40ss%3Aword@db.example:5432/booking?sslmode=require"
    )
    write(
        tmp_path,
        "[environments.prod]\n"
        f'database_secret = "aws-sm:missing"\naws_endpoint_url = "{aws_env}"\n',
    )
    with pytest.raises(ConfigError, match="does not exist in Secrets Manager"):
        database_url(load_environment("prod"))


def test_redactor_masks_urls_conninfo_and_known_values() -> None:
    redactor = Redactor()
    redactor.add(CANARY)
    text = (
        f"postgresql://user:{CANARY}@host/db host=h password={CANARY} "
        "PGPASSWORD=hunter22 postgresql://u:other-secret@h/d"
    )
    masked = redactor(text)
    assert CANARY not in masked
    assert "hunter22" not in masked
    assert "other-secret" not in masked
    assert "postgresql://user:***@host/db" in masked
    assert redactor.data({"a": [f"x {CANARY}"]}) == {"a": ["x ***"]}
    assert redactor("password: hunter33 TOKEN=abc123def") == "password: *** TOKEN=***"
    # "token:" and "secret:" start sentences: only a known value is masked after them
    said = "secret.api-token: not rotated yet; secret: rotated"
    assert redactor(said) == said


def test_a_secret_reference_is_fetched_once_per_command(
    tmp_path: Path, aws_env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = boto3.client("secretsmanager", endpoint_url=aws_env, region_name="us-east-1")
    client.create_secret(
        Name="prod/booking/once",
        SecretString="postgresql://booking_owner:pw-once-1234@db.example:5432/booking",
    )
    write(
        tmp_path,
        "[environments.prod]\n"
        f'database_secret = "aws-sm:prod/booking/once"\naws_endpoint_url = "{aws_env}"\n',
    )
    env = Environment(load_environment("prod"))
    first = env.database("backup.create").url.get_secret_value()
    # gone from Secrets Manager now: the command that resolved it keeps what it read
    client.delete_secret(SecretId="prod/booking/once", ForceDeleteWithoutRecovery=True)
    for duty in ("backup.create", "migrate.run", "status"):
        assert env.database(duty).url.get_secret_value() == first
    with pytest.raises(ConfigError, match="does not exist in Secrets Manager"):
        Environment(load_environment("prod")).database("backup.create")  # the next command
