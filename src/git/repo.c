/*
 * The repository: opening it, finding it from any directory below it, its
 * HEAD, branch names and existence, revisions, and .git/info/exclude.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "git_int.h"

int orch_git__fail(const char *what)
{
	const git_error *e = git_error_last();

	return orch_error_set(ORCH_EGIT, "git %s: %s", what, e && e->message ? e->message : "failed");
}

bool orch_git__same_dir(const char *a, const char *b)
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
	int rc = 0;

	*out = NULL;
	git_libgit2_init();
	/* A success reply promises durability: git's writes are fsynced like the database's. */
	git_libgit2_opts(GIT_OPT_ENABLE_FSYNC_GITDIR, 1);
	if (!g || !(g->workdir = strdup(repo_path))) {
		rc = orch_error_set(ORCH_EINTERNAL, "out of memory");
		goto fail;
	}
	if (git_repository_open(&g->repo, repo_path) < 0) {
		rc = orch_git__fail("open repository");
		goto fail;
	}
	*out = g;
	return 0;
fail:
	if (g)
		free(g->workdir);
	free(g);
	git_libgit2_shutdown();
	return rc;
}

void orch_git_close(orch_git *g)
{
	if (!g)
		return;
	free(g->inflight_dir);
	free(g->state_dir);
	free(g->workdir);
	git_repository_free(g->repo);
	free(g);
	git_libgit2_shutdown();
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
		rc = orch_git__fail("open repository");
		goto done;
	}
	if (git_repository_is_worktree(repo)) {
		git_repository *main = NULL;
		if (git_repository_open(&main, git_repository_commondir(repo)) < 0) {
			rc = orch_git__fail("open main repository");
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
		return *out ? 0 : orch_git__fail("read HEAD");
	}
	if (err < 0)
		return orch_git__fail("read HEAD");
	/* Detached: no branch ("" rather than "HEAD", which names no branch and would be taken for one). */
	*out = strdup(git_reference_is_branch(head) ? git_reference_shorthand(head) : "");
	git_reference_free(head);
	return 0;
}

bool orch_git__no_commits(orch_git *g)
{
	return git_repository_is_empty(g->repo) == 1 || git_repository_head_unborn(g->repo) == 1;
}

int orch_git__no_commits_error(orch_git *g)
{
	return orch_error_set(ORCH_EINVALID_STATE, "the repository %s has no commits yet (its HEAD is unborn): "
			      "make a first commit (git commit --allow-empty -m init), then retry", g->workdir);
}

bool orch_git_branch_name_valid(const char *name)
{
	int valid = 0;

	/*
	 * "@" is refused too: in every revision it means HEAD, so such a branch
	 * could never be named; so is "refs/...": refs/heads/x would become
	 * refs/heads/refs/heads/x, which every revision reads as another ref.
	 */
	if (!name || !*name || strcmp(name, "HEAD") == 0 || strcmp(name, "@") == 0 || name[0] == '-' ||
	    strncmp(name, "refs/", 5) == 0)
		return false;
	return git_branch_name_is_valid(&valid, name) == 0 && valid;
}

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
		rc = orch_git__no_commits(g) ? orch_git__no_commits_error(g)
					     : orch_error_set(ORCH_ENOTFOUND, "base_ref \"%s\" does not name a commit",
							      revspec);
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

int orch_git_branches(orch_git *g, json_t **out)
{
	git_branch_iterator *it = NULL;
	git_reference *ref = NULL;
	git_branch_t type;

	*out = json_array();
	if (git_branch_iterator_new(&it, g->repo, GIT_BRANCH_LOCAL) < 0)
		return orch_git__fail("list branches");
	while (git_branch_next(&ref, &type, it) == 0) {
		const char *name = NULL;
		if (git_branch_name(&name, ref) == 0)
			json_array_append_new(*out, json_string(name));
		git_reference_free(ref);
	}
	git_branch_iterator_free(it);
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

int orch_git_branch_contains(orch_git *g, const char *branch, const char *other, bool *yes)
{
	git_oid tip, otip;
	char ref[512];

	*yes = false;
	snprintf(ref, sizeof(ref), "refs/heads/%s", branch);
	if (git_reference_name_to_id(&tip, g->repo, ref) != 0)
		return orch_git__fail(branch);
	snprintf(ref, sizeof(ref), "refs/heads/%s", other);
	if (git_reference_name_to_id(&otip, g->repo, ref) != 0)
		return orch_git__fail(other);
	*yes = git_oid_equal(&tip, &otip) || git_graph_descendant_of(g->repo, &tip, &otip) == 1;
	return 0;
}
