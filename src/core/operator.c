/*
 * Tools for operators, beside a live daemon.  `orchfs check`: verify the
 * store and the worktrees against git, and list leftovers, changing
 * nothing (the database is read through a query-only connection in one
 * read transaction, one snapshot; git through its own handle).  `orchfs
 * backup`: a consistent online copy of the database (SQLite's backup API).
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "orchfs/core.h"
#include "orchfs/git.h"

/* Append a problem line to the report. */
static void problem(json_t *report, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void problem(json_t *report, const char *fmt, ...)
{
	va_list ap;
	char *s = NULL;

	va_start(ap, fmt);
	if (vasprintf(&s, fmt, ap) >= 0)
		json_array_append_new(json_object_get(report, "problems"), json_string(s));
	va_end(ap);
	free(s);
}

/* The database: integrity_check, foreign_key_check, and the schema version this binary knows. */
static void check_store(orch_store *db, json_t *report)
{
	orch_stmt *st = NULL;
	int n = 0;

	if (orch_store_prepare(db, "PRAGMA integrity_check", &st) == 0) {
		while (orch_stmt_step(st) == ORCH_ROW) {
			const char *line = (const char *)orch_stmt_column_text(st, 0);
			json_object_set_new(report, "integrity", json_string(line ? line : "?"));
			if (line && strcmp(line, "ok") != 0)
				problem(report, "integrity_check: %s", line);
			if (++n > 20)
				break;
		}
	} else {
		problem(report, "integrity_check could not run: %s", orch_store_errmsg(db));
	}
	orch_stmt_finalize(st);
	if (orch_store_prepare(db, "PRAGMA foreign_key_check", &st) == 0) {
		while (orch_stmt_step(st) == ORCH_ROW)
			problem(report, "foreign key: row %lld of %s refers to a missing row of %s",
				(long long)orch_stmt_column_int64(st, 1), orch_stmt_column_text(st, 0),
				orch_stmt_column_text(st, 2));
	}
	orch_stmt_finalize(st);
}

/* Whether a record of `db` names `path` as a worktree that should be on disk or may come back. */
static bool recorded(orch_store *db, const char *path)
{
	orch_stmt *st = NULL;
	bool found = false;

	if (orch_store_prepare(db, "SELECT 1 FROM worktrees WHERE path = ?", &st) == 0) {
		orch_stmt_bind_text(st, 1, path);
		found = orch_stmt_step(st) == ORCH_ROW;
	}
	orch_stmt_finalize(st);
	return found;
}

/*
 * Records against the disk and git: an active worktree of host `host` has
 * its directory, a checkout of its branch (another host's worktrees are on
 * their own machines, never missing here); every orchfs checkout in git is
 * claimed by a record (of any host); leftovers set aside are listed.
 */
static void check_worktrees(orch_store *db, orch_git *g, const char *state, const char *host, json_t *report)
{
	json_t *wts = NULL, *left = NULL, *w;
	orch_stmt *st = NULL;
	char *root = NULL;
	size_t i;

	if (orch_store_prepare(db, "SELECT id, path, branch FROM worktrees WHERE status = 'active' "
				   "AND kind IS NOT 'main' AND host = ? ORDER BY id", &st) == 0) {
		orch_stmt_bind_text(st, 1, host);
		while (orch_stmt_step(st) == ORCH_ROW) {
			const char *path = (const char *)orch_stmt_column_text(st, 1);
			const char *branch = (const char *)orch_stmt_column_text(st, 2);
			char *dotgit = NULL;
			struct stat sb;
			if (asprintf(&dotgit, "%s/.git", path) >= 0 && lstat(dotgit, &sb) < 0)
				problem(report, "worktree %lld is active but %s is not a checkout (missing)",
					(long long)orch_stmt_column_int64(st, 0), path);
			else if (!orch_git_branch_exists(g, branch))
				problem(report, "worktree %lld: its branch %s does not exist",
					(long long)orch_stmt_column_int64(st, 0), branch);
			free(dotgit);
		}
	}
	orch_stmt_finalize(st);
	if (orch_git_orchfs_worktrees(g, &wts) == 0) {
		json_array_foreach(wts, i, w) {
			const char *path = json_string_value(json_object_get(w, "path"));
			if (!recorded(db, path))
				problem(report, "git worktree %s (%s, branch %s) is named by no record",
					json_string_value(json_object_get(w, "name")), path,
					json_string_value(json_object_get(w, "branch")));
		}
	}
	json_decref(wts);
	if (asprintf(&root, "%s/worktrees", state) >= 0 && orch_git_leftovers(g, root, false, &left, NULL) == 0) {
		json_object_set(report, "leftovers", left);
		json_array_foreach(left, i, w)
			problem(report, "leftover %s%s", json_string_value(json_object_get(w, "path")),
				json_is_true(json_object_get(w, "user_changes"))
					? ": holds changes git did not write; copy out what you need, then delete it"
					: ": only files git had not yet written; the next start-up removes it");
	}
	json_decref(left);
	free(root);
}

/* The state directory and database of the repository containing `repo_dir` (both must exist); caller frees. */
static int locate(const char *repo_dir, const char *state_dir, char **repo, char **state, char **db)
{
	char *abs = realpath(repo_dir ? repo_dir : ".", NULL);
	struct stat sb;
	int rc;

	*repo = *state = *db = NULL;
	if (!abs)
		return orch_error_set(ORCH_ENOTFOUND, "repository %s: %s", repo_dir ? repo_dir : ".", strerror(errno));
	rc = orch_git_discover(abs, repo);
	free(abs);
	if (rc)
		return rc;
	*state = state_dir ? realpath(state_dir, NULL) : NULL;
	if (!*state && (state_dir || asprintf(state, "%s/.orchfs", *repo) < 0)) {
		*state = NULL;
		return orch_error_set(ORCH_ENOTFOUND, "state directory %s: %s", state_dir, strerror(errno));
	}
	if ((rc = orch_state_store(*state, db)) != 0)
		return rc;
	if (orch_store_is_dqlite(*db))
		return 0;
	if (stat(*db, &sb) < 0) {
		if (*db && errno != ENOENT)
			return orch_error_set(ORCH_EINTERNAL, "%s: %s", *db, strerror(errno));
		return orch_error_set(ORCH_ENOTFOUND, "no database at %s/state.db", *state);
	}
	return 0;
}

int orch_backup(const char *repo_dir, const char *state_dir, const char *dest)
{
	char *repo = NULL, *state = NULL, *db = NULL;
	orch_store *st = NULL;
	int rc, fd;

	if ((rc = locate(repo_dir, state_dir, &repo, &state, &db)) != 0)
		goto done;
	/* A new file, private like the database itself; an existing one is never overwritten. */
	if ((fd = open(dest, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600)) < 0) {
		rc = orch_error_set(errno == EEXIST ? ORCH_EEXISTS : ORCH_EINTERNAL, "cannot create %s: %s", dest,
				    strerror(errno));
		goto done;
	}
	close(fd);
	if ((rc = orch_store_open_reader(&st, db)) != 0)
		goto fail;
	if ((rc = orch_store_backup(st, dest)) != 0)
		goto fail;
	goto done;
fail:
	unlink(dest);
done:
	orch_store_close(st);
	free(db);
	free(state);
	free(repo);
	return rc;
}

int orch_check(const char *repo_dir, const char *state_dir, const char *host, json_t **report)
{
	char *repo = NULL, *state = NULL, *db = NULL;
	orch_store *st = NULL;
	orch_git *g = NULL;
	struct stat sb;
	int rc;

	*report = json_pack("{s:[], s:[]}", "problems", "leftovers");
	if (!host)
		host = "";
	if (*host && !orch_host_valid(host))
		return orch_error_set(ORCH_EINVALID_PARAMS, "host \"%s\" must be 1 to %d characters of A-Za-z0-9._:-",
				      host, ORCH_HOST_MAX);
	if ((rc = locate(repo_dir, state_dir, &repo, &state, &db)) != 0 ||
	    (!orch_store_is_dqlite(db) && (rc = stat(db, &sb)) != 0)) {
		rc = rc < 0 ? orch_error_set(ORCH_EINTERNAL, "%s: %s", db, strerror(errno)) : rc;
		goto done;
	}
	if (!orch_store_is_dqlite(db) && (sb.st_mode & 077) != 0)
		problem(*report, "%s is readable by other users (mode %03o); start-up makes it 0600", db,
			(unsigned)(sb.st_mode & 0777));
	if ((rc = orch_store_open_reader(&st, db)) != 0 || (rc = orch_git_open(&g, repo)) != 0)
		goto done;
	orch_git_confine_to(g, state);
	/* One snapshot for every query. */
	if ((rc = orch_store_begin(st, false)) != 0)
		goto done;
	check_store(st, *report);
	check_worktrees(st, g, state, host, *report);
	orch_store_rollback(st);
	json_object_set_new(*report, "state_dir", json_string(state));
done:
	orch_git_close(g);
	orch_store_close(st);
	free(db);
	free(state);
	free(repo);
	return rc;
}
