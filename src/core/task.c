/*
 * Tasks: the epic → feature → test_group → case hierarchy.
 */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include "orchfs/core.h"
#include "groups.h"

#define TASK_SELECT                                                                                \
	"SELECT id, level, parent_id, title, status, priority, assignee_session, "                   \
	"input_contract AS input_contract_json, fixtures AS fixtures_json, next_action, created_at, " \
	"updated_at FROM tasks "

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
	char *level = trimmed(orch_param_str(p, "level", ""));
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
	bool found = true;
	int rc;

	(void)result;
	if (after && (rc = orch_sql_int(ctx, &after, &found, "SELECT id FROM tasks WHERE id = ?", "i", after)) != 0)
		return rc;
	if (!found)
		return orch_error_set(ORCH_ENOTFOUND, "after_id: task %lld not found",
				      (long long)orch_param_int(p, "after_id", 0));
	/*
	 * An absent filter binds NULL, and "? IS NULL" lets every row through.
	 * A page continues after task ?4 in the list's own order (a row value
	 * compared with that task's), so pages never skip or repeat a task.
	 */
	return orch_sql_rows_result(ctx, TASK_SELECT
				    "WHERE (?1 IS NULL OR level = ?1) AND (?2 IS NULL OR status = ?2) "
				    "AND (?3 IS NULL OR parent_id = ?3) AND (?4 IS NULL OR (-priority, updated_at, id) > "
				    "(SELECT -priority, updated_at, id FROM tasks WHERE id = ?4)) "
				    "ORDER BY priority DESC, updated_at, id LIMIT ?5", "ssIIi",
				    orch_param_str(p, "level", NULL), orch_param_str(p, "status", NULL),
				    orch_param_int(p, "parent_id", 0), after, orch_param_int(p, "limit", -1));
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
	{"assignee_session", ORCH_P_STR, 0, "Assignee (free text; blank means none).", NULL},
	{NULL, 0, 0, NULL, NULL},
};
static const orch_param list_params[] = {
	{"level", ORCH_P_STR, 0, "Only this level.", NULL},
	{"status", ORCH_P_STR, 0, "Only this status (todo, in_progress, blocked, done).", NULL},
	{"parent_id", ORCH_P_ID, 0, "Only children of this task.", NULL},
	{"limit", ORCH_P_ID, 0, "At most this many tasks (default: all).", NULL},
	{"after_id", ORCH_P_ID, 0, "Start after this task in the list's order (the last id of the previous page).",
	 NULL},
	{NULL, 0, 0, NULL, NULL},
};
static const orch_param get_params[] = {
	{"task_id", ORCH_P_ID, ORCH_P_REQUIRED, "The task.", NULL},
	{NULL, 0, 0, NULL, NULL},
};

const orch_method orch_task_methods[] = {
	{"task.create", task_create, ORCH_M_WRITE, create_params, "Create a task (status todo).",
	 "the task {id, level, parent_id?, title, status, priority, assignee_session?, created_at, updated_at}",
	 "{\"level\": \"case\", \"title\": \"login rejects bad password\", \"parent_id\": 1}",
	 "not_found (ENOENT: parent_id does not exist)."},
	{"task.list", task_list, 0, list_params, "List tasks, priority first, then oldest update, then id.",
	 "[task, ...]", "{\"level\": \"case\", \"status\": \"todo\", \"limit\": 100}",
	 "not_found (ENOENT: after_id)."},
	{"task.get", task_get, 0, get_params, "One task.", "the task", "{\"task_id\": 1}",
	 "not_found (ENOENT)."},
	{NULL, NULL, 0, NULL, NULL, NULL, NULL, NULL},
};
