/*
 * Plans on top of the planning graph: bootstrap an initiative with its plan,
 * generate slices within the planning limits, record replans, and the
 * rollup approval state machine none|rejected → pending → approved|rejected.
 *
 * Each method does all its work inside the call's one transaction and
 * returns an error for any bad input, so a failed call leaves nothing
 * behind (the reference committed step by step).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "graph.h"
#include "groups.h"

/* The children of ?1: nodes whose parent it is, or that it contains by an edge. */
#define CHILDREN_WHERE                                                                             \
	"WHERE parent_id = ?1 OR id IN (SELECT to_node_id FROM graph_edges WHERE from_node_id = ?1 " \
	"AND edge_type = 'contains') "

/*
 * Count rows by status into an object with the statuses in sorted order.
 * `sql` selects (status, count) for node ?1.
 */
static int status_counts(orch_ctx *ctx, const char *sql, int64_t id, json_t **out, int64_t *total)
{
	orch_stmt *st = orch_sql(ctx, sql, "i", id);
	int rc;

	*out = NULL;
	*total = 0;
	if (!st)
		return ORCH_EINTERNAL;
	*out = json_object();
	while ((rc = orch_sql_step(ctx, st)) == ORCH_ROW) {
		int64_t n = orch_stmt_column_int64(st, 1);
		json_object_set_new(*out, (const char *)orch_stmt_column_text(st, 0), json_integer(n));
		*total += n;
	}
	orch_stmt_reset(st);
	if (rc != ORCH_DONE) {
		json_decref(*out);
		*out = NULL;
		return ORCH_EINTERNAL;
	}
	return 0;
}

/*
 * The rollup preview of node `id`: its direct children (as graph.node.list
 * orders them) counted by status, and the whole subtree below it (contains
 * edges and parent links, each node once) counted by status.
 */
static int preview(orch_ctx *ctx, int64_t id, json_t **out)
{
	json_t *children = NULL, *counts = NULL, *sub_counts = NULL;
	int64_t nchildren, nsub;
	int rc;

	*out = NULL;
	rc = orch_sql_rows(ctx, &children, ORCH_NODE_SELECT CHILDREN_WHERE "ORDER BY priority DESC, updated_at, id",
			   "i", id);
	if (!rc)
		rc = status_counts(ctx, "SELECT status, COUNT(*) FROM graph_nodes " CHILDREN_WHERE
				   "GROUP BY status ORDER BY status", id, &counts, &nchildren);
	if (!rc)
		rc = status_counts(ctx, "WITH RECURSIVE sub(id) AS (SELECT ?1 "
				   "UNION SELECT e.to_node_id FROM graph_edges e JOIN sub ON e.from_node_id = sub.id "
				   "WHERE e.edge_type = 'contains' "
				   "UNION SELECT n.id FROM graph_nodes n JOIN sub ON n.parent_id = sub.id) "
				   "SELECT status, COUNT(*) FROM graph_nodes WHERE id IN (SELECT id FROM sub) "
				   "AND id <> ?1 GROUP BY status ORDER BY status", id, &sub_counts, &nsub);
	if (rc) {
		json_decref(children);
		json_decref(counts);
		json_decref(sub_counts);
		return rc;
	}
	*out = json_object();
	json_object_set_new(*out, "parent_node_id", json_integer(id));
	json_object_set_new(*out, "child_count", json_integer(nchildren));
	json_object_set_new(*out, "status_counts", counts);
	json_object_set_new(*out, "children", children);
	json_object_set_new(*out, "descendant_count", json_integer(nsub));
	json_object_set_new(*out, "descendant_status_counts", sub_counts);
	return 0;
}

/*
 * plan.bootstrap: initiative (in_progress) → plan (todo) with a contains
 * edge, all in the call's transaction.
 */
static int bootstrap(orch_ctx *ctx, json_t *p, json_t **result)
{
	orch_node_new ini = ORCH_NODE_NEW_INIT, plan = ORCH_NODE_NEW_INIT;
	json_t *ini_node = NULL, *plan_node = NULL, *edge = NULL;
	int rc;

	ini.owner_session_id = plan.owner_session_id = orch_param_int(p, "owner_session_id", 0);
	ini.priority = plan.priority = orch_param_int(p, "priority", 0);
	if ((rc = orch_graph_check_refs(ctx, ini.owner_session_id, 0)) != 0)
		goto done;
	ini.node_type = "initiative";
	ini.status = "in_progress";
	ini.title = orch_param_str(p, "initiative_title", "");
	ini.summary = orch_graph_text(p, "summary");
	if ((rc = orch_graph_node_insert(ctx, &ini, &ini_node)) != 0)
		goto done;
	plan.node_type = "plan";
	plan.title = orch_param_str(p, "plan_title", "");
	plan.parent_id = json_integer_value(json_object_get(ini_node, "id"));
	if ((rc = orch_graph_node_insert(ctx, &plan, &plan_node)) != 0)
		goto done;
	rc = orch_graph_edge_insert(ctx, plan.parent_id, json_integer_value(json_object_get(plan_node, "id")),
				    "contains", &edge);
	if (rc)
		goto done;
	*result = json_pack("{sOsOsO}", "initiative", ini_node, "plan", plan_node, "edge", edge);
done:
	json_decref(ini_node);
	json_decref(plan_node);
	json_decref(edge);
	return rc;
}

/* The plan node `id` (key `key`), which must exist and be of type plan. */
static int find_plan(orch_ctx *ctx, const char *key, int64_t id, json_t **out)
{
	int rc = orch_graph_node_find(ctx, key, id, out);
	const char *type;

	if (rc)
		return rc;
	type = json_string_value(json_object_get(*out, "node_type"));
	if (strcmp(type, "plan") != 0) {
		rc = orch_error_set(ORCH_EINVALID_STATE, "%s %lld is a node of type %s, not a plan", key, (long long)id, type);
		orch_error_detail("state", json_string(type));
		json_decref(*out);
		*out = NULL;
	}
	return rc;
}

/* Validate one slice spec against the planning limits; *files is its deduplicated file list. */
static int check_spec(orch_ctx *ctx, json_t *spec, size_t i, int64_t *tokens, json_t **files)
{
	char where[64];
	int rc;

	snprintf(where, sizeof(where), "slice_specs[%zu].", i);
	*files = NULL;
	if ((rc = orch_graph_positive(spec, "token_estimate", where, tokens)) != 0)
		return rc;
	*files = orch_graph_files(spec, "affected_files");
	rc = orch_graph_slice_limits(ctx, where, *tokens, json_array_size(*files));
	if (rc) {
		json_decref(*files);
		*files = NULL;
	}
	return rc;
}

/*
 * plan.slice.generate: every spec is checked before the first slice is
 * made, then each becomes a slice node under the plan with a plan → slice
 * contains edge.  A bad spec anywhere means no slice at all.
 */
static int slice_generate(orch_ctx *ctx, json_t *p, json_t **result)
{
	int64_t plan_id = orch_param_int(p, "plan_node_id", 0), tokens;
	json_t *specs = orch_param_json(p, "slice_specs"), *spec, *plan = NULL, *files = NULL;
	json_t *slices = json_array(), *edges = json_array();
	size_t i;
	int rc;

	if ((rc = find_plan(ctx, "plan_node_id", plan_id, &plan)) != 0)
		goto done;
	if ((rc = orch_graph_check_refs(ctx, orch_param_int(p, "owner_session_id", 0), 0)) != 0)
		goto done;
	if (json_array_size(specs) == 0) {
		rc = orch_error_set(ORCH_EINVALID_PARAMS, "slice_specs must list at least one slice");
		goto done;
	}
	json_array_foreach(specs, i, spec) {
		if ((rc = check_spec(ctx, spec, i, &tokens, &files)) != 0)
			goto done;
		json_decref(files);
		files = NULL;
	}
	json_array_foreach(specs, i, spec) {
		orch_node_new n = ORCH_NODE_NEW_INIT;
		json_t *node = NULL, *edge = NULL;

		if ((rc = check_spec(ctx, spec, i, &tokens, &files)) != 0)
			goto done;
		n.node_type = "slice";
		n.title = orch_param_str(spec, "title", "");
		n.summary = orch_graph_text(spec, "summary");
		n.priority = orch_param_int(spec, "priority", 0);
		n.parent_id = plan_id;
		n.owner_session_id = orch_param_int(p, "owner_session_id", 0);
		n.token_estimate = tokens;
		n.affected_files = files;
		rc = orch_graph_node_insert(ctx, &n, &node);
		json_decref(files);
		files = NULL;
		if (rc)
			goto done;
		json_array_append_new(slices, node);
		rc = orch_graph_edge_insert(ctx, plan_id, json_integer_value(json_object_get(node, "id")),
					    "contains", &edge);
		if (rc)
			goto done;
		json_array_append_new(edges, edge);
	}
	*result = json_pack("{sIsOsO}", "plan_node_id", (json_int_t)plan_id, "slices", slices, "edges", edges);
done:
	json_decref(plan);
	json_decref(files);
	json_decref(slices);
	json_decref(edges);
	return rc;
}

/* plan.slice.replan: a replan snapshot (summary = reason); the node itself is unchanged. */
static int slice_replan(orch_ctx *ctx, json_t *p, json_t **result)
{
	int64_t id = orch_param_int(p, "node_id", 0);
	json_t *node = NULL, *files = NULL;
	int rc;

	if ((rc = orch_graph_node_find(ctx, "node_id", id, &node)) != 0)
		goto done;
	if (orch_param_has(p, "affected_files"))
		files = orch_graph_files(p, "affected_files");
	rc = orch_graph_snapshot_insert(ctx, id, "replan", orch_param_str(p, "reason", ""), files,
					orch_graph_text(p, "next_action"), result);
done:
	json_decref(node);
	json_decref(files);
	return rc;
}

static int rollup_preview(orch_ctx *ctx, json_t *p, json_t **result)
{
	int64_t id = orch_param_int(p, "parent_node_id", 0);
	json_t *node = NULL;
	int rc = orch_graph_node_find(ctx, "parent_node_id", id, &node);

	json_decref(node);
	return rc ? rc : preview(ctx, id, result);
}

/* invalid_state naming the node's approval_state unless it is one of `allowed` (NULL-terminated). */
static int require_approval(json_t *node, const char *method, const char *const *allowed)
{
	const char *state = json_string_value(json_object_get(node, "approval_state"));

	for (size_t i = 0; allowed[i]; i++)
		if (strcmp(state, allowed[i]) == 0)
			return 0;
	orch_error_set(ORCH_EINVALID_STATE, "%s needs approval_state %s%s%s, but node %lld is %s", method,
		       allowed[0], allowed[1] ? " or " : "", allowed[1] ? allowed[1] : "",
		       (long long)json_integer_value(json_object_get(node, "id")), state);
	orch_error_detail("state", json_string(state));
	return ORCH_EINVALID_STATE;
}

/*
 * plan.rollup.submit: from none or rejected, record a rollup snapshot and
 * put the node up for review (pending, in_review).
 */
static int rollup_submit(orch_ctx *ctx, json_t *p, json_t **result)
{
	static const char *const from[] = {"none", "rejected", NULL};
	int64_t id = orch_param_int(p, "node_id", 0);
	json_t *node = NULL, *snap = NULL, *prev = NULL, *files = NULL;
	int rc;

	if ((rc = orch_graph_node_find(ctx, "node_id", id, &node)) != 0 ||
	    (rc = require_approval(node, "plan.rollup.submit", from)) != 0)
		goto done;
	if (orch_param_has(p, "affected_files"))
		files = orch_graph_files(p, "affected_files");
	rc = orch_graph_snapshot_insert(ctx, id, "rollup", orch_graph_text(p, "summary"), files,
					orch_graph_text(p, "next_action"), &snap);
	if (rc)
		goto done;
	rc = orch_sql_exec(ctx, "UPDATE graph_nodes SET approval_state = 'pending', status = 'in_review', "
			   "decided_by_session = NULL, decision_reason = NULL, updated_at = ? WHERE id = ?", "ii",
			   ctx->now, id);
	if (rc)
		goto done;
	json_decref(node);
	node = NULL;
	if ((rc = orch_node_json(ctx, id, &node)) != 0 || (rc = preview(ctx, id, &prev)) != 0)
		goto done;
	/* The preview the decision will be about is kept with the rollup. */
	if ((rc = orch_sql_exec(ctx, "UPDATE node_snapshots SET preview_json = ? WHERE id = ?", "ji", prev,
				json_integer_value(json_object_get(snap, "id")))) != 0)
		goto done;
	json_object_set(snap, "preview", prev);
	*result = json_pack("{sOsOsO}", "snapshot", snap, "node", node, "preview", prev);
done:
	json_decref(node);
	json_decref(snap);
	json_decref(prev);
	json_decref(files);
	return rc;
}

/*
 * Approve or reject a pending node: approval_state and status become the
 * given pair; the deciding session (session_id, checked open) and the
 * reason are kept on the node (decided_by_session, decision_reason) and in
 * the rollup snapshot that was submitted (decision, beside its preview).
 */
static int decide(orch_ctx *ctx, json_t *p, const char *method, const char *approval, const char *status,
		  json_t **result)
{
	static const char *const from[] = {"pending", NULL};
	int64_t id = orch_param_int(p, "node_id", 0), sid = orch_param_int(p, "session_id", 0);
	json_t *node = NULL;
	int rc;

	if (sid && (rc = orch_session_require_open(ctx, sid)) != 0)
		return rc;
	if ((rc = orch_graph_node_find(ctx, "node_id", id, &node)) != 0 ||
	    (rc = require_approval(node, method, from)) != 0)
		goto done;
	rc = orch_sql_exec(ctx, "UPDATE graph_nodes SET approval_state = ?, status = ?, decided_by_session = ?, "
			   "decision_reason = ?, updated_at = ? WHERE id = ?", "ssIsii", approval, status, sid,
			   orch_graph_text(p, "reason"), ctx->now, id);
	/* And in the rollup snapshot that was submitted, beside its preview. */
	if (!rc)
		rc = orch_sql_exec(ctx, "UPDATE node_snapshots SET decision = ?, decided_by_session = ?, "
				   "decision_reason = ? WHERE id = (SELECT max(id) FROM node_snapshots WHERE node_id = ? "
				   "AND snapshot_type = 'rollup')", "sIsi", approval, sid, orch_graph_text(p, "reason"), id);
	if (!rc)
		rc = orch_node_json(ctx, id, result);
done:
	json_decref(node);
	return rc;
}

static int rollup_approve(orch_ctx *ctx, json_t *p, json_t **result)
{
	return decide(ctx, p, "plan.rollup.approve", "approved", "done", result);
}

static int rollup_reject(orch_ctx *ctx, json_t *p, json_t **result)
{
	return decide(ctx, p, "plan.rollup.reject", "rejected", "blocked", result);
}

static const orch_param bootstrap_params[] = {
	{"initiative_title", ORCH_P_STR, ORCH_P_REQUIRED, "Title of the initiative.", NULL},
	{"plan_title", ORCH_P_STR, ORCH_P_REQUIRED, "Title of its plan.", NULL},
	{"priority", ORCH_P_INT, 0, "Priority of both nodes (default 0).", NULL},
	{"owner_session_id", ORCH_P_ID, 0, "Owning session of both nodes (must exist).", NULL},
	{"summary", ORCH_P_STR, 0, "Summary of the initiative (blank means none).", NULL},
	{NULL, 0, 0, NULL, NULL},
};
static const orch_param slice_spec_params[] = {
	{"title", ORCH_P_STR, ORCH_P_REQUIRED, "Title of the slice.", NULL},
	{"priority", ORCH_P_INT, 0, "Higher first (default 0).", NULL},
	{"token_estimate", ORCH_P_INT, 0, "Estimated tokens, positive, at most max_token_per_slice.", NULL},
	{"affected_files", ORCH_P_PATHS, 0, "Files it touches, at most max_files_per_slice (default []).", NULL},
	{"summary", ORCH_P_STR, 0, "Summary (blank means none).", NULL},
	{NULL, 0, 0, NULL, NULL},
};
static const orch_param generate_params[] = {
	{"plan_node_id", ORCH_P_ID, ORCH_P_REQUIRED, "The plan (a node of type plan).", NULL},
	{"owner_session_id", ORCH_P_ID, 0, "Owning session of every slice (must exist).", NULL},
	{"slice_specs", ORCH_P_OBJS, ORCH_P_REQUIRED, "The slices, at least one; each:", slice_spec_params},
	{NULL, 0, 0, NULL, NULL},
};
static const orch_param replan_params[] = {
	{"node_id", ORCH_P_ID, ORCH_P_REQUIRED, "The node (must exist).", NULL},
	{"reason", ORCH_P_STR, ORCH_P_REQUIRED, "Why (the snapshot's summary).", NULL},
	{"affected_files", ORCH_P_PATHS, 0, "Files (omitted when not given).", NULL},
	{"next_action", ORCH_P_STR, 0, "What comes next (blank means none).", NULL},
	{NULL, 0, 0, NULL, NULL},
};
static const orch_param preview_params[] = {
	{"parent_node_id", ORCH_P_ID, ORCH_P_REQUIRED, "The node whose children roll up (must exist).", NULL},
	{NULL, 0, 0, NULL, NULL},
};
static const orch_param submit_params[] = {
	{"node_id", ORCH_P_ID, ORCH_P_REQUIRED, "The node (approval_state none or rejected).", NULL},
	{"summary", ORCH_P_STR, 0, "Summary of the rollup snapshot (blank means none).", NULL},
	{"affected_files", ORCH_P_PATHS, 0, "Files (omitted when not given).", NULL},
	{"next_action", ORCH_P_STR, 0, "What comes next (blank means none).", NULL},
	{NULL, 0, 0, NULL, NULL},
};
static const orch_param decide_params[] = {
	{"node_id", ORCH_P_ID, ORCH_P_REQUIRED, "The node (approval_state pending).", NULL},
	{"session_id", ORCH_P_ID, 0, "The deciding session (implied under sessions/<id>/ctl/): kept as "
	 "decided_by_session.", NULL},
	{"reason", ORCH_P_STR, 0, "Why (kept on the node as decision_reason).", NULL},
	{NULL, 0, 0, NULL, NULL},
};

#define PREVIEW_OUT                                                                                \
	"{parent_node_id, child_count, status_counts: {status: n}, children: [node, ...], "         \
	"descendant_count, descendant_status_counts: {status: n}}"

const orch_method orch_plan_methods[] = {
	{"plan.bootstrap", bootstrap, ORCH_M_WRITE, bootstrap_params,
	 "Create an initiative (in_progress) and its plan (todo), linked by a contains edge; all or nothing.",
	 "{initiative, plan, edge}", "{\"initiative_title\": \"Faster login\", \"plan_title\": \"Login v2\"}",
	 "not_found (ENOENT: owner_session_id)."},
	{"plan.slice.generate", slice_generate, ORCH_M_WRITE, generate_params,
	 "Create slices (todo) under a plan, each with a plan → slice contains edge; a bad spec anywhere "
	 "creates nothing. token_estimate and affected_files obey planning_rules (18000 tokens, 12 files).",
	 "{plan_node_id, slices: [node, ...], edges: [edge, ...]}",
	 "{\"plan_node_id\": 2, \"slice_specs\": [{\"title\": \"parser\", \"token_estimate\": 4000, "
	 "\"affected_files\": [\"src/parse.c\"]}]}",
	 "not_found (ENOENT: plan_node_id, owner_session_id); invalid_state (EINVAL: the node is not a plan); "
	 "invalid_params (EINVAL: no specs, a bad spec, a slice over the planning limits)."},
	{"plan.slice.replan", slice_replan, ORCH_M_WRITE, replan_params,
	 "Record a replan snapshot of a node (summary = reason); the node is unchanged.",
	 "the snapshot {id, node_id, snapshot_type: \"replan\", summary, affected_files?, next_action?, created_at}",
	 "{\"node_id\": 3, \"reason\": \"scope_change\", \"next_action\": \"split the parser\"}",
	 "not_found (ENOENT: node_id)."},
	{"plan.rollup.preview", rollup_preview, 0, preview_params,
	 "Count a node's direct children by status, and its whole subtree.", PREVIEW_OUT,
	 "{\"parent_node_id\": 2}", "not_found (ENOENT: parent_node_id)."},
	{"plan.rollup.submit", rollup_submit, ORCH_M_WRITE, submit_params,
	 "Submit a node for approval: a rollup snapshot, approval_state pending, status in_review; all or nothing.",
	 "{snapshot, node, preview}", "{\"node_id\": 2, \"summary\": \"all slices done\"}",
	 "not_found (ENOENT: node_id); invalid_state (EINVAL: approval_state is pending or approved; "
	 "details.state)."},
	{"plan.rollup.approve", rollup_approve, ORCH_M_WRITE, decide_params,
	 "Approve a pending node: approval_state approved, status done; the deciding session and reason "
	 "are kept (decided_by_session, decision_reason).", "the node",
	 "{\"node_id\": 2, \"session_id\": 1, \"reason\": \"all slices merged\"}",
	 "not_found (ENOENT: node_id); invalid_state (EINVAL: not pending; details.state)."},
	{"plan.rollup.reject", rollup_reject, ORCH_M_WRITE, decide_params,
	 "Reject a pending node: approval_state rejected, status blocked; it may be submitted again. The "
	 "deciding session and reason are kept.",
	 "the node", "{\"node_id\": 2, \"session_id\": 1, \"reason\": \"tests missing\"}",
	 "not_found (ENOENT: node_id); invalid_state (EINVAL: not pending; details.state)."},
	{NULL, NULL, 0, NULL, NULL, NULL, NULL, NULL},
};
