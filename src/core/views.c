/*
 * The read views the tree shows beyond the method groups' own: which ids a
 * directory holds, a stored reply, the heartbeat file's text, a session's
 * root link.  Every query of the tree lives here, so src/fs runs no SQL.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "orchfs/core.h"

/* A session's root link: its session-root worktree, while the session owns it. */
#define ROOT_LINK_FROM                                                                             \
	"FROM sessions s JOIN worktrees w ON w.id = s.session_root_worktree_id "                      \
	"WHERE s.id = ?1 AND w.owner_session_id = s.id AND w.status <> 'closed'"

/* Per collection: its members in id order ([, name]), one member's existence, a member by name. */
static const struct {
	const char *list;   /* ?1 = now (ms) */
	const char *exists; /* ?1 = id, ?2 = now */
	const char *find;   /* ?1 = name */
} colls[] = {
	[ORCH_COLL_REPLIES] = {"SELECT id, call_id FROM replies WHERE ?1 IS NOT NULL ORDER BY id",
			       "SELECT 1 FROM replies WHERE id = ?1 AND ?2 IS NOT NULL",
			       "SELECT id FROM replies WHERE call_id = ?1"},
	[ORCH_COLL_SESSIONS] = {"SELECT id FROM sessions WHERE ?1 IS NOT NULL ORDER BY id",
				"SELECT 1 FROM sessions WHERE id = ?1 AND ?2 IS NOT NULL", NULL},
	[ORCH_COLL_TASKS] = {"SELECT id FROM tasks WHERE ?1 IS NOT NULL ORDER BY id",
			     "SELECT 1 FROM tasks WHERE id = ?1 AND ?2 IS NOT NULL", NULL},
	[ORCH_COLL_CASES] = {"SELECT id FROM tasks WHERE level = 'case' AND ?1 IS NOT NULL ORDER BY id",
			     "SELECT 1 FROM tasks WHERE id = ?1 AND level = 'case' AND ?2 IS NOT NULL", NULL},
	[ORCH_COLL_WORKTREES] = {"SELECT id FROM worktrees WHERE ?1 IS NOT NULL ORDER BY id",
				 "SELECT 1 FROM worktrees WHERE id = ?1 AND ?2 IS NOT NULL", NULL},
	[ORCH_COLL_LOCKS] = {"SELECT id FROM locks WHERE state = 'active' AND lease_until > ?1 ORDER BY id",
			     "SELECT 1 FROM locks WHERE id = ?1 AND state = 'active' AND lease_until > ?2", NULL},
	[ORCH_COLL_NODES] = {"SELECT id FROM graph_nodes WHERE ?1 IS NOT NULL ORDER BY id",
			     "SELECT 1 FROM graph_nodes WHERE id = ?1 AND ?2 IS NOT NULL", NULL},
	[ORCH_COLL_SESSION_ROOTS] = {"SELECT s.id FROM sessions s JOIN worktrees w ON w.id = s.session_root_worktree_id "
				     "WHERE w.owner_session_id = s.id AND w.status <> 'closed' AND ?1 IS NOT NULL "
				     "ORDER BY s.id",
				     "SELECT 1 " ROOT_LINK_FROM " AND ?2 IS NOT NULL", NULL},
	[ORCH_COLL_MERGE_REQUESTS] = {"SELECT id FROM merge_requests WHERE ?1 IS NOT NULL ORDER BY id",
				      "SELECT 1 FROM merge_requests WHERE id = ?1 AND ?2 IS NOT NULL", NULL},
	[ORCH_COLL_MAIN_ITEMS] = {"SELECT id FROM merge_main_queue WHERE ?1 IS NOT NULL ORDER BY id",
				  "SELECT 1 FROM merge_main_queue WHERE id = ?1 AND ?2 IS NOT NULL", NULL},
	[ORCH_COLL_MIRROR] = {"SELECT id FROM mirror_files WHERE ?1 IS NOT NULL ORDER BY id",
			      "SELECT 1 FROM mirror_files WHERE id = ?1 AND ?2 IS NOT NULL", NULL},
};

bool orch_coll_has(orch_ctx *ctx, orch_coll c, int64_t id)
{
	int64_t one = 0;

	return orch_sql_int(ctx, &one, NULL, colls[c].exists, "ii", id, ctx->now) == 0 && one == 1;
}

int orch_coll_list(orch_ctx *ctx, orch_coll c, void (*each)(void *arg, int64_t id, const char *name), void *arg)
{
	orch_stmt *st = orch_sql(ctx, colls[c].list, "i", ctx->now);
	int rc;

	if (!st)
		return ORCH_EINTERNAL;
	while ((rc = orch_sql_step(ctx, st)) == ORCH_ROW)
		each(arg, orch_stmt_column_int64(st, 0),
		     orch_stmt_column_count(st) > 1 ? (const char *)orch_stmt_column_text(st, 1) : NULL);
	orch_stmt_reset(st);
	return rc == ORCH_DONE ? 0 : ORCH_EINTERNAL;
}

bool orch_coll_named(orch_coll c)
{
	return colls[c].find != NULL;
}

int64_t orch_coll_find(orch_ctx *ctx, orch_coll c, const char *name)
{
	int64_t id = 0;

	if (!colls[c].find || orch_sql_int(ctx, &id, NULL, colls[c].find, "s", name) != 0)
		return 0;
	return id;
}

/* The text of the first column of `sql`'s row for `id` (caller frees); not_found as `nf_fmt` says. */
static int one_text(orch_ctx *ctx, char **out, const char *nf_fmt, int64_t id, const char *sql)
{
	orch_stmt *st = orch_sql(ctx, sql, "i", id);
	int rc;

	*out = NULL;
	if (!st)
		return ORCH_EINTERNAL;
	rc = orch_sql_step(ctx, st);
	if (rc == ORCH_ROW)
		*out = strdup((const char *)orch_stmt_column_text(st, 0));
	orch_stmt_reset(st);
	if (rc == ORCH_DONE)
		return orch_error_set(ORCH_ENOTFOUND, nf_fmt, (long long)id);
	return *out ? 0 : ORCH_EINTERNAL;
}

int orch_reply_json(orch_ctx *ctx, int64_t id, json_t **out)
{
	char *text;
	int rc = one_text(ctx, &text, "reply %lld not found", id, "SELECT reply FROM replies WHERE id = ?");

	*out = NULL;
	if (rc)
		return rc;
	*out = json_loads(text, 0, NULL);
	free(text);
	return *out ? 0 : orch_error_set(ORCH_EINTERNAL, "stored reply %lld is not JSON", (long long)id);
}

int orch_heartbeat_text(orch_ctx *ctx, int64_t id, char **buf)
{
	json_t *s;
	int64_t by = 0;
	char note[64] = "";
	int rc = orch_session_json(ctx, id, &s);

	*buf = NULL;
	if (rc)
		return rc;
	/* The last heartbeat, and why there will be no more when that is so. */
	const char *status = json_string_value(json_object_get(s, "status"));
	if (strcmp(status, "closed") == 0) {
		snprintf(note, sizeof(note), " (closed)");
	} else if (strcmp(status, "handoff_attached") == 0) {
		if ((rc = orch_sql_int(ctx, &by, NULL, "SELECT to_session_id FROM session_handoffs WHERE "
				       "from_session_id = ?", "i", id)) != 0)
			goto done;
		snprintf(note, sizeof(note), " (taken over by session %lld)", (long long)by);
	}
	if (asprintf(buf, "%s%s\n", json_string_value(json_object_get(s, "last_seen_at")), note) < 0) {
		*buf = NULL;
		rc = orch_error_set(ORCH_EINTERNAL, "out of memory");
	}
done:
	json_decref(s);
	return rc;
}

int orch_session_root_path(orch_ctx *ctx, int64_t id, char **path)
{
	return one_text(ctx, path, "session %lld has no root worktree", id, "SELECT w.path " ROOT_LINK_FROM);
}

int orch_ctx_read_begin(orch_ctx *ctx)
{
	ctx->now = orch_now_ms();
	return orch_store_begin(ctx->store, false);
}

void orch_ctx_read_end(orch_ctx *ctx)
{
	orch_store_rollback(ctx->store);
}
