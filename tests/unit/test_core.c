/*
 * Core tests without FUSE: sessions, tasks, the call protocol, validation.
 */
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "test.h"

TEST(session_open_creates_root_worktree)
{
	json_t *r = ok(env, "session.open", "{\"agent_role\": \"implementer\", \"owner\": \"alice\"}");
	const char *path = jstr(r, "session_context.session_root_worktree.path");
	struct stat sb;

	CHECK_EQ_INT(jint(r, "session_context.session.id"), 1);
	CHECK_EQ_STR(jstr(r, "session_context.session.status"), "active_new");
	CHECK_EQ_STR(jstr(r, "session_context.session.intent"), "new_work");
	CHECK_EQ_STR(jstr(r, "session_context.session_root_worktree.branch"), "session/1");
	CHECK_EQ_STR(jstr(r, "session_context.session_root_worktree.kind"), "session_root");
	CHECK_EQ_STR(jstr(r, "session_context.main_worktree.branch"), "main");
	CHECK_EQ_STR(jstr(r, "session_context.main_worktree.path"), env->ctx.repo_path);
	CHECK(path && stat(path, &sb) == 0 && S_ISDIR(sb.st_mode));
	/* A real checkout that git itself knows. */
	CHECK(sh("test -f %s/README", path) == 0);
	CHECK(sh("cd %s && git worktree list | grep -q '\\[session/1\\]'", env->repo) == 0);
	CHECK_EQ_INT(db_version(env), 1);
	json_decref(r);
}

TEST(session_open_git_failure_leaves_nothing)
{
	/* Branch session/1 exists already, with work of its own: the open fails and keeps no row, no worktree. */
	CHECK(sh("cd %s && git checkout -q -b session/1 && git commit -q --allow-empty -m work && "
		 "git checkout -q main", env->repo) == 0);
	json_t *e = fails(env, ORCH_EEXISTS, "session.open", "{}");
	CHECK(strstr(jstr(e, "message"), "session/1") != NULL);
	json_decref(e);
	CHECK_EQ_INT(db_version(env), 0);
	json_t *l = fails(env, ORCH_ENOTFOUND, "session.context", "{\"session_id\": 1}");
	json_decref(l);
	CHECK(sh("test -e %s/.orchfs/worktrees/session-1", env->repo) != 0);
	CHECK(sh("cd %s && git worktree list | grep -q session-1", env->repo) != 0);
}

TEST(session_state_exclude)
{
	CHECK(sh("grep -qx '/.orchfs/' %s/.git/info/exclude", env->repo) == 0);
	json_decref(ok(env, "session.open", "{}"));
	CHECK(sh("cd %s && test -z \"$(git status --porcelain)\"", env->repo) == 0);
}

TEST(session_heartbeat_and_close)
{
	json_decref(ok(env, "session.open", "{}"));
	json_t *s = ok(env, "session.heartbeat", "{\"session_id\": 1}");
	CHECK_EQ_STR(jstr(s, "status"), "active_new");
	json_decref(s);
	s = ok(env, "session.close", "{\"session_id\": 1}");
	CHECK_EQ_STR(jstr(s, "status"), "closed");
	json_decref(s);
	int64_t v = db_version(env);
	json_t *e = fails(env, ORCH_EINVALID_STATE, "session.heartbeat", "{\"session_id\": 1}");
	CHECK_EQ_STR(jstr(e, "details.state"), "closed");
	json_decref(e);
	json_decref(fails(env, ORCH_EINVALID_STATE, "session.close", "{\"session_id\": 1}"));
	json_decref(fails(env, ORCH_ENOTFOUND, "session.heartbeat", "{\"session_id\": 9}"));
	CHECK_EQ_INT(db_version(env), v);
}

TEST(session_context_shape)
{
	json_decref(ok(env, "session.open", "{}"));
	json_t *c = ok(env, "session.context", "{\"session_id\": 1}");
	CHECK_EQ_INT(jint(c, "session.id"), 1);
	CHECK(json_object_get(c, "main_worktree") != NULL);
	CHECK(json_object_get(c, "session_root_worktree") != NULL);
	CHECK(json_object_get(c, "current_ref") == NULL);
	/* Timestamps: fixed-width RFC 3339 UTC with milliseconds. */
	const char *ts = jstr(c, "session.started_at");
	CHECK(ts && strlen(ts) == 24 && ts[10] == 'T' && ts[19] == '.' && ts[23] == 'Z');
	json_decref(c);
}

TEST(session_open_resume_work_lists_candidates)
{
	json_t *r = ok(env, "session.open", "{\"intent\": \"resume_work\"}");
	CHECK_EQ_STR(jstr(r, "action_required"), "select_resume_candidate");
	CHECK_EQ_STR(jstr(r, "session.status"), "awaiting_resume");
	CHECK(json_is_array(json_object_get(r, "resume_candidates")));
	CHECK(json_object_get(r, "session_root_worktree") == NULL);
	json_decref(r);
}

TEST(task_create_get_list)
{
	json_t *t = ok(env, "task.create", "{\"level\": \" feature \", \"title\": \"Login\"}");
	CHECK_EQ_INT(jint(t, "id"), 1);
	CHECK_EQ_STR(jstr(t, "level"), "feature");
	CHECK_EQ_STR(jstr(t, "status"), "todo");
	CHECK_EQ_INT(jint(t, "priority"), 0);
	CHECK(json_object_get(t, "parent_id") == NULL);
	json_decref(t);
	json_decref(ok(env, "task.create", "{\"level\": \"case\", \"title\": \"a\", \"parent_id\": 1}"));
	json_decref(ok(env, "task.create", "{\"level\": \"case\", \"title\": \"b\", \"parent_id\": 1, \"priority\": 5}"));
	json_t *l = ok(env, "task.list", "{\"level\": \"case\"}");
	CHECK_EQ_INT(json_array_size(l), 2);
	CHECK_EQ_STR(jstr(l, "0.title"), "b");
	json_decref(l);
	l = ok(env, "task.list", "{\"parent_id\": 1, \"status\": \"todo\"}");
	CHECK_EQ_INT(json_array_size(l), 2);
	json_decref(l);
	l = ok(env, "task.list", "{}");
	CHECK_EQ_INT(json_array_size(l), 3);
	json_decref(l);
	t = ok(env, "task.get", "{\"task_id\": 3}");
	CHECK_EQ_INT(jint(t, "parent_id"), 1);
	json_decref(t);
	CHECK_EQ_INT(db_version(env), 3);
}

TEST(task_bad_input_changes_nothing)
{
	json_decref(ok(env, "task.create", "{\"level\": \"epic\", \"title\": \"E\"}"));
	int64_t v = db_version(env);
	json_t *e;

	json_decref(fails(env, ORCH_EINVALID_PARAMS, "task.create", "{\"title\": \"x\"}"));
	json_decref(fails(env, ORCH_EINVALID_PARAMS, "task.create", "{\"level\": \"  \", \"title\": \"x\"}"));
	json_decref(fails(env, ORCH_EINVALID_PARAMS, "task.create", "{\"level\": 1, \"title\": \"x\"}"));
	json_decref(fails(env, ORCH_EINVALID_PARAMS, "task.create", "{\"level\": \"case\", \"title\": \"x\", \"priority\": 1.5}"));
	json_decref(fails(env, ORCH_EINVALID_PARAMS, "task.create", "{\"level\": \"case\", \"title\": \"x\", \"parent_id\": 0}"));
	json_decref(fails(env, ORCH_EINVALID_PARAMS, "task.create", "{\"level\": \"case\", \"title\": \"x\", \"parent_id\": \"1\"}"));
	json_decref(fails(env, ORCH_ENOTFOUND, "task.create", "{\"level\": \"case\", \"title\": \"x\", \"parent_id\": 7}"));
	e = fails(env, ORCH_EINVALID_PARAMS, "task.create", "{\"level\": \"case\", \"titel\": \"x\"}");
	CHECK(strstr(jstr(e, "message"), "titel") != NULL);
	CHECK(json_is_array(json_object_get(json_object_get(e, "details"), "accepted")));
	json_decref(e);
	json_decref(fails(env, ORCH_EINVALID_PARAMS, "task.create", "[1, 2]"));
	json_decref(fails(env, ORCH_EINVALID_JSON, "task.create", "{\"level\": "));
	json_decref(fails(env, ORCH_EINVALID_JSON, "task.create", "{level: 1}"));
	json_decref(fails(env, ORCH_ENOTFOUND, "task.get", "{\"task_id\": 99}"));
	json_decref(fails(env, ORCH_EINVALID_PARAMS, "task.get", "{\"task_id\": -1}"));
	json_decref(fails(env, ORCH_ENOTFOUND, "no.such.method", "{}"));
	CHECK_EQ_INT(db_version(env), v);
}

TEST(limits)
{
	size_t n = 70 * 1024;
	char *big = malloc(n + 64);
	memset(big, 'a', n);
	big[n] = '\0';
	json_decref(fails(env, ORCH_EINVALID_PARAMS, "task.create", "{\"level\": \"case\", \"title\": \"%s\"}", big));
	free(big);
	char deep[200] = "";
	for (int i = 0; i < 70; i++)
		strcat(deep, "[");
	for (int i = 0; i < 70; i++)
		strcat(deep, "]");
	json_decref(fails(env, ORCH_EINVALID_PARAMS, "task.create", "{\"level\": \"case\", \"title\": %s}", deep));
	CHECK_EQ_INT(db_version(env), 0);
}

TEST(call_id_idempotent)
{
	json_t *a = ok(env, "task.create", "{\"level\": \"case\", \"title\": \"x\", \"call_id\": \"c-1\"}");
	json_t *b = ok(env, "task.create", "{\"level\": \"case\", \"title\": \"x\", \"call_id\": \"c-1\"}");
	CHECK(json_equal(a, b));
	CHECK_EQ_INT(db_version(env), 1);
	json_decref(fails(env, ORCH_EEXISTS, "task.create", "{\"level\": \"case\", \"title\": \"y\", \"call_id\": \"c-1\"}"));
	json_decref(fails(env, ORCH_EEXISTS, "task.get", "{\"task_id\": 1, \"call_id\": \"c-1\"}"));
	json_decref(fails(env, ORCH_EINVALID_PARAMS, "task.get", "{\"task_id\": 1, \"call_id\": \"bad id\"}"));
	/* An error reply is kept too, and replayed: task 2 exists by then, so a fresh run would succeed. */
	json_decref(fails(env, ORCH_ENOTFOUND, "task.get", "{\"task_id\": 2, \"call_id\": \"c-2\"}"));
	json_decref(ok(env, "task.create", "{\"level\": \"case\", \"title\": \"x\"}"));
	json_decref(ok(env, "task.get", "{\"task_id\": 2}"));
	json_decref(fails(env, ORCH_ENOTFOUND, "task.get", "{\"task_id\": 2, \"call_id\": \"c-2\"}"));
	json_decref(a);
	json_decref(b);
	CHECK_EQ_INT(db_version(env), 2);
}

TEST(implied_session_keys)
{
	char *reply = NULL;
	json_decref(ok(env, "session.open", "{}"));
	int rc = orch_call_text(&env->ctx, "session.heartbeat", "{}", 2, 1, &reply);
	CHECK_EQ_INT(rc, 0);
	free(reply);
	rc = orch_call_text(&env->ctx, "session.heartbeat", "{\"session_id\": 2}", 17, 1, &reply);
	CHECK_EQ_INT(rc, ORCH_EINVALID_PARAMS);
	free(reply);
	rc = orch_call_text(&env->ctx, "session.heartbeat", "{\"session_id\": 1}", 17, 1, &reply);
	CHECK_EQ_INT(rc, 0);
	free(reply);
}

TEST(request_parse_incremental)
{
	json_t *v = NULL;
	CHECK_EQ_INT(orch_request_parse("{\"a\":", 5, &v), ORCH_INCOMPLETE);
	CHECK_EQ_INT(orch_request_parse("   ", 3, &v), ORCH_INCOMPLETE);
	CHECK_EQ_INT(orch_request_parse("{\"a\": 1}\n", 9, &v), 0);
	json_decref(v);
	CHECK_EQ_INT(orch_request_parse("{\"a\": 1} x", 10, &v), ORCH_EINVALID_JSON);
	CHECK_EQ_INT(orch_request_parse("{]", 2, &v), ORCH_EINVALID_JSON);
}

TEST(path_normalise)
{
	char *out;
	CHECK_EQ_INT(orch_path_normalise("p", "./a//b/", &out), 0);
	CHECK_EQ_STR(out, "a/b");
	free(out);
	CHECK_EQ_INT(orch_path_normalise("p", "a/../b", &out), 0);
	CHECK_EQ_STR(out, "b");
	free(out);
	CHECK_EQ_INT(orch_path_normalise("p", ".", &out), 0);
	CHECK_EQ_STR(out, ".");
	free(out);
	CHECK_EQ_INT(orch_path_normalise("p", "/etc", &out), ORCH_EINVALID_PARAMS);
	CHECK_EQ_INT(orch_path_normalise("p", "../x", &out), ORCH_EINVALID_PARAMS);
	CHECK_EQ_INT(orch_path_normalise("p", "a/../../x", &out), ORCH_EINVALID_PARAMS);
	CHECK_EQ_INT(orch_path_normalise("p", "", &out), ORCH_EINVALID_PARAMS);
}

TEST(usage_text)
{
	char *u = orch_method_usage(orch_method_find("task.create"), false);
	CHECK(strstr(u, "task.create") && strstr(u, "level") && strstr(u, "call_id") && strstr(u, "Example"));
	free(u);
}

TEST(session_open_reclaims_crash_leftover)
{
	/* A daemon killed after git made session/1's worktree but before the commit. */
	CHECK(sh("cd %s && git worktree add -q -b session/1 %s/.orchfs/worktrees/session-1 2>/dev/null",
		 env->repo, env->repo) == 0);
	json_t *r = ok(env, "session.open", "{}");
	CHECK_EQ_STR(jstr(r, "session_context.session_root_worktree.branch"), "session/1");
	json_decref(r);
	/* But a branch with work of its own is never thrown away. */
	CHECK(sh("cd %s && git worktree add -q -b session/2 %s/.orchfs/worktrees/session-2 2>/dev/null && "
		 "cd %s/.orchfs/worktrees/session-2 && echo w > w && git add w && git commit -qm w",
		 env->repo, env->repo, env->repo) == 0);
	json_decref(fails(env, ORCH_EEXISTS, "session.open", "{}"));
	CHECK(sh("cd %s && git rev-parse -q --verify session/2 >/dev/null", env->repo) == 0);
}

TEST(request_parse_split_anywhere)
{
	const char *req = "{\"a\": true, \"b\": false, \"c\": null, \"d\": -1.5e+3, \"e\": \"caf\xc3\xa9 \\u00e9 \\\" \\\\ \xf0\x9f\x98\x80\", \"f\": [1, 2]}";
	size_t n = strlen(req);
	json_t *v = NULL;

	/* Every proper prefix is incomplete, never malformed; the whole is complete. */
	for (size_t i = 1; i < n; i++) {
		int rc = orch_request_parse(req, i, &v);
		if (rc != ORCH_INCOMPLETE)
			fprintf(stderr, "  prefix of %zu bytes: %d\n", i, rc);
		CHECK(rc == ORCH_INCOMPLETE);
	}
	CHECK_EQ_INT(orch_request_parse(req, n, &v), 0);
	json_decref(v);
	/* Real errors stay errors, wherever they are. */
	CHECK_EQ_INT(orch_request_parse("{\"a\": tx", 8, &v), ORCH_EINVALID_JSON);
	CHECK_EQ_INT(orch_request_parse("{\"a\": tru, \"b\": 1}", 18, &v), ORCH_EINVALID_JSON);
	CHECK_EQ_INT(orch_request_parse("{\"a\": \"\\x\"}", 11, &v), ORCH_EINVALID_JSON);
	CHECK_EQ_INT(orch_request_parse("{\"a\": 1, \"a\": 2}", 16, &v), ORCH_EINVALID_JSON);
}

TEST(session_open_takes_back_every_form_of_leftover)
{
	/* Killed after the branch was made, before the checkout: a bare branch, and a stale ref lock. */
	CHECK(sh("cd %s && git branch session/1 && : > .git/refs/heads/session/2.lock", env->repo) == 0);
	json_t *r = ok(env, "session.open", "{}");
	CHECK_EQ_STR(jstr(r, "session_context.session_root_worktree.branch"), "session/1");
	json_decref(r);
	r = ok(env, "session.open", "{}");
	CHECK_EQ_STR(jstr(r, "session_context.session_root_worktree.branch"), "session/2");
	json_decref(r);
	/* Killed during the checkout: half-written metadata and a half-made directory with files. */
	CHECK(sh("cd %s && git branch session/3 && mkdir -p .git/worktrees/orchfs-session-3 .orchfs/worktrees/session-3 && "
		 "echo partial > .orchfs/worktrees/session-3/README", env->repo) == 0);
	r = ok(env, "session.open", "{}");
	CHECK_EQ_STR(jstr(r, "session_context.session_root_worktree.branch"), "session/3");
	json_decref(r);
	/* The half-made directory was set aside, not deleted; git is consistent. */
	CHECK(sh("ls -d %s/.orchfs/worktrees/session-3.orchfs-leftover-* >/dev/null", env->repo) == 0);
	CHECK(sh("cd %s && test -z \"$(git fsck --no-dangling 2>&1)\" && git worktree list | grep -q session-3",
		 env->repo) == 0);
}

/* Mode bits of `path` (permission bits only), or -1. */
static int mode_of(const char *path)
{
	struct stat sb;

	return lstat(path, &sb) == 0 ? (int)(sb.st_mode & 07777) : -1;
}

TEST(state_is_private)
{
	char p[400];
	/* A dqlite store keeps no database here: only the file naming the cluster. */
	const char *sqlite_files[] = {"state.db", "state.db-wal", "state.db-shm"}, *dqlite_files[] = {"store"};
	const char **files = test_store_is_dqlite() ? dqlite_files : sqlite_files;
	int nfiles = test_store_is_dqlite() ? 1 : 3;

	json_decref(ok(env, "task.create", "{\"level\": \"case\", \"title\": \"t\"}"));
	snprintf(p, sizeof(p), "%s/.orchfs", env->repo);
	CHECK_EQ_INT(mode_of(p), 0700);
	for (int i = 0; i < nfiles; i++) {
		snprintf(p, sizeof(p), "%s/.orchfs/%s", env->repo, files[i]);
		CHECK_EQ_INT(mode_of(p), 0600);
	}
	/* A state directory an older orchfs left readable by all is made private at start-up. */
	orch_ctx_close(&env->ctx);
	CHECK(sh("chmod 755 %s/.orchfs && chmod 644 %s/.orchfs/%s*", env->repo, env->repo, files[0]) == 0);
	CHECK_EQ_INT(orch_ctx_open(&env->ctx, env->repo, NULL), 0);
	snprintf(p, sizeof(p), "%s/.orchfs", env->repo);
	CHECK_EQ_INT(mode_of(p), 0700);
	for (int i = 0; i < nfiles; i++) {
		snprintf(p, sizeof(p), "%s/.orchfs/%s", env->repo, files[i]);
		CHECK(mode_of(p) == 0600 || (i > 0 && mode_of(p) == -1));
	}
	snprintf(p, sizeof(p), "%s/.orchfs/%s", env->repo, files[0]);
	CHECK_EQ_INT(mode_of(p), 0600);
}
