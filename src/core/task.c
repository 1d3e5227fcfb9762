/*
 * Tasks: the epic → feature → test_group → case hierarchy.
 */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include "orchfs/core.h"
#include "groups.h"

/*
 * held_by: the session whose active current ref holds the case;
 * last_checkpoint_id: the case's latest checkpoint (both omitted when none).
 */
#define TASK_SELECT                                                                                \
	"SELECT id, level, parent_id, title, status, priority, assignee_session, "                   \
	"input_contract AS input_contract_json, fixtures AS fixtures_json, next_action, "             \
	"(SELECT r.session_id FROM current_refs r WHERE r.node_type = 'case' AND r.node_id = tasks.id " \
	"AND r.status = 'active' LIMIT 1) AS held_by, "                                              \
	"(SELECT max(c.id) FROM checkpoints c WHERE c.task_id = tasks.id) AS last_checkpoint_id, "     \
	"created_at, updated_at FROM tasks "

#define TASK_STATUSES "todo, in_progress, blocked, done"

int orch_task_json(orch_ctx *ctx, int64_t id, json_t **out)
{
	return orch_sql_row(ctx, out, "task %lld not found", id, TASK_SELECT "WHERE id = ?", "i", id);
}

/* Copy of `s` without leading and trailing white space. */
static char *trimmed(const char *s)
{
	size_t n;

	while (isspace((unsigned char)*s))
		s++;
	n = strlen(s);
	while (n > 0 && isspace((unsigned char)s[n - 1]))
		n--;
	return strndup(s, n);
}

/* Copy of `s` trimmed and lower-cased (levels: "Case " is a case). */
static char *level_of(const char *s)
{
	char *out = trimmed(s);

	for (char *c = out; *c; c++)
		*c = (char)tolower((unsigned char)*c);
	return out;
}

/*
 * not_found "parent task <id> not found" unless task `id` exists.  A failed
 * query keeps its own code and message: it is not a missing parent.
 */
static int check_parent(orch_ctx *ctx, int64_t id)
{
	int64_t one;
	bool found;
	int rc = orch_sql_int(ctx, &one, &found, "SELECT 1 FROM tasks WHERE id = ?", "i", id);

	if (rc == 0 && !found)
		rc = orch_error_set(ORCH_ENOTFOUND, "parent task %lld not found", (long long)id);
	return rc;
}

static int task_create(orch_ctx *ctx, json_t *p, json_t **result)
{
	int64_t parent = orch_param_int(p, "parent_id", 0);
	char *level = level_of(orch_param_str(p, "level", ""));
	const char *assignee_in = orch_param_str(p, "assignee_session", NULL);
	char *assignee = assignee_in ? trimmed(assignee_in) : NULL;
	int rc = 0;

	if (parent && (rc = check_parent(ctx, parent)) != 0)
		goto done;
	rc = orch_sql_exec(ctx, "INSERT INTO tasks (level, parent_id, title, status, priority, assignee_session, "
			   "created_at, updated_at) VALUES (?, ?, ?, 'todo', ?, ?, ?, ?)", "sIsisii", level, parent,
			   orch_param_str(p, "title", ""), orch_param_int(p, "priority", 0),
			   assignee && *assignee ? assignee : NULL, ctx->now, ctx->now);
	if (!rc)
		rc = orch_task_json(ctx, orch_last_id(ctx), result);
done:
	free(level);
	free(assignee);
	return rc;
}

static int task_list(orch_ctx *ctx, json_t *p, json_t **result)
{
	int64_t after = orch_param_int(p, "after_id", 0);
	const char *level_in = orch_param_str(p, "level", NULL);
	char *level = level_in ? level_of(level_in) : NULL;
	int rc;

	(void)result;
	if ((rc = orch_page_after(ctx, p, "SELECT id FROM tasks WHERE id = ?", "task")) != 0)
		goto done;
	/*
	 * An absent filter binds NULL, and "? IS NULL" lets every row through.
	 * A page continues after task ?4 in the list's own order (a row value
	 * compared with that task's), so pages never skip or repeat a task.
	 * ready (?6): cases nobody holds, todo or in_progress.
	 */
	rc = orch_sql_rows_result(ctx, TASK_SELECT
				  "WHERE (?1 IS NULL OR level = ?1) AND (?2 IS NULL OR status = ?2) "
				  "AND (?3 IS NULL OR parent_id = ?3) AND (?4 IS NULL OR (-priority, updated_at, id) > "
				  "(SELECT -priority, updated_at, id FROM tasks WHERE id = ?4)) "
				  "AND (?6 = 0 OR (level = 'case' AND status IN ('todo', 'in_progress') AND NOT EXISTS "
				  "(SELECT 1 FROM current_refs r WHERE r.node_type = 'case' AND r.node_id = tasks.id AND "
				  "r.status = 'active'))) "
				  "ORDER BY priority DESC, updated_at, id LIMIT ?5", "ssIIii",
				  level, orch_param_str(p, "status", NULL),
				  orch_param_int(p, "parent_id", 0), after, orch_param_int(p, "limit", -1),
				  (int64_t)orch_param_bool(p, "ready", false));
done:
	free(level);
	return rc;
}

/*
 * Change a task's status, priority, title or assignee.  A case another
 * session holds (its active current ref) is that session's: conflict.
 * When the holder sets its case to anything but in_progress (blocked,
 * todo, done) it lets go of it: its ref is released, so the case can be
 * handed to someone else once it is ready again.
 */
static int task_update(orch_ctx *ctx, json_t *p, json_t **result)
{
	int64_t id = orch_param_int(p, "task_id", 0), sid = orch_param_int(p, "session_id", 0), holder = 0;
	const char *status = orch_param_str(p, "status", NULL), *title = orch_param_str(p, "title", NULL);
	const char *assignee_in = orch_param_str(p, "assignee_session", NULL);
	char *assignee = assignee_in ? trimmed(assignee_in) : NULL;
	json_t *task = NULL;
	bool held = false;
	int rc;

	if (!status && !title && !assignee && !orch_param_has(p, "priority")) {
		rc = orch_error_set(ORCH_EINVALID_PARAMS, "nothing to update: give status, priority, title or "
				    "assignee_session");
		goto done;
	}
	if (status && strcmp(status, "todo") && strcmp(status, "in_progress") && strcmp(status, "blocked") &&
	    strcmp(status, "done")) {
		rc = orch_error_set(ORCH_EINVALID_PARAMS, "status must be one of " TASK_STATUSES "; got \"%s\"",
				    status);
		goto done;
	}
	if (title && (rc = orch_param_nonblank(p, "title", &title)) != 0)
		goto done;
	if (sid && (rc = orch_session_require_open(ctx, sid)) != 0)
		goto done;
	if ((rc = orch_task_json(ctx, id, &task)) != 0)
		goto done;
	if ((rc = orch_sql_int(ctx, &holder, &held, "SELECT session_id FROM current_refs WHERE node_type = 'case' "
			       "AND node_id = ? AND status = 'active' LIMIT 1", "i", id)) != 0)
		goto done;
	if (held && holder != sid) {
		rc = orch_error_set(ORCH_ECONFLICT, "task %lld is held by session %lld (its active current ref); "
				    "only that session may change it (through sessions/%lld/ctl/)", (long long)id,
				    (long long)holder, (long long)holder);
		goto done;
	}
	rc = orch_sql_exec(ctx, "UPDATE tasks SET status = coalesce(?, status), title = coalesce(?, title), "
			   "priority = CASE WHEN ? THEN ? ELSE priority END, "
			   "assignee_session = CASE WHEN ? THEN nullif(?, '') ELSE assignee_session END, "
			   "updated_at = ? WHERE id = ?", "ssiiisii", status, title,
			   (int64_t)orch_param_has(p, "priority"), orch_param_int(p, "priority", 0),
			   (int64_t)(assignee != NULL), assignee, ctx->now, id);
	if (!rc && held && status && strcmp(status, "in_progress") != 0)
		rc = orch_sql_exec(ctx, "UPDATE current_refs SET status = 'released', version = version + 1, "
				   "updated_at = ? WHERE session_id = ? AND status = 'active' AND node_type = 'case' "
				   "AND node_id = ?", "iii", ctx->now, holder, id);
	if (!rc)
		rc = orch_task_json(ctx, id, result);
done:
	json_decref(task);
	free(assignee);
	return rc;
}

static int task_get(orch_ctx *ctx, json_t *p, json_t **result)
{
	return orch_task_json(ctx, orch_param_int(p, "task_id", 0), result);
}

static const orch_param create_params[] = {
	{"level", ORCH_P_STR, ORCH_P_REQUIRED, "epic | feature | test_group | case (free text; \"case\" "
	 "enables the case lifecycle).", NULL},
	{"title", ORCH_P_STR, ORCH_P_REQUIRED, "Title.", NULL},
	{"parent_id", ORCH_P_ID, 0, "Parent task (must exist).", NULL},
	{"priority", ORCH_P_INT, 0, "Higher first (default 0).", NULL},
	{"assignee_session", ORCH_P_OWNER, 0, "The session it is for (\"2\" or 2; blank means anyone): "
	 "resume.next and work.current_ref never hand it to another session.", NULL},
	{NULL, 0, 0, NULL, NULL},
};
static const orch_param update_params[] = {
	{"task_id", ORCH_P_ID, ORCH_P_REQUIRED, "The task.", NULL},
	{"session_id", ORCH_P_ID, 0, "The session changing it (implied under sessions/<id>/ctl/): needed to "
	 "change a case it holds.", NULL},
	{"status", ORCH_P_STR, 0, TASK_STATUSES "; the holder of a case setting anything but in_progress "
	 "lets go of it.", NULL},
	{"priority", ORCH_P_INT, 0, "Higher first.", NULL},
	{"title", ORCH_P_STR, 0, "New title (not blank).", NULL},
	{"assignee_session", ORCH_P_OWNER, 0, "The session it is for; \"\" for anyone.", NULL},
	{NULL, 0, 0, NULL, NULL},
};
static const orch_param list_params[] = {
	{"level", ORCH_P_STR, 0, "Only this level (trimmed, lower-cased).", NULL},
	{"status", ORCH_P_STR, 0, "Only this status (todo, in_progress, blocked, done).", NULL},
	{"parent_id", ORCH_P_ID, 0, "Only children of this task.", NULL},
	{"limit", ORCH_P_ID, 0, "At most this many tasks (default: all).", NULL},
	{"after_id", ORCH_P_ID, 0, "Start after this task in the list's order (the last id of the previous page).",
	 NULL},
	{"ready", ORCH_P_BOOL, 0, "true: only cases ready to be taken: todo or in_progress, and nobody holds "
	 "them.", NULL},
	{NULL, 0, 0, NULL, NULL},
};
static const orch_param get_params[] = {
	{"task_id", ORCH_P_ID, ORCH_P_REQUIRED, "The task.", NULL},
	{NULL, 0, 0, NULL, NULL},
};

const orch_method orch_task_methods[] = {
	{"task.create", task_create, ORCH_M_WRITE, create_params, "Create a task (status todo). level is "
	 "trimmed and lower-cased (\"Case\" is a case).",
	 "the task {id, level, parent_id?, title, status, priority, assignee_session?, held_by?, "
	 "last_checkpoint_id?, created_at, updated_at}",
	 "{\"level\": \"case\", \"title\": \"login rejects bad password\", \"priority\": 1}",
	 "not_found (ENOENT: parent_id does not exist)."},
	{"task.list", task_list, 0, list_params, "List tasks, priority first, then oldest update, then id.",
	 "[task, ...]", "{\"level\": \"case\", \"status\": \"todo\", \"limit\": 100}",
	 "not_found (ENOENT: after_id)."},
	{"task.get", task_get, 0, get_params, "One task (held_by: the session holding the case).", "the task",
	 "{\"task_id\": 1}", "not_found (ENOENT)."},
	{"task.update", task_update, ORCH_M_WRITE, update_params,
	 "Change a task's status (" TASK_STATUSES "), priority, title or assignee. A case held by another "
	 "session cannot be changed; its holder setting blocked (or todo, done) lets go of it.",
	 "the task", "{\"task_id\": 1, \"status\": \"blocked\"}",
	 "not_found (ENOENT), invalid_params (EINVAL: nothing to update, unknown status, blank title), "
	 "conflict (EBUSY: another session holds the case), invalid_state (EINVAL: session closed)."},
	{NULL, NULL, 0, NULL, NULL, NULL, NULL, NULL},
};
