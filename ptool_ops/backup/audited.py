"""The audit record of a backup operation, and what happens when it cannot be written.

:meth:`Environment.audit` appends the record when the block ends. If that append fails
(a full disk, a read-only audit directory) after the work succeeded, the work is done and
must not be reported as failed -- but CI must learn that the record is missing:
:class:`AuditNotRecorded` (exit 9) says both, with the state the work left. If the work
failed and its record could not be written either, the work's own error is raised, with
a note.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from ptool_ops.errors import ManualActionRequired, PtoolError

if TYPE_CHECKING:
    from ptool_ops.audit import Entry
    from ptool_ops.environment import Environment


class AuditNotRecorded(ManualActionRequired):
    """The operation succeeded; its audit record could not be written."""

    kind = "audit_not_recorded"


def _reason(err: OSError) -> str:
    return err.strerror or type(err).__name__


@contextmanager
def audited(
    env: Environment, action: str, details: dict[str, Any], *, done: Callable[[], str]
) -> Iterator[Entry]:
    """``env.audit(action, details)``; ``done()`` describes what succeeded (one clause)."""
    succeeded = False
    try:
        with env.audit(action, details) as entry:
            yield entry
            succeeded = True
    except OSError as err:
        path = env.audit_sink.path
        if succeeded:
            raise AuditNotRecorded(
                f"{done()}, but its audit record could not be written to {path} ({_reason(err)}).",
                hint=f"The operation itself succeeded. Fix the audit directory and record "
                f"'{action}' by hand; 'ptool-ops audit verify' checks the chain.",
            ) from None
        original = err.__context__
        if isinstance(original, PtoolError):
            raise type(original)(
                f"{original.message.rstrip('.')} (and its audit record could not be written "
                f"to {path}: {_reason(err)}).",
                hint=original.hint,
            ) from None
        raise
