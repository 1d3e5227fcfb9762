/*
 * The planning graph: nodes (initiative → plan → slice → …), typed edges,
 * per-node checklists and append-only snapshots, plus the helpers plan.c
 * builds on.  Integrity rules the reference left out are enforced here:
 * referenced nodes exist, edges are unique per type, `contains` never
 * closes a cycle, slices live under plans within the planning limits.
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "graph.h"
#include "groups.h"

#define ORDER_NO_MAX 1000000000LL

#define EDGE_SELECT "SELECT id, from_node_id, to_node_id, edge_type, created_at FROM graph_edges "
#define ITEM_SELECT                                                                                \
	"SELECT id, node_id, item_text, status, order_no, facet, created_at, updated_at "           \
	"FROM node_checklists "
#define SNAPSHOT_SELECT                                                                            \
	"SELECT id, node_id, snapshot_type, summary, affected_files_json, next_action, preview_json, " \
	"decision, decided_by_session, decision_reason, created_at FROM node_snapshots "

/* ---- read views (also rendered under graph/nodes/<id>/) ---- */

int orch_node_json(orch_ctx *ctx, int64_t id, json_t **out)
{
	return orch_sql_row(ctx, out, "graph node %lld not found", id, ORCH_NODE_SELECT "WHERE id = ?", "i", id);
}

int orch_node_checklist_json(orch_ctx *ctx, int64_t id, json_t **out)
{
	return orch_sql_rows(ctx, out, ITEM_SELECT "WHERE node_id = ? ORDER BY facet, order_no", "i", id);
}

int orch_node_snapshots_json(orch_ctx *ctx, int64_t id, json_t **out)
{
	return orch_sql_rows(ctx, out, SNAPSHOT_SELECT "WHERE node_id = ? ORDER BY id", "i", id);
}

int orch_node_edges_json(orch_ctx *ctx, int64_t id, json_t **out)
{
	return orch_sql_rows(ctx, out, EDGE_SELECT "WHERE from_node_id = ?1 OR to_node_id = ?1 ORDER BY id",
			     "i", id);
}

/* ---- helpers shared with plan.c ---- */

int orch_graph_node_find(orch_ctx *ctx, const char *key, int64_t id, json_t **out)
{
	char nf[160];

	/* key is one of our own literals, so it holds no conversion. */
	snprintf(nf, sizeof(nf), "%s %%lld: graph node not found", key);
	return orch_sql_row(ctx, out, nf, id, ORCH_NODE_SELECT "WHERE id = ?", "i", id);
}

int orch_graph_ident(json_t *p, const char *name, const char *dflt, char **out)
{
	const char *s = orch_param_str(p, name, NULL);
	size_t n;

	*out = NULL;
	if (!s) {
		*out = dflt ? strdup(dflt) : NULL;
		return 0;
	}
	while (isspace((unsigned char)*s))
		s++;
	n = strlen(s);
	while (n > 0 && isspace((unsigned char)s[n - 1]))
		n--;
	if (n == 0)
		return orch_error_set(ORCH_EINVALID_PARAMS, "%s must not be blank", name);
	*out = strndup(s, n);
	return 0;
}

json_t *orch_graph_files(json_t *obj, const char *name)
{
	/* A request may carry 10,000 paths: a set (object keys) keeps this linear. */
	json_t *in = json_object_get(obj, name), *out = json_array(), *seen = json_object(), *v;
	size_t i;

	json_array_foreach(in, i, v) {
		const char *path = json_string_value(v);
		if (json_object_get(seen, path))
			continue;
		json_object_set_new(seen, path, json_true());
		json_array_append(out, v);
	}
	json_decref(seen);
	return out;
}

const char *orch_graph_text(json_t *obj, const char *name)
{
	const char *s = orch_param_str(obj, name, NULL);

	if (!s)
		return NULL;
	for (const char *c = s; *c; c++)
		if (!isspace((unsigned char)*c))
			return s;
	return NULL;
}

int orch_graph_positive(json_t *obj, const char *name, const char *where, int64_t *out)
{
	*out = orch_param_int(obj, name, 0);
	if (orch_param_has(obj, name) && *out <= 0)
		return orch_error_set(ORCH_EINVALID_PARAMS, "%s%s must be a positive integer, got %lld", where,
				      name, (long long)*out);
	return 0;
}

int orch_graph_check_refs(orch_ctx *ctx, int64_t owner_session_id, int64_t worktree_id)
{
	int64_t one;
	bool found;
	int rc;

	if (owner_session_id) {
		rc = orch_sql_int(ctx, &one, &found, "SELECT 1 FROM sessions WHERE id = ?", "i", owner_session_id);
		if (rc)
			return rc;
		if (!found)
			return orch_error_set(ORCH_ENOTFOUND, "owner_session_id %lld: session not found",
					      (long long)owner_session_id);
	}
	if (worktree_id) {
		rc = orch_sql_int(ctx, &one, &found, "SELECT 1 FROM worktrees WHERE id = ?", "i", worktree_id);
		if (rc)
			return rc;
		if (!found)
			return orch_error_set(ORCH_ENOTFOUND, "worktree_id %lld: worktree not found",
					      (long long)worktree_id);
	}
	return 0;
}

int orch_graph_slice_limits(orch_ctx *ctx, const char *where, int64_t token_estimate, size_t nfiles)
{
	orch_stmt *st = orch_sql(ctx, "SELECT max_token_per_slice, max_files_per_slice FROM planning_rules "
				    "WHERE id = 1", "");
	int64_t max_tokens, max_files;
	int rc;

	if (!st)
		return ORCH_EINTERNAL;
	rc = orch_sql_step(ctx, st);
	if (rc != ORCH_ROW) {
		orch_stmt_reset(st);
		return rc == ORCH_DONE ? orch_error_set(ORCH_EINTERNAL, "planning_rules row missing")
					 : ORCH_EINTERNAL;
	}
	max_tokens = orch_stmt_column_int64(st, 0);
	max_files = orch_stmt_column_int64(st, 1);
	orch_stmt_reset(st);
	if (token_estimate > max_tokens)
		return orch_error_set(ORCH_EINVALID_PARAMS,
				      "%stoken_estimate %lld exceeds the planning limit max_token_per_slice %lld; "
				      "split the slice", where, (long long)token_estimate, (long long)max_tokens);
	if ((int64_t)nfiles > max_files)
		return orch_error_set(ORCH_EINVALID_PARAMS,
				      "%saffected_files lists %zu files, over the planning limit "
				      "max_files_per_slice %lld; split the slice", where, nfiles, (long long)max_files);
	return 0;
}

int orch_graph_node_insert(orch_ctx *ctx, const orch_node_new *n, json_t **out)
{
	json_t *files = n->affected_files ? json_incref(n->affected_files) : json_array();
	int rc;

	rc = orch_sql_exec(ctx, "INSERT INTO graph_nodes (node_type, facet, title, status, priority, parent_id, "
			   "worktree_id, owner_session_id, summary, risk_level, token_estimate, affected_files_json, "
			   "approval_state, created_at, updated_at) "
			   "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, CASE WHEN ? THEN ? END, ?, ?, 'none', ?, ?)",
			   "ssssiIIIsiiIjii", n->node_type, n->facet, n->title, n->status, n->priority, n->parent_id,
			   n->worktree_id, n->owner_session_id, n->summary, (int64_t)n->has_risk_level,
			   n->risk_level, n->token_estimate, files, ctx->now, ctx->now);
	json_decref(files);
	if (!rc)
		rc = orch_node_json(ctx, orch_last_id(ctx), out);
	return rc;
}

/*
 * Whether a contains edge from → to would close a cycle: it does when
 * `from` is already inside `to`, following contains edges and parent links
 * (a parent contains its children).  UNION keeps the walk finite.
 */
static int closes_cycle(orch_ctx *ctx, int64_t from, int64_t to, bool *out)
{
	int64_t one;

	return orch_sql_int(ctx, &one, out,
			    "WITH RECURSIVE inside(id) AS (SELECT ?1 "
			    "UNION SELECT e.to_node_id FROM graph_edges e JOIN inside ON e.from_node_id = inside.id "
			    "WHERE e.edge_type = 'contains' "
			    "UNION SELECT n.id FROM graph_nodes n JOIN inside ON n.parent_id = inside.id) "
			    "SELECT 1 FROM inside WHERE id = ?2 LIMIT 1", "ii", to, from);
}

int orch_graph_edge_insert(orch_ctx *ctx, int64_t from, int64_t to, const char *type, json_t **out)
{
	json_t *node = NULL;
	int64_t existing;
	bool found;
	int rc;

	*out = NULL;
	if ((rc = orch_graph_node_find(ctx, "from_node_id", from, &node)) != 0)
		goto done;
	json_decref(node);
	node = NULL;
	if ((rc = orch_graph_node_find(ctx, "to_node_id", to, &node)) != 0)
		goto done;
	if (from == to) {
		rc = orch_error_set(ORCH_EINVALID_PARAMS, "an edge may not link node %lld to itself", (long long)from);
		goto done;
	}
	rc = orch_sql_int(ctx, &existing, &found, "SELECT id FROM graph_edges WHERE from_node_id = ? AND "
			  "to_node_id = ? AND edge_type = ?", "iis", from, to, type);
	if (rc)
		goto done;
	if (found) {
		rc = orch_error_set(ORCH_EEXISTS, "edge %lld already links node %lld to node %lld as %s",
				    (long long)existing, (long long)from, (long long)to, type);
		goto done;
	}
	if (strcmp(type, "contains") == 0) {
		if ((rc = closes_cycle(ctx, from, to, &found)) != 0)
			goto done;
		if (found) {
			rc = orch_error_set(ORCH_EINVALID_PARAMS, "a contains edge from node %lld to node %lld "
					    "would close a cycle: node %lld already contains node %lld",
					    (long long)from, (long long)to, (long long)to, (long long)from);
			goto done;
		}
	}
	rc = orch_sql_exec(ctx, "INSERT INTO graph_edges (from_node_id, to_node_id, edge_type, created_at) "
			   "VALUES (?, ?, ?, ?)", "iisi", from, to, type, ctx->now);
	if (!rc)
		rc = orch_sql_row(ctx, out, "edge %lld not found", orch_last_id(ctx), EDGE_SELECT "WHERE id = ?",
				  "i", orch_last_id(ctx));
done:
	json_decref(node);
	return rc;
}

int orch_graph_snapshot_insert(orch_ctx *ctx, int64_t node_id, const char *type, const char *summary,
			       json_t *files, const char *next_action, json_t **out)
{
	int rc;

	rc = orch_sql_exec(ctx, "INSERT INTO node_snapshots (node_id, snapshot_type, summary, affected_files_json, "
			   "next_action, created_at) VALUES (?, ?, ?, ?, ?, ?)", "issjsi", node_id, type, summary,
			   files, next_action, ctx->now);
	if (!rc)
		rc = orch_sql_row(ctx, out, "snapshot %lld not found", orch_last_id(ctx),
				  SNAPSHOT_SELECT "WHERE id = ?", "i", orch_last_id(ctx));
	return rc;
}

/* ---- graph.* methods ---- */

/*
 * graph.node.create: a node of any type.  approval_state may only be given
 * as "none" (approval moves through plan.rollup.*); a slice needs a plan
 * parent and obeys the planning limits, as in plan.slice.generate.
 */
static int node_create(orch_ctx *ctx, json_t *p, json_t **result)
{
	orch_node_new n = ORCH_NODE_NEW_INIT;
	char *type = NULL, *facet = NULL, *status = NULL, *approval = NULL;
	json_t *parent = NULL;
	int rc;

	if ((rc = orch_graph_ident(p, "node_type", NULL, &type)) != 0 ||
	    (rc = orch_graph_ident(p, "facet", "planning", &facet)) != 0 ||
	    (rc = orch_graph_ident(p, "status", "todo", &status)) != 0 ||
	    (rc = orch_graph_ident(p, "approval_state", "none", &approval)) != 0)
		goto done;
	if (strcmp(approval, "none") != 0) {
		rc = orch_error_set(ORCH_EINVALID_PARAMS, "approval_state must be \"none\" when a node is created, "
				    "got \"%s\"; plan.rollup.submit/approve/reject move it", approval);
		goto done;
	}
	n.node_type = type;
	n.facet = facet;
	n.status = status;
	n.title = orch_param_str(p, "title", "");
	n.summary = orch_graph_text(p, "summary");
	n.priority = orch_param_int(p, "priority", 0);
	n.parent_id = orch_param_int(p, "parent_id", 0);
	n.worktree_id = orch_param_int(p, "worktree_id", 0);
	n.owner_session_id = orch_param_int(p, "owner_session_id", 0);
	n.has_risk_level = orch_param_has(p, "risk_level");
	n.risk_level = orch_param_int(p, "risk_level", 0);
	if (n.risk_level < 0) {
		rc = orch_error_set(ORCH_EINVALID_PARAMS, "risk_level must not be negative, got %lld",
				    (long long)n.risk_level);
		goto done;
	}
	if ((rc = orch_graph_positive(p, "token_estimate", "", &n.token_estimate)) != 0)
		goto done;
	n.affected_files = orch_graph_files(p, "affected_files");
	if (n.parent_id && (rc = orch_graph_node_find(ctx, "parent_id", n.parent_id, &parent)) != 0)
		goto done;
	if ((rc = orch_graph_check_refs(ctx, n.owner_session_id, n.worktree_id)) != 0)
		goto done;
	if (strcmp(type, "slice") == 0) {
		const char *ptype = parent ? json_string_value(json_object_get(parent, "node_type")) : NULL;
		if (!parent) {
			rc = orch_error_set(ORCH_EINVALID_PARAMS, "a slice needs parent_id naming its plan node "
					    "(or use plan.slice.generate)");
			goto done;
		}
		if (strcmp(ptype, "plan") != 0) {
			rc = orch_error_set(ORCH_EINVALID_STATE, "parent_id %lld is a node of type %s; a slice's parent "
					    "must be a plan", (long long)n.parent_id, ptype);
			orch_error_detail("state", json_string(ptype));
			goto done;
		}
		rc = orch_graph_slice_limits(ctx, "", n.token_estimate, json_array_size(n.affected_files));
		if (rc)
			goto done;
	}
	rc = orch_graph_node_insert(ctx, &n, result);
done:
	json_decref(n.affected_files);
	json_decref(parent);
	free(type);
	free(facet);
	free(status);
	free(approval);
	return rc;
}

/* graph.node.list: exact-match filters; priority first, then oldest update, then id. */
static int node_list(orch_ctx *ctx, json_t *p, json_t **result)
{
	char *type = NULL, *facet = NULL, *status = NULL;
	int rc;

	if ((rc = orch_graph_ident(p, "node_type", NULL, &type)) != 0 ||
	    (rc = orch_graph_ident(p, "facet", NULL, &facet)) != 0 ||
	    (rc = orch_graph_ident(p, "status", NULL, &status)) != 0)
		goto done;
	int64_t after = orch_param_int(p, "after_id", 0);
	(void)result;
	if ((rc = orch_page_after(ctx, p, "SELECT id FROM graph_nodes WHERE id = ?", "graph node")) != 0)
		goto done;
	/*
	 * An absent filter binds NULL, and "? IS NULL" lets every row through.
	 * A page continues after node ?5 in the list's own order.
	 */
	rc = orch_sql_rows_result(ctx, ORCH_NODE_SELECT
				  "WHERE (?1 IS NULL OR node_type = ?1) AND (?2 IS NULL OR facet = ?2) "
				  "AND (?3 IS NULL OR status = ?3) AND (?4 IS NULL OR parent_id = ?4) "
				  "AND (?5 IS NULL OR (-priority, updated_at, id) > "
				  "(SELECT -priority, updated_at, id FROM graph_nodes WHERE id = ?5)) "
				  "ORDER BY priority DESC, updated_at, id LIMIT ?6", "sssIIi", type, facet, status,
				  orch_param_int(p, "parent_id", 0), after, orch_param_int(p, "limit", -1));
done:
	free(type);
	free(facet);
	free(status);
	return rc;
}

/* graph.edge.create: the checks are orch_graph_edge_insert's, shared with plan.* */
static int edge_create(orch_ctx *ctx, json_t *p, json_t **result)
{
	char *type = NULL;
	int rc = orch_graph_ident(p, "edge_type", NULL, &type);

	if (!rc)
		rc = orch_graph_edge_insert(ctx, orch_param_int(p, "from_node_id", 0),
					    orch_param_int(p, "to_node_id", 0), type, result);
	free(type);
	return rc;
}

/*
 * graph.checklist.upsert: one item per (node_id, order_no, facet).  An
 * existing item gets the new text, and the new status only when one is
 * given; a new item starts as `todo`.  Without order_no the item is
 * appended after the facet's last one.
 */
static int checklist_upsert(orch_ctx *ctx, json_t *p, json_t **result)
{
	int64_t node_id = orch_param_int(p, "node_id", 0), order_no, item_id;
	char *facet = NULL, *status = NULL;
	json_t *node = NULL;
	bool found;
	int rc;

	if ((rc = orch_graph_ident(p, "facet", "planning", &facet)) != 0 ||
	    (rc = orch_graph_ident(p, "status", NULL, &status)) != 0 ||
	    (rc = orch_graph_positive(p, "order_no", "", &order_no)) != 0)
		goto done;
	/* Bounded, so that "after the last" (max + 1) can never overflow. */
	if (order_no > ORDER_NO_MAX) {
		rc = orch_error_set(ORCH_EINVALID_PARAMS, "order_no must be at most %lld, got %lld",
				    (long long)ORDER_NO_MAX, (long long)order_no);
		goto done;
	}
	if ((rc = orch_graph_node_find(ctx, "node_id", node_id, &node)) != 0)
		goto done;
	if (!order_no) {
		rc = orch_sql_int(ctx, &order_no, &found, "SELECT COALESCE(MAX(order_no), 0) + 1 FROM node_checklists "
				  "WHERE node_id = ? AND facet = ?", "is", node_id, facet);
		if (rc)
			goto done;
	}
	rc = orch_sql_int(ctx, &item_id, &found, "SELECT id FROM node_checklists WHERE node_id = ? AND "
			  "order_no = ? AND facet = ?", "iis", node_id, order_no, facet);
	if (rc)
		goto done;
	if (found) {
		rc = orch_sql_exec(ctx, "UPDATE node_checklists SET item_text = ?, status = COALESCE(?, status), "
				   "updated_at = ? WHERE id = ?", "ssii", orch_param_str(p, "item_text", ""), status,
				   ctx->now, item_id);
	} else {
		rc = orch_sql_exec(ctx, "INSERT INTO node_checklists (node_id, item_text, status, order_no, facet, "
				   "created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)", "issisii", node_id,
				   orch_param_str(p, "item_text", ""), status ? status : "todo", order_no, facet,
				   ctx->now, ctx->now);
		item_id = orch_last_id(ctx);
	}
	if (!rc)
		rc = orch_sql_row(ctx, result, "checklist item %lld not found", item_id, ITEM_SELECT "WHERE id = ?",
				  "i", item_id);
done:
	json_decref(node);
	free(facet);
	free(status);
	return rc;
}

/* graph.snapshot.create: append-only; affected_files stored only when given. */
static int snapshot_create(orch_ctx *ctx, json_t *p, json_t **result)
{
	int64_t node_id = orch_param_int(p, "node_id", 0);
	char *type = NULL;
	json_t *node = NULL, *files = NULL;
	int rc;

	if ((rc = orch_graph_ident(p, "snapshot_type", NULL, &type)) != 0)
		goto done;
	if ((rc = orch_graph_node_find(ctx, "node_id", node_id, &node)) != 0)
		goto done;
	if (orch_param_has(p, "affected_files"))
		files = orch_graph_files(p, "affected_files");
	rc = orch_graph_snapshot_insert(ctx, node_id, type, orch_graph_text(p, "summary"), files,
					orch_graph_text(p, "next_action"), result);
done:
	json_decref(node);
	json_decref(files);
	free(type);
	return rc;
}

static const orch_param node_create_params[] = {
	{"node_type", ORCH_P_STR, ORCH_P_REQUIRED, "initiative | plan | slice | any other type (free text, "
	 "trimmed). A slice needs a plan parent and obeys the planning limits.", NULL},
	{"facet", ORCH_P_STR, 0, "Facet (default \"planning\").", NULL},
	{"title", ORCH_P_STR, ORCH_P_REQUIRED, "Title.", NULL},
	{"status", ORCH_P_STR, 0, "Status, free text (default \"todo\").", NULL},
	{"priority", ORCH_P_INT, 0, "Higher first (default 0).", NULL},
	{"parent_id", ORCH_P_ID, 0, "Parent node (must exist).", NULL},
	{"worktree_id", ORCH_P_ID, 0, "Worktree the work happens in (must exist).", NULL},
	{"owner_session_id", ORCH_P_ID, 0, "Owning session (must exist).", NULL},
	{"summary", ORCH_P_STR, 0, "Summary (blank means none).", NULL},
	{"risk_level", ORCH_P_INT, 0, "Risk, a non-negative integer.", NULL},
	{"token_estimate", ORCH_P_INT, 0, "Estimated tokens, positive.", NULL},
	{"affected_files", ORCH_P_PATHS, 0, "Files it touches (default []).", NULL},
	{"approval_state", ORCH_P_STR, 0, "Only \"none\" (the default); plan.rollup.* move it.", NULL},
	{NULL, 0, 0, NULL, NULL},
};
static const orch_param node_list_params[] = {
	{"node_type", ORCH_P_STR, 0, "Only this type.", NULL},
	{"facet", ORCH_P_STR, 0, "Only this facet.", NULL},
	{"status", ORCH_P_STR, 0, "Only this status.", NULL},
	{"parent_id", ORCH_P_ID, 0, "Only children of this node.", NULL},
	{"limit", ORCH_P_ID, 0, "At most this many nodes (default: all).", NULL},
	{"after_id", ORCH_P_ID, 0, "Start after this node in the list's order (the last id of the previous page).",
	 NULL},
	{NULL, 0, 0, NULL, NULL},
};
static const orch_param edge_create_params[] = {
	{"from_node_id", ORCH_P_ID, ORCH_P_REQUIRED, "Source node (must exist).", NULL},
	{"to_node_id", ORCH_P_ID, ORCH_P_REQUIRED, "Target node (must exist, not the source).", NULL},
	{"edge_type", ORCH_P_STR, ORCH_P_REQUIRED, "contains | depends_on | … (free text, trimmed); "
	 "contains may not close a cycle.", NULL},
	{NULL, 0, 0, NULL, NULL},
};
static const orch_param checklist_params[] = {
	{"node_id", ORCH_P_ID, ORCH_P_REQUIRED, "The node (must exist).", NULL},
	{"item_text", ORCH_P_STR, ORCH_P_REQUIRED, "Text of the item.", NULL},
	{"status", ORCH_P_STR, 0, "Status (new items default to \"todo\"; an update without it keeps the "
	 "item's status).", NULL},
	{"order_no", ORCH_P_INT, 0, "Position, 1 to 1e9; with facet the item's key (default: after the last).", NULL},
	{"facet", ORCH_P_STR, 0, "Facet (default \"planning\").", NULL},
	{NULL, 0, 0, NULL, NULL},
};
static const orch_param snapshot_params[] = {
	{"node_id", ORCH_P_ID, ORCH_P_REQUIRED, "The node (must exist).", NULL},
	{"snapshot_type", ORCH_P_STR, ORCH_P_REQUIRED, "Type, free text (plan.* write replan and rollup).", NULL},
	{"summary", ORCH_P_STR, 0, "Summary (blank means none).", NULL},
	{"affected_files", ORCH_P_PATHS, 0, "Files (omitted when not given).", NULL},
	{"next_action", ORCH_P_STR, 0, "What comes next (blank means none).", NULL},
	{NULL, 0, 0, NULL, NULL},
};

#define NODE_OUT                                                                                   \
	"the node {id, node_type, facet, title, status, priority, parent_id?, worktree_id?, "       \
	"owner_session_id?, summary?, risk_level?, token_estimate?, affected_files, approval_state, " \
	"created_at, updated_at}"

const orch_method orch_graph_methods[] = {
	{"graph.node.create", node_create, ORCH_M_WRITE, node_create_params,
	 "Create a planning-graph node (approval_state none).", NODE_OUT,
	 "{\"node_type\": \"initiative\", \"title\": \"Faster login\"}",
	 "not_found (ENOENT: parent_id, worktree_id or owner_session_id does not exist); invalid_state "
	 "(EINVAL: a slice whose parent is not a plan); invalid_params (EINVAL: approval_state other than none, "
	 "token_estimate <= 0, negative risk_level, a slice without parent_id or over the planning limits)."},
	{"graph.node.list", node_list, 0, node_list_params,
	 "List nodes, priority first, then oldest update, then id.", "[node, ...]",
	 "{\"node_type\": \"slice\", \"parent_id\": 2, \"limit\": 100}", "not_found (ENOENT: after_id)."},
	{"graph.edge.create", edge_create, ORCH_M_WRITE, edge_create_params, "Link two nodes with a typed edge.",
	 "the edge {id, from_node_id, to_node_id, edge_type, created_at}",
	 "{\"from_node_id\": 3, \"to_node_id\": 4, \"edge_type\": \"depends_on\"}",
	 "not_found (ENOENT: an end does not exist); exists (EEXIST: the same edge of that type exists); "
	 "invalid_params (EINVAL: a self-loop, or a contains edge that would close a cycle)."},
	{"graph.checklist.upsert", checklist_upsert, ORCH_M_WRITE, checklist_params,
	 "Insert or update the checklist item (node_id, order_no, facet).",
	 "the item {id, node_id, item_text, status, order_no, facet, created_at, updated_at}",
	 "{\"node_id\": 3, \"order_no\": 1, \"item_text\": \"write the parser\", \"status\": \"done\"}",
	 "not_found (ENOENT: node_id); invalid_params (EINVAL: order_no <= 0, blank facet or status)."},
	{"graph.snapshot.create", snapshot_create, ORCH_M_WRITE, snapshot_params,
	 "Append a snapshot to a node.",
	 "the snapshot {id, node_id, snapshot_type, summary?, affected_files?, next_action?, created_at}",
	 "{\"node_id\": 3, \"snapshot_type\": \"note\", \"summary\": \"parser done\"}",
	 "not_found (ENOENT: node_id)."},
	{NULL, NULL, 0, NULL, NULL, NULL, NULL, NULL},
};
