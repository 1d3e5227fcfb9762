/*
 * Several machines, one state: worktrees record the host whose daemon made
 * them, only that host touches their checkouts and branches
 * (orch_worktree_local), and start-up recovery and `orchfs check` look at
 * this host's worktrees only.  The test's own context is the unnamed host
 * (""); a second context on the same repository and state plays host "b".
 */
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "test.h"

/* Host "b": a second workspace on the same repository and state directory. */
static void open_b(test_env *env, orch_ctx *b)
{
	if (orch_ctx_open_host(b, env->repo, NULL, "b") != 0) {
		fprintf(stderr, "  host b: %s\n", orch_error_last()->message);
		test_failed = 1;
	}
}

/* Call `method` through context `ctx`; *code is the error code (0: a result). The reply, parsed. */
static json_t *on(orch_ctx *ctx, int *code, const char *method, const char *body)
{
	char *reply = NULL;
	json_t *r;

	ctx->now = orch_now_ms();
	*code = orch_call_text(ctx, method, body, strlen(body), 0, &reply);
	r = json_loads(reply, 0, NULL);
	free(reply);
	orch_error_clear();
	return r;
}

/* The result of a call through `ctx` that must succeed (caller decrefs). */
static json_t *ok_on(orch_ctx *ctx, const char *method, const char *body)
{
	int code;
	json_t *r = on(ctx, &code, method, body);

	return expect_result(r, code, method);
}

/*
 * A call through `ctx` that must fail with invalid_state because of worktree
 * `wt`'s host `host_words` (as the message says it); returns nothing.
 */
static void refused_on(orch_ctx *ctx, const char *method, const char *body, int64_t wt, const char *host_words)
{
	int code;
	json_t *r = on(ctx, &code, method, body);
	char want[128];
	const char *msg = jstr(r, "error.message");

	snprintf(want, sizeof(want), "worktree %lld is on %s", (long long)wt, host_words);
	if (code != ORCH_EINVALID_STATE || !msg || !strstr(msg, want) ||
	    !jstr(r, "error.details.state") || strcmp(jstr(r, "error.details.state"), "other_host") != 0) {
		char *s = json_dumps(r, JSON_COMPACT);
		fprintf(stderr, "  %s %s: expected invalid_state \"%s\", got %s\n", method, body, want, s);
		free(s);
		test_failed = 1;
	}
	json_decref(r);
}

static json_t *worktree(orch_ctx *ctx, int64_t id)
{
	json_t *w = NULL;

	ctx->now = orch_now_ms();
	CHECK_EQ_INT(orch_worktree_json(ctx, id, &w), 0);
	return w ? w : json_object();
}

static int commit_in(const char *dir, const char *file)
{
	return sh("cd %s && echo x > %s && git add %s && git -c user.name=t -c user.email=t@e commit -q -m %s", dir,
		  file, file, file);
}

TEST(host_names_are_checked)
{
	char long_name[ORCH_HOST_MAX + 2];
	orch_ctx c;

	CHECK(orch_host_valid("a"));
	CHECK(orch_host_valid("node-1.example.org:7"));
	memset(long_name, 'x', ORCH_HOST_MAX);
	long_name[ORCH_HOST_MAX] = '\0';
	CHECK(orch_host_valid(long_name));
	long_name[ORCH_HOST_MAX] = 'x';
	long_name[ORCH_HOST_MAX + 1] = '\0';
	CHECK(!orch_host_valid(long_name));
	CHECK(!orch_host_valid(""));
	CHECK(!orch_host_valid("a b"));
	CHECK(!orch_host_valid("a/b"));
	CHECK(orch_host_valid("a_b"));
	CHECK(!orch_host_valid("h\xc3\xa9"));
	CHECK_EQ_INT(orch_ctx_open_host(&c, env->repo, NULL, "a b"), ORCH_EINVALID_PARAMS);
	CHECK(strstr(orch_error_last()->message, "\"a b\"") != NULL);
	orch_error_clear();
}

TEST(worktree_local_names_the_host)
{
	orch_ctx b;
	json_t *unnamed = json_pack("{s:i}", "id", 7), *on_b = json_pack("{s:i, s:s}", "id", 8, "host", "b");

	open_b(env, &b);
	CHECK_EQ_INT(orch_worktree_local(&env->ctx, unnamed), 0);
	CHECK_EQ_INT(orch_worktree_local(&b, on_b), 0);
	CHECK_EQ_INT(orch_worktree_local(&env->ctx, on_b), ORCH_EINVALID_STATE);
	CHECK(strstr(orch_error_last()->message, "worktree 8 is on host \"b\"; call this through a daemon on that host"));
	CHECK_EQ_STR(json_string_value(json_object_get(orch_error_last()->details, "state")), "other_host");
	CHECK_EQ_INT(orch_worktree_local(&b, unnamed), ORCH_EINVALID_STATE);
	CHECK(strstr(orch_error_last()->message, "worktree 7 is on the unnamed host"));
	orch_error_clear();
	json_decref(unnamed);
	json_decref(on_b);
	orch_ctx_close(&b);
}

TEST(worktrees_record_their_host_and_main_is_per_host)
{
	orch_ctx b;
	json_t *s, *w;

	open_b(env, &b);
	/* The unnamed host: no host key, as before. */
	s = ok(env, "session.open", "{}");
	CHECK_EQ_INT(jint(s, "session_context.main_worktree.id"), 1);
	CHECK(json_object_get(json_object_get(json_object_get(s, "session_context"), "main_worktree"), "host") == NULL);
	CHECK(json_object_get(json_object_get(json_object_get(s, "session_context"), "session_root_worktree"),
			      "host") == NULL);
	json_decref(s);
	/* Host b has its own main record, found again by the next open there. */
	s = ok_on(&b, "session.open", "{}");
	CHECK_EQ_INT(jint(s, "session_context.main_worktree.id"), 3);
	CHECK_EQ_STR(jstr(s, "session_context.main_worktree.host"), "b");
	CHECK_EQ_STR(jstr(s, "session_context.main_worktree.kind"), "main");
	CHECK_EQ_INT(jint(s, "session_context.session_root_worktree.id"), 4);
	CHECK_EQ_STR(jstr(s, "session_context.session_root_worktree.host"), "b");
	CHECK_EQ_INT(jint(s, "session_context.session_root_worktree.parent_worktree_id"), 3);
	json_decref(s);
	s = ok_on(&b, "session.open", "{\"worktree\": false}");
	CHECK_EQ_INT(jint(s, "session_context.main_worktree.id"), 3);
	json_decref(s);
	s = ok(env, "session.open", "{\"worktree\": false}");
	CHECK_EQ_INT(jint(s, "session_context.main_worktree.id"), 1);
	json_decref(s);
	/* Created and spawned worktrees carry the host of the call. */
	w = ok_on(&b, "worktree.create", "{\"branch\": \"plan-b\"}");
	CHECK_EQ_STR(jstr(w, "host"), "b");
	json_decref(w);
	w = ok_on(&b, "worktree.spawn", "{\"session_id\": 2}");
	CHECK_EQ_STR(jstr(w, "host"), "b");
	CHECK_EQ_INT(jint(w, "parent_worktree_id"), 4);
	json_decref(w);
	w = ok(env, "worktree.create", "{\"branch\": \"plan-a\", \"create_on_disk\": true}");
	CHECK(json_object_get(w, "host") == NULL);
	json_decref(w);
	/* Reads of another host's record work anywhere. */
	w = worktree(&env->ctx, 4);
	CHECK_EQ_STR(jstr(w, "host"), "b");
	json_decref(w);
	orch_ctx_close(&b);
}

TEST(other_hosts_checkouts_and_branches_are_refused)
{
	orch_ctx b;
	json_t *w;
	char child[600];

	open_b(env, &b);
	json_decref(ok(env, "session.open", "{}"));
	json_decref(ok(env, "worktree.spawn", "{\"session_id\": 1, \"parent_worktree_id\": 2}"));
	snprintf(child, sizeof(child), "%s/.orchfs/worktrees/task-1-3", env->repo);
	CHECK(commit_in(child, "c.txt") == 0);
	int64_t v = db_version(env);
	refused_on(&b, "worktree.merge_to_parent", "{\"session_id\": 1, \"worktree_id\": 3}", 3, "the unnamed host");
	refused_on(&b, "worktree.abandon", "{\"session_id\": 1, \"worktree_id\": 3}", 3, "the unnamed host");
	refused_on(&b, "worktree.spawn", "{\"session_id\": 1, \"parent_worktree_id\": 2}", 2, "the unnamed host");
	refused_on(&b, "worktree.spawn", "{\"session_id\": 1}", 2, "the unnamed host");
	refused_on(&b, "session.close", "{\"session_id\": 1, \"remove_worktree\": true}", 2, "the unnamed host");
	CHECK_EQ_INT(db_version(env), v);
	w = worktree(&b, 3);
	CHECK_EQ_STR(jstr(w, "status"), "active");
	json_decref(w);
	/* Its own host does it all. */
	w = ok(env, "worktree.merge_to_parent", "{\"session_id\": 1, \"worktree_id\": 3}");
	CHECK_EQ_STR(jstr(w, "child_worktree.status"), "closed");
	json_decref(w);

	/* The main-merge queue: queued and run where the session root is. */
	refused_on(&b, "merge.main.request", "{\"session_id\": 1, \"from_worktree_id\": 2}", 2, "the unnamed host");
	w = ok(env, "merge.main.request", "{\"session_id\": 1, \"from_worktree_id\": 2}");
	CHECK_EQ_STR(jstr(w, "state"), "queued");
	json_decref(w);
	json_decref(ok_on(&b, "merge.main.acquire_lock", "{\"session_id\": 1}"));
	v = db_version(env);
	refused_on(&b, "merge.main.run", "{\"session_id\": 1}", 2, "the unnamed host");
	refused_on(&b, "merge.main.run", "{\"session_id\": 1, \"request_id\": 1}", 2, "the unnamed host");
	CHECK_EQ_INT(db_version(env), v);
	w = ok(env, "merge.main.run", "{\"session_id\": 1}");
	CHECK_EQ_STR(jstr(w, "state"), "merged");
	json_decref(w);
	CHECK(sh("test -f %s/c.txt", env->repo) == 0);
	orch_ctx_close(&b);
}

TEST(review_context_reads_other_hosts_records_only)
{
	orch_ctx b;
	json_t *r;

	open_b(env, &b);
	json_decref(ok(env, "task.create", "{\"level\": \"feature\", \"title\": \"F\"}"));
	json_decref(ok(env, "worktree.create", "{\"task_id\": 1, \"branch\": \"feat-a\", \"create_on_disk\": true}"));
	json_decref(ok_on(&b, "worktree.create", "{\"task_id\": 1, \"branch\": \"feat-b\", \"create_on_disk\": true}"));
	json_decref(ok(env, "merge.request", "{\"feature_task_id\": 1}"));
	r = ok_on(&b, "merge.review_context", "{\"merge_request_id\": 1}");
	CHECK_EQ_INT(json_array_size(json_object_get(r, "worktrees")), 2);
	CHECK_EQ_STR(jstr(r, "worktrees.0.branch"), "feat-a");
	CHECK(json_object_get(json_array_get(json_object_get(r, "worktrees"), 0), "head") == NULL);
	CHECK(jstr(r, "worktrees.1.head") != NULL);
	json_decref(r);
	r = ok(env, "merge.review_context", "{\"merge_request_id\": 1}");
	CHECK(jstr(r, "worktrees.0.head") != NULL);
	CHECK(json_object_get(json_array_get(json_object_get(r, "worktrees"), 1), "head") == NULL);
	json_decref(r);
	orch_ctx_close(&b);
}

TEST(attach_takes_over_only_worktrees_of_its_host)
{
	orch_ctx b;
	json_t *r;

	open_b(env, &b);
	json_decref(ok(env, "task.create", "{\"level\": \"feature\", \"title\": \"F\"}"));
	json_decref(ok(env, "task.create", "{\"level\": \"case\", \"title\": \"c1\", \"parent_id\": 1}"));
	json_decref(ok(env, "task.create", "{\"level\": \"case\", \"title\": \"c2\", \"parent_id\": 1}"));
	json_decref(ok(env, "session.open", "{}"));                    /* 1: root 2 on the unnamed host */
	json_decref(ok(env, "case.begin", "{\"case_id\": 2, \"session_id\": 1}"));
	json_decref(ok(env, "session.open", "{\"worktree\": false}")); /* 2: no worktree */
	json_decref(ok(env, "case.begin", "{\"case_id\": 3, \"session_id\": 2}"));
	CHECK_EQ_INT(orch_sql_exec(&env->ctx, "UPDATE sessions SET last_seen_at = last_seen_at - 200000 WHERE id IN "
				   "(1, 2)", ""), 0);
	r = ok_on(&b, "session.open", "{\"intent\": \"resume_work\"}"); /* 3, on b (main 3) */
	CHECK_EQ_INT(jint(r, "main_worktree.id"), 3);
	json_decref(r);
	int64_t v = db_version(env);
	int code;
	r = on(&b, &code, "resume.candidates.attach", "{\"requester_session_id\": 3, \"target_session_id\": 1}");
	CHECK_EQ_INT(code, ORCH_EINVALID_STATE);
	CHECK(strstr(jstr(r, "error.message"), "worktree 2 is on the unnamed host"));
	CHECK(strstr(jstr(r, "error.message"), "session.close"));
	CHECK_EQ_STR(jstr(r, "error.details.state"), "other_host");
	json_decref(r);
	CHECK_EQ_INT(db_version(env), v);
	/* A session with no worktree is taken over from anywhere; the requester keeps its own main. */
	r = ok_on(&b, "resume.candidates.attach", "{\"requester_session_id\": 3, \"target_session_id\": 2}");
	CHECK_EQ_INT(jint(r, "current_ref.node_id"), 3);
	CHECK_EQ_INT(jint(r, "main_worktree.id"), 3);
	CHECK_EQ_STR(jstr(r, "main_worktree.host"), "b");
	json_decref(r);
	/* On its own host the first one is taken over as before. */
	json_decref(ok(env, "session.open", "{\"intent\": \"resume_work\"}"));
	r = ok(env, "resume.candidates.attach", "{\"requester_session_id\": 4, \"target_session_id\": 1}");
	CHECK_EQ_INT(jint(r, "session_root_worktree.id"), 2);
	CHECK_EQ_INT(jint(r, "main_worktree.id"), 1);
	json_decref(r);
	orch_ctx_close(&b);
}

TEST(reconcile_and_check_look_at_this_hosts_worktrees_only)
{
	orch_ctx b;
	json_t *log = NULL, *w, *report = NULL;

	open_b(env, &b);
	json_decref(ok(env, "session.open", "{}"));   /* root 2, unnamed host */
	json_decref(ok_on(&b, "session.open", "{}")); /* main 3, root 4 on b */
	CHECK(sh("rm -rf %s/.orchfs/worktrees/session-1 %s/.orchfs/worktrees/session-2", env->repo, env->repo) == 0);
	int64_t v = db_version(env);
	/* Host b looks at its own root only: the unnamed host's is none of its business. */
	b.now = orch_now_ms();
	CHECK_EQ_INT(orch_worktree_reconcile(&b, &log), 0);
	CHECK(log_has(log, "worktree 4 ("));
	CHECK(!log_has(log, "worktree 2 ("));
	CHECK(log_has(log, "0 worktrees ok, 1 changed"));
	json_decref(log);
	CHECK_EQ_INT(db_version(env), v + 1);
	w = worktree(&b, 2);
	CHECK_EQ_STR(jstr(w, "status"), "active");
	json_decref(w);
	/* And the other way round. */
	CHECK_EQ_INT(orch_worktree_reconcile(&env->ctx, &log), 0);
	CHECK(log_has(log, "worktree 2 ("));
	CHECK(!log_has(log, "worktree 4 ("));
	json_decref(log);
	w = worktree(&env->ctx, 2);
	CHECK_EQ_STR(jstr(w, "status"), "missing");
	json_decref(w);
	w = worktree(&env->ctx, 4);
	CHECK_EQ_STR(jstr(w, "status"), "missing");
	json_decref(w);

	/* orchfs check: a checkout gone on another host is not a problem here. */
	json_decref(ok_on(&b, "worktree.create", "{\"branch\": \"feat-b\", \"create_on_disk\": true}"));
	CHECK(sh("rm -rf %s/.orchfs/worktrees/feat-b", env->repo) == 0);
	CHECK_EQ_INT(orch_check(env->repo, NULL, NULL, &report), 0);
	char *text = json_dumps(report, 0);
	CHECK(!strstr(text, "feat-b is not a checkout"));
	free(text);
	json_decref(report);
	CHECK_EQ_INT(orch_check(env->repo, NULL, "b", &report), 0);
	text = json_dumps(report, 0);
	CHECK(strstr(text, "feat-b is not a checkout"));
	free(text);
	json_decref(report);
	CHECK_EQ_INT(orch_check(env->repo, NULL, "b c", &report), ORCH_EINVALID_PARAMS);
	json_decref(report);
	orch_error_clear();
	orch_ctx_close(&b);
}
