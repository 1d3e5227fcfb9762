/*
 * Internal interface of the FUSE glue: the node table (tree.c), the ctl
 * transaction files (ctl.c) and the low-level operations (fs.c).
 */
#ifndef ORCHFS_FS_H
#define ORCHFS_FS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "orchfs/core.h"

/* Every kind of node in the tree.  K_ROOT must stay 0. */
typedef enum {
	K_ROOT = 0,
	K_README,
	K_CTL_DIR,
	K_CTL,
	K_REPLIES_DIR,
	K_REPLY,
	K_SESSIONS_DIR,
	K_SESSION_DIR,
	K_SESSION_JSON,
	K_CONTEXT_JSON,
	K_CURRENT_REF_JSON,
	K_HEARTBEAT,
	K_ROOT_LINK,
	K_SCTL_DIR,
	K_SCTL,
	K_TASKS_DIR,
	K_TASK_DIR,
	K_TASK_JSON,

	/* case lifecycle (tasks/<id>/steps.json, checkpoints.json) */
	K_STEPS_JSON,
	K_CHECKPOINTS_JSON,

	/* isolation (worktrees/, locks/) */
	K_WORKTREES_DIR,
	K_WORKTREE_JSON,
	K_LOCKS_DIR,
	K_LOCK_JSON,

	/* planning graph (graph/nodes/<id>/) */
	K_GRAPH_DIR,
	K_NODES_DIR,
	K_NODE_DIR,
	K_NODE_JSON,
	K_NODE_CHECKLIST_JSON,
	K_NODE_SNAPSHOTS_JSON,
	K_NODE_EDGES_JSON,

	K_KIND_COUNT
} fs_kind;

typedef enum {
	T_DIR,
	T_FILE,      /* read-only JSON (or text) state file, rendered at open */
	T_CTL,       /* transaction file */
	T_HEARTBEAT, /* state file whose open-for-write/write/touch is a heartbeat */
	T_LINK,
} fs_type;

/* A decoded inode: kind, method index (ctl files) and id (session, task, ...). */
typedef struct {
	fs_kind kind;
	unsigned sub;
	int64_t id;
} fs_node;

uint64_t fs_ino(fs_node n);
fs_node fs_node_of(uint64_t ino);

fs_type fs_node_type(fs_node n);

/*
 * Resolve `name` in directory `dir`.  0 and *child set, or -errno
 * (-ENOENT, -ENOTDIR).  Runs queries, so the caller holds a read transaction.
 */
int fs_lookup(orch_ctx *ctx, fs_node dir, const char *name, fs_node *child);

/* Whether node `n` (decoded from an inode the kernel still holds) exists now. */
bool fs_exists(orch_ctx *ctx, fs_node n);

/* One directory entry. */
typedef struct {
	char *name;
	fs_node node;
} fs_dirent;

/* List a directory ("." and ".." not included).  0 or -errno. */
int fs_list(orch_ctx *ctx, fs_node dir, fs_dirent **out, size_t *n);
void fs_dirents_free(fs_dirent *d, size_t n);

/*
 * Render a state file's content (caller frees *buf).  0 or -errno.
 * Opens its own read transaction: one call = one consistent snapshot.
 */
int fs_render(orch_ctx *ctx, fs_node n, char **buf, size_t *len);

/* Target of a symlink node (caller frees).  0 or -errno. */
int fs_readlink(orch_ctx *ctx, fs_node n, char **target);

/* The method a ctl node runs, and the session it implies (0 for ctl/). */
const orch_method *fs_ctl_method(fs_node n, int64_t *session_id);

/* ---- ctl transaction files (ctl.c) ---- */

typedef struct fs_ctl fs_ctl;

fs_ctl *fs_ctl_new(const orch_method *m, int64_t session_id);
void fs_ctl_free(fs_ctl *c);

/* Append request bytes; executes once the buffer is a complete JSON value.  0 or -errno. */
int fs_ctl_write(orch_ctx *ctx, fs_ctl *c, const char *data, size_t len);

/* Read at `off`; *out points into the handle's reply/usage.  0 or -errno. */
int fs_ctl_read(fs_ctl *c, off_t off, size_t size, const char **out, size_t *n);

/* close/flush: -EINVAL when an incomplete request is pending. */
int fs_ctl_flush(fs_ctl *c);

/*
 * What a read without a write returns (caller frees): the usage, or under
 * sessions/<id>/ctl/ the session's last reply for the method.  stat reports its size.
 */
char *fs_ctl_idle_text(const orch_method *m, int64_t session_id);

/* The last reply a session got for a method through sessions/<id>/ctl/, or NULL. */
const char *fs_ctl_last_reply(int64_t session_id, const orch_method *m);
void fs_ctl_forget_all(void);

/* ---- the daemon (fs.c) ---- */

typedef struct {
	const char *mountpoint;
	bool foreground;
	bool debug;
	void (*on_mounted)(void *arg); /* called once the mount is in place */
	void *arg;
} fs_options;

/* Mount and serve until unmounted or signalled.  Returns the process exit code. */
int fs_main(orch_ctx *ctx, const fs_options *opts);

#endif
