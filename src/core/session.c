/*
 * Sessions: open (with its session-root worktree), heartbeat, close,
 * context, and the resume candidate list.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "orchfs/core.h"
#include "groups.h"
#include "orchfs/git.h"
#include "gitfx.h"

#define SESSION_COLS                                                                               \
	"SELECT id, agent_role, owner, repo_path, terminal_fingerprint, intent, main_worktree_id, "  \
	"session_root_worktree_id, heartbeat_timeout_seconds, ctl_errors, started_at, last_seen_at, status "  \
	"FROM sessions WHERE id = ?"

#define WORKTREE_COLS                                                                              \
	"SELECT id, nullif(task_id, 0) AS task_id, path, branch, status, kind, parent_worktree_id, owner_session_id, "     \
	"merge_state, merge_commit, created_at, merged_at, nullif(host, '') AS host FROM worktrees WHERE id = ?"

int orch_session_json(orch_ctx *ctx, int64_t id, json_t **out)
{
	return orch_sql_row(ctx, out, "session %lld not found", id, SESSION_COLS, "i", id);
}

/*
 * The one definition of liveness.  A session is live when it may still act
 * (not closed, not taken over) and was heard from within its heartbeat
 * window: the heartbeat_timeout_seconds it gave session.open (default
 * ORCH_HEARTBEAT_WINDOW), lengthened to `min_window_s` when a requester asks
 * for longer -- never shortened.  Reads are no sign of life: only writes
 * (a heartbeat, a mutating call through sessions/<id>/ctl/) move
 * last_seen_at.  An open sessions/<id>/alive (ORCH_SQL_ALIVE_HELD) keeps it
 * live without heartbeats; its last close (ORCH_SQL_ALIVE_DROPPED) ends
 * that at once.  Resume candidates, attach, forced lock release and
 * session.json's `stale` all ask here, so a new sign of life (a held-open
 * handle) is added in this one place -- and in LIVE_SQL of mirror.c, its
 * SQL form for streamed listings.  *open (may be NULL) says whether the
 * session may still act; *age_ms (may be NULL) is the heartbeat's age.
 */
int orch_session_live(orch_ctx *ctx, int64_t id, int64_t min_window_s, bool *live, bool *open, int64_t *age_ms)
{
	orch_stmt *st = orch_sql(ctx, "SELECT status, last_seen_at, heartbeat_timeout_seconds, "
				    ORCH_SQL_ALIVE_HELD("s") ", " ORCH_SQL_ALIVE_DROPPED("s") " FROM sessions s "
				    "WHERE id = ?", "i", id);
	int rc;

	if (!st)
		return ORCH_EINTERNAL;
	rc = orch_sql_step(ctx, st);
	if (rc != ORCH_ROW) {
		orch_stmt_reset(st);
		return rc == ORCH_DONE ? orch_error_set(ORCH_ENOTFOUND, "session %lld not found", (long long)id)
					 : ORCH_EINTERNAL;
	}
	const char *status = (const char *)orch_stmt_column_text(st, 0);
	bool acting = strcmp(status, "closed") != 0 && strcmp(status, "handoff_attached") != 0;
	int64_t age = ctx->now - orch_stmt_column_int64(st, 1);
	int64_t window = orch_stmt_column_int64(st, 2);
	bool held = orch_stmt_column_int(st, 3), dropped = orch_stmt_column_int(st, 4);

	orch_stmt_reset(st);
	if (window <= 0)
		window = ORCH_HEARTBEAT_WINDOW;
	if (min_window_s > window)
		window = min_window_s;
	/* A held sessions/<id>/alive decides alone; a dropped one makes it a candidate at once. */
	*live = acting && (held || (!dropped && age <= window * 1000));
	if (open)
		*open = acting;
	if (age_ms)
		*age_ms = age;
	return 0;
}

bool orch_session_ctl_errors_reply(orch_ctx *ctx, int64_t id)
{
	orch_stmt *st = orch_sql(ctx, "SELECT ctl_errors = 'reply' FROM sessions WHERE id = ?", "i", id);
	bool reply = false;

	if (!st) {
		orch_error_clear();
		return false;
	}
	if (orch_stmt_step(st) == ORCH_ROW)
		reply = orch_stmt_column_int(st, 0) != 0;
	orch_stmt_reset(st);
	return reply;
}

char *orch_owner_words(orch_ctx *ctx, const char *owner)
{
	char *end, *out = NULL;
	long long id = strtoll(owner, &end, 10);

	if (*owner >= '1' && *owner <= '9' && *end == '\0' && id > 0) {
		orch_stmt *st = orch_sql(ctx, "SELECT agent_role, owner FROM sessions WHERE id = ?", "i",
					    (int64_t)id);
		if (st && orch_stmt_step(st) == ORCH_ROW &&
		    asprintf(&out, "session %lld (%s, %s)", id, (const char *)orch_stmt_column_text(st, 0),
			     (const char *)orch_stmt_column_text(st, 1)) < 0)
			out = NULL;
		if (st)
			orch_stmt_reset(st);
	}
	if (!out && asprintf(&out, "owner \"%s\"", owner) < 0)
		out = strdup("?");
	return out;
}

/* sessions/<id>/session.json: the session with its heartbeat's age and whether it is stale (time-dependent). */
int orch_session_file_json(orch_ctx *ctx, int64_t id, json_t **out)
{
	bool live, open;
	int64_t age;
	int rc = orch_session_json(ctx, id, out);

	if (rc)
		return rc;
	if ((rc = orch_session_live(ctx, id, 0, &live, &open, &age)) != 0) {
		json_decref(*out);
		*out = NULL;
		return rc;
	}
	/* Whether a live process holds sessions/<id>/alive open now (then its heartbeats do not matter). */
	int64_t held = 0;
	if ((rc = orch_sql_int(ctx, &held, NULL, "SELECT " ORCH_SQL_ALIVE_HELD("s") " FROM sessions s WHERE s.id = ?",
			       "i", id)) != 0) {
		json_decref(*out);
		*out = NULL;
		return rc;
	}
	json_object_set_new(*out, "heartbeat_age_seconds", json_integer(age / 1000));
	json_object_set_new(*out, "alive_held", json_boolean(held));
	json_object_set_new(*out, "stale", json_boolean(open && !live));
	return 0;
}

int orch_worktree_json(orch_ctx *ctx, int64_t id, json_t **out)
{
	return orch_sql_row(ctx, out, "worktree %lld not found", id, WORKTREE_COLS, "i", id);
}

/* {session, main_worktree?, session_root_worktree?, current_ref?} */
int orch_session_context(orch_ctx *ctx, int64_t id, json_t **out)
{
	json_t *session, *wt, *ref;
	int rc;

	*out = NULL;
	if ((rc = orch_session_json(ctx, id, &session)) != 0)
		return rc;
	*out = json_object();
	json_object_set_new(*out, "session", session);
	static const char *const keys[][2] = {{"main_worktree_id", "main_worktree"},
					      {"session_root_worktree_id", "session_root_worktree"}};
	for (size_t i = 0; i < 2; i++) {
		json_t *wid = json_object_get(session, keys[i][0]);
		if (!wid)
			continue;
		rc = orch_worktree_json(ctx, json_integer_value(wid), &wt);
		if (rc == ORCH_ENOTFOUND)
			continue;
		if (rc)
			goto fail;
		json_object_set_new(*out, keys[i][1], wt);
	}
	if ((rc = orch_current_ref_json(ctx, id, &ref)) != 0)
		goto fail;
	if (json_is_null(ref))
		json_decref(ref);
	else
		json_object_set_new(*out, "current_ref", ref);
	return 0;
fail:
	json_decref(*out);
	*out = NULL;
	return rc;
}

/*
 * The session's status, when it may still act: a closed session may not,
 * nor one another session took over (handoff_attached): an agent that comes
 * back after being replaced must learn it at once, not work on beside its
 * successor.  `allow_taken_over` lets session.close tidy such a session.
 */
static int require_active(orch_ctx *ctx, int64_t id, bool allow_taken_over)
{
	json_t *s;
	int rc = orch_session_json(ctx, id, &s);
	const char *status;

	if (rc)
		return rc;
	status = json_string_value(json_object_get(s, "status"));
	if (strcmp(status, "closed") == 0) {
		rc = orch_error_set(ORCH_EINVALID_STATE, "session %lld is closed", (long long)id);
	} else if (strcmp(status, "handoff_attached") == 0 && !allow_taken_over) {
		int64_t by = 0;
		orch_sql_int(ctx, &by, NULL, "SELECT to_session_id FROM session_handoffs WHERE from_session_id = ?",
			     "i", id);
		rc = orch_error_set(ORCH_EINVALID_STATE, "session %lld was taken over by session %lld "
				    "(handoff_attached); open a new session", (long long)id, (long long)by);
	}
	if (rc)
		orch_error_detail("state", json_string(status));
	json_decref(s);
	return rc;
}

int orch_session_require_open(orch_ctx *ctx, int64_t id)
{
	return require_active(ctx, id, false);
}

/*
 * The main worktree record for this repository on this host (each machine
 * has its own checkout), created on first use and its branch refreshed to
 * the current HEAD on every open (the reference captured it once and never
 * again).
 */
static int main_worktree(orch_ctx *ctx, int64_t *out)
{
	char *branch = NULL;
	bool found;
	int rc;

	if ((rc = orch_git_head_branch(ctx->git, &branch)) != 0)
		return rc;
	rc = orch_sql_int(ctx, out, &found, "SELECT id FROM worktrees WHERE kind = 'main' AND host = ? AND path = ?",
			  "ss", ctx->host, ctx->repo_path);
	if (rc)
		goto done;
	if (found) {
		rc = orch_sql_exec(ctx, "UPDATE worktrees SET branch = ? WHERE id = ? AND branch <> ?", "sis",
				   branch, *out, branch);
	} else {
		rc = orch_sql_exec(ctx, "INSERT INTO worktrees (task_id, path, branch, status, kind, merge_state, "
				   "created_at, host) VALUES (0, ?, ?, 'active', 'main', 'attached', ?, ?)", "ssis",
				   ctx->repo_path, branch, ctx->now, ctx->host);
		*out = orch_last_id(ctx);
	}
done:
	free(branch);
	return rc;
}

/* Create branch session/<id> and its checkout under <state>/worktrees/session-<id>. */
static int session_root(orch_ctx *ctx, int64_t sid, int64_t main_id, int64_t *out)
{
	char branch[64], *path = NULL, *name = NULL;
	orch_git_effect *fx;
	int rc;

	snprintf(branch, sizeof(branch), "session/%lld", (long long)sid);
	if (asprintf(&path, "%s/worktrees/session-%lld", ctx->state_dir, (long long)sid) < 0)
		return orch_error_set(ORCH_EINTERNAL, "out of memory");
	name = orch_git_worktree_name(path);
	int64_t known;
	bool found;
	if ((rc = orch_sql_int(ctx, &known, &found, "SELECT id FROM worktrees WHERE path = ?", "s", path)) != 0)
		goto done;
	/* Left by an open that was killed before its commit: ids are reused, the checkout is not. */
	if (!found && orch_git_worktree_reclaim(ctx->git, path, branch, "HEAD", true))
		orch_log("took back what an interrupted session.open left at %s (branch %s)", path, branch);
	if ((rc = orch_git_worktree_add(ctx->git, name, path, branch, "HEAD", &fx)) != 0)
		goto done;
	orch_txn_git(ctx, fx);
	rc = orch_sql_exec(ctx, "INSERT INTO worktrees (task_id, path, branch, status, kind, parent_worktree_id, "
			   "owner_session_id, merge_state, created_at, host) VALUES (0, ?, ?, 'active', 'session_root', "
			   "?, ?, 'active', ?, ?)", "ssiiis", path, branch, main_id, sid, ctx->now, ctx->host);
	*out = orch_last_id(ctx);
done:
	free(name);
	free(path);
	return rc;
}


#define TIMEOUT_MAX (365LL * 24 * 3600)

int orch_param_timeout(json_t *p, const char *name, int64_t *out)
{
	*out = orch_param_int(p, name, 0);
	if (*out < 0 || *out > TIMEOUT_MAX)
		return orch_error_set(ORCH_EINVALID_PARAMS, "%s must be between 0 and %lld seconds, got %lld", name,
				      TIMEOUT_MAX, (long long)*out);
	return 0;
}

static int session_open(orch_ctx *ctx, json_t *p, json_t **result)
{
	const char *intent = orch_param_str(p, "intent", "auto");
	const char *ctl_errors = orch_param_str(p, "ctl_errors", "errno");
	int64_t timeout, sid, main_id, root_id = 0;
	json_t *ctxj = NULL, *cands = NULL;
	int rc;

	if (strcmp(intent, "new_work") && strcmp(intent, "resume_work") && strcmp(intent, "auto"))
		return orch_error_set(ORCH_EINVALID_PARAMS,
				      "intent must be one of new_work, resume_work, auto; got \"%s\"", intent);
	if (strcmp(ctl_errors, "errno") && strcmp(ctl_errors, "reply"))
		return orch_error_set(ORCH_EINVALID_PARAMS, "ctl_errors must be errno or reply; got \"%s\"",
				      ctl_errors);
	if ((rc = orch_param_timeout(p, "heartbeat_timeout_seconds", &timeout)) != 0)
		return rc;
	if (timeout == 0)
		timeout = ORCH_HEARTBEAT_WINDOW;
	bool resume = strcmp(intent, "resume_work") == 0;
	bool checkout = orch_param_bool(p, "worktree", true) && !resume;
	const char *fp = orch_param_str(p, "terminal_fingerprint", NULL);
	rc = orch_sql_exec(ctx, "INSERT INTO sessions (agent_role, owner, repo_path, terminal_fingerprint, intent, "
			   "heartbeat_timeout_seconds, ctl_errors, started_at, last_seen_at, status) "
			   "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'opened')", "sssssisii",
			   orch_param_str(p, "agent_role", "codex"), orch_param_str(p, "owner", "unknown"),
			   ctx->repo_path, fp && *fp ? fp : NULL, resume ? "resume_work" : "new_work",
			   timeout, ctl_errors, ctx->now, ctx->now);
	if (rc)
		return rc;
	sid = orch_last_id(ctx);
	if ((rc = main_worktree(ctx, &main_id)) != 0)
		return rc;
	if (checkout && (rc = session_root(ctx, sid, main_id, &root_id)) != 0)
		return rc;
	rc = orch_sql_exec(ctx, "UPDATE sessions SET main_worktree_id = ?, session_root_worktree_id = ?, "
			   "status = ? WHERE id = ?", "iIsi", main_id, root_id,
			   resume ? "awaiting_resume" : "active_new", sid);
	if (rc)
		return rc;
	if ((rc = orch_session_context(ctx, sid, &ctxj)) != 0)
		return rc;
	if (!resume) {
		*result = json_pack("{s:o}", "session_context", ctxj);
		return 0;
	}
	/* The candidates are stale past their own windows (the new session's window is its own). */
	if ((rc = orch_resume_candidates(ctx, sid, 0, &cands)) != 0) {
		json_decref(ctxj);
		return rc;
	}
	*result = json_pack("{s:O, s:O*, s:s, s:o}", "session", json_object_get(ctxj, "session"),
			    "main_worktree", json_object_get(ctxj, "main_worktree"), "action_required",
			    "select_resume_candidate", "resume_candidates", cands);
	json_decref(ctxj);
	return 0;
}

static int session_heartbeat(orch_ctx *ctx, json_t *p, json_t **result)
{
	int64_t id = orch_param_int(p, "session_id", 0);
	int rc = orch_session_require_open(ctx, id);

	if (rc)
		return rc;
	rc = orch_sql_exec(ctx, "UPDATE sessions SET last_seen_at = ?, status = CASE status WHEN 'opened' "
			   "THEN 'active_new' ELSE status END WHERE id = ?", "ii", ctx->now, id);
	return rc ? rc : orch_session_json(ctx, id, result);
}

/* The ids of worktree `id`'s children that are neither merged nor abandoned, as a JSON array. */
static int live_children(orch_ctx *ctx, int64_t id, json_t **out)
{
	return orch_sql_rows(ctx, out, "SELECT id FROM worktrees WHERE parent_worktree_id = ? AND status NOT IN "
			     "('closed', 'abandoned') ORDER BY id", "i", id);
}

/*
 * Whether everything on the session root's branch is in the main
 * worktree's branch, or in a branch a main-merge of this worktree went
 * into: then removing the checkout loses nothing.
 */
static int root_merged(orch_ctx *ctx, json_t *wt, int64_t main_id, bool *merged)
{
	const char *branch = json_string_value(json_object_get(wt, "branch"));
	json_t *main_wt = NULL, *targets = NULL;
	int rc;

	*merged = false;
	if ((rc = orch_worktree_json(ctx, main_id, &main_wt)) != 0 ||
	    (rc = orch_git_branch_contains(ctx->git, json_string_value(json_object_get(main_wt, "branch")), branch,
					   merged)) != 0 ||
	    (rc = orch_sql_rows(ctx, &targets, "SELECT DISTINCT target_branch FROM merge_main_queue WHERE "
				"from_worktree_id = ? AND state = 'merged'", "i",
				json_integer_value(json_object_get(wt, "id")))) != 0)
		goto done;
	for (size_t i = 0; i < json_array_size(targets) && !*merged; i++) {
		const char *t = json_string_value(json_object_get(json_array_get(targets, i), "target_branch"));
		if (orch_git_branch_contains(ctx->git, t, branch, merged) != 0)
			orch_error_clear(); /* a target branch deleted since: not a place the work is */
	}
done:
	json_decref(main_wt);
	json_decref(targets);
	return rc;
}

/*
 * session.close {remove_worktree: true}: remove the checkout of the
 * session root the session owns (the branch stays, the record becomes
 * closed, sessions/<id>/root goes) -- only when nothing would be lost: no
 * child worktree left unmerged, no uncommitted change, and every commit of
 * the branch merged (or none made).  invalid_state naming why otherwise.
 * A session without a checkout has nothing to remove.
 */
static int remove_root(orch_ctx *ctx, int64_t sid)
{
	json_t *wt = NULL, *kids = NULL, *dirty = NULL;
	int64_t root = 0, main_id = 0;
	orch_git_effect *fx = NULL;
	bool found, merged;
	int rc;

	if ((rc = orch_sql_int(ctx, &root, &found, "SELECT w.id FROM sessions s JOIN worktrees w ON w.id = "
			       "s.session_root_worktree_id WHERE s.id = ? AND w.owner_session_id = s.id AND "
			       "w.status IN ('active', 'missing')", "i", sid)) != 0 || !found)
		return rc;
	if ((rc = orch_sql_int(ctx, &main_id, NULL, "SELECT coalesce(main_worktree_id, 0) FROM sessions WHERE "
			       "id = ?", "i", sid)) != 0 ||
	    (rc = orch_worktree_json(ctx, root, &wt)) != 0 || (rc = orch_worktree_local(ctx, wt)) != 0 ||
	    (rc = live_children(ctx, root, &kids)) != 0)
		goto done;
	const char *path = json_string_value(json_object_get(wt, "path"));
	if (json_array_size(kids)) {
		json_t *ids = json_array();
		for (size_t i = 0; i < json_array_size(kids); i++)
			json_array_append(ids, json_object_get(json_array_get(kids, i), "id"));
		char *list = json_dumps(ids, JSON_COMPACT);
		rc = orch_error_set(ORCH_EINVALID_STATE, "remove_worktree: session root worktree %lld has child "
				    "worktrees %s that are neither merged nor abandoned", (long long)root, list);
		free(list);
		orch_error_detail("children", ids);
		goto done;
	}
	bool on_disk = strcmp(json_string_value(json_object_get(wt, "status")), "active") == 0 &&
		       access(path, F_OK) == 0;
	if (on_disk) {
		if ((rc = orch_git_dirty_paths(path, true, &dirty)) != 0)
			goto done;
		if (json_array_size(dirty)) {
			char *list = json_dumps(dirty, JSON_COMPACT);
			rc = orch_error_set(ORCH_EINVALID_STATE, "remove_worktree: session root worktree %lld at %s has "
					    "uncommitted changes: %s; commit (and merge) or discard them", (long long)root,
					    path, list);
			free(list);
			orch_error_details(json_pack("{s:s, s:O}", "state", "dirty", "paths", dirty));
			goto done;
		}
	}
	if ((rc = root_merged(ctx, wt, main_id, &merged)) != 0)
		goto done;
	if (!merged) {
		rc = orch_error_set(ORCH_EINVALID_STATE, "remove_worktree: branch %s of session root worktree %lld "
				    "has commits that are not merged; queue it with merge.main.request (or close "
				    "without remove_worktree)", json_string_value(json_object_get(wt, "branch")),
				    (long long)root);
		orch_error_detail("state", json_string("unmerged"));
		goto done;
	}
	rc = on_disk ? orch_git_worktree_retire(ctx->git, path, &fx) : orch_git_retire_after_commit(ctx->git, path, &fx);
	if (rc)
		goto done;
	orch_txn_git(ctx, fx);
	rc = orch_sql_exec(ctx, "UPDATE worktrees SET status = 'closed', merge_state = 'removed' WHERE id = ?", "i",
			   root);
done:
	json_decref(wt);
	json_decref(kids);
	json_decref(dirty);
	return rc;
}

/*
 * Close a session.  Its leases go with it: file/prefix locks it owns, the
 * main merge lock if it holds it (SPEC 6.7), and its active current ref
 * (status released), so the case it held can be handed to another session.
 */
static int session_close(orch_ctx *ctx, json_t *p, json_t **result)
{
	int64_t id = orch_param_int(p, "session_id", 0);
	char owner[32];
	int rc = require_active(ctx, id, true);

	if (rc)
		return rc;
	if (orch_param_bool(p, "remove_worktree", false) && (rc = remove_root(ctx, id)) != 0)
		return rc;
	snprintf(owner, sizeof(owner), "%lld", (long long)id);
	if ((rc = orch_sql_exec(ctx, "UPDATE sessions SET status = 'closed', last_seen_at = ? WHERE id = ?", "ii",
				ctx->now, id)) ||
	    (rc = orch_sql_exec(ctx, "UPDATE locks SET state = 'released', heartbeat_at = ?1, lease_until = ?1, "
				"released_at = ?1, released_by = ?2, release_reason = 'session.close' "
				"WHERE owner_session = ?2 AND state = 'active'", "is", ctx->now, owner)) ||
	    (rc = orch_sql_exec(ctx, "UPDATE current_refs SET status = 'released', version = version + 1, "
				"updated_at = ? WHERE session_id = ? AND status = 'active'", "ii", ctx->now, id)) ||
	    (rc = orch_sql_exec(ctx, "UPDATE merge_main_lock SET holder_session_id = NULL, lease_until = NULL, "
				"state = 'unlocked', updated_at = ? WHERE holder_session_id = ?", "ii",
				ctx->now, id)))
		return rc;
	return orch_session_json(ctx, id, result);
}

static int session_context(orch_ctx *ctx, json_t *p, json_t **result)
{
	return orch_session_context(ctx, orch_param_int(p, "session_id", 0), result);
}

/*
 * Suspended sessions another agent may take over: same repository, not the
 * requester, in an active status, holding an active current ref, and not
 * live (orch_session_live) with the window lengthened to `timeout_s`.
 * Stalest first.
 */
int orch_resume_candidates(orch_ctx *ctx, int64_t requester, int64_t timeout_s, json_t **out)
{
	orch_stmt *st;
	int rc;

	st = orch_sql(ctx, "SELECT s.id FROM sessions s WHERE s.repo_path = ? AND s.id <> ? "
		      "AND s.status IN ('active_new', 'active_resume', 'handoff_attached') "
		      "AND EXISTS (SELECT 1 FROM current_refs r WHERE r.session_id = s.id AND r.status = 'active') "
		      "ORDER BY s.last_seen_at, s.id", "si", ctx->repo_path, requester);
	if (!st)
		return ORCH_EINTERNAL;
	int64_t *ids = NULL;
	size_t n = 0, cap = 0;
	while ((rc = orch_sql_step(ctx, st)) == ORCH_ROW) {
		if (n == cap) {
			cap = cap ? cap * 2 : 16;
			ids = orch_xrealloc(ids, cap * sizeof(*ids));
		}
		ids[n++] = orch_stmt_column_int64(st, 0);
	}
	orch_stmt_reset(st);
	if (rc != ORCH_DONE) {
		free(ids);
		return ORCH_EINTERNAL;
	}
	rc = 0;
	*out = json_array();
	for (size_t i = 0; i < n; i++) {
		json_t *c;
		bool live;
		if ((rc = orch_session_live(ctx, ids[i], timeout_s, &live, NULL, NULL)) != 0)
			break;
		if (live)
			continue;
		if ((rc = orch_session_context(ctx, ids[i], &c)) != 0)
			break;
		json_object_del(c, "main_worktree");
		json_array_append_new(*out, c);
	}
	if (rc) {
		json_decref(*out);
		*out = NULL;
	}
	free(ids);
	return rc;
}

static int candidates_list(orch_ctx *ctx, json_t *p, json_t **result)
{
	int64_t req = orch_param_int(p, "requester_session_id", 0);
	int64_t timeout;
	json_t *s;
	int rc = orch_param_timeout(p, "heartbeat_timeout_seconds", &timeout);

	if (rc || (rc = orch_session_json(ctx, req, &s)) != 0)
		return rc;
	json_decref(s);
	return orch_resume_candidates(ctx, req, timeout, result);
}

/* This daemon as session_alive names it: pid and start time. */
static void daemon_id(int64_t *pid, int64_t *start)
{
	*pid = getpid();
	*start = orch_process_start(getpid());
}

/*
 * sessions/<id>/alive was opened in this daemon (its first holder here):
 * the session is held alive, in the database, so that every daemon and
 * `orchfs call` agree.  A closed or taken-over session refuses.
 */
static int alive_hold(orch_ctx *ctx, json_t *p, json_t **result)
{
	int64_t id = orch_param_int(p, "session_id", 0), pid, start;
	int rc = orch_session_require_open(ctx, id);

	if (rc)
		return rc;
	daemon_id(&pid, &start);
	if ((rc = orch_sql_exec(ctx, "INSERT OR IGNORE INTO session_alive (session_id, daemon_pid, daemon_start, since, "
				"host, seen_at) VALUES (?1, ?2, ?3, ?4, ?5, ?4)", "iiiis", id, pid, start, ctx->now,
				orch_store_host())) ||
	    (rc = orch_sql_exec(ctx, "UPDATE sessions SET alive_dropped_at = NULL WHERE id = ?", "i", id)))
		return rc;
	return orch_session_json(ctx, id, result);
}

/*
 * Nobody holds the session's alive any more: it is dropped, a resume
 * candidate at once (until it shows a sign of life again), and its leases
 * go: the locks it owns and the main merge lock.  Its current ref stays,
 * for whoever takes it over.
 */
static int alive_drop(orch_ctx *ctx, int64_t id)
{
	char owner[32];
	int rc;

	snprintf(owner, sizeof(owner), "%lld", (long long)id);
	if ((rc = orch_sql_exec(ctx, "UPDATE sessions SET alive_dropped_at = ? WHERE id = ? AND status <> 'closed'",
				"ii", ctx->now, id)) ||
	    (rc = orch_sql_exec(ctx, "UPDATE locks SET state = 'released', heartbeat_at = ?1, lease_until = ?1, "
				"released_at = ?1, released_by = ?2, release_reason = 'sessions/' || ?2 || '/alive closed' "
				"WHERE owner_session = ?2 AND state = 'active' AND lease_until > ?1", "is", ctx->now,
				owner)) ||
	    (rc = orch_sql_exec(ctx, "UPDATE merge_main_lock SET holder_session_id = NULL, lease_until = NULL, "
				"state = 'unlocked', updated_at = ? WHERE holder_session_id = ?", "ii", ctx->now, id)))
		return rc;
	return 0;
}

/*
 * The last alive handle of the session in this daemon was closed (its
 * holder exited or was killed), or this process (orchfs serve / mcp) lets
 * go of a session it held.  Unless another running process still holds
 * it, the session is dropped (alive_drop).
 */
static int alive_release(orch_ctx *ctx, json_t *p, json_t **result)
{
	int64_t id = orch_param_int(p, "session_id", 0), pid, start, held = 0;
	int rc;

	daemon_id(&pid, &start);
	if ((rc = orch_sql_exec(ctx, "DELETE FROM session_alive WHERE session_id = ? AND (daemon_pid = ? AND "
				"daemon_start = ? AND host = ? OR NOT " ORCH_SQL_HOLDER_ALIVE("session_alive") ")", "iiis",
				id, pid, start, orch_store_host())) ||
	    (rc = orch_sql_int(ctx, &held, NULL, "SELECT count(*) FROM session_alive WHERE session_id = ?", "i",
			       id)))
		return rc;
	if (!held && (rc = alive_drop(ctx, id)) != 0)
		return rc;
	return orch_session_json(ctx, id, result);
}

/*
 * Holds left by processes that are gone (a daemon, orchfs serve or mcp
 * killed with SIGKILL, which cannot clean up): their rows go, and each
 * session nobody else holds is dropped as alive_release drops it.  Run
 * before every other mutating or blocking call (orch_call_method, when
 * orch_alive_dead_holders says there are some) and when a daemon starts.
 * {sessions: [ids dropped]}; nothing found changes nothing.
 */
static int alive_reap(orch_ctx *ctx, json_t *p, json_t **result)
{
	orch_stmt *st = orch_sql(ctx, "SELECT DISTINCT session_id FROM session_alive "
				    "WHERE NOT " ORCH_SQL_HOLDER_ALIVE("session_alive"), "");
	int64_t *ids = NULL, held;
	size_t n = 0;
	int rc = 0;

	(void)p;
	if (!st)
		return ORCH_EINTERNAL;
	while ((rc = orch_sql_step(ctx, st)) == ORCH_ROW) {
		ids = orch_xrealloc(ids, (n + 1) * sizeof(*ids));
		ids[n++] = orch_stmt_column_int64(st, 0);
	}
	orch_stmt_reset(st);
	if (rc != ORCH_DONE) {
		free(ids);
		return ORCH_EINTERNAL;
	}
	rc = orch_sql_exec(ctx, "DELETE FROM session_alive WHERE NOT " ORCH_SQL_HOLDER_ALIVE("session_alive"), "");
	*result = json_object();
	json_t *dropped = json_array();
	for (size_t i = 0; i < n && !rc; i++) {
		held = 0;
		if ((rc = orch_sql_int(ctx, &held, NULL, "SELECT count(*) FROM session_alive WHERE session_id = ?",
				       "i", ids[i])) == 0 && !held && (rc = alive_drop(ctx, ids[i])) == 0)
			json_array_append_new(dropped, json_integer(ids[i]));
	}
	json_object_set_new(*result, "sessions", dropped);
	ctx->unchanged = n == 0;
	free(ids);
	return rc;
}

int orch_alive_beat(orch_store *st)
{
	const char *host = orch_store_host();
	int64_t (*holders)[2] = NULL, now = orch_now_ms();
	size_t n = 0;
	int rc = 0;

	if (!*host)
		return 0;
	orch_stmt *q = orch_store_stmt(st, "SELECT DISTINCT daemon_pid, daemon_start FROM session_alive WHERE host = ?");
	if (!q)
		return orch_store_error(st, "");
	orch_stmt_bind_text(q, 1, host);
	while ((rc = orch_stmt_step(q)) == ORCH_ROW) {
		holders = orch_xrealloc(holders, (n + 1) * sizeof(*holders));
		holders[n][0] = orch_stmt_column_int64(q, 0);
		holders[n][1] = orch_stmt_column_int64(q, 1);
		n++;
	}
	orch_stmt_reset(q);
	rc = rc == ORCH_DONE ? 0 : orch_store_error(st, "");
	/* Only the ones running here: a holder that died is left to age out (and be reaped) everywhere. */
	for (size_t i = 0; i < n && !rc; i++) {
		if (!orch_holder_runs_here(holders[i][0], holders[i][1]))
			continue;
		orch_stmt *u = orch_store_stmt(st, "UPDATE session_alive SET seen_at = ? WHERE host = ? AND "
						   "daemon_pid = ? AND daemon_start = ?");
		if (!u || orch_stmt_bind_int64(u, 1, now) || orch_stmt_bind_text(u, 2, host) ||
		    orch_stmt_bind_int64(u, 3, holders[i][0]) || orch_stmt_bind_int64(u, 4, holders[i][1]) ||
		    orch_stmt_step(u) != ORCH_DONE)
			rc = orch_store_error(st, "");
		if (u)
			orch_stmt_reset(u);
	}
	free(holders);
	return rc;
}

bool orch_alive_dead_holders(orch_env *env)
{
	orch_store *st;
	bool dead = false;

	if (orch_env_reader(env, &st) != 0) {
		orch_error_clear();
		return false;
	}
	orch_stmt *q = orch_store_stmt(st, "SELECT 1 FROM session_alive "
					  "WHERE NOT " ORCH_SQL_HOLDER_ALIVE("session_alive") " LIMIT 1");
	if (q) {
		dead = orch_stmt_step(q) == ORCH_ROW;
		orch_stmt_reset(q);
	}
	orch_env_reader_put(env, st);
	orch_error_clear();
	return dead;
}

static const orch_param open_params[] = {
	{"agent_role", ORCH_P_STR, 0, "Role of the agent (default \"codex\").", NULL},
	{"owner", ORCH_P_STR, 0, "Who runs it (default \"unknown\").", NULL},
	{"terminal_fingerprint", ORCH_P_STR, 0, "Identifies the terminal; blank means none.", NULL},
	{"intent", ORCH_P_STR, 0, "new_work | resume_work | auto (default auto = new_work).", NULL},
	{"heartbeat_timeout_seconds", ORCH_P_INT, 0,
	 "This session's heartbeat window in seconds (default 120): silent longer than this (no heartbeat, "
	 "no write through sessions/<id>/ctl/; reads do not count), it may be taken over. Others can "
	 "lengthen it, never shorten it.", NULL},
	{"worktree", ORCH_P_BOOL, 0, "false: no session-root checkout (a planner or reviewer; default true).",
	 NULL},
	{"ctl_errors", ORCH_P_STR, 0, "errno | reply (default errno): with reply, a complete request written "
	 "to sessions/<id>/ctl/<method> never fails the write; the error is only in the reply read back "
	 "(for file tools that take ENOENT for a missing file).", NULL},
	{NULL, 0, 0, NULL, NULL},
};
static const orch_param sid_params[] = {
	{"session_id", ORCH_P_ID, ORCH_P_REQUIRED, "The session.", NULL},
	{NULL, 0, 0, NULL, NULL},
};
static const orch_param close_params[] = {
	{"session_id", ORCH_P_ID, ORCH_P_REQUIRED, "The session.", NULL},
	{"remove_worktree", ORCH_P_BOOL, 0, "true: also remove the session root's checkout (its branch stays), "
	 "only when it is clean, has no unmerged child, and its commits are merged (or there are none).",
	 NULL},
	{NULL, 0, 0, NULL, NULL},
};
static const orch_param no_params[] = {
	{NULL, 0, 0, NULL, NULL},
};
static const orch_param cand_params[] = {
	{"requester_session_id", ORCH_P_ID, ORCH_P_REQUIRED, "The session asking (never listed itself).", NULL},
	{"heartbeat_timeout_seconds", ORCH_P_INT, 0,
	 "Lengthen every session's own heartbeat window to this many seconds (never shortens it; "
	 "default: each session's own window, given at its session.open).", NULL},
	{NULL, 0, 0, NULL, NULL},
};

const orch_method orch_session_methods[] = {
	{"session.open", session_open, ORCH_M_WRITE, open_params,
	 "Open a session. new_work/auto also creates its session-root worktree (branch session/<id>, "
	 "checked out under the state directory); resume_work lists suspended sessions to take over.",
	 "{session_context: {session, main_worktree, session_root_worktree}} or, for resume_work, "
	 "{session, main_worktree, action_required: \"select_resume_candidate\", resume_candidates: [...]}",
	 "{\"agent_role\": \"implementer\", \"owner\": \"alice\", \"intent\": \"new_work\"}",
	 "git (EIO: the worktree could not be made; nothing is kept), exists (EEXIST: branch "
	 "session/<id> already exists)."},
	{"session.heartbeat", session_heartbeat, ORCH_M_WRITE, sid_params,
	 "Record that the session is alive (last_seen_at = now). Writing or touching "
	 "sessions/<id>/heartbeat does the same.",
	 "the session", "{\"session_id\": 1}",
	 "not_found (ENOENT), invalid_state (EINVAL: the session is closed)."},
	{"session.close", session_close, ORCH_M_WRITE | ORCH_M_CLOSED_OK, close_params,
	 "Close the session; releases its locks, the main merge lock if it holds it, and its current ref. "
	 "With remove_worktree, its session-root checkout is removed too (nothing unmerged is lost).",
	 "the session",
	 "{\"session_id\": 1, \"remove_worktree\": true}", "not_found (ENOENT), invalid_state (EINVAL: already "
	 "closed; remove_worktree: uncommitted changes (details.paths), unmerged children (details.children), "
	 "unmerged commits, or the session root is on another host (details.state other_host))."},
	{"session.context", session_context, 0, sid_params,
	 "The session with its main and session-root worktrees and active current ref.",
	 "{session, main_worktree?, session_root_worktree?, current_ref?}", "{\"session_id\": 1}",
	 "not_found (ENOENT)."},
	{"resume.candidates.list", candidates_list, 0, cand_params,
	 "Suspended sessions (heartbeat older than the timeout, an active current ref, not closed), "
	 "stalest first.",
	 "[{session, current_ref, session_root_worktree?}]", "{\"requester_session_id\": 2}",
	 "not_found (ENOENT: no such requester)."},
	{NULL, NULL, 0, NULL, NULL, NULL, NULL, NULL},
};

/* Called by the fs layer only (sessions/<id>/alive); not in the method table, so not in ctl/. */
const orch_method orch_alive_hold_method = {
	"session.alive.hold", alive_hold, ORCH_M_WRITE, sid_params,
	"sessions/<id>/alive was opened: the session is live while it is held.", "the session",
	"{\"session_id\": 1}", "not_found (ENOENT), invalid_state (EINVAL: the session is closed or taken over)."};
const orch_method orch_alive_release_method = {
	"session.alive.release", alive_release, ORCH_M_WRITE | ORCH_M_CLOSED_OK, sid_params,
	"The last holder of sessions/<id>/alive closed it: the session is a resume candidate at once and its "
	"locks are released.", "the session", "{\"session_id\": 1}", "none."};
const orch_method orch_alive_reap_method = {
	"session.alive.reap", alive_reap, ORCH_M_WRITE | ORCH_M_CLOSED_OK, no_params,
	"Holds of sessions/<id>/alive left by processes that are gone are dropped; so are the sessions nobody "
	"else holds (resume candidates, their locks released).", "{sessions: [ids]}", "{}", "none."};
