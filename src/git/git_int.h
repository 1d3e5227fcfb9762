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
	char *state_dir;    /* the state directory, or NULL until orch_git_set_state_dir */
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

/* Whether the repository has no commit yet (HEAD unborn), and the invalid_state error that says so. */
bool orch_git__no_commits(orch_git *g);
int orch_git__no_commits_error(orch_git *g);

/* Whether two directory paths are the same, trailing slashes aside. */
bool orch_git__same_dir(const char *a, const char *b);

/*
 * The linked worktree whose checkout is (or was, if its directory is gone)
 * at `path`, or NULL (caller frees with git_worktree_free).
 */
git_worktree *orch_git__worktree_at(orch_git *g, const char *path);

/*
 * Detach the leftover checkout in directory `dir` (leftover.c), once
 * `was`: write the note ORCHFS-LEFTOVER (recording `commit_hex`, or NULL:
 * the commit its .git still leads to), rename .git to .git.orchfs-detached
 * and make .git point at the note, so that git refuses to run inside.
 * Already detached: nothing to do.  0, or -1 with errno.
 */
int orch_git__detach_leftover(orch_git *g, const char *dir, const char *was, const char *commit_hex);

/* ---- confinement (confine.c) ---- */

/*
 * Open directory `dir`, which must be below the state directory or git's
 * common directory (else EXDEV), walking from that root without following
 * a symlink; with `made` non-NULL, missing directories are created and
 * appended to it (outermost first).  An fd, or -1 with errno.
 */
int orch_git__open_dir(orch_git *g, const char *dir, json_t *made);

/* orch_git__open_dir of `path`'s parent; *base points at `path`'s last component. */
int orch_git__open_parent(orch_git *g, const char *path, const char **base);

/*
 * Remove a directory tree reached as orch_git__open_parent reaches it:
 * never through a symlink, never into another filesystem mounted inside it.
 */
void orch_git__rm_rf(orch_git *g, const char *path);

/* rmdir and rename(2) of paths reached as orch_git__open_parent reaches them; -1 with errno. */
int orch_git__rmdir(orch_git *g, const char *dir);
int orch_git__rename(orch_git *g, const char *from, const char *to);

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
