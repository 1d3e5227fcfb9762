/*
 * Git through libgit2: branches and linked worktrees.  No git processes.
 */
#ifndef ORCHFS_GIT_H
#define ORCHFS_GIT_H

#include <stdbool.h>

#include "orchfs/core.h"

/* Open the repository whose working directory is `repo_path`. */
int orch_git_open(orch_git **out, const char *repo_path);
void orch_git_close(orch_git *g);

/* The libgit2 repository handle (for method groups with their own git work). */
struct git_repository *orch_git_repo(orch_git *g);

/* Find the top of the working tree containing `dir` (caller frees). */
int orch_git_discover(const char *dir, char **workdir);

/* Shorthand name of the main worktree's HEAD branch ("HEAD" when detached). */
int orch_git_head_branch(orch_git *g, char **out);

/* True when `name` is a valid branch name (refs/heads/<name> is a valid ref). */
bool orch_git_branch_name_valid(const char *name);

/*
 * Create branch `branch` at `base` (a revspec) and a linked worktree of it at
 * `path` whose git metadata is named `wt_name`.  Registers an undo on ctx
 * that removes both if the transaction later fails.  ORCH_EEXISTS when the
 * branch or the path exists, ORCH_EGIT for other git failures.
 */
int orch_git_worktree_add(orch_ctx *ctx, const char *wt_name, const char *path,
			  const char *branch, const char *base);

/*
 * Remove the linked worktree whose checkout is at `path`: the directory and
 * git's metadata.  The branch is kept unless `delete_branch`.
 */
int orch_git_worktree_remove(orch_git *g, const char *path, const char *branch, bool delete_branch);

/*
 * A linked worktree at `path` on `branch` that no record names is left by a
 * call killed between its git work and its commit.  Remove it and its branch
 * when nothing can be lost (clean checkout, no commit HEAD lacks).  Returns 1
 * when it removed something, else 0.
 */
int orch_git_worktree_reclaim(orch_git *g, const char *path, const char *branch);

/* The metadata name of a worktree at `path` (its last path component, prefixed "orchfs-"). */
char *orch_git_worktree_name(const char *path);

/* Add `pattern` (a line such as "/.orchfs/") to .git/info/exclude unless present. */
int orch_git_exclude(orch_git *g, const char *pattern);

#endif
