/*
 * The mirror without FUSE: the two steps of mirror.refresh (a rendering
 * from a snapshot, then its write) when another refresh gets in between.
 */
#include <dirent.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "test.h"

#define ROLE "{\"requester_role\": \"doc-mirror-manager\"}"

/* Rendering directories under <state>/mirror. */
static int render_dirs(test_env *env)
{
	char path[512];
	DIR *d;
	struct dirent *e;
	int n = 0;

	snprintf(path, sizeof(path), "%s/mirror", env->ctx.state_dir);
	if (!(d = opendir(path)))
		return 0;
	while ((e = readdir(d)) != NULL)
		n += strncmp(e->d_name, "r.", 2) == 0;
	closedir(d);
	return n;
}

static int mirror_commits(test_env *env)
{
	char cmd[512];
	int n = -1;

	snprintf(cmd, sizeof(cmd), "git -C %s rev-list --count refs/orchfs/mirror 2>/dev/null || echo 0", env->repo);
	FILE *f = popen(cmd, "r");
	if (f) {
		if (fscanf(f, "%d", &n) != 1)
			n = -1;
		pclose(f);
	}
	return n;
}

/* The text of mirror file `id` as the tree serves it (caller frees). */
static char *served(test_env *env, int64_t id)
{
	char *map = NULL, *text = NULL;
	size_t len = 0;
	int64_t mtime;

	CHECK(orch_store_begin(env->ctx.store, false) == 0);
	CHECK(orch_mirror_file(&env->ctx, id, &map, &len, &mtime) == 0);
	orch_store_rollback(env->ctx.store);
	if (map) {
		text = strndup(map, len);
		munmap(map, len);
	}
	return text;
}

TEST(mirror_refresh_renders_and_commits_without_a_bump)
{
	json_decref(ok(env, "task.create", "{\"level\": \"case\", \"title\": \"first\"}"));
	json_t *r = ok(env, "mirror.refresh", ROLE);
	CHECK_EQ_INT(jint(r, "mirror_status.md_version"), 1);
	CHECK_EQ_INT(db_version(env), 1);
	CHECK_EQ_INT(mirror_commits(env), 1);
	json_decref(r);
	char *tasks = served(env, 2);
	CHECK(tasks && strstr(tasks, "<a id=\"task-1\"></a>#1 case: first") != NULL);
	free(tasks);
	/* Unchanged: no commit, same bytes. */
	char *before = served(env, 1);
	json_decref(ok(env, "mirror.refresh", ROLE));
	char *after = served(env, 1);
	CHECK(before && after && strcmp(before, after) == 0);
	CHECK_EQ_INT(mirror_commits(env), 1);
	free(before);
	free(after);
	json_decref(fails(env, ORCH_EFORBIDDEN, "mirror.refresh", "{\"requester_role\": \"coder\"}"));
	json_decref(fails(env, ORCH_EINVALID_PARAMS, "mirror.refresh",
			  "{\"requester_role\": \"doc-mirror-manager\", \"target_path\": \"../x.md\"}"));
	CHECK_EQ_INT(render_dirs(env), 1);
}

TEST(mirror_older_rendering_is_dropped)
{
	const orch_method *m = orch_method_find("mirror.refresh");
	json_t *p = json_pack("{s:s}", "requester_role", "doc-mirror-manager"), *prep = NULL, *res = NULL;
	orch_ctx *c = &env->ctx;

	json_decref(ok(env, "task.create", "{\"level\": \"case\", \"title\": \"one\"}"));
	/* Step one of a refresh: rendered from the state at db_version 1 ... */
	CHECK(m && m->prepare && orch_store_begin(c->store, false) == 0);
	CHECK(m->prepare(c, p, &prep) == 0);
	orch_store_rollback(c->store);
	CHECK_EQ_INT(render_dirs(env), 1);
	/* ... meanwhile a change and a whole refresh of it (another process's) ... */
	json_decref(ok(env, "task.create", "{\"level\": \"case\", \"title\": \"two\"}"));
	json_decref(ok(env, "mirror.refresh", ROLE));
	CHECK_EQ_INT(mirror_commits(env), 1);
	/* ... then its write: the later rendering stays served, nothing is committed. */
	c->prepared = prep;
	CHECK(orch_store_begin(c->store, true) == 0);
	CHECK(m->fn(c, p, &res) == 0);
	CHECK(orch_store_commit(c->store) == 0);
	orch_undo_clear(c);
	c->prepared = NULL;
	CHECK_EQ_INT(jint(res, "mirror_status.md_version"), 2);
	CHECK(json_is_false(json_object_get(json_object_get(res, "mirror_status"), "outdated")));
	char *tasks = served(env, 2);
	CHECK(tasks && strstr(tasks, "case: two") != NULL);
	free(tasks);
	CHECK_EQ_INT(mirror_commits(env), 1);
	/* Its directory goes with it. */
	m->unprepare(prep);
	CHECK_EQ_INT(render_dirs(env), 1);
	json_decref(prep);
	json_decref(res);
	json_decref(p);
}

TEST(mirror_commit_of_a_killed_refresh_is_reused)
{
	const orch_method *m = orch_method_find("mirror.refresh");
	json_t *p = json_pack("{s:s}", "requester_role", "doc-mirror-manager"), *prep = NULL, *res = NULL;
	orch_ctx *c = &env->ctx;

	json_decref(ok(env, "mirror.refresh", ROLE));
	CHECK_EQ_INT(mirror_commits(env), 1);
	json_decref(ok(env, "task.create", "{\"level\": \"case\", \"title\": \"one\"}"));
	CHECK(orch_store_begin(c->store, false) == 0);
	CHECK(m->prepare(c, p, &prep) == 0);
	orch_store_rollback(c->store);
	/* A refresh of this state was killed after moving the ref, before its transaction committed. */
	CHECK(sh("cd %s && git update-ref refs/orchfs/mirror $(git commit-tree %s -p refs/orchfs/mirror -m killed)",
		 env->repo, json_string_value(json_object_get(prep, "tree"))) == 0);
	CHECK_EQ_INT(mirror_commits(env), 2);
	c->prepared = prep;
	CHECK(orch_store_begin(c->store, true) == 0);
	CHECK(m->fn(c, p, &res) == 0);
	CHECK(orch_store_commit(c->store) == 0);
	orch_undo_clear(c);
	c->prepared = NULL;
	m->unprepare(prep);
	/* Its commit stands for this refresh: no empty commit after it. */
	CHECK_EQ_INT(mirror_commits(env), 2);
	CHECK_EQ_INT(jint(res, "mirror_status.md_version"), 1);
	char *tasks = served(env, 2);
	CHECK(tasks && strstr(tasks, "case: one") != NULL);
	free(tasks);
	json_decref(prep);
	json_decref(res);
	json_decref(p);
}
