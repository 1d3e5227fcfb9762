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
	"session_root_worktree_id, started_at, last_seen_at, status FROM sessions WHERE id = ?"

#define WORKTREE_COLS                                                                              \
	"SELECT id, nullif(task_id, 0) AS task_id, path, branch, status, kind, parent_worktree_id, owner_session_id, "     \
	"merge_state, created_at, merged_at FROM worktrees WHERE id = ?"

int orch_session_json(orch_ctx *ctx, int64_t id, json_t **out)
{
	return orch_sql_row(ctx, out, "session %lld not found", id, SESSION_COLS, "i", id);
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
 * The main worktree record for this repository, created on first use and
 * its branch refreshed to the current HEAD on every open (the reference
 * captured it once and never again).
 */
static int main_worktree(orch_ctx *ctx, int64_t *out)
{
	char *branch = NULL;
	bool found;
	int rc;

	if ((rc = orch_git_head_branch(ctx->git, &branch)) != 0)
		return rc;
	rc = orch_sql_int(ctx, out, &found, "SELECT id FROM worktrees WHERE kind = 'main' AND path = ?", "s",
			  ctx->repo_path);
	if (rc)
		goto done;
	if (found) {
		rc = orch_sql_exec(ctx, "UPDATE worktrees SET branch = ? WHERE id = ? AND branch <> ?", "sis",
				   branch, *out, branch);
	} else {
		rc = orch_sql_exec(ctx, "INSERT INTO worktrees (task_id, path, branch, status, kind, merge_state, "
				   "created_at) VALUES (0, ?, ?, 'active', 'main', 'attached', ?)", "ssi",
				   ctx->repo_path, branch, ctx->now);
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
			   "owner_session_id, merge_state, created_at) VALUES (0, ?, ?, 'active', 'session_root', "
			   "?, ?, 'active', ?)", "ssiii", path, branch, main_id, sid, ctx->now);
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
	int64_t timeout, sid, main_id, root_id = 0;
	json_t *ctxj = NULL, *cands = NULL;
	int rc;

	if (strcmp(intent, "new_work") && strcmp(intent, "resume_work") && strcmp(intent, "auto"))
		return orch_error_set(ORCH_EINVALID_PARAMS,
				      "intent must be one of new_work, resume_work, auto; got \"%s\"", intent);
	if ((rc = orch_param_timeout(p, "heartbeat_timeout_seconds", &timeout)) != 0)
		return rc;
	bool resume = strcmp(intent, "resume_work") == 0;
	const char *fp = orch_param_str(p, "terminal_fingerprint", NULL);
	rc = orch_sql_exec(ctx, "INSERT INTO sessions (agent_role, owner, repo_path, terminal_fingerprint, intent, "
			   "heartbeat_timeout_seconds, started_at, last_seen_at, status) "
			   "VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'opened')", "sssssIii",
			   orch_param_str(p, "agent_role", "codex"), orch_param_str(p, "owner", "unknown"),
			   ctx->repo_path, fp && *fp ? fp : NULL, resume ? "resume_work" : "new_work",
			   resume ? timeout : 0, ctx->now, ctx->now);
	if (rc)
		return rc;
	sid = orch_last_id(ctx);
	if ((rc = main_worktree(ctx, &main_id)) != 0)
		return rc;
	if (!resume && (rc = session_root(ctx, sid, main_id, &root_id)) != 0)
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
	if ((rc = orch_resume_candidates(ctx, sid, timeout, &cands)) != 0) {
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
	snprintf(owner, sizeof(owner), "%lld", (long long)id);
	if ((rc = orch_sql_exec(ctx, "UPDATE sessions SET status = 'closed', last_seen_at = ? WHERE id = ?", "ii",
				ctx->now, id)) ||
	    (rc = orch_sql_exec(ctx, "UPDATE locks SET state = 'released', heartbeat_at = ?1, lease_until = ?1 "
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
 * requester, in an active status, heartbeat older than the timeout, and
 * holding an active current ref.  Stalest first.
 */
int orch_resume_candidates(orch_ctx *ctx, int64_t requester, int64_t timeout_s, json_t **out)
{
	sqlite3_stmt *st;
	int rc;

	if (timeout_s <= 0)
		timeout_s = 60;
	st = orch_sql(ctx, "SELECT s.id FROM sessions s WHERE s.repo_path = ? AND s.id <> ? "
		      "AND s.status IN ('active_new', 'active_resume', 'handoff_attached') "
		      /* Liveness: its heartbeat window, unless an alive handle decides (held: live; dropped: not). */
		      "AND NOT " ORCH_SQL_ALIVE_HELD("s") " AND (s.last_seen_at < ? OR " ORCH_SQL_ALIVE_DROPPED("s") ") "
		      "AND EXISTS (SELECT 1 FROM current_refs r WHERE r.session_id = s.id AND r.status = 'active') "
		      "ORDER BY s.last_seen_at, s.id", "sii", ctx->repo_path, requester,
		      ctx->now - timeout_s * 1000);
	if (!st)
		return ORCH_EINTERNAL;
	int64_t *ids = NULL;
	size_t n = 0, cap = 0;
	while ((rc = orch_sql_step(ctx, st)) == SQLITE_ROW) {
		if (n == cap) {
			cap = cap ? cap * 2 : 16;
			ids = orch_xrealloc(ids, cap * sizeof(*ids));
		}
		ids[n++] = sqlite3_column_int64(st, 0);
	}
	sqlite3_reset(st);
	if (rc != SQLITE_DONE) {
		free(ids);
		return ORCH_EINTERNAL;
	}
	rc = 0;
	*out = json_array();
	for (size_t i = 0; i < n; i++) {
		json_t *c;
		if ((rc = orch_session_context(ctx, ids[i], &c)) != 0) {
			json_decref(*out);
			*out = NULL;
			break;
		}
		json_object_del(c, "main_worktree");
		json_array_append_new(*out, c);
	}
	free(ids);
	return rc;
}

static int candidates_list(orch_ctx *ctx, json_t *p, json_t **result)
{
	int64_t req = orch_param_int(p, "requester_session_id", 0);
	int64_t timeout, stored;
	bool found;
	int rc = orch_param_timeout(p, "heartbeat_timeout_seconds", &timeout);

	if (rc)
		return rc;
	rc = orch_sql_int(ctx, &stored, &found, "SELECT coalesce(heartbeat_timeout_seconds, 0) "
			      "FROM sessions WHERE id = ?", "i", req);

	if (rc)
		return rc;
	if (!found)
		return orch_error_set(ORCH_ENOTFOUND, "session %lld not found", (long long)req);
	if (timeout <= 0)
		timeout = stored;
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
	if ((rc = orch_sql_exec(ctx, "INSERT OR IGNORE INTO session_alive (session_id, daemon_pid, daemon_start, since) "
				"VALUES (?, ?, ?, ?)", "iiii", id, pid, start, ctx->now)) ||
	    (rc = orch_sql_exec(ctx, "UPDATE sessions SET alive_dropped_at = NULL WHERE id = ?", "i", id)))
		return rc;
	return orch_session_json(ctx, id, result);
}

/*
 * The last alive handle of the session in this daemon was closed (its
 * holder exited or was killed).  Unless another running daemon still holds
 * it, the session is dropped: a resume candidate at once (until it shows a
 * sign of life again), and its leases go: the locks it owns and the main
 * merge lock.  Its current ref stays, for whoever takes it over.
 */
static int alive_release(orch_ctx *ctx, json_t *p, json_t **result)
{
	int64_t id = orch_param_int(p, "session_id", 0), pid, start, held = 0;
	char owner[32];
	int rc;

	daemon_id(&pid, &start);
	if ((rc = orch_sql_exec(ctx, "DELETE FROM session_alive WHERE session_id = ? AND (daemon_pid = ? AND "
				"daemon_start = ? OR NOT orch_pid_alive(daemon_pid, daemon_start))", "iii", id, pid,
				start)) ||
	    (rc = orch_sql_int(ctx, &held, NULL, "SELECT count(*) FROM session_alive WHERE session_id = ?", "i",
			       id)))
		return rc;
	if (held)
		return orch_session_json(ctx, id, result);
	snprintf(owner, sizeof(owner), "%lld", (long long)id);
	if ((rc = orch_sql_exec(ctx, "UPDATE sessions SET alive_dropped_at = ? WHERE id = ? AND status <> 'closed'",
				"ii", ctx->now, id)) ||
	    (rc = orch_sql_exec(ctx, "UPDATE locks SET state = 'released', heartbeat_at = ?1, lease_until = ?1 "
				"WHERE owner_session = ?2 AND state = 'active' AND lease_until > ?1", "is", ctx->now,
				owner)) ||
	    (rc = orch_sql_exec(ctx, "UPDATE merge_main_lock SET holder_session_id = NULL, lease_until = NULL, "
				"state = 'unlocked', updated_at = ? WHERE holder_session_id = ?", "ii", ctx->now, id)))
		return rc;
	return orch_session_json(ctx, id, result);
}

static const orch_param open_params[] = {
	{"agent_role", ORCH_P_STR, 0, "Role of the agent (default \"codex\").", NULL},
	{"owner", ORCH_P_STR, 0, "Who runs it (default \"unknown\").", NULL},
	{"terminal_fingerprint", ORCH_P_STR, 0, "Identifies the terminal; blank means none.", NULL},
	{"intent", ORCH_P_STR, 0, "new_work | resume_work | auto (default auto = new_work).", NULL},
	{"heartbeat_timeout_seconds", ORCH_P_INT, 0,
	 "resume_work: heartbeat age that makes a session a candidate (default 60).", NULL},
	{NULL, 0, 0, NULL, NULL},
};
static const orch_param sid_params[] = {
	{"session_id", ORCH_P_ID, ORCH_P_REQUIRED, "The session.", NULL},
	{NULL, 0, 0, NULL, NULL},
};
static const orch_param cand_params[] = {
	{"requester_session_id", ORCH_P_ID, ORCH_P_REQUIRED, "The session asking (never listed itself).", NULL},
	{"heartbeat_timeout_seconds", ORCH_P_INT, 0,
	 "Heartbeat age in seconds beyond which a session is suspended (default: the one given to "
	 "session.open, else 60).", NULL},
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
	{"session.close", session_close, ORCH_M_WRITE | ORCH_M_CLOSED_OK, sid_params,
	 "Close the session; releases its locks, the main merge lock if it holds it, and its current ref.",
	 "the session",
	 "{\"session_id\": 1}", "not_found (ENOENT), invalid_state (EINVAL: already closed)."},
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
