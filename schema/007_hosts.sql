-- orchfs 007: worktrees belong to the machine that made them (issue 14).
--
-- With a replicated store, daemons on several machines share one database,
-- but a worktree's checkout and branch exist only in the repository of the
-- machine whose daemon made it.  `host` is that daemon's name (orchfs mount
-- --host NAME); '' is a daemon started without --host (one machine, the
-- default), so every record made before this migration belongs to it.
ALTER TABLE worktrees ADD COLUMN host TEXT NOT NULL DEFAULT '';

-- Each machine has its own main worktree (its own checkout of the
-- repository): the main record is looked up by kind, host and path.  Not
-- UNIQUE: session.open looks it up before it inserts one, inside the
-- writer's transaction, so there is never a second; and an index that could
-- fail on an old database would stop the daemon from starting.
DROP INDEX worktrees_by_kind;
CREATE INDEX worktrees_by_kind ON worktrees (kind, host, path);
