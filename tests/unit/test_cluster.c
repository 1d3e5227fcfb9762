/*
 * What several hosts sharing one state rely on, tested on one: liveness of
 * alive holders named by host, the beat that keeps this host's holders
 * alive elsewhere, and following another host's commits through events.
 */
#include <unistd.h>

#include "test.h"

/* orch_holder_alive of a session_alive row made of these values, evaluated by this process. */
static int64_t holder_alive(test_env *env, const char *host, int64_t pid, int64_t start, int64_t seen_at)
{
	int64_t v = -1;

	CHECK_EQ_INT(orch_sql_int(&env->ctx, &v, NULL, "SELECT orch_holder_alive(?, ?, ?, ?)", "siiI", host, pid,
				  start, seen_at),
		     0);
	return v;
}

TEST(holder_on_this_host_is_judged_by_its_process_elsewhere_by_its_beat)
{
	int64_t me = getpid(), start = orch_process_start(getpid()), now = orch_now_ms();

	orch_store_set_host("a");
	/* This host's holders: the process itself, not a pid reused by a later process. */
	CHECK_EQ_INT(holder_alive(env, "a", me, start, 0), 1);
	CHECK_EQ_INT(holder_alive(env, "a", me, start + 1, 0), 0);
	CHECK_EQ_INT(holder_alive(env, "a", 999999999, 1, now), 0); /* seen_at does not count here */
	/* Another host's: alive while its daemon saw it within the timeout, whatever the pid is here. */
	CHECK_EQ_INT(holder_alive(env, "b", 999999999, 1, now), 1);
	CHECK_EQ_INT(holder_alive(env, "b", me, start, now - ORCH_HOLDER_TIMEOUT_MS - 1000), 0);
	CHECK_EQ_INT(holder_alive(env, "b", me, start, 0), 0); /* never seen (NULL) */
	orch_store_set_host("");
	/* One machine (SQLite): every row is this host's. */
	CHECK_EQ_INT(holder_alive(env, "", me, start, 0), 1);
	CHECK_EQ_INT(holder_alive(env, "", 999999999, 1, now), 0);
}

TEST(beat_refreshes_only_this_hosts_running_holders)
{
	int64_t me = getpid(), start = orch_process_start(getpid()), seen = -1;
	json_t *s = ok(env, "session.open", "{\"agent_role\": \"a\", \"owner\": \"o\", \"worktree\": false}");

	json_decref(s);
	/* A running holder here, a dead one here, and a holder on another host: all seen long ago. */
	CHECK(orch_sql_exec(&env->ctx, "INSERT INTO session_alive (session_id, daemon_pid, daemon_start, since, host, "
				       "seen_at) VALUES (1, ?1, ?2, 0, 'a', 5), (1, 999999999, 1, 0, 'a', 5), "
				       "(1, ?1, ?2, 0, 'b', 5)", "ii", me, start) == 0 ||
	      (fprintf(stderr, "  %s\n", orch_error_last()->message), 0));
	orch_store_set_host("a");
	CHECK_EQ_INT(orch_alive_beat(env->ctx.store), 0);
	orch_store_set_host("");
	CHECK_EQ_INT(orch_sql_int(&env->ctx, &seen, NULL, "SELECT seen_at FROM session_alive WHERE host = 'a' AND "
						     "daemon_pid = ?", "i", me), 0);
	CHECK(seen > orch_now_ms() - 60000);
	CHECK_EQ_INT(orch_sql_int(&env->ctx, &seen, NULL, "SELECT seen_at FROM session_alive WHERE host = 'a' AND "
						     "daemon_pid = 999999999", ""), 0);
	CHECK_EQ_INT(seen, 5);
	CHECK_EQ_INT(orch_sql_int(&env->ctx, &seen, NULL, "SELECT seen_at FROM session_alive WHERE host = 'b'", ""), 0);
	CHECK_EQ_INT(seen, 5);
	/* Without a host (SQLite) there is nothing to beat for. */
	CHECK_EQ_INT(orch_alive_beat(env->ctx.store), 0);
}

TEST(events_say_which_rows_another_host_changed)
{
	orch_change *c = NULL;
	size_t n = 0;
	bool complete = false;

	json_decref(ok(env, "task.create", "{\"level\": \"case\", \"title\": \"a\"}"));
	json_decref(ok(env, "task.create", "{\"level\": \"case\", \"title\": \"b\"}"));
	json_decref(ok(env, "lock.acquire", "{\"scope_type\": \"file\", \"scope_path\": \"a.c\", \"owner_session\": \"7\"}"));
	CHECK_EQ_INT(orch_events_changes(env->ctx.store, 1, 3, &c, &n, &complete), 0);
	CHECK(complete);
	CHECK_EQ_INT(n, 2);
	if (n == 2) {
		CHECK_EQ_STR(c[0].table, "tasks");
		CHECK_EQ_INT(c[0].rowid, 2);
		CHECK_EQ_STR(c[1].table, "locks");
		CHECK_EQ_INT(c[1].rowid, 1);
		/* Interned: the cache compares table names by address. */
		CHECK(c[0].table == orch_store_intern("tasks"));
	}
	free(c);
	/* A version without its event (pruned, or a write outside a call) cannot be told: incomplete. */
	CHECK(orch_sql_exec(&env->ctx, "DELETE FROM events WHERE db_version = 2", "") == 0);
	CHECK_EQ_INT(orch_events_changes(env->ctx.store, 0, 3, &c, &n, &complete), 0);
	CHECK(!complete);
	free(c);
	/* Nor can an event that names every table. */
	CHECK(orch_sql_exec(&env->ctx, "UPDATE events SET ids_json = '{\"*\": true}' WHERE db_version = 3", "") == 0);
	CHECK_EQ_INT(orch_events_changes(env->ctx.store, 2, 3, &c, &n, &complete), 0);
	CHECK(!complete);
	free(c);
	/* Nothing new: complete and empty. */
	CHECK_EQ_INT(orch_events_changes(env->ctx.store, 3, 3, &c, &n, &complete), 0);
	CHECK(complete && n == 0);
	free(c);
}
