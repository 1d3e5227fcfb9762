-- orchfs 002: lock.acquire looks up the active locks that can overlap a
-- scope (the same path, its ancestors, the paths below it) instead of
-- scanning every active lock.
CREATE INDEX locks_active_by_path ON locks (scope_path) WHERE state = 'active';
