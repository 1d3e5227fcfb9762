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
#include "orchfs/fs.h"

/* The errno for a core error code (errno.c: the only mapping). */
int fs_errno(int code);

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

	/* merge pipeline (merge/requests/, merge/main/) */
	K_MERGE_DIR,
	K_MERGE_REQUESTS_DIR,
	K_MERGE_REQUEST_JSON,
	K_MAIN_DIR,
	K_MAIN_QUEUE_JSON,
	K_MAIN_LOCK_JSON,
	K_MAIN_ITEM_JSON,
	/* markdown mirror (mirror/) */
	K_MIRROR_DIR,
	K_MIRROR_STATUS,
	K_MIRROR_MD,
	/* change feed and liveness (events.c) */
	K_EVENTS,
	K_EVENTS_SINCE_DIR,
	K_EVENTS_SINCE,
	K_ALIVE,

	K_KIND_COUNT
} fs_kind;

typedef enum {
	T_DIR,
	T_FILE,      /* read-only JSON (or text) state file, rendered at open */
	T_CTL,       /* transaction file */
	T_HEARTBEAT, /* state file whose open-for-write/write/touch is a heartbeat */
	T_LINK,
	T_EVENTS,    /* a stream of JSON lines: reads block until there are new events */
	T_ALIVE,     /* held open: the session is live (sessions/<id>/alive) */
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

/* A directory named by an id: the file that shows its row (tasks/<id>/ -> task.json). */
bool fs_primary_file(fs_node dir, fs_node *file);

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

/* A state file's content as one snapshot rendered it. */
typedef struct {
	char *data;          /* caller releases (fs_rendering_release) */
	size_t len;
	bool mapped;         /* data maps an immutable file (mirror/): munmap, not free */
	int64_t stamp;       /* newest "*_at" timestamp in the content (ms), 0 if none */
	int64_t snapshot_at; /* the database's last change as of the snapshot (ms) */
} fs_rendering;

/*
 * Render a state file.  0 or -errno.  Opens its own read transaction on
 * ctx->store: one call = one consistent snapshot.
 */
int fs_render(orch_ctx *ctx, fs_node n, fs_rendering *r);
/* Give back a rendering's data (freed, or unmapped). */
void fs_rendering_release(fs_rendering *r);

/* Whether a file is served through the page cache (see cache.c), and what invalidates it. */
bool fs_node_cached(fs_node n);
typedef enum {
	FS_DEP_NONE, /* the kind shows no row of the table */
	FS_DEP_ROW,  /* the row whose id is the node's id ("table#") */
	FS_DEP_ANY,  /* any row of it */
} fs_dep;
fs_dep fs_kind_depends(fs_kind k, const char *table);

/* Target of a symlink node (caller frees).  0 or -errno. */
int fs_readlink(orch_ctx *ctx, fs_node n, char **target);

/* The method a ctl node runs, and the session it implies (0 for ctl/). */
const orch_method *fs_ctl_method(fs_node n, int64_t *session_id);

/* Parent directory and name of a file node (for dropping the kernel's dentry). */
bool fs_node_parent_name(fs_node n, fs_node *parent, char *name, size_t size);

/* ---- immutable, versioned inodes for state files (cache.c) ---- */

/* A rendering shared by the cache and the descriptors that opened it; immutable. */
typedef struct fs_snap {
	_Atomic int refs;
	char *data;
	size_t len;
	bool mapped;   /* data maps an immutable file: page cache, not heap; unmapped at the last reference */
	uint64_t hash;
	int64_t mtime; /* ms */
} fs_snap;

fs_snap *fs_snap_new(char *data, size_t len, int64_t mtime, bool mapped); /* takes data */
fs_snap *fs_snap_ref(fs_snap *s);
void fs_snap_unref(fs_snap *s);

struct fuse_session;
/* drop_synchronously: the writer drops dentries before its calls reply (false with one thread). */
void fs_cache_start(struct fuse_session *se, orch_env *env, bool drop_synchronously);
void fs_cache_stop(void);

/* orch_env.committed and .publish: the writer lane committed these rows; make it visible. */
void fs_cache_committed(void *env, const orch_change *changes, size_t n);
void fs_cache_publish(void *env);
void fs_cache_committing(void *env, int64_t db_version, int64_t updated_at);

/* Notice commits of other processes (cheap when there were none); ctx: a reader. */
void fs_cache_sync(orch_ctx *ctx);

/*
 * The current rendering of cacheable file `n`, the inode number and FUSE
 * generation of its version, and whether it must be served with direct
 * I/O (no version free to move to) (ctx: a reader; the caller ran
 * fs_cache_sync on it for this request).  0 or -errno.
 */
int fs_cache_get(orch_ctx *ctx, fs_node n, fs_snap **out, uint64_t *ino, uint64_t *generation, bool *direct);

/* The inode number (and FUSE generation) of a node's current version; fs_ino for other nodes. */
uint64_t fs_cache_ino(fs_node n, uint64_t *generation);

enum { FS_VERSION_CURRENT, FS_VERSION_RETIRED, FS_VERSION_GONE };
/* What inode `ino` is now: the current version, a retired one (its size and mtime), or unknown. */
int fs_cache_version(uint64_t ino, size_t *len, int64_t *mtime);

/* The rendering of retired version `ino` when this daemon's writer retired it (else NULL). */
fs_snap *fs_cache_retired_snap(uint64_t ino);

/*
 * A lookup is about to reply `ino` with this size and mtime: register the
 * kernel's reference, unless the file changed meanwhile (false: render
 * again; `force` registers whatever happened).
 */
bool fs_cache_looked_up(uint64_t ino, size_t len, int64_t mtime, bool force);
/* The kernel dropped `nlookup` references to `ino` (forget). */
void fs_cache_forget(uint64_t ino, uint64_t nlookup);

/* The mtime the cache knows for `n` (0: none), and the database's last change. */
int64_t fs_cache_mtime(fs_node n);
int64_t fs_cache_db_mtime(void);

/* ---- ctl transaction files (ctl.c) ---- */

typedef struct fs_ctl fs_ctl;

/* A ctl transaction; `reply_errors`: the session's ctl_errors is "reply" (see fs_ctl_write). */
fs_ctl *fs_ctl_new(orch_env *env, const orch_method *m, int64_t session_id, bool reply_errors);
void fs_ctl_free(fs_ctl *c);

/* fs_ctl_write, fs_ctl_resume: a blocking call (wait) is parked; its write is answered later. */
#define FS_CTL_PENDING 1

/*
 * Append request bytes; executes once the buffer is a complete JSON value.
 * 0 or -errno.  `cancelled(arg)` (may be NULL) says the writer gave up (a
 * signal): a blocking call stops, the write fails with EINTR.  With `park`
 * a blocking call (wait) with nothing to report yet returns FS_CTL_PENDING
 * instead of blocking: the caller parks the write and calls fs_ctl_resume.
 */
int fs_ctl_write(orch_env *env, fs_ctl *c, const char *data, size_t len, bool park, bool (*cancelled)(void *arg),
		 void *arg);
/*
 * Look again for a parked call: FS_CTL_PENDING (still nothing; *wake_at: by
 * when to look again at the latest, ms), else 0 or -errno, its reply set.
 */
int fs_ctl_resume(orch_env *env, fs_ctl *c, int64_t *wake_at);
/* When a parked call wants to be looked at again at the latest (ms; 0: not parked); *seen: the db_version it saw. */
int64_t fs_ctl_wake_at(fs_ctl *c, int64_t *seen);
/* A parked call's writer was signalled: it ends, its reply says so. */
void fs_ctl_cancel(fs_ctl *c);

/* Read at `off`; *out points into the handle's reply/usage.  0 or -errno. */
int fs_ctl_read(fs_ctl *c, off_t off, size_t size, const char **out, size_t *n);

/* close/flush: -EINVAL when an incomplete request is pending. */
int fs_ctl_flush(fs_ctl *c);

/*
 * What a read without a write returns (caller frees): the usage, or under
 * sessions/<id>/ctl/ the session's last reply for the method.  stat reports its size.
 */
char *fs_ctl_idle_text(orch_ctx *ctx, const orch_method *m, int64_t session_id);


/* ---- the change feed and alive files (events.c) ---- */

typedef struct fs_evstream fs_evstream;

/* Start the events thread (before the FUSE loop) / answer what is parked and stop it (after). */
void fs_events_start(orch_env *env);
void fs_events_stop(void);
/* Commits up to db_version `v` are visible (this daemon's or another process's). */
void fs_events_advance(int64_t v);
/* Parked reads now (tests and benchmarks: what is blocked holds no thread). */
size_t fs_events_parked(void);

/* A stream after db_version `after` (`since`), else after the current one.  0 or -errno (ENOENT: not kept). */
int fs_evstream_open(orch_env *env, bool since, int64_t after, fs_evstream **out);
void fs_evstream_close(fs_evstream *s);
/*
 * Answer a read of `size` bytes at offset `off` now, or park it and answer
 * it when there is news (or EINTR on a signal; EAGAIN when `nonblock`);
 * `done(arg)` runs once it is answered.
 */
struct fuse_req;
struct fuse_pollhandle;
void fs_evstream_read(struct fuse_req *req, fs_evstream *s, int64_t off, size_t size, bool nonblock,
		      void (*done)(void *arg), void *arg);
/* poll: the events now (POLLIN or 0); `ph` (may be NULL) is kept and notified at news.  Takes ph. */
unsigned fs_evstream_poll(fs_evstream *s, struct fuse_pollhandle *ph);

/* Park the write `req` of `size` bytes whose ctl call returned FS_CTL_PENDING; `done(arg)` once answered. */
void fs_events_park_ctl(struct fuse_req *req, fs_ctl *c, size_t size, void (*done)(void *arg), void *arg);

/* sessions/<id>/alive opened / its open closed in this daemon.  0 or -errno. */
int fs_alive_open(orch_env *env, int64_t session_id);
void fs_alive_close(orch_env *env, int64_t session_id);
void fs_alive_forget_all(void);
/* Start-up: release the holds of daemons that no longer run (their locks, an event each). */
void fs_alive_reap(orch_env *env);
/* With a dqlite store: a thread refreshing this host's running holders (orch_alive_beat); stop before unmount. */
void fs_alive_beat_start(orch_env *env);
void fs_alive_beat_stop(void);

#endif
