/*
 * Internal interface of the planning graph, shared by graph.c (graph.*)
 * and plan.c (plan.*).  Not part of include/orchfs: the fs layer only sees
 * the read views declared in core.h.
 *
 * Every function here runs inside the caller's transaction and leaves
 * rollback to the call path: on error nothing needs undoing by hand.
 */
#ifndef ORCHFS_CORE_GRAPH_H
#define ORCHFS_CORE_GRAPH_H

#include "orchfs/core.h"

/* The columns of a node, in output order (SPEC 4: affected_files_json → affected_files). */
#define ORCH_NODE_SELECT                                                                           \
	"SELECT id, node_type, facet, title, status, priority, parent_id, worktree_id, "            \
	"owner_session_id, summary, risk_level, token_estimate, affected_files_json, "              \
	"approval_state, decided_by_session, decision_reason, created_at, updated_at FROM graph_nodes "

/* A node to insert.  Zero ids and token_estimate mean NULL. */
typedef struct {
	const char *node_type;
	const char *facet;
	const char *title;
	const char *status;
	const char *summary;   /* NULL: none */
	int64_t priority;
	int64_t parent_id;
	int64_t worktree_id;
	int64_t owner_session_id;
	bool has_risk_level;
	int64_t risk_level;
	int64_t token_estimate;
	json_t *affected_files; /* array of normalised paths; NULL: [] */
} orch_node_new;

#define ORCH_NODE_NEW_INIT {.facet = "planning", .status = "todo"}

/* Insert a node (already validated) with approval_state none; *out is the node. */
int orch_graph_node_insert(orch_ctx *ctx, const orch_node_new *n, json_t **out);

/*
 * The node `id` as JSON, or not_found with a message naming `key` (the
 * request key that carried the id, e.g. "parent_id").
 */
int orch_graph_node_find(orch_ctx *ctx, const char *key, int64_t id, json_t **out);

/*
 * Insert edge from → to of `type` after the integrity checks: both ends
 * exist (not_found), no self-loop and no contains cycle (invalid_params),
 * no duplicate of the same type (exists).  *out is the edge.
 */
int orch_graph_edge_insert(orch_ctx *ctx, int64_t from, int64_t to, const char *type, json_t **out);

/* Append a snapshot of node `node_id` (which must exist); files NULL: none. */
int orch_graph_snapshot_insert(orch_ctx *ctx, int64_t node_id, const char *type, const char *summary,
			       json_t *files, const char *next_action, json_t **out);

/*
 * Check a slice against the stored planning rules: token_estimate (0: not
 * given) against max_token_per_slice, the number of files against
 * max_files_per_slice.  `where` names the slice in the message.
 */
int orch_graph_slice_limits(orch_ctx *ctx, const char *where, int64_t token_estimate, size_t nfiles);

/*
 * Validation helpers for params that passed orch_params_validate.
 *
 * orch_graph_ident: a trimmed copy of string param `name` (free with
 * free()), `dflt` duplicated when absent; a given blank value is
 * invalid_params.
 */
int orch_graph_ident(json_t *p, const char *name, const char *dflt, char **out);

/* affected_files of `obj` (an ORCH_P_PATHS param) without duplicates, order kept; [] when absent. */
json_t *orch_graph_files(json_t *obj, const char *name);

/* Optional text: NULL when absent or blank (the reference stores blank as NULL). */
const char *orch_graph_text(json_t *obj, const char *name);

/* A positive integer param `name` (ORCH_P_INT) or 0 when absent; ≤ 0 is invalid_params. */
int orch_graph_positive(json_t *obj, const char *name, const char *where, int64_t *out);

/* Check that an optional owner_session_id / worktree_id names a row (not_found). */
int orch_graph_check_refs(orch_ctx *ctx, int64_t owner_session_id, int64_t worktree_id);

#endif
