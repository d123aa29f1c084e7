"""``config check`` for the repository: does its location exist, can it be reached, and
is it a ptool-ops repository (or empty)? Reads only."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ptool_ops.errors import PtoolError
from ptool_ops.repo.repository import Repository


@dataclass
class RepositoryCheck:
    url: str
    ok: bool
    #: the marker is there (None: the location could not be read)
    initialised: bool | None = None
    note: str | None = None
    problem: str | None = None
    hint: str | None = None
    exit_code: int | None = None
    _error: PtoolError | None = field(default=None, repr=False)

    @classmethod
    def failed(cls, url: str, err: PtoolError) -> RepositoryCheck:
        return cls(url, False, None, None, err.message, err.hint, err.exit_code, err)

    def error(self) -> PtoolError | None:
        """The problem as the error it was (its exit code: 3 for a missing directory,
        bucket or credentials, 5 for an unreachable endpoint)."""
        return None if self.ok else self._error

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}


def check_repository(repo: Repository, *, made_on_first_use: bool = False) -> RepositoryCheck:
    """Check the location (the directory; the bucket, credentials and endpoint) and the
    marker. ``made_on_first_use``: a location nobody configured (the local environment's
    default directory) may not exist yet -- that is a note, not a problem."""
    try:
        repo.storage.check_location()
    except PtoolError as err:
        if made_on_first_use:
            return RepositoryCheck(
                repo.url, True, False, note="not created yet: the first backup creates it"
            )
        return RepositoryCheck.failed(repo.url, err)
    try:
        initialised = repo.check_marker()
    except PtoolError as err:
        return RepositoryCheck.failed(repo.url, err)
    note = None if initialised else "no backup stored yet (no ptool-repo.json marker)"
    return RepositoryCheck(repo.url, True, initialised, note=note)
