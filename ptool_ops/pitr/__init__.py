"""Point-in-time restore: the WAL archive, base backups, windows, restores beside live, and
Neon branches behind the same ``ptool-ops pitr`` (see docs/pitr.md).

* :mod:`.target`   -- one recovery target (time with zone, LSN, xid, restore point), parsed
* :mod:`.wal`      -- ``wal push`` / ``wal fetch``: archive_command and restore_command
* :mod:`.archive`  -- the archive's layout, its identity, segment names and listing
* :mod:`.base`     -- full and incremental base backups (``pg_basebackup``) and their manifests
* :mod:`.window`   -- what can be restored: per timeline, earliest point .. newest WAL, gaps
* :mod:`.restore`  -- a restore into a new data directory, started beside live
* :mod:`.replace`  -- ``promote --replace``: a checked copy becomes live (local environment)
* :mod:`.retention`, :mod:`.prune` -- which base backups and WAL to keep; ``pitr prune``
* :mod:`.locks`    -- the leases that keep prune, base backups and restores apart
* :mod:`.compare`  -- a restored copy against live: counts, newest events, tenants that differ
* :mod:`.neon`     -- the same on Neon, through branches
"""
