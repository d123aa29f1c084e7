"""What ``ptool-ops secrets rotate`` owns, a stack sets once (``components/rotation.py``).

The first deploy bootstraps each rotated credential -- the roles' passwords, the store (a
Secrets Manager secret with its first version, the JSON the rotation reads), the backend's
``DATABASE_URL`` -- and a later deploy with other passwords in ``dbPasswords`` sends none of
those again, while every value no code rotates still follows the stack.

Mocks run no engine, so a later deploy is judged as the engine judges it: the new inputs,
each ``ignoreChanges`` property put back to its old value, write-only inputs left out (the
engine never diffs them: the provider sends one only when its version changes), compared
with the old inputs.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import unquote, urlsplit

import pulumi
import pytest

from components.config import LOGIN_ROLES, SECRET_KINDS
from components.rotation import ROTATED, rotated_roles
from ptool_ops.secrets.credential import Credential
from ptool_ops.secrets.spec import ManagedSecret
from tests.iac.conftest import PASSWORDS, ProgramRun, RecordingMocks
from tests.iac.test_program import is_secret, stack_environment, unwrap

LONG_LIVED = ("dev", "staging", "prod")
PG_ROLE = "postgresql:index/role:Role"
SECRET = "aws:secretsmanager/secret:Secret"
SECRET_VERSION = "aws:secretsmanager/secretVersion:SecretVersion"
RAILWAY_VARS = "pulumi-python:dynamic/railway:Variables"
#: every value the rotation replaces, by resource: exactly what a long-lived stack ignores
ROTATION_OWNS = {
    "database-role-booking_app_a": ["passwordWoVersion"],
    "database-role-booking_app_b": ["passwordWoVersion"],
    "database-role-booking_migrator": ["passwordWoVersion"],
    "credentials-app-db-value": ["secretString"],
    "credentials-migrator-value": ["secretString"],
    "backend-secret-variables": ["variables"],
}
#: what a new dbPasswords still changes: the logins and the secret no code rotates
STACK_OWNS = {
    "database-role-booking_readonly",
    "database-role-booking_backup",
    "credentials-backup-value",
}
WRITE_ONLY = frozenset({"passwordWo"})
NEXT = {role: f"{password}-next" for role, password in PASSWORDS.items()}

Deployed = dict[str, tuple[dict[str, Any], list[str]]]


def deploy(
    run_program: ProgramRun,
    mocks: RecordingMocks,
    stack: str,
    passwords: dict[str, str] = PASSWORDS,
) -> tuple[Deployed, dict[str, Any]]:
    """One ``pulumi up`` of ``stack``: each custom resource's inputs and ignoreChanges, and
    the stack outputs."""
    pulumi.runtime.settings.ROOT.set(None)  # a fresh stack, as a new deployment has
    mocks.resources.clear()
    preview = stack.startswith("pr-")
    outputs = run_program(
        stack,
        None if preview else stack_environment(stack),
        secrets={"ptool-ops:dbPasswords": json.dumps(passwords)},
        extra={"ptool-ops:gitBranch": "feature/x"} if preview else None,
    )
    deployed = {r.name: (r.inputs, mocks.ignored.get(r.name, [])) for r in mocks.resources}
    return deployed, outputs


def would_update(old: Deployed, new: Deployed) -> set[str]:
    """The resources the engine would update going from ``old`` to ``new``."""
    changed = set()
    for name, (inputs, ignored) in new.items():
        before = {k: v for k, v in old[name][0].items() if k not in WRITE_ONLY}
        after = {k: v for k, v in inputs.items() if k not in WRITE_ONLY}
        for key in ignored:
            if key in before:
                after[key] = before[key]
            else:
                after.pop(key, None)
        if after != before:
            changed.add(name)
    return changed


@pytest.mark.parametrize("stack", LONG_LIVED)
def test_the_first_deploy_bootstraps_each_rotated_secret(
    stack: str, run_program: ProgramRun, mocks: RecordingMocks
) -> None:
    deployed, outputs = deploy(run_program, mocks, stack)
    prefix = stack_environment(stack)["secrets"]["namePrefix"]
    host = outputs["databaseHost"][0]
    for rotated in ROTATED:
        secret, _ = deployed[f"credentials-{rotated.name}"]
        assert secret["name"] == f"{prefix}/{rotated.name}"
        version, _ = deployed[f"credentials-{rotated.name}-value"]
        # the first version only: no stage pinned, so AWSCURRENT is the rotation's to move
        assert "versionStages" not in version
        assert is_secret(version["secretString"])
        first = Credential.parse(unwrap(version["secretString"]), where=rotated.name)
        role = rotated.bootstrap_role
        assert (first.username, first.password.get_secret_value()) == (role, PASSWORDS[role])
        assert (first.host, first.port, first.dbname) == (host, 5432, "booking")
        assert not first.rotation  # the stack's, not a rotation run's

    # the backend starts on the login the app-db store calls current
    (app,) = [r for r in ROTATED if r.railway_variable]
    stored = Credential.parse(
        unwrap(deployed["credentials-app-db-value"][0]["secretString"]), where="app-db"
    )
    inputs, _ = deployed["backend-secret-variables"]
    url = urlsplit(unwrap(inputs["variables"])[app.railway_variable])
    assert (url.username, unquote(url.password or ""), url.hostname) == (
        stored.username,
        stored.password.get_secret_value(),
        stored.host,
    )
    assert inputs["create_only"] is True  # the provider writes it on create only

    # every login gets its password with a version derived from it (no constant to bump)
    for role in LOGIN_ROLES:
        inputs, _ = deployed[f"database-role-{role}"]
        assert unwrap(inputs["passwordWo"]) == PASSWORDS[role]
        assert is_secret(inputs["passwordWoVersion"])
        assert unwrap(inputs["passwordWoVersion"]) not in ("1", PASSWORDS[role])


@pytest.mark.parametrize("stack", LONG_LIVED)
def test_a_later_deploy_with_new_passwords_sends_none_the_rotation_owns(
    stack: str, run_program: ProgramRun, mocks: RecordingMocks
) -> None:
    first, _ = deploy(run_program, mocks, stack)
    second, _ = deploy(run_program, mocks, stack, NEXT)

    # ignoreChanges on exactly the values the rotation replaces, and on nothing else
    ignoring = {name: ignored for name, (_, ignored) in second.items() if ignored}
    assert ignoring == ROTATION_OWNS
    for name, keys in ROTATION_OWNS.items():
        for key in keys:  # each really changed: the ignore is what keeps it from being sent
            assert first[name][0][key] != second[name][0][key], (name, key)

    # what no code rotates follows dbPasswords; nothing the rotation owns is touched
    assert would_update(first, second) == STACK_OWNS
    backup = unwrap(second["credentials-backup-value"][0]["secretString"])
    assert f":{NEXT['booking_backup']}@" in backup


def test_the_same_passwords_change_nothing(run_program: ProgramRun, mocks: RecordingMocks) -> None:
    first, _ = deploy(run_program, mocks, "staging")
    again, _ = deploy(run_program, mocks, "staging")
    assert would_update(first, again) == set()


def test_a_preview_rotates_nothing_and_ignores_nothing(
    run_program: ProgramRun, mocks: RecordingMocks
) -> None:
    first, _ = deploy(run_program, mocks, "pr-42")
    assert not any(ignored for _, ignored in first.values())
    assert "credentials-app-db" not in first  # no store: nothing rotates a preview
    migrator = unwrap(first["credentials-migrator-value"][0]["secretString"])
    assert migrator.startswith("postgresql://booking_migrator:")  # the stack's, a URL
    assert "create_only" not in first["backend-secret-variables"][0]

    second, _ = deploy(run_program, mocks, "pr-42", NEXT)
    # every login's credential follows the preview's config (one RolePasswords sets them all)
    assert {
        "database-role-passwords",
        "credentials-migrator-value",
        "credentials-backup-value",
        "backend-secret-variables",
    } <= would_update(first, second)


def test_the_rotated_secrets_are_declarations_ptool_ops_accepts(
    run_program: ProgramRun, mocks: RecordingMocks
) -> None:
    """Each is a valid ``[environments.<env>.secrets.<name>]`` (its store the stack's
    secret); the migrator's store is the secret ``migratorSecret`` names."""
    _, outputs = deploy(run_program, mocks, "staging")
    prefix = stack_environment("staging")["secrets"]["namePrefix"]
    assert rotated_roles(ROTATED) <= set(LOGIN_ROLES)
    for rotated in ROTATED:
        assert rotated.name in SECRET_KINDS
        consumers = (
            [{"type": "railway", "variable": rotated.railway_variable}]
            if rotated.railway_variable
            else []
        )
        ManagedSecret.model_validate(
            {
                "kind": rotated.kind,
                "store": f"aws-sm:{prefix}/{rotated.name}",
                "roles": list(rotated.roles),
                "consumers": consumers,
            }
        )
    assert outputs["migratorSecret"][0] == f"aws-sm:{prefix}/migrator"
