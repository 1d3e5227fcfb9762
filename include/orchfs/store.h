/*
 * The SQLite store: one connection per process (or per thread), WAL,
 * busy_timeout, migrations embedded from schema/.
 */
#ifndef ORCHFS_STORE_H
#define ORCHFS_STORE_H

#include <stdbool.h>
#include <stdint.h>
#include <sqlite3.h>

typedef struct orch_store orch_store;

/* Open (creating if needed) the database at `path` and migrate it. */
int orch_store_open(orch_store **out, const char *path);
void orch_store_close(orch_store *st);
sqlite3 *orch_store_db(orch_store *st);

/* BEGIN IMMEDIATE when `write`, else a deferred read transaction. */
int orch_store_begin(orch_store *st, bool write);
int orch_store_commit(orch_store *st);
void orch_store_rollback(orch_store *st);
bool orch_store_in_txn(orch_store *st);

/*
 * A cached prepared statement for `sql`, reset and with bindings cleared.
 * `sql` must be a string literal (the cache is keyed by its address).
 */
sqlite3_stmt *orch_store_stmt(orch_store *st, const char *sql);

/* The schema version the database is at (number of applied migrations). */
int orch_store_schema_version(orch_store *st);

#endif
