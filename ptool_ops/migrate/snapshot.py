"""A snapshot of the catalog state migrations touch: ``migrate test`` and the reversibility
tests compare one taken before a migration with one taken after its ``down``.

ACLs are compared by meaning (``aclexplode`` over the ACL or its default), not by
their stored form; object identity is by name, never by oid.
"""

from __future__ import annotations

from typing import Any

import psycopg

__all__ = ["QUERIES", "diff", "snapshot"]

QUERIES: dict[str, str] = {
    "roles": """
        SELECT r.rolname, r.rolsuper, r.rolinherit, r.rolcreaterole, r.rolcreatedb,
               r.rolcanlogin, r.rolbypassrls
          FROM pg_roles r WHERE r.rolname NOT LIKE 'pg\\_%' ORDER BY 1
    """,
    "memberships": """
        SELECT m.roleid::regrole::text, m.member::regrole::text, m.inherit_option,
               m.set_option, m.admin_option
          FROM pg_auth_members m ORDER BY 1, 2
    """,
    "namespaces": """
        SELECT n.nspname, n.nspowner::regrole::text,
               (SELECT array_agg(a::text ORDER BY a::text)
                  FROM aclexplode(coalesce(n.nspacl, acldefault('n'::"char", n.nspowner))) a)
          FROM pg_namespace n WHERE n.nspname !~ '^(pg_|information_schema$)' ORDER BY 1
    """,
    "extensions": """
        SELECT e.extname, e.extversion, e.extnamespace::regnamespace::text
          FROM pg_extension e ORDER BY 1
    """,
    "relations": """
        SELECT n.nspname, c.relname, c.relkind, c.relowner::regrole::text,
               c.relrowsecurity, c.relforcerowsecurity, c.relpersistence,
               (SELECT array_agg(a::text ORDER BY a::text)
                  FROM aclexplode(coalesce(c.relacl, acldefault(
                       (CASE WHEN c.relkind = 'S' THEN 's' ELSE 'r' END)::"char", c.relowner))) a)
          FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname !~ '^(pg_|information_schema$)' ORDER BY 1, 2
    """,
    "columns": """
        SELECT n.nspname, c.relname, a.attname, format_type(a.atttypid, a.atttypmod),
               a.attnotnull, a.attidentity, a.attgenerated,
               pg_get_expr(d.adbin, d.adrelid)
          FROM pg_attribute a
          JOIN pg_class c ON c.oid = a.attrelid
          JOIN pg_namespace n ON n.oid = c.relnamespace
          LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
         WHERE n.nspname !~ '^(pg_|information_schema$)' AND a.attnum > 0 AND NOT a.attisdropped
         ORDER BY 1, 2, 3
    """,
    "constraints": """
        SELECT n.nspname, conrelid::regclass::text, c.conname, c.contype,
               c.convalidated, pg_get_constraintdef(c.oid)
          FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace
         WHERE n.nspname !~ '^(pg_|information_schema$)' ORDER BY 1, 2, 3
    """,
    "indexes": """
        SELECT n.nspname, i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid),
               i.indisvalid, i.indisready
          FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
          JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname !~ '^(pg_|information_schema$)' ORDER BY 1, 2
    """,
    "triggers": """
        SELECT n.nspname, t.tgrelid::regclass::text, t.tgname, t.tgenabled,
               pg_get_triggerdef(t.oid)
          FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
          JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname !~ '^(pg_|information_schema$)' AND NOT t.tgisinternal ORDER BY 1, 2, 3
    """,
    "policies": """
        SELECT schemaname, tablename, policyname, permissive, roles::text, cmd, qual,
               with_check
          FROM pg_policies ORDER BY 1, 2, 3
    """,
    "functions": """
        SELECT n.nspname, p.oid::regprocedure::text, p.proowner::regrole::text,
               md5(p.prosrc), p.proconfig
          FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
         WHERE n.nspname !~ '^(pg_|information_schema$)' ORDER BY 1, 2
    """,
    "types": """
        SELECT n.nspname, t.typname, t.typtype, t.typowner::regrole::text
          FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
         WHERE n.nspname !~ '^(pg_|information_schema$)' ORDER BY 1, 2
    """,
    "default_acls": """
        SELECT d.defaclrole::regrole::text, d.defaclnamespace::regnamespace::text,
               d.defaclobjtype, d.defaclacl::text
          FROM pg_default_acl d ORDER BY 1, 2, 3
    """,
    "database_acl": """
        SELECT (SELECT array_agg(a::text ORDER BY a::text)
                  FROM aclexplode(coalesce(d.datacl, acldefault('d'::"char", d.datdba))) a)
          FROM pg_database d WHERE d.datname = current_database()
    """,
}


def snapshot(
    conn: psycopg.Connection[Any], *, exclude_schemas: tuple[str, ...] = ()
) -> dict[str, list[tuple[Any, ...]]]:
    """The catalog state as comparable rows, one list per aspect."""
    result: dict[str, list[tuple[Any, ...]]] = {}
    for key, query in QUERIES.items():
        rows = [tuple(_hashable(v) for v in row) for row in conn.execute(query).fetchall()]
        if exclude_schemas and key not in {"roles", "memberships", "default_acls", "database_acl"}:
            rows = [row for row in rows if row[0] not in exclude_schemas]
        result[key] = rows
    return result


def _hashable(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_hashable(v) for v in value)
    return value


def diff(
    before: dict[str, list[tuple[Any, ...]]], after: dict[str, list[tuple[Any, ...]]]
) -> dict[str, dict[str, list[tuple[Any, ...]]]]:
    """Rows only in ``before`` ("removed") or only in ``after`` ("added"), by aspect."""
    changes: dict[str, dict[str, list[tuple[Any, ...]]]] = {}
    for key in before.keys() | after.keys():
        old, new = set(before.get(key, [])), set(after.get(key, []))
        if old != new:
            changes[key] = {
                "removed": sorted(old - new, key=repr),
                "added": sorted(new - old, key=repr),
            }
    return changes
