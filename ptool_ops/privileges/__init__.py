"""The privilege model, declared once: roles, attributes, memberships, grants, and which
command needs which role.

Everything that creates or checks a role reads this package (``model``: the declarations;
``duties``: what each command needs and the checks; ``sql``: the model as SQL; ``docs``: as
the table of docs/privileges.md):

* ``ptool-ops local up`` creates the **platform** roles as Neon does for a project (the
  NOLOGIN ``neon_superuser`` and the database's owner ``booking_owner``, a member of it)
  with :func:`platform_role_statements`, then -- logged in as ``booking_owner``, never as the
  superuser -- the **stack** roles with :func:`provision`, as the Pulumi ``Database``
  component does on Neon (``components/database.py`` builds its resources from
  :data:`STACK_ROLES`, :data:`MEMBERSHIPS` and :data:`DATABASE_GRANTS`);
* migration 0001 carries :func:`migration_block` (a test keeps the file and this package
  equal), so a fresh database gets every role its grants name, whoever created the server;
* every command asks :func:`require` for the privileges its duty lists before it starts,
  and ``ptool-ops doctor`` runs :func:`check` for every duty against every configured login.

``docs/privileges.md`` holds :func:`markdown_table` (a test keeps the two equal).
"""

from ptool_ops.privileges.docs import markdown_table
from ptool_ops.privileges.duties import (
    DUTIES,
    NEEDS,
    Duty,
    DutyCheck,
    Missing,
    Need,
    check,
    require,
)
from ptool_ops.privileges.model import (
    APP_GROUP,
    APP_LOGINS,
    ATTRIBUTES,
    BACKUP,
    DATA_SCHEMAS,
    DATABASE,
    DATABASE_GRANTS,
    MEMBERSHIPS,
    MIGRATOR,
    OPERATOR,
    OWNER,
    PLATFORM_MEMBERSHIPS,
    PLATFORM_ROLES,
    PLATFORM_SUPERUSER,
    READONLY,
    SCHEMA_OWNER,
    SCHEMAS,
    SELF_MANAGED_FUNCTION_GRANTS,
    STACK_ROLES,
    DatabaseGrant,
    Membership,
    Role,
    login_roles,
    plain,
    role,
)
from ptool_ops.privileges.sql import (
    BLOCK_BEGIN,
    BLOCK_END,
    block_of,
    database_grant_statements,
    migration_block,
    platform_database_statements,
    platform_role_statements,
    provision,
    self_managed_statements,
    stack_statements,
    write_block,
)

__all__ = [
    "APP_GROUP",
    "APP_LOGINS",
    "ATTRIBUTES",
    "BACKUP",
    "BLOCK_BEGIN",
    "BLOCK_END",
    "DATABASE",
    "DATABASE_GRANTS",
    "DATA_SCHEMAS",
    "DUTIES",
    "MEMBERSHIPS",
    "MIGRATOR",
    "NEEDS",
    "OPERATOR",
    "OWNER",
    "PLATFORM_MEMBERSHIPS",
    "PLATFORM_ROLES",
    "PLATFORM_SUPERUSER",
    "READONLY",
    "SCHEMAS",
    "SCHEMA_OWNER",
    "SELF_MANAGED_FUNCTION_GRANTS",
    "STACK_ROLES",
    "DatabaseGrant",
    "Duty",
    "DutyCheck",
    "Membership",
    "Missing",
    "Need",
    "Role",
    "block_of",
    "check",
    "database_grant_statements",
    "login_roles",
    "markdown_table",
    "migration_block",
    "plain",
    "platform_database_statements",
    "platform_role_statements",
    "provision",
    "require",
    "role",
    "self_managed_statements",
    "stack_statements",
    "write_block",
]
