/*
 * Case lifecycle, current refs and resume, without FUSE.
 */
#include <stdlib.h>
#include <unistd.h>

#include "test.h"

/* An epic with cases c1 (priority 0) and c2 (priority 5), and a session. */
static void setup(test_env *env)
{
	json_decref(ok(env, "task.create", "{\"level\": \"feature\", \"title\": \"F\"}"));
	json_decref(ok(env, "task.create", "{\"level\": \"case\", \"title\": \"c1\", \"parent_id\": 1}"));
	json_decref(ok(env, "task.create", "{\"level\": \"case\", \"title\": \"c2\", \"parent_id\": 1, \"priority\": 5}"));
	json_decref(ok(env, "session.open", "{}"));
}

/* Make session `sid`'s heartbeat `secs` seconds old. */
static void age(test_env *env, int64_t sid, int secs)
{
	char sql[256];
	snprintf(sql, sizeof(sql), "UPDATE sessions SET last_seen_at = last_seen_at - %d WHERE id = %lld",
		 secs * 1000, (long long)sid);
	CHECK(orch_store_exec(env->ctx.store, sql) == 0);
}

TEST(case_lifecycle_and_refs)
{
	setup(env);
	json_t *t = ok(env, "case.begin", "{\"case_id\": 2, \"session_id\": 1, \"input_contract\": {\"cmd\": \"make\"}, "
		       "\"fixtures\": [\"a.json\"], \"required_files\": [\"./src//x.c\"]}");
	CHECK_EQ_STR(jstr(t, "status"), "in_progress");
	CHECK_EQ_STR(jstr(t, "input_contract.cmd"), "make");
	CHECK_EQ_STR(jstr(t, "fixtures.0"), "a.json");
	json_decref(t);
	for (int i = 1; i <= 3; i++) {
		json_t *s = ok(env, "step.check", "{\"case_id\": 2, \"session_id\": 1, \"step_title\": \"s%d\", "
			       "\"result\": \"pass\", \"artifacts\": [\"log%d\"]}", i, i);
		CHECK_EQ_INT(jint(s, "order_no"), i);
		CHECK_EQ_STR(jstr(s, "evidence.result"), "pass");
		CHECK_EQ_STR(jstr(s, "status"), "done");
		CHECK(jstr(s, "recorded_at") != NULL);
		json_decref(s);
	}
	json_t *r = ok(env, "work.current_ref", "{\"session_id\": 1}");
	CHECK_EQ_STR(jstr(r, "source"), "current_refs");
	CHECK_EQ_INT(jint(r, "current_ref.node_id"), 2);
	CHECK_EQ_STR(jstr(r, "current_ref.summary"), "last step checked: s3");
	CHECK_EQ_STR(jstr(r, "current_ref.required_files.0"), "src/x.c");
	CHECK_EQ_STR(jstr(r, "checkpoint.step_title"), "s3");
	CHECK_EQ_INT(jint(r, "current_ref.version"), 4);
	int64_t v = db_version(env);
	json_decref(r);
	/* Reading the existing ref changes nothing. */
	json_decref(ok(env, "work.current_ref", "{\"session_id\": 1}"));
	CHECK_EQ_INT(db_version(env), v);
	json_t *done = ok(env, "case.complete", "{\"case_id\": 2, \"session_id\": 1, \"summary\": \"ok\", \"next_action\": \"review\"}");
	CHECK_EQ_STR(jstr(done, "status"), "done");
	CHECK_EQ_STR(jstr(done, "next_action"), "review");
	json_decref(done);
	json_t *cps = NULL;
	CHECK_EQ_INT(orch_task_checkpoints_json(&env->ctx, 2, &cps), 0);
	CHECK_EQ_INT(json_array_size(cps), 5);
	CHECK_EQ_STR(jstr(cps, "4.snapshot.summary"), "ok");
	json_decref(cps);
	/* The completed ref is no longer active; the fallback hands out the next case. */
	r = ok(env, "work.current_ref", "{\"session_id\": 1, \"mode\": \"resume\"}");
	CHECK_EQ_STR(jstr(r, "source"), "resume.next");
	CHECK_EQ_INT(jint(r, "current_ref.node_id"), 3);
	CHECK_EQ_STR(jstr(r, "current_ref.mode"), "resume");
	CHECK(json_is_null(json_object_get(r, "checkpoint")));
	json_decref(r);
}

TEST(case_guards)
{
	setup(env);
	int64_t v = db_version(env);
	json_t *e = fails(env, ORCH_EINVALID_STATE, "case.complete", "{\"case_id\": 2}");
	CHECK(strstr(jstr(e, "message"), "case 2 is todo") != NULL);
	CHECK_EQ_STR(jstr(e, "details.state"), "todo");
	json_decref(e);
	json_decref(fails(env, ORCH_EINVALID_STATE, "step.check", "{\"case_id\": 2, \"step_title\": \"s\", \"result\": \"r\"}"));
	e = fails(env, ORCH_EINVALID_STATE, "case.begin", "{\"case_id\": 1}");
	CHECK(strstr(jstr(e, "message"), "feature") != NULL);
	json_decref(e);
	json_decref(fails(env, ORCH_EINVALID_STATE, "step.check", "{\"case_id\": 1, \"step_title\": \"s\", \"result\": \"r\"}"));
	json_decref(fails(env, ORCH_ENOTFOUND, "case.begin", "{\"case_id\": 77}"));
	json_decref(fails(env, ORCH_EINVALID_PARAMS, "case.begin", "{\"case_id\": 2, \"fixtures\": \"a\"}"));
	json_decref(fails(env, ORCH_EINVALID_PARAMS, "case.begin", "{\"case_id\": 2, \"fixtures\": [1]}"));
	json_decref(fails(env, ORCH_EINVALID_PARAMS, "case.begin", "{\"case_id\": 2, \"required_files\": [\"/etc/passwd\"]}"));
	json_decref(fails(env, ORCH_EINVALID_PARAMS, "step.check", "{\"case_id\": 2, \"step_title\": \"s\"}"));
	json_decref(fails(env, ORCH_ENOTFOUND, "case.begin", "{\"case_id\": 2, \"session_id\": 9}"));
	json_decref(fails(env, ORCH_EINVALID_PARAMS, "work.current_ref", "{\"session_id\": 1, \"mode\": \"x\"}"));
	json_decref(fails(env, ORCH_ENOTFOUND, "work.current_ref.ack", "{\"session_id\": 1, \"ref_id\": 1}"));
	CHECK_EQ_INT(db_version(env), v);
	json_decref(ok(env, "case.begin", "{\"case_id\": 2}"));
	json_decref(ok(env, "case.complete", "{\"case_id\": 2}"));
	v = db_version(env);
	json_decref(fails(env, ORCH_EINVALID_STATE, "case.begin", "{\"case_id\": 2}"));
	json_decref(fails(env, ORCH_EINVALID_STATE, "case.complete", "{\"case_id\": 2}"));
	CHECK_EQ_INT(db_version(env), v);
}

TEST(resume_next_order)
{
	setup(env);
	/* todo c2 (priority 5) beats todo c1. */
	json_t *n = ok(env, "resume.next", "{}");
	CHECK_EQ_INT(jint(n, "task.id"), 3);
	CHECK(json_object_get(n, "checkpoint") == NULL);
	json_decref(n);
	/* An in_progress priority-0 case beats a todo priority-5 one, and brings its checkpoint. */
	json_decref(ok(env, "case.begin", "{\"case_id\": 2}"));
	n = ok(env, "resume.next", "{}");
	CHECK_EQ_INT(jint(n, "task.id"), 2);
	CHECK_EQ_STR(jstr(n, "checkpoint.step_title"), "case.begin");
	json_decref(n);
	json_decref(ok(env, "case.complete", "{\"case_id\": 2}"));
	json_decref(ok(env, "case.begin", "{\"case_id\": 3}"));
	json_decref(ok(env, "case.complete", "{\"case_id\": 3}"));
	n = ok(env, "resume.next", "{}");
	CHECK_EQ_INT(json_object_size(n), 0);
	json_decref(n);
}

TEST(no_double_hand_out)
{
	setup(env);
	json_decref(ok(env, "session.open", "{}"));
	json_decref(ok(env, "session.open", "{}"));
	json_t *a = ok(env, "work.current_ref", "{\"session_id\": 1}");
	json_t *b = ok(env, "resume.next", "{\"session_id\": 2}");
	json_t *c = ok(env, "work.current_ref", "{\"session_id\": 3}");
	CHECK_EQ_INT(jint(a, "current_ref.node_id"), 3);
	CHECK_EQ_INT(jint(b, "task.id"), 2);
	CHECK_EQ_STR(jstr(c, "source"), "none");
	/* Session 2 now holds case 2: another session cannot begin it. */
	json_decref(fails(env, ORCH_ECONFLICT, "case.begin", "{\"case_id\": 2, \"session_id\": 1}"));
	/* Asking again returns the held case, unchanged. */
	int64_t v = db_version(env);
	json_t *b2 = ok(env, "resume.next", "{\"session_id\": 2}");
	CHECK_EQ_INT(jint(b2, "task.id"), 2);
	CHECK_EQ_INT(db_version(env), v);
	/* Closing a session releases its case. */
	json_decref(ok(env, "session.close", "{\"session_id\": 2}"));
	json_t *c2 = ok(env, "work.current_ref", "{\"session_id\": 3}");
	CHECK_EQ_INT(jint(c2, "current_ref.node_id"), 2);
	json_decref(a);
	json_decref(b);
	json_decref(b2);
	json_decref(c);
	json_decref(c2);
}

TEST(attach_takes_over)
{
	setup(env);
	json_decref(ok(env, "case.begin", "{\"case_id\": 2, \"session_id\": 1}"));
	json_decref(ok(env, "step.check", "{\"case_id\": 2, \"session_id\": 1, \"step_title\": \"s1\", \"result\": \"ok\"}"));
	json_t *r = ok(env, "session.open", "{\"intent\": \"resume_work\", \"heartbeat_timeout_seconds\": 30}");
	CHECK_EQ_INT(json_array_size(json_object_get(r, "resume_candidates")), 0);
	json_decref(r);
	int64_t v = db_version(env);
	/* Not stale yet: not a candidate. */
	json_t *e = fails(env, ORCH_EINVALID_STATE, "resume.candidates.attach", "{\"requester_session_id\": 2, \"target_session_id\": 1}");
	json_decref(e);
	json_decref(fails(env, ORCH_EINVALID_PARAMS, "resume.candidates.attach", "{\"requester_session_id\": 2, \"target_session_id\": 2}"));
	json_decref(fails(env, ORCH_ENOTFOUND, "resume.candidates.attach", "{\"requester_session_id\": 2, \"target_session_id\": 8}"));
	CHECK_EQ_INT(db_version(env), v);
	age(env, 1, 31);
	/* Past the requester's 30 s, but a session's own window (default 120 s) decides. */
	json_t *l = ok(env, "resume.candidates.list", "{\"requester_session_id\": 2}");
	CHECK_EQ_INT(json_array_size(l), 0);
	json_decref(l);
	age(env, 1, 121);
	l = ok(env, "resume.candidates.list", "{\"requester_session_id\": 2}");
	CHECK_EQ_INT(json_array_size(l), 1);
	CHECK_EQ_INT(jint(l, "0.session.id"), 1);
	CHECK_EQ_INT(jint(l, "0.current_ref.node_id"), 2);
	json_decref(l);
	json_t *c = ok(env, "resume.candidates.attach", "{\"requester_session_id\": 2, \"target_session_id\": 1}");
	CHECK_EQ_STR(jstr(c, "session.status"), "active_resume");
	CHECK_EQ_STR(jstr(c, "current_ref.mode"), "resume");
	CHECK_EQ_INT(jint(c, "current_ref.node_id"), 2);
	CHECK_EQ_STR(jstr(c, "current_ref.summary"), "last step checked: s1");
	CHECK_EQ_INT(jint(c, "session_root_worktree.owner_session_id"), 2);
	CHECK_EQ_STR(jstr(c, "session_root_worktree.branch"), "session/1");
	json_decref(c);
	json_t *t = ok(env, "session.context", "{\"session_id\": 1}");
	CHECK_EQ_STR(jstr(t, "session.status"), "handoff_attached");
	CHECK(json_object_get(t, "current_ref") == NULL);
	json_decref(t);
	/* Already attached: conflict, for anyone. */
	json_decref(ok(env, "session.open", "{\"intent\": \"resume_work\"}"));
	json_decref(fails(env, ORCH_ECONFLICT, "resume.candidates.attach", "{\"requester_session_id\": 3, \"target_session_id\": 1}"));
	/* The new owner continues the case. */
	json_decref(ok(env, "step.check", "{\"case_id\": 2, \"session_id\": 2, \"step_title\": \"s2\", \"result\": \"ok\"}"));
	json_decref(ok(env, "case.complete", "{\"case_id\": 2, \"session_id\": 2}"));
}

TEST(ack)
{
	setup(env);
	json_t *r = ok(env, "work.current_ref", "{\"session_id\": 1}");
	int64_t id = jint(r, "current_ref.id");
	json_decref(r);
	r = ok(env, "work.current_ref.ack", "{\"session_id\": 1, \"ref_id\": %lld}", (long long)id);
	CHECK(jstr(r, "acked_at") != NULL);
	CHECK_EQ_INT(jint(r, "version"), 2);
	json_decref(r);
	json_decref(ok(env, "session.open", "{}"));
	json_decref(fails(env, ORCH_ENOTFOUND, "work.current_ref.ack", "{\"session_id\": 2, \"ref_id\": %lld}", (long long)id));
}
