/*
 * Recovery: what processes and calls killed part-way left behind.  The
 * in-flight markers that name a checkout while an operation may lock its
 * index, the clearing of index locks that dead processes left, taking back
 * leftover branches and checkouts under orchfs's reserved names, and stale
 * locks of those branches' refs.
 */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "git_int.h"

/* ---- in-flight markers ---- */

/*
 * Numbers the operations of this process, so that no two share a marker
 * even if two run at once (one per handle, say).
 */
static atomic_ullong inflight_seq;

/*
 * While an operation writes a checkout it names it in
 * <state>/inflight/<pid>-<seq>: if the process is killed there, git's
 * index.lock in that checkout is its own, and orch_git_clear_dead_inflight()
 * can remove it without guessing.  The marker is fsynced before git starts.
 * A marker holds the checkout's path, or LOCK_PREFIX and the path of a lock
 * file the operation may leave (a ref's <refname>.lock).
 */
static char *inflight_write(orch_git *g, const char *prefix, const char *what)
{
	unsigned long long seq = atomic_fetch_add(&inflight_seq, 1);
	char *marker = NULL;
	FILE *f;

	if (!g->inflight_dir || asprintf(&marker, "%s/%ld-%llu", g->inflight_dir, (long)getpid(), seq) < 0)
		return NULL;
	if ((f = fopen(marker, "w")) == NULL) {
		free(marker);
		return NULL;
	}
	fputs(prefix, f);
	fputs(what, f);
	fflush(f);
	fsync(fileno(f));
	fclose(f);
	return marker;
}

#define LOCK_PREFIX "lock:"

char *orch_git__inflight_begin(orch_git *g, const char *workdir)
{
	return inflight_write(g, "", workdir);
}

char *orch_git__inflight_begin_lock(orch_git *g, const char *lockfile)
{
	return inflight_write(g, LOCK_PREFIX, lockfile);
}

void orch_git__inflight_end(char *marker)
{
	if (marker)
		unlink(marker);
	free(marker);
}

void orch_git_confine_to(orch_git *g, const char *state_dir)
{
	free(g->state_dir);
	g->state_dir = strdup(state_dir);
}

void orch_git_set_state_dir(orch_git *g, const char *state_dir)
{
	json_t *made = json_array();
	int fd;

	free(g->inflight_dir);
	orch_git_confine_to(g, state_dir);
	if (asprintf(&g->inflight_dir, "%s/inflight", state_dir) < 0) {
		g->inflight_dir = NULL;
	} else if ((fd = orch_git__open_dir(g, g->inflight_dir, made)) >= 0) {
		close(fd);
	} else {
		orch_log("no in-flight markers: %s: %s", g->inflight_dir, strerror(errno));
		free(g->inflight_dir);
		g->inflight_dir = NULL;
	}
	json_decref(made);
}

/* Whether s is one or more ASCII digits. */
static bool digits(const char *s)
{
	if (!*s)
		return false;
	for (; *s; s++)
		if (!isdigit((unsigned char)*s))
			return false;
	return true;
}

/* The process in a marker's name, "<pid>-<seq>" or "<pid>" (as older versions named it); 0 for other names. */
static long marker_pid(const char *name)
{
	char *end;
	long pid;

	if (!isdigit((unsigned char)name[0]))
		return 0;
	pid = strtol(name, &end, 10);
	if (*end == '-' ? !digits(end + 1) : *end != '\0')
		return 0;
	return pid > 0 ? pid : 0;
}

/* Remove git's index.lock in the checkout that `marker` (a file) names; log it. */
static void clear_lock_named_in(const char *marker, long pid, json_t *log)
{
	git_repository *wrepo = NULL;
	char workdir[4096], *lock = NULL;
	size_t n;
	FILE *f;

	if ((f = fopen(marker, "r")) == NULL)
		return;
	n = fread(workdir, 1, sizeof(workdir) - 1, f);
	workdir[n] = '\0';
	fclose(f);
	if (strncmp(workdir, LOCK_PREFIX, strlen(LOCK_PREFIX)) == 0) {
		/* A ref's lock file, named before git took it. */
		const char *path = workdir + strlen(LOCK_PREFIX);
		if (unlink(path) == 0 && log)
			json_array_append_new(log, json_sprintf("removed %s, left by process %ld killed while moving "
								"that ref", path, pid));
		return;
	}
	if (n && git_repository_open(&wrepo, workdir) == 0 &&
	    asprintf(&lock, "%sindex.lock", git_repository_path(wrepo)) >= 0 && unlink(lock) == 0 && log)
		json_array_append_new(log, json_sprintf("removed %s, left by process %ld killed while updating that "
							"checkout", lock, pid));
	git_repository_free(wrepo);
	free(lock);
}

int orch_git_clear_dead_inflight(orch_git *g, json_t *log)
{
	struct dirent *e;
	DIR *d;

	if (!g->inflight_dir || (d = opendir(g->inflight_dir)) == NULL)
		return 0;
	while ((e = readdir(d)) != NULL) {
		long pid = marker_pid(e->d_name);
		char *marker = NULL;
		/* This process's own markers are live operations; so are those of any process still there. */
		if (pid == 0 || pid == (long)getpid() || kill((pid_t)pid, 0) == 0 || errno != ESRCH)
			continue;
		if (asprintf(&marker, "%s/%s", g->inflight_dir, e->d_name) < 0)
			continue;
		clear_lock_named_in(marker, pid, log);
		unlink(marker);
		free(marker);
	}
	closedir(d);
	return 0;
}

/* ---- leftovers of calls killed before their commit ---- */

/* True when the checkout of `wt` has no staged, unstaged or untracked change. */
static bool checkout_clean(git_repository *wt)
{
	git_status_options opts = GIT_STATUS_OPTIONS_INIT;
	git_status_list *list = NULL;
	bool clean;

	opts.show = GIT_STATUS_SHOW_INDEX_AND_WORKDIR;
	opts.flags = GIT_STATUS_OPT_INCLUDE_UNTRACKED | GIT_STATUS_OPT_RECURSE_UNTRACKED_DIRS;
	if (git_status_list_new(&list, wt, &opts) < 0)
		return false;
	clean = git_status_list_entrycount(list) == 0;
	git_status_list_free(list);
	return clean;
}

/*
 * Whether commit `tip` is `base` (a revspec) or in its history; with
 * `base` NULL, whether some local branch other than `branch` has it.
 */
static bool contained(git_repository *repo, const git_oid *tip, const char *base, const char *branch)
{
	git_branch_iterator *it = NULL;
	git_reference *ref = NULL;
	git_object *obj = NULL;
	git_branch_t type;
	bool yes = false;

	if (base) {
		if (git_revparse_single(&obj, repo, base) == 0) {
			git_object *c = NULL;
			if (git_object_peel(&c, obj, GIT_OBJECT_COMMIT) == 0)
				yes = git_oid_equal(tip, git_object_id(c)) ||
				      git_graph_descendant_of(repo, git_object_id(c), tip) == 1;
			git_object_free(c);
		}
		git_object_free(obj);
		return yes;
	}
	if (git_branch_iterator_new(&it, repo, GIT_BRANCH_LOCAL) < 0)
		return false;
	while (!yes && git_branch_next(&ref, &type, it) == 0) {
		const char *name = NULL;
		const git_oid *t = git_reference_target(ref);
		if (git_branch_name(&name, ref) == 0 && strcmp(name, branch) != 0 && t)
			yes = git_oid_equal(tip, t) || git_graph_descendant_of(repo, t, tip) == 1;
		git_reference_free(ref);
	}
	git_branch_iterator_free(it);
	return yes;
}

/* Remove git's metadata for the checkout at `path` when it is missing or no longer valid. */
static bool drop_stale_metadata(orch_git *g, const char *path)
{
	char *name = orch_git_worktree_name(path), *dir = NULL;
	git_worktree *wt = orch_git__worktree_at(g, path);
	bool dropped = false;

	if (wt && git_worktree_validate(wt) < 0) {
		git_worktree_prune_options opts = GIT_WORKTREE_PRUNE_OPTIONS_INIT;
		opts.flags = GIT_WORKTREE_PRUNE_LOCKED;
		dropped = git_worktree_prune(wt, &opts) == 0;
	}
	git_worktree_free(wt);
	/* Half-written metadata (no gitdir or HEAD yet) is not even listed by libgit2. */
	if (name && asprintf(&dir, "%sworktrees/%s", git_repository_commondir(g->repo), name) >= 0 &&
	    access(dir, F_OK) == 0) {
		git_worktree *named = NULL;
		if (git_worktree_lookup(&named, g->repo, name) < 0 || git_worktree_validate(named) < 0) {
			orch_git__rm_rf(g, dir);
			dropped = true;
		}
		git_worktree_free(named);
	}
	free(dir);
	free(name);
	return dropped;
}

/* Whether `path` is a linked checkout of `branch` with no change at all: nothing on it can be lost. */
static bool clean_checkout_of(const char *path, const char *branch)
{
	git_repository *wt = NULL;
	git_reference *head = NULL;
	char want[512];
	bool clean = false;

	snprintf(want, sizeof(want), "refs/heads/%s", branch);
	if (git_repository_open(&wt, path) == 0)
		clean = git_repository_is_worktree(wt) && git_repository_head(&head, wt) == 0 &&
			strcmp(git_reference_name(head), want) == 0 && checkout_clean(wt);
	git_reference_free(head);
	git_repository_free(wt);
	return clean;
}

/*
 * Detach the checkout at `path` from git (orch_git__detach_leftover: the
 * retried call is about to make the same metadata name again for its live
 * checkout) and rename it to <path>.orchfs-leftover-<ms>; log it.  Whether
 * that was done.  `commit_hex` is what it was checking out, or NULL.
 */
static bool set_aside_leftover(orch_git *g, const char *path, const char *commit_hex)
{
	char *aside = NULL;
	bool done;

	if (asprintf(&aside, "%s.orchfs-leftover-%lld", path, (long long)orch_now_ms()) < 0)
		return false;
	done = orch_git__detach_leftover(g, path, path, commit_hex) == 0 && orch_git__rename(g, path, aside) == 0;
	if (done)
		orch_log("set aside %s as %s, detached from git: a leftover of an interrupted call, with changes",
			 path, aside);
	free(aside);
	return done;
}

/* Remove a lock file of `branch`'s ref; whether there was one. */
static bool drop_ref_lock(orch_git *g, const char *branch)
{
	char *lock = NULL;
	bool dropped;

	/* The caller holds the store's write lock, under which every orchfs git write runs. */
	if (asprintf(&lock, "%srefs/heads/%s.lock", git_repository_commondir(g->repo), branch) < 0)
		return false;
	dropped = unlink(lock) == 0;
	free(lock);
	return dropped;
}

int orch_git_worktree_reclaim(orch_git *g, const char *path, const char *branch, const char *base,
			      bool set_aside)
{
	git_reference *ref = NULL;
	char tip[GIT_OID_HEXSZ + 1] = "";
	bool took, has_branch;
	struct stat sb;

	has_branch = git_branch_lookup(&ref, g->repo, branch, GIT_BRANCH_LOCAL) == 0;
	/* A branch with commits of its own is work, not a leftover: keep everything. */
	if (has_branch && !(git_reference_target(ref) && contained(g->repo, git_reference_target(ref), base, branch))) {
		git_reference_free(ref);
		return 0;
	}
	if (has_branch)
		git_oid_tostr(tip, sizeof(tip), git_reference_target(ref));
	git_reference_free(ref);
	ref = NULL;
	took = drop_ref_lock(g, branch);
	if (lstat(path, &sb) == 0) {
		if (clean_checkout_of(path, branch))
			return orch_git_worktree_remove(g, path, branch, true) == 0 ? 1 : took;
		/*
		 * A half-made checkout looks dirty, and so would work no record
		 * knows about: never delete it; set it aside, if asked to.
		 */
		if (!set_aside || !set_aside_leftover(g, path, tip[0] ? tip : NULL))
			return took;
		took = true;
	}
	took |= drop_stale_metadata(g, path);
	if (has_branch && git_branch_lookup(&ref, g->repo, branch, GIT_BRANCH_LOCAL) == 0) {
		took |= git_branch_delete(ref) == 0;
		git_reference_free(ref);
	}
	return took;
}

/* Remove *.lock files in `dir` (not recursive); each removal is logged. */
static void drop_locks_in(const char *dir, json_t *log)
{
	DIR *d = opendir(dir);
	struct dirent *e;

	if (!d)
		return;
	while ((e = readdir(d)) != NULL) {
		size_t n = strlen(e->d_name);
		char *p = NULL;
		if (n > 5 && strcmp(e->d_name + n - 5, ".lock") == 0 && asprintf(&p, "%s/%s", dir, e->d_name) >= 0 &&
		    unlink(p) == 0)
			json_array_append_new(log, json_sprintf("removed stale lock %s", p));
		free(p);
	}
	closedir(d);
}

int orch_git_drop_reserved_ref_locks(orch_git *g, json_t *log)
{
	char *dir = NULL;
	DIR *d;
	struct dirent *e;

	if (asprintf(&dir, "%srefs/heads/session", git_repository_commondir(g->repo)) >= 0)
		drop_locks_in(dir, log);
	free(dir);
	if (asprintf(&dir, "%srefs/heads/task", git_repository_commondir(g->repo)) < 0)
		return 0;
	drop_locks_in(dir, log);
	if ((d = opendir(dir)) != NULL) {
		while ((e = readdir(d)) != NULL) {
			char *sub = NULL;
			if (e->d_name[0] != '.' && asprintf(&sub, "%s/%s", dir, e->d_name) >= 0)
				drop_locks_in(sub, log);
			free(sub);
		}
		closedir(d);
	}
	free(dir);
	return 0;
}
