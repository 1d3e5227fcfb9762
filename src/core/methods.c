/*
 * The method table: every group's methods, in the order ctl/ lists them.
 */
#include <pthread.h>
#include <string.h>

#include "orchfs/core.h"
#include "groups.h"

static const orch_method *const groups[] = {
	orch_session_methods,
	orch_task_methods,

	/* case lifecycle */
	orch_case_methods,

	/* isolation */
	orch_scheduler_methods,
	orch_worktree_methods,
	orch_lock_methods,

	/* planning graph */
	orch_graph_methods,
	orch_plan_methods,

	/* merge pipeline */
	orch_merge_methods,

	orch_mirror_methods,

	/* change feed */
	orch_wait_methods,
};

#define MAX_METHODS 128

/* Written once, under pthread_once, then read by every thread. */
static const orch_method *table[MAX_METHODS + 1];
static size_t count;
static pthread_once_t built = PTHREAD_ONCE_INIT;

static void build_once(void)
{
	for (size_t g = 0; g < sizeof(groups) / sizeof(groups[0]); g++)
		for (const orch_method *m = groups[g]; m->name && count < MAX_METHODS; m++)
			table[count++] = m;
}

static void build(void)
{
	pthread_once(&built, build_once);
}

const orch_method *const *orch_methods(void)
{
	build();
	return table;
}

size_t orch_method_count(void)
{
	build();
	return count;
}

const orch_method *orch_method_at(size_t i)
{
	build();
	return i < count ? table[i] : NULL;
}

const orch_method *orch_method_find(const char *name)
{
	build();
	for (size_t i = 0; i < count; i++)
		if (strcmp(table[i]->name, name) == 0)
			return table[i];
	return NULL;
}

bool orch_method_takes_session(const orch_method *m)
{
	for (const orch_param *p = m->params; p && p->name; p++)
		if (strcmp(p->name, "session_id") == 0 || strcmp(p->name, "requester_session_id") == 0 ||
		    strcmp(p->name, "owner_session") == 0)
			return true;
	return false;
}
