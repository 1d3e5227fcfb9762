-- Several hosts on one replicated state (dqlite).  A holder of
-- sessions/<id>/alive is a process on some host: `host` names it ('' when
-- the state is a SQLite file, which only one machine uses).  Where the SQL
-- runs on that same host, the holder's pid and start time say whether it
-- still runs; elsewhere they cannot, so the host's daemon refreshes
-- `seen_at` of the holders it sees running, every few seconds, and a
-- holder not seen for longer than the host timeout counts as gone (SQL
-- function orch_holder_alive).
ALTER TABLE session_alive ADD COLUMN host TEXT NOT NULL DEFAULT '';
ALTER TABLE session_alive ADD COLUMN seen_at INTEGER;
