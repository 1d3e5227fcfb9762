-- Several hosts on one replicated state (dqlite).  A holder of
-- sessions/<id>/alive is a process on some host: `host` names it ('' when
-- the state is a SQLite file, which only one machine uses), and is part of
-- the key (a pid and start time mean something only on their host).  Where
-- the SQL runs on that same host, the holder's pid and start time say
-- whether it still runs; elsewhere they cannot, so the host's daemon
-- refreshes `seen_at` of the holders it sees running, every few seconds,
-- and a holder not seen for longer than the host timeout counts as gone
-- (SQL function orch_holder_alive).
CREATE TABLE session_alive_new (
  session_id   INTEGER NOT NULL REFERENCES sessions (id),
  host         TEXT NOT NULL DEFAULT '',
  daemon_pid   INTEGER NOT NULL,
  daemon_start INTEGER NOT NULL,
  since        INTEGER NOT NULL,
  seen_at      INTEGER,
  PRIMARY KEY (session_id, host, daemon_pid, daemon_start)
);
INSERT INTO session_alive_new (session_id, daemon_pid, daemon_start, since)
  SELECT session_id, daemon_pid, daemon_start, since FROM session_alive;
DROP TABLE session_alive;
ALTER TABLE session_alive_new RENAME TO session_alive;
