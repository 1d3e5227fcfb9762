-- Placeholder on branch agent only: keeps the migrations numbered without gaps
-- until the branch that owns 004_mirror.sql lands (take that branch's file at merge).
SELECT 1;
