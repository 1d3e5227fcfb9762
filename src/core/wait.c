/*
 * wait: block until one object changes, or until a timeout, and return its
 * state.  A change is an event (events.c) after db_version_after whose ids
 * name the object; a lock also counts as changed once it is no longer
 * active (released, or its lease ran out: the wait sleeps until then).
 *
 * The method runs outside any transaction (ORCH_M_BLOCKING): each look is
 * its own read transaction on the call's reader.  The daemon does not let
 * it block (ctx->wait_state): it looks once and the daemon parks the
 * request, calling again at each commit and at its deadline or lease end.
 * Elsewhere (`orchfs call`) it sleeps between looks on the environment's
 * commit notification, looking again every WAIT_POLL_MS without one.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "orchfs/core.h"
#include "groups.h"

#define WAIT_POLL_MS 50          /* without a daemon's notification */
#define WAIT_IDLE_MS 1000        /* with it: a look now and then all the same */
#define WAIT_DEFAULT_MS 30000
#define WAIT_MAX_MS (3600 * 1000)

typedef struct {
	const char *key;   /* in "on" */
	const char *table; /* in an event's ids */
	const char *out;   /* in the result */
} kind;

static const kind kinds[] = {
	{"lock_id", "locks", "lock"},
	{"task_id", "tasks", "task"},
	{"node_id", "graph_nodes", "node"},
	{"merge_request_id", "merge_requests", "merge_request"},
};

static int object_json(orch_ctx *ctx, const kind *k, int64_t id, json_t **out)
{
	if (k == &kinds[0])
		return orch_lock_json(ctx, id, out);
	if (k == &kinds[1])
		return orch_task_json(ctx, id, out);
	if (k == &kinds[2])
		return orch_node_json(ctx, id, out);
	return orch_sql_row(ctx, out, "merge request %lld not found", id,
			    "SELECT id, feature_task_id, status, reviewer_session, notes_json, created_at, updated_at "
			    "FROM merge_requests WHERE id = ?", "i", id);
}

/* "on": exactly one of the kinds' keys, a positive integer. */
static int parse_on(json_t *p, const kind **k, int64_t *id)
{
	json_t *on = orch_param_json(p, "on");
	const char *key;
	json_t *v;

	if (!json_is_object(on) || json_object_size(on) != 1)
		goto bad;
	json_object_foreach(on, key, v) {
		for (size_t i = 0; i < sizeof(kinds) / sizeof(kinds[0]); i++) {
			if (strcmp(key, kinds[i].key) != 0)
				continue;
			if (!json_is_integer(v) || json_integer_value(v) <= 0)
				return orch_error_set(ORCH_EINVALID_PARAMS, "on.%s must be a positive integer id", key);
			*k = &kinds[i];
			*id = json_integer_value(v);
			return 0;
		}
	}
bad:
	return orch_error_set(ORCH_EINVALID_PARAMS, "on must be an object with exactly one of lock_id, task_id, "
			      "node_id, merge_request_id; e.g. {\"lock_id\": 3}");
}

/*
 * One look, in a read transaction: the object's state, the current
 * db_version, and whether it changed after *scanned (advanced to what was
 * looked at, so the next look reads only newer events).  *wake_at: when a
 * lock's lease ends (0: no such moment).
 */
static int look(orch_ctx *ctx, const kind *k, int64_t id, int64_t after, int64_t *scanned, json_t **state,
		int64_t *version, bool *changed, int64_t *wake_at)
{
	int64_t from = 0, hit = 0;
	bool found = false;
	int rc;

	*state = NULL;
	*changed = false;
	*wake_at = 0;
	ctx->now = orch_now_ms();
	if ((rc = orch_store_begin(ctx->store, false)) != 0)
		return rc;
	if ((rc = orch_events_bounds(ctx->store, &from, version)) != 0 ||
	    (rc = object_json(ctx, k, id, state)) != 0)
		goto done;
	if (after < from) {
		/* Its history since `after` is no longer kept: it may have changed. */
		*changed = true;
	} else {
		char path[64];
		snprintf(path, sizeof(path), "$.%s", k->table);
		rc = orch_sql_int(ctx, &hit, &found, "SELECT e.db_version FROM events e, json_each(e.ids_json, ?) j "
				  "WHERE e.db_version > ? AND j.value = ? LIMIT 1", "sii", path,
				  *scanned > after ? *scanned : after, id);
		if (rc)
			goto done;
		*changed = found;
	}
	*scanned = *version;
	if (k == &kinds[0] && !*changed) {
		const char *s = json_string_value(json_object_get(*state, "state"));
		int64_t until = 0;
		*changed = s && strcmp(s, "active") != 0;
		orch_sql_int(ctx, &until, NULL, "SELECT lease_until FROM locks WHERE id = ?", "i", id);
		*wake_at = until;
	}
done:
	orch_store_rollback(ctx->store);
	if (rc) {
		json_decref(*state);
		*state = NULL;
	}
	return rc;
}

/* Sleep until a commit is notified after `seq`, or `ms` pass. */
static void nap(orch_env *env, uint64_t seq, int64_t ms)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += ms / 1000;
	ts.tv_nsec += (ms % 1000) * 1000000;
	if (ts.tv_nsec >= 1000000000) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000;
	}
	pthread_mutex_lock(&env->wait_mu);
	while (env->commit_seq == seq && pthread_cond_timedwait(&env->wait_cond, &env->wait_mu, &ts) != ETIMEDOUT)
		;
	pthread_mutex_unlock(&env->wait_mu);
}

static int wait_fn(orch_ctx *ctx, json_t *p, json_t **result)
{
	orch_wait_state local = {0}, *ws = ctx->wait_state ? ctx->wait_state : &local;
	const kind *k = NULL;
	int64_t id = 0, version = 0, wake_at = 0;
	json_t *state = NULL;
	bool changed = false;
	int rc;

	if ((rc = parse_on(p, &k, &id)) != 0)
		return rc;
	if (!ws->started) {
		int64_t timeout = orch_param_int(p, "timeout_ms", WAIT_DEFAULT_MS);
		if (timeout < 0 || timeout > WAIT_MAX_MS)
			return orch_error_set(ORCH_EINVALID_PARAMS, "timeout_ms must be between 0 and %d, got %lld",
					      WAIT_MAX_MS, (long long)timeout);
		ws->after = orch_param_int(p, "db_version_after", -1);
		if (orch_param_has(p, "db_version_after") && ws->after < 0)
			return orch_error_set(ORCH_EINVALID_PARAMS, "db_version_after must be 0 or more, got %lld",
					      (long long)ws->after);
		if (ws->after < 0) {
			/* Absent: changes from now on. */
			int64_t from;
			if ((rc = orch_events_bounds(ctx->store, &from, &ws->after)) != 0)
				return rc;
		}
		ws->deadline = orch_now_ms() + timeout;
		ws->scanned = 0;
		ws->started = true;
	}
	ws->pending = false;
	for (;;) {
		pthread_mutex_lock(&ctx->env->wait_mu);
		uint64_t seq = ctx->env->commit_seq;
		pthread_mutex_unlock(&ctx->env->wait_mu);
		json_decref(state);
		if ((rc = look(ctx, k, id, ws->after, &ws->scanned, &state, &version, &changed, &wake_at)) != 0)
			return rc;
		int64_t now = orch_now_ms();
		if (changed || now >= ws->deadline || (ctx->cancelled && ctx->cancelled(ctx->cancelled_arg)))
			break;
		if (ctx->wait_state) {
			/* The caller parks the request: it calls again at a commit or by wake_at. */
			ws->pending = true;
			ws->wake_at = wake_at > now && wake_at < ws->deadline ? wake_at : ws->deadline;
			json_decref(state);
			*result = NULL;
			return 0;
		}
		int64_t ms = ctx->env->committed ? WAIT_IDLE_MS : WAIT_POLL_MS;
		if (ws->deadline - now < ms)
			ms = ws->deadline - now;
		if (wake_at > now && wake_at - now < ms)
			ms = wake_at - now;
		nap(ctx->env, seq, ms > 0 ? ms : 1);
	}
	*result = json_pack("{s:b, s:b, s:I, s:o}", "changed", changed, "timed_out", !changed, "db_version",
			    (json_int_t)version, k->out, state);
	return 0;
}

static const orch_param wait_params[] = {
	{"on", ORCH_P_JSON, ORCH_P_REQUIRED, "What to wait for: {\"lock_id\": N}, {\"task_id\": N}, {\"node_id\": N} "
	 "or {\"merge_request_id\": N}.", NULL},
	{"db_version_after", ORCH_P_INT, 0, "Wait for a change committed after this db_version (the one your last "
	 "read showed; mirror.status or an event line gives it). Default: the current one.", NULL},
	{"timeout_ms", ORCH_P_INT, 0, "Give up after this many milliseconds (default 30000, at most 3600000).", NULL},
	{NULL, 0, 0, NULL, NULL},
};

const orch_method orch_wait_methods[] = {
	{"wait", wait_fn, ORCH_M_BLOCKING, wait_params,
	 "Block until one object changes (a committed call touches it after db_version_after; a lock also when "
	 "it is released or its lease ends), or until timeout_ms, and return its state. Changes nothing; "
	 "through the mount the write blocks, other requests go on.",
	 "{changed: true|false, timed_out: true|false, db_version, lock|task|node|merge_request: its state}",
	 "{\"on\": {\"lock_id\": 1}, \"timeout_ms\": 10000}",
	 "invalid_params (EINVAL: on, timeout_ms, a call_id), not_found (ENOENT: no such object)."},
	{NULL, NULL, 0, NULL, NULL, NULL, NULL, NULL},
};
