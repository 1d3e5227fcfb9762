/*
 * Effects: what a git function did that the caller's transaction decides
 * about.  Each kind (worktree.c, merge.c) supplies its own undo, finish
 * and release; these three entry points only dispatch.
 */
#include <assert.h>

#include "git_int.h"

void orch_git_effect_undo(void *arg)
{
	orch_git_effect *fx = arg;

	assert(fx);
	if (fx->undo)
		fx->undo(fx);
}

void orch_git_effect_finish(void *arg)
{
	orch_git_effect *fx = arg;

	assert(fx);
	if (fx->finish)
		fx->finish(fx);
}

void orch_git_effect_free(void *arg)
{
	orch_git_effect *fx = arg;

	if (fx)
		fx->release(fx);
}
