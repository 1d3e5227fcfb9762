-- orchfs 007: the change feed and liveness by a held-open file.
--
-- events: one row per successful mutating call, written in the call's own
-- transaction (a rolled-back call leaves none).  db_version is the value the
-- call bumped mirror_meta.db_version to; ids_json the rows it changed, by
-- table ({"tasks": [5], "locks": [3]}).  Only the newest rows are kept
-- (src/core/events.c, EVENTS_KEPT): the writer deletes the oldest as it adds.
CREATE TABLE events (
  db_version INTEGER PRIMARY KEY,
  method     TEXT    NOT NULL,
  session_id INTEGER,
  ids_json   TEXT    NOT NULL,
  at         INTEGER NOT NULL
);

-- session_alive: sessions/<id>/alive is held open in a daemon.  One row per
-- (session, daemon); the daemon is named by pid and start time (clock ticks
-- after boot, /proc/<pid>/stat), so a row left by a daemon that died counts
-- as not held (SQL function orch_pid_alive).
CREATE TABLE session_alive (
  session_id   INTEGER NOT NULL REFERENCES sessions (id),
  daemon_pid   INTEGER NOT NULL,
  daemon_start INTEGER NOT NULL,
  since        INTEGER NOT NULL,
  PRIMARY KEY (session_id, daemon_pid, daemon_start)
);
-- When the last alive handle of a session was closed: a resume candidate at
-- once, until it heartbeats again (last_seen_at after it).
ALTER TABLE sessions ADD COLUMN alive_dropped_at INTEGER;
