/*
 * Internals shared by the files of the git layer (repo.c, worktree.c,
 * merge.c, recover.c, effect.c).  Nothing outside src/git/ includes this.
 */
#ifndef ORCHFS_GIT_INT_H
#define ORCHFS_GIT_INT_H

#include <stdbool.h>
#include <stdint.h>
#include <git2.h>

#include "orchfs/base.h"
#include "orchfs/git.h"

struct orch_git {
	git_repository *repo;
	char *workdir;      /* the main worktree, as given to orch_git_open (for messages) */
	char *inflight_dir; /* <state>/inflight, or NULL until orch_git_set_state_dir */
};

/*
 * An effect is one of these at the start of a larger struct (a merge, an
 * added worktree, a retire).  `undo` and `finish` may be NULL: nothing to do.
 * `release` frees the whole struct.
 */
struct orch_git_effect {
	void (*undo)(orch_git_effect *fx);
	void (*finish)(orch_git_effect *fx);
	void (*release)(orch_git_effect *fx);
	orch_git *g;
};

/* Record libgit2's last error for `what` in the error slot: ORCH_EGIT. */
int orch_git__fail(const char *what);

/* Whether two directory paths are the same, trailing slashes aside. */
bool orch_git__same_dir(const char *a, const char *b);

/*
 * The linked worktree whose checkout is (or was, if its directory is gone)
 * at `path`, or NULL (caller frees with git_worktree_free).
 */
git_worktree *orch_git__worktree_at(orch_git *g, const char *path);

/* Remove a directory tree: never through a symlink, never into another filesystem mounted inside it. */
void orch_git__rm_rf(const char *path);

/*
 * Name the checkout `workdir` in a new marker <state>/inflight/<pid>-<seq>
 * for as long as an operation may lock its index; returns the marker's
 * path for orch_git__inflight_end, or NULL when there is none to end
 * (no state directory, or the marker could not be written).
 */
char *orch_git__inflight_begin(orch_git *g, const char *workdir);

/*
 * The same for an operation that may leave the lock file `lockfile` (a
 * ref's <refname>.lock): a process killed there leaves a lock that
 * orch_git_clear_dead_inflight() removes.
 */
char *orch_git__inflight_begin_lock(orch_git *g, const char *lockfile);

/* The operation is over: remove its marker and free the path (NULL is fine). */
void orch_git__inflight_end(char *marker);

#endif
