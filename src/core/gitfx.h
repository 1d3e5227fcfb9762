/*
 * Git effects and the call's transaction: the one place where core ties
 * what a git function did (orch_git_effect) to the call's outcome.
 */
#ifndef ORCHFS_CORE_GITFX_H
#define ORCHFS_CORE_GITFX_H

#include "orchfs/core.h"
#include "orchfs/git.h"

/*
 * Make `fx` part of the call: undone if the call fails, finished once it
 * has committed, freed after either.  Register it as soon as the git
 * function returns it, before anything else can fail.
 */
static inline void orch_txn_git(orch_ctx *ctx, orch_git_effect *fx)
{
	orch_txn_hook(ctx, orch_git_effect_undo, orch_git_effect_finish, orch_git_effect_free, fx);
}

#endif
