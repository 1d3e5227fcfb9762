/*
 * The method groups, one per src/core/<group>.c, each NULL-name terminated.
 * Only the method table (methods.c) and each group's own file include this:
 * groups reach each other through the views in orchfs/core.h, never
 * through each other's tables.
 */
#ifndef ORCHFS_CORE_GROUPS_H
#define ORCHFS_CORE_GROUPS_H

#include "orchfs/core.h"

extern const orch_method orch_session_methods[];
extern const orch_method orch_task_methods[];
extern const orch_method orch_mirror_methods[];
extern const orch_method orch_case_methods[];
extern const orch_method orch_scheduler_methods[];
extern const orch_method orch_worktree_methods[];
extern const orch_method orch_lock_methods[];
extern const orch_method orch_graph_methods[];
extern const orch_method orch_plan_methods[];
extern const orch_method orch_merge_methods[];
extern const orch_method orch_wait_methods[];

#endif
