-- orchfs 005: agents that cannot be misled (issue 11).

-- How a failed request through sessions/<id>/ctl/ is reported: 'errno' (the
-- write fails with the error's errno) or 'reply' (a complete request's write
-- succeeds; the error is only in the reply read back).
ALTER TABLE sessions ADD COLUMN ctl_errors TEXT NOT NULL DEFAULT 'errno';

-- Sessions opened before this migration get the documented default window.
UPDATE sessions SET heartbeat_timeout_seconds = 120
  WHERE heartbeat_timeout_seconds IS NULL OR heartbeat_timeout_seconds <= 0;

-- Who ended a lock, why and when; forced = 1 when another owner's lock was
-- freed with force (its owner was not live).
ALTER TABLE locks ADD COLUMN released_at INTEGER;
ALTER TABLE locks ADD COLUMN released_by TEXT;
ALTER TABLE locks ADD COLUMN release_reason TEXT;
ALTER TABLE locks ADD COLUMN release_forced INTEGER;

-- The session whose call wrote a checkpoint (NULL: through ctl/ without one).
ALTER TABLE checkpoints ADD COLUMN session_id INTEGER;

-- The last reply each session got for each method through
-- sessions/<id>/ctl/ (what reading the file without writing shows): in the
-- database, so every daemon and `orchfs call` on this state see the same.
CREATE TABLE ctl_replies (
  session_id INTEGER NOT NULL,
  method     TEXT    NOT NULL,
  reply      TEXT    NOT NULL,
  updated_at INTEGER NOT NULL,
  PRIMARY KEY (session_id, method)
) WITHOUT ROWID;

-- Decisions on rollups record who made them and why: on the node (the last
-- decision) and in the rollup snapshot, beside the preview that was submitted.
ALTER TABLE graph_nodes ADD COLUMN decided_by_session INTEGER;
ALTER TABLE graph_nodes ADD COLUMN decision_reason TEXT;
ALTER TABLE node_snapshots ADD COLUMN preview_json TEXT;
ALTER TABLE node_snapshots ADD COLUMN decision TEXT;
ALTER TABLE node_snapshots ADD COLUMN decided_by_session INTEGER;
ALTER TABLE node_snapshots ADD COLUMN decision_reason TEXT;
