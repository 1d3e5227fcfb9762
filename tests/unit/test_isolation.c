/*
 * Isolation without FUSE: the scheduler's scoring, the lock rules and
 * leases, worktree create/spawn/merge/abandon with real git effects, the
 * undo of those effects, and the start-up reconciliation.
 */
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "orchfs/git.h"
#include "test.h"

static char *tip(test_env *env, const char *branch)
{
	return strdup(out1("git -C %s rev-parse -q --verify refs/heads/%s", env->repo, branch));
}

static bool exists(const char *path)
{
	struct stat sb;

	return lstat(path, &sb) == 0;
}

/* Session 1 with its root (worktree 2, branch session/1) and a spawned child (worktree 3). */
static void session_and_child(test_env *env)
{
	json_decref(ok(env, "session.open", "{}"));
	json_decref(ok(env, "worktree.spawn", "{\"session_id\": 1, \"parent_worktree_id\": 2}"));
}

/* Commit `content` to `file` in the checkout at `dir`. */
static int commit_in(const char *dir, const char *file, const char *content)
{
	return sh("cd %s && printf '%%s' '%s' > %s && git add %s && git -c user.name=t -c user.email=t@e "
		  "commit -q -m 'change %s'", dir, content, file, file, file);
}

/* <repo>/.orchfs/worktrees/<name>, in one of 8 rotating buffers. */
static const char *wt_path(test_env *env, const char *name)
{
	static char bufs[8][512];
	static unsigned next;
	char *buf = bufs[next++ % 8];

	snprintf(buf, sizeof(bufs[0]), "%s/.orchfs/worktrees/%s", env->repo, name);
	return buf;
}

/* ---- scheduler ---- */

TEST(scheduler_reference_examples)
{
	json_t *r = ok(env, "scheduler.decide_worktree", "{\"changed_files\": 2, \"estimate_minutes\": 15, "
		       "\"risk\": 1, \"parallel_workers\": 1, \"conflicting_paths\": 1}");
	CHECK_EQ_STR(jstr(r, "mode"), "shared");
	CHECK_EQ_INT(jint(r, "score"), 10);
	CHECK_EQ_STR(jstr(r, "reasons.0"), "changed_files=2");
	CHECK_EQ_STR(jstr(r, "reasons.1"), "estimate_minutes=15(+1)");
	CHECK_EQ_STR(jstr(r, "reasons.2"), "risk=1(+3)");
	CHECK_EQ_STR(jstr(r, "reasons.3"), "parallel_workers=1(+2)");
	CHECK_EQ_STR(jstr(r, "reasons.4"), "conflicting_paths=1(+2)");
	json_decref(r);
	r = ok(env, "scheduler.decide_worktree", "{\"changed_files\": 6, \"estimate_minutes\": 60, \"risk\": 2, "
	       "\"parallel_workers\": 2, \"conflicting_paths\": 2}");
	CHECK_EQ_STR(jstr(r, "mode"), "worktree");
	CHECK_EQ_INT(jint(r, "score"), 24);
	json_decref(r);
	r = ok(env, "scheduler.decide_worktree", "{\"changed_files\": 3, \"estimate_minutes\": 16, \"risk\": 2, "
	       "\"parallel_workers\": 0, \"conflicting_paths\": -4}");
	CHECK_EQ_STR(jstr(r, "mode"), "shared");
	CHECK_EQ_INT(jint(r, "score"), 11);
	CHECK_EQ_INT(json_array_size(json_object_get(r, "reasons")), 3);
	CHECK_EQ_STR(jstr(r, "reasons.1"), "estimate_minutes=16(+2)");
	CHECK_EQ_STR(jstr(r, "reasons.2"), "risk=2(+6)");
	json_decref(r);
}

TEST(scheduler_threshold_and_edges)
{
	json_t *r = ok(env, "scheduler.decide_worktree", "{}");
	CHECK_EQ_STR(jstr(r, "mode"), "shared");
	CHECK_EQ_INT(jint(r, "score"), 0);
	CHECK(json_is_array(json_object_get(r, "reasons")) && json_array_size(json_object_get(r, "reasons")) == 0);
	json_decref(r);
	r = ok(env, "scheduler.decide_worktree", "{\"changed_files\": 12}");
	CHECK_EQ_STR(jstr(r, "mode"), "worktree");
	json_decref(r);
	r = ok(env, "scheduler.decide_worktree", "{\"changed_files\": 11}");
	CHECK_EQ_STR(jstr(r, "mode"), "shared");
	json_decref(r);
	r = ok(env, "scheduler.decide_worktree", "{\"estimate_minutes\": 1}");
	CHECK_EQ_INT(jint(r, "score"), 1);
	json_decref(r);
	/* Saturates instead of overflowing. */
	r = ok(env, "scheduler.decide_worktree", "{\"risk\": 9223372036854775807, \"parallel_workers\": "
	       "9223372036854775807}");
	CHECK_EQ_STR(jstr(r, "mode"), "worktree");
	CHECK(jint(r, "score") == INT64_MAX);
	json_decref(r);
	json_decref(fails(env, ORCH_EINVALID_PARAMS, "scheduler.decide_worktree", "{\"risk\": 1.5}"));
	json_decref(fails(env, ORCH_EINVALID_PARAMS, "scheduler.decide_worktree", "{\"risk\": \"2\"}"));
	json_decref(fails(env, ORCH_EINVALID_PARAMS, "scheduler.decide_worktree", "{\"conflicting_paths\": [\"a\"]}"));
	CHECK_EQ_INT(db_version(env), 0);
}

/* ---- locks ---- */

TEST(lock_overlap_rules)
{
	static const struct {
		const char *ta, *pa, *tb, *pb;
		bool overlap;
	} cases[] = {
		{"file", "a/b.c", "file", "a/b.c", true},
		{"file", "a/b.c", "file", "a/b.h", false},
		{"file", "src", "file", "src/x", false},
		{"file", "src/api/u.go", "prefix", "src/api", true},
		{"file", "src/api", "prefix", "src/api", true},
		{"file", "src/apix/u.go", "prefix", "src/api", false},
		{"file", "src/ap", "prefix", "src/api", false},
		{"prefix", "src/api", "file", "src/api/u.go", true},
		{"prefix", "src/api", "file", "src/apix", false},
		{"prefix", "src", "prefix", "src/api", true},
		{"prefix", "src/api", "prefix", "src", true},
		{"prefix", "src/api", "prefix", "src/apix", false},
		{"prefix", "src/api", "prefix", "src/api", true},
		{"prefix", ".", "file", "anything/at/all", true},
		{"prefix", ".", "prefix", "x", true},
		{"prefix", "x", "prefix", ".", true},
		{"file", "top", "prefix", ".", true},
		{"prefix", "a/b", "prefix", "a/c", false},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		bool got = orch_lock_overlaps(cases[i].ta, cases[i].pa, cases[i].tb, cases[i].pb);
		if (got != cases[i].overlap) {
			fprintf(stderr, "  %s:%s vs %s:%s: got %d\n", cases[i].ta, cases[i].pa, cases[i].tb,
				cases[i].pb, got);
			test_failed = 1;
		}
	}
}

TEST(lock_acquire_conflicts_and_same_owner)
{
	json_t *l = ok(env, "lock.acquire", "{\"scope_type\": \" Prefix \", \"scope_path\": \"./src//api/\", "
		       "\"owner_session\": \"s1\"}");
	CHECK_EQ_STR(jstr(l, "scope_type"), "prefix");
	CHECK_EQ_STR(jstr(l, "scope_path"), "src/api");
	CHECK_EQ_STR(jstr(l, "state"), "active");
	CHECK_EQ_INT(jint(l, "id"), 1);
	json_decref(l);
	int64_t v = db_version(env);
	json_t *e = fails(env, ORCH_ECONFLICT, "lock.acquire", "{\"scope_type\": \"file\", \"scope_path\": "
			  "\"src/api/users.go\", \"owner_session\": \"s2\"}");
	CHECK_EQ_INT(jint(e, "details.lock.id"), 1);
	CHECK_EQ_STR(jstr(e, "details.lock.owner_session"), "s1");
	CHECK(strstr(jstr(e, "message"), "src/api") != NULL);
	json_decref(e);
	json_decref(fails(env, ORCH_ECONFLICT, "lock.acquire", "{\"scope_type\": \"prefix\", \"scope_path\": "
			  "\"src\", \"owner_session\": \"s2\"}"));
	json_decref(fails(env, ORCH_ECONFLICT, "lock.acquire", "{\"scope_type\": \"prefix\", \"scope_path\": "
			  "\".\", \"owner_session\": \"s2\"}"));
	CHECK_EQ_INT(db_version(env), v);
	/* The same owner never conflicts with itself; src/api does not cover src/apix. */
	json_decref(ok(env, "lock.acquire", "{\"scope_type\": \"file\", \"scope_path\": \"src/api/users.go\", "
		       "\"owner_session\": \"s1\"}"));
	json_decref(ok(env, "lock.acquire", "{\"scope_type\": \"file\", \"scope_path\": \"src/apix/a.go\", "
		       "\"owner_session\": \"s2\"}"));
	json_decref(ok(env, "lock.acquire", "{\"scope_type\": \"prefix\", \"scope_path\": \"docs\", "
		       "\"owner_session\": \"s2\"}"));
	CHECK_EQ_INT(db_version(env), v + 3);
}

TEST(lock_bad_input_changes_nothing)
{
	static const char *const bad[] = {
		"{\"scope_type\": \"file\", \"scope_path\": \"/etc/passwd\", \"owner_session\": \"a\"}",
		"{\"scope_type\": \"file\", \"scope_path\": \"../x\", \"owner_session\": \"a\"}",
		"{\"scope_type\": \"prefix\", \"scope_path\": \"a/../../x\", \"owner_session\": \"a\"}",
		"{\"scope_type\": \"file\", \"scope_path\": \"\", \"owner_session\": \"a\"}",
		"{\"scope_type\": \"file\", \"scope_path\": \".\", \"owner_session\": \"a\"}",
		"{\"scope_type\": \"dir\", \"scope_path\": \"x\", \"owner_session\": \"a\"}",
		"{\"scope_type\": \"file\", \"scope_path\": \"x\", \"owner_session\": \"  \"}",
		"{\"scope_type\": \"file\", \"scope_path\": \"x\"}",
		"{\"scope_type\": \"file\", \"scope_path\": \"x\", \"owner_session\": \"a\", \"ttl_seconds\": -1}",
		"{\"scope_type\": \"file\", \"scope_path\": \"x\", \"owner_session\": \"a\", \"ttl_seconds\": 1.5}",
		"{\"scope_type\": \"file\", \"scope_path\": \"x\", \"owner_session\": \"a\", \"ttl_seconds\": "
		"9223372036854775807}",
		"{\"scope_type\": \"file\", \"scope_path\": \"x\", \"owner_session\": 0}",
		"{\"scope_type\": \"file\", \"scope_path\": \"x\", \"owner_session\": 1.5}",
		"{\"scope_type\": \"file\", \"scope_path\": \"x\", \"owner\": \"a\"}",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		json_decref(fails(env, ORCH_EINVALID_PARAMS, "lock.acquire", "%s", bad[i]));
	json_decref(fails(env, ORCH_ENOTFOUND, "lock.release", "{\"lock_id\": 1, \"owner_session\": \"a\"}"));
	json_decref(fails(env, ORCH_ENOTFOUND, "lock.heartbeat", "{\"lock_id\": 1, \"owner_session\": \"a\"}"));
	json_decref(fails(env, ORCH_EINVALID_PARAMS, "lock.release", "{\"lock_id\": 0}"));
	/* Without owner_session nobody's lock can be renewed or freed through ctl/. */
	json_decref(fails(env, ORCH_EINVALID_PARAMS, "lock.release", "{\"lock_id\": 1}"));
	json_decref(fails(env, ORCH_EINVALID_PARAMS, "lock.heartbeat", "{\"lock_id\": 1}"));
	CHECK_EQ_INT(db_version(env), 0);
}

/* Move a lock's lease into the past, as if its time had run out. */
static void expire(test_env *env, int id)
{
	char sql[128];

	snprintf(sql, sizeof(sql), "UPDATE locks SET lease_until = lease_until - 700000 WHERE id = %d", id);
	CHECK(orch_store_exec(env->ctx.store, sql) == 0);
}

TEST(lock_expiry_is_real_time)
{
	json_decref(ok(env, "lock.acquire", "{\"scope_type\": \"file\", \"scope_path\": \"a.c\", "
		       "\"owner_session\": \"a\", \"ttl_seconds\": 600}"));
	expire(env, 1);
	int64_t v = db_version(env);
	/* An expired lease never conflicts and cannot be revived. */
	json_t *e = fails(env, ORCH_EINVALID_STATE, "lock.heartbeat", "{\"lock_id\": 1, \"owner_session\": \"a\"}");
	CHECK_EQ_STR(jstr(e, "details.state"), "expired");
	json_decref(e);
	json_decref(fails(env, ORCH_ENOTFOUND, "lock.release", "{\"lock_id\": 1, \"owner_session\": \"a\"}"));
	CHECK_EQ_INT(db_version(env), v);
	json_t *l = ok(env, "lock.acquire", "{\"scope_type\": \"prefix\", \"scope_path\": \".\", \"owner_session\": "
		       "\"b\"}");
	CHECK_EQ_INT(jint(l, "id"), 2);
	json_decref(l);
	CHECK_EQ_INT(db_version(env), v + 1);
	json_t *all = NULL;
	env->ctx.now = orch_now_ms();
	CHECK(orch_lock_json(&env->ctx, 1, &all) == 0);
	CHECK_EQ_STR(jstr(all, "state"), "expired");
	json_decref(all);
}

TEST(lock_heartbeat_release_and_owner_checks)
{
	json_t *l = ok(env, "lock.acquire", "{\"scope_type\": \"file\", \"scope_path\": \"a.c\", "
		       "\"owner_session\": \"a\", \"ttl_seconds\": 5}");
	const char *lease0 = jstr(l, "lease_until");
	char first[32];
	snprintf(first, sizeof(first), "%s", lease0);
	json_decref(l);
	int64_t v = db_version(env);
	json_decref(fails(env, ORCH_EFORBIDDEN, "lock.heartbeat", "{\"lock_id\": 1, \"owner_session\": \"b\"}"));
	json_decref(fails(env, ORCH_EFORBIDDEN, "lock.release", "{\"lock_id\": 1, \"owner_session\": \"b\"}"));
	json_decref(fails(env, ORCH_EINVALID_PARAMS, "lock.heartbeat", "{\"lock_id\": 1, \"ttl_seconds\": -5}"));
	CHECK_EQ_INT(db_version(env), v);
	l = ok(env, "lock.heartbeat", "{\"lock_id\": 1, \"owner_session\": \"a\", \"ttl_seconds\": 300}");
	CHECK(strcmp(jstr(l, "lease_until"), first) > 0);
	CHECK_EQ_STR(jstr(l, "state"), "active");
	json_decref(l);
	l = ok(env, "lock.release", "{\"lock_id\": 1, \"owner_session\": \"a\"}");
	CHECK_EQ_STR(jstr(l, "state"), "released");
	CHECK_EQ_STR(jstr(l, "lease_until"), jstr(l, "heartbeat_at"));
	CHECK_EQ_STR(jstr(l, "released_by"), "a");
	json_decref(l);
	json_decref(fails(env, ORCH_ENOTFOUND, "lock.release", "{\"lock_id\": 1, \"owner_session\": \"a\"}"));
	json_decref(fails(env, ORCH_ENOTFOUND, "lock.heartbeat", "{\"lock_id\": 1, \"owner_session\": \"a\"}"));
	CHECK_EQ_INT(db_version(env), v + 2);
	/* Released: another owner may take it. */
	json_decref(ok(env, "lock.acquire", "{\"scope_type\": \"file\", \"scope_path\": \"a.c\", \"owner_session\": "
		       "\"b\"}"));
}

TEST(lock_session_ctl_implies_owner)
{
	char *reply = NULL;
	json_decref(ok(env, "session.open", "{}"));
	json_decref(ok(env, "session.open", "{}"));
	const char *req = "{\"scope_type\": \"file\", \"scope_path\": \"x\"}";
	CHECK_EQ_INT(orch_call_text(&env->ctx, "lock.acquire", req, strlen(req), 1, &reply), 0);
	CHECK(strstr(reply, "\"owner_session\":\"1\"") != NULL);
	free(reply);
	const char *hb = "{\"lock_id\": 1}";
	CHECK_EQ_INT(orch_call_text(&env->ctx, "lock.heartbeat", hb, strlen(hb), 2, &reply), ORCH_EFORBIDDEN);
	free(reply);
	CHECK_EQ_INT(orch_call_text(&env->ctx, "lock.release", hb, strlen(hb), 2, &reply), ORCH_EFORBIDDEN);
	free(reply);
	/* session.close releases the session's locks. */
	json_decref(ok(env, "session.close", "{\"session_id\": 1}"));
	json_decref(fails(env, ORCH_ENOTFOUND, "lock.release", "{\"lock_id\": 1, \"owner_session\": \"1\"}"));
}

/* ---- worktrees ---- */

TEST(worktree_create_planned_and_on_disk)
{
	json_t *w = ok(env, "worktree.create", "{\"branch\": \"feature/x\"}");
	CHECK_EQ_STR(jstr(w, "status"), "planned");
	CHECK_EQ_STR(jstr(w, "kind"), "task_branch");
	CHECK_EQ_STR(jstr(w, "path"), wt_path(env, "feature-x"));
	CHECK(!exists(jstr(w, "path")));
	json_decref(w);
	CHECK(sh("git -C %s rev-parse -q --verify refs/heads/feature/x >/dev/null", env->repo) != 0);
	/* A planned branch or path is taken. */
	json_decref(fails(env, ORCH_EEXISTS, "worktree.create", "{\"branch\": \"feature/x\"}"));
	json_decref(fails(env, ORCH_EEXISTS, "worktree.create", "{\"branch\": \"other\", \"path\": \"feature-x\"}"));

	json_decref(ok(env, "task.create", "{\"level\": \"case\", \"title\": \"t\"}"));
	w = ok(env, "worktree.create", "{\"branch\": \"feature/y\", \"path\": \"./nested//y/\", \"create_on_disk\": "
	       "true, \"task_id\": 1}");
	CHECK_EQ_STR(jstr(w, "status"), "active");
	CHECK_EQ_INT(jint(w, "task_id"), 1);
	CHECK_EQ_STR(jstr(w, "path"), wt_path(env, "nested/y"));
	CHECK(sh("test -f %s/README", jstr(w, "path")) == 0);
	CHECK(sh("git -C %s worktree list --porcelain | grep -qx 'branch refs/heads/feature/y'", env->repo) == 0);
	CHECK_EQ_STR(out1("git -C %s rev-parse HEAD", jstr(w, "path")), out1("git -C %s rev-parse main", env->repo));
	json_decref(w);
	json_decref(fails(env, ORCH_EEXISTS, "worktree.create", "{\"branch\": \"feature/y\"}"));
	json_decref(fails(env, ORCH_EEXISTS, "worktree.create", "{\"branch\": \"main\"}"));
	/* A/B ref clash: feature/y exists, so feature/y/z and feature cannot be branches. */
	json_decref(fails(env, ORCH_EEXISTS, "worktree.create", "{\"branch\": \"feature/y/z\"}"));
	json_decref(fails(env, ORCH_EEXISTS, "worktree.create", "{\"branch\": \"feature\"}"));
	/* Inside another checkout. */
	json_decref(fails(env, ORCH_EINVALID_PARAMS, "worktree.create", "{\"branch\": \"z\", \"path\": "
			  "\"nested/y/sub\"}"));
	CHECK_EQ_INT(db_version(env), 3);
}

/* Nothing was created: same db_version, no branch `branch`, worktrees/ holds only `entries` entries. */
static void check_nothing(test_env *env, int64_t v, const char *branch, int entries)
{
	CHECK_EQ_INT(db_version(env), v);
	if (branch)
		CHECK(sh("git -C %s rev-parse -q --verify 'refs/heads/%s' >/dev/null 2>&1", env->repo, branch) != 0);
	CHECK_EQ_INT(atoi(out1("ls -A %s/.orchfs/worktrees 2>/dev/null | wc -l", env->repo)), entries);
}

TEST(worktree_bad_input_creates_nothing)
{
	static const char *const bad_paths[] = {"/etc", "../x", "", ".", "a/../../x", "x.orchfs-removing"};
	static const char *const bad_branches[] = {"a..b", "bad branch", "-x", "x.lock", "", "HEAD", "a/", "/a",
						   "a~1", "a:b", "a\\\\b", "@", ".hidden"};
	int64_t v = db_version(env);

	for (size_t i = 0; i < sizeof(bad_paths) / sizeof(bad_paths[0]); i++) {
		json_decref(fails(env, ORCH_EINVALID_PARAMS, "worktree.create", "{\"branch\": \"b%zu\", \"path\": \"%s\", "
				  "\"create_on_disk\": true}", i, bad_paths[i]));
		char b[16];
		snprintf(b, sizeof(b), "b%zu", i);
		check_nothing(env, v, b, 0);
	}
	for (size_t i = 0; i < sizeof(bad_branches) / sizeof(bad_branches[0]); i++) {
		json_decref(fails(env, ORCH_EINVALID_PARAMS, "worktree.create", "{\"branch\": \"%s\", "
				  "\"create_on_disk\": true}", bad_branches[i]));
		check_nothing(env, v, NULL, 0);
	}
	json_decref(fails(env, ORCH_ENOTFOUND, "worktree.create", "{\"branch\": \"ok1\", \"base_ref\": \"nope\", "
			  "\"create_on_disk\": true}"));
	json_decref(fails(env, ORCH_ENOTFOUND, "worktree.create", "{\"branch\": \"ok1\", \"task_id\": 7}"));
	json_decref(fails(env, ORCH_EINVALID_PARAMS, "worktree.create", "{\"branch\": \"ok1\", \"create_on_disk\": "
			  "\"yes\"}"));
	json_decref(fails(env, ORCH_EINVALID_PARAMS, "worktree.create", "{\"branch\": \"ok1\", \"pth\": \"x\"}"));
	check_nothing(env, v, "ok1", 0);
	/* A symlink below worktrees/ cannot lead a path out of it. */
	CHECK(sh("mkdir -p %s/.orchfs/worktrees && ln -s /tmp %s/.orchfs/worktrees/evil", env->repo, env->repo) == 0);
	json_decref(fails(env, ORCH_EINVALID_PARAMS, "worktree.create", "{\"branch\": \"ok2\", \"path\": \"evil/x\", "
			  "\"create_on_disk\": true}"));
	check_nothing(env, v, "ok2", 1);
	/* The same through spawn. */
	json_decref(ok(env, "session.open", "{}"));
	v = db_version(env);
	json_decref(fails(env, ORCH_EINVALID_PARAMS, "worktree.spawn", "{\"session_id\": 1, \"parent_worktree_id\": 2, "
			  "\"branch\": \"a..b\"}"));
	json_decref(fails(env, ORCH_EINVALID_PARAMS, "worktree.spawn", "{\"session_id\": 1, \"parent_worktree_id\": 2, "
			  "\"path\": \"/etc\"}"));
	json_decref(fails(env, ORCH_EINVALID_PARAMS, "worktree.spawn", "{\"session_id\": 1, \"parent_worktree_id\": 2, "
			  "\"path\": \"../../x\"}"));
	check_nothing(env, v, "task/1/3", 2);
}

TEST(worktree_spawn_defaults_and_ownership)
{
	json_decref(ok(env, "session.open", "{}"));
	json_decref(ok(env, "session.open", "{}"));
	CHECK(commit_in(wt_path(env, "session-1"), "root.txt", "root") == 0);
	json_t *w = ok(env, "worktree.spawn", "{\"session_id\": 1, \"parent_worktree_id\": 2}");
	CHECK_EQ_INT(jint(w, "id"), 4);
	CHECK_EQ_STR(jstr(w, "branch"), "task/1/4");
	CHECK_EQ_STR(jstr(w, "path"), wt_path(env, "task-1-4"));
	CHECK_EQ_STR(jstr(w, "status"), "active");
	CHECK_EQ_INT(jint(w, "parent_worktree_id"), 2);
	CHECK_EQ_INT(jint(w, "owner_session_id"), 1);
	/* Based on the parent's branch, not main. */
	CHECK(sh("test -f %s/root.txt", jstr(w, "path")) == 0);
	json_decref(w);
	int64_t v = db_version(env);
	json_t *e = fails(env, ORCH_EFORBIDDEN, "worktree.spawn", "{\"session_id\": 2, \"parent_worktree_id\": 2}");
	CHECK(strstr(jstr(e, "message"), "session 1") != NULL);
	json_decref(e);
	json_decref(fails(env, ORCH_ENOTFOUND, "worktree.spawn", "{\"session_id\": 1, \"parent_worktree_id\": 99}"));
	json_decref(fails(env, ORCH_ENOTFOUND, "worktree.spawn", "{\"session_id\": 9, \"parent_worktree_id\": 2}"));
	json_decref(fails(env, ORCH_EEXISTS, "worktree.spawn", "{\"session_id\": 1, \"parent_worktree_id\": 2, "
			  "\"branch\": \"main\"}"));
	check_nothing(env, v, "task/1/5", 3);
	/* Main is reached only through the queue: no child of the main worktree, even planned. */
	e = fails(env, ORCH_EFORBIDDEN, "worktree.spawn", "{\"session_id\": 2, \"parent_worktree_id\": 1, "
		  "\"create_on_disk\": false}");
	CHECK(strstr(jstr(e, "message"), "merge.main.request") != NULL);
	json_decref(e);
	check_nothing(env, v, "task/2/5", 3);
	/* Planned: nothing in git. */
	w = ok(env, "worktree.spawn", "{\"session_id\": 2, \"parent_worktree_id\": 3, \"create_on_disk\": false}");
	CHECK_EQ_STR(jstr(w, "status"), "planned");
	CHECK_EQ_STR(jstr(w, "branch"), "task/2/5");
	CHECK(!exists(jstr(w, "path")));
	json_decref(w);
	CHECK(sh("git -C %s rev-parse -q --verify refs/heads/task/2/5 >/dev/null", env->repo) != 0);
	/* A closed session cannot spawn. */
	json_decref(ok(env, "session.close", "{\"session_id\": 2}"));
	json_decref(fails(env, ORCH_EINVALID_STATE, "worktree.spawn", "{\"session_id\": 2, \"parent_worktree_id\": 3}"));
}

TEST(merge_clean_makes_merge_commit)
{
	session_and_child(env);
	const char *child = wt_path(env, "task-1-3");
	CHECK(commit_in(child, "new.txt", "from child") == 0);
	char *before = tip(env, "session/1"), *ctip = tip(env, "task/1/3");
	int64_t v = db_version(env);
	json_t *r = ok(env, "worktree.merge_to_parent", "{\"session_id\": 1, \"worktree_id\": 3}");
	CHECK_EQ_STR(jstr(r, "result"), "merged_to_parent");
	CHECK_EQ_STR(jstr(r, "child_worktree.status"), "closed");
	CHECK_EQ_STR(jstr(r, "child_worktree.merge_state"), "merged_to_parent");
	CHECK(json_object_get(json_object_get(r, "child_worktree"), "merged_at") != NULL);
	CHECK_EQ_INT(jint(r, "parent_worktree.id"), 2);
	char *after = tip(env, "session/1");
	CHECK_EQ_STR(jstr(r, "merge_commit"), after);
	/* Two parents: the old parent tip and the child tip, in that order. */
	char want[200];
	snprintf(want, sizeof(want), "%s %s %s", after, before, ctip);
	CHECK_EQ_STR(out1("git -C %s rev-list --parents -n 1 session/1", env->repo), want);
	/* The parent's checkout has the file and is clean. */
	CHECK_EQ_STR(out1("cat %s/new.txt", wt_path(env, "session-1")), "from child");
	CHECK_EQ_STR(out1("git -C %s status --porcelain", wt_path(env, "session-1")), "");
	CHECK_EQ_INT(db_version(env), v + 1);
	json_decref(r);
	/* Already merged. */
	json_t *e = fails(env, ORCH_EINVALID_STATE, "worktree.merge_to_parent", "{\"session_id\": 1, \"worktree_id\": 3}");
	CHECK_EQ_STR(jstr(e, "details.state"), "merged_to_parent");
	json_decref(e);
	CHECK_EQ_INT(db_version(env), v + 1);
	free(before);
	free(after);
	free(ctip);
}

TEST(merge_nothing_new_and_states)
{
	session_and_child(env);
	int64_t v = db_version(env);
	json_t *e = fails(env, ORCH_EINVALID_STATE, "worktree.merge_to_parent", "{\"session_id\": 1, \"worktree_id\": 3}");
	CHECK(strstr(jstr(e, "message"), "nothing to merge") != NULL);
	json_decref(e);
	/* No parent: the session root's parent is main, but main itself has none. */
	json_decref(fails(env, ORCH_EINVALID_STATE, "worktree.merge_to_parent", "{\"session_id\": 1, \"worktree_id\": 1}"));
	json_decref(fails(env, ORCH_ENOTFOUND, "worktree.merge_to_parent", "{\"session_id\": 1, \"worktree_id\": 9}"));
	json_decref(ok(env, "session.open", "{}"));
	v = db_version(env);
	json_decref(fails(env, ORCH_EFORBIDDEN, "worktree.merge_to_parent", "{\"session_id\": 2, \"worktree_id\": 3}"));
	/* A planned child has nothing to merge. */
	json_decref(ok(env, "worktree.spawn", "{\"session_id\": 1, \"parent_worktree_id\": 2, \"create_on_disk\": false}"));
	json_decref(fails(env, ORCH_EINVALID_STATE, "worktree.merge_to_parent", "{\"session_id\": 1, \"worktree_id\": 5}"));
	CHECK_EQ_INT(db_version(env), v + 1);
}

TEST(merge_conflict_changes_nothing)
{
	session_and_child(env);
	const char *root = wt_path(env, "session-1");
	CHECK(commit_in(root, "README", "parent side") == 0);
	CHECK(commit_in(wt_path(env, "task-1-3"), "README", "child side") == 0);
	CHECK(commit_in(wt_path(env, "task-1-3"), "other.txt", "fine") == 0);
	char *before = tip(env, "session/1");
	char *tree = strdup(out1("cd %s && find . -path ./.git -prune -o -type f -print0 | sort -z | xargs -0 sha1sum "
				 "| sha1sum", root));
	int64_t v = db_version(env);
	json_t *e = fails(env, ORCH_ECONFLICT, "worktree.merge_to_parent", "{\"session_id\": 1, \"worktree_id\": 3}");
	CHECK_EQ_INT(json_array_size(json_object_get(json_object_get(e, "details"), "paths")), 1);
	CHECK_EQ_STR(jstr(e, "details.paths.0"), "README");
	json_decref(e);
	char *after = tip(env, "session/1");
	CHECK_EQ_STR(after, before);
	CHECK_EQ_STR(out1("cd %s && find . -path ./.git -prune -o -type f -print0 | sort -z | xargs -0 sha1sum "
			  "| sha1sum", root), tree);
	CHECK_EQ_STR(out1("git -C %s status --porcelain", root), "");
	CHECK(sh("git -C %s rev-parse -q --verify MERGE_HEAD >/dev/null", root) != 0);
	CHECK_EQ_INT(db_version(env), v);
	json_t *w = ok(env, "worktree.abandon", "{\"session_id\": 1, \"worktree_id\": 3}");
	json_decref(w);
	free(before);
	free(after);
	free(tree);
}

TEST(merge_dirty_parent_is_invalid_state)
{
	session_and_child(env);
	const char *root = wt_path(env, "session-1"), *child = wt_path(env, "task-1-3");
	CHECK(commit_in(child, "new.txt", "child") == 0);
	char *before = tip(env, "session/1");
	/* An unstaged change to a tracked file. */
	CHECK(sh("echo dirty >> %s/README", root) == 0);
	json_t *e = fails(env, ORCH_EINVALID_STATE, "worktree.merge_to_parent", "{\"session_id\": 1, \"worktree_id\": 3}");
	CHECK_EQ_STR(jstr(e, "details.state"), "dirty");
	CHECK_EQ_STR(jstr(e, "details.paths.0"), "README");
	json_decref(e);
	CHECK(sh("git -C %s checkout -q README", root) == 0);
	/* An untracked file the merge would overwrite. */
	CHECK(sh("echo mine > %s/new.txt", root) == 0);
	e = fails(env, ORCH_EINVALID_STATE, "worktree.merge_to_parent", "{\"session_id\": 1, \"worktree_id\": 3}");
	CHECK_EQ_STR(jstr(e, "details.paths.0"), "new.txt");
	json_decref(e);
	CHECK_EQ_STR(out1("cat %s/new.txt", root), "mine");
	char *same = tip(env, "session/1");
	CHECK_EQ_STR(same, before);
	/* An untracked file out of the way does not stop the merge, and stays. */
	CHECK(sh("mv %s/new.txt %s/notes.txt", root, root) == 0);
	json_decref(ok(env, "worktree.merge_to_parent", "{\"session_id\": 1, \"worktree_id\": 3}"));
	CHECK_EQ_STR(out1("cat %s/notes.txt", root), "mine");
	CHECK_EQ_STR(out1("cat %s/new.txt", root), "child");
	free(before);
	free(same);
}

/* Main is reached only through the queue: a session root cannot be merged into it directly. */
TEST(merge_into_main_is_forbidden)
{
	json_decref(ok(env, "session.open", "{}"));
	CHECK(commit_in(wt_path(env, "session-1"), "feature.txt", "feature") == 0);
	char *before = tip(env, "main");
	int64_t v = db_version(env);
	json_t *e = fails(env, ORCH_EFORBIDDEN, "worktree.merge_to_parent", "{\"session_id\": 1, \"worktree_id\": 2}");
	CHECK(strstr(jstr(e, "message"), "merge.main.request") != NULL);
	json_decref(e);
	char *after = tip(env, "main");
	CHECK_EQ_STR(after, before);
	CHECK(sh("test ! -e %s/feature.txt", env->repo) == 0);
	CHECK_EQ_INT(db_version(env), v);
	free(before);
	free(after);
}

/* The undo of a merge restores the branch and the checkout exactly. */
TEST(merge_undo_is_exact)
{
	session_and_child(env);
	const char *root = wt_path(env, "session-1");
	CHECK(commit_in(wt_path(env, "task-1-3"), "new.txt", "child") == 0);
	CHECK(sh("echo untracked > %s/scratch", root) == 0);
	char *before = tip(env, "session/1"), hex[ORCH_GIT_HEX_SIZE];
	orch_git_effect *fx = NULL;
	CHECK_EQ_INT(orch_git_merge_into(env->ctx.git, "session/1", root, "task/1/3", hex, &fx), 0);
	CHECK(fx != NULL);
	CHECK(exists(wt_path(env, "session-1/new.txt")));
	orch_git_effect_undo(fx);
	orch_git_effect_free(fx);
	CHECK(sh("test -z \"$(ls -A %s/.orchfs/inflight)\"", env->repo) == 0); /* the undo's marker is gone too */
	char *after = tip(env, "session/1");
	CHECK_EQ_STR(after, before);
	CHECK(!exists(wt_path(env, "session-1/new.txt")));
	CHECK_EQ_STR(out1("cat %s/scratch", root), "untracked");
	CHECK_EQ_STR(out1("git -C %s status --porcelain --untracked-files=no", root), "");
	free(before);
	free(after);
}

/* A retired worktree comes back on rollback and goes for good on commit. */
TEST(retire_undo_and_commit)
{
	session_and_child(env);
	const char *child = wt_path(env, "task-1-3");
	orch_git_effect *fx = NULL;
	CHECK_EQ_INT(orch_git_worktree_retire(env->ctx.git, child, &fx), 0);
	CHECK(!exists(child));
	orch_git_effect_undo(fx);
	orch_git_effect_free(fx);
	CHECK(exists(child));
	CHECK(sh("git -C %s status >/dev/null 2>&1", child) == 0);
	CHECK(sh("git -C %s worktree list | grep -q task-1-3", env->repo) == 0);
	CHECK_EQ_INT(orch_git_worktree_retire(env->ctx.git, child, &fx), 0);
	/* Until the commit, the checkout is only set aside. */
	CHECK(exists(wt_path(env, "task-1-3.orchfs-removing/.git")));
	orch_git_effect_finish(fx);
	orch_git_effect_free(fx);
	CHECK(!exists(child));
	CHECK(sh("ls -A %s/.orchfs/worktrees | grep -q removing", env->repo) != 0);
	CHECK(sh("git -C %s worktree list | grep -q task-1-3", env->repo) != 0);
	CHECK(sh("git -C %s rev-parse -q --verify refs/heads/task/1/3 >/dev/null", env->repo) == 0);
}

TEST(abandon_rules)
{
	session_and_child(env);
	json_decref(ok(env, "session.open", "{}"));
	const char *child = wt_path(env, "task-1-3");
	int64_t v = db_version(env);
	json_decref(fails(env, ORCH_EFORBIDDEN, "worktree.abandon", "{\"session_id\": 2, \"worktree_id\": 3}"));
	json_decref(fails(env, ORCH_EINVALID_STATE, "worktree.abandon", "{\"session_id\": 1, \"worktree_id\": 2}"));
	json_decref(fails(env, ORCH_EINVALID_STATE, "worktree.abandon", "{\"session_id\": 1, \"worktree_id\": 1}"));
	/* Uncommitted work, an untracked file included, stops it. */
	CHECK(sh("echo wip > %s/wip.txt", child) == 0);
	json_t *e = fails(env, ORCH_EINVALID_STATE, "worktree.abandon", "{\"session_id\": 1, \"worktree_id\": 3}");
	CHECK_EQ_STR(jstr(e, "details.state"), "dirty");
	CHECK_EQ_STR(jstr(e, "details.paths.0"), "wip.txt");
	json_decref(e);
	CHECK(exists(child));
	CHECK_EQ_INT(db_version(env), v);
	CHECK(sh("cd %s && git add wip.txt && git -c user.name=t -c user.email=t@e commit -qm wip", child) == 0);
	json_t *w = ok(env, "worktree.abandon", "{\"session_id\": 1, \"worktree_id\": 3}");
	CHECK_EQ_STR(jstr(w, "status"), "abandoned");
	CHECK_EQ_STR(jstr(w, "merge_state"), "abandoned");
	json_decref(w);
	CHECK(!exists(child));
	CHECK(sh("git -C %s worktree list | grep -q task-1-3", env->repo) != 0);
	CHECK(sh("git -C %s rev-parse -q --verify refs/heads/task/1/3 >/dev/null", env->repo) == 0);
	json_decref(fails(env, ORCH_EINVALID_STATE, "worktree.abandon", "{\"session_id\": 1, \"worktree_id\": 3}"));
	json_decref(fails(env, ORCH_EINVALID_STATE, "worktree.merge_to_parent", "{\"session_id\": 1, \"worktree_id\": 3}"));
	/* Planned: nothing on disk to remove. */
	json_decref(ok(env, "worktree.spawn", "{\"session_id\": 1, \"parent_worktree_id\": 2, \"create_on_disk\": false}"));
	w = ok(env, "worktree.abandon", "{\"session_id\": 1, \"worktree_id\": 5}");
	CHECK_EQ_STR(jstr(w, "status"), "abandoned");
	json_decref(w);
	CHECK_EQ_INT(db_version(env), v + 3);
}

TEST(live_children_block_merge_and_abandon)
{
	session_and_child(env);
	json_decref(ok(env, "worktree.spawn", "{\"session_id\": 1, \"parent_worktree_id\": 3, \"create_on_disk\": false}"));
	CHECK(commit_in(wt_path(env, "task-1-3"), "x.txt", "x") == 0);
	json_t *e = fails(env, ORCH_EINVALID_STATE, "worktree.merge_to_parent", "{\"session_id\": 1, \"worktree_id\": 3}");
	CHECK_EQ_INT(jint(e, "details.children.0"), 4);
	json_decref(e);
	json_decref(fails(env, ORCH_EINVALID_STATE, "worktree.abandon", "{\"session_id\": 1, \"worktree_id\": 3}"));
	json_decref(ok(env, "worktree.abandon", "{\"session_id\": 1, \"worktree_id\": 4}"));
	json_decref(ok(env, "worktree.merge_to_parent", "{\"session_id\": 1, \"worktree_id\": 3}"));
}

TEST(missing_directory_is_marked_when_touched)
{
	session_and_child(env);
	CHECK(commit_in(wt_path(env, "task-1-3"), "x.txt", "x") == 0);
	CHECK(sh("rm -rf %s", wt_path(env, "task-1-3")) == 0);
	/* The branch still holds the work: the merge goes through. */
	json_t *r = ok(env, "worktree.merge_to_parent", "{\"session_id\": 1, \"worktree_id\": 3}");
	CHECK_EQ_STR(jstr(r, "child_worktree.status"), "closed");
	json_decref(r);
	CHECK_EQ_STR(out1("cat %s/x.txt", wt_path(env, "session-1")), "x");
	/* A parent whose directory is gone becomes missing when a child is spawned from it. */
	CHECK(sh("rm -rf %s", wt_path(env, "session-1")) == 0);
	json_t *w = ok(env, "worktree.spawn", "{\"session_id\": 1, \"parent_worktree_id\": 2}");
	CHECK(sh("test -f %s/x.txt", jstr(w, "path")) == 0);
	json_decref(w);
	env->ctx.now = orch_now_ms();
	CHECK(orch_worktree_json(&env->ctx, 2, &w) == 0);
	CHECK_EQ_STR(jstr(w, "status"), "missing");
	json_decref(w);
	/* A missing child can be abandoned (nothing on disk to lose). */
	CHECK(sh("rm -rf %s", wt_path(env, "task-1-4")) == 0);
	w = ok(env, "worktree.abandon", "{\"session_id\": 1, \"worktree_id\": 4}");
	CHECK_EQ_STR(jstr(w, "status"), "abandoned");
	json_decref(w);
	CHECK(sh("git -C %s worktree list | grep -q task-1-4", env->repo) != 0);
}

TEST(reconcile_marks_missing_and_prunes)
{
	session_and_child(env);
	json_t *log = NULL, *w;
	CHECK_EQ_INT(orch_worktree_reconcile(&env->ctx, &log), 0);
	CHECK(log_has(log, "2 worktrees ok, 0 changed"));
	json_decref(log);
	int64_t v = db_version(env);
	CHECK(sh("rm -rf %s", wt_path(env, "task-1-3")) == 0);
	CHECK(sh("git -C %s worktree list --porcelain | grep -q prunable", env->repo) == 0);
	CHECK_EQ_INT(orch_worktree_reconcile(&env->ctx, &log), 0);
	CHECK(log_has(log, "worktree 3 ("));
	CHECK(log_has(log, "missing"));
	CHECK(log_has(log, "pruned git metadata orchfs-task-1-3"));
	json_decref(log);
	CHECK_EQ_INT(db_version(env), v + 1);
	CHECK(sh("git -C %s worktree list --porcelain | grep -q prunable", env->repo) != 0);
	env->ctx.now = orch_now_ms();
	CHECK(orch_worktree_json(&env->ctx, 3, &w) == 0);
	CHECK_EQ_STR(jstr(w, "status"), "missing");
	json_decref(w);
	/* Nothing new: no change, no version bump. */
	CHECK_EQ_INT(orch_worktree_reconcile(&env->ctx, &log), 0);
	json_decref(log);
	CHECK_EQ_INT(db_version(env), v + 1);
}

TEST(reconcile_finishes_interrupted_abandon)
{
	session_and_child(env);
	json_decref(ok(env, "worktree.spawn", "{\"session_id\": 1, \"parent_worktree_id\": 2}"));
	json_t *log = NULL;
	/* Crash before the commit: the record is still active, the directory set aside. */
	CHECK(sh("mv %s %s.orchfs-removing", wt_path(env, "task-1-3"), wt_path(env, "task-1-3")) == 0);
	/* Crash after the commit: abandoned, directory set aside. */
	CHECK(orch_store_exec(env->ctx.store, "UPDATE worktrees SET status = 'abandoned' WHERE id = 4") == 0);
	CHECK(sh("mv %s %s.orchfs-removing", wt_path(env, "task-1-4"), wt_path(env, "task-1-4")) == 0);
	CHECK_EQ_INT(orch_worktree_reconcile(&env->ctx, &log), 0);
	CHECK(log_has(log, "put back"));
	CHECK(log_has(log, "finished removing"));
	json_decref(log);
	CHECK(sh("git -C %s status >/dev/null 2>&1", wt_path(env, "task-1-3")) == 0);
	CHECK(!exists(wt_path(env, "task-1-4.orchfs-removing")));
	CHECK(sh("git -C %s worktree list | grep -q task-1-4", env->repo) != 0);
}

/* Git metadata names come from the last path component: abandoning a missing a/x must not prune b/x. */
TEST(abandon_missing_keeps_metadata_of_same_named_worktree)
{
	json_decref(ok(env, "session.open", "{}"));
	json_decref(ok(env, "worktree.spawn", "{\"session_id\": 1, \"parent_worktree_id\": 2, \"path\": \"a/x\"}"));
	CHECK(sh("rm -rf %s", wt_path(env, "a/x")) == 0);
	json_decref(ok(env, "worktree.spawn", "{\"session_id\": 1, \"parent_worktree_id\": 2, \"path\": \"b/x\"}"));
	json_t *w = ok(env, "worktree.abandon", "{\"session_id\": 1, \"worktree_id\": 3}");
	CHECK_EQ_STR(jstr(w, "status"), "abandoned");
	json_decref(w);
	CHECK(sh("git -C %s status >/dev/null 2>&1", wt_path(env, "b/x")) == 0);
	CHECK(sh("git -C %s worktree list --porcelain | grep -qx 'worktree %s'", env->repo, wt_path(env, "b/x")) == 0);
	CHECK(sh("git -C %s worktree list --porcelain | grep -q prunable", env->repo) != 0);
}

/*
 * Make every later write call fail at COMMIT (a deferred foreign-key
 * violation raised when db_version is bumped), or stop doing so: the
 * method has run, with its git effects, and the call must undo them.
 */
static void break_commits(test_env *env, bool on)
{
	const char *sql = on ? "CREATE TABLE t_none (id INTEGER PRIMARY KEY); "
			       "CREATE TABLE t_boom (x INTEGER REFERENCES t_none (id) DEFERRABLE INITIALLY DEFERRED); "
			       "CREATE TRIGGER t_boom_bump AFTER UPDATE ON mirror_meta BEGIN "
			       "INSERT INTO t_boom VALUES (1); END;"
			     : "DROP TRIGGER t_boom_bump; DROP TABLE t_boom; DROP TABLE t_none;";

	CHECK(orch_store_exec(env->ctx.store, sql) == 0);
}

/* Clients cannot take the branch names and paths orchfs's own defaults need. */
TEST(reserved_names_stay_free_for_orchfs)
{
	static const char *const bad[] = {
		"{\"branch\": \"session/2\", \"create_on_disk\": true}",
		"{\"branch\": \"session/anything/else\"}",
		"{\"branch\": \"session\"}",
		"{\"branch\": \"task/1/3\"}",
		"{\"branch\": \"task/7\"}",
		"{\"branch\": \"task/1/3/x\"}",
		"{\"branch\": \"b3\", \"path\": \"session-1\", \"create_on_disk\": true}",
		"{\"branch\": \"b3\", \"path\": \"session-12/sub\"}",
		"{\"branch\": \"b3\", \"path\": \"task-1-3\", \"create_on_disk\": true}",
		"{\"branch\": \"b3\", \"path\": \"a/b.orchfs-removing/c\"}",
		"{\"branch\": \"session-1\", \"create_on_disk\": true}",
		"{\"branch\": \"task-2-5\"}",
	};
	int64_t v = db_version(env);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		json_t *e = fails(env, ORCH_EINVALID_PARAMS, "worktree.create", "%s", bad[i]);
		const char *m = jstr(e, "message");
		if (!m || !strstr(m, "reserved")) {
			fprintf(stderr, "  %s: %s\n", bad[i], m ? m : "(no error)");
			test_failed = 1;
		}
		json_decref(e);
	}
	CHECK_EQ_INT(db_version(env), v);
	CHECK(sh("git -C %s rev-parse -q --verify refs/heads/session/2 >/dev/null", env->repo) != 0);
	/* Names that only look alike are the client's. */
	json_decref(ok(env, "worktree.create", "{\"branch\": \"task/login\", \"create_on_disk\": true}"));
	json_decref(ok(env, "worktree.create", "{\"branch\": \"b4\", \"path\": \"session-x\", \"create_on_disk\": true}"));
	json_decref(ok(env, "worktree.create", "{\"branch\": \"sessions/2\"}"));
	/* The defaults still work. */
	json_decref(ok(env, "session.open", "{}"));
	json_decref(ok(env, "session.open", "{}"));
	json_t *w = ok(env, "worktree.spawn", "{\"session_id\": 2, \"parent_worktree_id\": 1}");
	CHECK_EQ_STR(jstr(w, "branch"), "task/2/7");
	json_decref(w);
	/* spawn refuses them too. */
	json_decref(fails(env, ORCH_EINVALID_PARAMS, "worktree.spawn", "{\"session_id\": 1, \"parent_worktree_id\": 1, "
			  "\"branch\": \"task/1/99\"}"));
	json_decref(fails(env, ORCH_EINVALID_PARAMS, "worktree.spawn", "{\"session_id\": 1, \"parent_worktree_id\": 1, "
			  "\"path\": \"task-1-99\"}"));
}

/* The default base is the parent's branch, even when a tag has the same name. */
TEST(spawn_base_is_the_parent_branch_not_a_tag)
{
	json_decref(ok(env, "session.open", "{}"));
	CHECK(sh("git -C %s tag session/1 HEAD", env->repo) == 0);
	CHECK(commit_in(wt_path(env, "session-1"), "root.txt", "root work") == 0);
	json_t *w = ok(env, "worktree.spawn", "{\"session_id\": 1, \"parent_worktree_id\": 2}");
	json_decref(w);
	char *parent = tip(env, "session/1"), *child = tip(env, "task/1/3");
	CHECK_EQ_STR(child, parent);
	CHECK(exists(wt_path(env, "task-1-3/root.txt")));
	free(parent);
	free(child);
}

/* Call and expect some error; the reply is dropped. */
static void fails_any(test_env *env, const char *method, const char *body)
{
	int code = 0;

	json_decref(call(env, &code, method, "%s", body));
	CHECK(code != 0);
}

/* A failed call removes the directories it made to hold the checkout, not only the checkout. */
TEST(failed_create_removes_the_directories_it_made)
{
	json_decref(ok(env, "worktree.create", "{\"branch\": \"b0\", \"path\": \"keep/x\", \"create_on_disk\": true}"));
	break_commits(env, true);
	fails_any(env, "worktree.create", "{\"branch\": \"b1\", \"path\": \"p/q/r\", \"create_on_disk\": true}");
	fails_any(env, "worktree.create", "{\"branch\": \"b2\", \"path\": \"keep/y\", \"create_on_disk\": true}");
	break_commits(env, false);
	CHECK(!exists(wt_path(env, "p")));
	CHECK(!exists(wt_path(env, "keep/y")));
	CHECK(exists(wt_path(env, "keep/x/.git")));
	CHECK(sh("git -C %s rev-parse -q --verify refs/heads/b1 >/dev/null", env->repo) != 0);
	CHECK(sh("git -C %s worktree list | grep -q /p/q/r", env->repo) != 0);
	json_decref(ok(env, "worktree.create", "{\"branch\": \"b3\", \"path\": \"p\", \"create_on_disk\": true}"));
}

/* A rollback whose rename back fails keeps the set-aside checkout: the record still says active. */
TEST(retire_undo_that_cannot_rename_back_keeps_the_checkout)
{
	session_and_child(env);
	const char *child = wt_path(env, "task-1-3");
	CHECK(commit_in(child, "work.txt", "work") == 0);
	orch_git_effect *fx = NULL;
	CHECK_EQ_INT(orch_git_worktree_retire(env->ctx.git, child, &fx), 0);
	/* Something took the path meanwhile: the rename back cannot replace it. */
	CHECK(sh("mkdir %s && touch %s/newfile", child, child) == 0);
	orch_git_effect_undo(fx);
	orch_git_effect_free(fx);
	CHECK(exists(wt_path(env, "task-1-3.orchfs-removing/work.txt")));
	CHECK(exists(wt_path(env, "task-1-3/newfile")));
	CHECK(sh("git -C %s worktree list | grep -q task-1-3", env->repo) == 0);
}

static const char *status_of(test_env *env, int64_t id)
{
	static char buf[32];
	json_t *w = NULL;

	env->ctx.now = orch_now_ms();
	buf[0] = '\0';
	if (orch_worktree_json(&env->ctx, id, &w) == 0)
		snprintf(buf, sizeof(buf), "%s", jstr(w, "status"));
	json_decref(w);
	return buf;
}

/* An abandon interrupted before its commit, then a call that marked the worktree missing. */
TEST(reconcile_puts_back_a_missing_worktree_set_aside)
{
	session_and_child(env);
	const char *child = wt_path(env, "task-1-3");
	CHECK(commit_in(child, "work.txt", "work") == 0);
	CHECK(sh("mv %s %s.orchfs-removing", child, child) == 0);
	json_decref(ok(env, "worktree.spawn", "{\"session_id\": 1, \"parent_worktree_id\": 3, \"create_on_disk\": false}"));
	CHECK_EQ_STR(status_of(env, 3), "missing");
	json_t *log = NULL;
	CHECK_EQ_INT(orch_worktree_reconcile(&env->ctx, &log), 0);
	CHECK(log_has(log, "put back"));
	json_decref(log);
	CHECK_EQ_STR(status_of(env, 3), "active");
	CHECK(exists(wt_path(env, "task-1-3/work.txt")));
	CHECK(!exists(wt_path(env, "task-1-3.orchfs-removing")));
	CHECK(sh("git -C %s status >/dev/null 2>&1", child) == 0);
}

/* Abandoning a missing worktree deletes what was set aside only once the call commits. */
TEST(abandon_missing_cleans_up_only_after_commit)
{
	session_and_child(env);
	const char *child = wt_path(env, "task-1-3");
	CHECK(commit_in(child, "work.txt", "work") == 0);
	CHECK(sh("mv %s %s.orchfs-removing", child, child) == 0);
	CHECK(orch_store_exec(env->ctx.store, "UPDATE worktrees SET status = 'missing' WHERE id = 3") == 0);
	break_commits(env, true);
	fails_any(env, "worktree.abandon", "{\"session_id\": 1, \"worktree_id\": 3}");
	break_commits(env, false);
	CHECK_EQ_STR(status_of(env, 3), "missing");
	CHECK(exists(wt_path(env, "task-1-3.orchfs-removing/work.txt")));
	CHECK(sh("git -C %s worktree list | grep -q task-1-3", env->repo) == 0);
	/* Committed: now it goes, metadata included; the branch stays. */
	json_decref(ok(env, "worktree.abandon", "{\"session_id\": 1, \"worktree_id\": 3}"));
	CHECK(!exists(wt_path(env, "task-1-3.orchfs-removing")));
	CHECK(sh("git -C %s worktree list | grep -q task-1-3", env->repo) != 0);
	CHECK(sh("git -C %s rev-parse -q --verify refs/heads/task/1/3 >/dev/null", env->repo) == 0);
}

/* A path whose earlier checkout is still set aside (an abandon's cleanup did not run) is not free yet. */
TEST(path_still_being_removed_is_not_reused)
{
	json_decref(ok(env, "session.open", "{}"));
	json_decref(ok(env, "worktree.spawn", "{\"session_id\": 1, \"parent_worktree_id\": 2, \"branch\": \"t1\", "
		       "\"path\": \"P\"}"));
	/* The abandon committed; the process died before deleting what it had set aside. */
	CHECK(sh("mv %s %s.orchfs-removing", wt_path(env, "P"), wt_path(env, "P")) == 0);
	CHECK(orch_store_exec(env->ctx.store, "UPDATE worktrees SET status = 'abandoned' WHERE id = 3") == 0);
	json_t *e = fails(env, ORCH_EEXISTS, "worktree.spawn", "{\"session_id\": 1, \"parent_worktree_id\": 2, "
			  "\"branch\": \"t2\", \"path\": \"P\"}");
	CHECK(jstr(e, "message") && strstr(jstr(e, "message"), ".orchfs-removing") != NULL);
	json_decref(e);
	/* Had a new worktree taken the path anyway, finishing the old removal must not touch its metadata. */
	orch_git_effect *fx = NULL;
	CHECK_EQ_INT(orch_git_worktree_add(env->ctx.git, "orchfs-P", wt_path(env, "P"), "t2", "HEAD", &fx), 0);
	orch_git_effect_free(fx);
	json_t *log = NULL;
	CHECK_EQ_INT(orch_worktree_reconcile(&env->ctx, &log), 0);
	CHECK(log_has(log, "finished removing"));
	json_decref(log);
	CHECK(!exists(wt_path(env, "P.orchfs-removing")));
	CHECK_EQ_STR(out1("git -C %s rev-parse --abbrev-ref HEAD 2>&1", wt_path(env, "P")), "t2");
	CHECK(sh("git -C %s worktree list --porcelain | grep -qx 'worktree %s'", env->repo, wt_path(env, "P")) == 0);
	/* Now the path is free again for a new record. */
	CHECK(sh("git -C %s worktree remove %s", env->repo, wt_path(env, "P")) == 0);
	json_decref(ok(env, "worktree.spawn", "{\"session_id\": 1, \"parent_worktree_id\": 2, \"branch\": \"t3\", "
		       "\"path\": \"P\"}"));
}

/* Git's metadata name comes from the whole path: a/x and b/x coexist; direct children keep orchfs-<name>. */
TEST(worktree_names_from_the_whole_path)
{
	json_decref(ok(env, "session.open", "{}"));
	json_decref(ok(env, "worktree.spawn", "{\"session_id\": 1, \"parent_worktree_id\": 2, \"path\": \"a/x\"}"));
	json_decref(ok(env, "worktree.spawn", "{\"session_id\": 1, \"parent_worktree_id\": 2, \"path\": \"b/x\"}"));
	json_decref(ok(env, "worktree.create", "{\"branch\": \"c\", \"path\": \"x\", \"create_on_disk\": true}"));
	CHECK(exists(wt_path(env, "a/x/.git")) && exists(wt_path(env, "b/x/.git")));
	CHECK(sh("test -d %s/.git/worktrees/orchfs-session-1", env->repo) == 0);
	CHECK(sh("test -d %s/.git/worktrees/orchfs-x", env->repo) == 0);
	CHECK(sh("ls %s/.git/worktrees | grep -q '^orchfs-a-x'", env->repo) == 0);
	CHECK(sh("ls %s/.git/worktrees | grep -q '^orchfs-b-x'", env->repo) == 0);
	json_decref(ok(env, "worktree.abandon", "{\"session_id\": 1, \"worktree_id\": 3}"));
	CHECK(!exists(wt_path(env, "a/x")));
	CHECK(sh("git -C %s status >/dev/null 2>&1", wt_path(env, "b/x")) == 0);
	CHECK(sh("git -C %s status >/dev/null 2>&1", wt_path(env, "x")) == 0);
	CHECK(sh("git -C %s worktree list --porcelain | grep -q prunable", env->repo) != 0);
	CHECK_EQ_INT(atoi(out1("git -C %s worktree list | wc -l", env->repo)), 4);
	char *n1 = orch_git_worktree_name("/s/worktrees/session-4");
	CHECK_EQ_STR(n1, "orchfs-session-4");
	free(n1);
}

/* A merge killed after the parent's branch moved and before its commit is completed by the retry. */
TEST(merge_retry_completes_an_interrupted_merge)
{
	session_and_child(env);
	CHECK(commit_in(wt_path(env, "task-1-3"), "new.txt", "child") == 0);
	char hex[ORCH_GIT_HEX_SIZE];
	orch_git_effect *fx = NULL;
	CHECK_EQ_INT(orch_git_merge_into(env->ctx.git, "session/1", wt_path(env, "session-1"), "task/1/3", hex, &fx),
		     0);
	orch_git_effect_free(fx); /* the process died: no commit, no undo */
	int64_t v = db_version(env);
	json_t *r = ok(env, "worktree.merge_to_parent", "{\"session_id\": 1, \"worktree_id\": 3}");
	CHECK_EQ_STR(jstr(r, "merge_commit"), hex);
	CHECK_EQ_STR(jstr(r, "result"), "merged_to_parent");
	CHECK_EQ_STR(jstr(r, "child_worktree.status"), "closed");
	CHECK_EQ_STR(jstr(r, "child_worktree.merge_state"), "merged_to_parent");
	CHECK(jstr(r, "child_worktree.merged_at") != NULL);
	json_decref(r);
	CHECK_EQ_INT(db_version(env), v + 1);
	char *t = tip(env, "session/1");
	CHECK_EQ_STR(t, hex);
	free(t);
	json_decref(fails(env, ORCH_EINVALID_STATE, "worktree.merge_to_parent", "{\"session_id\": 1, \"worktree_id\": 3}"));
	/* A parent tip that merged something else is still "nothing new to merge". */
	json_decref(ok(env, "worktree.spawn", "{\"session_id\": 1, \"parent_worktree_id\": 2}"));
	json_decref(ok(env, "worktree.spawn", "{\"session_id\": 1, \"parent_worktree_id\": 2}"));
	CHECK(commit_in(wt_path(env, "task-1-5"), "five.txt", "5") == 0);
	json_decref(ok(env, "worktree.merge_to_parent", "{\"session_id\": 1, \"worktree_id\": 5}"));
	json_t *e = fails(env, ORCH_EINVALID_STATE, "worktree.merge_to_parent", "{\"session_id\": 1, \"worktree_id\": 4}");
	CHECK_EQ_STR(jstr(e, "details.state"), "nothing_to_merge");
	json_decref(e);
}

/* A worktree and branch left by a call that died before its commit, as orch_git_worktree_add makes them. */
static void leftover(test_env *env, const char *name, const char *rel, const char *branch, const char *base)
{
	orch_git_effect *fx = NULL;
	CHECK_EQ_INT(orch_git_worktree_add(env->ctx.git, name, wt_path(env, rel), branch, base, &fx), 0);
	orch_git_effect_free(fx); /* neither undone nor finished: the call never ended */
}

/* A default spawn whose id was reused after a crash takes back the leftover, when nothing can be lost. */
TEST(spawn_reclaims_the_leftover_of_an_interrupted_spawn)
{
	json_decref(ok(env, "session.open", "{}"));
	/* The root has work HEAD lacks: the leftover is judged against the parent's branch. */
	CHECK(commit_in(wt_path(env, "session-1"), "root.txt", "root") == 0);
	leftover(env, "orchfs-task-1-3", "task-1-3", "task/1/3", "session/1");
	json_t *w = ok(env, "worktree.spawn", "{\"session_id\": 1, \"parent_worktree_id\": 2}");
	CHECK_EQ_INT(jint(w, "id"), 3);
	CHECK_EQ_STR(jstr(w, "branch"), "task/1/3");
	json_decref(w);
	CHECK(exists(wt_path(env, "task-1-3/root.txt")));
	CHECK_EQ_STR(out1("git -C %s status --porcelain", wt_path(env, "task-1-3")), "");
	/* A leftover with work of its own is kept: the spawn fails, nothing is lost. */
	leftover(env, "orchfs-task-1-4", "task-1-4", "task/1/4", "session/1");
	CHECK(commit_in(wt_path(env, "task-1-4"), "mine.txt", "precious") == 0);
	json_decref(fails(env, ORCH_EEXISTS, "worktree.spawn", "{\"session_id\": 1, \"parent_worktree_id\": 2}"));
	CHECK(exists(wt_path(env, "task-1-4/mine.txt")));
	/* Planned children reclaim too. */
	CHECK(sh("git -C %s worktree remove --force %s && git -C %s branch -qD task/1/4", env->repo,
		 wt_path(env, "task-1-4"), env->repo) == 0);
	leftover(env, "orchfs-task-1-4", "task-1-4", "task/1/4", "session/1");
	w = ok(env, "worktree.spawn", "{\"session_id\": 1, \"parent_worktree_id\": 2, \"create_on_disk\": false}");
	CHECK_EQ_STR(jstr(w, "branch"), "task/1/4");
	CHECK_EQ_STR(jstr(w, "status"), "planned");
	json_decref(w);
	CHECK(!exists(wt_path(env, "task-1-4")));
}

/* Start-up removes orchfs worktrees that no record names, when nothing can be lost. */
TEST(reconcile_removes_unrecorded_leftovers)
{
	json_decref(ok(env, "session.open", "{}"));
	CHECK(commit_in(wt_path(env, "session-1"), "root.txt", "root") == 0);
	leftover(env, "orchfs-task-1-3", "task-1-3", "task/1/3", "session/1");
	leftover(env, "orchfs-feat", "feat", "feat", "HEAD");
	leftover(env, "orchfs-work", "work", "work", "HEAD");
	CHECK(commit_in(wt_path(env, "work"), "w.txt", "w") == 0);
	leftover(env, "orchfs-dirty", "dirty", "dirty", "HEAD");
	CHECK(sh("echo x > %s/scratch", wt_path(env, "dirty")) == 0);
	json_t *log = NULL;
	CHECK_EQ_INT(orch_worktree_reconcile(&env->ctx, &log), 0);
	CHECK(log_has(log, "task/1/3"));
	CHECK(log_has(log, "removed orchfs-feat"));
	CHECK(!log_has(log, "removed orchfs-work"));
	CHECK(!log_has(log, "removed orchfs-dirty"));
	CHECK(!log_has(log, "session-1"));
	json_decref(log);
	CHECK(!exists(wt_path(env, "task-1-3")) && !exists(wt_path(env, "feat")));
	CHECK(sh("git -C %s rev-parse -q --verify refs/heads/task/1/3 >/dev/null", env->repo) != 0);
	CHECK(sh("git -C %s rev-parse -q --verify refs/heads/feat >/dev/null", env->repo) != 0);
	CHECK(exists(wt_path(env, "work/w.txt")) && exists(wt_path(env, "dirty/scratch")));
	CHECK(exists(wt_path(env, "session-1/root.txt")));
	json_decref(ok(env, "worktree.spawn", "{\"session_id\": 1, \"parent_worktree_id\": 2}"));
}

/* Killed after the parent's checkout holds the merge and before its branch moved: the retry finishes. */
TEST(merge_retry_after_checkout_updated_but_branch_not_moved)
{
	session_and_child(env);
	CHECK(commit_in(wt_path(env, "task-1-3"), "new.txt", "child") == 0);
	char *before = tip(env, "session/1");
	/* What the interrupted merge left: the merge's files staged in the parent, the branch unmoved. */
	CHECK(sh("cd %s && git checkout -q task/1/3 -- . ", wt_path(env, "session-1")) == 0);
	CHECK(sh("cd %s && test -n \"$(git status --porcelain)\"", wt_path(env, "session-1")) == 0);
	json_t *r = ok(env, "worktree.merge_to_parent", "{\"session_id\": 1, \"worktree_id\": 3}");
	CHECK_EQ_STR(jstr(r, "result"), "merged_to_parent");
	json_decref(r);
	char *after = tip(env, "session/1");
	CHECK(strcmp(before, after) != 0);
	CHECK(sh("cd %s && test -z \"$(git status --porcelain)\" && test -f new.txt && "
		 "test $(git rev-list --parents -n1 HEAD | wc -w) = 3", wt_path(env, "session-1")) == 0);
	free(before);
	free(after);
	/* Other uncommitted changes are still dirty. */
	json_decref(ok(env, "worktree.spawn", "{\"session_id\": 1, \"parent_worktree_id\": 2}"));
	CHECK(commit_in(wt_path(env, "task-1-4"), "four.txt", "4") == 0);
	CHECK(sh("cd %s && echo x >> new.txt", wt_path(env, "session-1")) == 0);
	json_t *e = fails(env, ORCH_EINVALID_STATE, "worktree.merge_to_parent", "{\"session_id\": 1, \"worktree_id\": 4}");
	CHECK_EQ_STR(jstr(e, "details.state"), "dirty");
	json_decref(e);
}

/* A process killed while updating a checkout leaves git's index.lock; its inflight marker names it. */
TEST(dead_process_index_lock_is_cleared)
{
	json_decref(ok(env, "session.open", "{}"));
	pid_t pid = fork();
	if (pid == 0)
		_exit(0);
	waitpid(pid, NULL, 0);
	CHECK(sh("mkdir -p %s/.orchfs/inflight && printf %%s %s > %s/.orchfs/inflight/%d && "
		 ": > %s/.git/worktrees/orchfs-session-1/index.lock", env->repo, wt_path(env, "session-1"), env->repo,
		 (int)pid, env->repo) == 0);
	json_t *log = json_array();
	orch_git_clear_dead_inflight(env->ctx.git, log);
	CHECK(json_array_size(log) == 1);
	json_decref(log);
	CHECK(sh("test ! -e %s/.git/worktrees/orchfs-session-1/index.lock", env->repo) == 0);
	CHECK(sh("test ! -e %s/.orchfs/inflight/%d", env->repo, (int)pid) == 0);
	/* A live process's marker is left alone. */
	CHECK(sh("printf %%s %s > %s/.orchfs/inflight/1 && : > %s/.git/worktrees/orchfs-session-1/index.lock",
		 wt_path(env, "session-1"), env->repo, env->repo) == 0);
	orch_git_clear_dead_inflight(env->ctx.git, NULL);
	CHECK(sh("test -e %s/.git/worktrees/orchfs-session-1/index.lock", env->repo) == 0);
}

/* Markers are per operation, <pid>-<seq>: a dead process's are cleared, other names are left alone. */
TEST(dead_process_markers_per_operation)
{
	json_decref(ok(env, "session.open", "{}"));
	pid_t pid = fork();
	if (pid == 0)
		_exit(0);
	waitpid(pid, NULL, 0);
	const char *dir = ".orchfs/inflight", *lock = ".git/worktrees/orchfs-session-1/index.lock";
	CHECK(sh("cd %s && printf %%s %s > %s/%d-7 && printf %%s %s > %s/%d-x && printf %%s %s > %s/1-2 && "
		 ": > %s", env->repo, wt_path(env, "session-1"), dir, (int)pid, wt_path(env, "session-1"), dir,
		 (int)pid, wt_path(env, "session-1"), dir, lock) == 0);
	json_t *log = json_array();
	orch_git_clear_dead_inflight(env->ctx.git, log);
	CHECK(json_array_size(log) == 1);
	json_decref(log);
	CHECK(sh("cd %s && test ! -e %s && test ! -e %s/%d-7", env->repo, lock, dir, (int)pid) == 0);
	/* Not a marker name: never read, never removed.  A live process's marker stays too. */
	CHECK(sh("cd %s && test -e %s/%d-x && test -e %s/1-2", env->repo, dir, (int)pid, dir) == 0);
	/* A merge's own markers are gone once it returns, whatever the outcome. */
	CHECK(sh("cd %s && rm %s/%d-x %s/1-2", env->repo, dir, (int)pid, dir) == 0);
	json_decref(ok(env, "worktree.spawn", "{\"session_id\": 1, \"parent_worktree_id\": 2}"));
	CHECK(commit_in(wt_path(env, "task-1-3"), "new.txt", "child") == 0);
	json_decref(ok(env, "worktree.merge_to_parent", "{\"session_id\": 1, \"worktree_id\": 3}"));
	CHECK(sh("test -z \"$(ls -A %s/%s)\"", env->repo, dir) == 0);
}

/* Core ties git effects to the call through the transaction hooks: rollback undoes, commit finishes. */
TEST(git_effects_follow_the_transaction)
{
	session_and_child(env);
	const char *child = wt_path(env, "task-1-3");
	orch_git_effect *fx = NULL;
	CHECK_EQ_INT(orch_git_worktree_retire(env->ctx.git, child, &fx), 0);
	orch_txn_hook(&env->ctx, orch_git_effect_undo, orch_git_effect_finish, orch_git_effect_free, fx);
	orch_undo_run(&env->ctx);
	CHECK(exists(child) && !exists(wt_path(env, "task-1-3.orchfs-removing")));
	CHECK_EQ_INT(orch_git_worktree_retire(env->ctx.git, child, &fx), 0);
	orch_txn_hook(&env->ctx, orch_git_effect_undo, orch_git_effect_finish, orch_git_effect_free, fx);
	orch_undo_clear(&env->ctx);
	CHECK(!exists(child) && !exists(wt_path(env, "task-1-3.orchfs-removing")));
	CHECK(sh("git -C %s worktree list | grep -q task-1-3", env->repo) != 0);
	/* A failed git call hands back no effect. */
	fx = (orch_git_effect *)1;
	CHECK_EQ_INT(orch_git_worktree_retire(env->ctx.git, child, &fx), ORCH_EGIT);
	CHECK(fx == NULL);
	CHECK_EQ_INT(orch_git_worktree_add(env->ctx.git, "orchfs-x", wt_path(env, "x"), "session/1", "HEAD", &fx),
		     ORCH_EEXISTS);
	CHECK(fx == NULL);
}

/* An error from the database keeps its code and its message on the way up: no "not found" for a broken query. */
TEST(lower_layer_errors_are_not_relabelled)
{
	session_and_child(env);
	json_decref(ok(env, "task.create", "{\"level\": \"epic\", \"title\": \"e\"}"));
	json_t *e = fails(env, ORCH_ENOTFOUND, "task.create", "{\"level\": \"case\", \"title\": \"c\", "
			  "\"parent_id\": 9}");
	CHECK_EQ_STR(jstr(e, "message"), "parent task 9 not found");
	json_decref(e);
	e = fails(env, ORCH_ENOTFOUND, "worktree.spawn", "{\"session_id\": 1, \"parent_worktree_id\": 9}");
	CHECK_EQ_STR(jstr(e, "message"), "parent worktree 9 not found");
	json_decref(e);
	CHECK(orch_store_exec(env->ctx.store, "ALTER TABLE tasks RENAME TO tasks_away; "
			   "ALTER TABLE worktrees RENAME TO worktrees_away") == 0);
	e = fails(env, ORCH_EINTERNAL, "task.create", "{\"level\": \"case\", \"title\": \"c\", \"parent_id\": 1}");
	CHECK(jstr(e, "message") && strstr(jstr(e, "message"), "not found") == NULL);
	json_decref(e);
	e = fails(env, ORCH_EINTERNAL, "worktree.spawn", "{\"session_id\": 1, \"parent_worktree_id\": 2}");
	CHECK(jstr(e, "message") && strstr(jstr(e, "message"), "not found") == NULL);
	json_decref(e);
}

/* Killed half-way through updating the parent's checkout: the merge's files are partly written. */
TEST(merge_retry_finishes_a_half_done_checkout)
{
	session_and_child(env);
	CHECK(commit_in(wt_path(env, "task-1-3"), "new.txt", "child") == 0);
	CHECK(commit_in(wt_path(env, "task-1-3"), "README", "changed by the child") == 0);
	/* What the killed checkout left: one new file written, one tracked file rewritten, no index update. */
	CHECK(sh("cd %s && git show task/1/3:new.txt > new.txt && git show task/1/3:README > README",
		 wt_path(env, "session-1")) == 0);
	json_t *r = ok(env, "worktree.merge_to_parent", "{\"session_id\": 1, \"worktree_id\": 3}");
	CHECK_EQ_STR(jstr(r, "result"), "merged_to_parent");
	json_decref(r);
	CHECK(sh("cd %s && test -z \"$(git status --porcelain)\"", wt_path(env, "session-1")) == 0);
	/* A file in the way with other content is still the user's: dirty. */
	json_decref(ok(env, "worktree.spawn", "{\"session_id\": 1, \"parent_worktree_id\": 2}"));
	CHECK(commit_in(wt_path(env, "task-1-4"), "four.txt", "4") == 0);
	CHECK(sh("echo mine > %s/four.txt", wt_path(env, "session-1")) == 0);
	json_t *e = fails(env, ORCH_EINVALID_STATE, "worktree.merge_to_parent", "{\"session_id\": 1, \"worktree_id\": 4}");
	CHECK_EQ_STR(jstr(e, "details.state"), "dirty");
	json_decref(e);
	CHECK(sh("grep -qx mine %s/four.txt", wt_path(env, "session-1")) == 0);
}
