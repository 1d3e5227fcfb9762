/*
 * Git through libgit2: branches and linked worktrees.  No git processes.
 *
 * This layer knows nothing of calls or transactions.  A function whose
 * effect must follow the outcome of the caller's transaction (a checkout
 * made, a branch moved, a checkout set aside) hands back an orch_git_effect;
 * the caller decides, once it knows whether its transaction committed,
 * whether the effect is undone (orch_git_effect_undo) or finished
 * (orch_git_effect_finish), and then frees it.
 */
#ifndef ORCHFS_GIT_H
#define ORCHFS_GIT_H

#include <stdbool.h>
#include <jansson.h>

#include "orchfs/error.h"

/*
 * The repository orchfs serves.  Used by one thread at a time: the writer
 * lane (libgit2 objects are not shared across threads; the caller holds the
 * writer's mutex around every call that takes an orch_git).  Functions
 * that take no orch_git may run on any thread.
 */
typedef struct orch_git orch_git;

/* ---- effects tied to the caller's transaction ---- */

/*
 * What a git function did that the caller's transaction decides about.
 * Exactly one of undo or finish runs, then free.  The three take `void *`
 * so that they fit transaction hooks (orch_hook_fn) as they are.
 */
typedef struct orch_git_effect orch_git_effect;

/* The transaction rolled back: put back everything the effect changed. */
void orch_git_effect_undo(void *fx);

/* The transaction committed: do what was left for after the commit (e.g. delete a retired checkout). */
void orch_git_effect_finish(void *fx);

/* Release the effect (NULL is fine); it neither undoes nor finishes anything. */
void orch_git_effect_free(void *fx);

/* ---- the repository ---- */

/* Open the repository whose working directory is `repo_path`. */
int orch_git_open(orch_git **out, const char *repo_path);
void orch_git_close(orch_git *g);

/* Find the top of the working tree containing `dir` (caller frees). */
int orch_git_discover(const char *dir, char **workdir);

/* Shorthand name of the main worktree's HEAD branch ("" when detached: no branch). */
int orch_git_head_branch(orch_git *g, char **out);

/* True when `name` is a valid branch name (refs/heads/<name> is a valid ref). */
bool orch_git_branch_name_valid(const char *name);

#define ORCH_GIT_HEX_SIZE 41 /* a commit id in hex and its NUL */

/* Whether local branch `branch` exists. */
bool orch_git_branch_exists(orch_git *g, const char *branch);

/*
 * Resolve `revspec` to a commit; `hex` (ORCH_GIT_HEX_SIZE bytes) receives its id.
 * ORCH_ENOTFOUND when it names nothing, ORCH_EINVALID_PARAMS when not a commit.
 */
int orch_git_resolve_commit(orch_git *g, const char *revspec, char *hex);

/*
 * Whether local branch `branch` contains branch `other`'s tip (the same
 * commit, or a descendant of it): nothing of `other` is left to merge.
 * ORCH_EGIT when either branch cannot be resolved.
 */
int orch_git_branch_contains(orch_git *g, const char *branch, const char *other, bool *yes);

/* Names of all local branches: *out is a new array of strings. */
int orch_git_branches(orch_git *g, json_t **out);

/* Add `pattern` (a line such as "/.orchfs/") to .git/info/exclude unless present. */
int orch_git_exclude(orch_git *g, const char *pattern);

/* ---- linked worktrees ---- */

/*
 * Create branch `branch` at `base` (a revspec) and a linked worktree of it at
 * `path` whose git metadata is named `wt_name`.  On success *fx is an
 * effect whose undo removes both, and the parent directories made for
 * `path`; it has nothing to finish.  ORCH_EEXISTS when the branch or the
 * path exists, ORCH_EGIT for other git failures; then nothing is left
 * behind and *fx is NULL.
 */
int orch_git_worktree_add(orch_git *g, const char *wt_name, const char *path, const char *branch,
			  const char *base, orch_git_effect **fx);

/*
 * Remove the linked worktree whose checkout is at `path`: the directory and
 * git's metadata.  The branch is kept unless `delete_branch`.
 */
int orch_git_worktree_remove(orch_git *g, const char *path, const char *branch, bool delete_branch);

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

/*
 * Remove the linked worktree at `path` as part of the caller's transaction:
 * the directory is renamed aside now (orch_git_retired_path).  On success
 * *fx is an effect whose undo renames it back (if that fails, it stays
 * aside for the next start-up, and is logged) and whose finish deletes it
 * with git's metadata.  So a transaction that fails leaves the checkout
 * exactly as it was.  ORCH_EGIT when the rename fails; *fx is then NULL.
 */
int orch_git_worktree_retire(orch_git *g, const char *path, orch_git_effect **fx);

/* Where orch_git_worktree_retire keeps `path` until the transaction commits (caller frees). */
char *orch_git_retired_path(const char *path);

/*
 * For a worktree whose checkout is already gone (missing): *fx is an
 * effect with nothing to undo whose finish deletes what
 * orch_git_worktree_retire may have set aside and git's stale metadata, as
 * orch_git_retire_finish does.  ORCH_EINTERNAL (out of memory) or 0.
 */
int orch_git_retire_after_commit(orch_git *g, const char *path, orch_git_effect **fx);

/*
 * Put back a checkout that orch_git_worktree_retire set aside for `path`
 * (start-up, after a retire whose transaction did not commit): 0, or -1
 * with errno.  Like every directory orchfs moves, both are reached without
 * following a symlink from the state directory.
 */
int orch_git_put_back(orch_git *g, const char *path);

/* Finish a retire that a crash interrupted after its commit: delete the directory and metadata. */
void orch_git_retire_finish(orch_git *g, const char *path);

/*
 * Prune git's metadata of orchfs worktrees (named "orchfs-*") whose
 * directory is gone; one line per pruned name is appended to `log`.
 */
int orch_git_prune_stale(orch_git *g, json_t *log);

/* ---- merges ---- */

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
 *    ORCH_EINVALID_STATE, details.state "nothing_to_merge";
 *  - conflicts: ORCH_ECONFLICT with details.paths, nothing changed;
 *  - when `workdir` is a checkout with `parent` checked out, that checkout
 *    is updated too, and must be clean first (no change to a tracked file,
 *    no untracked or ignored file the merge would overwrite), else
 *    ORCH_EINVALID_STATE with details.paths and nothing changed;
 *  - when another checkout has `parent` checked out: ORCH_EINVALID_STATE.
 * The branch moves only if it still points where the merge started
 * (else ORCH_ECONFLICT, nothing changed).  On success *fx is an effect
 * whose undo restores the checkout and then the branch (only if the
 * branch is still at the merge); it has nothing to finish.  On any error
 * *fx is NULL.  `commit_hex` (ORCH_GIT_HEX_SIZE bytes) receives the merge
 * commit's id.
 */
int orch_git_merge_into(orch_git *g, const char *parent, const char *workdir, const char *child,
			char *commit_hex, orch_git_effect **fx);

/* Options of orch_git_merge_branch; initialise with ORCH_GIT_MERGE_OPTS_INIT. */
typedef struct orch_git_merge_opts {
	bool fast_forward;  /* when the target's tip is an ancestor of the source's, move it there (no commit) */
	const char *reflog; /* the message of the target ref's reflog entry (NULL: the commit's message) */
} orch_git_merge_opts;
#define ORCH_GIT_MERGE_OPTS_INIT {false, NULL}

/*
 * Merge branch `source` into branch `target` (the main-merge queue's
 * merge; orch_git_merge_into is this with the default options), in memory
 * first (git_merge_commits):
 *  - nothing new in `source`: ORCH_EINVALID_STATE, details.state
 *    "nothing_to_merge";
 *  - opts->fast_forward and `target`'s tip an ancestor of `source`'s: a
 *    fast-forward (*fast_forward true, when given), no commit is made;
 *    otherwise a merge commit with two parents (target's tip, source's tip);
 *  - conflicts: ORCH_ECONFLICT with details.paths, nothing changed;
 *  - when `workdir` (e.g. the user's main worktree) has `target` checked
 *    out, it must be clean BEFORE anything moves: no staged or unstaged
 *    change to a tracked file (ORCH_EINVALID_STATE, details.state "dirty",
 *    details.paths), and a dry run of the checkout must find no untracked
 *    or ignored file the merge would overwrite (the same error); then the
 *    checkout is updated safely, and the ref moved after it;
 *  - when another checkout has `target` checked out: ORCH_EINVALID_STATE
 *    (details.state "checked_out_elsewhere").
 * The target ref moves by compare-and-swap (git_reference_create_matching
 * with the tip the merge started from), so it moves only if it still
 * points there (else ORCH_ECONFLICT without details.paths, the checkout
 * put back, nothing changed).  The move is the one atomic step: the branch
 * is before or after the merge, never between.  A checkout found holding
 * exactly this merge's result (wholly, or the part a killed checkout
 * wrote) is a merge interrupted before its ref moved, and is finished.
 * On success *fx is an effect whose undo restores the checkout and then
 * the ref (only if it is still at the merge); it has nothing to finish.
 * On any error *fx is NULL.  `commit_hex` (ORCH_GIT_HEX_SIZE bytes)
 * receives the new tip.
 */
int orch_git_merge_branch(orch_git *g, const char *target, const char *workdir, const char *source,
			  const orch_git_merge_opts *opts, char *commit_hex, bool *fast_forward, orch_git_effect **fx);

/*
 * Whether the newest reflog entry of branch `branch` whose message is
 * exactly `message` moved it to a commit the branch still contains (its
 * tip or an ancestor): a merge that moved the ref and whose caller died
 * before its own commit.  `commit_hex` receives that entry's new id.
 */
bool orch_git_reflog_find(orch_git *g, const char *branch, const char *message, char *commit_hex);

/* *ahead: whether branch `branch` has a commit that branch `base` lacks.  ORCH_ENOTFOUND when either is missing. */
int orch_git_branch_ahead(orch_git *g, const char *branch, const char *base, bool *ahead);

/*
 * What branch `branch` would bring into branch `base`, for a reviewer; any
 * thread (opens its own handle of the repository at `repo_dir`).  *out is
 * {branch, head, base?, commits: [{id, subject}] (newest first, those base
 * lacks), paths: [...] (changed since the merge base), truncated?}, or
 * {branch, exists: false} when the branch does not exist.  At most 500
 * commits and 5000 paths (then truncated: true).
 */
int orch_git_branch_summary(const char *repo_dir, const char *branch, const char *base, json_t **out);

/*
 * Whether branch `parent`'s tip is a merge commit (two parents) whose
 * second parent is exactly branch `child`'s tip: what orch_git_merge_into
 * leaves, so a merge whose call died before its commit is recognised.
 * `commit_hex` (ORCH_GIT_HEX_SIZE bytes) receives that commit's id.
 */
bool orch_git_merged_at_tip(orch_git *g, const char *parent, const char *child, char *commit_hex);

/* ---- the markdown mirror's history (mirror.c) ---- */

/* The ref that holds the mirror's history; no branch, never checked out. */
#define ORCH_GIT_MIRROR_REF "refs/orchfs/mirror"

/*
 * Store the files <dir>/<names[i]> (i < n) as blobs, streamed from disk,
 * and one tree holding exactly them under those names; blobs[i] and `tree`
 * receive the hex ids.  Only objects are written: no ref, index or working
 * tree is touched, so unreferenced objects are all a failure leaves.
 * Opens the repository at `repo_path` itself: runs on any thread.
 */
int orch_git_mirror_tree(const char *repo_path, const char *dir, const char *const *names, size_t n,
			 char (*blobs)[ORCH_GIT_HEX_SIZE], char *tree);

/*
 * Commit `tree` (hex) on ORCH_GIT_MIRROR_REF with `message`: its parent is
 * the commit the ref names (none the first time), and the ref moves only
 * from there.  `commit` (ORCH_GIT_HEX_SIZE) receives the new id; *fx puts
 * the ref back where it was when undone.  When the ref's commit already
 * has this tree (a refresh killed between moving the ref and committing
 * its transaction), that commit is the answer and *fx is NULL.  Nothing else of the repository
 * changes: the user's branches, HEAD, index and working tree stay as they
 * are.  Opens the repository itself: runs on any thread.
 */
int orch_git_mirror_commit(const char *repo_path, const char *tree, const char *message, char *commit,
			   orch_git_effect **fx);

/* ---- recovery: what killed processes and calls left ---- */

/*
 * Where this process records the checkouts its operations are writing:
 * <state_dir>/inflight/<pid>-<seq>, one marker per operation.
 */
void orch_git_set_state_dir(orch_git *g, const char *state_dir);

/*
 * Only the confinement root of orch_git_set_state_dir (for a handle that
 * changes nothing, `orchfs check`): directories below `state_dir` are
 * reached without following a symlink.
 */
void orch_git_confine_to(orch_git *g, const char *state_dir);

/*
 * Remove git's index.lock from checkouts that processes, now dead, were
 * writing when killed (their markers <state>/inflight/<pid>-<seq>, or
 * <pid> as older versions named them); each removal is appended to `log`
 * (may be NULL).
 */
int orch_git_clear_dead_inflight(orch_git *g, json_t *log);

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
 * Leftovers below `root` (<state>/worktrees): checkouts that calls killed
 * part-way left, set aside as <path>.orchfs-leftover-<ms> and detached from
 * git (see leftover.c).  With `clean` (start-up, under the store's write
 * lock): one still attached is detached, and one holding nothing but
 * files git had not yet written is removed (a line in `log`); *out lists
 * those kept.  Without `clean` nothing changes and *out lists every one.
 * Items: {path, commit, user_changes}.
 */
int orch_git_leftovers(orch_git *g, const char *root, bool clean, json_t **out, json_t *log);

/*
 * Remove lock files of orchfs's own branch refs (refs/heads/session/ and
 * refs/heads/task/<n>/) left by a killed call; the caller holds the store's
 * write lock.  Each removal is appended to `log`.
 */
int orch_git_drop_reserved_ref_locks(orch_git *g, json_t *log);

#endif
