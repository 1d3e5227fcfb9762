/*
 * Worktrees: create (planned or on disk), spawn a child of a worktree,
 * merge a child into its parent, abandon a child, and the start-up
 * reconciliation of records with the disk.
 *
 * Git effects come last in every method, after all validation and all
 * checks that read the database, and each registers an undo; so a call
 * either commits with its git effects or leaves neither.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "orchfs/core.h"
#include "groups.h"
#include "orchfs/git.h"
#include "gitfx.h"

#define RETIRED_SUFFIX ".orchfs-removing"

static const char *wt_str(json_t *wt, const char *key)
{
	const char *s = json_string_value(json_object_get(wt, key));

	return s ? s : "";
}

static int64_t wt_int(json_t *wt, const char *key)
{
	return json_integer_value(json_object_get(wt, key));
}

static bool is_dir(const char *path)
{
	struct stat sb;

	return stat(path, &sb) == 0 && S_ISDIR(sb.st_mode);
}

/*
 * The one place that says whether a worktree is this daemon's to touch: its
 * checkout and branch are in the repository of the host that made it, so a
 * daemon elsewhere must not look at its directory (a path that does not
 * exist here is not a missing worktree) nor move its branch.
 */
int orch_worktree_local(orch_ctx *ctx, json_t *wt)
{
	const char *host = wt_str(wt, "host");

	if (strcmp(host, ctx->host) == 0)
		return 0;
	if (*host)
		orch_error_set(ORCH_EINVALID_STATE, "worktree %lld is on host \"%s\"; call this through a daemon on "
			       "that host (orchfs mount --host %s)", (long long)wt_int(wt, "id"), host, host);
	else
		orch_error_set(ORCH_EINVALID_STATE, "worktree %lld is on the unnamed host (a daemon mounted without "
			       "--host); call this through a daemon on that host", (long long)wt_int(wt, "id"));
	orch_error_detail("state", json_string("other_host"));
	return ORCH_EINVALID_STATE;
}

/*
 * A worktree a method touches (on this host: orch_worktree_local was
 * asked).  *gone is true when it has no directory.
 * An active worktree whose directory vanished becomes `missing`, in the
 * database and in `wt` (SPEC 6.6).  The main worktree is never missing:
 * it is the repository orchfs serves.
 */
static int touch(orch_ctx *ctx, json_t *wt, bool *gone)
{
	*gone = !is_dir(wt_str(wt, "path"));
	if (!*gone || strcmp(wt_str(wt, "status"), "active") != 0 || strcmp(wt_str(wt, "kind"), "main") == 0)
		return 0;
	json_object_set_new(wt, "status", json_string("missing"));
	return orch_sql_exec(ctx, "UPDATE worktrees SET status = 'missing' WHERE id = ?", "i", wt_int(wt, "id"));
}

/*
 * Who may merge or abandon a worktree: its owner, or the owner of its
 * parent (the session whose branch receives the work, e.g. after taking
 * over a session root).  A worktree without owner is anyone's.
 */
static int check_owner(json_t *wt, json_t *parent, int64_t sid)
{
	int64_t owner = wt_int(wt, "owner_session_id");

	if (owner == 0 || owner == sid || (parent && wt_int(parent, "owner_session_id") == sid))
		return 0;
	return orch_error_set(ORCH_EFORBIDDEN, "worktree %lld belongs to session %lld, not %lld",
			      (long long)wt_int(wt, "id"), (long long)owner, (long long)sid);
}

/* invalid_state "<what>" with details.state = the worktree's status. */
static int bad_state(json_t *wt, const char *why)
{
	orch_error_set(ORCH_EINVALID_STATE, "worktree %lld is %s: %s", (long long)wt_int(wt, "id"),
		       wt_str(wt, "status"), why);
	orch_error_detail("state", json_string(wt_str(wt, "status")));
	return ORCH_EINVALID_STATE;
}

/* Children that are neither merged nor abandoned block merging and abandoning their parent. */
static int check_no_live_children(orch_ctx *ctx, json_t *wt, const char *verb)
{
	orch_stmt *st = orch_sql(ctx, "SELECT id FROM worktrees WHERE parent_worktree_id = ? "
				    "AND status NOT IN ('closed', 'abandoned') ORDER BY id", "i", wt_int(wt, "id"));
	json_t *ids = json_array();
	int rc;

	if (!st) {
		json_decref(ids);
		return ORCH_EINTERNAL;
	}
	while ((rc = orch_sql_step(ctx, st)) == ORCH_ROW)
		json_array_append_new(ids, json_integer(orch_stmt_column_int64(st, 0)));
	orch_stmt_reset(st);
	if (rc != ORCH_DONE) {
		json_decref(ids);
		return ORCH_EINTERNAL;
	}
	if (json_array_size(ids) == 0) {
		json_decref(ids);
		return 0;
	}
	char *list = json_dumps(ids, JSON_COMPACT);
	orch_error_set(ORCH_EINVALID_STATE, "cannot %s worktree %lld: its child worktrees %s are neither merged "
		       "nor abandoned", verb, (long long)wt_int(wt, "id"), list ? list : "");
	free(list);
	orch_error_detail("children", ids);
	return ORCH_EINVALID_STATE;
}

/*
 * Main is reached only through the main-merge queue (SPEC 7.2): no child
 * of the main worktree, and no merge into its branch, whatever record
 * carries it.  forbidden, naming merge.main.request.
 */
static int check_not_main(orch_ctx *ctx, json_t *wt, const char *verb)
{
	int64_t main_id = 0;
	bool found = false;
	int rc;

	if (strcmp(wt_str(wt, "kind"), "main") != 0) {
		rc = orch_sql_int(ctx, &main_id, &found, "SELECT id FROM worktrees WHERE kind = 'main' AND host = ? "
				  "AND path = ? AND branch = ?", "sss", ctx->host, ctx->repo_path, wt_str(wt, "branch"));
		if (rc || !found)
			return rc;
	}
	return orch_error_set(ORCH_EFORBIDDEN, "cannot %s worktree %lld: it is (or has the branch \"%s\" of) the main "
			      "worktree, which is reached only through the main-merge queue: queue your session root "
			      "with merge.main.request, then merge.main.acquire_lock and merge.main.run",
			      verb, (long long)wt_int(wt, "id"), wt_str(wt, "branch"));
}

/* Whether s[0..n) is one or more ASCII digits. */
static bool all_digits(const char *s, size_t n)
{
	if (n == 0)
		return false;
	for (size_t i = 0; i < n; i++)
		if (s[i] < '0' || s[i] > '9')
			return false;
	return true;
}

/*
 * Branch names kept for orchfs's own defaults: session roots are
 * session/<id> and spawned children task/<session>/<id>.  A client branch
 * that is one of those, or that git would refuse beside one of them (a
 * ref cannot be both a branch and a directory of branches: `task/1` blocks
 * `task/1/3`), would make a later session.open or default spawn fail.  So
 * `session`, `session/...`, `task`, `task/<digits>` and
 * `task/<digits>/<digits>[/...]` are reserved.
 */
static bool reserved_branch(const char *b)
{
	size_t n1 = strcspn(b, "/");

	if (n1 == 7 && strncmp(b, "session", 7) == 0)
		return true;
	if (n1 != 4 || strncmp(b, "task", 4) != 0)
		return false;
	if (!b[n1])
		return true;
	const char *c2 = b + n1 + 1;
	size_t n2 = strcspn(c2, "/");
	if (!all_digits(c2, n2))
		return false;
	if (!c2[n2])
		return true;
	return all_digits(c2 + n2 + 1, strcspn(c2 + n2 + 1, "/"));
}

/*
 * Paths below <state>/worktrees/ kept for orchfs: a first component
 * session-<digits> (session roots) or task-<digits>-<digits> (default
 * spawns), and any component ending in .orchfs-removing (where an abandon
 * sets a checkout aside until its call commits).
 */
static bool reserved_path(const char *rel)
{
	size_t n1 = strcspn(rel, "/"), sl = strlen(RETIRED_SUFFIX);

	if (n1 > 8 && strncmp(rel, "session-", 8) == 0 && all_digits(rel + 8, n1 - 8))
		return true;
	if (n1 > 5 && strncmp(rel, "task-", 5) == 0) {
		const char *dash = memchr(rel + 5, '-', n1 - 5);
		if (dash && all_digits(rel + 5, (size_t)(dash - rel - 5)) &&
		    all_digits(dash + 1, n1 - (size_t)(dash + 1 - rel)))
			return true;
	}
	for (const char *c = rel;; c++) {
		size_t n = strcspn(c, "/");
		if (n >= sl && strncmp(c + n - sl, RETIRED_SUFFIX, sl) == 0)
			return true;
		c += n;
		if (!*c)
			return false;
	}
}

/*
 * A branch for a new worktree: a valid git branch name that no branch in
 * git and no planned worktree already has.
 */
static int check_branch(orch_ctx *ctx, const char *branch)
{
	int64_t other;
	bool found;
	int rc;

	if (!orch_git_branch_name_valid(branch))
		return orch_error_set(ORCH_EINVALID_PARAMS, "branch \"%s\" is not a valid git branch name", branch);
	if (orch_git_branch_exists(ctx->git, branch))
		return orch_error_set(ORCH_EEXISTS, "branch \"%s\" already exists (or clashes with an existing "
				      "branch)", branch);
	rc = orch_sql_int(ctx, &other, &found, "SELECT id FROM worktrees WHERE branch = ? AND status = 'planned'",
			  "s", branch);
	if (rc)
		return rc;
	if (found)
		return orch_error_set(ORCH_EEXISTS, "branch \"%s\" is already planned by worktree %lld", branch,
				      (long long)other);
	return 0;
}

/* The default directory name for a branch: '/' and ' ' become '-'. */
static char *sanitised(const char *branch)
{
	char *s = strdup(branch);

	for (char *c = s; *c; c++)
		if (*c == '/' || *c == ' ')
			*c = '-';
	return s;
}

/*
 * The absolute directory of a new worktree: `rel` (a normalised relative
 * path) below <state>/worktrees/.  It must name a directory strictly below
 * it, reached through real directories only (no symlink can lead it out),
 * not inside another checkout, not existing yet and not reserved by a
 * planned or missing worktree.
 */
static int worktree_path(orch_ctx *ctx, const char *rel, char **out)
{
	char *full = NULL;
	size_t base_len, n = strlen(rel);
	struct stat sb;
	int64_t other;
	bool found;
	int rc = 0;

	*out = NULL;
	if (strcmp(rel, ".") == 0)
		return orch_error_set(ORCH_EINVALID_PARAMS, "path must name a directory below %s/worktrees, got \".\"",
				      ctx->state_dir);
	if (asprintf(&full, "%s/worktrees/%s", ctx->state_dir, rel) < 0)
		return orch_error_set(ORCH_EINTERNAL, "out of memory");
	base_len = strlen(full) - n;
	/* Every existing ancestor below worktrees/ must be a real directory and not a checkout. */
	for (char *c = full + base_len; (c = strchr(c, '/')) != NULL; c++) {
		*c = '\0';
		int e = lstat(full, &sb) == 0 ? 0 : errno;
		bool checkout = false;
		if (e == 0 && S_ISDIR(sb.st_mode)) {
			char *dotgit;
			if (asprintf(&dotgit, "%s/.git", full) >= 0) {
				checkout = lstat(dotgit, &sb) == 0;
				free(dotgit);
			}
		}
		if (e == ENOENT) {
			*c = '/';
			break;
		}
		if (e)
			rc = orch_error_set(ORCH_EINVALID_PARAMS, "path \"%s\": %s: %s", rel, full, strerror(e));
		else if (!S_ISDIR(sb.st_mode) && !checkout)
			rc = orch_error_set(ORCH_EINVALID_PARAMS, "path \"%s\": %s is not a directory", rel, full);
		else if (checkout)
			rc = orch_error_set(ORCH_EINVALID_PARAMS, "path \"%s\" is inside the checkout at %s", rel, full);
		*c = '/';
		if (rc)
			goto fail;
	}
	if (lstat(full, &sb) == 0) {
		rc = orch_error_set(ORCH_EEXISTS, "worktree path %s already exists", full);
		goto fail;
	}
	if (errno != ENOENT) {
		rc = orch_error_set(ORCH_EINVALID_PARAMS, "path \"%s\": %s", rel, strerror(errno));
		goto fail;
	}
	/* An earlier checkout there is still set aside: its removal (or put-back) is not finished. */
	char *trash = orch_git_retired_path(full);
	bool aside = trash && lstat(trash, &sb) == 0;
	free(trash);
	if (aside) {
		rc = orch_error_set(ORCH_EEXISTS, "worktree path %s is still being removed (%s%s is there; the next "
				    "start-up finishes it)", full, full, RETIRED_SUFFIX);
		goto fail;
	}
	rc = orch_sql_int(ctx, &other, &found, "SELECT id FROM worktrees WHERE path = ? "
			  "AND status IN ('planned', 'missing')", "s", full);
	if (rc)
		goto fail;
	if (found) {
		rc = orch_error_set(ORCH_EEXISTS, "worktree path %s is reserved by worktree %lld", full,
				    (long long)other);
		goto fail;
	}
	*out = full;
	return 0;
fail:
	free(full);
	return rc;
}

/*
 * The path for a new worktree: the client's `path` or the sanitised branch.
 * Unless the path is orchfs's own default (`ours`: the sanitised default
 * branch of a spawn), it must not be one reserved_path() keeps for orchfs.
 */
static int new_path(orch_ctx *ctx, json_t *p, const char *branch, bool ours, char **out)
{
	const char *rel = orch_param_str(p, "path", NULL);
	char *dflt = NULL;
	int rc;

	*out = NULL;
	if (rel)
		ours = false;
	else
		rel = dflt = sanitised(branch);
	if (!ours && reserved_path(rel))
		rc = orch_error_set(ORCH_EINVALID_PARAMS, "path \"%s\" is reserved for orchfs (session-<n>, "
				    "task-<n>-<n> and names ending in %s)%s", rel, RETIRED_SUFFIX,
				    dflt ? "; give another path" : "");
	else
		rc = worktree_path(ctx, rel, out);
	free(dflt);
	return rc;
}

/* A branch a client names: not reserved for orchfs, valid and free. */
static int check_client_branch(orch_ctx *ctx, const char *branch)
{
	if (reserved_branch(branch))
		return orch_error_set(ORCH_EINVALID_PARAMS, "branch \"%s\" is reserved for orchfs (session, "
				      "session/..., task, task/<n> and task/<n>/<n>/...)", branch);
	return check_branch(ctx, branch);
}

/*
 * A parent whose record names no branch: the main worktree on a detached
 * HEAD ("HEAD" as older versions recorded it).  Nothing can be spawned from
 * or merged into it until it is on a branch again: invalid_state saying so.
 */
static int detached_parent(json_t *parent, const char *what)
{
	const char *b = wt_str(parent, "branch");

	if (*b && strcmp(b, "HEAD") != 0)
		return 0;
	orch_error_set(ORCH_EINVALID_STATE, "worktree %lld (%s) is on a detached HEAD, not a branch: nothing can "
		       "be %s it; check out a branch there (git switch <branch>) and open the session again",
		       (long long)wt_int(parent, "id"), wt_str(parent, "path"), what);
	orch_error_detail("state", json_string("detached"));
	return ORCH_EINVALID_STATE;
}

static int check_task(orch_ctx *ctx, int64_t task_id)
{
	json_t *t = NULL;
	int rc;

	if (task_id == 0)
		return 0;
	rc = orch_task_json(ctx, task_id, &t);
	json_decref(t);
	return rc;
}

/* Make the record's checkout: branch `branch` at commit `base_hex`, at `path`. */
static int add_on_disk(orch_ctx *ctx, const char *path, const char *branch, const char *base_hex)
{
	char *root = NULL, *name = NULL;
	orch_git_effect *fx;
	int rc;

	if (asprintf(&root, "%s/worktrees", ctx->state_dir) < 0 ||
	    (name = orch_git_worktree_name_in(root, path)) == NULL) {
		free(root);
		return orch_error_set(ORCH_EINTERNAL, "out of memory");
	}
	if ((rc = orch_git_worktree_add(ctx->git, name, path, branch, base_hex, &fx)) == 0)
		orch_txn_git(ctx, fx);
	free(name);
	free(root);
	return rc;
}

static int worktree_create(orch_ctx *ctx, json_t *p, json_t **result)
{
	const char *branch = orch_param_str(p, "branch", "");
	const char *base = orch_param_str(p, "base_ref", "HEAD");
	bool on_disk = orch_param_bool(p, "create_on_disk", false);
	int64_t task_id = orch_param_int(p, "task_id", 0), id;
	char hex[ORCH_GIT_HEX_SIZE], *path = NULL;
	int rc;

	if ((rc = check_task(ctx, task_id)) != 0 || (rc = check_client_branch(ctx, branch)) != 0 ||
	    (rc = new_path(ctx, p, branch, false, &path)) != 0 || (rc = orch_git_resolve_commit(ctx->git, base, hex)) != 0)
		goto done;
	rc = orch_sql_exec(ctx, "INSERT INTO worktrees (task_id, path, branch, status, kind, merge_state, created_at, "
			   "host) VALUES (?, ?, ?, ?, 'task_branch', 'active', ?, ?)", "isssis", task_id, path, branch,
			   on_disk ? "active" : "planned", ctx->now, ctx->host);
	if (rc)
		goto done;
	id = orch_last_id(ctx);
	if (on_disk && (rc = add_on_disk(ctx, path, branch, hex)) != 0)
		goto done;
	rc = orch_worktree_json(ctx, id, result);
done:
	free(path);
	return rc;
}

/*
 * Before a default spawn takes branch `branch` at its default path: ids of
 * rolled-back calls are reused, so a spawn killed between its git work and
 * its commit left exactly that branch and checkout, which no record names.
 * Take them back when nothing can be lost (see orch_git_worktree_reclaim;
 * the child's base is its parent's branch).
 */
static int reclaim_default(orch_ctx *ctx, json_t *parent, const char *branch)
{
	char *rel = sanitised(branch), *path = NULL, *base = NULL;
	int64_t other;
	bool found;
	int rc = 0;

	if (asprintf(&path, "%s/worktrees/%s", ctx->state_dir, rel) < 0 ||
	    asprintf(&base, "refs/heads/%s", wt_str(parent, "branch")) < 0) {
		rc = orch_error_set(ORCH_EINTERNAL, "out of memory");
		goto done;
	}
	if ((rc = orch_sql_int(ctx, &other, &found, "SELECT id FROM worktrees WHERE path = ?", "s", path)) != 0)
		goto done;
	if (!found && orch_git_worktree_reclaim(ctx->git, path, branch, base, true))
		orch_log("took back what an interrupted worktree.spawn left at %s (branch %s)", path, branch);
done:
	free(base);
	free(path);
	free(rel);
	return rc;
}

/*
 * A child of a worktree, owned by the caller.  The default branch is
 * task/<session_id>/<worktree_id>, known only once the row exists, so the
 * row is inserted first and completed after the checkout is made.
 */
static int worktree_spawn(orch_ctx *ctx, json_t *p, json_t **result)
{
	int64_t sid = orch_param_int(p, "session_id", 0), pid = orch_param_int(p, "parent_worktree_id", 0);
	int64_t task_id = orch_param_int(p, "task_id", 0), id;
	const char *given = orch_param_str(p, "branch", NULL), *base = orch_param_str(p, "base_ref", NULL);
	bool on_disk = orch_param_bool(p, "create_on_disk", true), gone;
	char hex[ORCH_GIT_HEX_SIZE] = "", dflt[64], *path = NULL;
	json_t *parent = NULL;
	int rc;

	if ((rc = orch_session_require_open(ctx, sid)) != 0)
		goto done;
	/* No parent given: the session's own root (one key less to repeat). */
	if (!pid) {
		bool found;
		if ((rc = orch_sql_int(ctx, &pid, &found, "SELECT w.id FROM sessions s JOIN worktrees w ON w.id = "
				       "s.session_root_worktree_id WHERE s.id = ? AND w.owner_session_id = s.id", "i",
				       sid)) != 0)
			goto done;
		if (!found) {
			rc = orch_error_set(ORCH_EINVALID_PARAMS, "session %lld has no session root of its own: give "
					    "parent_worktree_id", (long long)sid);
			goto done;
		}
	}
	rc = orch_worktree_json(ctx, pid, &parent);
	/* No such row, said of the parameter the client gave; any other fault keeps its code and message. */
	if (rc == ORCH_ENOTFOUND)
		rc = orch_error_set(ORCH_ENOTFOUND, "parent worktree %lld not found", (long long)pid);
	if (rc)
		goto done;
	if ((rc = check_not_main(ctx, parent, "spawn a child of")) != 0)
		goto done;
	if (wt_int(parent, "owner_session_id") && wt_int(parent, "owner_session_id") != sid) {
		rc = orch_error_set(ORCH_EFORBIDDEN, "parent worktree %lld belongs to session %lld, not %lld",
				    (long long)pid, (long long)wt_int(parent, "owner_session_id"), (long long)sid);
		goto done;
	}
	const char *pstatus = wt_str(parent, "status");
	if (strcmp(pstatus, "closed") == 0 || strcmp(pstatus, "abandoned") == 0) {
		rc = bad_state(parent, "a child needs a parent that is not merged or abandoned");
		goto done;
	}
	/* The child starts from the parent's branch and merges back into its checkout: both here. */
	if ((rc = orch_worktree_local(ctx, parent)) != 0)
		goto done;
	if ((rc = check_task(ctx, task_id)) != 0 || (given && (rc = check_client_branch(ctx, given)) != 0))
		goto done;
	if ((rc = touch(ctx, parent, &gone)) != 0)
		goto done;
	if (base || on_disk) {
		if (!base && (rc = detached_parent(parent, "spawned from")) != 0)
			goto done;
		if (!base && !orch_git_branch_exists(ctx->git, wt_str(parent, "branch"))) {
			rc = orch_error_set(ORCH_EINVALID_STATE, "parent worktree %lld's branch \"%s\" does not exist "
					    "in git yet; give base_ref", (long long)pid, wt_str(parent, "branch"));
			orch_error_detail("state", json_string(wt_str(parent, "status")));
			goto done;
		}
		/* The parent's branch by its full name: a tag or other ref named alike must not win. */
		char *pref = NULL;
		if (!base && asprintf(&pref, "refs/heads/%s", wt_str(parent, "branch")) < 0) {
			rc = orch_error_set(ORCH_EINTERNAL, "out of memory");
			goto done;
		}
		rc = orch_git_resolve_commit(ctx->git, base ? base : pref, hex);
		free(pref);
		if (rc)
			goto done;
	}
	if (given && (rc = new_path(ctx, p, given, false, &path)) != 0)
		goto done;
	rc = orch_sql_exec(ctx, "INSERT INTO worktrees (task_id, path, branch, status, kind, parent_worktree_id, "
			   "owner_session_id, merge_state, created_at, host) VALUES (?, ?, ?, ?, 'task_branch', ?, ?, "
			   "'active', ?, ?)", "isssiiis", task_id, path ? path : "", given ? given : "",
			   on_disk ? "active" : "planned", pid, sid, ctx->now, ctx->host);
	if (rc)
		goto done;
	id = orch_last_id(ctx);
	if (!given) {
		snprintf(dflt, sizeof(dflt), "task/%lld/%lld", (long long)sid, (long long)id);
		given = dflt;
		if (!orch_param_str(p, "path", NULL) && (rc = reclaim_default(ctx, parent, given)) != 0)
			goto done;
		if ((rc = check_branch(ctx, given)) != 0 || (rc = new_path(ctx, p, given, true, &path)) != 0)
			goto done;
	}
	if (on_disk && (rc = add_on_disk(ctx, path, given, hex)) != 0)
		goto done;
	rc = orch_sql_exec(ctx, "UPDATE worktrees SET branch = ?, path = ? WHERE id = ?", "ssi", given, path, id);
	if (!rc)
		rc = orch_worktree_json(ctx, id, result);
done:
	json_decref(parent);
	free(path);
	return rc;
}

/* The worktree and its parent, for merge and abandon. */
static int child_and_parent(orch_ctx *ctx, int64_t id, json_t **wt, json_t **parent)
{
	int rc;

	*parent = NULL;
	if ((rc = orch_worktree_json(ctx, id, wt)) != 0)
		return rc;
	if (!wt_int(*wt, "parent_worktree_id"))
		return 0;
	rc = orch_worktree_json(ctx, wt_int(*wt, "parent_worktree_id"), parent);
	if (rc == ORCH_ENOTFOUND) {
		orch_error_clear();
		rc = 0;
	}
	return rc;
}

/* A merge conflict's message, with how to resolve it (the details, paths, are kept). */
static void conflict_hint(json_t *wt, json_t *parent)
{
	json_t *details = json_incref(orch_error_last()->details);
	char *list = json_dumps(json_object_get(details, "paths"), JSON_COMPACT);

	orch_error_set(ORCH_ECONFLICT, "merging \"%s\" into \"%s\" conflicts in %s; nothing was changed. To resolve: "
		       "in the child's worktree at %s, merge \"%s\" into it (git merge %s), resolve the conflicts, "
		       "commit, and call worktree.merge_to_parent again", wt_str(wt, "branch"), wt_str(parent, "branch"),
		       list ? list : "", wt_str(wt, "path"), wt_str(parent, "branch"), wt_str(parent, "branch"));
	free(list);
	orch_error_details(details);
}

/*
 * Merge a child's branch into its parent's with a real merge commit, in
 * memory first (see orch_git_merge_into).  The child becomes closed /
 * merged_to_parent.  Its directory and branch are kept.
 */
static int worktree_merge(orch_ctx *ctx, json_t *p, json_t **result)
{
	int64_t sid = orch_param_int(p, "session_id", 0), id = orch_param_int(p, "worktree_id", 0);
	json_t *wt = NULL, *parent = NULL, *uncommitted = NULL;
	char hex[ORCH_GIT_HEX_SIZE];
	orch_git_effect *fx;
	bool gone;
	int rc;

	if ((rc = orch_session_require_open(ctx, sid)) != 0 || (rc = child_and_parent(ctx, id, &wt, &parent)) != 0)
		goto done;
	if (!parent) {
		rc = orch_error_set(ORCH_EINVALID_STATE, "worktree %lld has no parent to merge into", (long long)id);
		orch_error_detail("state", json_string(wt_str(wt, "status")));
		goto done;
	}
	if ((rc = check_owner(wt, parent, sid)) != 0)
		goto done;
	const char *status = wt_str(wt, "status");
	if (strcmp(status, "closed") == 0 || strcmp(wt_str(wt, "merge_state"), "merged_to_parent") == 0) {
		rc = orch_error_set(ORCH_EINVALID_STATE, "worktree %lld is already merged into worktree %lld",
				    (long long)id, (long long)wt_int(parent, "id"));
		orch_error_detail("state", json_string("merged_to_parent"));
		goto done;
	}
	if (strcmp(status, "abandoned") == 0 || strcmp(status, "planned") == 0) {
		rc = bad_state(wt, "there is nothing to merge");
		goto done;
	}
	if ((rc = check_not_main(ctx, parent, "merge into")) != 0)
		goto done;
	const char *pstatus = wt_str(parent, "status");
	if (strcmp(pstatus, "active") != 0 && strcmp(pstatus, "missing") != 0) {
		rc = bad_state(parent, "it cannot receive a merge");
		goto done;
	}
	if ((rc = orch_worktree_local(ctx, wt)) != 0 || (rc = orch_worktree_local(ctx, parent)) != 0)
		goto done;
	if ((rc = detached_parent(parent, "merged into")) != 0 || (rc = check_no_live_children(ctx, wt, "merge")) != 0 ||
	    (rc = touch(ctx, wt, &gone)) != 0 || (rc = touch(ctx, parent, &gone)) != 0)
		goto done;
	/*
	 * A merge that moved the parent's branch but died before its commit
	 * left exactly this merge commit at the tip: record it, as the call
	 * would have.  Anything else already in the parent is nothing new.
	 */
	/* What the merge leaves behind, told in the reply (or the error's details.uncommitted). */
	uncommitted = orch_uncommitted_paths(wt_str(wt, "path"));
	if (!orch_git_merged_at_tip(ctx->git, wt_str(parent, "branch"), wt_str(wt, "branch"), hex)) {
		rc = orch_git_merge_into(ctx->git, wt_str(parent, "branch"), gone ? NULL : wt_str(parent, "path"),
					 wt_str(wt, "branch"), hex, &fx);
		if (rc == ORCH_ECONFLICT && json_object_get(orch_error_last()->details, "paths"))
			conflict_hint(wt, parent);
		if (rc) {
			if (json_array_size(uncommitted))
				orch_error_detail_add("uncommitted", json_incref(uncommitted));
			goto done;
		}
		orch_txn_git(ctx, fx);
	}
	rc = orch_sql_exec(ctx, "UPDATE worktrees SET status = 'closed', merge_state = 'merged_to_parent', "
			   "merged_at = ?, merge_commit = ? WHERE id = ?", "isi", ctx->now, hex, id);
	if (rc)
		goto done;
	json_decref(wt);
	json_decref(parent);
	parent = NULL;
	if ((rc = orch_worktree_json(ctx, id, &wt)) != 0 ||
	    (rc = orch_worktree_json(ctx, wt_int(wt, "parent_worktree_id"), &parent)) != 0)
		goto done;
	*result = json_pack("{s:O, s:O, s:s, s:s, s:O}", "child_worktree", wt, "parent_worktree", parent, "result",
			    "merged_to_parent", "merge_commit", hex, "uncommitted", uncommitted);
done:
	json_decref(uncommitted);
	json_decref(wt);
	json_decref(parent);
	return rc;
}

/*
 * Abandon a child that should no longer block its parent: planned, or on
 * disk without uncommitted changes (untracked files count), or missing.
 * Its checkout and git's metadata go; its branch stays.
 */
static int worktree_abandon(orch_ctx *ctx, json_t *p, json_t **result)
{
	int64_t sid = orch_param_int(p, "session_id", 0), id = orch_param_int(p, "worktree_id", 0);
	json_t *wt = NULL, *parent = NULL, *dirty = NULL;
	orch_git_effect *fx = NULL;
	bool gone;
	int rc;

	if ((rc = orch_session_require_open(ctx, sid)) != 0 || (rc = child_and_parent(ctx, id, &wt, &parent)) != 0)
		goto done;
	if ((rc = check_owner(wt, parent, sid)) != 0)
		goto done;
	/* A task worktree: a spawned child, or one worktree.create made (no owner: anyone may abandon it). */
	if (strcmp(wt_str(wt, "kind"), "task_branch") != 0) {
		rc = orch_error_set(ORCH_EINVALID_STATE, "worktree %lld is a %s worktree, not a task worktree; "
				    "only those can be abandoned", (long long)id,
				    *wt_str(wt, "kind") ? wt_str(wt, "kind") : "parentless");
		orch_error_detail("state", json_string(wt_str(wt, "status")));
		goto done;
	}
	const char *status = wt_str(wt, "status");
	if (strcmp(status, "closed") == 0 || strcmp(status, "abandoned") == 0) {
		rc = bad_state(wt, "only planned, active or missing worktrees can be abandoned");
		goto done;
	}
	if ((rc = check_no_live_children(ctx, wt, "abandon")) != 0 || (rc = orch_worktree_local(ctx, wt)) != 0 ||
	    (rc = touch(ctx, wt, &gone)) != 0)
		goto done;
	bool remove = strcmp(wt_str(wt, "status"), "active") == 0 && !gone;
	if (remove) {
		if ((rc = orch_git_dirty_paths(wt_str(wt, "path"), true, &dirty)) != 0)
			goto done;
		if (json_array_size(dirty)) {
			char *list = json_dumps(dirty, JSON_COMPACT);
			orch_error_set(ORCH_EINVALID_STATE, "worktree %lld at %s has uncommitted changes: %s; commit "
				       "or discard them first", (long long)id, wt_str(wt, "path"), list ? list : "");
			free(list);
			orch_error_details(json_pack("{s:s, s:O}", "state", "dirty", "paths", dirty));
			rc = ORCH_EINVALID_STATE;
			goto done;
		}
	}
	rc = orch_sql_exec(ctx, "UPDATE worktrees SET status = 'abandoned', merge_state = 'abandoned' WHERE id = ?",
			   "i", id);
	if (rc)
		goto done;
	if (remove)
		rc = orch_git_worktree_retire(ctx->git, wt_str(wt, "path"), &fx);
	else if (strcmp(wt_str(wt, "status"), "missing") == 0) /* stale metadata, a set-aside leftover */
		rc = orch_git_retire_after_commit(ctx->git, wt_str(wt, "path"), &fx);
	if (rc)
		goto done;
	if (fx)
		orch_txn_git(ctx, fx);
	rc = orch_worktree_json(ctx, id, result);
done:
	json_decref(dirty);
	json_decref(wt);
	json_decref(parent);
	return rc;
}

/*
 * The default checkout directory (relative to <state>/worktrees/) of one of
 * orchfs's own branch names, session/<n> -> session-<n> and task/<s>/<w> ->
 * task-<s>-<w>, or false for any other name.
 */
static int reclaim_unnamed(orch_ctx *ctx, json_t *log);

static bool default_dir_of(const char *branch, char *out, size_t size)
{
	unsigned long long a, b;
	char rest;

	if (sscanf(branch, "session/%llu%c", &a, &rest) == 1 && strspn(branch + 8, "0123456789") == strlen(branch + 8))
		return snprintf(out, size, "session-%llu", a) < (int)size;
	if (sscanf(branch, "task/%llu/%llu%c", &a, &b, &rest) == 2) {
		char canon[96];
		snprintf(canon, sizeof(canon), "task/%llu/%llu", a, b);
		return strcmp(canon, branch) == 0 && snprintf(out, size, "task-%llu-%llu", a, b) < (int)size;
	}
	return false;
}

/*
 * Start-up: take back what calls killed between their git work and their
 * commit left under orchfs's own names (see orch_git_worktree_reclaim):
 * orchfs-* worktrees no record names, and branches session/<n> and
 * task/<s>/<w> (with their default directories) no record names.
 */
static int reclaim_leftovers(orch_ctx *ctx, json_t *log)
{
	json_t *branches = NULL, *b;
	size_t k;
	int rc;

	orch_git_drop_reserved_ref_locks(ctx->git, log);
	orch_git_clear_dead_inflight(ctx->git, log);
	if ((rc = orch_git_branches(ctx->git, &branches)) != 0)
		goto out;
	json_array_foreach(branches, k, b) {
		const char *branch = json_string_value(b);
		char dir[128], *path = NULL;
		int64_t other;
		bool found;
		if (!default_dir_of(branch, dir, sizeof(dir)))
			continue;
		if ((rc = orch_sql_int(ctx, &other, &found, "SELECT id FROM worktrees WHERE branch = ?", "s",
				       branch)) != 0)
			goto out;
		if (found || asprintf(&path, "%s/worktrees/%s", ctx->state_dir, dir) < 0)
			continue;
		if ((rc = orch_sql_int(ctx, &other, &found, "SELECT id FROM worktrees WHERE path = ?", "s", path)) == 0 &&
		    !found && orch_git_worktree_reclaim(ctx->git, path, branch, NULL, true))
			json_array_append_new(log, json_sprintf("took back branch %s (%s) left by an interrupted call",
								branch, path));
		free(path);
		if (rc)
			goto out;
	}
	rc = reclaim_unnamed(ctx, log);
out:
	json_decref(branches);
	return rc;
}

/*
 * Start-up: orchfs worktrees under <state>/worktrees/ that no record names
 * were left by calls killed between their git work and their commit.  They
 * are removed, branch included, when nothing can be lost: a clean checkout
 * whose branch has no commit that every other branch lacks.  Others stay.
 */
static int reclaim_unnamed(orch_ctx *ctx, json_t *log)
{
	json_t *wts = NULL, *w;
	char *root = NULL;
	size_t i, n;
	int rc;

	if ((rc = orch_git_orchfs_worktrees(ctx->git, &wts)) != 0)
		goto done;
	if (asprintf(&root, "%s/worktrees/", ctx->state_dir) < 0) {
		root = NULL;
		rc = orch_error_set(ORCH_EINTERNAL, "out of memory");
		goto done;
	}
	n = strlen(root);
	json_array_foreach(wts, i, w) {
		const char *path = wt_str(w, "path"), *branch = wt_str(w, "branch");
		int64_t other;
		bool found;
		if (strncmp(path, root, n) != 0)
			continue;
		if ((rc = orch_sql_int(ctx, &other, &found, "SELECT id FROM worktrees WHERE path = ?", "s", path)) != 0)
			goto done;
		if (!found && orch_git_worktree_reclaim(ctx->git, path, branch, NULL, false))
			json_array_append_new(log, json_sprintf("removed %s (%s, branch %s): no record names it and "
								"nothing on it was lost", wt_str(w, "name"), path, branch));
	}
done:
	free(root);
	json_decref(wts);
	return rc;
}

/*
 * Start-up: checkouts set aside as leftovers (orch_git_leftovers) holding
 * nothing but files git had not yet written are removed; the others are
 * kept, and named in the log (and by `orchfs check`).
 */
static int clean_set_aside(orch_ctx *ctx, json_t *log)
{
	json_t *kept = NULL, *k;
	char *root = NULL;
	size_t i;
	int rc;

	if (asprintf(&root, "%s/worktrees", ctx->state_dir) < 0)
		return orch_error_set(ORCH_EINTERNAL, "out of memory");
	rc = orch_git_leftovers(ctx->git, root, true, &kept, log);
	json_array_foreach(kept, i, k)
		json_array_append_new(log, json_sprintf("kept leftover %s: it holds changes git did not write "
							"(see orchfs check)", json_string_value(json_object_get(k, "path"))));
	json_decref(kept);
	free(root);
	return rc;
}

/*
 * Start-up: compare every worktree record of this host (ctx->host) with the
 * disk, in one transaction that bumps db_version only if a record changed.
 * Records of other hosts are never looked at: their directories are on
 * their own machines.  What git holds that no record names is taken back
 * only when no record of ANY host names it (a branch or path another host
 * records is never this host's to remove, even on a shared disk).
 *  - active or missing, directory gone but set aside by an abandon that
 *    did not commit: put back (and `active` again);
 *  - active, directory gone: `missing`;
 *  - missing, directory back as a checkout: `active` again;
 *  - abandoned, set-aside directory still there (interrupted after its
 *    commit): deleted;
 *  - orchfs worktrees that no record names: removed if nothing is lost;
 *  - leftovers set aside: detached from git, removed if they hold no user work;
 *  - git metadata of orchfs worktrees whose directory is gone: pruned.
 * *log receives one line per finding and a summary line.
 */
int orch_worktree_reconcile(orch_ctx *ctx, json_t **log)
{
	json_t *rows = NULL, *row;
	int changed = 0, ok = 0, rc;
	size_t i;

	*log = json_array();
	ctx->now = orch_now_ms();
	if ((rc = orch_store_begin(ctx->store, true)) != 0)
		return rc;
	size_t mark = orch_store_changes_mark(ctx->store);
	/* This host's records only: another host's directory is on its own machine, not missing here. */
	rc = orch_sql_rows(ctx, &rows, "SELECT id, path, status FROM worktrees WHERE kind IS NOT 'main' "
			   "AND host = ? AND status IN ('active', 'missing', 'abandoned') ORDER BY id", "s", ctx->host);
	if (rc)
		goto fail;
	json_array_foreach(rows, i, row) {
		const char *path = wt_str(row, "path"), *status = wt_str(row, "status");
		int64_t id = wt_int(row, "id");
		char *trash = orch_git_retired_path(path), *dotgit = NULL;
		bool here = is_dir(path), aside = trash && is_dir(trash);

		if (strcmp(status, "abandoned") == 0) {
			if (aside) {
				orch_git_retire_finish(ctx->git, path);
				json_array_append_new(*log, json_sprintf("worktree %lld (%s): finished removing it",
									 (long long)id, path));
			}
		} else if (!here && aside && orch_git_put_back(ctx->git, path) == 0) {
			/* active, or marked missing by a later call while it was aside */
			json_array_append_new(*log, json_sprintf("worktree %lld (%s): put back (an abandon did not "
								 "complete)", (long long)id, path));
			if (strcmp(status, "missing") == 0) {
				rc = orch_sql_exec(ctx, "UPDATE worktrees SET status = 'active' WHERE id = ?", "i", id);
				changed++;
			} else {
				ok++;
			}
		} else if (strcmp(status, "active") == 0 && !here) {
			rc = orch_sql_exec(ctx, "UPDATE worktrees SET status = 'missing' WHERE id = ?", "i", id);
			json_array_append_new(*log, json_sprintf("worktree %lld (%s) missing", (long long)id, path));
			changed++;
		} else if (strcmp(status, "missing") == 0 && here && asprintf(&dotgit, "%s/.git", path) >= 0 &&
			   access(dotgit, F_OK) == 0) {
			rc = orch_sql_exec(ctx, "UPDATE worktrees SET status = 'active' WHERE id = ?", "i", id);
			json_array_append_new(*log, json_sprintf("worktree %lld (%s) is back: active", (long long)id,
								 path));
			changed++;
		} else if (strcmp(status, "active") == 0) {
			ok++;
		}
		free(dotgit);
		free(trash);
		if (rc)
			goto fail;
	}
	if ((rc = reclaim_leftovers(ctx, *log)) != 0 || (rc = clean_set_aside(ctx, *log)) != 0 ||
	    (rc = orch_git_prune_stale(ctx->git, *log)) != 0)
		goto fail;
	if (changed) {
		rc = orch_sql_exec(ctx, "UPDATE mirror_meta SET db_version = db_version + 1, updated_at = ? "
				   "WHERE id = 1", "i", ctx->now);
		if (!rc)
			rc = orch_event_record(ctx, "reconcile", 0, mark);
		if (rc || (rc = orch_store_commit(ctx->store)) != 0)
			goto fail;
	} else {
		orch_store_rollback(ctx->store);
	}
	json_array_append_new(*log, json_sprintf("%d worktrees ok, %d changed", ok, changed));
	json_decref(rows);
	return 0;
fail:
	if (orch_store_in_txn(ctx->store))
		orch_store_rollback(ctx->store);
	json_decref(rows);
	return rc;
}

static const orch_param create_params[] = {
	{"task_id", ORCH_P_ID, 0, "The task the worktree is for (must exist; default none, shown as 0).", NULL},
	{"branch", ORCH_P_STR, ORCH_P_REQUIRED, "New branch (a valid git branch name that does not exist).", NULL},
	{"path", ORCH_P_PATH, 0, "Directory relative to <state>/worktrees/ (default: the branch with / and "
	 "space replaced by -).", NULL},
	{"base_ref", ORCH_P_STR, 0, "Commit the branch starts at (default HEAD of the repository).", NULL},
	{"create_on_disk", ORCH_P_BOOL, 0, "Make the branch and checkout now (status active); default false "
	 "(status planned, nothing in git).", NULL},
	{NULL, 0, 0, NULL, NULL},
};
static const orch_param spawn_params[] = {
	{"session_id", ORCH_P_ID, ORCH_P_REQUIRED, "The session that will own the child.", NULL},
	{"parent_worktree_id", ORCH_P_ID, 0, "The parent (the session's own, or one without owner; default: "
	 "the session's own session root).", NULL},
	{"task_id", ORCH_P_ID, 0, "The task the worktree is for (must exist).", NULL},
	{"branch", ORCH_P_STR, 0, "New branch (default task/<session_id>/<worktree_id>).", NULL},
	{"path", ORCH_P_PATH, 0, "Directory relative to <state>/worktrees/ (default: the branch with / and "
	 "space replaced by -).", NULL},
	{"base_ref", ORCH_P_STR, 0, "Commit the branch starts at (default the parent's branch).", NULL},
	{"create_on_disk", ORCH_P_BOOL, 0, "Make the branch and checkout now (default true); false: planned.",
	 NULL},
	{NULL, 0, 0, NULL, NULL},
};
static const orch_param child_params[] = {
	{"session_id", ORCH_P_ID, ORCH_P_REQUIRED, "The calling session (owner of the worktree or its parent).",
	 NULL},
	{"worktree_id", ORCH_P_ID, ORCH_P_REQUIRED, "The child worktree.", NULL},
	{NULL, 0, 0, NULL, NULL},
};

const orch_method orch_worktree_methods[] = {
	{"worktree.create", worktree_create, ORCH_M_WRITE, create_params,
	 "Register a task worktree: planned (default), or with create_on_disk its branch and checkout are "
	 "made at once under <state>/worktrees/.",
	 "the worktree {id, task_id, path, branch, status: planned|active, kind: task_branch, merge_state, "
	 "created_at}",
	 "{\"branch\": \"feature/login\", \"create_on_disk\": true}",
	 "invalid_params (EINVAL: bad branch name or path, or one reserved for orchfs), exists (EEXIST: branch or path taken), not_found "
	 "(ENOENT: task_id or base_ref)."},
	{"worktree.spawn", worktree_spawn, ORCH_M_WRITE, spawn_params,
	 "Create a child worktree of a parent worktree, owned by the session: branch "
	 "task/<session_id>/<worktree_id> from the parent's branch, checked out under <state>/worktrees/.",
	 "the child worktree", "{\"session_id\": 1, \"parent_worktree_id\": 2}",
	 "not_found (ENOENT: session, parent, task or base_ref), forbidden (EPERM: the parent belongs to "
	 "another session, or is the main worktree: main is reached only through merge.main.request), invalid_state (EINVAL: session closed, parent merged or abandoned, parent on another host (details.state other_host)), exists (EEXIST: "
	 "branch or path taken), invalid_params (EINVAL: bad branch name or path, or one reserved for orchfs)."},
	{"worktree.merge_to_parent", worktree_merge, ORCH_M_WRITE, child_params,
	 "Merge the child's branch into its parent's branch with a merge commit (two parents), computed in "
	 "memory first; the parent's checkout is updated when it has that branch checked out. The child "
	 "becomes closed / merged_to_parent; its directory and branch are kept. Only commits are merged: "
	 "commit in the child's checkout (its path) first.",
	 "{child_worktree (keeps merge_commit), parent_worktree, result: \"merged_to_parent\", merge_commit, "
	 "uncommitted: the child's uncommitted paths, not merged}",
	 "{\"session_id\": 1, \"worktree_id\": 3}",
	 "conflict (EBUSY: the merge conflicts; details.paths; nothing changed; the message says how to "
	 "resolve), invalid_state (EINVAL: already merged, nothing new (details.state nothing_to_merge), parent "
	 "checkout dirty (details.paths), child planned or abandoned, no parent, unmerged children "
	 "(details.children), child or parent on another host (details.state other_host)), forbidden (EPERM: another session's worktree, or the parent is the main worktree: "
	 "use merge.main.request), not_found (ENOENT). Errors of the merge carry details.uncommitted."},
	{"worktree.abandon", worktree_abandon, ORCH_M_WRITE, child_params,
	 "Give up a child worktree so it no longer blocks its parent: a planned, missing, or clean active "
	 "child gets status abandoned; its checkout and git metadata are removed, its branch is kept.",
	 "the worktree, status abandoned", "{\"session_id\": 1, \"worktree_id\": 4}",
	 "invalid_state (EINVAL: uncommitted changes (details.paths), already merged or abandoned, not a child "
	 "task worktree, unmerged children, on another host (details.state other_host)), forbidden (EPERM: another "
	 "session's worktree), not_found (ENOENT)."},
	{NULL, NULL, 0, NULL, NULL, NULL, NULL, NULL},
};
