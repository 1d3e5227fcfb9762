/* The change feed in the core: one event per successful mutating call, its ids, the kept window. */
#include "test.h"

static int64_t count_events(test_env *env)
{
	int64_t n = 0;

	orch_sql_int(&env->ctx, &n, NULL, "SELECT count(*) FROM events", "");
	return n;
}

TEST(events_one_per_successful_mutating_call)
{
	json_decref(ok(env, "task.create", "{\"level\": \"case\", \"title\": \"a\"}"));
	json_decref(fails(env, ORCH_ENOTFOUND, "lock.release", "{\"lock_id\": 9, \"owner_session\": \"1\"}"));
	json_decref(ok(env, "task.list", "{}"));
	json_decref(ok(env, "lock.acquire", "{\"scope_type\": \"file\", \"scope_path\": \"a.c\", \"owner_session\": \"7\"}"));
	CHECK_EQ_INT(count_events(env), 2);
	CHECK_EQ_INT(db_version(env), 2);

	orch_event_line *lines = NULL;
	size_t n = 0;
	int64_t from = -1, last = -1;
	CHECK_EQ_INT(orch_events_bounds(env->ctx.store, &from, &last), 0);
	CHECK_EQ_INT(from, 0);
	CHECK_EQ_INT(last, 2);
	CHECK_EQ_INT(orch_events_after(env->ctx.store, 0, 10, &lines, &n), 0);
	CHECK_EQ_INT(n, 2);
	if (n == 2) {
		json_t *a = json_loads(lines[0].line, 0, NULL), *b = json_loads(lines[1].line, 0, NULL);
		CHECK_EQ_INT(jint(a, "db_version"), 1);
		CHECK_EQ_STR(jstr(a, "method"), "task.create");
		CHECK_EQ_INT(jint(a, "ids.tasks.0"), 1);
		CHECK(json_object_get(a, "session_id") == NULL);
		CHECK_EQ_STR(jstr(b, "method"), "lock.acquire");
		CHECK_EQ_INT(jint(b, "session_id"), 7); /* owner_session "7" */
		CHECK_EQ_INT(jint(b, "ids.locks.0"), 1);
		CHECK(lines[1].line[lines[1].len - 1] == '\n');
		json_decref(a);
		json_decref(b);
	}
	orch_event_lines_free(lines, n);
}

TEST(events_keep_a_bounded_window)
{
	int64_t from = 0, last = 0, step = ORCH_EVENTS_PRUNE_STEP;

	json_decref(ok(env, "task.create", "{\"level\": \"case\", \"title\": \"a\"}"));
	json_decref(ok(env, "task.create", "{\"level\": \"case\", \"title\": \"b\"}"));
	/* As if ORCH_EVENTS_KEPT calls had happened since: events 1 and 2 fall out of the window ... */
	int64_t v = (ORCH_EVENTS_KEPT + 2 + step - 1) / step * step; /* the first pruning version past it */
	CHECK_EQ_INT(orch_sql_exec(&env->ctx, "UPDATE mirror_meta SET db_version = ?", "i", v - 2), 0);
	json_decref(ok(env, "task.create", "{\"level\": \"case\", \"title\": \"c\"}"));
	/* ... but go only at the next multiple of the step. */
	CHECK_EQ_INT(count_events(env), 3);
	json_decref(ok(env, "task.create", "{\"level\": \"case\", \"title\": \"d\"}"));
	CHECK_EQ_INT(orch_events_bounds(env->ctx.store, &from, &last), 0);
	CHECK_EQ_INT(last, v);
	CHECK_EQ_INT(from, v - 2); /* the oldest kept is v - 1 */
	CHECK_EQ_INT(count_events(env), 2);
}
