/*
 * The SQLite store: one connection per process (or per thread), WAL,
 * busy_timeout, migrations embedded from schema/.
 */
#ifndef ORCHFS_STORE_H
#define ORCHFS_STORE_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <sqlite3.h>

typedef struct orch_store orch_store;

/* Open (creating if needed) the database at `path` and migrate it: the writer's connection. */
int orch_store_open(orch_store **out, const char *path);

/* Open a read-only connection to a database orch_store_open has set up (a WAL reader). */
int orch_store_open_reader(orch_store **out, const char *path);

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

/* When process `pid` started (clock ticks after boot, /proc/<pid>/stat); 0 if it does not run. */
int64_t orch_process_start(pid_t pid);

/*
 * Whether another connection (process or thread) committed since this
 * connection last asked (PRAGMA data_version); cheap, no transaction.
 */
bool orch_store_changed_elsewhere(orch_store *st);
void orch_store_close(orch_store *st);
sqlite3 *orch_store_db(orch_store *st);

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
sqlite3_stmt *orch_store_stmt(orch_store *st, const char *sql);

/* The schema version the database is at (number of applied migrations). */
int orch_store_schema_version(orch_store *st);

#endif
