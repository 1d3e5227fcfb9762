-- orchfs 003: the merge pipeline.
-- A worktree merged into its parent keeps the merge commit that took it in.
ALTER TABLE worktrees ADD COLUMN merge_commit TEXT;
-- merge.review_context lists the merge requests of a feature.
CREATE INDEX merge_requests_by_feature ON merge_requests (feature_task_id, id);
-- merge.review_context finds the worktrees of a feature and its descendants.
CREATE INDEX worktrees_by_task ON worktrees (task_id);
