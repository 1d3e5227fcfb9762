/*
 * The merge pipeline: feature merge requests and their review context, and
 * the main-merge queue with its global lock (merge.main.*).
 *
 * Main is reached only through the queue: merge.main.request queues a
 * session root's branch, merge.main.acquire_lock leases the one main merge
 * lock, merge.main.run (lock holder only) merges a queued item into its
 * target branch with libgit2 (orch_git_merge_branch: in memory first,
 * fast-forward when possible, the target ref moved by compare-and-swap,
 * the user's checkout updated only when clean).
 *
 * kill -9 during merge.main.run.  The call is one transaction, and git's
 * work happens inside it: the user's checkout is updated, then the target
 * ref moves in one atomic step (a compare-and-swap), then the transaction
 * commits (item merged).  So the target branch is always before or after
 * the merge, never between.  What a kill can leave, and how the retry
 * (merge.main.run again: the item is still queued) finishes it:
 *  - killed before the ref moved, with the checkout wholly or partly
 *    updated: the merge sees a checkout holding exactly its own result and
 *    finishes it (orch_git_merge_branch);
 *  - killed after the ref moved, before the commit: the ref's reflog entry
 *    carries the item's mark, "orchfs merge.main.run #<id> (<branch> at
 *    <tip>)", written with the ref itself; the retry finds it
 *    (orch_git_reflog_find: the newest entry with that message, whose new
 *    id the target still contains) and records the item merged with that
 *    commit, moving nothing.  (With core.logAllRefUpdates=false there is
 *    no reflog: the retry then says nothing_to_merge and the item can be
 *    cancelled; main itself is still whole.)
 * A transaction that fails after the git work (e.g. its COMMIT) undoes the
 * ref and the checkout through the effect registered with orch_txn_git.
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "orchfs/core.h"
#include "groups.h"
#include "orchfs/git.h"
#include "gitfx.h"


#define REQUEST_SELECT                                                                             \
	"SELECT id, feature_task_id, status, reviewer_session, notes_json, created_at, updated_at "  \
	"FROM merge_requests "

#define ITEM_SELECT                                                                                \
	"SELECT id, session_id, from_worktree_id, target_branch, state, merged_commit, started_at, " \
	"completed_at, error_message, created_at, updated_at FROM merge_main_queue "

/* The lock as clients see it: a locked lease past its end shows "expired" (?1 = now). */
#define LOCK_SELECT                                                                                \
	"SELECT holder_session_id, lease_until, CASE WHEN state = 'locked' AND lease_until <= ?1 "    \
	"THEN 'expired' ELSE state END AS state, updated_at FROM merge_main_lock WHERE id = 1"

static const char *jstr(json_t *o, const char *key)
{
	const char *s = json_string_value(json_object_get(o, key));

	return s ? s : "";
}

static int64_t jint(json_t *o, const char *key)
{
	return json_integer_value(json_object_get(o, key));
}

/* ---- views ---- */

int orch_merge_request_json(orch_ctx *ctx, int64_t id, json_t **out)
{
	return orch_sql_row(ctx, out, "merge request %lld not found", id, REQUEST_SELECT "WHERE id = ?", "i", id);
}

int orch_main_item_json(orch_ctx *ctx, int64_t id, json_t **out)
{
	return orch_sql_row(ctx, out, "main-merge request %lld not found", id, ITEM_SELECT "WHERE id = ?", "i", id);
}

int orch_main_queue_json(orch_ctx *ctx, int64_t id, json_t **out)
{
	(void)id;
	return orch_sql_rows(ctx, out, ITEM_SELECT "WHERE state = 'queued' ORDER BY id", "");
}

/* The lock row as clients see it (uses ctx->now). */
static int lock_row(orch_ctx *ctx, json_t **out)
{
	return orch_sql_row(ctx, out, "main merge lock %lld not found", 1, LOCK_SELECT, "i", ctx->now);
}

int orch_main_lock_json(orch_ctx *ctx, int64_t id, json_t **out)
{
	int rc = lock_row(ctx, out);

	(void)id;
	if (rc == 0 && strcmp(jstr(*out, "state"), "locked") != 0) {
		json_decref(*out);
		*out = json_null();
	}
	return rc;
}

json_t *orch_uncommitted_paths(const char *path)
{
	struct stat sb;
	json_t *paths = NULL;

	if (!path || stat(path, &sb) != 0 || !S_ISDIR(sb.st_mode) || orch_git_dirty_paths(path, true, &paths) != 0) {
		orch_error_clear();
		return json_array();
	}
	return paths;
}

/* ---- feature merge requests ---- */

static int merge_request(orch_ctx *ctx, json_t *p, json_t **result)
{
	int64_t feature = orch_param_int(p, "feature_task_id", 0);
	const char *reviewer = orch_param_str(p, "reviewer_session", NULL);
	json_t *task = NULL, *notes = orch_param_json(p, "notes_json");
	char *rev = NULL;
	int rc = orch_task_json(ctx, feature, &task);

	json_decref(task);
	if (rc == ORCH_ENOTFOUND)
		return orch_error_set(ORCH_ENOTFOUND, "feature task %lld not found", (long long)feature);
	if (rc)
		return rc;
	if (reviewer) {
		/* Trimmed; blank means none, as in the reference. */
		while (isspace((unsigned char)*reviewer))
			reviewer++;
		rev = strdup(reviewer);
		size_t n = strlen(rev);
		while (n > 0 && isspace((unsigned char)rev[n - 1]))
			rev[--n] = '\0';
	}
	rc = orch_sql_exec(ctx, "INSERT INTO merge_requests (feature_task_id, status, reviewer_session, notes_json, "
			   "created_at, updated_at) VALUES (?, 'requested', ?, ?, ?, ?)", "isjii", feature,
			   rev && *rev ? rev : NULL, notes, ctx->now, ctx->now);
	free(rev);
	return rc ? rc : orch_merge_request_json(ctx, orch_last_id(ctx), result);
}

/* Every descendant task id of `feature` (cases under test groups too), in id order. */
static int descendant_ids(orch_ctx *ctx, int64_t feature, json_t **out)
{
	orch_stmt *st = orch_sql(ctx, "WITH RECURSIVE d(id) AS (SELECT id FROM tasks WHERE parent_id = ?1 "
				    "UNION SELECT t.id FROM tasks t JOIN d ON t.parent_id = d.id) "
				    "SELECT id FROM d WHERE id <> ?1 ORDER BY id", "i", feature);
	int rc;

	*out = json_array();
	if (!st)
		return ORCH_EINTERNAL;
	while ((rc = orch_sql_step(ctx, st)) == ORCH_ROW)
		json_array_append_new(*out, json_integer(orch_stmt_column_int64(st, 0)));
	orch_stmt_reset(st);
	return rc == ORCH_DONE ? 0 : ORCH_EINTERNAL;
}

/* The descendants as tasks; each case with its steps and latest checkpoint (also into `checkpoints`). */
static int descendants(orch_ctx *ctx, json_t *ids, json_t **out, json_t *checkpoints)
{
	json_t *v;
	size_t i;
	int rc = 0;

	*out = json_array();
	json_array_foreach(ids, i, v) {
		int64_t id = json_integer_value(v);
		json_t *t = NULL, *steps = NULL, *cps = NULL;
		if ((rc = orch_task_json(ctx, id, &t)) != 0)
			return rc;
		json_array_append_new(*out, t);
		if (strcasecmp(jstr(t, "level"), "case") != 0)
			continue;
		if ((rc = orch_task_steps_json(ctx, id, &steps)) != 0 ||
		    (rc = orch_task_checkpoints_json(ctx, id, &cps)) != 0) {
			json_decref(steps);
			return rc;
		}
		size_t n = json_array_size(cps);
		json_t *latest = n ? json_incref(json_array_get(cps, n - 1)) : json_null();
		char key[32];
		snprintf(key, sizeof(key), "%lld", (long long)id);
		json_object_set(checkpoints, key, latest);
		json_object_set_new(t, "steps", steps);
		json_object_set_new(t, "latest_checkpoint", latest);
		json_decref(cps);
	}
	return rc;
}

/*
 * The worktrees involved in a feature: those whose task is the feature or
 * one of its descendants.  Each record comes with what its branch would
 * bring into the branch it merges into (its parent's; for a worktree
 * without parent, the main worktree's): head, commits (subjects), paths.
 */
static int involved_worktrees(orch_ctx *ctx, int64_t feature, json_t *ids, json_t **out)
{
	json_t *rows = NULL, *row, *task_ids = json_deep_copy(ids), *main = NULL;
	char *list = NULL;
	size_t i;
	int rc;

	*out = json_array();
	json_array_append_new(task_ids, json_integer(feature));
	list = json_dumps(task_ids, JSON_COMPACT);
	json_decref(task_ids);
	if (!list)
		return orch_error_set(ORCH_EINTERNAL, "out of memory");
	rc = orch_sql_rows(ctx, &rows, "SELECT id FROM worktrees WHERE task_id IN (SELECT value FROM json_each(?)) "
			   "AND task_id <> 0 ORDER BY id", "s", list);
	free(list);
	if (rc)
		return rc;
	if ((rc = orch_sql_rows(ctx, &main, "SELECT branch FROM worktrees WHERE kind = 'main' AND host = ? AND "
				"path = ?", "ss", ctx->host, ctx->repo_path)) != 0)
		goto done;
	const char *main_branch = json_array_size(main) ? jstr(json_array_get(main, 0), "branch") : NULL;
	json_array_foreach(rows, i, row) {
		json_t *wt = NULL, *parent = NULL, *sum = NULL;
		if ((rc = orch_worktree_json(ctx, jint(row, "id"), &wt)) != 0)
			goto done;
		json_array_append_new(*out, wt);
		const char *base = main_branch;
		if (jint(wt, "parent_worktree_id") &&
		    orch_worktree_json(ctx, jint(wt, "parent_worktree_id"), &parent) == 0)
			base = jstr(parent, "branch");
		orch_error_clear();
		/* Branches of another host's worktrees are in its repository: their records only. */
		if (strcmp(jstr(wt, "status"), "planned") != 0 && strcmp(jstr(wt, "host"), ctx->host) == 0 &&
		    orch_git_branch_summary(ctx->repo_path, jstr(wt, "branch"), base, &sum) == 0) {
			json_object_del(sum, "branch");
			json_object_update(wt, sum);
		}
		orch_error_clear();
		json_decref(sum);
		json_decref(parent);
	}
done:
	json_decref(main);
	json_decref(rows);
	return rc;
}

static int review_context(orch_ctx *ctx, json_t *p, json_t **result)
{
	int64_t id = orch_param_int(p, "merge_request_id", 0), feature;
	json_t *mr = NULL, *task = NULL, *ids = NULL, *children = NULL, *cps = json_object(), *mrs = NULL,
	       *wts = NULL;
	int rc;

	if ((rc = orch_merge_request_json(ctx, id, &mr)) != 0)
		goto done;
	feature = jint(mr, "feature_task_id");
	if ((rc = orch_task_json(ctx, feature, &task)) != 0 || (rc = descendant_ids(ctx, feature, &ids)) != 0 ||
	    (rc = descendants(ctx, ids, &children, cps)) != 0 ||
	    (rc = orch_sql_rows(ctx, &mrs, REQUEST_SELECT "WHERE feature_task_id = ? ORDER BY id", "i", feature)) != 0 ||
	    (rc = involved_worktrees(ctx, feature, ids, &wts)) != 0)
		goto done;
	*result = json_pack("{s:O, s:O, s:O, s:O, s:O, s:O}", "merge_request", mr, "feature", task, "children",
			    children, "checkpoints", cps, "merge_requests", mrs, "worktrees", wts);
done:
	json_decref(mr);
	json_decref(task);
	json_decref(ids);
	json_decref(children);
	json_decref(cps);
	json_decref(mrs);
	json_decref(wts);
	return rc;
}

/* ---- the main merge lock ---- */

/* Whether the lock (as lock_row shows it) is held, unexpired, by a session other than `sid`. */
static bool held_by_other(json_t *lock, int64_t sid)
{
	return strcmp(jstr(lock, "state"), "locked") == 0 && jint(lock, "holder_session_id") != sid;
}

/* The error `code` for a lock another session holds, saying who and until when, then `what_now`; takes `lock` (details.lock). */
static int held_error(json_t *lock, int code, const char *what_now)
{
	int rc = orch_error_set(code, "the main merge lock is held by session %lld until %s; %s",
				(long long)jint(lock, "holder_session_id"), jstr(lock, "lease_until"), what_now);

	orch_error_detail("lock", lock);
	return rc;
}

static int acquire_lock(orch_ctx *ctx, json_t *p, json_t **result)
{
	int64_t sid = orch_param_int(p, "session_id", 0), ttl = 0;
	json_t *lock = NULL;
	int rc;

	if ((rc = orch_param_ttl_ms(p, &ttl)) != 0 || (rc = orch_session_require_open(ctx, sid)) != 0 ||
	    (rc = lock_row(ctx, &lock)) != 0)
		goto done;
	if (held_by_other(lock, sid)) {
		rc = held_error(lock, ORCH_ECONFLICT, "try again when it is released or its lease ends");
		lock = NULL;
		goto done;
	}
	/* Free, expired, or the caller's own: take it, or renew it. */
	rc = orch_sql_exec(ctx, "UPDATE merge_main_lock SET holder_session_id = ?, lease_until = ?, state = 'locked', "
			   "updated_at = ? WHERE id = 1", "iii", sid, ctx->now + ttl, ctx->now);
	if (!rc)
		rc = lock_row(ctx, result);
done:
	json_decref(lock);
	return rc;
}

static int release_lock(orch_ctx *ctx, json_t *p, json_t **result)
{
	int64_t sid = orch_param_int(p, "session_id", 0);
	json_t *lock = NULL;
	int rc;

	if ((rc = orch_session_require_open(ctx, sid)) != 0 || (rc = lock_row(ctx, &lock)) != 0)
		goto done;
	if (strcmp(jstr(lock, "state"), "unlocked") == 0) {
		/* Nothing held: releasing is a no-op (a release in a cleanup path need not know). */
		ctx->unchanged = true;
		*result = lock;
		return 0;
	}
	if (held_by_other(lock, sid)) {
		rc = held_error(lock, ORCH_EFORBIDDEN, "only its holder may release it before its lease ends");
		lock = NULL;
		goto done;
	}
	rc = orch_sql_exec(ctx, "UPDATE merge_main_lock SET holder_session_id = NULL, lease_until = NULL, "
			   "state = 'unlocked', updated_at = ? WHERE id = 1", "i", ctx->now);
	if (!rc)
		rc = lock_row(ctx, result);
done:
	json_decref(lock);
	return rc;
}

/* ---- the main-merge queue ---- */

/* Fail with invalid_state naming the children of worktree `wt` that are neither merged nor abandoned. */
static int check_no_live_children(orch_ctx *ctx, json_t *wt)
{
	json_t *rows = NULL, *ids = json_array(), *r;
	size_t i;
	int rc = orch_sql_rows(ctx, &rows, "SELECT id FROM worktrees WHERE parent_worktree_id = ? "
			       "AND status NOT IN ('closed', 'abandoned') ORDER BY id", "i", jint(wt, "id"));

	if (rc) {
		json_decref(ids);
		return rc;
	}
	json_array_foreach(rows, i, r)
		json_array_append_new(ids, json_integer(jint(r, "id")));
	json_decref(rows);
	if (json_array_size(ids) == 0) {
		json_decref(ids);
		return 0;
	}
	char *list = json_dumps(ids, JSON_COMPACT);
	orch_error_set(ORCH_EINVALID_STATE, "worktree %lld cannot be queued: its child worktrees %s are neither "
		       "merged (worktree.merge_to_parent) nor abandoned (worktree.abandon)", (long long)jint(wt, "id"),
		       list ? list : "");
	free(list);
	orch_error_detail("children", ids);
	return ORCH_EINVALID_STATE;
}

/* The branch of this host's main worktree record (the user's checkout), or NULL (caller frees). */
static char *main_branch(orch_ctx *ctx)
{
	json_t *rows = NULL;
	char *b = NULL;

	if (orch_sql_rows(ctx, &rows, "SELECT branch FROM worktrees WHERE kind = 'main' AND host = ? AND path = ?",
			  "ss", ctx->host, ctx->repo_path) == 0 && json_array_size(rows))
		b = strdup(jstr(json_array_get(rows, 0), "branch"));
	json_decref(rows);
	return b;
}

/* The session root `wid`, owned by `sid` and active, as merge.main.request needs it. */
static int queueable_root(orch_ctx *ctx, int64_t sid, int64_t wid, json_t **wt)
{
	int rc = orch_worktree_json(ctx, wid, wt);

	if (rc)
		return rc;
	if (strcmp(jstr(*wt, "kind"), "session_root") != 0) {
		orch_error_set(ORCH_EINVALID_STATE, "worktree %lld is a %s worktree, not a session root: only a session "
			       "root is queued for main; merge a child into its parent with worktree.merge_to_parent",
			       (long long)wid, *jstr(*wt, "kind") ? jstr(*wt, "kind") : "task");
		orch_error_detail("state", json_string(*jstr(*wt, "kind") ? jstr(*wt, "kind") : "task_branch"));
		return ORCH_EINVALID_STATE;
	}
	if (jint(*wt, "owner_session_id") != sid)
		return orch_error_set(ORCH_EFORBIDDEN, "worktree %lld belongs to session %lld, not %lld", (long long)wid,
				      (long long)jint(*wt, "owner_session_id"), (long long)sid);
	if (strcmp(jstr(*wt, "status"), "active") != 0) {
		orch_error_set(ORCH_EINVALID_STATE, "worktree %lld is %s: only an active session root can be queued",
			       (long long)wid, jstr(*wt, "status"));
		orch_error_detail("state", json_string(jstr(*wt, "status")));
		return ORCH_EINVALID_STATE;
	}
	return check_no_live_children(ctx, *wt);
}

static int main_request(orch_ctx *ctx, json_t *p, json_t **result)
{
	int64_t sid = orch_param_int(p, "session_id", 0), wid = orch_param_int(p, "from_worktree_id", 0), other;
	const char *given = orch_param_str(p, "target_branch", NULL);
	char *target = NULL;
	json_t *wt = NULL, *uncommitted = NULL, *tracked = NULL, *item = NULL;
	bool found, ahead;
	int rc;

	if ((rc = orch_session_require_open(ctx, sid)) != 0 || (rc = queueable_root(ctx, sid, wid, &wt)) != 0)
		goto done;
	if ((rc = orch_sql_int(ctx, &other, &found, "SELECT id FROM merge_main_queue WHERE from_worktree_id = ? AND "
			       "state = 'queued'", "i", wid)) != 0)
		goto done;
	if (found) {
		rc = orch_error_set(ORCH_EEXISTS, "worktree %lld is already queued as main-merge request %lld; cancel "
				    "it (merge.main.cancel) to queue it again", (long long)wid, (long long)other);
		goto done;
	}
	/* Its checkout and branch are read here, and merge.main.run merges it where it is. */
	if ((rc = orch_worktree_local(ctx, wt)) != 0)
		goto done;
	target = given ? strdup(given) : main_branch(ctx);
	if (!target) {
		rc = orch_error_set(ORCH_EINVALID_STATE, "no main worktree is recorded; give target_branch");
		goto done;
	}
	if (!given && !target[0]) {
		rc = orch_error_set(ORCH_EINVALID_STATE, "the main worktree is on a detached HEAD, so it has no branch "
				    "to merge into: git switch to a branch there (and open a session again), or give "
				    "target_branch");
		goto done;
	}
	if (!orch_git_branch_name_valid(target)) {
		rc = orch_error_set(ORCH_EINVALID_PARAMS, "target_branch \"%s\" is not a valid git branch name", target);
		goto done;
	}
	if (strcmp(target, jstr(wt, "branch")) == 0) {
		rc = orch_error_set(ORCH_EINVALID_PARAMS, "target_branch \"%s\" is the worktree's own branch", target);
		goto done;
	}
	if (!orch_git_branch_exists(ctx->git, target)) {
		rc = orch_error_set(ORCH_ENOTFOUND, "target branch \"%s\" does not exist%s", target,
				    given ? "" : " (the main worktree's branch; give target_branch)");
		goto done;
	}
	/* Uncommitted work is never silently left behind: changes to tracked files refuse, untracked files are told. */
	uncommitted = orch_uncommitted_paths(jstr(wt, "path"));
	if ((rc = orch_git_dirty_paths(jstr(wt, "path"), false, &tracked)) != 0)
		goto done;
	if (json_array_size(tracked)) {
		char *list = json_dumps(tracked, JSON_COMPACT);
		rc = orch_error_set(ORCH_EINVALID_STATE, "worktree %lld at %s has uncommitted changes to tracked files: "
				    "%s; commit them (or discard them) before queueing", (long long)wid, jstr(wt, "path"),
				    list ? list : "");
		free(list);
		orch_error_details(json_pack("{s:s, s:O, s:O}", "state", "dirty", "paths", tracked, "uncommitted",
					     uncommitted));
		goto done;
	}
	if ((rc = orch_git_branch_ahead(ctx->git, jstr(wt, "branch"), target, &ahead)) != 0)
		goto done;
	if (!ahead) {
		rc = orch_error_set(ORCH_EINVALID_STATE, "branch \"%s\" has nothing to merge into \"%s\" (its tip is "
				    "already in it); commit your work in %s first", jstr(wt, "branch"), target,
				    jstr(wt, "path"));
		orch_error_details(json_pack("{s:s, s:O}", "state", "nothing_to_merge", "uncommitted", uncommitted));
		goto done;
	}
	rc = orch_sql_exec(ctx, "INSERT INTO merge_main_queue (session_id, from_worktree_id, target_branch, state, "
			   "created_at, updated_at) VALUES (?, ?, ?, 'queued', ?, ?)", "iisii", sid, wid, target,
			   ctx->now, ctx->now);
	if (rc || (rc = orch_main_item_json(ctx, orch_last_id(ctx), &item)) != 0)
		goto done;
	json_object_set(item, "uncommitted", uncommitted);
	*result = item;
done:
	free(target);
	json_decref(wt);
	json_decref(uncommitted);
	json_decref(tracked);
	return rc;
}

static int main_next(orch_ctx *ctx, json_t *p, json_t **result)
{
	json_t *rows = NULL;
	int rc = orch_sql_rows(ctx, &rows, ITEM_SELECT "WHERE state = 'queued' ORDER BY id LIMIT 1", "");

	(void)p;
	if (rc)
		return rc;
	*result = json_array_size(rows) ? json_incref(json_array_get(rows, 0)) : json_null();
	json_decref(rows);
	return 0;
}

static int main_status(orch_ctx *ctx, json_t *p, json_t **result)
{
	return orch_main_item_json(ctx, orch_param_int(p, "request_id", 0), result);
}

/* invalid_state: item `item` is not queued. */
static int not_queued(json_t *item, const char *verb)
{
	orch_error_set(ORCH_EINVALID_STATE, "main-merge request %lld is %s, not queued; only a queued request can be "
		       "%s", (long long)jint(item, "id"), jstr(item, "state"), verb);
	orch_error_detail("state", json_string(jstr(item, "state")));
	return ORCH_EINVALID_STATE;
}

/*
 * forbidden unless item `item` is the caller's: the session that queued
 * it, or the one that owns its worktree now (after taking it over).
 */
static int check_item_owner(orch_ctx *ctx, json_t *item, int64_t sid, const char *hint)
{
	int64_t owner = 0;
	int rc = orch_sql_int(ctx, &owner, NULL, "SELECT coalesce(owner_session_id, 0) FROM worktrees WHERE id = ?",
			      "i", jint(item, "from_worktree_id"));

	if (rc || jint(item, "session_id") == sid || owner == sid)
		return rc;
	return orch_error_set(ORCH_EFORBIDDEN, "main-merge request %lld belongs to session %lld, not %lld%s",
			      (long long)jint(item, "id"), (long long)jint(item, "session_id"), (long long)sid, hint);
}

static int main_cancel(orch_ctx *ctx, json_t *p, json_t **result)
{
	int64_t sid = orch_param_int(p, "session_id", 0), id = orch_param_int(p, "request_id", 0);
	json_t *item = NULL;
	int rc;

	if ((rc = orch_session_require_open(ctx, sid)) != 0 || (rc = orch_main_item_json(ctx, id, &item)) != 0 ||
	    (rc = check_item_owner(ctx, item, sid, "")) != 0)
		goto done;
	if (strcmp(jstr(item, "state"), "queued") != 0) {
		rc = not_queued(item, "cancelled");
		goto done;
	}
	rc = orch_sql_exec(ctx, "UPDATE merge_main_queue SET state = 'cancelled', completed_at = ?1, updated_at = ?1 "
			   "WHERE id = ?2", "ii", ctx->now, id);
	if (!rc)
		rc = orch_main_item_json(ctx, id, result);
done:
	json_decref(item);
	return rc;
}

/* forbidden unless `sid` holds the main merge lock, unexpired. */
static int check_lock_holder(orch_ctx *ctx, int64_t sid)
{
	json_t *lock = NULL;
	int rc = lock_row(ctx, &lock);

	if (rc)
		return rc;
	const char *state = jstr(lock, "state");
	int64_t holder = jint(lock, "holder_session_id");
	if (strcmp(state, "locked") == 0 && holder == sid) {
		json_decref(lock);
		return 0;
	}
	if (strcmp(state, "unlocked") == 0)
		orch_error_set(ORCH_EFORBIDDEN, "merge.main.run needs the main merge lock, and nobody holds it; take it "
			       "with merge.main.acquire_lock");
	else if (holder == sid)
		orch_error_set(ORCH_EFORBIDDEN, "session %lld's lease of the main merge lock ended at %s; take it again "
			       "with merge.main.acquire_lock", (long long)sid, jstr(lock, "lease_until"));
	else
		orch_error_set(ORCH_EFORBIDDEN, "merge.main.run needs the main merge lock, held by session %lld%s%s",
			       (long long)holder, strcmp(state, "expired") == 0 ? " whose lease ended at " : " until ",
			       jstr(lock, "lease_until"));
	orch_error_detail("lock", lock);
	return ORCH_EFORBIDDEN;
}

/* The item merge.main.run works on: the one named, or the oldest queued. */
static int item_to_run(orch_ctx *ctx, json_t *p, json_t **item)
{
	json_t *rows = NULL;
	int rc;

	if (orch_param_has(p, "request_id"))
		return orch_main_item_json(ctx, orch_param_int(p, "request_id", 0), item);
	if ((rc = orch_sql_rows(ctx, &rows, ITEM_SELECT "WHERE state = 'queued' ORDER BY id LIMIT 1", "")) != 0)
		return rc;
	if (json_array_size(rows) == 0)
		rc = orch_error_set(ORCH_ENOTFOUND, "the main-merge queue is empty: no queued request to run");
	else
		*item = json_incref(json_array_get(rows, 0));
	json_decref(rows);
	return rc;
}

/* orch_txn_on_failure for a conflicting merge: the item becomes failed with the message. */
static int record_conflict(orch_ctx *ctx, json_t *arg)
{
	return orch_sql_exec(ctx, "UPDATE merge_main_queue SET state = 'failed', error_message = ?1, started_at = ?2, "
			     "completed_at = ?2, updated_at = ?2 WHERE id = ?3 AND state = 'queued'", "sii",
			     jstr(arg, "message"), ctx->now, jint(arg, "id"));
}

/*
 * A merge conflict (details.paths; a ref that moved meanwhile has none):
 * the message says how to resolve it, and the item is recorded failed
 * even though the call fails.
 */
static void conflict_fails_item(orch_ctx *ctx, json_t *item, json_t *wt, const char *branch)
{
	json_t *paths = json_object_get(orch_error_last()->details, "paths");
	char *list;

	if (!paths)
		return;
	list = json_dumps(paths, JSON_COMPACT);
	json_t *details = json_incref(orch_error_last()->details);
	orch_error_set(ORCH_ECONFLICT, "merging \"%s\" into \"%s\" conflicts in %s; request %lld is now failed. To "
		       "resolve: in the worktree at %s, merge \"%s\" into \"%s\" (git merge %s), resolve the conflicts, "
		       "commit, and queue again with merge.main.request", branch, jstr(item, "target_branch"),
		       list ? list : "", (long long)jint(item, "id"), jstr(wt, "path"), jstr(item, "target_branch"),
		       branch, jstr(item, "target_branch"));
	orch_error_details(details);
	free(list);
	orch_txn_on_failure(ctx, record_conflict, json_pack("{s:I, s:s}", "id", (json_int_t)jint(item, "id"),
							     "message", orch_error_last()->message));
}

static int main_run(orch_ctx *ctx, json_t *p, json_t **result)
{
	int64_t sid = orch_param_int(p, "session_id", 0);
	orch_git_merge_opts opts = ORCH_GIT_MERGE_OPTS_INIT;
	json_t *item = NULL, *wt = NULL, *uncommitted = NULL;
	char hex[ORCH_GIT_HEX_SIZE] = "", src[ORCH_GIT_HEX_SIZE] = "", *ref = NULL, *mark = NULL;
	orch_git_effect *fx = NULL;
	bool ff = false;
	int rc;

	if ((rc = orch_session_require_open(ctx, sid)) != 0 || (rc = check_lock_holder(ctx, sid)) != 0 ||
	    (rc = item_to_run(ctx, p, &item)) != 0)
		goto done;
	/* Each session runs its own items, in queue order unless it names one (SPEC 6.7). */
	if ((rc = check_item_owner(ctx, item, sid, orch_param_has(p, "request_id") ? "" :
				   " (it is the oldest queued: its session runs it first, or name one of yours with "
				   "request_id)")) != 0)
		goto done;
	if (strcmp(jstr(item, "state"), "queued") != 0) {
		rc = not_queued(item, "run");
		goto done;
	}
	/* The merge runs in this host's repository, into its main checkout: the item's worktree must be here. */
	if ((rc = orch_worktree_json(ctx, jint(item, "from_worktree_id"), &wt)) != 0 ||
	    (rc = orch_worktree_local(ctx, wt)) != 0)
		goto done;
	const char *branch = jstr(wt, "branch"), *target = jstr(item, "target_branch");
	uncommitted = orch_uncommitted_paths(jstr(wt, "path"));
	if (asprintf(&ref, "refs/heads/%s", branch) < 0) {
		ref = NULL;
		rc = orch_error_set(ORCH_EINTERNAL, "out of memory");
		goto done;
	}
	if ((rc = orch_git_resolve_commit(ctx->git, ref, src)) != 0)
		goto done;
	/* The mark the target ref's reflog gets with the move: how a retry recognises its own merge. */
	if (asprintf(&mark, "orchfs merge.main.run #%lld (%s at %s)", (long long)jint(item, "id"), branch, src) < 0) {
		mark = NULL;
		rc = orch_error_set(ORCH_EINTERNAL, "out of memory");
		goto done;
	}
	if (orch_git_reflog_find(ctx->git, target, mark, hex)) {
		ff = strcmp(hex, src) == 0;
		orch_log("merge.main.run: request %lld was merged into %s (%s) by a call that did not commit; "
			 "recorded now", (long long)jint(item, "id"), target, hex);
	} else {
		opts.fast_forward = true;
		opts.reflog = mark;
		rc = orch_git_merge_branch(ctx->git, target, ctx->repo_path, branch, &opts, hex, &ff, &fx);
		if (rc == ORCH_ECONFLICT)
			conflict_fails_item(ctx, item, wt, branch);
		if (rc == ORCH_EINVALID_STATE &&
		    strcmp(jstr(orch_error_last()->details, "state"), "nothing_to_merge") == 0) {
			orch_error_set(rc, "\"%s\" already contains all of \"%s\": request %lld has nothing to merge; "
				       "cancel it with merge.main.cancel", target, branch, (long long)jint(item, "id"));
			orch_error_detail("state", json_string("nothing_to_merge"));
		}
		if (rc) {
			if (json_array_size(uncommitted))
				orch_error_detail_add("uncommitted", json_incref(uncommitted));
			goto done;
		}
		orch_txn_git(ctx, fx);
	}
	rc = orch_sql_exec(ctx, "UPDATE merge_main_queue SET state = 'merged', merged_commit = ?1, started_at = ?2, "
			   "completed_at = ?2, updated_at = ?2, error_message = NULL WHERE id = ?3", "sii", hex, ctx->now,
			   jint(item, "id"));
	if (rc || (rc = orch_main_item_json(ctx, jint(item, "id"), result)) != 0)
		goto done;
	json_object_set_new(*result, "fast_forward", json_boolean(ff));
	json_object_set(*result, "uncommitted", uncommitted);
done:
	free(ref);
	free(mark);
	json_decref(item);
	json_decref(wt);
	json_decref(uncommitted);
	return rc;
}

static const orch_param request_params[] = {
	{"feature_task_id", ORCH_P_ID, ORCH_P_REQUIRED, "The feature task to merge (must exist).", NULL},
	{"reviewer_session", ORCH_P_STR, 0, "Who reviews it (free text; blank means none).", NULL},
	{"notes_json", ORCH_P_JSON, 0, "Any JSON value; shown as `notes`.", NULL},
	{NULL, 0, 0, NULL, NULL},
};
static const orch_param review_params[] = {
	{"merge_request_id", ORCH_P_ID, ORCH_P_REQUIRED, "The merge request.", NULL},
	{NULL, 0, 0, NULL, NULL},
};
static const orch_param main_request_params[] = {
	{"session_id", ORCH_P_ID, ORCH_P_REQUIRED, "The session that owns the session root.", NULL},
	{"from_worktree_id", ORCH_P_ID, ORCH_P_REQUIRED, "The session-root worktree whose branch goes to main.", NULL},
	{"target_branch", ORCH_P_STR, 0, "Branch to merge into (default: the main worktree's branch).", NULL},
	{NULL, 0, 0, NULL, NULL},
};
static const orch_param none_params[] = {
	{NULL, 0, 0, NULL, NULL},
};
static const orch_param status_params[] = {
	{"request_id", ORCH_P_ID, ORCH_P_REQUIRED, "The main-merge request (queue item).", NULL},
	{NULL, 0, 0, NULL, NULL},
};
static const orch_param acquire_params[] = {
	{"session_id", ORCH_P_ID, ORCH_P_REQUIRED, "The session taking (or renewing) the lock.", NULL},
	{"ttl_seconds", ORCH_P_INT, 0, "Lease length in seconds from now (default 600; at most a year).", NULL},
	{NULL, 0, 0, NULL, NULL},
};
static const orch_param sid_params[] = {
	{"session_id", ORCH_P_ID, ORCH_P_REQUIRED, "The calling session.", NULL},
	{NULL, 0, 0, NULL, NULL},
};
static const orch_param run_params[] = {
	{"session_id", ORCH_P_ID, ORCH_P_REQUIRED, "The session holding the main merge lock, whose request it is.",
	 NULL},
	{"request_id", ORCH_P_ID, 0, "The queued request to run (default: the oldest queued).", NULL},
	{NULL, 0, 0, NULL, NULL},
};
static const orch_param cancel_params[] = {
	{"session_id", ORCH_P_ID, ORCH_P_REQUIRED, "The session that queued the request (or owns its worktree now).",
	 NULL},
	{"request_id", ORCH_P_ID, ORCH_P_REQUIRED, "The queued request.", NULL},
	{NULL, 0, 0, NULL, NULL},
};

const orch_method orch_merge_methods[] = {
	{"merge.request", merge_request, ORCH_M_WRITE, request_params,
	 "Ask for a feature to be reviewed and merged: a merge request with status requested.",
	 "the merge request {id, feature_task_id, status: requested, reviewer_session?, notes?, created_at, "
	 "updated_at}",
	 "{\"feature_task_id\": 3, \"reviewer_session\": \"reviewer-1\", \"notes_json\": {\"risk\": \"low\"}}",
	 "not_found (ENOENT: no such feature task)."},
	{"merge.review_context", review_context, 0, review_params,
	 "Everything a reviewer needs in one read: the merge request, its feature, every descendant task (cases "
	 "under test groups too; each case with its steps and latest checkpoint), the feature's merge requests, and "
	 "every worktree whose task is the feature or a descendant, with its head commit, the commits it would "
	 "bring into the branch it merges into (its parent's, or the main worktree's) and the paths they change.",
	 "{merge_request, feature, children: [task + (cases) steps, latest_checkpoint], checkpoints: {<case id>: "
	 "latest checkpoint or null}, merge_requests: [...], worktrees: [record + head, base, commits: [{id, "
	 "subject}], paths, truncated?]}",
	 "{\"merge_request_id\": 1}", "not_found (ENOENT: no such merge request)."},
	{"merge.main.request", main_request, ORCH_M_WRITE, main_request_params,
	 "Queue a session root's branch for main. The worktree must be the caller's active session root, with no "
	 "child that is neither merged nor abandoned, no uncommitted change to a tracked file, and commits the "
	 "target lacks. Untracked files are reported in `uncommitted`.",
	 "the queue item {id, session_id, from_worktree_id, target_branch, state: queued, created_at, updated_at, "
	 "uncommitted: [paths]}",
	 "{\"session_id\": 1, \"from_worktree_id\": 2}",
	 "forbidden (EPERM: another session's worktree), invalid_state (EINVAL: not a session root, not active, "
	 "live children (details.children), uncommitted changes (details.state dirty, details.paths), nothing to "
	 "merge (details.state nothing_to_merge), the worktree is on another host (details.state other_host)), exists (EEXIST: the worktree is already queued), not_found "
	 "(ENOENT: session, worktree or target branch), invalid_params (EINVAL: bad target_branch)."},
	{"merge.main.next", main_next, 0, none_params, "The oldest queued main-merge request (a peek; null if none).",
	 "the queue item, or null", "{}", "none."},
	{"merge.main.status", main_status, 0, status_params, "One main-merge request (queue item) by id.",
	 "the queue item {id, session_id, from_worktree_id, target_branch, state: queued|merged|failed|cancelled, "
	 "merged_commit?, started_at?, completed_at?, error_message?, created_at, updated_at}",
	 "{\"request_id\": 1}", "not_found (ENOENT)."},
	{"merge.main.acquire_lock", acquire_lock, ORCH_M_WRITE, acquire_params,
	 "Take the global main merge lock for ttl_seconds, or renew it when the caller holds it. An expired lease "
	 "is free to take.",
	 "the lock {holder_session_id, lease_until, state: locked, updated_at}",
	 "{\"session_id\": 1, \"ttl_seconds\": 300}",
	 "conflict (EBUSY: another session holds it; details.lock), invalid_state (EINVAL: session closed), "
	 "not_found (ENOENT: no such session), invalid_params (EINVAL: ttl_seconds)."},
	{"merge.main.release_lock", release_lock, ORCH_M_WRITE, sid_params,
	 "Release the main merge lock: the holder may, anyone may once its lease ended; releasing a free lock "
	 "changes nothing. session.close releases the session's lock too.",
	 "the lock {state: unlocked, updated_at}", "{\"session_id\": 1}",
	 "forbidden (EPERM: another session holds it and its lease has not ended; details.lock), invalid_state "
	 "(EINVAL: session closed), not_found (ENOENT)."},
	{"merge.main.run", main_run, ORCH_M_WRITE, run_params,
	 "Merge a queued request's branch into its target (the oldest queued unless request_id): computed in memory, "
	 "fast-forward when possible else a merge commit; the target ref moves only if it still points where the "
	 "merge started; if the target is checked out in the main worktree, that checkout is updated, only when "
	 "clean. The caller must hold the main merge lock, and the request must be its own. It runs through a daemon "
	 "on the host of the request's worktree (whose repository has its branch).",
	 "the queue item, state merged, merged_commit, with fast_forward and uncommitted (the source worktree's "
	 "uncommitted paths, which were not merged)",
	 "{\"session_id\": 1}",
	 "forbidden (EPERM: the caller does not hold the main merge lock, or the request is another session's), "
	 "conflict (EBUSY: the merge conflicts, "
	 "details.paths; the request becomes failed and the message says how to resolve; or the target moved "
	 "meanwhile: run again), invalid_state (EINVAL: not queued (details.state), main checkout dirty "
	 "(details.state dirty, details.paths; nothing moves, it stays queued), nothing to merge, the request's "
	 "worktree is on another host: run it through a daemon there (details.state other_host)), not_found "
	 "(ENOENT: no such request, empty queue). Errors carry details.uncommitted when the source has uncommitted "
	 "paths."},
	{"merge.main.cancel", main_cancel, ORCH_M_WRITE, cancel_params,
	 "Cancel a queued main-merge request of the caller's.",
	 "the queue item, state cancelled", "{\"session_id\": 1, \"request_id\": 2}",
	 "forbidden (EPERM: another session's request), invalid_state (EINVAL: not queued; details.state), "
	 "not_found (ENOENT)."},
	{NULL, NULL, 0, NULL, NULL, NULL, NULL, NULL},
};
