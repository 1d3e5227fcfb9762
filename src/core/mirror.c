/*
 * The markdown mirror's bookkeeping.  mirror.status reports how far the
 * mirror is behind the database.
 */
#include "orchfs/core.h"
#include "groups.h"

static int mirror_status(orch_ctx *ctx, json_t *p, json_t **result)
{
	int rc = orch_sql_row(ctx, result, "mirror state %lld missing", 1,
			      "SELECT db_version, md_version, md_path, db_version <> md_version AS outdated, "
			      "updated_at FROM mirror_meta WHERE id = 1", "");

	(void)p;
	if (!rc)
		json_object_set_new(*result, "outdated",
				    json_boolean(json_integer_value(json_object_get(*result, "outdated"))));
	return rc;
}

static const orch_param no_params[] = {{NULL, 0, 0, NULL, NULL}};

const orch_method orch_mirror_methods[] = {
	{"mirror.status", mirror_status, 0, no_params,
	 "How far the markdown mirror is behind: db_version counts successful mutating calls, "
	 "md_version is the db_version last rendered.",
	 "{db_version, md_version, md_path, outdated, updated_at}", "{}", "none."},
	{NULL, NULL, 0, NULL, NULL, NULL, NULL, NULL},
};
