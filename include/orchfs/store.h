/*
 * The store: connections to the state database, its migrations, its
 * transactions and prepared statements, behind one API whatever the engine:
 *
 *  - SQLite (the default): a file, WAL, busy_timeout; one connection per
 *    thread that uses it.
 *  - dqlite (built with -Ddqlite=enabled): the same SQL, replicated by Raft
 *    across hosts; a connection is a client of the cluster's leader.
 *
 * No SQLite type crosses this header: statements are orch_stmt, result
 * codes and column types are the ORCH_ values below (the same numbers as
 * SQLite's, so the backends pass them through).
 */
#ifndef ORCHFS_STORE_H
#define ORCHFS_STORE_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

typedef struct orch_store orch_store;
typedef struct orch_stmt orch_stmt;

/* orch_stmt_step's outcomes besides an error code. */
enum { ORCH_ROW = 100, ORCH_DONE = 101 };
/* orch_stmt_column_type's answers. */
enum { ORCH_INTEGER = 1, ORCH_FLOAT = 2, ORCH_TEXT = 3, ORCH_BLOB = 4, ORCH_NULL = 5 };

/*
 * Where the state is (`where`): a file path (SQLite), or
 * "dqlite:HOST:PORT[,HOST:PORT...]" (a dqlite cluster, reached through any
 * of those members; built with -Ddqlite=enabled only).
 *
 * Open (creating if needed) the database and migrate it: the writer's
 * connection.  Migrations run in one write transaction, so with dqlite
 * they run once, through the leader, whichever daemon starts first.
 */
int orch_store_open(orch_store **out, const char *where);

/* Open a read-only connection to a database orch_store_open has set up (a WAL reader). */
int orch_store_open_reader(orch_store **out, const char *where);

/*
 * In a process that runs a dqlite node (before starting it): give the
 * connections dqlite opens the SQL functions the store's queries use and
 * the record of changed rows its clients take.  Once per process.
 */
void orch_store_serve(void);

/* Whether `where` names a dqlite cluster. */
bool orch_store_is_dqlite(const char *where);

/*
 * Whether the error `rc` of the last failed statement is transient: the
 * connection or the dqlite leader was lost, the outcome of the transaction
 * is unknown, and the whole call may be retried (with a call_id, safely).
 */
bool orch_store_lost(orch_store *st);

/*
 * How long a writer waits for another process's write lock before the
 * call fails with `internal` (EIO).  In-process writers queue on the
 * writer lane instead and never spend it.
 */
#define ORCH_STORE_BUSY_MS 30000

/* A row a committed transaction changed (from SQLite's update hook). */
typedef struct orch_change {
	const char *table; /* interned: compare with strcmp, valid for the process */
	int64_t rowid;
} orch_change;

/* The interned copy of table name `name` (for orch_change.table), or "*" when too many names were seen. */
const char *orch_store_intern(const char *name);

/*
 * Rows changed by this connection's committed transactions since the last
 * orch_store_changes_clear (a rolled-back transaction's are dropped).
 */
const orch_change *orch_store_changes(orch_store *st, size_t *n);
void orch_store_changes_clear(orch_store *st);

/*
 * The rows recorded since `mark` (orch_store_changes_mark, taken earlier in
 * the same transaction): what one call of a batch changed.  A last entry
 * with table "*" means more rows than are tracked.
 */
size_t orch_store_changes_mark(orch_store *st);
const orch_change *orch_store_changes_since(orch_store *st, size_t mark, size_t *n);

/*
 * Hosts sharing a dqlite state.  The host this process runs on (its
 * holders of sessions/<id>/alive carry it): "" with a SQLite store; set
 * once, before threads start, from the state directory's `store` file.
 */
#define ORCH_HOST_MAX 64
void orch_store_set_host(const char *host);
const char *orch_store_host(void);
/* A host's daemon refreshes the holders it sees running this often; others count them gone after the timeout. */
#define ORCH_HOLDER_BEAT_MS 3000
#define ORCH_HOLDER_TIMEOUT_MS 15000
/* Whether the holder (pid, start) is a process running on this host. */
bool orch_holder_runs_here(int64_t pid, int64_t start);

/* When process `pid` started (clock ticks after boot, /proc/<pid>/stat); 0 if it does not run. */
int64_t orch_process_start(pid_t pid);

/*
 * Whether another connection (process or thread) committed since this
 * connection last asked (PRAGMA data_version); cheap, no transaction.
 */
bool orch_store_changed_elsewhere(orch_store *st);
/* The same from a data_version the caller read itself (SELECT data_version FROM pragma_data_version). */
bool orch_store_data_version_seen(orch_store *st, int64_t data_version);
void orch_store_close(orch_store *st);

/*
 * Set the error of the last failed statement (ORCH_EINTERNAL, "database
 * <what>: ..."; when the dqlite leader was lost, a message saying to retry
 * the call) and return its code.
 */
int orch_store_error(orch_store *st, const char *what);
/* The message of the last failed statement. */
const char *orch_store_errmsg(orch_store *st);
/* Rows changed by the last INSERT, UPDATE or DELETE run; the rowid the last INSERT gave. */
int64_t orch_store_rows_changed(orch_store *st);
int64_t orch_store_last_id(orch_store *st);
/* Run SQL without parameters (several statements allowed; rows are dropped). */
int orch_store_exec(orch_store *st, const char *sql);
/* A consistent copy of the database into the new, empty file `dest` (SQLite only). */
int orch_store_backup(orch_store *st, const char *dest);

/* BEGIN IMMEDIATE when `write`, else a deferred read transaction. */
int orch_store_begin(orch_store *st, bool write);
int orch_store_commit(orch_store *st);
void orch_store_rollback(orch_store *st);
bool orch_store_in_txn(orch_store *st);
/* Whether the transaction begun is still open (SQLite rolls it back itself on I/O errors, a full disk, ...). */
bool orch_store_txn_alive(orch_store *st);

/*
 * A cached prepared statement for `sql`, reset and with bindings cleared.
 * `sql` must be a string literal (the cache is keyed by its address).
 */
orch_stmt *orch_store_stmt(orch_store *st, const char *sql);
/* An uncached statement for any `sql`: orch_stmt_finalize it.  0, or ORCH_EINTERNAL (errmsg says). */
int orch_store_prepare(orch_store *st, const char *sql, orch_stmt **out);
void orch_stmt_finalize(orch_stmt *s);

/*
 * Statements, as SQLite's: bindings are 1-based and copied; step gives
 * ORCH_ROW, ORCH_DONE or an error code; columns are 0-based and valid until
 * the next step or reset.  Text is NUL-terminated UTF-8 (NULL for NULL).
 */
int orch_stmt_step(orch_stmt *s);
int orch_stmt_reset(orch_stmt *s);
int orch_stmt_clear_bindings(orch_stmt *s);
int orch_stmt_bind_null(orch_stmt *s, int i);
int orch_stmt_bind_int64(orch_stmt *s, int i, int64_t v);
int orch_stmt_bind_double(orch_stmt *s, int i, double v);
int orch_stmt_bind_text(orch_stmt *s, int i, const char *v);
int orch_stmt_column_count(orch_stmt *s);
const char *orch_stmt_column_name(orch_stmt *s, int i);
int orch_stmt_column_type(orch_stmt *s, int i);
int64_t orch_stmt_column_int64(orch_stmt *s, int i);
int orch_stmt_column_int(orch_stmt *s, int i);
double orch_stmt_column_double(orch_stmt *s, int i);
const char *orch_stmt_column_text(orch_stmt *s, int i);
int orch_stmt_column_bytes(orch_stmt *s, int i);

/* The schema version the database is at (number of applied migrations). */
int orch_store_schema_version(orch_store *st);

#endif
