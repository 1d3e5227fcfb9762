-- orchfs 004: the markdown mirror.
--
-- version_at: when db_version last moved (the time of the last successful
-- mutating call).  The mirror measures ages from it, never from the time
-- of the refresh, so the same state renders the same bytes.
ALTER TABLE mirror_meta ADD COLUMN version_at INTEGER NOT NULL DEFAULT 0;
-- The rendering mirror/ serves: the git tree of its files, and the state it
-- showed (md_version is already there; md_at is that state's version_at).
ALTER TABLE mirror_meta ADD COLUMN md_tree TEXT NOT NULL DEFAULT '';
ALTER TABLE mirror_meta ADD COLUMN md_at INTEGER NOT NULL DEFAULT 0;
-- The rendering before it with another db_version: index.md's "changes since
-- the previous refresh" are measured from it (kept when a refresh renders
-- the same db_version again, so that the second rendering is the same).
ALTER TABLE mirror_meta ADD COLUMN md_base_version INTEGER NOT NULL DEFAULT 0;
ALTER TABLE mirror_meta ADD COLUMN md_base_at INTEGER NOT NULL DEFAULT 0;

-- The files of the current rendering, one row per file (ids are fixed per
-- name: the order of mirror/).  They live in <state>/mirror/<dir>/<name>,
-- a directory written once and never changed; a refresh that changes
-- anything points every row at a new directory in one transaction.
CREATE TABLE mirror_files (
  id         INTEGER PRIMARY KEY,
  name       TEXT    NOT NULL UNIQUE,
  dir        TEXT    NOT NULL,
  size       INTEGER NOT NULL,
  blob       TEXT    NOT NULL,   -- git blob id of the content
  changed_at INTEGER NOT NULL    -- the refresh that last changed the content: the file's mtime
);
