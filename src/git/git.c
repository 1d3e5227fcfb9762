/*
 * libgit2 glue: repository discovery, branches and linked worktrees, with
 * undo actions so that a failed transaction leaves no git effect behind.
 */

#include <errno.h>
#include <ftw.h>
#include <git2.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "orchfs/git.h"

struct orch_git {
	git_repository *repo;
};

static int git_fail(const char *what)
{
	const git_error *e = git_error_last();

	return orch_error_set(ORCH_EGIT, "git %s: %s", what, e && e->message ? e->message : "failed");
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
		rc = orch_error_set(ORCH_ENOTFOUND, "%s is not inside a git repository", dir);
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

	if (!name || !*name || strcmp(name, "HEAD") == 0 || name[0] == '-')
		return false;
	return git_branch_name_is_valid(&valid, name) == 0 && valid;
}

char *orch_git_worktree_name(const char *path)
{
	char *dup = strdup(path), *name;

	if (asprintf(&name, "orchfs-%s", basename(dup)) < 0)
		name = NULL;
	free(dup);
	return name;
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
	(void)sb;
	(void)flag;
	(void)ftw;
	return remove(path);
}

static void rm_rf(const char *path)
{
	nftw(path, rm_entry, 32, FTW_DEPTH | FTW_PHYS);
}

static int mkdir_p(const char *dir)
{
	char *tmp = strdup(dir);
	int rc = 0;

	for (char *p = tmp + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = '\0';
		if (mkdir(tmp, 0755) < 0 && errno != EEXIST)
			rc = -1;
		*p = '/';
	}
	if (mkdir(tmp, 0755) < 0 && errno != EEXIST)
		rc = -1;
	free(tmp);
	return rc;
}

int orch_git_worktree_remove(orch_git *g, const char *path, const char *branch, bool delete_branch)
{
	char *name = orch_git_worktree_name(path);
	git_worktree *wt = NULL;
	int rc = 0;

	if (git_worktree_lookup(&wt, g->repo, name) == 0) {
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
	free(name);
	return rc;
}

struct wt_undo {
	orch_git *g;
	char *path;
	char *branch;
};

static void wt_undo_run(void *arg)
{
	struct wt_undo *u = arg;

	orch_git_worktree_remove(u->g, u->path, u->branch, true);
}

static void wt_undo_free(void *arg)
{
	struct wt_undo *u = arg;

	free(u->path);
	free(u->branch);
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
	if (mkdir_p(dirname(parent)) < 0) {
		rc = orch_error_set(ORCH_EGIT, "cannot create %s: %s", parent, strerror(errno));
		goto done;
	}
	if (git_branch_create(&ref, repo, branch, commit, 0) < 0) {
		rc = git_fail("create branch");
		goto done;
	}
	opts.ref = ref;
	if (git_worktree_add(&wt, repo, wt_name, path, &opts) < 0) {
		rc = git_fail("add worktree");
		git_branch_delete(ref);
		rm_rf(path);
		goto done;
	}
	struct wt_undo *u = calloc(1, sizeof(*u));
	u->g = ctx->git;
	u->path = strdup(path);
	u->branch = strdup(branch);
	orch_undo_push(ctx, wt_undo_run, wt_undo_free, u);
done:
	free(parent);
	git_worktree_free(old);
	git_worktree_free(wt);
	git_reference_free(ref);
	git_commit_free(commit);
	git_object_free(obj);
	return rc;
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

int orch_git_worktree_reclaim(orch_git *g, const char *path, const char *branch)
{
	git_repository *wt = NULL;
	git_reference *head = NULL, *ref = NULL, *main_head = NULL;
	char want[512];
	bool ours;
	int rc = 0;

	if (access(path, F_OK) != 0 || git_repository_open(&wt, path) < 0)
		return 0;
	snprintf(want, sizeof(want), "refs/heads/%s", branch);
	ours = git_repository_is_worktree(wt) && git_repository_head(&head, wt) == 0 &&
	       strcmp(git_reference_name(head), want) == 0 && checkout_clean(wt);
	if (ours && git_branch_lookup(&ref, g->repo, branch, GIT_BRANCH_LOCAL) == 0 &&
	    git_repository_head(&main_head, g->repo) == 0) {
		const git_oid *tip = git_reference_target(ref), *base = git_reference_target(main_head);
		/* Nothing to lose: the branch has no commit that HEAD lacks. */
		ours = tip && base && (git_oid_equal(tip, base) || git_graph_descendant_of(g->repo, base, tip) == 1);
	} else {
		ours = false;
	}
	git_reference_free(head);
	git_reference_free(ref);
	git_reference_free(main_head);
	git_repository_free(wt);
	if (ours && orch_git_worktree_remove(g, path, branch, true) == 0)
		rc = 1;
	return rc;
}
