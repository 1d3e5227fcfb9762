/*
 * libgit2 glue: repository discovery, branches and linked worktrees, with
 * undo actions so that a failed transaction leaves no git effect behind.
 */

#include <dirent.h>
#include <errno.h>
#include <ftw.h>
#include <git2.h>
#include <libgen.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "orchfs/git.h"

struct orch_git {
	git_repository *repo;
	char *inflight; /* <state>/inflight/<pid>: the checkout this process is writing, if any */
};

static int git_fail(const char *what)
{
	const git_error *e = git_error_last();

	return orch_error_set(ORCH_EGIT, "git %s: %s", what, e && e->message ? e->message : "failed");
}

/* Whether two directory paths are the same, trailing slashes aside. */
static bool same_dir(const char *a, const char *b)
{
	size_t na = strlen(a), nb = strlen(b);

	while (na > 1 && a[na - 1] == '/')
		na--;
	while (nb > 1 && b[nb - 1] == '/')
		nb--;
	return na == nb && strncmp(a, b, na) == 0;
}

int orch_git_open(orch_git **out, const char *repo_path)
{
	orch_git *g = calloc(1, sizeof(*g));

	git_libgit2_init();
	/* A success reply promises durability: git's writes are fsynced like the database's. */
	git_libgit2_opts(GIT_OPT_ENABLE_FSYNC_GITDIR, 1);
	*out = NULL;
	if (git_repository_open(&g->repo, repo_path) < 0) {
		free(g);
		return git_fail("open repository");
	}
	*out = g;
	return 0;
}

void orch_git_close(orch_git *g)
{
	if (!g)
		return;
	free(g->inflight);
	git_repository_free(g->repo);
	free(g);
	git_libgit2_shutdown();
}

git_repository *orch_git_repo(orch_git *g)
{
	return g->repo;
}

/*
 * The main working tree of the repository containing `dir`.  From inside a
 * linked worktree (a session root, say) this is still the main checkout, so
 * every orchfs command run anywhere in the project finds one state.
 */
int orch_git_discover(const char *dir, char **workdir)
{
	git_buf found = {0};
	git_repository *repo = NULL;
	int rc = 0;

	git_libgit2_init();
	*workdir = NULL;
	if (git_repository_discover(&found, dir, 0, NULL) < 0) {
		rc = orch_error_set(ORCH_ENOTFOUND, "%s is not inside a git repository (run from the repository, or "
				    "pass --repo DIR)", dir);
		goto done;
	}
	if (git_repository_open(&repo, found.ptr) < 0) {
		rc = git_fail("open repository");
		goto done;
	}
	if (git_repository_is_worktree(repo)) {
		git_repository *main = NULL;
		if (git_repository_open(&main, git_repository_commondir(repo)) < 0) {
			rc = git_fail("open main repository");
			goto done;
		}
		git_repository_free(repo);
		repo = main;
	}
	if (!git_repository_workdir(repo)) {
		rc = orch_error_set(ORCH_EINVALID_PARAMS, "%s is a bare repository", found.ptr);
		goto done;
	}
	*workdir = strdup(git_repository_workdir(repo));
	size_t n = strlen(*workdir);
	if (n > 1 && (*workdir)[n - 1] == '/')
		(*workdir)[n - 1] = '\0';
done:
	git_repository_free(repo);
	git_buf_dispose(&found);
	git_libgit2_shutdown();
	return rc;
}

int orch_git_head_branch(orch_git *g, char **out)
{
	git_reference *head = NULL;
	int err;

	*out = NULL;
	err = git_repository_head(&head, g->repo);
	if (err == GIT_EUNBORNBRANCH || err == GIT_ENOTFOUND) {
		/* An unborn branch still has a name: the target of HEAD. */
		git_reference *sym = NULL;
		if (git_reference_lookup(&sym, g->repo, "HEAD") == 0 &&
		    git_reference_type(sym) == GIT_REFERENCE_SYMBOLIC) {
			const char *t = git_reference_symbolic_target(sym);
			*out = strdup(strncmp(t, "refs/heads/", 11) == 0 ? t + 11 : t);
		}
		git_reference_free(sym);
		return *out ? 0 : git_fail("read HEAD");
	}
	if (err < 0)
		return git_fail("read HEAD");
	*out = strdup(git_reference_is_branch(head) ? git_reference_shorthand(head) : "HEAD");
	git_reference_free(head);
	return 0;
}

bool orch_git_branch_name_valid(const char *name)
{
	int valid = 0;

	/* "@" is refused too: in every revision it means HEAD, so such a branch could never be named. */
	if (!name || !*name || strcmp(name, "HEAD") == 0 || strcmp(name, "@") == 0 || name[0] == '-')
		return false;
	return git_branch_name_is_valid(&valid, name) == 0 && valid;
}

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
 * The linked worktree whose checkout is (or was, if its directory is gone)
 * at `path`, or NULL.  Found by path, not by name, so that a worktree is
 * never mistaken for another one that took the same name or path later.
 */
static git_worktree *worktree_at(orch_git *g, const char *path)
{
	git_strarray names = {0};
	git_worktree *found = NULL;

	if (git_worktree_list(&names, g->repo) < 0)
		return NULL;
	for (size_t i = 0; i < names.count && !found; i++) {
		git_worktree *wt = NULL;
		if (git_worktree_lookup(&wt, g->repo, names.strings[i]) < 0)
			continue;
		if (same_dir(git_worktree_path(wt), path))
			found = wt;
		else
			git_worktree_free(wt);
	}
	git_strarray_dispose(&names);
	return found;
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
	(void)sb;
	(void)flag;
	(void)ftw;
	return remove(path);
}

/* Remove a checkout: never through a symlink, never into another filesystem mounted inside it. */
static void rm_rf(const char *path)
{
	nftw(path, rm_entry, 32, FTW_DEPTH | FTW_PHYS | FTW_MOUNT);
}

/*
 * mkdir -p `dir`.  The directories it actually made are appended to the
 * array `made`, outermost first, so that an undo removes exactly those
 * (rmdir_made) and leaves no empty parent behind to block a later path.
 */
static int mkdir_p(const char *dir, json_t *made)
{
	char *tmp = strdup(dir);
	int rc = 0;

	for (char *p = tmp + 1;; p++) {
		if (*p && *p != '/')
			continue;
		char c = *p;
		*p = '\0';
		if (mkdir(tmp, 0755) == 0)
			json_array_append_new(made, json_string(tmp));
		else if (errno != EEXIST)
			rc = -1;
		*p = c;
		if (!c || rc)
			break;
	}
	free(tmp);
	return rc;
}

/* Remove the directories mkdir_p made, innermost first; one that is not empty stays. */
static void rmdir_made(json_t *made)
{
	for (size_t i = json_array_size(made); i-- > 0;)
		rmdir(json_string_value(json_array_get(made, i)));
}

int orch_git_worktree_remove(orch_git *g, const char *path, const char *branch, bool delete_branch)
{
	git_worktree *wt = worktree_at(g, path);
	int rc = 0;

	if (wt) {
		git_worktree_prune_options opts = GIT_WORKTREE_PRUNE_OPTIONS_INIT;
		opts.flags = GIT_WORKTREE_PRUNE_VALID | GIT_WORKTREE_PRUNE_LOCKED |
			     GIT_WORKTREE_PRUNE_WORKING_TREE;
		if (git_worktree_prune(wt, &opts) < 0)
			rc = git_fail("prune worktree");
		git_worktree_free(wt);
	}
	rm_rf(path);
	if (delete_branch && branch) {
		git_reference *ref = NULL;
		if (git_branch_lookup(&ref, g->repo, branch, GIT_BRANCH_LOCAL) == 0) {
			if (git_branch_delete(ref) < 0 && !rc)
				rc = git_fail("delete branch");
			git_reference_free(ref);
		}
	}
	return rc;
}

struct wt_undo {
	orch_git *g;
	char *path;
	char *branch;
	json_t *made; /* directories made to hold the checkout */
};

static void wt_undo_run(void *arg)
{
	struct wt_undo *u = arg;

	orch_git_worktree_remove(u->g, u->path, u->branch, true);
	rmdir_made(u->made);
}

static void wt_undo_free(void *arg)
{
	struct wt_undo *u = arg;

	free(u->path);
	free(u->branch);
	json_decref(u->made);
	free(u);
}

int orch_git_worktree_add(orch_ctx *ctx, const char *wt_name, const char *path, const char *branch,
			  const char *base)
{
	git_repository *repo = ctx->git->repo;
	git_object *obj = NULL;
	git_commit *commit = NULL;
	git_reference *ref = NULL;
	git_worktree *wt = NULL, *old = NULL;
	git_worktree_add_options opts = GIT_WORKTREE_ADD_OPTIONS_INIT;
	struct stat sb;
	char *parent = NULL;
	json_t *made = json_array();
	int rc = 0;

	if (!orch_git_branch_name_valid(branch))
		return orch_error_set(ORCH_EINVALID_PARAMS, "\"%s\" is not a valid branch name", branch);
	if (git_revparse_single(&obj, repo, base) < 0) {
		rc = orch_error_set(ORCH_ENOTFOUND, "base \"%s\" does not name a commit in %s", base,
				    ctx->repo_path);
		goto done;
	}
	if (git_object_peel((git_object **)&commit, obj, GIT_OBJECT_COMMIT) < 0) {
		rc = orch_error_set(ORCH_EINVALID_PARAMS, "base \"%s\" is not a commit", base);
		goto done;
	}
	if (git_branch_lookup(&ref, repo, branch, GIT_BRANCH_LOCAL) == 0) {
		rc = orch_error_set(ORCH_EEXISTS, "branch \"%s\" already exists (delete it with: git branch -D %s)",
				    branch, branch);
		goto done;
	}
	if (lstat(path, &sb) == 0) {
		rc = orch_error_set(ORCH_EEXISTS, "worktree path %s already exists", path);
		goto done;
	}
	/* Metadata left by a worktree whose directory is gone: prune it, git would. */
	if (git_worktree_lookup(&old, repo, wt_name) == 0) {
		git_worktree_prune_options po = GIT_WORKTREE_PRUNE_OPTIONS_INIT;
		if (git_worktree_validate(old) == 0 || git_worktree_prune(old, &po) < 0) {
			rc = orch_error_set(ORCH_EEXISTS, "git already has a worktree named %s", wt_name);
			goto done;
		}
	}
	parent = strdup(path);
	if (mkdir_p(dirname(parent), made) < 0) {
		rc = orch_error_set(ORCH_EGIT, "cannot create %s: %s", parent, strerror(errno));
		rmdir_made(made);
		goto done;
	}
	if (git_branch_create(&ref, repo, branch, commit, 0) < 0) {
		rc = git_fail("create branch");
		rmdir_made(made);
		goto done;
	}
	opts.ref = ref;
	if (git_worktree_add(&wt, repo, wt_name, path, &opts) < 0) {
		rc = git_fail("add worktree");
		git_branch_delete(ref);
		rm_rf(path);
		rmdir_made(made);
		goto done;
	}
	struct wt_undo *u = calloc(1, sizeof(*u));
	u->g = ctx->git;
	u->path = strdup(path);
	u->branch = strdup(branch);
	u->made = made;
	made = NULL;
	orch_undo_push(ctx, wt_undo_run, wt_undo_free, u);
done:
	json_decref(made);
	free(parent);
	git_worktree_free(old);
	git_worktree_free(wt);
	git_reference_free(ref);
	git_commit_free(commit);
	git_object_free(obj);
	return rc;
}

/* ---- isolation: branches, status, in-memory merges, removal ---- */

/*
 * True when refs/heads/<branch> exists, or could not be created because a
 * branch is one of its leading directories (a/b for a/b/c) or lies below it.
 */
bool orch_git_branch_exists(orch_git *g, const char *branch)
{
	git_reference_iterator *it = NULL;
	git_reference *ref = NULL;
	char *name = NULL, *glob = NULL;
	bool found = false;

	if (asprintf(&name, "refs/heads/%s", branch) < 0)
		return false;
	for (char *c = name + strlen("refs/heads/"); !found; c++) {
		c = strchr(c, '/');
		if (c)
			*c = '\0';
		found = git_reference_lookup(&ref, g->repo, name) == 0;
		git_reference_free(ref);
		ref = NULL;
		if (!c)
			break;
		*c = '/';
	}
	if (!found && asprintf(&glob, "%s/*", name) >= 0 &&
	    git_reference_iterator_glob_new(&it, g->repo, glob) == 0) {
		found = git_reference_next(&ref, it) == 0;
		git_reference_free(ref);
		git_reference_iterator_free(it);
	}
	free(glob);
	free(name);
	return found;
}

int orch_git_resolve_commit(orch_git *g, const char *revspec, char *hex)
{
	git_object *obj = NULL, *commit = NULL;
	int rc = 0;

	if (git_revparse_single(&obj, g->repo, revspec) < 0) {
		rc = orch_error_set(ORCH_ENOTFOUND, "base_ref \"%s\" does not name a commit", revspec);
		goto done;
	}
	if (git_object_peel(&commit, obj, GIT_OBJECT_COMMIT) < 0) {
		rc = orch_error_set(ORCH_EINVALID_PARAMS, "base_ref \"%s\" is not a commit", revspec);
		goto done;
	}
	git_oid_tostr(hex, ORCH_GIT_HEX_SIZE, git_object_id(commit));
done:
	git_object_free(commit);
	git_object_free(obj);
	return rc;
}

int orch_git_dirty_paths(const char *workdir, bool untracked, json_t **paths)
{
	git_repository *repo = NULL;
	git_status_list *list = NULL;
	git_status_options opts = GIT_STATUS_OPTIONS_INIT;
	int rc = 0;

	*paths = NULL;
	if (git_repository_open(&repo, workdir) < 0) {
		rc = git_fail("open worktree");
		goto done;
	}
	opts.show = GIT_STATUS_SHOW_INDEX_AND_WORKDIR;
	opts.flags = untracked ? GIT_STATUS_OPT_INCLUDE_UNTRACKED : 0;
	if (git_status_list_new(&list, repo, &opts) < 0) {
		rc = git_fail("status");
		goto done;
	}
	*paths = json_array();
	for (size_t i = 0; i < git_status_list_entrycount(list); i++) {
		const git_status_entry *e = git_status_byindex(list, i);
		const git_diff_delta *d = e->index_to_workdir ? e->index_to_workdir : e->head_to_index;
		if (e->status == GIT_STATUS_CURRENT || !d)
			continue;
		json_array_append_new(*paths, json_string(d->new_file.path ? d->new_file.path : d->old_file.path));
	}
done:
	git_status_list_free(list);
	git_repository_free(repo);
	return rc;
}

/* Collects the paths a checkout reports as conflicts. */
static int collect_conflict(git_checkout_notify_t why, const char *path, const git_diff_file *baseline,
			    const git_diff_file *target, const git_diff_file *workdir, void *payload)
{
	(void)why, (void)baseline, (void)target, (void)workdir;
	if (path)
		json_array_append_new(payload, json_string(path));
	return 0;
}

/*
 * Check out the tree of commit `target` in the checkout at `workdir`, as a
 * change from commit `base` (the baseline).  `conflicts`, when given,
 * collects the paths that block a safe checkout.  Returns libgit2's code.
 */
/*
 * While this process writes a checkout it names it in <state>/inflight/<pid>:
 * if it is killed there, git's index.lock in that checkout is its own, and
 * orch_git_clear_dead_inflight() can remove it without guessing.
 */
static void inflight_mark(orch_git *g, const char *workdir)
{
	FILE *f;

	if (g->inflight && (f = fopen(g->inflight, "w")) != NULL) {
		fputs(workdir, f);
		fflush(f);
		fsync(fileno(f));
		fclose(f);
	}
}

static void inflight_clear(orch_git *g)
{
	if (g->inflight)
		unlink(g->inflight);
}

void orch_git_set_state_dir(orch_git *g, const char *state_dir)
{
	char *dir = NULL;

	free(g->inflight);
	g->inflight = NULL;
	if (asprintf(&dir, "%s/inflight", state_dir) < 0)
		return;
	mkdir(dir, 0755);
	if (asprintf(&g->inflight, "%s/%ld", dir, (long)getpid()) < 0)
		g->inflight = NULL;
	free(dir);
}

int orch_git_clear_dead_inflight(orch_git *g, json_t *log)
{
	char *dir, *slash;
	DIR *d;
	struct dirent *e;

	if (!g->inflight)
		return 0;
	dir = strdup(g->inflight);
	slash = strrchr(dir, '/');
	*slash = '\0';
	if ((d = opendir(dir)) == NULL) {
		free(dir);
		return 0;
	}
	while ((e = readdir(d)) != NULL) {
		char *marker = NULL, workdir[4096], *lock = NULL;
		long pid = strtol(e->d_name, NULL, 10);
		git_repository *wrepo = NULL;
		FILE *f;
		if (pid <= 0 || pid == (long)getpid() || (kill((pid_t)pid, 0) == 0 || errno != ESRCH))
			continue;
		if (asprintf(&marker, "%s/%s", dir, e->d_name) < 0)
			continue;
		if ((f = fopen(marker, "r")) != NULL) {
			size_t n = fread(workdir, 1, sizeof(workdir) - 1, f);
			workdir[n] = '\0';
			fclose(f);
			if (n && git_repository_open(&wrepo, workdir) == 0 &&
			    asprintf(&lock, "%sindex.lock", git_repository_path(wrepo)) >= 0 && unlink(lock) == 0 && log)
				json_array_append_new(log, json_sprintf("removed %s, left by process %ld killed while "
									"updating that checkout", lock, pid));
			git_repository_free(wrepo);
			free(lock);
		}
		unlink(marker);
		free(marker);
	}
	closedir(d);
	free(dir);
	return 0;
}

static int checkout_commit(const char *workdir, const git_oid *target, const git_oid *base, unsigned strategy,
			   json_t *conflicts)
{
	git_repository *wrepo = NULL;
	git_commit *tc = NULL, *bc = NULL;
	git_tree *tt = NULL, *bt = NULL;
	git_checkout_options opts = GIT_CHECKOUT_OPTIONS_INIT;
	int err;

	/* Objects must come from the handle that checks them out. */
	if ((err = git_repository_open(&wrepo, workdir)) < 0 || (err = git_commit_lookup(&tc, wrepo, target)) < 0 ||
	    (err = git_commit_lookup(&bc, wrepo, base)) < 0 || (err = git_commit_tree(&tt, tc)) < 0 ||
	    (err = git_commit_tree(&bt, bc)) < 0)
		goto done;
	opts.checkout_strategy = strategy;
	opts.baseline = bt;
	if (conflicts) {
		opts.notify_flags = GIT_CHECKOUT_NOTIFY_CONFLICT;
		opts.notify_cb = collect_conflict;
		opts.notify_payload = conflicts;
	}
	err = git_checkout_tree(wrepo, (git_object *)tt, &opts);
done:
	git_tree_free(bt);
	git_tree_free(tt);
	git_commit_free(bc);
	git_commit_free(tc);
	git_repository_free(wrepo);
	return err;
}

struct merge_undo {
	orch_git *g;
	char *refname;
	char *workdir; /* NULL: no checkout was updated */
	git_oid old_tip, new_tip;
};

/* Put the checkout back to the old tip, then the branch (only if it is still at the merge). */
static void merge_undo_run(void *arg)
{
	struct merge_undo *u = arg;
	git_reference *ref = NULL;

	if (u->workdir) {
		inflight_mark(u->g, u->workdir);
		checkout_commit(u->workdir, &u->old_tip, &u->new_tip, GIT_CHECKOUT_FORCE, NULL);
		inflight_clear(u->g);
	}
	if (git_reference_create_matching(&ref, u->g->repo, u->refname, &u->old_tip, 1, &u->new_tip,
					  "orchfs: undo merge") == 0)
		git_reference_free(ref);
}

static void merge_undo_free(void *arg)
{
	struct merge_undo *u = arg;

	free(u->refname);
	free(u->workdir);
	free(u);
}

/* Whether the checkout at `workdir` has refs/heads/<branch> as its HEAD. */
static bool has_checked_out(const char *workdir, const char *refname)
{
	git_repository *wrepo = NULL;
	git_reference *head = NULL;
	bool yes = false;

	if (git_repository_open(&wrepo, workdir) == 0 &&
	    git_reference_lookup(&head, wrepo, "HEAD") == 0 &&
	    git_reference_type(head) == GIT_REFERENCE_SYMBOLIC)
		yes = strcmp(git_reference_symbolic_target(head), refname) == 0;
	git_reference_free(head);
	git_repository_free(wrepo);
	return yes;
}

/*
 * A checkout other than `workdir` (the main one or a valid linked one)
 * that has `refname` checked out, or NULL (caller frees).  Moving that
 * branch would leave such a checkout behind its HEAD, which git refuses.
 */
static char *checked_out_elsewhere(git_repository *repo, const char *refname, const char *workdir)
{
	git_strarray names = {0};
	const char *main_dir = git_repository_workdir(repo);
	char *found = NULL;

	if (main_dir && (!workdir || !same_dir(main_dir, workdir)) && has_checked_out(main_dir, refname))
		return strdup(main_dir);
	if (git_worktree_list(&names, repo) < 0)
		return NULL;
	for (size_t i = 0; i < names.count && !found; i++) {
		git_worktree *wt = NULL;
		if (git_worktree_lookup(&wt, repo, names.strings[i]) < 0)
			continue;
		const char *path = git_worktree_path(wt);
		if (git_worktree_validate(wt) == 0 && (!workdir || !same_dir(path, workdir)) &&
		    has_checked_out(path, refname))
			found = strdup(path);
		git_worktree_free(wt);
	}
	git_strarray_dispose(&names);
	return found;
}

/* The paths of the conflicts left in an in-memory merge index, sorted and unique. */
static json_t *conflict_paths(git_index *index)
{
	git_index_conflict_iterator *it = NULL;
	const git_index_entry *anc, *ours, *theirs;
	json_t *paths = json_array();

	if (git_index_conflict_iterator_new(&it, index) < 0)
		return paths;
	while (git_index_conflict_next(&anc, &ours, &theirs, it) == 0) {
		const git_index_entry *e = ours ? ours : theirs ? theirs : anc;
		size_t n = json_array_size(paths);
		if (e && (n == 0 || strcmp(json_string_value(json_array_get(paths, n - 1)), e->path) != 0))
			json_array_append_new(paths, json_string(e->path));
	}
	git_index_conflict_iterator_free(it);
	return paths;
}

static char *paths_text(json_t *paths)
{
	char *s = json_dumps(paths, JSON_COMPACT);
	return s ? s : strdup("[]");
}

/* Fail with `code`, `msg` + the paths, and details {state?, paths}. */
static int fail_paths(int code, const char *state, json_t *paths, const char *fmt, const char *a, const char *b)
{
	char *list = paths_text(paths);
	char msg[512];

	snprintf(msg, sizeof(msg), fmt, a, b);
	orch_error_set(code, "%s: %s", msg, list);
	free(list);
	json_t *d = json_object();
	if (state)
		json_object_set_new(d, "state", json_string(state));
	json_object_set_new(d, "paths", paths);
	orch_error_details(d);
	return code;
}

/*
 * Whether the checkout at `workdir` holds tree `tree_id` in its index and
 * its files match the index: what a merge leaves when it is killed after
 * updating the checkout and before moving the branch.
 */
static bool checkout_holds_tree(const char *workdir, const git_oid *tree_id)
{
	git_status_options opts = GIT_STATUS_OPTIONS_INIT;
	git_repository *wt = NULL;
	git_status_list *list = NULL;
	git_index *idx = NULL;
	git_oid id;
	bool yes = false;

	if (git_repository_open(&wt, workdir) < 0)
		return false;
	if (git_repository_index(&idx, wt) == 0 && git_index_write_tree(&id, idx) == 0 && git_oid_equal(&id, tree_id)) {
		opts.show = GIT_STATUS_SHOW_WORKDIR_ONLY;
		opts.flags = 0; /* untracked files are not part of the question */
		if (git_status_list_new(&list, wt, &opts) == 0)
			yes = git_status_list_entrycount(list) == 0;
	}
	git_status_list_free(list);
	git_index_free(idx);
	git_repository_free(wt);
	return yes;
}

/*
 * Whether every path in `paths` (relative to `workdir`) holds exactly what
 * `tree` has there, or is absent from both: the trace of a checkout to
 * `tree` killed part-way.  Finishing that checkout loses nothing.
 */
static bool partial_checkout_of(git_tree *tree, const char *workdir, json_t *paths)
{
	json_t *p;
	size_t i;

	json_array_foreach(paths, i, p) {
		const char *rel = json_string_value(p);
		git_tree_entry *e = NULL;
		char *full = NULL;
		struct stat sb;
		bool same = false;
		if (!rel || asprintf(&full, "%s/%s", workdir, rel) < 0)
			return false;
		bool on_disk = lstat(full, &sb) == 0, in_tree = git_tree_entry_bypath(&e, tree, rel) == 0;
		if (in_tree && on_disk && S_ISREG(sb.st_mode)) {
			git_oid h;
			same = git_odb_hashfile(&h, full, GIT_OBJECT_BLOB) == 0 && git_oid_equal(&h, git_tree_entry_id(e));
		} else {
			same = !in_tree && !on_disk;
		}
		git_tree_entry_free(e);
		free(full);
		if (!same)
			return false;
	}
	return json_array_size(paths) > 0;
}

int orch_git_merge_into(orch_ctx *ctx, const char *parent, const char *workdir, const char *child,
			char *commit_hex)
{
	git_repository *repo = ctx->git->repo;
	git_reference *pref = NULL, *cref = NULL, *moved = NULL;
	git_commit *pc = NULL, *cc = NULL;
	git_index *index = NULL;
	git_tree *tree = NULL;
	git_signature *sig = NULL;
	git_oid ptip, ctip, tree_id, merged;
	json_t *paths = NULL;
	char *refname = NULL, *msg = NULL, *elsewhere = NULL;
	bool checkout, resumed = false, finish = false;
	struct stat sb;
	int rc = 0, err;

	/* A checkout left locked by a process killed while updating it is released first. */
	orch_git_clear_dead_inflight(ctx->git, NULL);
	/*
	 * From here on git may lock the parent checkout's index (status, a dry
	 * run, the checkout itself): name it, so that a kill leaves a lock
	 * that the next merge or start-up knows to be ours.
	 */
	if (workdir)
		inflight_mark(ctx->git, workdir);
	if (git_branch_lookup(&pref, repo, parent, GIT_BRANCH_LOCAL) < 0) {
		rc = orch_error_set(ORCH_ENOTFOUND, "parent branch \"%s\" does not exist", parent);
		goto done;
	}
	if (git_branch_lookup(&cref, repo, child, GIT_BRANCH_LOCAL) < 0) {
		rc = orch_error_set(ORCH_ENOTFOUND, "branch \"%s\" does not exist", child);
		goto done;
	}
	refname = strdup(git_reference_name(pref));
	git_oid_cpy(&ptip, git_reference_target(pref));
	git_oid_cpy(&ctip, git_reference_target(cref));
	if (git_oid_equal(&ptip, &ctip) || git_graph_descendant_of(repo, &ptip, &ctip) == 1) {
		rc = orch_error_set(ORCH_EINVALID_STATE, "branch \"%s\" has nothing to merge into \"%s\" "
				    "(its tip is already in it)", child, parent);
		orch_error_detail("state", json_string("merged"));
		goto done;
	}
	checkout = workdir && stat(workdir, &sb) == 0 && has_checked_out(workdir, refname);
	if (!checkout && (elsewhere = checked_out_elsewhere(repo, refname, workdir)) != NULL) {
		rc = orch_error_set(ORCH_EINVALID_STATE, "branch \"%s\" is checked out at %s, not in the parent "
				    "worktree's directory; merging would move it under that checkout", parent, elsewhere);
		orch_error_detail("state", json_string("checked_out_elsewhere"));
		goto done;
	}
	if (git_commit_lookup(&pc, repo, &ptip) < 0 || git_commit_lookup(&cc, repo, &ctip) < 0 ||
	    git_merge_commits(&index, repo, pc, cc, NULL) < 0) {
		rc = git_fail("merge");
		goto done;
	}
	if (git_index_has_conflicts(index)) {
		rc = fail_paths(ORCH_ECONFLICT, NULL, conflict_paths(index), "merging \"%s\" into \"%s\" conflicts "
				"in", child, parent);
		goto done;
	}
	if (git_index_write_tree_to(&tree_id, index, repo) < 0 || git_tree_lookup(&tree, repo, &tree_id) < 0) {
		rc = git_fail("write merge tree");
		goto done;
	}
	if (checkout) {
		if ((rc = orch_git_dirty_paths(workdir, false, &paths)) != 0)
			goto done;
		/*
		 * Changes that are exactly this merge's result: a merge killed
		 * after updating the checkout and before moving the branch.
		 * Finish it: only the branch is left to move.
		 */
		if (json_array_size(paths) && checkout_holds_tree(workdir, &tree_id)) {
			resumed = true;
		} else if (json_array_size(paths) && partial_checkout_of(tree, workdir, paths)) {
			finish = true; /* killed half-way through the checkout: finish it */
		} else if (json_array_size(paths)) {
			rc = fail_paths(ORCH_EINVALID_STATE, "dirty", paths, "the checkout of \"%s\" at %s has "
					"uncommitted changes", parent, workdir);
			paths = NULL;
			goto done;
		}
		json_decref(paths);
		paths = NULL;
	}
	if (git_signature_default(&sig, repo) < 0 && git_signature_now(&sig, "orchfs", "orchfs@localhost") < 0) {
		rc = git_fail("signature");
		goto done;
	}
	if (asprintf(&msg, "Merge branch '%s' into %s\n", child, parent) < 0) {
		msg = NULL;
		rc = orch_error_set(ORCH_EINTERNAL, "out of memory");
		goto done;
	}
	const git_commit *parents[2] = {pc, cc};
	if (git_commit_create(&merged, repo, NULL, sig, sig, NULL, msg, tree, 2, parents) < 0) {
		rc = git_fail("create merge commit");
		goto done;
	}
	if (checkout && !resumed) {
		/* A dry run first: an untracked or ignored file in the way stops everything. */
		unsigned safe = GIT_CHECKOUT_SAFE | GIT_CHECKOUT_DONT_OVERWRITE_IGNORED;
		err = 0;
		if (!finish) {
			paths = json_array();
			err = checkout_commit(workdir, &merged, &ptip, safe | GIT_CHECKOUT_DRY_RUN, paths);
			if ((err == GIT_ECONFLICT || json_array_size(paths)) && partial_checkout_of(tree, workdir, paths)) {
				finish = true; /* what is in the way is this merge's own result */
				err = 0;
			} else if (err == GIT_ECONFLICT || json_array_size(paths)) {
				rc = fail_paths(ORCH_EINVALID_STATE, "dirty", paths, "files in the checkout of \"%s\" at "
						"%s would be overwritten by the merge", parent, workdir);
				paths = NULL;
				goto done;
			}
		}
		/* Finishing an interrupted checkout: every difference is already the merge's own. */
		if (finish)
			safe = GIT_CHECKOUT_FORCE;
		if (err < 0 || checkout_commit(workdir, &merged, &ptip, safe, NULL) < 0) {
			rc = git_fail("update the parent's checkout");
			checkout_commit(workdir, &ptip, &merged, GIT_CHECKOUT_FORCE, NULL);
			goto done;
		}
	}
	err = git_reference_create_matching(&moved, repo, refname, &merged, 1, &ptip, msg);
	if (err < 0) {
		if (err == GIT_EMODIFIED)
			rc = orch_error_set(ORCH_ECONFLICT, "branch \"%s\" moved while merging \"%s\"; try again",
					    parent, child);
		else
			rc = git_fail("update branch");
		if (checkout)
			checkout_commit(workdir, &ptip, &merged, GIT_CHECKOUT_FORCE, NULL);
		goto done;
	}
	struct merge_undo *u = calloc(1, sizeof(*u));
	u->g = ctx->git;
	u->refname = refname;
	refname = NULL;
	u->workdir = checkout ? strdup(workdir) : NULL;
	git_oid_cpy(&u->old_tip, &ptip);
	git_oid_cpy(&u->new_tip, &merged);
	orch_undo_push(ctx, merge_undo_run, merge_undo_free, u);
	git_oid_tostr(commit_hex, ORCH_GIT_HEX_SIZE, &merged);
done:
	if (workdir)
		inflight_clear(ctx->git);
	json_decref(paths);
	free(elsewhere);
	free(msg);
	free(refname);
	git_signature_free(sig);
	git_tree_free(tree);
	git_index_free(index);
	git_commit_free(cc);
	git_commit_free(pc);
	git_reference_free(moved);
	git_reference_free(cref);
	git_reference_free(pref);
	return rc;
}

bool orch_git_merged_at_tip(orch_git *g, const char *parent, const char *child, char *commit_hex)
{
	git_reference *pref = NULL, *cref = NULL;
	git_commit *tipc = NULL;
	bool yes = false;

	if (git_branch_lookup(&pref, g->repo, parent, GIT_BRANCH_LOCAL) == 0 &&
	    git_branch_lookup(&cref, g->repo, child, GIT_BRANCH_LOCAL) == 0 &&
	    git_commit_lookup(&tipc, g->repo, git_reference_target(pref)) == 0 &&
	    git_commit_parentcount(tipc) == 2 &&
	    git_oid_equal(git_commit_parent_id(tipc, 1), git_reference_target(cref))) {
		git_oid_tostr(commit_hex, ORCH_GIT_HEX_SIZE, git_commit_id(tipc));
		yes = true;
	}
	git_commit_free(tipc);
	git_reference_free(cref);
	git_reference_free(pref);
	return yes;
}

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
	git_worktree *wt = worktree_at(g, path);

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
		rm_rf(trash);
	free(trash);
}

struct retire {
	orch_git *g;
	char *path;
	char *trash;
	bool moved;  /* the call renamed the checkout aside (else: cleanup only) */
	bool undone; /* the call failed and retire_undo ran */
};

/* The call failed: put the checkout back.  If that fails too, keep it aside for reconcile. */
static void retire_undo(void *arg)
{
	struct retire *r = arg;

	r->undone = true;
	if (r->moved && rename(r->trash, r->path) < 0)
		orch_log("could not put %s back (%s); it stays at %s, and the next start-up puts it back "
			 "once %s is free", r->path, strerror(errno), r->trash, r->path);
}

/*
 * Runs after the commit, or after retire_undo.  Only a committed call
 * finishes the removal: the record of a failed one still names the
 * checkout, so whatever retire_undo could not put back must stay.
 */
static void retire_free(void *arg)
{
	struct retire *r = arg;

	if (!r->undone)
		orch_git_retire_finish(r->g, r->path);
	free(r->path);
	free(r->trash);
	free(r);
}

/* Register the retire `r` on ctx (taking `path`; `trash` is r->trash). */
static void retire_push(orch_ctx *ctx, const char *path, char *trash, bool moved)
{
	struct retire *r = calloc(1, sizeof(*r));

	r->g = ctx->git;
	r->path = strdup(path);
	r->trash = trash;
	r->moved = moved;
	orch_undo_push(ctx, retire_undo, retire_free, r);
}

int orch_git_worktree_retire(orch_ctx *ctx, const char *path)
{
	char *trash = orch_git_retired_path(path);

	if (!trash)
		return orch_error_set(ORCH_EINTERNAL, "out of memory");
	rm_rf(trash); /* a leftover of an interrupted removal */
	if (rename(path, trash) < 0) {
		int e = errno;
		free(trash);
		return orch_error_set(ORCH_EGIT, "cannot remove worktree %s: %s", path, strerror(e));
	}
	retire_push(ctx, path, trash, true);
	return 0;
}

void orch_git_retire_after_commit(orch_ctx *ctx, const char *path)
{
	retire_push(ctx, path, orch_git_retired_path(path), false);
}

int orch_git_prune_stale(orch_git *g, json_t *log)
{
	git_strarray names = {0};

	if (git_worktree_list(&names, g->repo) < 0)
		return git_fail("list worktrees");
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

int orch_git_exclude(orch_git *g, const char *pattern)
{
	char *path = NULL, *line = NULL;
	size_t cap = 0;
	bool present = false;
	FILE *f;

	if (asprintf(&path, "%sinfo", git_repository_commondir(g->repo)) < 0)
		return orch_error_set(ORCH_EINTERNAL, "out of memory");
	mkdir(path, 0755);
	free(path);
	if (asprintf(&path, "%sinfo/exclude", git_repository_commondir(g->repo)) < 0)
		return orch_error_set(ORCH_EINTERNAL, "out of memory");
	if ((f = fopen(path, "r")) != NULL) {
		while (getline(&line, &cap, f) > 0) {
			line[strcspn(line, "\n")] = '\0';
			present |= strcmp(line, pattern) == 0;
		}
		fclose(f);
	}
	free(line);
	if (!present && (f = fopen(path, "a")) != NULL) {
		fprintf(f, "%s\n", pattern);
		fclose(f);
	}
	free(path);
	return 0;
}

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
	git_worktree *wt = worktree_at(g, path);
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
			rm_rf(dir);
			dropped = true;
		}
		git_worktree_free(named);
	}
	free(dir);
	free(name);
	return dropped;
}

int orch_git_worktree_reclaim(orch_git *g, const char *path, const char *branch, const char *base,
			      bool set_aside)
{
	git_repository *wt = NULL;
	git_reference *head = NULL, *ref = NULL;
	char want[512], *lock = NULL;
	bool clean = false, took = false, has_branch;
	struct stat sb;

	has_branch = git_branch_lookup(&ref, g->repo, branch, GIT_BRANCH_LOCAL) == 0;
	/* A branch with commits of its own is work, not a leftover: keep everything. */
	if (has_branch && !(git_reference_target(ref) && contained(g->repo, git_reference_target(ref), base, branch))) {
		git_reference_free(ref);
		return 0;
	}
	git_reference_free(ref);
	/* The caller holds the store's write lock, under which every orchfs git write runs. */
	if (asprintf(&lock, "%srefs/heads/%s.lock", git_repository_commondir(g->repo), branch) >= 0 &&
	    unlink(lock) == 0)
		took = true;
	free(lock);
	if (lstat(path, &sb) == 0) {
		snprintf(want, sizeof(want), "refs/heads/%s", branch);
		if (git_repository_open(&wt, path) == 0)
			clean = git_repository_is_worktree(wt) && git_repository_head(&head, wt) == 0 &&
				strcmp(git_reference_name(head), want) == 0 && checkout_clean(wt);
		git_reference_free(head);
		git_repository_free(wt);
		if (clean) {
			if (orch_git_worktree_remove(g, path, branch, true) != 0)
				return took;
			return 1;
		}
		/*
		 * A half-made checkout looks dirty, and so would work no record
		 * knows about: never delete it; set it aside, if asked to.
		 */
		char *aside = NULL;
		if (!set_aside)
			return took;
		if (asprintf(&aside, "%s.orchfs-leftover-%lld", path, (long long)orch_now_ms()) < 0 ||
		    rename(path, aside) != 0) {
			free(aside);
			return took;
		}
		orch_log("set aside %s as %s: a leftover of an interrupted call, with changes", path, aside);
		free(aside);
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

int orch_git_branches(orch_git *g, json_t **out)
{
	git_branch_iterator *it = NULL;
	git_reference *ref = NULL;
	git_branch_t type;

	*out = json_array();
	if (git_branch_iterator_new(&it, g->repo, GIT_BRANCH_LOCAL) < 0)
		return git_fail("list branches");
	while (git_branch_next(&ref, &type, it) == 0) {
		const char *name = NULL;
		if (git_branch_name(&name, ref) == 0)
			json_array_append_new(*out, json_string(name));
		git_reference_free(ref);
	}
	git_branch_iterator_free(it);
	return 0;
}

int orch_git_orchfs_worktrees(orch_git *g, json_t **out)
{
	git_strarray names = {0};

	*out = json_array();
	if (git_worktree_list(&names, g->repo) < 0)
		return git_fail("list worktrees");
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
