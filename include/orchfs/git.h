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
 * that removes both, and the parent directories made for `path`, if the
 * transaction later fails.  ORCH_EEXISTS when the
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
 * Take back what a call killed between its git work and its commit left
 * under orchfs's reserved `branch` at `path` (the caller checked that no
 * record names them, and holds the store's write lock, under which every
 * orchfs git write runs).  When the branch has no commit that `base` (NULL:
 * some other branch) lacks: a stale lock of the branch ref is removed; a
 * clean checkout at `path` is removed, any other (a half-made checkout, or
 * work no record knows) is set aside as <path>.orchfs-leftover-<ms> when
 * `set_aside` (else everything stays); git's missing or invalid metadata
 * for `path` is removed; the branch is deleted.  A branch with commits of
 * its own keeps everything.  Returns 1 when it took anything back, else 0.
 */
int orch_git_worktree_reclaim(orch_git *g, const char *path, const char *branch, const char *base,
			      bool set_aside);

/*
 * Remove lock files of orchfs's own branch refs (refs/heads/session/ and
 * refs/heads/task/<n>/) left by a killed call; the caller holds the store's
 * write lock.  Each removal is appended to `log`.
 */
int orch_git_drop_reserved_ref_locks(orch_git *g, json_t *log);

/* Where this process records the checkout it is writing (<state_dir>/inflight/<pid>). */
void orch_git_set_state_dir(orch_git *g, const char *state_dir);

/*
 * Remove git's index.lock from checkouts that processes, now dead, were
 * writing when killed (their <state>/inflight/<pid> markers); each removal
 * is appended to `log` (may be NULL).
 */
int orch_git_clear_dead_inflight(orch_git *g, json_t *log);

/* Names of all local branches: *out is a new array of strings. */
int orch_git_branches(orch_git *g, json_t **out);

/*
 * The valid linked worktrees named "orchfs-*" that have a branch checked
 * out: *out is a new array of {name, path, branch}.
 */
int orch_git_orchfs_worktrees(orch_git *g, json_t **out);

/*
 * The git metadata name of a worktree at `path` below the directory `root`
 * (<state>/worktrees): "orchfs-<name>" for a direct child, else the
 * relative path with '/' as '-' plus a short hash, "orchfs-a-x-1b2c3d4e",
 * so that two paths never share a name.  Caller frees.
 */
char *orch_git_worktree_name_in(const char *root, const char *path);

/* orch_git_worktree_name_in for a direct child of root: "orchfs-<last component>". */
char *orch_git_worktree_name(const char *path);

/* ---- isolation: branches, status, in-memory merges, removal ---- */

#define ORCH_GIT_HEX_SIZE 41 /* a commit id in hex and its NUL */

/* Whether local branch `branch` exists. */
bool orch_git_branch_exists(orch_git *g, const char *branch);

/*
 * Resolve `revspec` to a commit; `hex` (ORCH_GIT_HEX_SIZE bytes) receives its id.
 * ORCH_ENOTFOUND when it names nothing, ORCH_EINVALID_PARAMS when not a commit.
 */
int orch_git_resolve_commit(orch_git *g, const char *revspec, char *hex);

/*
 * Uncommitted changes in the checkout at `workdir`: staged or unstaged
 * changes to tracked files, and untracked (not ignored) files when
 * `untracked`.  *paths is a new array of the paths (empty when clean).
 */
int orch_git_dirty_paths(const char *workdir, bool untracked, json_t **paths);

/*
 * Merge branch `child` into branch `parent` with a merge commit (two
 * parents, even when a fast-forward would do), in memory first:
 *  - nothing new in `child` (its tip is the parent's or an ancestor of it):
 *    ORCH_EINVALID_STATE;
 *  - conflicts: ORCH_ECONFLICT with details.paths, nothing changed;
 *  - when `workdir` is a checkout with `parent` checked out, that checkout
 *    is updated too, and must be clean first (no change to a tracked file,
 *    no untracked or ignored file the merge would overwrite), else
 *    ORCH_EINVALID_STATE with details.paths and nothing changed;
 *  - when another checkout has `parent` checked out: ORCH_EINVALID_STATE.
 * The branch moves only if it still points where the merge started.  An
 * undo that restores the branch and the checkout is registered on ctx.
 * `commit_hex` (ORCH_GIT_HEX_SIZE bytes) receives the merge commit's id.
 */
int orch_git_merge_into(orch_ctx *ctx, const char *parent, const char *workdir, const char *child,
			char *commit_hex);

/*
 * Whether branch `parent`'s tip is a merge commit (two parents) whose
 * second parent is exactly branch `child`'s tip: what orch_git_merge_into
 * leaves, so a merge whose call died before its commit is recognised.
 * `commit_hex` (ORCH_GIT_HEX_SIZE bytes) receives that commit's id.
 */
bool orch_git_merged_at_tip(orch_git *g, const char *parent, const char *child, char *commit_hex);

/*
 * Remove the linked worktree at `path` as part of the current call: the
 * directory is renamed aside now (orch_git_retired_path) and is deleted,
 * with git's metadata, only when the call commits; a rollback renames it
 * back.  So a failed call leaves the checkout exactly as it was.
 */
int orch_git_worktree_retire(orch_ctx *ctx, const char *path);

/* Where orch_git_worktree_retire keeps `path` until the call commits (caller frees). */
char *orch_git_retired_path(const char *path);

/*
 * For a worktree whose checkout is already gone (missing): once the current
 * call commits, delete what orch_git_worktree_retire may have set aside and
 * git's stale metadata, as orch_git_retire_finish does.  Nothing happens if
 * the call fails.
 */
void orch_git_retire_after_commit(orch_ctx *ctx, const char *path);

/* Finish a retire that a crash interrupted after its commit: delete the directory and metadata. */
void orch_git_retire_finish(orch_git *g, const char *path);

/*
 * Prune git's metadata of orchfs worktrees (named "orchfs-*") whose
 * directory is gone; one line per pruned name is appended to `log`.
 */
int orch_git_prune_stale(orch_git *g, json_t *log);

/* Add `pattern` (a line such as "/.orchfs/") to .git/info/exclude unless present. */
int orch_git_exclude(orch_git *g, const char *pattern);

#endif
