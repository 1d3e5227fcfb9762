/*
 * Opening a workspace: repository, state directory, database, git handle.
 */

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "orchfs/core.h"
#include "orchfs/git.h"

int orch_ctx_open(orch_ctx *ctx, const char *repo_dir, const char *state_dir)
{
	char *repo = NULL, *state = NULL, *db = NULL, cwd[PATH_MAX];
	int rc;

	memset(ctx, 0, sizeof(*ctx));
	if (!repo_dir) {
		if (!getcwd(cwd, sizeof(cwd)))
			return orch_error_set(ORCH_EINTERNAL, "getcwd: %s", strerror(errno));
		repo_dir = cwd;
	}
	char *abs = realpath(repo_dir, NULL);
	if (!abs)
		return orch_error_set(ORCH_ENOTFOUND, "repository %s: %s", repo_dir, strerror(errno));
	rc = orch_git_discover(abs, &repo);
	free(abs);
	if (rc)
		return rc;
	if (state_dir) {
		if (mkdir(state_dir, 0755) < 0 && errno != EEXIST) {
			rc = orch_error_set(ORCH_EINTERNAL, "cannot create state directory %s: %s", state_dir,
					    strerror(errno));
			goto fail;
		}
		state = realpath(state_dir, NULL);
	} else {
		if (asprintf(&state, "%s/.orchfs", repo) < 0)
			state = NULL;
		if (state && mkdir(state, 0755) < 0 && errno != EEXIST) {
			rc = orch_error_set(ORCH_EINTERNAL, "cannot create state directory %s: %s", state,
					    strerror(errno));
			goto fail;
		}
	}
	if (!state) {
		rc = orch_error_set(ORCH_EINTERNAL, "state directory: %s", strerror(errno));
		goto fail;
	}
	if ((rc = orch_git_open(&ctx->git, repo)) != 0)
		goto fail;
	orch_git_set_state_dir(ctx->git, state);
	/* Keep state that lives inside the repository out of git's view. */
	size_t n = strlen(repo);
	if (strncmp(state, repo, n) == 0 && state[n] == '/') {
		char *pattern;
		if (asprintf(&pattern, "%s/", state + n) >= 0) {
			orch_git_exclude(ctx->git, pattern);
			free(pattern);
		}
	}
	if (asprintf(&db, "%s/state.db", state) < 0 || (rc = orch_store_open(&ctx->store, db)) != 0) {
		if (!rc)
			rc = orch_error_set(ORCH_EINTERNAL, "out of memory");
		goto fail;
	}
	free(db);
	ctx->repo_path = repo;
	ctx->state_dir = state;
	return 0;
fail:
	free(db);
	orch_git_close(ctx->git);
	ctx->git = NULL;
	free(repo);
	free(state);
	return rc;
}

void orch_ctx_close(orch_ctx *ctx)
{
	orch_store_close(ctx->store);
	orch_git_close(ctx->git);
	free((char *)ctx->repo_path);
	free((char *)ctx->state_dir);
	memset(ctx, 0, sizeof(*ctx));
}
