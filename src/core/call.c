/*
 * The one path every request takes: method lookup, call_id idempotency,
 * implied session keys, validation, one store transaction, db_version bump,
 * undo of git effects on failure, reply text.
 */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "orchfs/core.h"

static bool call_id_valid(const char *s)
{
	size_t n = strlen(s);

	if (n < 1 || n > 64)
		return false;
	for (; *s; s++)
		if (!isalnum((unsigned char)*s) && !strchr("._:-", *s))
			return false;
	return true;
}

static char *reply_text(json_t *reply)
{
	char *s = json_dumps(reply, JSON_COMPACT | JSON_ENCODE_ANY);
	size_t n = strlen(s);

	s = orch_xrealloc(s, n + 2);
	s[n] = '\n';
	s[n + 1] = '\0';
	return s;
}

char *orch_reply_error(const char *call_id)
{
	const orch_error *e = orch_error_last();
	json_t *reply = json_object(), *err = json_object();
	char *text;

	json_object_set_new(err, "code", json_string(orch_error_name(e->code ? e->code : ORCH_EINTERNAL)));
	json_object_set_new(err, "message", json_string(e->message[0] ? e->message : "internal error"));
	if (e->details)
		json_object_set(err, "details", e->details);
	json_object_set_new(reply, "error", err);
	if (call_id)
		json_object_set_new(reply, "call_id", json_string(call_id));
	text = reply_text(reply);
	json_decref(reply);
	return text;
}

/* Apply the keys that sessions/<id>/ctl/ implies; a repeated key must agree. */
static int apply_implied(const orch_method *m, json_t *params, int64_t session_id)
{
	static const char *const names[] = {"session_id", "requester_session_id", "owner_session"};

	for (size_t i = 0; i < 3; i++) {
		bool declared = false;
		for (const orch_param *p = m->params; p && p->name; p++)
			declared |= strcmp(p->name, names[i]) == 0;
		if (!declared)
			continue;
		json_t *want = i == 2 ? json_sprintf("%lld", (long long)session_id) : json_integer(session_id);
		json_t *have = json_object_get(params, names[i]);
		/* owner_session may be given as the session's id, a JSON integer. */
		bool same_id = i == 2 && json_is_integer(have) && json_integer_value(have) == session_id;
		if (have && !same_id && !json_equal(have, want)) {
			char *h = json_dumps(have, JSON_ENCODE_ANY);
			orch_error_set(ORCH_EINVALID_PARAMS,
				       "%s is implied by sessions/%lld/ctl/ and must be %s%lld%s, got %s", names[i],
				       (long long)session_id, i == 2 ? "\"" : "", (long long)session_id,
				       i == 2 ? "\"" : "", h);
			free(h);
			json_decref(want);
			return ORCH_EINVALID_PARAMS;
		}
		json_object_set_new(params, names[i], want);
	}
	return 0;
}

/*
 * A stored error that says nothing about the request itself (a lock held,
 * a git or database failure): a repeat with the same call_id runs again
 * and its reply replaces the stored one.
 */
static bool transient(int code)
{
	return code == ORCH_ECONFLICT || code == ORCH_EGIT || code == ORCH_EINTERNAL;
}

/* The error code of a reply text (0 for a result). */
static int reply_code(const char *text)
{
	json_t *r = json_loads(text, 0, NULL);
	const char *name = json_string_value(json_object_get(json_object_get(r, "error"), "code"));
	int code = name ? orch_error_from_name(name) : 0;

	json_decref(r);
	return code;
}

/* Keep the current error aside while other work may record its own. */
typedef struct {
	orch_error e;
	json_t *details;
} saved_error;

static saved_error error_save(void)
{
	saved_error s = {*orch_error_last(), NULL};

	s.details = s.e.details ? json_incref(s.e.details) : NULL;
	return s;
}

static void error_restore(saved_error *s)
{
	orch_error_set(s->e.code, "%s", s->e.message);
	orch_error_details(s->details);
}

/*
 * Look up a stored reply for call_id.  Returns 1 and sets *reply and *code when
 * the same call was made before, 0 when none is stored, or an error.
 */
static int stored_reply(orch_ctx *ctx, const char *call_id, const char *method, const char *canon,
			char **reply, int *code)
{
	orch_stmt *st = orch_sql(ctx, "SELECT method, params, reply FROM replies WHERE call_id = ?", "s", call_id);
	int rc;

	if (!st)
		return ORCH_EINTERNAL;
	rc = orch_sql_step(ctx, st);
	if (rc == ORCH_DONE) {
		orch_stmt_reset(st);
		return 0;
	}
	if (rc != ORCH_ROW) {
		orch_stmt_reset(st);
		return ORCH_EINTERNAL;
	}
	if (strcmp((const char *)orch_stmt_column_text(st, 0), method) != 0 ||
	    strcmp((const char *)orch_stmt_column_text(st, 1), canon) != 0) {
		const char *was = (const char *)orch_stmt_column_text(st, 0);
		if (strcmp(was, method) != 0)
			rc = orch_error_set(ORCH_EEXISTS, "call_id \"%s\" was already used for another method (%s, not "
					    "%s); use a new call_id", call_id, was, method);
		else
			rc = orch_error_set(ORCH_EEXISTS, "call_id \"%s\" was already used for %s with other params; "
					    "use a new call_id", call_id, was);
		orch_stmt_reset(st);
		return rc;
	}
	*reply = strdup((const char *)orch_stmt_column_text(st, 2));
	orch_stmt_reset(st);

	/* Replay the code (and message, for `orchfs call`) of a stored error. */
	*code = 0;
	json_t *r = json_loads(*reply, 0, NULL);
	json_t *err = json_object_get(r, "error");
	if (err) {
		*code = orch_error_from_name(json_string_value(json_object_get(err, "code")));
		if (transient(*code)) {
			json_decref(r);
			free(*reply);
			*reply = NULL;
			orch_error_clear();
			return 0;
		}
		orch_error_set(*code ? *code : ORCH_EINTERNAL, "%s",
			       json_string_value(json_object_get(err, "message")));
		json_t *d = json_object_get(err, "details");
		if (d)
			orch_error_details(json_incref(d));
	}
	json_decref(r);
	return 1;
}

static int store_reply(orch_ctx *ctx, const char *call_id, const char *method, const char *canon,
		       const char *reply)
{
	/* replies/ changes: move the tree's mtime, but this is no mutating call (no db_version). */
	/* An upsert keeps the row id of a replaced transient error: replies/<call_id>.json keeps its inode. */
	int rc = orch_sql_exec(ctx, "INSERT INTO replies (call_id, method, params, reply, created_at) "
			       "VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (call_id) DO UPDATE SET method = ?2, "
			       "params = ?3, reply = ?4, created_at = ?5", "ssssi", call_id, method, canon, reply,
			       ctx->now);

	return rc ? rc : orch_sql_exec(ctx, "UPDATE mirror_meta SET updated_at = max(updated_at, ?) WHERE id = 1",
				       "i", ctx->now);
}

/* Remember a session ctl file's reply inside the open transaction (see orch_remember_reply). */
static int remember_here(orch_ctx *ctx, int64_t session_id, const char *method, const char *reply)
{
	return orch_sql_exec(ctx, "INSERT INTO ctl_replies (session_id, method, reply, updated_at) VALUES "
			     "(?1, ?2, ?3, ?4) ON CONFLICT (session_id, method) DO UPDATE SET reply = ?3, "
			     "updated_at = ?4", "issi", session_id, method, reply, ctx->now);
}

/* Store an error reply in its own transaction (the method's was rolled back). */
/* Announce the state about to be committed on the writer's connection (see orch_env.committing). */
static void announce(orch_env *env)
{
	int64_t v = 0, t = 0;

	if (env->committing && orch_meta_read(env->writer, &v, &t) == 0)
		env->committing(env->committed_arg, v, t);
}

/*
 * Store an error reply inside the open transaction, unless a stored reply
 * must be kept (anything but a transient error this attempt replaces).
 * 0 when stored, else nonzero.
 */
static int store_error_reply_here(orch_ctx *ctx, const char *call_id, const char *method, const char *canon,
				  const char *reply)
{
	orch_stmt *st = orch_sql(ctx, "SELECT reply FROM replies WHERE call_id = ?", "s", call_id);
	bool keep = false;

	if (!st)
		return ORCH_EINTERNAL;
	if (orch_stmt_step(st) == ORCH_ROW)
		keep = !transient(reply_code((const char *)orch_stmt_column_text(st, 0)));
	orch_stmt_reset(st);
	return keep ? 1 : store_reply(ctx, call_id, method, canon, reply);
}

static void store_error_reply(orch_ctx *ctx, const char *call_id, const char *method, const char *canon,
			      const char *reply)
{
	saved_error saved = error_save();

	if (orch_store_begin(ctx->store, true) == 0) {
		if (store_error_reply_here(ctx, call_id, method, canon, reply) == 0) {
			announce(ctx->env);
			orch_store_commit(ctx->store);
		} else {
			orch_store_rollback(ctx->store);
		}
	}
	error_restore(&saved);
}

/* One more successful mutating call: db_version and the time it moved (version_at, the mirror's "now"). */
static int bump_version(orch_ctx *ctx)
{
	return orch_sql_exec(ctx, "UPDATE mirror_meta SET db_version = db_version + 1, updated_at = ?1, "
			     "version_at = ?1 WHERE id = 1", "i", ctx->now);
}

/*
 * What a failed call still records (orch_txn_on_failure), inside the
 * open transaction once the call's own changes were rolled back: in a
 * savepoint of its own, with the db_version bump.  If it cannot be
 * recorded it is logged; the call's error stays the reply either way.
 */
static void record_failure(orch_ctx *ctx)
{
	int (*fn)(orch_ctx *, json_t *) = ctx->fail_fn;
	json_t *arg = ctx->fail_arg;

	ctx->fail_fn = NULL;
	ctx->fail_arg = NULL;
	if (fn) {
		saved_error saved = error_save();
		if (orch_sql_exec(ctx, "SAVEPOINT failure", "") == 0) {
			if (fn(ctx, arg) == 0 && bump_version(ctx) == 0) {
				orch_sql_exec(ctx, "RELEASE failure", "");
			} else {
				orch_log("a failed call's record of its failure was not kept: %s",
					 orch_error_last()->message);
				orch_sql_exec(ctx, "ROLLBACK TO failure", "");
				orch_sql_exec(ctx, "RELEASE failure", "");
			}
		}
		error_restore(&saved);
	}
	json_decref(arg);
}

/* A failed call's record (record_failure) and its error reply (call_id), in a transaction of their own. */
static void store_failure(orch_ctx *ctx, const char *call_id, const char *method, const char *canon,
			  const char *reply)
{
	saved_error saved = error_save();

	if (orch_store_begin(ctx->store, true) == 0) {
		record_failure(ctx);
		if (call_id)
			store_error_reply_here(ctx, call_id, method, canon, reply);
		announce(ctx->env);
		if (orch_store_commit(ctx->store) != 0 && orch_store_in_txn(ctx->store))
			orch_store_rollback(ctx->store);
	} else {
		orch_txn_on_failure(ctx, NULL, NULL);
	}
	error_restore(&saved);
}

/*
 * The reply around a result a method wrote as text (ctx->result_text,
 * taken): the same bytes reply_text would give, without a second copy
 * of a long list.
 */
static char *wrap_result_text(orch_ctx *ctx, const char *call_id)
{
	static const char head[] = "{\"result\":";
	char *text = ctx->result_text, *tail = NULL;
	size_t n = strlen(text), h = sizeof(head) - 1, t;

	ctx->result_text = NULL;
	if (call_id) {
		json_t *id = json_string(call_id);
		char *quoted = json_dumps(id, JSON_ENCODE_ANY);
		json_decref(id);
		if (asprintf(&tail, ",\"call_id\":%s}\n", quoted) < 0)
			tail = NULL;
		free(quoted);
	}
	if (!tail)
		tail = strdup("}\n");
	t = strlen(tail);
	text = orch_xrealloc(text, h + n + t + 1);
	memmove(text + h, text, n);
	memcpy(text, head, h);
	memcpy(text + h + n, tail, t + 1);
	free(tail);
	return text;
}

/* The session an event names: the one implied by sessions/<id>/ctl/, else the one the params give. */
static int64_t event_session(json_t *params, int64_t session_id)
{
	static const char *const keys[] = {"session_id", "requester_session_id", "owner_session"};

	if (session_id > 0)
		return session_id;
	for (size_t i = 0; i < 3; i++) {
		json_t *v = json_object_get(params, keys[i]);
		if (json_is_integer(v) && json_integer_value(v) > 0)
			return json_integer_value(v);
		if (json_is_string(v)) {
			char *end;
			long long id = strtoll(json_string_value(v), &end, 10);
			if (*json_string_value(v) && !*end && id > 0)
				return id;
		}
	}
	return 0;
}

/*
 * The work of one validated call inside a transaction the caller opened
 * (its own, or a savepoint of a batch): stored reply (call_id), the method,
 * db_version bump, reply text and its storage.  Returns 0 with *reply set;
 * or, when the call_id's reply is stored, sets *replayed and returns its
 * code; or an error code (nothing rolled back yet, *call_id_taken set when
 * the call_id belongs to another call).
 */
static int run_body(orch_ctx *ctx, const orch_method *m, json_t *params, const char *call_id, const char *canon,
		    int64_t session_id, char **reply, bool *replayed, bool *call_id_taken)
{
	json_t *result = NULL, *out;
	int rc;

	*replayed = *call_id_taken = false;
	/* The time of the call is when it holds the write lock, not when it asked for it. */
	ctx->now = orch_now_ms();
	if (call_id) {
		int code = 0;
		rc = stored_reply(ctx, call_id, m->name, canon, reply, &code);
		if (rc == 1) {
			*replayed = true;
			return code;
		}
		if (rc) {
			*call_id_taken = rc == ORCH_EEXISTS;
			return rc;
		}
	}
	/*
	 * A change through sessions/<id>/ctl/ acts as that session: a closed or
	 * taken-over session is told so before anything else (unless the
	 * method is meant for such a session, as session.close is).
	 */
	if (session_id > 0 && (m->flags & ORCH_M_WRITE) && !(m->flags & ORCH_M_CLOSED_OK) &&
	    (rc = orch_session_require_open(ctx, session_id)) != 0)
		return rc;
	ctx->unchanged = false;
	orch_txn_on_failure(ctx, NULL, NULL);
	size_t mark = orch_store_changes_mark(ctx->store);
	if ((rc = m->fn(ctx, params, &result)) != 0)
		goto fail;
	if ((m->flags & ORCH_M_WRITE) && !ctx->unchanged && (rc = bump_version(ctx)) != 0)
		goto fail;
	/* A change made through sessions/<id>/ctl/ is a sign of life too. */
	if (session_id > 0 && (m->flags & ORCH_M_WRITE) && !ctx->unchanged &&
	    (rc = orch_sql_exec(ctx, "UPDATE sessions SET last_seen_at = ?, status = CASE status WHEN 'opened' "
				"THEN 'active_new' ELSE status END WHERE id = ? AND status NOT IN ('closed', "
				"'handoff_attached')", "ii", ctx->now, session_id)) != 0)
		goto fail;
	/* The change feed: one event per successful mutating call, in its transaction. */
	if ((m->flags & ORCH_M_WRITE) && !ctx->unchanged &&
	    (rc = orch_event_record(ctx, m->name, event_session(params, session_id), mark)) != 0)
		goto fail;

	if (ctx->result_text) {
		*reply = wrap_result_text(ctx, call_id);
	} else {
		out = json_object();
		json_object_set_new(out, "result", result ? result : json_null());
		result = NULL;
		if (call_id)
			json_object_set_new(out, "call_id", json_string(call_id));
		*reply = reply_text(out);
		json_decref(out);
	}
	if (call_id && (rc = store_reply(ctx, call_id, m->name, canon, *reply)) != 0)
		goto fail;
	orch_txn_on_failure(ctx, NULL, NULL); /* it succeeded: no failure to record */
	/* A success and its remembered copy commit together. */
	if (ctx->remember && session_id > 0 && (m->flags & ORCH_M_WRITE)) {
		if ((rc = remember_here(ctx, session_id, m->name, *reply)) != 0)
			goto fail;
		ctx->remembered = true;
	}
	return 0;
fail:
	json_decref(result);
	free(ctx->result_text);
	ctx->result_text = NULL;
	return rc;
}


/* A call failed and its transaction (or savepoint) is rolled back: undo its git effects, the error reply. */
static void failed(orch_ctx *ctx, const char *call_id, char **reply)
{
	ctx->remembered = false; /* rolled back with the call */
	if (ctx->undo) {
		/* Undoing may itself record errors; the reply is about the call's. */
		saved_error saved = error_save();
		orch_undo_run(ctx);
		error_restore(&saved);
	}
	free(*reply);
	*reply = orch_reply_error(call_id);
}

/* The transaction of one validated call on the lane's connection. */
static int execute(orch_ctx *ctx, const orch_method *m, json_t *params, const char *call_id, const char *canon,
		   int64_t session_id, char **reply)
{
	bool write = (m->flags & ORCH_M_WRITE) || call_id, replayed, taken = false;
	int rc;

	if (m->flags & ORCH_M_BLOCKING) {
		/* Its own read transactions, one per look: a snapshot held while waiting would never see a change. */
		rc = run_body(ctx, m, params, NULL, canon, session_id, reply, &replayed, &taken);
		if (rc)
			failed(ctx, NULL, reply);
		return rc;
	}
	if ((rc = orch_store_begin(ctx->store, write)) != 0) {
		failed(ctx, call_id, reply);
		if (call_id && !orch_store_lost(ctx->store))
			store_error_reply(ctx, call_id, m->name, canon, *reply);
		return rc;
	}
	rc = run_body(ctx, m, params, call_id, canon, session_id, reply, &replayed, &taken);
	if (replayed) {
		orch_store_rollback(ctx->store);
		return rc;
	}
	if (rc) {
		orch_store_rollback(ctx->store);
	} else {
		if (write)
			announce(ctx->env);
		if ((rc = orch_store_commit(ctx->store)) == 0) {
			orch_undo_clear(ctx);
			return 0;
		}
		if (orch_store_lost(ctx->store))
			orch_undo_forget(ctx); /* it may have committed */
	}
	failed(ctx, call_id, reply);
	/* A lost dqlite leader: nothing more can be written now, and the retry will run the call again. */
	if (orch_store_lost(ctx->store))
		return rc;
	if (ctx->fail_fn)
		store_failure(ctx, call_id && !taken ? call_id : NULL, m->name, canon, *reply);
	else if (call_id && !taken)
		store_error_reply(ctx, call_id, m->name, canon, *reply);
	return rc;
}

/* Enter the writer lane: the writer's connection and git, under writer_mu. */
static void writer_enter(orch_ctx *ctx)
{
	pthread_mutex_lock(&ctx->env->writer_mu);
	ctx->store = ctx->env->writer;
	ctx->git = ctx->env->git;
}

/*
 * Leave it: report the rows committed meanwhile (so a reader that starts
 * after the call returns sees its effect), then let the next writer in.
 */
static void writer_leave(orch_ctx *ctx)
{
	orch_env *env = ctx->env;
	size_t n;
	const orch_change *changes = orch_store_changes(env->writer, &n);

	/* Even with no row changed: a COMMIT that failed after its announcement must be accounted for. */
	if (env->committed)
		env->committed(env->committed_arg, changes, n);
	orch_store_changes_clear(env->writer);
	pthread_mutex_unlock(&env->writer_mu);
	if (env->publish)
		env->publish(env->committed_arg);
}

/* A mutating call handed to the writer thread; the caller waits for `done`. */
typedef struct orch_lane_job {
	struct orch_lane_job *next;
	orch_ctx *ctx;
	const orch_method *m;
	json_t *params;
	const char *call_id, *canon;
	int64_t session_id;
	char **reply;
	int rc;
	saved_error error; /* the writer thread's error slot, for the caller's */
	bool done;
} orch_lane_job;

/* One call on the writer lane, on whatever thread runs it. */
static int write_call(orch_ctx *ctx, const orch_method *m, json_t *params, const char *call_id,
		      const char *canon, int64_t session_id, char **reply)
{
	int rc;

	writer_enter(ctx);
	rc = execute(ctx, m, params, call_id, canon, session_id, reply);
	writer_leave(ctx);
	return rc;
}

#define BATCH_MAX 32 /* calls committed together by the writer thread (one fsync) */

/* Finish a job of a batch: hand its error slot to its caller. */
static void job_end(orch_lane_job *job, int rc)
{
	json_decref(job->error.details); /* a reply replayed, then failed with its batch */
	job->rc = rc;
	job->error = error_save();
	orch_error_clear();
}

/*
 * Fail the calls [from, to) of a batch that had succeeded in a transaction
 * that did not commit, newest first (their git effects are undone in the
 * reverse order they were made); `why` is the error they all get.
 */
static void fail_pending(orch_lane_job **jobs, bool *pending, size_t from, size_t to, saved_error *why)
{
	for (size_t i = to; i-- > from;) {
		if (!pending[i])
			continue;
		pending[i] = false;
		error_restore(why);
		*why = error_save();
		failed(jobs[i]->ctx, jobs[i]->call_id, jobs[i]->reply);
		job_end(jobs[i], orch_error_last()->code ? orch_error_last()->code : ORCH_EINTERNAL);
	}
}

/*
 * Group commit: the calls queued while the previous batch was being
 * written run in one BEGIN IMMEDIATE transaction, each in a savepoint of
 * its own (a failed call rolls back to it, undoes its git effects and
 * changes nothing else), and are committed with one fsync; then every
 * call's after-commit work runs and every caller gets its reply.  A reply
 * is sent only once its call is durable: a success, or a reply replayed
 * from a call_id (which may have been stored by an earlier call of this
 * very batch), is pending until the COMMIT.  If SQLite gives up the whole
 * transaction (I/O error, full disk), the calls pending in it fail and the
 * rest go on in a new one.
 */
static void execute_batch(orch_env *env, orch_lane_job **jobs, size_t n)
{
	bool pending[BATCH_MAX] = {false}, replayed_ok[BATCH_MAX] = {false};
	size_t first = 0; /* the first job of the current transaction */
	saved_error why;
	int rc;

	pthread_mutex_lock(&env->writer_mu);
	for (size_t i = 0; i < n; i++) {
		jobs[i]->ctx->store = env->writer;
		jobs[i]->ctx->git = env->git;
	}
	for (size_t i = 0; i < n; i++) {
		orch_lane_job *j = jobs[i];
		bool replayed = false, taken = false;

		if (!orch_store_in_txn(env->writer)) {
			first = i;
			if ((rc = orch_store_begin(env->writer, true)) != 0) {
				failed(j->ctx, j->call_id, j->reply);
				job_end(j, rc);
				continue;
			}
		}
		orch_error_clear();
		if ((rc = orch_sql_exec(j->ctx, "SAVEPOINT call", "")) == 0)
			rc = run_body(j->ctx, j->m, j->params, j->call_id, j->canon, j->session_id, j->reply, &replayed,
				      &taken);
		if (rc == 0 && !replayed && orch_sql_exec(j->ctx, "RELEASE call", "") == 0) {
			pending[i] = true;
			continue;
		}
		if (replayed) {
			/* A replayed reply changed nothing, and stands only if its row commits. */
			saved_error saved = error_save();
			orch_sql_exec(j->ctx, "ROLLBACK TO call", "");
			orch_sql_exec(j->ctx, "RELEASE call", "");
			error_restore(&saved);
			j->rc = rc;
			j->error = error_save();
			orch_error_clear();
			pending[i] = replayed_ok[i] = true;
		} else {
			if (!rc)
				rc = ORCH_EINTERNAL; /* RELEASE failed: the slot says why */
			/* A lost dqlite leader took the transaction: nothing more to undo or record in it. */
			bool lost = orch_store_lost(env->writer);
			saved_error saved = error_save();
			if (!lost) {
				orch_sql_exec(j->ctx, "ROLLBACK TO call", "");
				orch_sql_exec(j->ctx, "RELEASE call", "");
			}
			error_restore(&saved);
			failed(j->ctx, j->call_id, j->reply);
			if (!lost && orch_store_txn_alive(env->writer))
				record_failure(j->ctx);
			else
				orch_txn_on_failure(j->ctx, NULL, NULL);
			if (j->call_id && !taken && !lost && orch_store_txn_alive(env->writer)) {
				saved = error_save();
				store_error_reply_here(j->ctx, j->call_id, j->m->name, j->canon, *j->reply);
				error_restore(&saved);
			}
			job_end(j, rc);
		}
		if (!orch_store_txn_alive(env->writer)) {
			/* SQLite rolled the whole transaction back: what was pending in it is gone. */
			orch_error_set(ORCH_EINTERNAL, "the database gave up the transaction of a group of calls; "
				       "retry (with the same call_id)");
			why = error_save();
			orch_store_rollback(env->writer);
			fail_pending(jobs, pending, first, i + 1, &why);
			json_decref(why.details);
		}
	}
	if (orch_store_in_txn(env->writer)) {
		announce(env);
		if ((rc = orch_store_commit(env->writer)) != 0) {
			why = error_save();
			/* Lost with the leader: the batch may have committed; keep its git effects (orch_undo_forget). */
			for (size_t i = first; i < n && orch_store_lost(env->writer); i++)
				if (pending[i])
					orch_undo_forget(jobs[i]->ctx);
			fail_pending(jobs, pending, first, n, &why);
			json_decref(why.details);
		}
	}
	for (size_t i = 0; i < n; i++) {
		if (!pending[i])
			continue;
		if (replayed_ok[i])
			continue; /* committed: its replayed rc and error stand */
		orch_error_clear();
		orch_undo_clear(jobs[i]->ctx);
		job_end(jobs[i], 0);
	}
	writer_leave(jobs[0]->ctx);
}

static void *lane_main(void *arg)
{
	orch_env *env = arg;
	orch_lane_job *batch[BATCH_MAX];

	/* Lower priority than the readers (raising one's nice value needs no privilege). */
	if (env->lane_nice > 0 && setpriority(PRIO_PROCESS, (id_t)gettid(), env->lane_nice) != 0)
		orch_log("writer thread keeps the default priority: %s", strerror(errno));
	pthread_mutex_lock(&env->lane_mu);
	for (;;) {
		size_t n = 0;
		while (env->lane_head && n < BATCH_MAX) {
			batch[n++] = env->lane_head;
			env->lane_head = env->lane_head->next;
		}
		if (!env->lane_head)
			env->lane_tail = NULL;
		if (!n) {
			if (env->lane_stop)
				break;
			pthread_cond_wait(&env->lane_cond, &env->lane_mu);
			continue;
		}
		pthread_mutex_unlock(&env->lane_mu);
		execute_batch(env, batch, n);
		pthread_mutex_lock(&env->lane_mu);
		for (size_t i = 0; i < n; i++)
			batch[i]->done = true;
		pthread_cond_broadcast(&env->lane_cond);
	}
	pthread_mutex_unlock(&env->lane_mu);
	return NULL;
}

/* Queue a job for the writer thread and wait for it; the caller's error slot gets its error. */
static int lane_run(orch_env *env, orch_lane_job *job)
{
	pthread_mutex_lock(&env->lane_mu);
	if (env->lane_tail)
		env->lane_tail->next = job;
	else
		env->lane_head = job;
	env->lane_tail = job;
	pthread_cond_broadcast(&env->lane_cond);
	while (!job->done)
		pthread_cond_wait(&env->lane_cond, &env->lane_mu);
	pthread_mutex_unlock(&env->lane_mu);
	error_restore(&job->error);
	return job->rc;
}

int orch_env_start_writer(orch_env *env, int nice)
{
	env->lane_nice = nice;
	env->lane_stop = false;
	if (pthread_create(&env->lane_thread, NULL, lane_main, env) != 0)
		return orch_error_set(ORCH_EINTERNAL, "cannot start the writer thread");
	env->lane_running = true;
	return 0;
}

void orch_env_stop_writer(orch_env *env)
{
	if (!env->lane_running)
		return;
	pthread_mutex_lock(&env->lane_mu);
	env->lane_stop = true;
	pthread_cond_broadcast(&env->lane_cond);
	pthread_mutex_unlock(&env->lane_mu);
	pthread_join(env->lane_thread, NULL);
	env->lane_running = false;
}

/*
 * Run a validated call on its lane: mutating calls (and calls with a
 * call_id, whose reply is stored) on the writer lane -- the writer thread
 * when one runs; reads on a pooled read-only connection, beside any
 * writer and any git work.
 */
static int run_on_lane(orch_ctx *ctx, const orch_method *m, json_t *params, const char *call_id,
		       const char *canon, int64_t session_id, char **reply)
{
	int rc;

	if ((m->flags & ORCH_M_WRITE) || call_id) {
		if (!ctx->env->lane_running)
			return write_call(ctx, m, params, call_id, canon, session_id, reply);
		orch_lane_job job = {NULL, ctx, m, params, call_id, canon, session_id, reply, 0, {{0}, NULL}, false};
		return lane_run(ctx->env, &job);
	}
	if ((rc = orch_env_reader(ctx->env, &ctx->store)) != 0) {
		*reply = orch_reply_error(call_id);
		return rc;
	}
	ctx->git = NULL;
	rc = execute(ctx, m, params, call_id, canon, session_id, reply);
	orch_env_reader_put(ctx->env, ctx->store);
	return rc;
}

/*
 * A method's prepare step (orch_prepare_fn): on a pooled read-only
 * connection in one read transaction, never on the writer lane, so
 * neither the writers nor the readers of the mount wait for it.
 */
static int prepare(orch_ctx *ctx, const orch_method *m, json_t *params)
{
	orch_store *store = ctx->store;
	orch_git *git = ctx->git;
	int rc;

	if ((rc = orch_env_reader(ctx->env, &ctx->store)) != 0) {
		ctx->store = store;
		return rc;
	}
	ctx->git = NULL;
	if ((rc = orch_ctx_read_begin(ctx)) == 0) {
		rc = m->prepare(ctx, params, &ctx->prepared);
		orch_ctx_read_end(ctx);
	}
	orch_env_reader_put(ctx->env, ctx->store);
	ctx->store = store;
	ctx->git = git;
	return rc;
}

int orch_call(orch_ctx *ctx, const char *name, json_t *req, int64_t session_id, char **reply)
{
	const orch_method *m = orch_method_find(name);

	if (!m) {
		orch_error_clear();
		orch_error_set(ORCH_ENOTFOUND, "unknown method \"%s\" (the methods: ls ctl/, or orchfs methods)", name);
		*reply = orch_reply_error(NULL);
		return ORCH_ENOTFOUND;
	}
	return orch_call_method(ctx, m, req, session_id, reply);
}

/*
 * A process that held sessions alive is gone: drop its holds (its
 * sessions' locks go) in a call of its own before the caller's, so that
 * the caller -- the next writer, in whatever process -- finds them free.
 */
static void reap_dead_holders(orch_env *env)
{
	orch_ctx ctx;
	char *reply = NULL;
	json_t *req = json_object();

	orch_ctx_init(&ctx, env, NULL, NULL);
	if (orch_call_method(&ctx, &orch_alive_reap_method, req, 0, &reply) != 0)
		orch_log("releasing the alive holds of processes that are gone failed: %s",
			 orch_error_last()->message);
	orch_error_clear();
	json_decref(req);
	free(reply);
}

int orch_call_method(orch_ctx *ctx, const orch_method *m, json_t *req, int64_t session_id, char **reply)
{
	orch_store *store = ctx->store; /* the caller's binding, restored on the way out */
	orch_git *git = ctx->git;
	const char *call_id = NULL, *name = m->name;
	json_t *params = NULL;
	char *canon = NULL;
	int rc;

	orch_error_clear();
	*reply = NULL;
	ctx->now = orch_now_ms();
	ctx->remembered = false;
	if (!json_is_object(req)) {
		rc = orch_error_set(ORCH_EINVALID_PARAMS, "request must be a JSON object (the params of %s), got %s",
				    name, json_is_array(req) ? "an array" : json_is_string(req) ? "a string"
				    : json_is_null(req) ? "null" : json_is_boolean(req) ? "a boolean" : "a number");
		goto fail;
	}
	json_t *cid = json_object_get(req, "call_id");
	if (cid) {
		if (!json_is_string(cid) || !call_id_valid(json_string_value(cid))) {
			rc = orch_error_set(ORCH_EINVALID_PARAMS,
					    "call_id must be 1-64 characters of A-Za-z0-9._:-");
			goto fail;
		}
		call_id = json_string_value(cid);
		if (m->flags & ORCH_M_BLOCKING) {
			call_id = NULL;
			rc = orch_error_set(ORCH_EINVALID_PARAMS, "%s takes no call_id (it changes nothing; repeat it "
					    "as it is)", name);
			goto fail;
		}
	}
	params = json_deep_copy(req);
	json_object_del(params, "call_id");
	if (session_id > 0 && (rc = apply_implied(m, params, session_id)) != 0)
		goto fail;
	/* Keys, limits and types first, so a typo is named even under a used call_id. */
	rc = orch_params_validate(m, params);
	/* The canonical params identify the call behind a call_id; without one nothing needs them. */
	if (call_id)
		canon = json_dumps(params, JSON_COMPACT | JSON_SORT_KEYS);
	if (rc)
		goto fail;
	if ((m->flags & (ORCH_M_WRITE | ORCH_M_BLOCKING)) && m != &orch_alive_reap_method &&
	    orch_alive_dead_holders(ctx->env))
		reap_dead_holders(ctx->env);
	if (m->prepare && (rc = prepare(ctx, m, params)) != 0)
		goto fail;
	rc = run_on_lane(ctx, m, params, call_id, canon, session_id, reply);
	ctx->store = store;
	ctx->git = git;
	goto done;

fail:
	free(*reply);
	*reply = orch_reply_error(call_id);
	/* A malformed call is stored under its call_id too, so its repeat says the same. */
	if (call_id && canon) {
		writer_enter(ctx);
		store_error_reply(ctx, call_id, m->name, canon, *reply);
		writer_leave(ctx);
		ctx->store = store;
		ctx->git = git;
	}
done:
	/* Failures, replays and reads: the remembered reply is a write of its own. */
	if (ctx->remember && session_id > 0 && m && !ctx->remembered && *reply)
		orch_remember_reply(ctx->env, session_id, m->name, *reply);
	if (m && m->unprepare)
		m->unprepare(ctx->prepared);
	json_decref(ctx->prepared);
	ctx->prepared = NULL;
	json_decref(params);
	free(canon);
	return rc;
}

/* The internal method behind orch_remember_reply: one upsert, no db_version bump. */
static int remember_fn(orch_ctx *ctx, json_t *p, json_t **result)
{
	(void)result;
	ctx->unchanged = true;
	return remember_here(ctx, orch_param_int(p, "session_id", 0), orch_param_str(p, "method", ""),
			     orch_param_str(p, "reply", ""));
}

static const orch_method remember_method = {"(remember reply)", remember_fn, ORCH_M_WRITE, NULL, NULL, NULL,
					    NULL, NULL};

void orch_remember_reply(orch_env *env, int64_t session_id, const char *method, const char *reply)
{
	saved_error saved = error_save();
	json_t *p = json_pack("{s:I, s:s, s:s}", "session_id", (json_int_t)session_id, "method", method, "reply",
			      reply);
	char *ignored = NULL;
	orch_ctx ctx;

	orch_ctx_init(&ctx, env, NULL, NULL);
	if (run_on_lane(&ctx, &remember_method, p, NULL, NULL, 0, &ignored) != 0)
		orch_log("could not remember the reply of %s for session %lld: %s", method, (long long)session_id,
			 orch_error_last()->message);
	free(ignored);
	json_decref(p);
	error_restore(&saved);
}

char *orch_remembered_reply(orch_ctx *ctx, int64_t session_id, const char *method)
{
	orch_stmt *st = orch_sql(ctx, "SELECT reply FROM ctl_replies WHERE session_id = ? AND method = ?", "is",
				    session_id, method);
	char *out = NULL;

	if (!st) {
		orch_error_clear();
		return NULL;
	}
	if (orch_stmt_step(st) == ORCH_ROW)
		out = strdup((const char *)orch_stmt_column_text(st, 0));
	orch_stmt_reset(st);
	return out;
}

int orch_call_text(orch_ctx *ctx, const char *method, const char *text, size_t len, int64_t session_id,
		   char **reply)
{
	json_t *req;
	int rc = orch_request_parse(text, len, &req);

	if (rc == ORCH_INCOMPLETE) {
		if (len == 0 || strspn(text, " \t\r\n") == len) {
			req = json_object(); /* no params at all means {} */
			rc = 0;
		} else {
			rc = orch_error_set(ORCH_EINVALID_JSON, "request is not valid JSON: unexpected end of input");
		}
	}
	if (rc) {
		*reply = orch_reply_error(NULL);
		if (ctx->remember && session_id > 0 && orch_method_find(method))
			orch_remember_reply(ctx->env, session_id, method, *reply);
		return rc;
	}
	rc = orch_call(ctx, method, req, session_id, reply);
	json_decref(req);
	return rc;
}
