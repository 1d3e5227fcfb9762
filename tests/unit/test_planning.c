/*
 * Core tests of the planning graph and plans, without FUSE: shapes of the
 * replies, every integrity and state rule with its typed error, and that a
 * failed call changes nothing (db_version and row counts unchanged).
 */
#include <stdlib.h>

#include "test.h"

/* Number of rows in `table` (a literal), read through the core's own connection. */
static int64_t rows(test_env *env, const char *table)
{
	char sql[128];
	orch_stmt *st;
	int64_t n = -1;

	snprintf(sql, sizeof(sql), "SELECT COUNT(*) FROM %s", table);
	if (orch_store_prepare(env->ctx.store, sql, &st) != 0)
		return -1;
	if (orch_stmt_step(st) == ORCH_ROW)
		n = orch_stmt_column_int64(st, 0);
	orch_stmt_finalize(st);
	return n;
}

/* Rows of every planning table, to show a failed call left nothing behind. */
static int64_t planning_rows(test_env *env)
{
	return rows(env, "graph_nodes") * 1000000 + rows(env, "graph_edges") * 10000 +
	       rows(env, "node_checklists") * 100 + rows(env, "node_snapshots");
}

/* plan.bootstrap: initiative 1, plan 2, edge 1. */
static void bootstrap(test_env *env)
{
	json_decref(ok(env, "plan.bootstrap", "{\"initiative_title\": \"I\", \"plan_title\": \"P\"}"));
}

/* Expect error `code` whose message contains `needle`, and no change at all. */
#define REJECTS(code, needle, method, ...)                                                         \
	do {                                                                                       \
		int64_t v_ = db_version(env), r_ = planning_rows(env);                             \
		json_t *e_ = fails(env, code, method, __VA_ARGS__);                                \
		const char *m_ = jstr(e_, "message");                                              \
		if (!m_ || !strstr(m_, needle)) {                                                  \
			fprintf(stderr, "  %s:%d: message \"%s\" lacks \"%s\"\n", __FILE__, __LINE__, \
				m_ ? m_ : "(null)", needle);                                       \
			test_failed = 1;                                                           \
		}                                                                                  \
		json_decref(e_);                                                                   \
		CHECK_EQ_INT(db_version(env), v_);                                                 \
		CHECK_EQ_INT(planning_rows(env), r_);                                              \
	} while (0)

TEST(plan_bootstrap_shape)
{
	json_t *r = ok(env, "plan.bootstrap", "{\"initiative_title\": \"Faster login\", \"plan_title\": \"Login v2\", "
		       "\"priority\": 4, \"summary\": \"why\"}");
	CHECK_EQ_INT(jint(r, "initiative.id"), 1);
	CHECK_EQ_STR(jstr(r, "initiative.node_type"), "initiative");
	CHECK_EQ_STR(jstr(r, "initiative.status"), "in_progress");
	CHECK_EQ_STR(jstr(r, "initiative.facet"), "planning");
	CHECK_EQ_STR(jstr(r, "initiative.summary"), "why");
	CHECK_EQ_STR(jstr(r, "initiative.approval_state"), "none");
	CHECK_EQ_INT(jint(r, "initiative.priority"), 4);
	CHECK(json_object_get(json_object_get(r, "initiative"), "parent_id") == NULL);
	CHECK_EQ_INT(jint(r, "plan.id"), 2);
	CHECK_EQ_STR(jstr(r, "plan.node_type"), "plan");
	CHECK_EQ_STR(jstr(r, "plan.status"), "todo");
	CHECK_EQ_INT(jint(r, "plan.parent_id"), 1);
	CHECK_EQ_INT(jint(r, "plan.priority"), 4);
	CHECK(json_object_get(json_object_get(r, "plan"), "summary") == NULL);
	CHECK(json_is_array(json_object_get(json_object_get(r, "plan"), "affected_files")));
	CHECK_EQ_INT(jint(r, "edge.from_node_id"), 1);
	CHECK_EQ_INT(jint(r, "edge.to_node_id"), 2);
	CHECK_EQ_STR(jstr(r, "edge.edge_type"), "contains");
	/* Three rows, one call, one db_version. */
	CHECK_EQ_INT(db_version(env), 1);
	json_decref(r);
}

TEST(plan_bootstrap_rejects)
{
	REJECTS(ORCH_EINVALID_PARAMS, "plan_title", "plan.bootstrap", "{\"initiative_title\": \"I\"}");
	REJECTS(ORCH_EINVALID_PARAMS, "plan_title must not be blank", "plan.bootstrap",
		"{\"initiative_title\": \"I\", \"plan_title\": \"  \"}");
	REJECTS(ORCH_ENOTFOUND, "owner_session_id 5", "plan.bootstrap",
		"{\"initiative_title\": \"I\", \"plan_title\": \"P\", \"owner_session_id\": 5}");
	REJECTS(ORCH_EINVALID_PARAMS, "owner_session_id", "plan.bootstrap",
		"{\"initiative_title\": \"I\", \"plan_title\": \"P\", \"owner_session_id\": 0}");
	CHECK_EQ_INT(rows(env, "graph_nodes"), 0);
}

TEST(plan_slice_generate_shape)
{
	json_decref(ok(env, "session.open", "{}"));
	bootstrap(env);
	int64_t v = db_version(env);
	json_t *r = ok(env, "plan.slice.generate", "{\"plan_node_id\": 2, \"owner_session_id\": 1, \"slice_specs\": ["
		       "{\"title\": \"parser\", \"token_estimate\": 4000, \"priority\": 2, \"summary\": \"s\", "
		       "\"affected_files\": [\"./src//parse.c\", \"src/parse.c\", \"src/x/../lex.c\"]},"
		       "{\"title\": \"docs\"}]}");
	CHECK_EQ_INT(jint(r, "plan_node_id"), 2);
	CHECK_EQ_INT(json_array_size(json_object_get(r, "slices")), 2);
	CHECK_EQ_STR(jstr(r, "slices.0.node_type"), "slice");
	CHECK_EQ_STR(jstr(r, "slices.0.status"), "todo");
	CHECK_EQ_STR(jstr(r, "slices.0.facet"), "planning");
	CHECK_EQ_INT(jint(r, "slices.0.parent_id"), 2);
	CHECK_EQ_INT(jint(r, "slices.0.owner_session_id"), 1);
	CHECK_EQ_INT(jint(r, "slices.0.token_estimate"), 4000);
	CHECK_EQ_INT(jint(r, "slices.0.priority"), 2);
	CHECK_EQ_STR(jstr(r, "slices.0.summary"), "s");
	/* Normalised, duplicates dropped, order kept. */
	CHECK_EQ_INT(json_array_size(json_object_get(json_array_get(json_object_get(r, "slices"), 0),
						      "affected_files")), 2);
	CHECK_EQ_STR(jstr(r, "slices.0.affected_files.0"), "src/parse.c");
	CHECK_EQ_STR(jstr(r, "slices.0.affected_files.1"), "src/lex.c");
	CHECK(json_object_get(json_array_get(json_object_get(r, "slices"), 1), "token_estimate") == NULL);
	CHECK_EQ_INT(json_array_size(json_object_get(r, "edges")), 2);
	CHECK_EQ_INT(jint(r, "edges.1.from_node_id"), 2);
	CHECK_EQ_INT(jint(r, "edges.1.to_node_id"), jint(r, "slices.1.id"));
	CHECK_EQ_STR(jstr(r, "edges.1.edge_type"), "contains");
	CHECK_EQ_INT(db_version(env), v + 1);
	json_decref(r);
}

TEST(plan_slice_generate_all_or_nothing)
{
	bootstrap(env);
	/* A bad spec anywhere in the list: no slice at all, whatever came before it. */
	REJECTS(ORCH_EINVALID_PARAMS, "slice_specs[2].title must not be blank", "plan.slice.generate",
		"{\"plan_node_id\": 2, \"slice_specs\": [{\"title\": \"a\"}, {\"title\": \"b\"}, {\"title\": \" \"}]}");
	REJECTS(ORCH_EINVALID_PARAMS, "slice_specs[1].title is required", "plan.slice.generate",
		"{\"plan_node_id\": 2, \"slice_specs\": [{\"title\": \"a\"}, {\"summary\": \"b\"}]}");
	REJECTS(ORCH_EINVALID_PARAMS, "slice_specs[1]", "plan.slice.generate",
		"{\"plan_node_id\": 2, \"slice_specs\": [{\"title\": \"a\"}, {\"title\": \"b\", \"tokens\": 5}]}");
	REJECTS(ORCH_EINVALID_PARAMS, "slice_specs[1].token_estimate 18001 exceeds", "plan.slice.generate",
		"{\"plan_node_id\": 2, \"slice_specs\": [{\"title\": \"a\", \"token_estimate\": 18000}, "
		"{\"title\": \"b\", \"token_estimate\": 18001}]}");
	REJECTS(ORCH_EINVALID_PARAMS, "slice_specs[0].token_estimate must be a positive integer, got 0",
		"plan.slice.generate", "{\"plan_node_id\": 2, \"slice_specs\": [{\"title\": \"a\", \"token_estimate\": 0}]}");
	REJECTS(ORCH_EINVALID_PARAMS, "slice_specs[1].affected_files lists 13 files", "plan.slice.generate",
		"{\"plan_node_id\": 2, \"slice_specs\": [{\"title\": \"a\"}, {\"title\": \"b\", \"affected_files\": "
		"[\"1\",\"2\",\"3\",\"4\",\"5\",\"6\",\"7\",\"8\",\"9\",\"10\",\"11\",\"12\",\"13\"]}]}");
	REJECTS(ORCH_EINVALID_PARAMS, "leaves the repository", "plan.slice.generate",
		"{\"plan_node_id\": 2, \"slice_specs\": [{\"title\": \"a\"}, {\"title\": \"b\", \"affected_files\": "
		"[\"../x\"]}]}");
	REJECTS(ORCH_EINVALID_PARAMS, "repository-relative", "plan.slice.generate",
		"{\"plan_node_id\": 2, \"slice_specs\": [{\"title\": \"a\", \"affected_files\": [\"/etc/passwd\"]}]}");
	REJECTS(ORCH_EINVALID_PARAMS, "at least one", "plan.slice.generate",
		"{\"plan_node_id\": 2, \"slice_specs\": []}");
	REJECTS(ORCH_EINVALID_PARAMS, "slice_specs[0] must be an object", "plan.slice.generate",
		"{\"plan_node_id\": 2, \"slice_specs\": [\"a\"]}");
	/* 12 files, duplicates counted once, is within the limit. */
	json_decref(ok(env, "plan.slice.generate", "{\"plan_node_id\": 2, \"slice_specs\": [{\"title\": \"a\", "
		       "\"affected_files\": [\"1\",\"2\",\"3\",\"4\",\"5\",\"6\",\"7\",\"8\",\"9\",\"10\",\"11\",\"12\","
		       "\"./12\"]}]}"));
	CHECK_EQ_INT(rows(env, "graph_nodes"), 3);
}

TEST(plan_slice_generate_needs_a_plan)
{
	bootstrap(env);
	json_t *e;
	REJECTS(ORCH_ENOTFOUND, "plan_node_id 9", "plan.slice.generate",
		"{\"plan_node_id\": 9, \"slice_specs\": [{\"title\": \"a\"}]}");
	REJECTS(ORCH_EINVALID_STATE, "not a plan", "plan.slice.generate",
		"{\"plan_node_id\": 1, \"slice_specs\": [{\"title\": \"a\"}]}");
	e = fails(env, ORCH_EINVALID_STATE, "plan.slice.generate", "{\"plan_node_id\": 1, \"slice_specs\": [{\"title\": \"a\"}]}");
	CHECK_EQ_STR(jstr(e, "details.state"), "initiative");
	json_decref(e);
	REJECTS(ORCH_ENOTFOUND, "owner_session_id 3", "plan.slice.generate",
		"{\"plan_node_id\": 2, \"owner_session_id\": 3, \"slice_specs\": [{\"title\": \"a\"}]}");
	REJECTS(ORCH_EINVALID_PARAMS, "slice_specs is required", "plan.slice.generate", "{\"plan_node_id\": 2}");
}

TEST(plan_slice_limits_are_read_from_the_store)
{
	bootstrap(env);
	CHECK_EQ_INT(orch_sql_exec(&env->ctx, "UPDATE planning_rules SET max_token_per_slice = 100, "
				   "max_files_per_slice = 1", ""), 0);
	REJECTS(ORCH_EINVALID_PARAMS, "max_token_per_slice 100", "plan.slice.generate",
		"{\"plan_node_id\": 2, \"slice_specs\": [{\"title\": \"a\", \"token_estimate\": 101}]}");
	REJECTS(ORCH_EINVALID_PARAMS, "max_files_per_slice 1", "plan.slice.generate",
		"{\"plan_node_id\": 2, \"slice_specs\": [{\"title\": \"a\", \"affected_files\": [\"a\", \"b\"]}]}");
	json_decref(ok(env, "plan.slice.generate", "{\"plan_node_id\": 2, \"slice_specs\": "
		       "[{\"title\": \"a\", \"token_estimate\": 100, \"affected_files\": [\"a\"]}]}"));
	/* graph.node.create of a slice obeys the same limits. */
	REJECTS(ORCH_EINVALID_PARAMS, "max_token_per_slice", "graph.node.create",
		"{\"node_type\": \"slice\", \"title\": \"s\", \"parent_id\": 2, \"token_estimate\": 500}");
}

TEST(graph_node_create_and_list)
{
	json_decref(ok(env, "session.open", "{}"));
	json_t *n = ok(env, "graph.node.create", "{\"node_type\": \" epic \", \"title\": \"E\", \"priority\": 1, "
		       "\"risk_level\": 0, \"token_estimate\": 10, \"affected_files\": [\"a//b\"], "
		       "\"owner_session_id\": 1, \"worktree_id\": 1, \"summary\": \"  \", \"approval_state\": \"none\"}");
	CHECK_EQ_INT(jint(n, "id"), 1);
	CHECK_EQ_STR(jstr(n, "node_type"), "epic");
	CHECK_EQ_STR(jstr(n, "facet"), "planning");
	CHECK_EQ_STR(jstr(n, "status"), "todo");
	CHECK_EQ_STR(jstr(n, "approval_state"), "none");
	CHECK(json_object_get(n, "risk_level") && jint(n, "risk_level") == 0);
	CHECK_EQ_INT(jint(n, "token_estimate"), 10);
	CHECK_EQ_STR(jstr(n, "affected_files.0"), "a/b");
	CHECK(json_object_get(n, "summary") == NULL);
	CHECK(json_object_get(n, "affected_files_json") == NULL);
	json_decref(n);
	json_decref(ok(env, "graph.node.create", "{\"node_type\": \"task\", \"title\": \"A\", \"parent_id\": 1, "
		       "\"facet\": \"impl\", \"status\": \"doing\"}"));
	json_decref(ok(env, "graph.node.create", "{\"node_type\": \"task\", \"title\": \"B\", \"parent_id\": 1, "
		       "\"priority\": 5}"));
	json_t *l = ok(env, "graph.node.list", "{\"parent_id\": 1}");
	CHECK_EQ_INT(json_array_size(l), 2);
	CHECK_EQ_STR(jstr(l, "0.title"), "B");
	json_decref(l);
	l = ok(env, "graph.node.list", "{\"facet\": \"impl\"}");
	CHECK_EQ_INT(json_array_size(l), 1);
	CHECK_EQ_STR(jstr(l, "0.status"), "doing");
	json_decref(l);
	l = ok(env, "graph.node.list", "{}");
	CHECK_EQ_INT(json_array_size(l), 3);
	CHECK_EQ_STR(jstr(l, "0.title"), "B");
	CHECK_EQ_STR(jstr(l, "1.title"), "E");
	json_decref(l);
	l = ok(env, "graph.node.list", "{\"node_type\": \"task\", \"status\": \"todo\"}");
	CHECK_EQ_INT(json_array_size(l), 1);
	json_decref(l);
}

TEST(graph_node_create_rejects)
{
	bootstrap(env);
	json_t *e;
	REJECTS(ORCH_EINVALID_PARAMS, "approval_state must be \"none\"", "graph.node.create",
		"{\"node_type\": \"x\", \"title\": \"t\", \"approval_state\": \"approved\"}");
	REJECTS(ORCH_ENOTFOUND, "parent_id 42", "graph.node.create", "{\"node_type\": \"x\", \"title\": \"t\", \"parent_id\": 42}");
	REJECTS(ORCH_ENOTFOUND, "owner_session_id 7", "graph.node.create",
		"{\"node_type\": \"x\", \"title\": \"t\", \"owner_session_id\": 7}");
	REJECTS(ORCH_ENOTFOUND, "worktree_id 7", "graph.node.create",
		"{\"node_type\": \"x\", \"title\": \"t\", \"worktree_id\": 7}");
	REJECTS(ORCH_EINVALID_PARAMS, "token_estimate must be a positive integer, got -5", "graph.node.create",
		"{\"node_type\": \"x\", \"title\": \"t\", \"token_estimate\": -5}");
	REJECTS(ORCH_EINVALID_PARAMS, "risk_level", "graph.node.create",
		"{\"node_type\": \"x\", \"title\": \"t\", \"risk_level\": -1}");
	REJECTS(ORCH_EINVALID_PARAMS, "facet must not be blank", "graph.node.create",
		"{\"node_type\": \"x\", \"title\": \"t\", \"facet\": \"\"}");
	REJECTS(ORCH_EINVALID_PARAMS, "node_type must not be blank", "graph.node.create", "{\"node_type\": \" \", \"title\": \"t\"}");
	REJECTS(ORCH_EINVALID_PARAMS, "title is required", "graph.node.create", "{\"node_type\": \"x\"}");
	REJECTS(ORCH_EINVALID_PARAMS, "affected_files", "graph.node.create",
		"{\"node_type\": \"x\", \"title\": \"t\", \"affected_files\": [\"a\", \"\"]}");
	REJECTS(ORCH_EINVALID_PARAMS, "parent_id", "graph.node.create",
		"{\"node_type\": \"x\", \"title\": \"t\", \"parent_id\": 1.5}");
	/* A slice belongs under a plan. */
	REJECTS(ORCH_EINVALID_PARAMS, "a slice needs parent_id", "graph.node.create", "{\"node_type\": \"slice\", \"title\": \"t\"}");
	REJECTS(ORCH_EINVALID_STATE, "must be a plan", "graph.node.create",
		"{\"node_type\": \"slice\", \"title\": \"t\", \"parent_id\": 1}");
	e = fails(env, ORCH_EINVALID_STATE, "graph.node.create", "{\"node_type\": \"slice\", \"title\": \"t\", \"parent_id\": 1}");
	CHECK_EQ_STR(jstr(e, "details.state"), "initiative");
	json_decref(e);
	json_decref(ok(env, "graph.node.create", "{\"node_type\": \"slice\", \"title\": \"t\", \"parent_id\": 2}"));
}

TEST(graph_edge_rules)
{
	bootstrap(env); /* 1 contains 2 */
	json_decref(ok(env, "graph.node.create", "{\"node_type\": \"x\", \"title\": \"3\"}"));
	json_decref(ok(env, "graph.node.create", "{\"node_type\": \"x\", \"title\": \"4 (child of 2 by parent)\", "
		       "\"parent_id\": 2}"));
	json_t *e = ok(env, "graph.edge.create", "{\"from_node_id\": 2, \"to_node_id\": 3, \"edge_type\": \" contains \"}");
	CHECK_EQ_INT(jint(e, "id"), 2);
	CHECK_EQ_STR(jstr(e, "edge_type"), "contains");
	CHECK(jstr(e, "created_at") != NULL);
	json_decref(e);

	REJECTS(ORCH_ENOTFOUND, "from_node_id 9", "graph.edge.create",
		"{\"from_node_id\": 9, \"to_node_id\": 1, \"edge_type\": \"depends_on\"}");
	REJECTS(ORCH_ENOTFOUND, "to_node_id 9", "graph.edge.create",
		"{\"from_node_id\": 1, \"to_node_id\": 9, \"edge_type\": \"depends_on\"}");
	REJECTS(ORCH_EEXISTS, "edge 2 already links node 2 to node 3 as contains", "graph.edge.create",
		"{\"from_node_id\": 2, \"to_node_id\": 3, \"edge_type\": \"contains\"}");
	REJECTS(ORCH_EINVALID_PARAMS, "to itself", "graph.edge.create",
		"{\"from_node_id\": 3, \"to_node_id\": 3, \"edge_type\": \"contains\"}");
	REJECTS(ORCH_EINVALID_PARAMS, "to itself", "graph.edge.create",
		"{\"from_node_id\": 3, \"to_node_id\": 3, \"edge_type\": \"depends_on\"}");
	/* Direct and transitive contains cycles: 1 ⊃ 2 ⊃ 3. */
	REJECTS(ORCH_EINVALID_PARAMS, "would close a cycle", "graph.edge.create",
		"{\"from_node_id\": 2, \"to_node_id\": 1, \"edge_type\": \"contains\"}");
	REJECTS(ORCH_EINVALID_PARAMS, "would close a cycle", "graph.edge.create",
		"{\"from_node_id\": 3, \"to_node_id\": 1, \"edge_type\": \"contains\"}");
	/* Through a parent link: 4's parent is 2. */
	REJECTS(ORCH_EINVALID_PARAMS, "would close a cycle", "graph.edge.create",
		"{\"from_node_id\": 4, \"to_node_id\": 1, \"edge_type\": \"contains\"}");
	REJECTS(ORCH_EINVALID_PARAMS, "edge_type is required", "graph.edge.create", "{\"from_node_id\": 1, \"to_node_id\": 3}");
	REJECTS(ORCH_EINVALID_PARAMS, "from_node_id", "graph.edge.create",
		"{\"from_node_id\": 0, \"to_node_id\": 3, \"edge_type\": \"x\"}");

	/* Other types may point back; the same ends with another type is another edge. */
	json_decref(ok(env, "graph.edge.create", "{\"from_node_id\": 3, \"to_node_id\": 1, \"edge_type\": \"depends_on\"}"));
	json_decref(ok(env, "graph.edge.create", "{\"from_node_id\": 2, \"to_node_id\": 3, \"edge_type\": \"depends_on\"}"));
	/* A diamond is not a cycle. */
	json_decref(ok(env, "graph.edge.create", "{\"from_node_id\": 1, \"to_node_id\": 3, \"edge_type\": \"contains\"}"));

	json_t *edges = NULL;
	CHECK_EQ_INT(orch_node_edges_json(&env->ctx, 3, &edges), 0);
	CHECK_EQ_INT(json_array_size(edges), 4);
	CHECK_EQ_INT(jint(edges, "0.id"), 2);
	CHECK_EQ_INT(jint(edges, "3.id"), 5);
	json_decref(edges);
}

TEST(graph_checklist_upsert)
{
	bootstrap(env);
	json_t *i = ok(env, "graph.checklist.upsert", "{\"node_id\": 2, \"item_text\": \"one\"}");
	CHECK_EQ_INT(jint(i, "id"), 1);
	CHECK_EQ_INT(jint(i, "order_no"), 1);
	CHECK_EQ_STR(jstr(i, "status"), "todo");
	CHECK_EQ_STR(jstr(i, "facet"), "planning");
	json_decref(i);
	i = ok(env, "graph.checklist.upsert", "{\"node_id\": 2, \"item_text\": \"two\"}");
	CHECK_EQ_INT(jint(i, "order_no"), 2);
	json_decref(i);
	/* Same key: updated in place, status kept when not given. */
	json_decref(ok(env, "graph.checklist.upsert", "{\"node_id\": 2, \"item_text\": \"one\", \"order_no\": 1, "
		       "\"status\": \"done\"}"));
	i = ok(env, "graph.checklist.upsert", "{\"node_id\": 2, \"item_text\": \"one, reworded\", \"order_no\": 1}");
	CHECK_EQ_INT(jint(i, "id"), 1);
	CHECK_EQ_STR(jstr(i, "status"), "done");
	CHECK_EQ_STR(jstr(i, "item_text"), "one, reworded");
	json_decref(i);
	/* Another facet is another key. */
	i = ok(env, "graph.checklist.upsert", "{\"node_id\": 2, \"item_text\": \"review\", \"order_no\": 1, "
	       "\"facet\": \"review\"}");
	CHECK_EQ_INT(jint(i, "id"), 3);
	json_decref(i);
	CHECK_EQ_INT(rows(env, "node_checklists"), 3);

	REJECTS(ORCH_ENOTFOUND, "node_id 8", "graph.checklist.upsert", "{\"node_id\": 8, \"item_text\": \"x\"}");
	REJECTS(ORCH_EINVALID_PARAMS, "order_no must be a positive integer, got 0", "graph.checklist.upsert",
		"{\"node_id\": 2, \"item_text\": \"x\", \"order_no\": 0}");
	REJECTS(ORCH_EINVALID_PARAMS, "got -3", "graph.checklist.upsert",
		"{\"node_id\": 2, \"item_text\": \"x\", \"order_no\": -3}");
	REJECTS(ORCH_EINVALID_PARAMS, "item_text must not be blank", "graph.checklist.upsert",
		"{\"node_id\": 2, \"item_text\": \"\"}");
	REJECTS(ORCH_EINVALID_PARAMS, "status must not be blank", "graph.checklist.upsert",
		"{\"node_id\": 2, \"item_text\": \"x\", \"status\": \" \"}");

	json_t *l = NULL;
	CHECK_EQ_INT(orch_node_checklist_json(&env->ctx, 2, &l), 0);
	CHECK_EQ_INT(json_array_size(l), 3);
	CHECK_EQ_STR(jstr(l, "0.item_text"), "one, reworded");
	CHECK_EQ_STR(jstr(l, "1.item_text"), "two");
	CHECK_EQ_STR(jstr(l, "2.facet"), "review");
	json_decref(l);
}

TEST(graph_snapshot_and_replan)
{
	bootstrap(env);
	json_t *s = ok(env, "graph.snapshot.create", "{\"node_id\": 2, \"snapshot_type\": \"note\", \"summary\": \"s\", "
		       "\"next_action\": \"\"}");
	CHECK_EQ_STR(jstr(s, "snapshot_type"), "note");
	CHECK_EQ_STR(jstr(s, "summary"), "s");
	CHECK(json_object_get(s, "next_action") == NULL);
	CHECK(json_object_get(s, "affected_files") == NULL);
	json_decref(s);
	json_t *before = ok(env, "graph.node.list", "{}");
	s = ok(env, "plan.slice.replan", "{\"node_id\": 2, \"reason\": \"scope_change\", \"affected_files\": [\"a/./b\"], "
	       "\"next_action\": \"split\"}");
	CHECK_EQ_INT(jint(s, "id"), 2);
	CHECK_EQ_STR(jstr(s, "snapshot_type"), "replan");
	CHECK_EQ_STR(jstr(s, "summary"), "scope_change");
	CHECK_EQ_STR(jstr(s, "next_action"), "split");
	CHECK_EQ_STR(jstr(s, "affected_files.0"), "a/b");
	json_decref(s);
	/* A replan only records; the node is unchanged. */
	json_t *after = ok(env, "graph.node.list", "{}");
	CHECK(json_equal(before, after));
	json_decref(before);
	json_decref(after);

	REJECTS(ORCH_ENOTFOUND, "node_id 5", "graph.snapshot.create", "{\"node_id\": 5, \"snapshot_type\": \"note\"}");
	REJECTS(ORCH_EINVALID_PARAMS, "snapshot_type", "graph.snapshot.create", "{\"node_id\": 2}");
	REJECTS(ORCH_ENOTFOUND, "node_id 5", "plan.slice.replan", "{\"node_id\": 5, \"reason\": \"r\"}");
	REJECTS(ORCH_EINVALID_PARAMS, "reason must not be blank", "plan.slice.replan", "{\"node_id\": 2, \"reason\": \"\"}");

	json_t *l = NULL;
	CHECK_EQ_INT(orch_node_snapshots_json(&env->ctx, 2, &l), 0);
	CHECK_EQ_INT(json_array_size(l), 2);
	CHECK_EQ_STR(jstr(l, "1.snapshot_type"), "replan");
	json_decref(l);
}

TEST(plan_rollup_preview_counts)
{
	bootstrap(env);
	json_decref(ok(env, "plan.slice.generate", "{\"plan_node_id\": 2, \"slice_specs\": [{\"title\": \"a\"}, "
		       "{\"title\": \"b\"}, {\"title\": \"c\"}]}")); /* 3, 4, 5 */
	json_decref(ok(env, "graph.node.create", "{\"node_type\": \"task\", \"title\": \"t\", \"parent_id\": 3, "
		       "\"status\": \"done\"}")); /* 6 */
	json_decref(ok(env, "plan.rollup.submit", "{\"node_id\": 4}"));
	/* Reached twice (parent link and edge): counted once. */
	json_decref(ok(env, "graph.edge.create", "{\"from_node_id\": 2, \"to_node_id\": 6, \"edge_type\": \"contains\"}"));

	json_t *p = ok(env, "plan.rollup.preview", "{\"parent_node_id\": 2}");
	CHECK_EQ_INT(jint(p, "parent_node_id"), 2);
	CHECK_EQ_INT(jint(p, "child_count"), 4);
	CHECK_EQ_INT(json_array_size(json_object_get(p, "children")), 4);
	CHECK_EQ_INT(jint(p, "status_counts.todo"), 2);
	CHECK_EQ_INT(jint(p, "status_counts.in_review"), 1);
	CHECK_EQ_INT(jint(p, "status_counts.done"), 1);
	CHECK_EQ_INT(jint(p, "descendant_count"), 4);
	json_decref(p);

	p = ok(env, "plan.rollup.preview", "{\"parent_node_id\": 1}");
	CHECK_EQ_INT(jint(p, "child_count"), 1);
	CHECK_EQ_INT(jint(p, "status_counts.todo"), 1);
	CHECK_EQ_INT(jint(p, "descendant_count"), 5);
	CHECK_EQ_INT(jint(p, "descendant_status_counts.todo"), 3);
	CHECK_EQ_INT(jint(p, "descendant_status_counts.in_review"), 1);
	CHECK_EQ_INT(jint(p, "descendant_status_counts.done"), 1);
	/* Sorted keys: the same state renders the same bytes. */
	char *s = json_dumps(json_object_get(p, "descendant_status_counts"), JSON_COMPACT);
	CHECK_EQ_STR(s, "{\"done\":1,\"in_review\":1,\"todo\":3}");
	free(s);
	json_decref(p);

	p = ok(env, "plan.rollup.preview", "{\"parent_node_id\": 5}");
	CHECK_EQ_INT(jint(p, "child_count"), 0);
	CHECK_EQ_INT(jint(p, "descendant_count"), 0);
	CHECK(json_object_size(json_object_get(p, "status_counts")) == 0);
	json_decref(p);
	json_decref(fails(env, ORCH_ENOTFOUND, "plan.rollup.preview", "{\"parent_node_id\": 99}"));
	json_decref(fails(env, ORCH_EINVALID_PARAMS, "plan.rollup.preview", "{}"));
}

TEST(plan_rollup_state_machine)
{
	bootstrap(env);
	json_t *e;
	/* Only a pending node can be approved or rejected. */
	REJECTS(ORCH_EINVALID_STATE, "needs approval_state pending, but node 2 is none", "plan.rollup.approve",
		"{\"node_id\": 2}");
	REJECTS(ORCH_EINVALID_STATE, "is none", "plan.rollup.reject", "{\"node_id\": 2}");
	REJECTS(ORCH_ENOTFOUND, "node_id 9", "plan.rollup.approve", "{\"node_id\": 9}");
	REJECTS(ORCH_ENOTFOUND, "node_id 9", "plan.rollup.reject", "{\"node_id\": 9}");
	REJECTS(ORCH_ENOTFOUND, "node_id 9", "plan.rollup.submit", "{\"node_id\": 9}");

	int64_t v = db_version(env);
	json_t *r = ok(env, "plan.rollup.submit", "{\"node_id\": 2, \"summary\": \"ready\", \"affected_files\": [\"x\"], "
		       "\"next_action\": \"review\"}");
	CHECK_EQ_INT(db_version(env), v + 1);
	CHECK_EQ_STR(jstr(r, "snapshot.snapshot_type"), "rollup");
	CHECK_EQ_STR(jstr(r, "snapshot.summary"), "ready");
	CHECK_EQ_STR(jstr(r, "snapshot.affected_files.0"), "x");
	CHECK_EQ_STR(jstr(r, "node.approval_state"), "pending");
	CHECK_EQ_STR(jstr(r, "node.status"), "in_review");
	CHECK_EQ_INT(jint(r, "preview.parent_node_id"), 2);
	CHECK_EQ_INT(jint(r, "preview.child_count"), 0);
	json_decref(r);

	REJECTS(ORCH_EINVALID_STATE, "needs approval_state none or rejected, but node 2 is pending",
		"plan.rollup.submit", "{\"node_id\": 2}");
	e = fails(env, ORCH_EINVALID_STATE, "plan.rollup.submit", "{\"node_id\": 2}");
	CHECK_EQ_STR(jstr(e, "details.state"), "pending");
	json_decref(e);

	r = ok(env, "plan.rollup.reject", "{\"node_id\": 2}");
	CHECK_EQ_STR(jstr(r, "approval_state"), "rejected");
	CHECK_EQ_STR(jstr(r, "status"), "blocked");
	json_decref(r);
	REJECTS(ORCH_EINVALID_STATE, "is rejected", "plan.rollup.reject", "{\"node_id\": 2}");
	REJECTS(ORCH_EINVALID_STATE, "is rejected", "plan.rollup.approve", "{\"node_id\": 2}");

	/* Rejected → pending again → approved, which is final. */
	json_decref(ok(env, "plan.rollup.submit", "{\"node_id\": 2}"));
	r = ok(env, "plan.rollup.approve", "{\"node_id\": 2}");
	CHECK_EQ_STR(jstr(r, "approval_state"), "approved");
	CHECK_EQ_STR(jstr(r, "status"), "done");
	json_decref(r);
	REJECTS(ORCH_EINVALID_STATE, "is approved", "plan.rollup.approve", "{\"node_id\": 2}");
	REJECTS(ORCH_EINVALID_STATE, "is approved", "plan.rollup.reject", "{\"node_id\": 2}");
	REJECTS(ORCH_EINVALID_STATE, "is approved", "plan.rollup.submit", "{\"node_id\": 2}");
	e = fails(env, ORCH_EINVALID_STATE, "plan.rollup.submit", "{\"node_id\": 2}");
	CHECK_EQ_STR(jstr(e, "details.state"), "approved");
	json_decref(e);
	CHECK_EQ_INT(rows(env, "node_snapshots"), 2);
}

TEST(plan_node_views)
{
	bootstrap(env);
	json_t *n = NULL, *l = NULL;
	CHECK_EQ_INT(orch_node_json(&env->ctx, 2, &n), 0);
	CHECK_EQ_STR(jstr(n, "title"), "P");
	json_decref(n);
	CHECK_EQ_INT(orch_node_json(&env->ctx, 3, &n), ORCH_ENOTFOUND);
	CHECK_EQ_INT(orch_node_checklist_json(&env->ctx, 2, &l), 0);
	CHECK(json_is_array(l) && json_array_size(l) == 0);
	json_decref(l);
	CHECK_EQ_INT(orch_node_edges_json(&env->ctx, 1, &l), 0);
	CHECK_EQ_INT(json_array_size(l), 1);
	json_decref(l);
	/* call_id makes plan.slice.generate idempotent like any other method. */
	json_t *a = ok(env, "plan.slice.generate", "{\"plan_node_id\": 2, \"slice_specs\": [{\"title\": \"a\"}], "
		       "\"call_id\": \"gen-1\"}");
	json_t *b = ok(env, "plan.slice.generate", "{\"plan_node_id\": 2, \"slice_specs\": [{\"title\": \"a\"}], "
		       "\"call_id\": \"gen-1\"}");
	CHECK(json_equal(a, b));
	CHECK_EQ_INT(rows(env, "graph_nodes"), 3);
	json_decref(a);
	json_decref(b);
}

TEST(checklist_order_no_is_bounded)
{
	json_decref(ok(env, "plan.bootstrap", "{\"initiative_title\": \"I\", \"plan_title\": \"P\"}"));
	int64_t v = db_version(env);
	json_t *e = fails(env, ORCH_EINVALID_PARAMS, "graph.checklist.upsert",
			  "{\"node_id\": 2, \"order_no\": 9223372036854775807, \"item_text\": \"last\"}");
	CHECK(strstr(jstr(e, "message"), "order_no") != NULL);
	json_decref(e);
	CHECK_EQ_INT(db_version(env), v);
	json_decref(ok(env, "graph.checklist.upsert", "{\"node_id\": 2, \"order_no\": 1000000000, \"item_text\": \"a\"}"));
	json_t *b = ok(env, "graph.checklist.upsert", "{\"node_id\": 2, \"item_text\": \"b\"}");
	CHECK_EQ_INT(jint(b, "order_no"), 1000000001);
	CHECK_EQ_INT(jint(b, "id"), 2);
	json_decref(b);
}
