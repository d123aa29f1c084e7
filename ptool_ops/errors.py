"""The error hierarchy: every failure an operator can cause has a class, an exit code and a hint.

Library code raises these; only ``ptool_ops.cli.main`` turns them into a message and an exit.
Anything else that escapes is our bug and is shown with a traceback (exit 70).

Exit codes (documented in README.md — keep the two in step):

===  ==========================  =========================================================
 0   ok
 1   ProblemsFound               the command ran and found problems (status, invariants)
 2   UsageError                  the command line itself is wrong (as Click's own code)
 3   ConfigError                 a setting is missing or invalid, an unknown environment
 4   DatabaseUnavailable         the database cannot be reached or refused the login
 5   ServiceUnavailable          an HTTP service (API, S3, Neon, ...) cannot be reached
 6   Conflict                    something is busy or taken: a port, a lock, a running job
 7   Refused                     a safety check declined: confirmation missing or denied
 8   OperationFailed             the operation failed; nothing was changed or it was undone
 9   ManualActionRequired        the operation failed and could not undo itself
10   ToolMissing                 no suitable external tool (pg_dump, ...) was found
11   PermissionDenied            a database role lacks a privilege the command needs
70   (internal)                  a bug in ptool-ops: please report it with the traceback
130  (interrupted)               interrupted by Ctrl-C
===  ==========================  =========================================================
"""

from __future__ import annotations

import json
from collections.abc import Iterable

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_INTERNAL = 70
EXIT_INTERRUPTED = 130


class PtoolError(Exception):
    """Base of every error an operator can cause; ``str(err)`` is one sentence."""

    exit_code = 8
    kind = "error"

    def __init__(
        self, message: str, *, hint: str | None = None, details: dict[str, object] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        #: facts for machines (``--output json``), e.g. what a run committed before it failed
        self.details = dict(details or {})

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {
            "error": self.kind,
            "exit_code": self.exit_code,
            "message": self.message,
            "hint": self.hint,
        }
        if self.details:
            out["details"] = self.details
        return out


class ProblemsFound(PtoolError):
    """The command did its work and found something wrong (for cron and CI to alert on)."""

    exit_code = 1
    kind = "problems_found"


class UsageError(PtoolError):
    """The command line is wrong in a way only the library can tell (an unknown version,
    two options that exclude each other): exit 2, as Click's own usage errors."""

    exit_code = 2
    kind = "usage"


class ConfigError(PtoolError):
    exit_code = 3
    kind = "config"


class DatabaseUnavailable(PtoolError):
    exit_code = 4
    kind = "database_unavailable"


class ServiceUnavailable(PtoolError):
    exit_code = 5
    kind = "service_unavailable"


class Conflict(PtoolError):
    exit_code = 6
    kind = "conflict"


class Refused(PtoolError):
    exit_code = 7
    kind = "refused"


class OperationFailed(PtoolError):
    exit_code = 8
    kind = "operation_failed"


class ManualActionRequired(PtoolError):
    exit_code = 9
    kind = "manual_action_required"


class ToolMissing(PtoolError):
    exit_code = 10
    kind = "tool_missing"


class PermissionDenied(PtoolError):
    """The login lacks a privilege: the message names the role, the object and the
    privilege, the hint the grant that fixes it (see :mod:`ptool_ops.privileges`)."""

    exit_code = 11
    kind = "permission_denied"


EXIT_CODES: dict[int, str] = {
    EXIT_OK: "ok",
    ProblemsFound.exit_code: "ran and found problems",
    EXIT_USAGE: "command-line usage error",
    ConfigError.exit_code: "configuration error",
    DatabaseUnavailable.exit_code: "database unavailable",
    ServiceUnavailable.exit_code: "service unavailable",
    Conflict.exit_code: "conflict: busy or taken",
    Refused.exit_code: "refused by a safety check",
    OperationFailed.exit_code: "operation failed, nothing changed or undone",
    ManualActionRequired.exit_code: "operation failed and needs manual action",
    ToolMissing.exit_code: "required tool missing",
    PermissionDenied.exit_code: "a database role lacks a privilege",
    EXIT_INTERNAL: "internal error (bug)",
    EXIT_INTERRUPTED: "interrupted",
}


def quoted_forms(values: Iterable[str]) -> list[str]:
    """How secret ``values`` show up in an error's text: as given, and as a JSON string quotes
    them (a service echoing its input). Empty values are left out; longest first, so masking
    one never leaves part of a longer one behind."""
    forms = {form for value in values if value for form in (value, json.dumps(value)[1:-1])}
    return sorted(forms, key=len, reverse=True)
