/*
 * The change feed (the `events` table): one row per successful mutating
 * call, written by the call itself inside its transaction (its savepoint
 * in a group commit), so a call that rolls back leaves no event and every
 * db_version a call bumped to has exactly one row.  The newest EVENTS_KEPT
 * rows are kept; each call deletes what falls out of that window, which
 * is one row in the steady state.
 *
 * ids: the rows the call changed, from the store's update hook, as
 * {"<table>": [rowid, ...]} with bookkeeping tables left out (mirror_meta,
 * events, replies, session_alive); {"*": true} when the call changed more
 * rows than the store tracks.  A task is under "tasks", a lock under
 * "locks", a planning-graph node under "graph_nodes", and so on.
 *
 * session_id: the session the call acted as (sessions/<id>/ctl/), else the
 * one its params name (session_id, requester_session_id, owner_session),
 * else the one session row it changed (session.open's); absent if none.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "orchfs/core.h"

static bool bookkeeping(const char *table)
{
	static const char *const skip[] = {"mirror_meta", "events", "replies", "session_alive"};

	for (size_t i = 0; i < sizeof(skip) / sizeof(skip[0]); i++)
		if (strcmp(table, skip[i]) == 0)
			return true;
	return false;
}

static int change_cmp(const void *a, const void *b)
{
	const orch_change *x = a, *y = b;
	int c = strcmp(x->table, y->table);

	return c ? c : (x->rowid > y->rowid) - (x->rowid < y->rowid);
}

/* {"table": [ids in order], ...} of the rows in changes[0, n). */
static json_t *ids_of(const orch_change *changes, size_t n)
{
	json_t *ids = json_object();
	orch_change *sorted;
	size_t m = 0;

	if (n == 1 && strcmp(changes[0].table, "*") == 0) {
		json_object_set_new(ids, "*", json_true());
		return ids;
	}
	sorted = orch_xrealloc(NULL, (n ? n : 1) * sizeof(*sorted));
	for (size_t i = 0; i < n; i++) {
		if (strcmp(changes[i].table, "*") == 0) {
			json_object_set_new(ids, "*", json_true());
			continue;
		}
		if (!bookkeeping(changes[i].table))
			sorted[m++] = changes[i];
	}
	qsort(sorted, m, sizeof(*sorted), change_cmp);
	for (size_t i = 0; i < m; i++) {
		if (i && sorted[i].rowid == sorted[i - 1].rowid && strcmp(sorted[i].table, sorted[i - 1].table) == 0)
			continue;
		json_t *a = json_object_get(ids, sorted[i].table);
		if (!a)
			json_object_set_new(ids, sorted[i].table, a = json_array());
		json_array_append_new(a, json_integer(sorted[i].rowid));
	}
	free(sorted);
	return ids;
}

int orch_event_record(orch_ctx *ctx, const char *method, int64_t session_id, size_t mark)
{
	size_t n;
	const orch_change *changes = orch_store_changes_since(ctx->store, mark, &n);
	json_t *ids = ids_of(changes, n);
	json_t *sessions = json_object_get(ids, "sessions");
	int rc;

	/* No session named by the call: the one session row it changed (session.open's new one). */
	if (session_id <= 0 && json_array_size(sessions) == 1)
		session_id = json_integer_value(json_array_get(sessions, 0));

	/* db_version was bumped by this call just before: the row takes that value. */
	rc = orch_sql_exec(ctx, "INSERT INTO events (db_version, method, session_id, ids_json, at) "
			   "SELECT db_version, ?, ?, ?, ? FROM mirror_meta WHERE id = 1", "sIji", method, session_id,
			   ids, ctx->now);
	json_decref(ids);
	if (rc)
		return rc;
	/* The oldest go in steps (a statement saved per call: a round trip to a dqlite leader). */
	if (orch_store_last_id(ctx->store) % ORCH_EVENTS_PRUNE_STEP != 0)
		return 0;
	return orch_sql_exec(ctx, "DELETE FROM events WHERE db_version <= (SELECT db_version FROM mirror_meta "
			     "WHERE id = 1) - ?", "i", (int64_t)ORCH_EVENTS_KEPT);
}

int orch_events_bounds(orch_store *st, int64_t *from, int64_t *last)
{
	orch_stmt *s = orch_store_stmt(st, "SELECT (SELECT db_version FROM mirror_meta WHERE id = 1), "
					  "(SELECT min(db_version) FROM events)");
	int rc;

	if (!s)
		return orch_store_error(st, "");
	rc = orch_stmt_step(s);
	if (rc == ORCH_ROW) {
		*last = orch_stmt_column_int64(s, 0);
		/* No event kept (a new database, or one from before events): history starts now. */
		*from = orch_stmt_column_type(s, 1) == ORCH_NULL ? *last : orch_stmt_column_int64(s, 1) - 1;
	}
	orch_stmt_reset(s);
	return rc == ORCH_ROW ? 0
				: orch_store_error(st, "");
}

int orch_events_after(orch_store *st, int64_t after, size_t max, orch_event_line **out, size_t *n)
{
	orch_stmt *s = orch_store_stmt(st, "SELECT db_version, method, session_id, ids_json, at FROM events "
					  "WHERE db_version > ? ORDER BY db_version LIMIT ?");
	int rc;

	*out = NULL;
	*n = 0;
	if (!s)
		return orch_store_error(st, "");
	orch_stmt_bind_int64(s, 1, after);
	orch_stmt_bind_int64(s, 2, (int64_t)max);
	*out = orch_xrealloc(NULL, (max ? max : 1) * sizeof(**out));
	while ((rc = orch_stmt_step(s)) == ORCH_ROW) {
		char at[32], *line = NULL;
		json_t *method = json_string((const char *)orch_stmt_column_text(s, 1));
		char *m = json_dumps(method, JSON_ENCODE_ANY);
		char sid[32] = "";

		orch_time_format(orch_stmt_column_int64(s, 4), at);
		if (orch_stmt_column_type(s, 2) != ORCH_NULL)
			snprintf(sid, sizeof(sid), ",\"session_id\":%lld", (long long)orch_stmt_column_int64(s, 2));
		int len = asprintf(&line, "{\"db_version\":%lld,\"method\":%s%s,\"ids\":%s,\"at\":\"%s\"}\n",
				   (long long)orch_stmt_column_int64(s, 0), m, sid, (const char *)orch_stmt_column_text(s, 3),
				   at);
		free(m);
		json_decref(method);
		if (len < 0)
			abort();
		(*out)[*n].db_version = orch_stmt_column_int64(s, 0);
		(*out)[*n].line = line;
		(*out)[*n].len = (size_t)len;
		(*n)++;
	}
	orch_stmt_reset(s);
	if (rc != ORCH_DONE) {
		orch_event_lines_free(*out, *n);
		*out = NULL;
		*n = 0;
		return orch_store_error(st, "");
	}
	return 0;
}

void orch_event_lines_free(orch_event_line *lines, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(lines[i].line);
	free(lines);
}

/* Past this many rows, invalidating everything is cheaper than looking at each. */
#define CHANGES_LOOKED_AT 4096

int orch_events_changes(orch_store *st, int64_t after, int64_t upto, orch_change **out, size_t *n, bool *complete)
{
	orch_stmt *s = orch_store_stmt(st, "SELECT db_version, ids_json FROM events "
					  "WHERE db_version > ? AND db_version <= ? ORDER BY db_version");
	int64_t expect = after + 1;
	size_t cap = 0;
	int rc = ORCH_DONE;

	*out = NULL;
	*n = 0;
	*complete = upto - after <= CHANGES_LOOKED_AT;
	if (!*complete)
		return 0;
	if (!s)
		return orch_store_error(st, "");
	orch_stmt_bind_int64(s, 1, after);
	orch_stmt_bind_int64(s, 2, upto);
	while (*complete && (rc = orch_stmt_step(s)) == ORCH_ROW) {
		json_t *ids = json_loads(orch_stmt_column_text(s, 1), 0, NULL), *rows;
		const char *table;

		if (orch_stmt_column_int64(s, 0) != expect++ || !json_is_object(ids) || json_object_get(ids, "*"))
			*complete = false;
		json_object_foreach(ids, table, rows) {
			size_t i;
			json_t *id;
			const char *name = orch_store_intern(table);
			json_array_foreach(rows, i, id) {
				if (*n == CHANGES_LOOKED_AT || strcmp(name, "*") == 0) {
					*complete = false;
					break;
				}
				if (*n == cap)
					*out = orch_xrealloc(*out, (cap = cap ? 2 * cap : 64) * sizeof(**out));
				(*out)[(*n)++] = (orch_change){name, json_integer_value(id)};
			}
		}
		json_decref(ids);
	}
	if (*complete && rc != ORCH_DONE) {
		orch_stmt_reset(s);
		free(*out);
		*out = NULL;
		*n = 0;
		return orch_store_error(st, "");
	}
	orch_stmt_reset(s);
	if (expect != upto + 1)
		*complete = false;
	return 0;
}
