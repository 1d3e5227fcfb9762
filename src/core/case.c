/*
 * The case lifecycle and the current work reference: case.begin, step.check,
 * case.complete, resume.next, work.current_ref(.ack) and attaching to a
 * suspended session.  A case is handed to at most one session at a time: a
 * session "holds" a case while its active current ref points at it.
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "orchfs/core.h"
#include "groups.h"

#define REF_SELECT                                                                                 \
	"SELECT id, session_id, node_type, node_id, checkpoint_id, mode, status, next_action, "      \
	"summary, required_files_json, acked_at, version, created_at, updated_at FROM current_refs "

#define STEP_SELECT                                                                                \
	"SELECT id, task_id, title, status, evidence_json, order_no, created_at AS recorded_at FROM steps "

#define CHECKPOINT_SELECT                                                                          \
	"SELECT id, task_id, step_title, session_id, snapshot_json, created_at AS recorded_at FROM checkpoints "

/* Status order for handing out cases: in_progress, then blocked, then todo. */
#define CASE_RANK                                                                                  \
	"CASE status WHEN 'in_progress' THEN 0 WHEN 'blocked' THEN 1 ELSE 2 END, "                   \
	"priority DESC, updated_at, id"
#define CASE_ORDER "ORDER BY " CASE_RANK

int orch_current_ref_json(orch_ctx *ctx, int64_t session_id, json_t **out)
{
	json_t *rows;
	int rc = orch_sql_rows(ctx, &rows, REF_SELECT "WHERE session_id = ? AND status = 'active' "
			       "ORDER BY updated_at DESC, id DESC LIMIT 1", "i", session_id);

	if (rc)
		return rc;
	*out = json_array_size(rows) ? json_incref(json_array_get(rows, 0)) : json_null();
	json_decref(rows);
	return 0;
}

int orch_task_steps_json(orch_ctx *ctx, int64_t task_id, json_t **out)
{
	return orch_sql_rows(ctx, out, STEP_SELECT "WHERE task_id = ? ORDER BY order_no", "i", task_id);
}

int orch_task_checkpoints_json(orch_ctx *ctx, int64_t task_id, json_t **out)
{
	return orch_sql_rows(ctx, out, CHECKPOINT_SELECT "WHERE task_id = ? ORDER BY id", "i", task_id);
}

/* The latest checkpoint of a task, or JSON null. */
static int latest_checkpoint(orch_ctx *ctx, int64_t task_id, json_t **out)
{
	json_t *rows;
	int rc = orch_sql_rows(ctx, &rows, CHECKPOINT_SELECT "WHERE task_id = ? ORDER BY id DESC LIMIT 1", "i",
			       task_id);

	if (rc)
		return rc;
	*out = json_array_size(rows) ? json_incref(json_array_get(rows, 0)) : json_null();
	json_decref(rows);
	return 0;
}

/*
 * Load a task that must be a case.  not_found for a missing task,
 * invalid_state for one of another level; when `want_status` is given the
 * case must be in that status.
 */
static int load_case(orch_ctx *ctx, int64_t id, const char *want_status, json_t **out)
{
	int rc = orch_task_json(ctx, id, out);
	const char *level, *status;

	if (rc)
		return rc;
	level = json_string_value(json_object_get(*out, "level"));
	status = json_string_value(json_object_get(*out, "status"));
	if (strcmp(level, "case") != 0) {
		rc = orch_error_set(ORCH_EINVALID_STATE, "task %lld has level %s, not case", (long long)id, level);
		orch_error_detail("state", json_string(level));
	} else if (want_status && strcmp(status, want_status) != 0) {
		rc = orch_error_set(ORCH_EINVALID_STATE, "case %lld is %s, not %s", (long long)id, status,
				    want_status);
		orch_error_detail("state", json_string(status));
	}
	if (rc) {
		json_decref(*out);
		*out = NULL;
	}
	return rc;
}

/*
 * conflict when another session's active ref holds case `case_id` (with
 * session_id 0: when any session holds it, so that an anonymous call
 * through ctl/ cannot move a case under its holder's feet).
 */
static int check_not_held(orch_ctx *ctx, int64_t case_id, int64_t session_id)
{
	int64_t holder;
	bool found;
	int rc = orch_sql_int(ctx, &holder, &found, "SELECT session_id FROM current_refs WHERE node_type = 'case' "
			      "AND node_id = ? AND status = 'active' AND session_id <> ? LIMIT 1", "ii", case_id,
			      session_id);

	if (rc)
		return rc;
	if (found)
		return orch_error_set(ORCH_ECONFLICT, "case %lld is held by session %lld (its active current ref); "
				      "call through sessions/%lld/ctl/, or ask work.current_ref for another case",
				      (long long)case_id, (long long)holder, (long long)holder);
	return 0;
}

typedef struct {
	const char *node_type;
	int64_t node_id;
	int64_t checkpoint_id; /* 0: none */
	const char *mode;
	const char *status;
	const char *next_action;
	const char *summary;
	json_t *required_files; /* borrowed; NULL: [] */
} ref_fields;

/*
 * Make the session's active ref say `f`: the active row is rewritten in
 * place (version + 1, ack cleared) or a new row is inserted at version 1.
 */
static int ref_upsert(orch_ctx *ctx, int64_t session_id, const ref_fields *f, int64_t *ref_id)
{
	json_t *files = f->required_files; /* NULL keeps what the ref had ([] for a new ref) */
	int64_t id;
	bool found;
	int rc = orch_sql_int(ctx, &id, &found, "SELECT id FROM current_refs WHERE session_id = ? AND "
			      "status = 'active'", "i", session_id);

	if (rc)
		return rc;
	if (found) {
		rc = orch_sql_exec(ctx, "UPDATE current_refs SET node_type = ?, node_id = ?, checkpoint_id = ?, "
				   "mode = ?, status = ?, next_action = ?, summary = ?, "
				   "required_files_json = coalesce(?, required_files_json), "
				   "acked_at = NULL, version = version + 1, updated_at = ? WHERE id = ?", "siIssssjii",
				   f->node_type, f->node_id, f->checkpoint_id, f->mode, f->status, f->next_action,
				   f->summary, files, ctx->now, id);
	} else {
		rc = orch_sql_exec(ctx, "INSERT INTO current_refs (session_id, node_type, node_id, checkpoint_id, "
				   "mode, status, next_action, summary, required_files_json, version, created_at, "
				   "updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, coalesce(?, '[]'), 1, ?, ?)", "isiIssssjii", session_id,
				   f->node_type, f->node_id, f->checkpoint_id, f->mode, f->status, f->next_action,
				   f->summary, files, ctx->now, ctx->now);
		id = orch_last_id(ctx);
	}
	if (ref_id)
		*ref_id = id;
	return rc;
}

/* A checkpoint of the case, recording the session that wrote it (sid 0: none). */
static int add_checkpoint(orch_ctx *ctx, int64_t task_id, int64_t sid, const char *title, json_t *snapshot,
			  int64_t *id)
{
	int rc = orch_sql_exec(ctx, "INSERT INTO checkpoints (task_id, step_title, session_id, snapshot_json, "
			       "created_at) VALUES (?, ?, ?, ?, ?)", "isIji", task_id, title, sid, snapshot, ctx->now);

	*id = orch_last_id(ctx);
	json_decref(snapshot);
	return rc;
}

/* The optional session of a case method must be open (checked before the case itself). */
static int case_session(orch_ctx *ctx, json_t *p, int64_t *sid)
{
	*sid = orch_param_int(p, "session_id", 0);
	return *sid ? orch_session_require_open(ctx, *sid) : 0;
}

static int case_begin(orch_ctx *ctx, json_t *p, json_t **result)
{
	int64_t id = orch_param_int(p, "case_id", 0), sid, cp = 0;
	json_t *task, *contract = orch_param_json(p, "input_contract");
	json_t *fixtures = orch_param_json(p, "fixtures");
	int rc = case_session(ctx, p, &sid);

	if (rc || (rc = load_case(ctx, id, NULL, &task)) != 0)
		return rc;
	bool done = strcmp(json_string_value(json_object_get(task, "status")), "done") == 0;
	json_decref(task);
	if (done) {
		orch_error_set(ORCH_EINVALID_STATE, "case %lld is done; it cannot begin again", (long long)id);
		orch_error_detail("state", json_string("done"));
		return ORCH_EINVALID_STATE;
	}
	if ((rc = check_not_held(ctx, id, sid)) != 0)
		return rc;
	json_t *c = contract ? json_incref(contract) : json_object();
	json_t *f = fixtures ? json_incref(fixtures) : json_array();
	rc = orch_sql_exec(ctx, "UPDATE tasks SET status = 'in_progress', input_contract = ?, fixtures = ?, "
			   "updated_at = ? WHERE id = ?", "jjii", c, f, ctx->now, id);
	if (!rc)
		rc = add_checkpoint(ctx, id, sid, "case.begin",
				    json_pack("{s:s, s:O, s:O}", "event", "case.begin", "fixtures", f,
					      "input_contract", c), &cp);
	json_decref(c);
	json_decref(f);
	if (!rc && sid) {
		ref_fields rf = {"case", id, cp, "compact", "active", "run first pending step",
				 "case.begin recorded", orch_param_json(p, "required_files")};
		rc = ref_upsert(ctx, sid, &rf, NULL);
	}
	return rc ? rc : orch_task_json(ctx, id, result);
}

/* A result that starts with "fail" (fail, failed, FAIL: reason), after white space, is a failed step. */
static bool step_failed(const char *result)
{
	while (isspace((unsigned char)*result))
		result++;
	return strncasecmp(result, "fail", 4) == 0;
}

static int step_check(orch_ctx *ctx, json_t *p, json_t **result)
{
	int64_t id = orch_param_int(p, "case_id", 0), sid, order, cp;
	const char *title = orch_param_str(p, "step_title", "");
	const char *res = orch_param_str(p, "result", "");
	json_t *artifacts = orch_param_json(p, "artifacts"), *task, *a;
	char summary[512];
	int rc = case_session(ctx, p, &sid);

	if (rc || (rc = load_case(ctx, id, "in_progress", &task)) != 0)
		return rc;
	json_decref(task);
	if ((rc = check_not_held(ctx, id, sid)) != 0)
		return rc;
	if ((rc = orch_sql_int(ctx, &order, NULL, "SELECT coalesce(max(order_no), 0) + 1 FROM steps WHERE "
			       "task_id = ?", "i", id)) != 0)
		return rc;
	a = artifacts ? json_incref(artifacts) : json_array();
	json_t *evidence = json_pack("{s:O, s:s}", "artifacts", a, "result", res);
	rc = orch_sql_exec(ctx, "INSERT INTO steps (task_id, title, status, evidence_json, order_no, created_at) "
			   "VALUES (?, ?, ?, ?, ?, ?)", "issjii", id, title, step_failed(res) ? "failed" : "done",
			   evidence, order, ctx->now);
	int64_t step_id = orch_last_id(ctx);
	json_decref(evidence);
	if (!rc)
		rc = add_checkpoint(ctx, id, sid, title,
				    json_pack("{s:O, s:s, s:s, s:s}", "artifacts", a, "event", "step.check",
					      "result", res, "step_title", title), &cp);
	json_decref(a);
	if (!rc)
		rc = orch_sql_exec(ctx, "UPDATE tasks SET updated_at = ? WHERE id = ?", "ii", ctx->now, id);
	if (!rc && sid) {
		snprintf(summary, sizeof(summary), "last step checked: %.*s", (int)orch_utf8_prefix(title, 480), title);
		ref_fields rf = {"case", id, cp, "compact", "active", "continue next step", summary,
				 orch_param_json(p, "required_files")};
		rc = ref_upsert(ctx, sid, &rf, NULL);
	}
	if (rc)
		return rc;
	return orch_sql_row(ctx, result, "step %lld not found", step_id, STEP_SELECT "WHERE id = ?", "i", step_id);
}

static int case_complete(orch_ctx *ctx, json_t *p, json_t **result)
{
	int64_t id = orch_param_int(p, "case_id", 0), sid, cp;
	const char *summary = orch_param_str(p, "summary", "");
	const char *next = orch_param_str(p, "next_action", "");
	json_t *task;
	int rc = case_session(ctx, p, &sid);

	if (rc || (rc = load_case(ctx, id, "in_progress", &task)) != 0)
		return rc;
	json_decref(task);
	if ((rc = check_not_held(ctx, id, sid)) != 0)
		return rc;
	rc = orch_sql_exec(ctx, "UPDATE tasks SET status = 'done', next_action = ?, updated_at = ? WHERE id = ?",
			   "sii", *next ? next : NULL, ctx->now, id);
	if (!rc)
		rc = add_checkpoint(ctx, id, sid, "case.complete",
				    json_pack("{s:s, s:s, s:s}", "event", "case.complete", "next_action", next,
					      "summary", summary), &cp);
	if (!rc && sid) {
		ref_fields rf = {"case", id, cp, "compact", "completed", *next ? next : NULL,
				 *summary ? summary : NULL, orch_param_json(p, "required_files")};
		rc = ref_upsert(ctx, sid, &rf, NULL);
	}
	return rc ? rc : orch_task_json(ctx, id, result);
}

/*
 * The next case to work on: in_progress before blocked before todo, then
 * priority, then the least recently touched.  With `session_id`, cases held
 * by another session's active ref are skipped.  *case_id is 0 when none.
 */
static int next_case(orch_ctx *ctx, int64_t session_id, int64_t *case_id)
{
	char me[32];
	bool found;
	int rc;

	/*
	 * With a session: cases another session holds are skipped, and so are
	 * cases assigned (assignee_session) to another session; the caller's
	 * own assigned cases come first.
	 */
	snprintf(me, sizeof(me), "%lld", (long long)session_id);
	if (session_id)
		rc = orch_sql_int(ctx, case_id, &found, "SELECT id FROM tasks t WHERE level = 'case' AND status IN "
				  "('in_progress', 'blocked', 'todo') AND NOT EXISTS (SELECT 1 FROM current_refs r "
				  "WHERE r.node_type = 'case' AND r.node_id = t.id AND r.status = 'active' AND "
				  "r.session_id <> ?1) AND (coalesce(assignee_session, '') = '' OR assignee_session = ?2) "
				  "ORDER BY coalesce(assignee_session = ?2, 0) DESC, " CASE_RANK " LIMIT 1", "is",
				  session_id, me);
	else
		rc = orch_sql_int(ctx, case_id, &found, "SELECT id FROM tasks WHERE level = 'case' AND status IN "
				  "('in_progress', 'blocked', 'todo') " CASE_ORDER " LIMIT 1", "");
	if (!rc && !found)
		*case_id = 0;
	return rc;
}

/* {task, checkpoint} for a case; checkpoint is omitted (resume.next) or null (current_ref). */
static int case_and_checkpoint(orch_ctx *ctx, int64_t case_id, bool null_checkpoint, json_t *into)
{
	json_t *task, *cp;
	int rc = orch_task_json(ctx, case_id, &task);

	if (rc)
		return rc;
	if ((rc = latest_checkpoint(ctx, case_id, &cp)) != 0) {
		json_decref(task);
		return rc;
	}
	json_object_set_new(into, "task", task);
	if (json_is_null(cp) && !null_checkpoint)
		json_decref(cp);
	else
		json_object_set_new(into, "checkpoint", cp);
	return 0;
}

/*
 * Hand out a case to `sid`: create (or rewrite) its active ref pointing at
 * the case with its latest checkpoint.
 */
static int claim_case(orch_ctx *ctx, int64_t sid, int64_t case_id, const char *mode, json_t *files,
		      json_t **ref)
{
	json_t *task, *cp;
	int rc = orch_task_json(ctx, case_id, &task);

	if (rc)
		return rc;
	if ((rc = latest_checkpoint(ctx, case_id, &cp)) != 0) {
		json_decref(task);
		return rc;
	}
	ref_fields rf = {"case", case_id, json_integer_value(json_object_get(cp, "id")), mode, "active",
			 "resume from latest checkpoint", json_string_value(json_object_get(task, "title")), files};
	rc = ref_upsert(ctx, sid, &rf, NULL);
	json_decref(task);
	json_decref(cp);
	return rc ? rc : orch_current_ref_json(ctx, sid, ref);
}

/*
 * resume.next: without a session, a read-only look at the next case.  With
 * one, the case the session holds, else the next case nobody holds, which
 * then becomes the session's active ref (so two sessions asking at once get
 * different cases).
 */
static int resume_next(orch_ctx *ctx, json_t *p, json_t **result)
{
	int64_t sid = orch_param_int(p, "session_id", 0), case_id = 0;
	json_t *ref = NULL;
	int rc;

	ctx->unchanged = true;
	if (sid) {
		if ((rc = orch_session_require_open(ctx, sid)) != 0)
			return rc;
		if ((rc = orch_current_ref_json(ctx, sid, &ref)) != 0)
			return rc;
		if (!json_is_null(ref) && strcmp(json_string_value(json_object_get(ref, "node_type")), "case") == 0)
			case_id = json_integer_value(json_object_get(ref, "node_id"));
		json_decref(ref);
	}
	if (!case_id) {
		if ((rc = next_case(ctx, sid, &case_id)) != 0)
			return rc;
		if (case_id && sid) {
			if ((rc = claim_case(ctx, sid, case_id, "compact", NULL, &ref)) != 0)
				return rc;
			json_decref(ref);
			ctx->unchanged = false;
		}
	}
	*result = json_object();
	return case_id ? case_and_checkpoint(ctx, case_id, false, *result) : 0;
}

static int current_ref(orch_ctx *ctx, json_t *p, json_t **result)
{
	int64_t sid = orch_param_int(p, "session_id", 0), case_id;
	const char *mode = orch_param_str(p, "mode", "compact");
	json_t *ref;
	int rc;

	if (strcmp(mode, "compact") && strcmp(mode, "resume") && strcmp(mode, "handoff"))
		return orch_error_set(ORCH_EINVALID_PARAMS, "mode must be one of compact, resume, handoff; got \"%s\"",
				      mode);
	if ((rc = orch_session_require_open(ctx, sid)) != 0)
		return rc;
	if ((rc = orch_current_ref_json(ctx, sid, &ref)) != 0)
		return rc;
	ctx->unchanged = true;
	if (!json_is_null(ref)) {
		*result = json_pack("{s:s, s:o}", "source", "current_refs", "current_ref", ref);
		if (strcmp(json_string_value(json_object_get(ref, "node_type")), "case") == 0)
			return case_and_checkpoint(ctx, json_integer_value(json_object_get(ref, "node_id")), true,
						   *result);
		return 0;
	}
	json_decref(ref);
	if ((rc = next_case(ctx, sid, &case_id)) != 0)
		return rc;
	if (!case_id) {
		*result = json_pack("{s:s, s:n}", "source", "none", "current_ref");
		return 0;
	}
	if ((rc = claim_case(ctx, sid, case_id, mode, orch_param_json(p, "required_files"), &ref)) != 0)
		return rc;
	ctx->unchanged = false;
	*result = json_pack("{s:s, s:o}", "source", "resume.next", "current_ref", ref);
	return case_and_checkpoint(ctx, case_id, true, *result);
}

static int current_ref_ack(orch_ctx *ctx, json_t *p, json_t **result)
{
	int64_t sid = orch_param_int(p, "session_id", 0), ref = orch_param_int(p, "ref_id", 0);
	int rc = orch_sql_exec(ctx, "UPDATE current_refs SET acked_at = ?1, updated_at = ?1, version = version + 1 "
			       "WHERE id = ?2 AND session_id = ?3", "iii", ctx->now, ref, sid);

	if (rc)
		return rc;
	if (orch_store_rows_changed(ctx->store) == 0)
		return orch_error_set(ORCH_ENOTFOUND, "current_ref %lld of session %lld not found", (long long)ref,
				      (long long)sid);
	return orch_sql_row(ctx, result, "current_ref %lld not found", ref, REF_SELECT "WHERE id = ?", "i", ref);
}


/*
 * The requester of an attach must have nothing of its own to drop: no
 * session root it owns and no case it holds (a session opened with intent
 * resume_work has neither).
 */
static int requester_is_free(orch_ctx *ctx, int64_t req)
{
	int64_t id;
	bool found;
	int rc = orch_sql_int(ctx, &id, &found, "SELECT w.id FROM sessions s JOIN worktrees w ON w.id = "
			      "s.session_root_worktree_id WHERE s.id = ? AND w.owner_session_id = s.id", "i", req);

	if (rc)
		return rc;
	if (found)
		return orch_error_set(ORCH_EINVALID_STATE, "session %lld has its own session root (worktree %lld); "
				      "attach from a session opened with intent resume_work", (long long)req,
				      (long long)id);
	if ((rc = orch_sql_int(ctx, &id, &found, "SELECT node_id FROM current_refs WHERE session_id = ? AND "
			       "status = 'active'", "i", req)) != 0)
		return rc;
	if (found)
		return orch_error_set(ORCH_EINVALID_STATE, "session %lld holds node %lld (its active current ref); "
				      "complete it, or attach from a session opened with intent resume_work",
				      (long long)req, (long long)id);
	return 0;
}

/*
 * The worktrees an attach hands over must be on this host: the requester
 * takes over checkouts it works in from here, and their uncommitted work is
 * read here.  invalid_state naming the host of the first live worktree of
 * session `target` that is elsewhere.  (A session on a machine that is lost
 * can still be closed, from any host, to free its case and locks.)
 */
static int handover_local(orch_ctx *ctx, int64_t target)
{
	json_t *rows = NULL, *wt = NULL;
	int rc = orch_sql_rows(ctx, &rows, "SELECT id FROM worktrees WHERE owner_session_id = ? AND host <> ? AND "
			       "status NOT IN ('closed', 'abandoned') ORDER BY id LIMIT 1", "is", target, ctx->host);

	if (rc == 0 && json_array_size(rows) &&
	    (rc = orch_worktree_json(ctx, json_integer_value(json_object_get(json_array_get(rows, 0), "id")),
				     &wt)) == 0 &&
	    (rc = orch_worktree_local(ctx, wt)) != 0) {
		char *msg = strdup(orch_error_last()->message);
		orch_error_set(ORCH_EINVALID_STATE, "cannot attach to session %lld here: %s (or close session %lld with "
			       "session.close to free its case and locks)", (long long)target, msg ? msg : "",
			       (long long)target);
		orch_error_detail("state", json_string("other_host"));
		free(msg);
	}
	json_decref(rows);
	json_decref(wt);
	return rc;
}

/* invalid_state naming the one condition that keeps `tsess` from being a candidate. */
static int not_a_candidate(orch_ctx *ctx, json_t *tsess, int64_t timeout)
{
	const char *status = json_string_value(json_object_get(tsess, "status"));
	int64_t id = json_integer_value(json_object_get(tsess, "id")), seen = 0, ref, own;
	bool has_ref, live = false;

	own = json_integer_value(json_object_get(tsess, "heartbeat_timeout_seconds"));
	if (own <= 0)
		own = ORCH_HEARTBEAT_WINDOW;
	if (strcmp(status, "active_new") && strcmp(status, "active_resume") && strcmp(status, "handoff_attached")) {
		orch_error_set(ORCH_EINVALID_STATE, "session %lld is not a resume candidate: its status is %s",
			       (long long)id, status);
	} else if (orch_session_live(ctx, id, timeout, &live, NULL, &seen) == 0 && live) {
		orch_error_set(ORCH_EINVALID_STATE, "session %lld is not a resume candidate: it is live (last heard "
			       "from %.1fs ago, within its heartbeat window of %llds%s)", (long long)id,
			       (double)seen / 1000.0, (long long)(timeout > own ? timeout : own),
			       timeout > own ? ", as lengthened by the requester" : "");
	} else if (orch_sql_int(ctx, &ref, &has_ref, "SELECT id FROM current_refs WHERE session_id = ? AND "
				"status = 'active'", "i", id) == 0 && !has_ref) {
		orch_error_set(ORCH_EINVALID_STATE, "session %lld is not a resume candidate: it has no active "
			       "current ref (nothing to resume)", (long long)id);
	} else {
		orch_error_set(ORCH_EINVALID_STATE, "session %lld is not a resume candidate", (long long)id);
	}
	orch_error_detail("state", json_string(status));
	return ORCH_EINVALID_STATE;
}

/*
 * Attach the requester to a suspended session (SPEC 6.3): the target must be
 * a current candidate, not the requester, not attached before.  The
 * requester takes over the target's worktrees (the session root and its
 * children), its locks, and its ref (mode resume); the target's ref becomes
 * handed_off, its status handoff_attached, and the handoff is recorded.
 */
static int candidates_attach(orch_ctx *ctx, json_t *p, json_t **result)
{
	int64_t req = orch_param_int(p, "requester_session_id", 0);
	int64_t target = orch_param_int(p, "target_session_id", 0);
	int64_t timeout, prior;
	json_t *tsess = NULL, *cands = NULL, *ref = NULL;
	bool found, candidate = false;
	char req_owner[32], target_owner[32];
	int rc;

	if ((rc = orch_param_timeout(p, "heartbeat_timeout_seconds", &timeout)) != 0)
		return rc;
	if (req == target)
		return orch_error_set(ORCH_EINVALID_PARAMS, "a session cannot attach to itself (session %lld)",
				      (long long)req);
	if ((rc = orch_session_require_open(ctx, req)) != 0)
		return rc;
	if ((rc = orch_session_json(ctx, target, &tsess)) != 0)
		return rc;
	if ((rc = requester_is_free(ctx, req)) != 0)
		goto done;
	const char *tstatus = json_string_value(json_object_get(tsess, "status"));
	if (strcmp(tstatus, "closed") == 0) {
		rc = orch_error_set(ORCH_EINVALID_STATE, "session %lld is closed", (long long)target);
		orch_error_detail("state", json_string(tstatus));
		goto done;
	}
	if ((rc = orch_sql_int(ctx, &prior, &found, "SELECT to_session_id FROM session_handoffs WHERE "
			       "from_session_id = ?", "i", target)) != 0)
		goto done;
	if (found) {
		rc = orch_error_set(ORCH_ECONFLICT, "session %lld was already attached by session %lld",
				    (long long)target, (long long)prior);
		goto done;
	}
	if ((rc = orch_resume_candidates(ctx, req, timeout, &cands)) != 0)
		goto done;
	for (size_t i = 0; i < json_array_size(cands); i++)
		candidate |= json_integer_value(json_object_get(json_object_get(json_array_get(cands, i),
										"session"), "id")) == target;
	if (!candidate) {
		rc = not_a_candidate(ctx, tsess, timeout);
		goto done;
	}
	if ((rc = handover_local(ctx, target)) != 0 || (rc = orch_current_ref_json(ctx, target, &ref)) != 0)
		goto done;
	snprintf(req_owner, sizeof(req_owner), "%lld", (long long)req);
	snprintf(target_owner, sizeof(target_owner), "%lld", (long long)target);
	/* The target's main worktree when it is this host's; else the requester keeps its own. */
	if ((rc = orch_sql_exec(ctx, "UPDATE sessions SET status = 'active_resume', intent = 'resume_work', "
				"main_worktree_id = coalesce((SELECT id FROM worktrees WHERE id = ? AND host = ?), "
				"main_worktree_id), session_root_worktree_id = ?, last_seen_at = ? WHERE id = ?",
				"IsIii", json_integer_value(json_object_get(tsess, "main_worktree_id")), ctx->host,
				json_integer_value(json_object_get(tsess, "session_root_worktree_id")), ctx->now,
				req)) ||
	    (rc = orch_sql_exec(ctx, "UPDATE sessions SET status = 'handoff_attached' WHERE id = ?", "i", target)) ||
	    (rc = orch_sql_exec(ctx, "UPDATE worktrees SET owner_session_id = ? WHERE owner_session_id = ?", "ii",
				req, target)) ||
	    (rc = orch_sql_exec(ctx, "UPDATE locks SET owner_session = ? WHERE owner_session = ? AND state = "
				"'active'", "ss", req_owner, target_owner)) ||
	    (rc = orch_sql_exec(ctx, "UPDATE current_refs SET status = 'handed_off', version = version + 1, "
				"updated_at = ? WHERE id = ?", "ii", ctx->now,
				json_integer_value(json_object_get(ref, "id")))) ||
	    (rc = orch_sql_exec(ctx, "INSERT INTO session_handoffs (from_session_id, to_session_id, state, "
				"created_at, completed_at) VALUES (?, ?, 'completed', ?, ?)", "iiii", target, req,
				ctx->now, ctx->now)))
		goto done;
	ref_fields rf = {json_string_value(json_object_get(ref, "node_type")),
			 json_integer_value(json_object_get(ref, "node_id")),
			 json_integer_value(json_object_get(ref, "checkpoint_id")), "resume", "active",
			 json_string_value(json_object_get(ref, "next_action")),
			 json_string_value(json_object_get(ref, "summary")), json_object_get(ref, "required_files")};
	if ((rc = ref_upsert(ctx, req, &rf, NULL)) != 0)
		goto done;
	if ((rc = orch_session_context(ctx, req, result)) != 0)
		goto done;
	/* The work the target left uncommitted in the root it hands over: never taken over unseen. */
	json_t *root = json_object_get(*result, "session_root_worktree");
	json_object_set_new(*result, "uncommitted",
			    orch_uncommitted_paths(json_string_value(json_object_get(root, "path"))));
done:
	json_decref(tsess);
	json_decref(cands);
	json_decref(ref);
	return rc;
}

static const orch_param begin_params[] = {
	{"case_id", ORCH_P_ID, ORCH_P_REQUIRED, "The case (a task of level case, not done).", NULL},
	{"session_id", ORCH_P_ID, 0, "The session doing it: its current ref follows the case.", NULL},
	{"input_contract", ORCH_P_JSON, 0, "What the case takes and must produce (default {}).", NULL},
	{"fixtures", ORCH_P_STRS, 0, "Fixture names (default []).", NULL},
	{"required_files", ORCH_P_PATHS, 0, "Files an agent must read to resume (default []).", NULL},
	{NULL, 0, 0, NULL, NULL},
};
static const orch_param step_params[] = {
	{"case_id", ORCH_P_ID, ORCH_P_REQUIRED, "The case (in_progress).", NULL},
	{"session_id", ORCH_P_ID, 0, "The session doing it.", NULL},
	{"step_title", ORCH_P_STR, ORCH_P_REQUIRED, "What was checked.", NULL},
	{"result", ORCH_P_STR, ORCH_P_REQUIRED, "The outcome (free text, e.g. pass / fail: reason); one "
	 "starting with \"fail\" records the step as failed, else done.", NULL},
	{"artifacts", ORCH_P_STRS, 0, "Evidence: paths, commit ids, log names (default []).", NULL},
	{"required_files", ORCH_P_PATHS, 0, "Files an agent must read to resume.", NULL},
	{NULL, 0, 0, NULL, NULL},
};
static const orch_param complete_params[] = {
	{"case_id", ORCH_P_ID, ORCH_P_REQUIRED, "The case (in_progress).", NULL},
	{"session_id", ORCH_P_ID, 0, "The session doing it: its ref becomes completed.", NULL},
	{"summary", ORCH_P_STR, 0, "What was done (kept in the checkpoint).", NULL},
	{"next_action", ORCH_P_STR, 0, "What should happen next (kept on the task).", NULL},
	{"required_files", ORCH_P_PATHS, 0, "Files an agent must read to follow up.", NULL},
	{NULL, 0, 0, NULL, NULL},
};
static const orch_param next_params[] = {
	{"session_id", ORCH_P_ID, 0, "Hand the case to this session (skips cases other sessions hold); "
	 "without it, a read-only look.", NULL},
	{NULL, 0, 0, NULL, NULL},
};
static const orch_param ref_params[] = {
	{"session_id", ORCH_P_ID, ORCH_P_REQUIRED, "The session.", NULL},
	{"mode", ORCH_P_STR, 0, "compact | resume | handoff (default compact): the mode of a ref created "
	 "by the fallback.", NULL},
	{"required_files", ORCH_P_PATHS, 0, "Files for a ref created by the fallback.", NULL},
	{NULL, 0, 0, NULL, NULL},
};
static const orch_param ack_params[] = {
	{"session_id", ORCH_P_ID, ORCH_P_REQUIRED, "The session owning the ref.", NULL},
	{"ref_id", ORCH_P_ID, ORCH_P_REQUIRED, "The ref.", NULL},
	{NULL, 0, 0, NULL, NULL},
};
static const orch_param attach_params[] = {
	{"requester_session_id", ORCH_P_ID, ORCH_P_REQUIRED, "The session taking over.", NULL},
	{"target_session_id", ORCH_P_ID, ORCH_P_REQUIRED, "The suspended session.", NULL},
	{"heartbeat_timeout_seconds", ORCH_P_INT, 0, "Lengthen the target's own heartbeat window to this "
	 "many seconds (never shortens it; default: the target's own window).", NULL},
	{NULL, 0, 0, NULL, NULL},
};

const orch_method orch_case_methods[] = {
	{"case.begin", case_begin, ORCH_M_WRITE, begin_params,
	 "Start (or restart) a case: status in_progress, a case.begin checkpoint, and with session_id the "
	 "session's current ref points at it.",
	 "the case task", "{\"case_id\": 1, \"session_id\": 1, \"input_contract\": {\"cmd\": \"make test\"}, "
	 "\"fixtures\": [\"users.json\"]}",
	 "not_found (ENOENT), invalid_state (EINVAL: not a case, or done), conflict (EBUSY: another "
	 "session's ref holds the case)."},
	{"step.check", step_check, ORCH_M_WRITE, step_params,
	 "Record a checked step of an in_progress case (order_no 1, 2, 3 ...) and a checkpoint.",
	 "{id, task_id, title, status, evidence: {artifacts, result}, order_no, recorded_at}",
	 "{\"case_id\": 1, \"session_id\": 1, \"step_title\": \"unit tests\", \"result\": \"pass\", "
	 "\"artifacts\": [\"build/test.log\"]}",
	 "not_found (ENOENT), invalid_state (EINVAL: not a case, or not in_progress), conflict (EBUSY)."},
	{"case.complete", case_complete, ORCH_M_WRITE, complete_params,
	 "Finish an in_progress case: status done, a case.complete checkpoint, the session's ref completed.",
	 "the case task", "{\"case_id\": 1, \"session_id\": 1, \"summary\": \"all green\", "
	 "\"next_action\": \"request review\"}",
	 "not_found (ENOENT), invalid_state (EINVAL: not a case, or not in_progress), conflict (EBUSY)."},
	{"resume.next", resume_next, ORCH_M_WRITE, next_params,
	 "The next case: in_progress, then blocked, then todo; higher priority first; least recently "
	 "updated first. With session_id the case is handed to that session: cases assigned to it "
	 "(assignee_session) first, never one assigned to or held by another session.",
	 "{task, checkpoint?} or {} when no case is open", "{\"session_id\": 1}",
	 "not_found (ENOENT: session), invalid_state (EINVAL: session closed)."},
	{"work.current_ref", current_ref, ORCH_M_WRITE, ref_params,
	 "Where the session is: its active ref, else the next case nobody holds and nobody else is "
	 "assigned (its own assigned cases first) becomes its ref.",
	 "{source: \"current_refs\" | \"resume.next\" | \"none\", current_ref, task?, checkpoint?}",
	 "{\"session_id\": 1, \"mode\": \"compact\"}",
	 "not_found (ENOENT), invalid_state (EINVAL: session closed)."},
	{"work.current_ref.ack", current_ref_ack, ORCH_M_WRITE, ack_params,
	 "Acknowledge a ref of the session (acked_at = now, version + 1).", "the ref",
	 "{\"session_id\": 1, \"ref_id\": 1}", "not_found (ENOENT: no such ref of that session)."},
	{"resume.candidates.attach", candidates_attach, ORCH_M_WRITE, attach_params,
	 "Take over a suspended session: its worktrees, locks and current ref (mode resume) move to the "
	 "requester; the target becomes handoff_attached. The target must hold a case and have been "
	 "silent past its own heartbeat window; the requester is a session opened with intent "
	 "resume_work.",
	 "the requester's context {session, main_worktree, session_root_worktree, current_ref}",
	 "{\"requester_session_id\": 2, \"target_session_id\": 1}",
	 "not_found (ENOENT), invalid_params (EINVAL: self), invalid_state (EINVAL: not a candidate, "
	 "closed, its worktrees are on another host (details.state other_host)), conflict (EBUSY: already attached)."},
	{NULL, NULL, 0, NULL, NULL, NULL, NULL, NULL},
};
