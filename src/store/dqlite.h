/*
 * The dqlite pieces of the store (built only with -Ddqlite=enabled):
 *
 *  - orch_dq_node: a dqlite node embedded in the process (libdqlite 1.11).
 *    Node 1 bootstraps the cluster; any other node joins through the peers it
 *    is given (or that it remembers in DIR/peers) and is promoted to voter
 *    while the cluster has fewer than three voters, else made a standby.
 *
 *  - orch_dq: a client of dqlite's wire protocol, connected to the cluster's
 *    leader, shaped like the SQLite API the store uses (prepare, bind, step,
 *    column accessors, changes, last insert id, SQLite result codes) so that
 *    the store can put it behind the same interface as its SQLite backend.
 *
 * Result codes are SQLite's (SQLITE_OK, SQLITE_ROW, SQLITE_DONE, extended
 * codes such as SQLITE_CONSTRAINT_UNIQUE as the server sends them), plus the
 * two dqlite adds: ORCH_DQ_NOT_LEADER and ORCH_DQ_LEADERSHIP_LOST.  A lost
 * connection or leader is reported as ORCH_DQ_LEADERSHIP_LOST when the
 * outcome of the request is unknown (a write outside a transaction, a
 * COMMIT) or a transaction was open; such errors are transient.
 * orch_dq_transient() says which codes a caller may retry (with a call_id).
 *
 * Threads: an orch_dq and its statements belong to one thread at a time
 * (like a sqlite3 connection without its mutex); several threads use several
 * orch_dq handles.  An orch_dq_node is started and stopped by one thread.
 */
#ifndef ORCHFS_STORE_DQLITE_H
#define ORCHFS_STORE_DQLITE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "orchfs/store.h" /* ORCH_STORE_BUSY_MS */

/* The database orchfs keeps its state in, in a cluster (a store's "dqlite:...[/NAME]" may name another). */
#define ORCH_DQ_DATABASE "orchfs"

#define ORCH_DQ_NOT_LEADER (10 | (40 << 8))        /* SQLITE_IOERR_NOT_LEADER */
#define ORCH_DQ_LEADERSHIP_LOST (10 | (41 << 8))   /* SQLITE_IOERR_LEADERSHIP_LOST */

/* Node roles, as the wire protocol codes them. */
enum { ORCH_DQ_VOTER = 0, ORCH_DQ_STANDBY = 1, ORCH_DQ_SPARE = 2 };

/* ---- the client ---- */

typedef struct orch_dq orch_dq;
typedef struct orch_dq_stmt orch_dq_stmt;

typedef struct orch_dq_opts {
	const char *const *peers; /* "HOST:PORT" of cluster members (any, not only the leader) */
	size_t npeers;
	const char *database;     /* the database's name in the cluster */
	int io_timeout_ms;        /* one request's reply; a silent leader is given up after it */
	int connect_ms;           /* how long to look for a leader before failing */
	int busy_ms;              /* how long BEGIN / autocommit statements retry SQLITE_BUSY
	                             (ORCH_STORE_BUSY_MS, as the SQLite backend waits) */
} orch_dq_opts;
#define ORCH_DQ_OPTS_INIT { NULL, 0, "orchfs.db", 5000, 10000, ORCH_STORE_BUSY_MS }

/*
 * Connect to the leader (asking the peers who it is) and open the database.
 * *out is set even on failure (NULL only when out of memory) so the error
 * can be read with orch_dq_errmsg; close it in both cases.  A connection
 * lost later is made again by the next request, to whichever node leads.
 */
int orch_dq_open(orch_dq **out, const orch_dq_opts *opts);
void orch_dq_close(orch_dq *c);

int orch_dq_errcode(orch_dq *c);        /* of the last failed call */
const char *orch_dq_errmsg(orch_dq *c);
/*
 * Whether `rc` is a leader change or lost connection (ORCH_DQ_NOT_LEADER,
 * ORCH_DQ_LEADERSHIP_LOST, or plain SQLITE_IOERR, which dqlite also sends when
 * raft fails a write): the call can be retried from its start, safely when it
 * is idempotent or carries a call_id.
 */
bool orch_dq_transient(int rc);

/* Run SQL text without parameters (several statements allowed; rows discarded). */
int orch_dq_exec(orch_dq *c, const char *sql);

/*
 * Prepare one statement.  Whether it yields rows is decided from its text
 * (SELECT, VALUES, a WITH whose main statement is a SELECT, PRAGMA without
 * '=', EXPLAIN): dqlite 1.11 tells a client neither, and a write sent as a
 * query would not be replicated.  Writes with RETURNING are refused
 * (SQLITE_ERROR): 1.11 cannot return rows of a replicated write.
 */
int orch_dq_prepare(orch_dq *c, const char *sql, orch_dq_stmt **out);
/*
 * Statements must be finalized before orch_dq_close.  Another statement may
 * run while one's rows are half read (as with SQLite): the connection carries
 * one request at a time, so the rest of those rows are read ahead into memory.
 */
void orch_dq_finalize(orch_dq_stmt *s);
/* Stop a statement (the rest of a query's rows are dropped); bindings stay. */
int orch_dq_reset(orch_dq_stmt *s);
int orch_dq_clear_bindings(orch_dq_stmt *s);
/* Whether the statement was sent as a query (it yields rows and writes nothing). */
bool orch_dq_stmt_yields_rows(orch_dq_stmt *s);

/* Bindings are 1-based like SQLite's; at most 255 parameters.  Values are copied. */
int orch_dq_bind_parameter_count(orch_dq_stmt *s);
int orch_dq_bind_null(orch_dq_stmt *s, int i);
int orch_dq_bind_int64(orch_dq_stmt *s, int i, int64_t v);
int orch_dq_bind_double(orch_dq_stmt *s, int i, double v);
int orch_dq_bind_text(orch_dq_stmt *s, int i, const char *v, int n);  /* n < 0: up to NUL */
int orch_dq_bind_blob(orch_dq_stmt *s, int i, const void *v, int n);

/*
 * SQLITE_ROW with a row to read, SQLITE_DONE when finished (a write has run:
 * see orch_dq_changes), else an error code.  After SQLITE_DONE or an error,
 * orch_dq_reset before stepping again.
 */
int orch_dq_step(orch_dq_stmt *s);

/* The current row (valid until the next step/reset/finalize). */
int orch_dq_column_count(orch_dq_stmt *s);
const char *orch_dq_column_name(orch_dq_stmt *s, int i);
int orch_dq_column_type(orch_dq_stmt *s, int i); /* SQLITE_INTEGER, _FLOAT, _TEXT, _BLOB, _NULL */
int64_t orch_dq_column_int64(orch_dq_stmt *s, int i);
double orch_dq_column_double(orch_dq_stmt *s, int i);
const char *orch_dq_column_text(orch_dq_stmt *s, int i); /* NULL for NULL */
const void *orch_dq_column_blob(orch_dq_stmt *s, int i);
int orch_dq_column_bytes(orch_dq_stmt *s, int i);

/* Of the last write run through this handle. */
int64_t orch_dq_changes(orch_dq *c);
int64_t orch_dq_last_insert_rowid(orch_dq *c);
/*
 * Whether a transaction this handle began is open, tracked from the first
 * word of each statement (BEGIN; COMMIT, END, ROLLBACK but not ROLLBACK TO):
 * run those as statements of their own, not inside a longer orch_dq_exec text.
 * Inside a transaction nothing is retried on a new leader (the transaction is
 * gone: ORCH_DQ_LEADERSHIP_LOST, and this turns false).
 */
bool orch_dq_in_txn(orch_dq *c);

/* ---- cluster administration through the client ---- */

typedef struct orch_dq_server {
	uint64_t id;
	char address[128];
	int role; /* ORCH_DQ_VOTER, _STANDBY, _SPARE */
} orch_dq_server;

/* The members as the leader knows them; *out is malloc'ed (free it). */
int orch_dq_cluster(orch_dq *c, orch_dq_server **out, size_t *n);
int orch_dq_add(orch_dq *c, uint64_t id, const char *address);
int orch_dq_assign(orch_dq *c, uint64_t id, int role);
/* The address of the node this handle talks to (the leader when connected), or "". */
const char *orch_dq_leader_address(orch_dq *c);

/* ---- the embedded node ---- */

typedef struct orch_dq_node orch_dq_node;

typedef struct orch_dq_node_opts {
	uint64_t id;              /* 1 bootstraps a new cluster */
	const char *address;      /* "HOST:PORT" it binds and the others reach it at */
	const char *dir;          /* raft log, snapshots and the remembered peers (DIR/peers) */
	const char *const *peers; /* members to join through (added to DIR/peers) */
	size_t npeers;
	unsigned latency_ms;      /* expected network latency (0: dqlite's default) */
	int join_ms;              /* how long joining may wait for a leader */
} orch_dq_node_opts;
#define ORCH_DQ_NODE_OPTS_INIT { 0, NULL, NULL, NULL, 0, 0, 30000 }

/*
 * Start the node (ignoring SIGPIPE for the whole process: a peer's death
 * must not kill this one), join it to the cluster and save the members'
 * addresses in DIR/peers.  Returns 0 or ORCH_EINTERNAL with orch_error_set.
 */
int orch_dq_node_start(orch_dq_node **out, const orch_dq_node_opts *opts);
void orch_dq_node_stop(orch_dq_node *n);
/* The peer addresses remembered in DIR/peers plus the node's own. */
size_t orch_dq_node_peers(orch_dq_node *n, const char *const **out);

#endif
