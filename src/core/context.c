/*
 * Opening a workspace: repository, state directory, database, git handle;
 * the pool of read-only connections; per-request contexts.
 */

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "orchfs/core.h"
#include "orchfs/git.h"

/* The state directory `state_dir` (NULL: <repo>/.orchfs), created if needed; caller frees. */
static int state_path(const char *repo, const char *state_dir, char **out)
{
	char *state = NULL;

	*out = NULL;
	if (!state_dir && asprintf(&state, "%s/.orchfs", repo) < 0)
		return orch_error_set(ORCH_EINTERNAL, "out of memory");
	const char *dir = state_dir ? state_dir : state;
	struct stat sb;
	/*
	 * Private: the database holds every session, task and stored reply.
	 * One made by an older orchfs (0755) is made private at start-up too.
	 */
	if (mkdir(dir, 0700) < 0 && errno != EEXIST) {
		int rc = orch_error_set(ORCH_EINTERNAL, "cannot create state directory %s: %s", dir,
					strerror(errno));
		free(state);
		return rc;
	}
	if (stat(dir, &sb) == 0 && (sb.st_mode & 077) && chmod(dir, sb.st_mode & 0700) < 0)
		orch_log("cannot make state directory %s private: %s", dir, strerror(errno));
	if (state_dir) {
		state = realpath(state_dir, NULL);
		if (!state)
			return orch_error_set(ORCH_EINTERNAL, "state directory %s: %s", state_dir, strerror(errno));
	}
	*out = state;
	return 0;
}

bool orch_host_valid(const char *host)
{
	size_t n = strlen(host);

	if (n == 0 || n > ORCH_HOST_MAX)
		return false;
	for (const char *c = host; *c; c++)
		if (!((*c >= 'A' && *c <= 'Z') || (*c >= 'a' && *c <= 'z') || (*c >= '0' && *c <= '9') ||
		      strchr("._:-", *c)))
			return false;
	return true;
}

/*
 * Where the state is: the dqlite cluster named in <state>/store when that
 * file exists (written by `orchfs mount --store dqlite:...`, so that every
 * tool run on this host finds the cluster), else <state>/state.db.
 */
int orch_state_store(const char *state, char **out)
{
	char *path = NULL, buf[4096];
	FILE *f;
	size_t n;

	*out = NULL;
	if (asprintf(&path, "%s/store", state) < 0)
		return orch_error_set(ORCH_EINTERNAL, "out of memory");
	f = fopen(path, "re");
	if (f)
		fchmod(fileno(f), 0600); /* private like the database it stands for */
	if (!f) {
		int err = errno;
		free(path);
		if (err != ENOENT)
			return orch_error_set(ORCH_EINTERNAL, "%s/store: %s", state, strerror(err));
		return asprintf(out, "%s/state.db", state) < 0 ? orch_error_set(ORCH_EINTERNAL, "out of memory") : 0;
	}
	n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = '\0';
	/* "dqlite:..." then, from a daemon, "host NAME": the host this one is (orch_store_set_host). */
	char *nl = strchr(buf, '\n');
	if (nl) {
		*nl++ = '\0';
		if (strncmp(nl, "host ", 5) == 0) {
			nl[5 + strcspn(nl + 5, "\n")] = '\0';
			orch_store_set_host(nl + 5);
		}
	}
	if (!orch_store_is_dqlite(buf)) {
		int rc = orch_error_set(ORCH_EINVALID_STATE, "%s names no dqlite cluster (want dqlite:HOST:PORT,...)", path);
		free(path);
		return rc;
	}
	free(path);
	return (*out = strdup(buf)) ? 0 : orch_error_set(ORCH_EINTERNAL, "out of memory");
}

int orch_env_set_store(const char *state_dir, const char *where, const char *host)
{
	char *path = NULL, *tmp = NULL;
	FILE *f;
	int rc = 0;

	if (!orch_store_is_dqlite(where))
		return orch_error_set(ORCH_EINVALID_PARAMS, "store %s: want dqlite:HOST:PORT,...", where);
	if (asprintf(&path, "%s/store", state_dir) < 0 || asprintf(&tmp, "%s/store.tmp", state_dir) < 0) {
		rc = orch_error_set(ORCH_EINTERNAL, "out of memory");
		goto done;
	}
	/* Written whole then renamed: a tool starting meanwhile reads the old or the new, never half. */
	int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (fd < 0 || !(f = fdopen(fd, "w"))) {
		rc = orch_error_set(ORCH_EINTERNAL, "%s: %s", tmp, strerror(errno));
		if (fd >= 0)
			close(fd);
		goto done;
	}
	bool written = fprintf(f, "%s\n", where) >= 0 && (!host || !*host || fprintf(f, "host %s\n", host) >= 0) &&
		       fflush(f) == 0 && fsync(fileno(f)) == 0;
	if (fclose(f) != 0 || !written || rename(tmp, path) != 0)
		rc = orch_error_set(ORCH_EINTERNAL, "%s: %s", path, strerror(errno));
done:
	free(path);
	free(tmp);
	return rc;
}

int orch_env_open(orch_env *env, const char *repo_dir, const char *state_dir)
{
	return orch_env_open_opts(env, repo_dir, state_dir, NULL);
}

int orch_env_open_opts(orch_env *env, const char *repo_dir, const char *state_dir, const orch_env_opts *opts)
{
	static const orch_env_opts defaults = ORCH_ENV_OPTS_INIT;
	char *repo = NULL, *state = NULL, *db = NULL, cwd[PATH_MAX];
	const char *store, *host;
	int rc;

	memset(env, 0, sizeof(*env));
	if (!opts)
		opts = &defaults;
	store = opts->store;
	host = opts->host ? opts->host : "";
	if (*host && !orch_host_valid(host))
		return orch_error_set(ORCH_EINVALID_PARAMS, "host \"%s\" must be 1 to %d characters of A-Za-z0-9._:-",
				      host, ORCH_HOST_MAX);
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
	if ((rc = state_path(repo, state_dir, &state)) != 0)
		goto fail;
	if ((rc = orch_git_open(&env->git, repo)) != 0)
		goto fail;
	orch_git_set_state_dir(env->git, state);
	/* Keep state that lives inside the repository out of git's view. */
	size_t n = strlen(repo);
	if (strncmp(state, repo, n) == 0 && state[n] == '/') {
		char *pattern;
		if (asprintf(&pattern, "%s/", state + n) >= 0) {
			orch_git_exclude(env->git, pattern);
			free(pattern);
		}
	}
	if ((store && (rc = orch_env_set_store(state, store, host)) != 0) || (rc = orch_state_store(state, &db)) != 0)
		goto fail;
	/* A shared (dqlite) state: without --host, this machine is the host its `store` file names. */
	if (!*host && orch_store_is_dqlite(db))
		host = orch_store_host();
	if ((rc = orch_store_open(&env->writer, db)) != 0)
		goto fail;
	pthread_mutex_init(&env->writer_mu, NULL);
	pthread_mutex_init(&env->pool_mu, NULL);
	pthread_mutex_init(&env->lane_mu, NULL);
	pthread_cond_init(&env->lane_cond, NULL);
	pthread_mutex_init(&env->wait_mu, NULL);
	pthread_cond_init(&env->wait_cond, NULL);
	env->repo_path = repo;
	env->state_dir = state;
	env->db_path = db;
	env->host = strdup(host);
	return 0;
fail:
	orch_git_close(env->git);
	env->git = NULL;
	free(db);
	free(repo);
	free(state);
	return rc;
}

void orch_env_close(orch_env *env)
{
	for (size_t i = 0; i < env->npool; i++)
		orch_store_close(env->pool[i]);
	free(env->pool);
	orch_store_close(env->writer);
	orch_git_close(env->git);
	orch_env_stop_writer(env);
	pthread_mutex_destroy(&env->writer_mu);
	pthread_mutex_destroy(&env->pool_mu);
	pthread_mutex_destroy(&env->lane_mu);
	pthread_cond_destroy(&env->lane_cond);
	pthread_mutex_destroy(&env->wait_mu);
	pthread_cond_destroy(&env->wait_cond);
	free(env->repo_path);
	free(env->state_dir);
	free(env->db_path);
	free((char *)env->host);
	memset(env, 0, sizeof(*env));
}

int orch_env_reader(orch_env *env, orch_store **out)
{
	pthread_mutex_lock(&env->pool_mu);
	*out = env->npool ? env->pool[--env->npool] : NULL;
	pthread_mutex_unlock(&env->pool_mu);
	return *out ? 0 : orch_store_open_reader(out, env->db_path);
}

void orch_env_reader_put(orch_env *env, orch_store *st)
{
	if (!st)
		return;
	if (orch_store_in_txn(st))
		orch_store_rollback(st);
	pthread_mutex_lock(&env->pool_mu);
	if (env->npool == env->cappool) {
		env->cappool = env->cappool ? env->cappool * 2 : 8;
		env->pool = orch_xrealloc(env->pool, env->cappool * sizeof(*env->pool));
	}
	env->pool[env->npool++] = st;
	pthread_mutex_unlock(&env->pool_mu);
}

void orch_env_notify_commit(orch_env *env)
{
	pthread_mutex_lock(&env->wait_mu);
	env->commit_seq++;
	pthread_cond_broadcast(&env->wait_cond);
	pthread_mutex_unlock(&env->wait_mu);
}

void orch_ctx_init(orch_ctx *ctx, orch_env *env, orch_store *store, orch_git *git)
{
	memset(ctx, 0, sizeof(*ctx));
	ctx->env = env;
	ctx->store = store;
	ctx->git = git;
	ctx->repo_path = env->repo_path;
	ctx->state_dir = env->state_dir;
	ctx->host = env->host;
	ctx->now = orch_now_ms();
}

int orch_ctx_open(orch_ctx *ctx, const char *repo_dir, const char *state_dir)
{
	return orch_ctx_open_host(ctx, repo_dir, state_dir, NULL);
}

int orch_ctx_open_host(orch_ctx *ctx, const char *repo_dir, const char *state_dir, const char *host)
{
	orch_env *env = calloc(1, sizeof(*env));
	int rc;

	memset(ctx, 0, sizeof(*ctx));
	if (!env)
		return orch_error_set(ORCH_EINTERNAL, "out of memory");
	orch_env_opts o = ORCH_ENV_OPTS_INIT;
	o.host = host;
	if ((rc = orch_env_open_opts(env, repo_dir, state_dir, &o)) != 0) {
		free(env);
		return rc;
	}
	orch_ctx_init(ctx, env, env->writer, env->git);
	ctx->own_env = env;
	return 0;
}

void orch_ctx_close(orch_ctx *ctx)
{
	if (ctx->own_env) {
		orch_env_close(ctx->own_env);
		free(ctx->own_env);
	}
	memset(ctx, 0, sizeof(*ctx));
}
