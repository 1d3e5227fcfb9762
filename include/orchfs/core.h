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
	char *db_path;   /* immutable: where the state is (orch_store_open): <state_dir>/state.db, or the
	                    dqlite cluster <state_dir>/store names */
	/*
	 * immutable: the host this daemon records on the worktrees it makes
	 * (orchfs mount --host; "" on one machine, the default).  A worktree's
	 * checkout and branch exist only in the repository of its host, so
	 * methods that touch them run only there (orch_worktree_local).
	 */
	const char *host;

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

	/* Calls of `wait` sleep on wait_cond; commit_seq counts orch_env_notify_commit (under wait_mu). */
	pthread_mutex_t wait_mu;
	pthread_cond_t wait_cond;
	uint64_t commit_seq;
} orch_env;

/*
 * Make the state directory's store the dqlite cluster `where`
 * ("dqlite:HOST:PORT,..."), and this machine the host `host` (when not
 * NULL; orch_store_set_host): written to <state_dir>/store, which every
 * later orch_env_open on this host reads (the daemon, orchfs call, serve,
 * mcp, check).
 */
int orch_env_set_store(const char *state_dir, const char *where, const char *host);
/* Where the state of `state_dir` is (malloc'ed): the cluster its `store` file names, else <state_dir>/state.db. */
int orch_state_store(const char *state_dir, char **out);

/* How orch_env_open_opts opens the workspace; initialise with ORCH_ENV_OPTS_INIT. */
typedef struct orch_env_opts {
	const char *store; /* not NULL: first made the state directory's store (orch_env_set_store) */
	const char *host;  /* NULL or "": the one machine; else a name orch_host_valid accepts (else invalid_params) */
} orch_env_opts;
#define ORCH_ENV_OPTS_INIT {NULL, NULL}

/* Open the workspace (see orch_ctx_open) into `env`, with the default options. */
int orch_env_open(orch_env *env, const char *repo_dir, const char *state_dir);
/* The same with options (`opts` NULL: the defaults). */
int orch_env_open_opts(orch_env *env, const char *repo_dir, const char *state_dir, const orch_env_opts *opts);

/* A host name: 1 to ORCH_HOST_MAX (store.h) characters of A-Za-z0-9._:- */
bool orch_host_valid(const char *host);
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
	const char *host;       /* env->host */
	int64_t now;            /* ms since the epoch, fixed for one call */
	orch_undo *undo;        /* transaction hooks (LIFO), see orch_txn_hook */
	bool unchanged;         /* set by a write method that changed nothing: no db_version bump */
	char *result_text;      /* a method's result as compact JSON text, instead of *result (long lists) */
	int (*fail_fn)(struct orch_ctx *ctx, json_t *arg); /* see orch_txn_on_failure */
	json_t *fail_arg;
	bool remember;          /* set by the caller: the call came through sessions/<id>/ctl/, its reply is remembered */
	bool remembered;        /* the reply was remembered inside the call's own transaction */
	json_t *prepared;       /* what the method's prepare step made (orch_prepare_fn), for its fn */
	orch_env *own_env;      /* the environment orch_ctx_open made (freed by orch_ctx_close) */
	/* A blocking call (wait) stops early when this says its client gave up (a signal); may be NULL. */
	bool (*cancelled)(void *arg);
	void *cancelled_arg;
	/* A caller that parks blocked calls instead of blocking (the daemon): see orch_wait_state. */
	struct orch_wait_state *wait_state;
} orch_ctx;

/*
 * A call of `wait` that must not block its thread: with ctx->wait_state
 * set, the call looks once.  If nothing happened yet it replies nothing
 * and sets `pending`: the caller parks the request and calls again with the
 * same request and state at the next commit or at `wake_at` (the deadline,
 * or a lock's lease end), until `pending` is false.  The first call fixes
 * db_version_after and the deadline; zero-initialise before it.
 */
typedef struct orch_wait_state {
	bool started;
	bool pending;     /* out: nothing yet; call again */
	int64_t after;    /* db_version_after in effect */
	int64_t deadline; /* ms since the epoch */
	int64_t scanned;  /* events up to here were looked at */
	int64_t wake_at;  /* out, when pending: look again by then at the latest (ms) */
} orch_wait_state;

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
/* orch_ctx_open as host `host` (see orch_env_open): `orchfs call --host`. */
int orch_ctx_open_host(orch_ctx *ctx, const char *repo_dir, const char *state_dir, const char *host);
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
	ORCH_P_OWNER,  /* a session as a string ("1", free text) or a positive integer (made "1") */
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

/*
 * A method's long read-only work, done before its write and outside the
 * writer lane: on a pooled read-only connection inside one read
 * transaction (one snapshot; ctx->now is its time).  *prepared (a JSON
 * value, or NULL) is in ctx->prepared while fn runs on the writer lane;
 * `unprepare` gets it after the call whatever happened (fn may have
 * claimed what it names, e.g. files it moved into place).
 */
typedef int (*orch_prepare_fn)(orch_ctx *ctx, json_t *params, json_t **prepared);

#define ORCH_M_WRITE 0x1u     /* mutates state: one BEGIN IMMEDIATE transaction, bumps db_version */
#define ORCH_M_CLOSED_OK 0x2u /* through sessions/<id>/ctl/, allowed for a closed or taken-over session */
#define ORCH_M_BLOCKING 0x4u  /* may block (wait): runs outside a transaction, opens its own; no call_id */

typedef struct orch_method {
	const char *name;
	orch_method_fn fn;
	unsigned flags;
	const orch_param *params; /* NULL-name terminated */
	const char *summary;      /* what it does */
	const char *output;       /* what the result holds */
	const char *example;      /* an example request body */
	const char *errors;       /* the typed errors it can return */
	orch_prepare_fn prepare;  /* optional, see orch_prepare_fn */
	void (*unprepare)(json_t *prepared);
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
/*
 * Start-up: reconcile this host's worktree records with the disk (records
 * of other hosts are never looked at: their directories are on other
 * machines); *log gets one string per finding.
 */
int orch_worktree_reconcile(orch_ctx *ctx, json_t **log);
/*
 * Whether worktree `wt` (a record as orch_worktree_json gives it) is on
 * this daemon's host (ctx->host): 0, else invalid_state naming its host
 * (details.state "other_host").  Every method that touches a worktree's
 * checkout or branch asks here first; reads of the record do not.
 */
int orch_worktree_local(orch_ctx *ctx, json_t *wt);

/* The merge pipeline's views (merge/ in the tree). */
int orch_merge_request_json(orch_ctx *ctx, int64_t id, json_t **out); /* merge/requests/<id>.json */
int orch_main_item_json(orch_ctx *ctx, int64_t id, json_t **out);     /* merge/main/<id>.json */
int orch_main_queue_json(orch_ctx *ctx, int64_t id, json_t **out);    /* queued items in order; id unused */
/* merge/main/lock.json: the main merge lock while held and unexpired at ctx->now, else JSON null; id unused. */
int orch_main_lock_json(orch_ctx *ctx, int64_t id, json_t **out);
/*
 * The uncommitted paths of the checkout at `path` (changes to tracked
 * files and untracked files), [] when it is gone or unreadable: what a
 * merge of its branch leaves behind.  Any thread.
 */
json_t *orch_uncommitted_paths(const char *path);

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

/*
 * The JSON Schema of a method's input object, from its parameter table:
 * each key's JSON type and limits, its doc line as description, required
 * keys, no other keys (plus the reserved call_id), and the method's
 * example under "examples".  Valid as draft-07 and as 2020-12.
 */
json_t *orch_method_schema(const orch_method *m);

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
 * and the worktrees of host `host` (NULL or "": the one machine) against
 * git, changing nothing.  *report is
 * {state_dir, integrity, problems: [text], leftovers: [{path, commit,
 * user_changes}]}; 0 when the check ran (problems or not), else an error
 * code (no repository or database).
 */
int orch_check(const char *repo_dir, const char *state_dir, const char *host, json_t **report);

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
	size_t line, column; /* of the byte being scanned, 1-based, columns in characters */
	size_t str_line, str_column; /* where the string being scanned starts */
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

/*
 * Remember `reply` as session `session_id`'s last reply for `method` through
 * sessions/<id>/ctl/ (a small write on the writer lane; the error slot is
 * kept).  orch_call does it itself when ctx->remember is set; the fs layer
 * calls it for writes that run no call (malformed, incomplete, empty).
 */
void orch_remember_reply(orch_env *env, int64_t session_id, const char *method, const char *reply);

/* The remembered reply (caller frees), or NULL when none; ctx: any connection. */
char *orch_remembered_reply(orch_ctx *ctx, int64_t session_id, const char *method);

/* Whether session `id` chose ctl_errors "reply" (false when it does not exist). */
bool orch_session_ctl_errors_reply(orch_ctx *ctx, int64_t id);

/* Build an error reply text from the current error slot. */
char *orch_reply_error(const char *call_id);

/* ---- parameters (after validation the types are known) ---- */

bool orch_param_has(json_t *params, const char *name);
int64_t orch_param_int(json_t *params, const char *name, int64_t dflt);
/*
 * A lease's length from `ttl_seconds` (file locks and the main merge lock):
 * absent or 0 means ORCH_LEASE_DEFAULT_S; negative or over a year is
 * invalid_params.  *out in milliseconds.
 */
#define ORCH_LEASE_DEFAULT_S 600
int orch_param_ttl_ms(json_t *params, int64_t *out);
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
orch_stmt *orch_sql(orch_ctx *ctx, const char *sql, const char *fmt, ...);

/* Execute a statement that returns no rows; 0 or ORCH_EINTERNAL. */
int orch_sql_exec(orch_ctx *ctx, const char *sql, const char *fmt, ...);

/* Step a prepared statement: ORCH_ROW, ORCH_DONE, or records internal. */
int orch_sql_step(orch_ctx *ctx, orch_stmt *st);

/*
 * Turn the current row into a JSON object.  Column naming conventions:
 * names ending "_at" (or "lease_until") are ms timestamps rendered as RFC 3339;
 * names ending "_json" hold JSON text and are emitted as values under the
 * name without the suffix; NULL columns are omitted.
 */
json_t *orch_row_json(orch_stmt *st);

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
/*
 * A list's after_id (param "after_id", 0: none) names a row: `sql` selects
 * it by id (one "?"); else not_found "after_id: <what> N not found".
 */
int orch_page_after(orch_ctx *ctx, json_t *p, const char *sql, const char *what);

int64_t orch_last_id(orch_ctx *ctx);




/* ---- the call's transaction hooks (git side effects) ---- */
/* Register hooks (run LIFO); see orch_undo. */
void orch_txn_hook(orch_ctx *ctx, orch_hook_fn on_rollback, orch_hook_fn on_commit, orch_hook_fn free_arg,
		   void *arg);
void orch_undo_run(orch_ctx *ctx);   /* the call failed: run every on_rollback (LIFO), free, clear */

/*
 * What a failing call still records (merge.main.run marks an item whose
 * merge conflicts `failed`): if the call fails, `fn(ctx, arg)` runs after
 * the call's own changes were rolled back and its git effects undone, in
 * the transaction that stores its error reply, and commits with it
 * (db_version is bumped: the state changed).  The reply stays the call's
 * error.  One per call (a later one replaces it); `arg` is taken.
 */
void orch_txn_on_failure(orch_ctx *ctx, int (*fn)(orch_ctx *ctx, json_t *arg), json_t *arg);
void orch_undo_clear(orch_ctx *ctx); /* the call committed: run every on_commit (LIFO), free, clear */
/*
 * Whether the call committed is unknown (a dqlite leader lost during its
 * COMMIT): run neither, free, clear.  The git effects stay as they are, as
 * after a crash at that moment: a retry with the call_id gets the stored
 * reply if it had committed and finds them in place; if it had not, the
 * retry and start-up recovery treat them as a crash's leftovers.
 */
void orch_undo_forget(orch_ctx *ctx);

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
	ORCH_COLL_MERGE_REQUESTS,
	ORCH_COLL_MAIN_ITEMS,    /* main-merge queue items, every state */
	ORCH_COLL_MIRROR,        /* the files of the mirror's current rendering */
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

/* ---- the markdown mirror (mirror.c) ---- */

/* mirror/status.json: what mirror.status returns. */
int orch_mirror_status_json(orch_ctx *ctx, int64_t id, json_t **out);
/*
 * mirror/<name>.md, file `id` of the current rendering: *buf maps the file
 * read-only (munmap(*buf, *len)); the file is written once and never
 * changed, so the mapping is that rendering for as long as it is held, even
 * after a later refresh removed the file.  *mtime: when its content last
 * changed (ms).
 */
int orch_mirror_file(orch_ctx *ctx, int64_t id, char **buf, size_t *len, int64_t *mtime);
/* The name of mirror file `id` (1-based; NULL past the last), and how many there are. */
const char *orch_mirror_file_name(int64_t id);

/* The database's db_version and last change (ms) from mirror_meta; either out may be NULL. */
int orch_meta_read(orch_store *st, int64_t *db_version, int64_t *updated_at);
/* orch_meta_read and orch_store_changed_elsewhere in one statement (one round trip to a dqlite leader). */
int orch_meta_read_elsewhere(orch_store *st, int64_t *db_version, int64_t *updated_at, bool *elsewhere);

/*
 * Sessions the requester may take over (stale past the larger of their own
 * window and `timeout_s`), as resume.candidates.list returns them.
 */
int orch_resume_candidates(orch_ctx *ctx, int64_t requester, int64_t timeout_s, json_t **out);

/* Check that session `id` exists and is not closed (invalid_state otherwise). */
int orch_session_require_open(orch_ctx *ctx, int64_t id);

/* A session's heartbeat window when session.open was given none (seconds). */
#define ORCH_HEARTBEAT_WINDOW 120

/*
 * Liveness, defined once (session.c): open (not closed, not taken over) and
 * heard from within its own heartbeat window, lengthened to `min_window_s`
 * when larger.  *open and *age_ms may be NULL.  not_found for no session.
 */
int orch_session_live(orch_ctx *ctx, int64_t id, int64_t min_window_s, bool *live, bool *open, int64_t *age_ms);

/* sessions/<id>/session.json: the session plus heartbeat_age_seconds and stale (depends on the time). */
int orch_session_file_json(orch_ctx *ctx, int64_t id, json_t **out);

/* "session 1 (implementer, alice)" for an owner string naming a session, else "owner \"x\"" (caller frees). */
char *orch_owner_words(orch_ctx *ctx, const char *owner);

/* ---- the change feed (events.c) ---- */

/* How many events the database keeps (the newest). */
#define ORCH_EVENTS_KEPT 100000
/* ... deleting the older ones once every this many events (so up to KEPT + STEP - 1 are kept). */
#define ORCH_EVENTS_PRUNE_STEP 64

/*
 * Record the event of a successful mutating call, after its db_version
 * bump, in its transaction: the rows changed since `mark`
 * (orch_store_changes_mark taken when the call started).
 */
int orch_event_record(orch_ctx *ctx, const char *method, int64_t session_id, size_t mark);

/* One event as the JSON line `events` shows (with its newline). */
typedef struct {
	int64_t db_version;
	char *line;
	size_t len;
} orch_event_line;

/*
 * The kept history: events after *from up to *last (the current
 * db_version) are all there (st: any connection, in a transaction or not).
 */
int orch_events_bounds(orch_store *st, int64_t *from, int64_t *last);
/* Up to `max` events after db_version `after`, oldest first. */
int orch_events_after(orch_store *st, int64_t after, size_t max, orch_event_line **out, size_t *n);
void orch_event_lines_free(orch_event_line *lines, size_t n);
/*
 * The rows the events of db_versions (after, upto] name (their `ids`), for
 * a daemon to invalidate what another host's (or process's) commits
 * changed.  *complete is false when the events cannot say it all: a version
 * without its event (pruned, or a write outside a call), an event naming
 * "*", or more rows than a cache would look at one by one.
 */
int orch_events_changes(orch_store *st, int64_t after, int64_t upto, orch_change **out, size_t *n, bool *complete);

/* ---- liveness by a held-open sessions/<id>/alive (session.c) ---- */

/*
 * SQL: the holder row `a` of session_alive is a process that still runs
 * (on this host: its pid and start time; on another host sharing a dqlite
 * state: its daemon saw it running within ORCH_HOLDER_TIMEOUT_MS).
 */
#define ORCH_SQL_HOLDER_ALIVE(a) "orch_holder_alive(" a ".host, " a ".daemon_pid, " a ".daemon_start, " a ".seen_at)"
/*
 * SQL: session row `s` is held alive: sessions/<id>/alive is open in a
 * daemon that still runs.  This is the one place that says so; it joins
 * the session's own heartbeat window in the liveness rule.
 */
#define ORCH_SQL_ALIVE_HELD(s)                                                                     \
	"EXISTS (SELECT 1 FROM session_alive a WHERE a.session_id = " s ".id AND "                 \
	ORCH_SQL_HOLDER_ALIVE("a") ")"
/*
 * SQL: its alive handle was closed (or its daemon died) since its last sign
 * of life: it is a resume candidate at once, without waiting for its window.
 */
#define ORCH_SQL_ALIVE_DROPPED(s)                                                                  \
	"((" s ".alive_dropped_at IS NOT NULL AND " s ".alive_dropped_at >= " s ".last_seen_at) OR "  \
	"(EXISTS (SELECT 1 FROM session_alive a WHERE a.session_id = " s ".id) AND NOT "          \
	ORCH_SQL_ALIVE_HELD(s) "))"

/*
 * Internal methods (not in the method table, not in ctl/): alive held /
 * released by this process (a daemon's open alive file, or a session
 * orchfs serve / mcp holds), and the holds of processes that are gone
 * reaped.  A process is named by pid and start time (orch_process_start).
 */
extern const orch_method orch_alive_hold_method;
extern const orch_method orch_alive_release_method;
extern const orch_method orch_alive_reap_method;
/*
 * Whether session_alive names a process that is gone (a cheap look on a
 * reader).  orch_call_method then runs orch_alive_reap_method before any
 * other mutating or blocking call, so that the holds of a process killed
 * with SIGKILL are dropped -- its sessions' locks released -- by the next
 * writer, whichever process it is; until then the liveness rule already
 * counts them dropped (ORCH_SQL_ALIVE_DROPPED).
 */
bool orch_alive_dead_holders(orch_env *env);

/*
 * With a dqlite store (orch_store_host() set): refresh seen_at of the
 * holders on this host that still run (the daemon, every
 * ORCH_HOLDER_BEAT_MS), so that other hosts count them alive; holders that
 * died, or a host that is gone, age out after ORCH_HOLDER_TIMEOUT_MS.
 * `st` is a connection of the beat's own, so that no call (a long checkout
 * on the writer lane) can hold a beat back past the timeout.
 */
int orch_alive_beat(orch_store *st);

/* Run method `m` (an internal one too) as orch_call does. */
int orch_call_method(orch_ctx *ctx, const orch_method *m, json_t *req, int64_t session_id, char **reply);

/*
 * Commits for waiters (the `wait` method): a daemon tells its waiting
 * calls at once that something was committed (orch_env_notify_commit, by
 * itself or another process); without it they look every WAIT_POLL_MS.
 */
void orch_env_notify_commit(orch_env *env);

#endif
