-- orchfs initial schema.
-- Timestamps are integer milliseconds since the Unix epoch (UTC): they compare
-- as numbers, never as text.  JSON-valued columns hold JSON text and are
-- emitted as JSON values, never as strings.

CREATE TABLE mirror_meta (
  id          INTEGER PRIMARY KEY CHECK (id = 1),
  db_version  INTEGER NOT NULL DEFAULT 0,
  md_version  INTEGER NOT NULL DEFAULT 0,
  md_path     TEXT    NOT NULL DEFAULT '',
  updated_at  INTEGER NOT NULL
);
INSERT INTO mirror_meta (id, updated_at) VALUES (1, CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER));

CREATE TABLE sessions (
  id                        INTEGER PRIMARY KEY AUTOINCREMENT,
  agent_role                TEXT    NOT NULL,
  owner                     TEXT    NOT NULL,
  repo_path                 TEXT,
  terminal_fingerprint      TEXT,
  intent                    TEXT,
  main_worktree_id          INTEGER,
  session_root_worktree_id  INTEGER,
  heartbeat_timeout_seconds INTEGER,
  started_at                INTEGER NOT NULL,
  last_seen_at              INTEGER NOT NULL,
  status                    TEXT    NOT NULL
);
CREATE INDEX sessions_by_status ON sessions (status, last_seen_at);

CREATE TABLE tasks (
  id               INTEGER PRIMARY KEY AUTOINCREMENT,
  level            TEXT    NOT NULL,
  parent_id        INTEGER REFERENCES tasks (id),
  title            TEXT    NOT NULL,
  status           TEXT    NOT NULL DEFAULT 'todo',
  priority         INTEGER NOT NULL DEFAULT 0,
  assignee_session TEXT,
  input_contract   TEXT,
  fixtures         TEXT,
  next_action      TEXT,
  created_at       INTEGER NOT NULL,
  updated_at       INTEGER NOT NULL
);
CREATE INDEX tasks_by_parent ON tasks (parent_id);
CREATE INDEX tasks_by_level_status ON tasks (level, status, priority DESC, updated_at);

CREATE TABLE steps (
  id            INTEGER PRIMARY KEY AUTOINCREMENT,
  task_id       INTEGER NOT NULL REFERENCES tasks (id),
  title         TEXT    NOT NULL,
  status        TEXT    NOT NULL,
  evidence_json TEXT    NOT NULL,
  order_no      INTEGER NOT NULL,
  created_at    INTEGER NOT NULL,
  UNIQUE (task_id, order_no)
);

CREATE TABLE checkpoints (
  id            INTEGER PRIMARY KEY AUTOINCREMENT,
  task_id       INTEGER NOT NULL REFERENCES tasks (id),
  step_title    TEXT    NOT NULL,
  snapshot_json TEXT    NOT NULL,
  created_at    INTEGER NOT NULL
);
CREATE INDEX checkpoints_by_task ON checkpoints (task_id, id);

CREATE TABLE locks (
  id            INTEGER PRIMARY KEY AUTOINCREMENT,
  scope_type    TEXT    NOT NULL,
  scope_path    TEXT    NOT NULL,
  owner_session TEXT    NOT NULL,
  lease_until   INTEGER NOT NULL,
  heartbeat_at  INTEGER NOT NULL,
  state         TEXT    NOT NULL
);
CREATE INDEX locks_by_state ON locks (state, lease_until);

CREATE TABLE worktrees (
  id                 INTEGER PRIMARY KEY AUTOINCREMENT,
  task_id            INTEGER NOT NULL DEFAULT 0,
  path               TEXT    NOT NULL,
  branch             TEXT    NOT NULL,
  status             TEXT    NOT NULL,
  kind               TEXT,
  parent_worktree_id INTEGER REFERENCES worktrees (id),
  owner_session_id   INTEGER,
  merge_state        TEXT,
  created_at         INTEGER NOT NULL,
  merged_at          INTEGER
);
CREATE INDEX worktrees_by_parent ON worktrees (parent_worktree_id);
CREATE INDEX worktrees_by_kind ON worktrees (kind, path);

CREATE TABLE merge_requests (
  id               INTEGER PRIMARY KEY AUTOINCREMENT,
  feature_task_id  INTEGER NOT NULL REFERENCES tasks (id),
  status           TEXT    NOT NULL,
  reviewer_session TEXT,
  notes_json       TEXT,
  created_at       INTEGER NOT NULL,
  updated_at       INTEGER NOT NULL
);

CREATE TABLE current_refs (
  id                  INTEGER PRIMARY KEY AUTOINCREMENT,
  session_id          INTEGER NOT NULL REFERENCES sessions (id),
  node_type           TEXT    NOT NULL,
  node_id             INTEGER NOT NULL,
  checkpoint_id       INTEGER,
  mode                TEXT    NOT NULL,
  status              TEXT    NOT NULL,
  next_action         TEXT,
  summary             TEXT,
  required_files_json TEXT,
  acked_at            INTEGER,
  version             INTEGER NOT NULL DEFAULT 1,
  created_at          INTEGER NOT NULL,
  updated_at          INTEGER NOT NULL
);
-- At most one active ref per session; the fallback hand-out relies on it.
CREATE UNIQUE INDEX current_refs_one_active ON current_refs (session_id) WHERE status = 'active';
CREATE INDEX current_refs_by_node ON current_refs (node_type, node_id, status);

CREATE TABLE graph_nodes (
  id                  INTEGER PRIMARY KEY AUTOINCREMENT,
  node_type           TEXT    NOT NULL,
  facet               TEXT    NOT NULL,
  title               TEXT    NOT NULL,
  status              TEXT    NOT NULL,
  priority            INTEGER NOT NULL DEFAULT 0,
  parent_id           INTEGER REFERENCES graph_nodes (id),
  worktree_id         INTEGER,
  owner_session_id    INTEGER,
  summary             TEXT,
  risk_level          INTEGER,
  token_estimate      INTEGER,
  affected_files_json TEXT,
  approval_state      TEXT    NOT NULL DEFAULT 'none',
  created_at          INTEGER NOT NULL,
  updated_at          INTEGER NOT NULL
);
CREATE INDEX graph_nodes_by_parent ON graph_nodes (parent_id);

CREATE TABLE graph_edges (
  id           INTEGER PRIMARY KEY AUTOINCREMENT,
  from_node_id INTEGER NOT NULL REFERENCES graph_nodes (id),
  to_node_id   INTEGER NOT NULL REFERENCES graph_nodes (id),
  edge_type    TEXT    NOT NULL,
  created_at   INTEGER NOT NULL,
  UNIQUE (from_node_id, to_node_id, edge_type)
);
CREATE INDEX graph_edges_by_to ON graph_edges (to_node_id);

CREATE TABLE node_checklists (
  id         INTEGER PRIMARY KEY AUTOINCREMENT,
  node_id    INTEGER NOT NULL REFERENCES graph_nodes (id),
  item_text  TEXT    NOT NULL,
  status     TEXT    NOT NULL,
  order_no   INTEGER NOT NULL,
  facet      TEXT    NOT NULL,
  created_at INTEGER NOT NULL,
  updated_at INTEGER NOT NULL,
  UNIQUE (node_id, order_no, facet)
);

CREATE TABLE node_snapshots (
  id                  INTEGER PRIMARY KEY AUTOINCREMENT,
  node_id             INTEGER NOT NULL REFERENCES graph_nodes (id),
  snapshot_type       TEXT    NOT NULL,
  summary             TEXT,
  affected_files_json TEXT,
  next_action         TEXT,
  created_at          INTEGER NOT NULL
);
CREATE INDEX node_snapshots_by_node ON node_snapshots (node_id, id);

CREATE TABLE planning_rules (
  id                   INTEGER PRIMARY KEY CHECK (id = 1),
  max_token_per_slice  INTEGER NOT NULL,
  max_files_per_slice  INTEGER NOT NULL,
  replan_triggers_json TEXT    NOT NULL,
  approval_policy      TEXT    NOT NULL,
  updated_at           INTEGER NOT NULL
);
INSERT INTO planning_rules VALUES (1, 18000, 12, '["context_overflow","scope_change","blocked"]',
  'merge-agent-required', CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER));

CREATE TABLE session_handoffs (
  id              INTEGER PRIMARY KEY AUTOINCREMENT,
  from_session_id INTEGER NOT NULL REFERENCES sessions (id),
  to_session_id   INTEGER NOT NULL REFERENCES sessions (id),
  state           TEXT    NOT NULL,
  created_at      INTEGER NOT NULL,
  completed_at    INTEGER
);
CREATE UNIQUE INDEX session_handoffs_one_per_target ON session_handoffs (from_session_id);

CREATE TABLE merge_main_queue (
  id               INTEGER PRIMARY KEY AUTOINCREMENT,
  session_id       INTEGER NOT NULL REFERENCES sessions (id),
  from_worktree_id INTEGER NOT NULL REFERENCES worktrees (id),
  target_branch    TEXT    NOT NULL,
  state            TEXT    NOT NULL,
  merged_commit    TEXT,
  started_at       INTEGER,
  completed_at     INTEGER,
  error_message    TEXT,
  created_at       INTEGER NOT NULL,
  updated_at       INTEGER NOT NULL
);
CREATE UNIQUE INDEX merge_main_queue_one_queued ON merge_main_queue (from_worktree_id) WHERE state = 'queued';
CREATE INDEX merge_main_queue_by_state ON merge_main_queue (state, id);

CREATE TABLE merge_main_lock (
  id                INTEGER PRIMARY KEY CHECK (id = 1),
  holder_session_id INTEGER,
  lease_until       INTEGER,
  state             TEXT    NOT NULL,
  updated_at        INTEGER NOT NULL
);
INSERT INTO merge_main_lock (id, state, updated_at)
  VALUES (1, 'unlocked', CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER));

-- Replies of requests that carried a call_id (idempotency and replies/).
CREATE TABLE replies (
  id         INTEGER PRIMARY KEY AUTOINCREMENT,
  call_id    TEXT    NOT NULL UNIQUE,
  method     TEXT    NOT NULL,
  params     TEXT    NOT NULL,
  reply      TEXT    NOT NULL,
  created_at INTEGER NOT NULL
);
