/*
 * Linked worktrees: their names, adding one (with an effect that undoes
 * it), removing one, retiring one as part of a transaction (set aside now,
 * deleted after the commit), listing orchfs's own and pruning stale
 * metadata.
 */
#include <dirent.h>
#include <errno.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "git_int.h"

/*
 * "orchfs-" + `path` relative to `root`: a direct child keeps its name
 * (orchfs-session-1, as before), a deeper path has '/' replaced by '-' and
 * a hash of the relative path appended, so that a/x, b/x and a-x never
 * share a name (and a long path stays a valid file name).
 */
char *orch_git_worktree_name_in(const char *root, const char *path)
{
	size_t rn = strlen(root);
	const char *rel = path;
	char *name = NULL, *flat;
	uint32_t h = 2166136261u; /* FNV-1a */

	while (rn > 1 && root[rn - 1] == '/')
		rn--;
	if (strncmp(path, root, rn) == 0 && path[rn] == '/')
		rel = path + rn + 1;
	if (!strchr(rel, '/'))
		return asprintf(&name, "orchfs-%s", rel) < 0 ? NULL : name;
	flat = strndup(rel, 160);
	for (char *c = flat; *c; c++)
		if (*c == '/')
			*c = '-';
	for (const char *c = rel; *c; c++)
		h = (h ^ (unsigned char)*c) * 16777619u;
	if (asprintf(&name, "orchfs-%s-%08x", flat, h) < 0)
		name = NULL;
	free(flat);
	return name;
}

char *orch_git_worktree_name(const char *path)
{
	char *dup = strdup(path), *name = orch_git_worktree_name_in(dirname(dup), path);

	free(dup);
	return name;
}

/*
 * Found by path, not by name, so that a worktree is never mistaken for
 * another one that took the same name or path later.
 */
git_worktree *orch_git__worktree_at(orch_git *g, const char *path)
{
	git_strarray names = {0};
	git_worktree *found = NULL;

	if (git_worktree_list(&names, g->repo) < 0)
		return NULL;
	for (size_t i = 0; i < names.count && !found; i++) {
		git_worktree *wt = NULL;
		if (git_worktree_lookup(&wt, g->repo, names.strings[i]) < 0)
			continue;
		if (orch_git__same_dir(git_worktree_path(wt), path))
			found = wt;
		else
			git_worktree_free(wt);
	}
	git_strarray_dispose(&names);
	return found;
}

/*
 * mkdir -p `dir`, confined (orch_git__open_dir).  The directories it
 * actually made are appended to the array `made`, outermost first, so that
 * an undo removes exactly those (rmdir_made) and leaves no empty parent
 * behind to block a later path.
 */
static int mkdir_p(orch_git *g, const char *dir, json_t *made)
{
	int fd = orch_git__open_dir(g, dir, made);

	if (fd < 0)
		return -1;
	close(fd);
	return 0;
}

/* Remove the directories mkdir_p made, innermost first; one that is not empty stays. */
static void rmdir_made(orch_git *g, json_t *made)
{
	for (size_t i = json_array_size(made); i-- > 0;)
		orch_git__rmdir(g, json_string_value(json_array_get(made, i)));
}

int orch_git_worktree_remove(orch_git *g, const char *path, const char *branch, bool delete_branch)
{
	git_worktree *wt = orch_git__worktree_at(g, path);
	int rc = 0;

	if (wt) {
		git_worktree_prune_options opts = GIT_WORKTREE_PRUNE_OPTIONS_INIT;
		opts.flags = GIT_WORKTREE_PRUNE_VALID | GIT_WORKTREE_PRUNE_LOCKED |
			     GIT_WORKTREE_PRUNE_WORKING_TREE;
		if (git_worktree_prune(wt, &opts) < 0)
			rc = orch_git__fail("prune worktree");
		git_worktree_free(wt);
	}
	orch_git__rm_rf(g, path);
	if (delete_branch && branch) {
		git_reference *ref = NULL;
		if (git_branch_lookup(&ref, g->repo, branch, GIT_BRANCH_LOCAL) == 0) {
			if (git_branch_delete(ref) < 0 && !rc)
				rc = orch_git__fail("delete branch");
			git_reference_free(ref);
		}
	}
	return rc;
}

/* ---- adding a worktree ---- */

/* The effect of orch_git_worktree_add: what to remove if the transaction fails. */
struct wt_add {
	orch_git_effect fx;
	char *path;
	char *branch;
	char *wt_name; /* git's metadata name, .git/worktrees/<wt_name> */
	json_t *made;  /* directories made to hold the checkout */
};

/* Remove git's metadata directory .git/worktrees/<wt_name>, whatever state it is in. */
static void drop_metadata_named(orch_git *g, const char *wt_name)
{
	char *dir = NULL;

	if (asprintf(&dir, "%sworktrees/%s", git_repository_commondir(g->repo), wt_name) >= 0)
		orch_git__rm_rf(g, dir);
	free(dir);
}

/*
 * Undo every step of making a worktree, in the order that lets each step
 * succeed: the metadata first (git refuses to delete a branch that a
 * worktree, even a half-made one, has checked out), then the branch, the
 * checkout and the directories made for it.
 */
static void wt_add_unmake(struct wt_add *a)
{
	orch_git *g = a->fx.g;
	git_worktree *wt = orch_git__worktree_at(g, a->path);
	git_reference *ref = NULL;

	if (wt) {
		git_worktree_prune_options opts = GIT_WORKTREE_PRUNE_OPTIONS_INIT;
		opts.flags = GIT_WORKTREE_PRUNE_VALID | GIT_WORKTREE_PRUNE_LOCKED;
		git_worktree_prune(wt, &opts);
		git_worktree_free(wt);
	}
	drop_metadata_named(g, a->wt_name);
	if (git_branch_lookup(&ref, g->repo, a->branch, GIT_BRANCH_LOCAL) == 0) {
		if (git_branch_delete(ref) < 0)
			orch_log("could not delete branch %s of a failed call: %s", a->branch,
				 git_error_last() ? git_error_last()->message : "?");
		git_reference_free(ref);
	}
	orch_git__rm_rf(g, a->path);
	rmdir_made(g, a->made);
}

static void wt_add_undo(orch_git_effect *fx)
{
	wt_add_unmake((struct wt_add *)fx);
}

static void wt_add_release(orch_git_effect *fx)
{
	struct wt_add *a = (struct wt_add *)fx;

	free(a->path);
	free(a->branch);
	free(a->wt_name);
	json_decref(a->made);
	free(a);
}

/* A new, empty effect for adding `branch` at `path` as `wt_name`, or NULL when out of memory. */
static struct wt_add *wt_add_new(orch_git *g, const char *wt_name, const char *path, const char *branch)
{
	struct wt_add *a = calloc(1, sizeof(*a));

	if (!a)
		return NULL;
	a->fx = (orch_git_effect){.undo = wt_add_undo, .release = wt_add_release, .g = g};
	a->path = strdup(path);
	a->branch = strdup(branch);
	a->wt_name = strdup(wt_name);
	a->made = json_array();
	if (!a->path || !a->branch || !a->wt_name || !a->made) {
		wt_add_release(&a->fx);
		return NULL;
	}
	return a;
}

/* The commit `base` (a revspec) names, for a new branch; *out is the caller's to free. */
static int base_commit(orch_git *g, const char *base, git_commit **out)
{
	git_object *obj = NULL;
	int rc = 0;

	*out = NULL;
	if (git_revparse_single(&obj, g->repo, base) < 0)
		rc = orch_git__no_commits(g)
			     ? orch_git__no_commits_error(g)
			     : orch_error_set(ORCH_ENOTFOUND, "base \"%s\" does not name a commit in %s", base, g->workdir);
	else if (git_object_peel((git_object **)out, obj, GIT_OBJECT_COMMIT) < 0)
		rc = orch_error_set(ORCH_EINVALID_PARAMS, "base \"%s\" is not a commit", base);
	git_object_free(obj);
	return rc;
}

/*
 * Whether branch `branch` and a worktree named `wt_name` at `path` can be
 * made: neither the branch nor the path exists, and no valid worktree has
 * the name.  Metadata of one whose directory is gone is pruned, as git would.
 */
static int check_free(orch_git *g, const char *wt_name, const char *path, const char *branch)
{
	git_reference *ref = NULL;
	git_worktree *old = NULL;
	struct stat sb;
	int rc = 0;

	if (git_branch_lookup(&ref, g->repo, branch, GIT_BRANCH_LOCAL) == 0) {
		rc = orch_error_set(ORCH_EEXISTS, "branch \"%s\" already exists (delete it with: git branch -D %s)",
				    branch, branch);
	} else if (lstat(path, &sb) == 0) {
		rc = orch_error_set(ORCH_EEXISTS, "worktree path %s already exists", path);
	} else if (git_worktree_lookup(&old, g->repo, wt_name) == 0) {
		git_worktree_prune_options po = GIT_WORKTREE_PRUNE_OPTIONS_INIT;
		if (git_worktree_validate(old) == 0 || git_worktree_prune(old, &po) < 0)
			rc = orch_error_set(ORCH_EEXISTS, "git already has a worktree named %s", wt_name);
	} else {
		/* Half-written metadata (no gitdir or HEAD: libgit2 does not even list it) of a killed call. */
		drop_metadata_named(g, wt_name);
	}
	git_worktree_free(old);
	git_reference_free(ref);
	return rc;
}

/*
 * Make the directories above `a->path` (recorded in a->made), the branch
 * at `commit` and the checkout.  On failure nothing of it is left.
 */
static int make_worktree(orch_git *g, struct wt_add *a, git_commit *commit)
{
	git_worktree_add_options opts = GIT_WORKTREE_ADD_OPTIONS_INIT;
	git_reference *ref = NULL;
	git_worktree *wt = NULL;
	char *parent = strdup(a->path);
	int rc = 0;

	if (!parent)
		return orch_error_set(ORCH_EINTERNAL, "out of memory");
	if (mkdir_p(g, dirname(parent), a->made) < 0) {
		rc = errno == ELOOP || errno == ENOTDIR || errno == EXDEV
			     ? orch_error_set(ORCH_EINVALID_STATE, "cannot create %s: a component below the state "
					      "directory is a symlink or not a directory (orchfs creates checkouts only "
					      "in real directories below %s)", a->path, g->state_dir ? g->state_dir : "it")
			     : orch_error_set(ORCH_EGIT, "cannot create %s: %s", parent, strerror(errno));
		rmdir_made(g, a->made);
		goto done;
	}
	if (git_branch_create(&ref, g->repo, a->branch, commit, 0) < 0) {
		rc = orch_git__fail("create branch");
		rmdir_made(g, a->made);
		goto done;
	}
	opts.ref = ref;
	if (git_worktree_add(&wt, g->repo, a->wt_name, a->path, &opts) < 0) {
		/* The checkout failed part-way (ENOSPC, say): libgit2 leaves its metadata and the branch. */
		rc = orch_git__fail("add worktree");
		git_reference_free(ref);
		ref = NULL;
		wt_add_unmake(a);
	}
done:
	git_worktree_free(wt);
	git_reference_free(ref);
	free(parent);
	return rc;
}

int orch_git_worktree_add(orch_git *g, const char *wt_name, const char *path, const char *branch,
			  const char *base, orch_git_effect **fx)
{
	git_commit *commit = NULL;
	struct wt_add *a = NULL;
	int rc;

	*fx = NULL;
	if (!orch_git_branch_name_valid(branch))
		return orch_error_set(ORCH_EINVALID_PARAMS, "\"%s\" is not a valid branch name", branch);
	/* The effect first: once git has changed, nothing may fail before the caller holds its undo. */
	if (!(a = wt_add_new(g, wt_name, path, branch))) {
		rc = orch_error_set(ORCH_EINTERNAL, "out of memory");
		goto done;
	}
	if ((rc = base_commit(g, base, &commit)) != 0 || (rc = check_free(g, wt_name, path, branch)) != 0 ||
	    (rc = make_worktree(g, a, commit)) != 0)
		goto done;
	*fx = &a->fx;
	a = NULL;
done:
	if (a)
		wt_add_release(&a->fx);
	git_commit_free(commit);
	return rc;
}

/* ---- listing and pruning ---- */

int orch_git_orchfs_worktrees(orch_git *g, json_t **out)
{
	git_strarray names = {0};

	*out = json_array();
	if (git_worktree_list(&names, g->repo) < 0)
		return orch_git__fail("list worktrees");
	for (size_t i = 0; i < names.count; i++) {
		git_worktree *wt = NULL;
		git_repository *wrepo = NULL;
		git_reference *head = NULL;
		if (strncmp(names.strings[i], "orchfs-", 7) == 0 &&
		    git_worktree_lookup(&wt, g->repo, names.strings[i]) == 0 && git_worktree_validate(wt) == 0 &&
		    git_repository_open_from_worktree(&wrepo, wt) == 0 && git_repository_head(&head, wrepo) == 0 &&
		    git_reference_is_branch(head))
			json_array_append_new(*out, json_pack("{s:s, s:s, s:s}", "name", names.strings[i], "path",
							      git_worktree_path(wt), "branch",
							      git_reference_shorthand(head)));
		git_reference_free(head);
		git_repository_free(wrepo);
		git_worktree_free(wt);
	}
	git_strarray_dispose(&names);
	return 0;
}

/*
 * Remove git metadata directories named orchfs-* that libgit2 cannot even
 * look up (no gitdir or HEAD yet: a call killed while git_worktree_add
 * wrote them).  No record can claim one: it names no checkout.
 */
static void prune_half_written(orch_git *g, json_t *log)
{
	char *dir = NULL;
	struct dirent *e;
	DIR *d;

	if (asprintf(&dir, "%sworktrees", git_repository_commondir(g->repo)) < 0)
		return;
	if ((d = opendir(dir)) != NULL) {
		while ((e = readdir(d)) != NULL) {
			git_worktree *wt = NULL;
			if (strncmp(e->d_name, "orchfs-", 7) != 0)
				continue;
			if (git_worktree_lookup(&wt, g->repo, e->d_name) < 0) {
				drop_metadata_named(g, e->d_name);
				json_array_append_new(log, json_sprintf("removed half-written git metadata %s",
									e->d_name));
			}
			git_worktree_free(wt);
		}
		closedir(d);
	}
	free(dir);
}

int orch_git_prune_stale(orch_git *g, json_t *log)
{
	git_strarray names = {0};

	prune_half_written(g, log);

	if (git_worktree_list(&names, g->repo) < 0)
		return orch_git__fail("list worktrees");
	for (size_t i = 0; i < names.count; i++) {
		git_worktree *wt = NULL;
		git_worktree_prune_options opts = GIT_WORKTREE_PRUNE_OPTIONS_INIT;
		if (strncmp(names.strings[i], "orchfs-", 7) != 0 ||
		    git_worktree_lookup(&wt, g->repo, names.strings[i]) < 0)
			continue;
		/* Only invalid (directory gone) and unlocked worktrees are prunable with no flags. */
		if (git_worktree_validate(wt) < 0 && git_worktree_is_prunable(wt, &opts) == 1 &&
		    git_worktree_prune(wt, &opts) == 0)
			json_array_append_new(log, json_sprintf("pruned git metadata %s", names.strings[i]));
		git_worktree_free(wt);
	}
	git_strarray_dispose(&names);
	return 0;
}

/* ---- retiring a worktree ---- */

char *orch_git_retired_path(const char *path)
{
	char *out;

	return asprintf(&out, "%s.orchfs-removing", path) < 0 ? NULL : out;
}

/*
 * Prune git's metadata for `path` if git finds it invalid (its checkout is
 * gone).  A valid one belongs to a newer worktree that took the path after
 * the old checkout was set aside, and must stay.
 */
static void prune_invalid_at(orch_git *g, const char *path)
{
	git_worktree *wt = orch_git__worktree_at(g, path);

	if (wt && git_worktree_validate(wt) < 0) {
		git_worktree_prune_options opts = GIT_WORKTREE_PRUNE_OPTIONS_INIT;
		git_worktree_prune(wt, &opts);
	}
	git_worktree_free(wt);
}

void orch_git_retire_finish(orch_git *g, const char *path)
{
	char *trash = orch_git_retired_path(path);

	prune_invalid_at(g, path);
	if (trash)
		orch_git__rm_rf(g, trash);
	free(trash);
}

int orch_git_put_back(orch_git *g, const char *path)
{
	char *trash = orch_git_retired_path(path);
	int rc = trash ? orch_git__rename(g, trash, path) : -1;

	free(trash);
	return rc;
}

/* The effect of a retire: the checkout at `path`, set aside at `trash` (when `moved`). */
struct retire {
	orch_git_effect fx;
	char *path;
	char *trash; /* NULL unless moved */
	bool moved;  /* the call renamed the checkout aside (else: cleanup after the commit only) */
};

/*
 * The transaction failed: put the checkout back.  If that fails too, it
 * stays aside: the record still names the checkout, and the next start-up
 * puts it back (orch_worktree_reconcile).
 */
static void retire_undo(orch_git_effect *fx)
{
	struct retire *r = (struct retire *)fx;

	if (r->moved && orch_git__rename(fx->g, r->trash, r->path) < 0)
		orch_log("could not put %s back (%s); it stays at %s, and the next start-up puts it back "
			 "once %s is free", r->path, strerror(errno), r->trash, r->path);
}

/* The transaction committed: the removal is final, so the set-aside checkout and metadata go. */
static void retire_done(orch_git_effect *fx)
{
	orch_git_retire_finish(fx->g, ((struct retire *)fx)->path);
}

static void retire_release(orch_git_effect *fx)
{
	struct retire *r = (struct retire *)fx;

	free(r->path);
	free(r->trash);
	free(r);
}

/* A retire effect for `path` (set aside at `trash`, taken, when `moved`), or NULL when out of memory. */
static struct retire *retire_new(orch_git *g, const char *path, char *trash, bool moved)
{
	struct retire *r = calloc(1, sizeof(*r));

	if (!r || !(r->path = strdup(path))) {
		free(r);
		free(trash);
		return NULL;
	}
	r->fx = (orch_git_effect){.undo = retire_undo, .finish = retire_done, .release = retire_release, .g = g};
	r->trash = trash;
	r->moved = moved;
	return r;
}

int orch_git_worktree_retire(orch_git *g, const char *path, orch_git_effect **fx)
{
	struct retire *r = retire_new(g, path, orch_git_retired_path(path), true);
	int e;

	*fx = NULL;
	if (!r || !r->trash) {
		if (r)
			retire_release(&r->fx);
		return orch_error_set(ORCH_EINTERNAL, "out of memory");
	}
	orch_git__rm_rf(g, r->trash); /* a leftover of an interrupted removal */
	if (orch_git__rename(g, path, r->trash) < 0) {
		e = errno;
		retire_release(&r->fx);
		return orch_error_set(ORCH_EGIT, "cannot remove worktree %s: %s", path, strerror(e));
	}
	*fx = &r->fx;
	return 0;
}

int orch_git_retire_after_commit(orch_git *g, const char *path, orch_git_effect **fx)
{
	struct retire *r = retire_new(g, path, NULL, false);

	*fx = r ? &r->fx : NULL;
	return r ? 0 : orch_error_set(ORCH_EINTERNAL, "out of memory");
}
