/*
 * The orchfs core: a call context, the method table, parameter validation
 * and the SQL/JSON helpers every method group uses.  Nothing here knows
 * about FUSE; the fs layer and `orchfs call` both go through orch_call().
 */
#ifndef ORCHFS_CORE_H
#define ORCHFS_CORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <jansson.h>
#include <pthread.h>
#include <sqlite3.h>

#include "orchfs/base.h"
#include "orchfs/error.h"
#include "orchfs/store.h"

typedef struct orch_git orch_git;
typedef struct orch_change orch_change;

typedef void (*orch_hook_fn)(void *arg);

/*
 * Work tied to the outcome of a call's transaction (a git side effect):
 * on_rollback runs if the call fails, on_commit once it has committed,
 * free_arg after either.  Any of the three may be NULL.
 */
typedef struct orch_undo {
	orch_hook_fn on_rollback;
	orch_hook_fn on_commit;
	orch_hook_fn free_arg;
	void *arg;
	struct orch_undo *next;
} orch_undo;

/*
 * The process-wide environment: opened once, shared by every thread.
 * Fields marked immutable are set by orch_env_open and never change; the
 * rest say which lock owns them.
 */
typedef struct orch_env {
	char *repo_path; /* immutable: absolute path of the main worktree */
	char *state_dir; /* immutable: absolute path of the state directory */
	char *db_path;   /* immutable: <state_dir>/state.db */

	/*
	 * The writer lane: every mutating call (and every call with a
	 * call_id) holds writer_mu from before BEGIN IMMEDIATE until its
	 * after-commit work is done, so in-process writers queue here and
	 * SQLite's busy handler only ever waits for other processes.
	 */
	pthread_mutex_t writer_mu;
	orch_store *writer; /* under writer_mu: the read-write connection */
	orch_git *git;      /* under writer_mu: libgit2 is used by the writer lane only */

	/* Idle read-only connections (WAL readers), under pool_mu. */
	pthread_mutex_t pool_mu;
	orch_store **pool;
	size_t npool, cappool;

	/*
	 * Told, under writer_mu and before the call replies, which rows a
	 * committed call changed (the fs layer invalidates cached files).
	 * Set before any thread starts; NULL when nobody listens.
	 */
	void (*committed)(void *arg, const orch_change *changes, size_t n);
	/*
	 * Then, after writer_mu is released and still before the calls reply:
	 * make what `committed` found visible (the fs layer drops the kernel's
	 * dentries, which can wait for a lookup, so never under writer_mu).
	 */
	void (*publish)(void *arg);
	/*
	 * Just before a writer's COMMIT: the db_version and updated_at it is
	 * committing, so that a reader who sees them before `committed` runs
	 * does not take this daemon's own commit for another process's.
	 */
	void (*committing)(void *arg, int64_t db_version, int64_t updated_at);
	void *committed_arg;

	/*
	 * The writer thread (orch_env_start_writer; the daemon only): mutating
	 * calls queue here and run on one thread of lower CPU priority than
	 * the readers, so a checkout of thousands of files yields the CPU to
	 * reads.  The queue is under lane_mu.
	 */
	pthread_mutex_t lane_mu;
	pthread_cond_t lane_cond;
	struct orch_lane_job *lane_head, *lane_tail;
	bool lane_running, lane_stop;
	int lane_nice;
	pthread_t lane_thread;
} orch_env;

/* Open the workspace (see orch_ctx_open) into `env`. */
int orch_env_open(orch_env *env, const char *repo_dir, const char *state_dir);
void orch_env_close(orch_env *env);

/*
 * Run mutating calls on a thread of their own, niced by `nice` (readers
 * keep the default priority), until orch_env_stop_writer.  Without it they
 * run on the calling thread (`orchfs call`, unit tests).
 */
int orch_env_start_writer(orch_env *env, int nice);
void orch_env_stop_writer(orch_env *env);

/* A read-only connection of the pool (opened when none is idle), and its return. */
int orch_env_reader(orch_env *env, orch_store **out);
void orch_env_reader_put(orch_env *env, orch_store *st);

/*
 * One request's context: on the stack of the thread serving it, never
 * shared.  `store` is the writer's connection (under writer_mu) or a
 * reader of the pool; `git` is NULL on reader lanes.
 */
typedef struct orch_ctx {
	orch_env *env;
	orch_store *store;
	orch_git *git;
	const char *repo_path;  /* env->repo_path */
	const char *state_dir;  /* env->state_dir */
	int64_t now;            /* ms since the epoch, fixed for one call */
	orch_undo *undo;        /* transaction hooks (LIFO), see orch_txn_hook */
	bool unchanged;         /* set by a write method that changed nothing: no db_version bump */
	char *result_text;      /* a method's result as compact JSON text, instead of *result (long lists) */
	orch_env *own_env;      /* the environment orch_ctx_open made (freed by orch_ctx_close) */
} orch_ctx;

/* A context for one request of `env`, on the given connection (git NULL on readers). */
void orch_ctx_init(orch_ctx *ctx, orch_env *env, orch_store *store, orch_git *git);

/*
 * Open the workspace: the repository containing `repo_dir` (NULL: the current
 * directory), the state directory (NULL: <repo>/.orchfs, added to
 * .git/info/exclude), its database and the git handle.  The context owns the
 * environment and is bound to its writer: for one-thread users (`orchfs
 * call`, unit tests).
 */
int orch_ctx_open(orch_ctx *ctx, const char *repo_dir, const char *state_dir);
void orch_ctx_close(orch_ctx *ctx);

/* ---- request limits (SPEC section 4) ---- */
#define ORCH_REQUEST_MAX (1024 * 1024)
#define ORCH_STRING_MAX (64 * 1024)
#define ORCH_ARRAY_MAX 10000
#define ORCH_DEPTH_MAX 64

/* ---- method table ---- */

typedef enum {
	ORCH_P_ID,     /* positive integer id */
	ORCH_P_INT,    /* any integer */
	ORCH_P_STR,    /* string */
	ORCH_P_BOOL,   /* true / false */
	ORCH_P_JSON,   /* any JSON value */
	ORCH_P_STRS,   /* array of strings */
	ORCH_P_PATHS,  /* array of repository-relative paths (normalised in place) */
	ORCH_P_PATH,   /* one repository-relative path (normalised in place) */
	ORCH_P_OBJS,   /* array of objects, each checked against `items` */
} orch_ptype;

#define ORCH_P_REQUIRED 0x1u

typedef struct orch_param {
	const char *name;
	orch_ptype type;
	unsigned flags;
	const char *doc; /* one line: meaning and default */
	const struct orch_param *items; /* ORCH_P_OBJS: the item keys, NULL-name terminated */
} orch_param;

typedef int (*orch_method_fn)(orch_ctx *ctx, json_t *params, json_t **result);

#define ORCH_M_WRITE 0x1u     /* mutates state: one BEGIN IMMEDIATE transaction, bumps db_version */
#define ORCH_M_CLOSED_OK 0x2u /* through sessions/<id>/ctl/, allowed for a closed or taken-over session */

typedef struct orch_method {
	const char *name;
	orch_method_fn fn;
	unsigned flags;
	const orch_param *params; /* NULL-name terminated */
	const char *summary;      /* what it does */
	const char *output;       /* what the result holds */
	const char *example;      /* an example request body */
	const char *errors;       /* the typed errors it can return */
} orch_method;

/*
 * Views the method groups share (the groups themselves are in
 * src/core/groups.h, for the method table only).
 */
int orch_task_steps_json(orch_ctx *ctx, int64_t task_id, json_t **out);
int orch_task_checkpoints_json(orch_ctx *ctx, int64_t task_id, json_t **out);

/* A lock as clients see it (an active lock past its lease shows "expired"; uses ctx->now). */
int orch_lock_json(orch_ctx *ctx, int64_t id, json_t **out);
/* The lock conflict rule: scope a (type "file"|"prefix", normalised path) vs scope b. */
bool orch_lock_overlaps(const char *type_a, const char *path_a, const char *type_b, const char *path_b);
/* Start-up: reconcile worktree records with the disk; *log gets one string per finding. */
int orch_worktree_reconcile(orch_ctx *ctx, json_t **log);

/* Read views of graph/nodes/<id>/{node,checklist,snapshots,edges}.json. */
int orch_node_json(orch_ctx *ctx, int64_t id, json_t **out);
int orch_node_checklist_json(orch_ctx *ctx, int64_t id, json_t **out); /* by facet, order_no */
int orch_node_snapshots_json(orch_ctx *ctx, int64_t id, json_t **out); /* by id */
int orch_node_edges_json(orch_ctx *ctx, int64_t id, json_t **out);     /* from or to it, by id */


/* All methods, in table order; NULL-terminated. */
const orch_method *const *orch_methods(void);
const orch_method *orch_method_find(const char *name);
size_t orch_method_count(void);
const orch_method *orch_method_at(size_t i);

/* True when the method takes a session (session_id, requester_session_id or owner_session). */
bool orch_method_takes_session(const orch_method *m);

/* Validate params for m (unknown keys, limits, types, required); paths normalised in place. */
int orch_params_validate(const orch_method *m, json_t *params);

/* Usage text of a method (caller frees). */
char *orch_method_usage(const orch_method *m, bool session_scoped);

/* ---- calls ---- */

#define ORCH_INCOMPLETE 1 /* orch_request_parse: buffer is a prefix of a JSON value */

/*
 * Parse a request buffer.  Returns 0 with *out set for a complete JSON value,
 * ORCH_INCOMPLETE when more input could complete it, ORCH_EINVALID_JSON when
 * it never can.
 */
int orch_request_parse(const char *buf, size_t len, json_t **out);

/*
 * `orchfs check`: verify the store of the repository containing `repo_dir`
 * (NULL: the current directory; state in `state_dir`, NULL: <repo>/.orchfs)
 * and its worktrees against git, changing nothing.  *report is
 * {state_dir, integrity, problems: [text], leftovers: [{path, commit,
 * user_changes}]}; 0 when the check ran (problems or not), else an error
 * code (no repository or database).
 */
int orch_check(const char *repo_dir, const char *state_dir, json_t **report);

/*
 * `orchfs backup`: a consistent copy of the database at `dest` (a new file,
 * 0600; an existing one is ORCH_EEXISTS) taken with SQLite's backup API
 * while daemons and `orchfs call` go on writing: one snapshot.
 */
int orch_backup(const char *repo_dir, const char *state_dir, const char *dest);

/*
 * Incremental scanning of a request that arrives in pieces (reqscan.c): each
 * byte is looked at once, and the outcome depends on the bytes only, not on
 * how they were split.  Owned by one request buffer; not shared.
 */
typedef struct orch_reqscan {
	size_t pos;        /* bytes scanned */
	size_t end;        /* once complete: the value's length */
	size_t depth;      /* open objects and arrays */
	int state;         /* ORCH_INCOMPLETE, 0 (complete) or an error code */
	bool started;      /* a byte other than white space was seen */
	unsigned char mode, hex_left, utf8_left, utf8_lo, utf8_hi, literal_pos;
	const char *literal; /* the top-level literal being matched */
} orch_reqscan;

void orch_reqscan_init(orch_reqscan *s);

/*
 * Scan the next `n` bytes of the request.  Returns ORCH_INCOMPLETE while
 * more bytes could complete the value, 0 once it ended (s->end: its
 * length; later bytes are not scanned), ORCH_EINVALID_JSON (error set) at
 * the first byte no JSON text could have there, ORCH_EINVALID_PARAMS at the
 * bracket that nests deeper than ORCH_DEPTH_MAX; once not incomplete, every
 * later call returns the same.
 */
int orch_reqscan_feed(orch_reqscan *s, const char *p, size_t n);

/* Whether nothing but white space has been scanned. */
bool orch_reqscan_blank(const orch_reqscan *s);

/*
 * Parse the request `buf` (`len` bytes) whose scan `s` completed: what
 * follows the value must be white space.  0 with *out set, or
 * ORCH_EINVALID_JSON.
 */
int orch_request_parse_scanned(const char *buf, size_t len, const orch_reqscan *s, json_t **out);

/*
 * Run `method` with request `req` (any JSON value; validated here).  When
 * `session_id` > 0 the call comes from sessions/<id>/ctl/ and the session
 * keys are implied.  *reply is the reply text (JSON object and a newline,
 * caller frees); the return value is 0 or the error code of the reply.
 */
int orch_call(orch_ctx *ctx, const char *method, json_t *req, int64_t session_id, char **reply);

/* Same from raw request text (the `orchfs call` path). */
int orch_call_text(orch_ctx *ctx, const char *method, const char *text, size_t len,
		   int64_t session_id, char **reply);

/* Build an error reply text from the current error slot. */
char *orch_reply_error(const char *call_id);

/* ---- parameters (after validation the types are known) ---- */

bool orch_param_has(json_t *params, const char *name);
int64_t orch_param_int(json_t *params, const char *name, int64_t dflt);
const char *orch_param_str(json_t *params, const char *name, const char *dflt);
bool orch_param_bool(json_t *params, const char *name, bool dflt);
json_t *orch_param_json(json_t *params, const char *name); /* borrowed or NULL */

/* A required non-blank string: invalid_params "<name> must not be blank". */
int orch_param_nonblank(json_t *params, const char *name, const char **out);

/* Normalise a repository-relative path in place; invalid_params when it escapes. */
int orch_path_normalise(const char *name, const char *in, char **out);

/* ---- SQL helpers ----
 *
 * Bind format characters: 'i' int64_t, 'I' int64_t where 0 binds NULL,
 * 's' const char * (NULL binds NULL), 'j' json_t * as compact JSON text
 * (NULL binds NULL), 'n' nothing-but-NULL.
 */
sqlite3_stmt *orch_sql(orch_ctx *ctx, const char *sql, const char *fmt, ...);

/* Execute a statement that returns no rows; 0 or ORCH_EINTERNAL. */
int orch_sql_exec(orch_ctx *ctx, const char *sql, const char *fmt, ...);

/* Step a prepared statement: SQLITE_ROW, SQLITE_DONE, or records internal. */
int orch_sql_step(orch_ctx *ctx, sqlite3_stmt *st);

/*
 * Turn the current row into a JSON object.  Column naming conventions:
 * names ending "_at" (or "lease_until") are ms timestamps rendered as RFC 3339;
 * names ending "_json" hold JSON text and are emitted as values under the
 * name without the suffix; NULL columns are omitted.
 */
json_t *orch_row_json(sqlite3_stmt *st);

/*
 * Run a query and return its first row as an object (0), or ORCH_ENOTFOUND
 * with message `nf_fmt` formatted with the int64 `id`.
 */
int orch_sql_row(orch_ctx *ctx, json_t **out, const char *nf_fmt, int64_t id,
		 const char *sql, const char *fmt, ...);

/* All rows as an array. */
int orch_sql_rows(orch_ctx *ctx, json_t **out, const char *sql, const char *fmt, ...);

/*
 * All rows as the compact text of a JSON array, into ctx->result_text: a
 * long list is written row by row, never held as JSON values.
 */
int orch_sql_rows_result(orch_ctx *ctx, const char *sql, const char *fmt, ...);

/* A single integer (first column of the first row); *found false when no row. */
int orch_sql_int(orch_ctx *ctx, int64_t *out, bool *found, const char *sql, const char *fmt, ...);

int64_t orch_last_id(orch_ctx *ctx);




/* ---- the call's transaction hooks (git side effects) ---- */
/* Register hooks (run LIFO); see orch_undo. */
void orch_txn_hook(orch_ctx *ctx, orch_hook_fn on_rollback, orch_hook_fn on_commit, orch_hook_fn free_arg,
		   void *arg);
void orch_undo_run(orch_ctx *ctx);   /* the call failed: run every on_rollback (LIFO), free, clear */
void orch_undo_clear(orch_ctx *ctx); /* the call committed: run every on_commit (LIFO), free, clear */

/* ---- read views shared by methods and the tree ---- */
int orch_session_json(orch_ctx *ctx, int64_t id, json_t **out);
int orch_session_context(orch_ctx *ctx, int64_t id, json_t **out);
int orch_task_json(orch_ctx *ctx, int64_t id, json_t **out);
int orch_worktree_json(orch_ctx *ctx, int64_t id, json_t **out);
int orch_current_ref_json(orch_ctx *ctx, int64_t session_id, json_t **out); /* JSON null if none */

/* A timeout in seconds: absent 0, else 0..one year (invalid_params). */
int orch_param_timeout(json_t *p, const char *name, int64_t *out);

/* ---- the tree's own views (views.c) ---- */

/* The sets of rows the tree names by id. */
typedef enum {
	ORCH_COLL_NONE,
	ORCH_COLL_REPLIES,       /* named by call_id */
	ORCH_COLL_SESSIONS,
	ORCH_COLL_TASKS,
	ORCH_COLL_CASES,         /* tasks of level case */
	ORCH_COLL_WORKTREES,
	ORCH_COLL_LOCKS,         /* active and unexpired at ctx->now */
	ORCH_COLL_NODES,
	ORCH_COLL_SESSION_ROOTS, /* sessions that own their session-root worktree */
} orch_coll;

bool orch_coll_has(orch_ctx *ctx, orch_coll c, int64_t id);
/* Every member in id order; `name` is NULL unless the collection is named. */
int orch_coll_list(orch_ctx *ctx, orch_coll c, void (*each)(void *arg, int64_t id, const char *name), void *arg);
bool orch_coll_named(orch_coll c);
int64_t orch_coll_find(orch_ctx *ctx, orch_coll c, const char *name); /* 0: none */

int orch_reply_json(orch_ctx *ctx, int64_t id, json_t **out);       /* replies/<call_id>.json */
int orch_heartbeat_text(orch_ctx *ctx, int64_t id, char **buf);      /* sessions/<id>/heartbeat */
int orch_session_root_path(orch_ctx *ctx, int64_t id, char **path); /* sessions/<id>/root */

/* One consistent snapshot for a read of the tree (ctx->now is its time). */
int orch_ctx_read_begin(orch_ctx *ctx);
void orch_ctx_read_end(orch_ctx *ctx);

/* The database's db_version and last change (ms) from mirror_meta; either out may be NULL. */
int orch_meta_read(orch_store *st, int64_t *db_version, int64_t *updated_at);

/*
 * Sessions the requester may take over (stale past the larger of their own
 * window and `timeout_s`), as resume.candidates.list returns them.
 */
int orch_resume_candidates(orch_ctx *ctx, int64_t requester, int64_t timeout_s, json_t **out);

/* Check that session `id` exists and is not closed (invalid_state otherwise). */
int orch_session_require_open(orch_ctx *ctx, int64_t id);

#endif
