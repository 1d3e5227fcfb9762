/*
 * SQLite store: connection set-up, embedded migrations, transactions and a
 * prepared-statement cache keyed by the SQL literal's address.
 */
#include <assert.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "orchfs/error.h"
#include "orchfs/store.h"

/* Generated from the schema/ migrations by scripts/embed_schema.py. */
extern const char *const orch_schema_sql[];
extern const char *const orch_schema_names[];
extern const int orch_schema_count;

#define STMT_SLOTS 512

struct orch_store {
	sqlite3 *db;
	bool in_txn;
	struct {
		const char *sql;
		sqlite3_stmt *st;
	} cache[STMT_SLOTS];
};

static int db_error(orch_store *st, const char *what)
{
	return orch_error_set(ORCH_EINTERNAL, "database %s: %s", what, sqlite3_errmsg(st->db));
}

static int exec(orch_store *st, const char *sql)
{
	char *msg = NULL;

	if (sqlite3_exec(st->db, sql, NULL, NULL, &msg) != SQLITE_OK) {
		int rc = orch_error_set(ORCH_EINTERNAL, "database: %s", msg ? msg : "error");
		sqlite3_free(msg);
		return rc;
	}
	return 0;
}

static int user_version(orch_store *st, int *out)
{
	sqlite3_stmt *s;

	if (sqlite3_prepare_v2(st->db, "PRAGMA user_version", -1, &s, NULL) != SQLITE_OK)
		return db_error(st, "user_version");
	*out = sqlite3_step(s) == SQLITE_ROW ? sqlite3_column_int(s, 0) : 0;
	sqlite3_finalize(s);
	return 0;
}

/*
 * Apply the migrations the database has not seen, all in one IMMEDIATE
 * transaction so that two processes opening a new state directory at the
 * same moment cannot both apply them.
 */
static int migrate(orch_store *st)
{
	int have = 0, rc;
	char pragma[64];

	if ((rc = orch_store_begin(st, true)) != 0)
		return rc;
	if ((rc = user_version(st, &have)) != 0)
		goto fail;
	if (have > orch_schema_count) {
		rc = orch_error_set(ORCH_EINTERNAL, "database schema version %d is newer than this orchfs (%d)",
				    have, orch_schema_count);
		goto fail;
	}
	for (int i = have; i < orch_schema_count; i++) {
		if ((rc = exec(st, orch_schema_sql[i])) != 0) {
			orch_error_set(ORCH_EINTERNAL, "migration %s: %s", orch_schema_names[i],
				       orch_error_last()->message);
			goto fail;
		}
	}
	snprintf(pragma, sizeof(pragma), "PRAGMA user_version = %d", orch_schema_count);
	if ((rc = exec(st, pragma)) != 0)
		goto fail;
	return orch_store_commit(st);
fail:
	orch_store_rollback(st);
	return rc;
}

int orch_store_open(orch_store **out, const char *path)
{
	orch_store *st = calloc(1, sizeof(*st));
	int rc;

	*out = NULL;
	if (sqlite3_open_v2(path, &st->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
			    NULL) != SQLITE_OK) {
		rc = orch_error_set(ORCH_EINTERNAL, "cannot open database %s: %s", path,
				    st->db ? sqlite3_errmsg(st->db) : "out of memory");
		goto fail;
	}
	sqlite3_busy_timeout(st->db, 10000);
	/*
	 * WAL lets readers (the daemon rendering files) run beside a writer;
	 * synchronous=FULL makes a committed reply survive power loss, not
	 * just a killed process.
	 */
	/*
	 * Switching a new database to WAL, and its first migration, take locks
	 * for which SQLite may answer SQLITE_BUSY without waiting (several
	 * processes opening one new state directory at once): retry for up to
	 * the busy timeout.
	 */
	for (int ms = 0;; ms += 20) {
		rc = exec(st, "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;");
		if (!rc)
			rc = migrate(st);
		if (!rc || (sqlite3_errcode(st->db) & 0xff) != SQLITE_BUSY || ms >= 10000)
			break;
		orch_error_clear();
		usleep(20000);
	}
	if (rc)
		goto fail;
	*out = st;
	return 0;
fail:
	orch_store_close(st);
	return rc;
}

void orch_store_close(orch_store *st)
{
	if (!st)
		return;
	for (int i = 0; i < STMT_SLOTS; i++)
		sqlite3_finalize(st->cache[i].st);
	sqlite3_close(st->db);
	free(st);
}

sqlite3 *orch_store_db(orch_store *st)
{
	return st->db;
}

/* Run a cached transaction-control statement; every file read opens and closes one. */
static int control(orch_store *st, const char *sql)
{
	sqlite3_stmt *s = orch_store_stmt(st, sql);
	int rc;

	if (!s)
		return SQLITE_ERROR;
	rc = sqlite3_step(s);
	sqlite3_reset(s);
	return rc == SQLITE_DONE ? SQLITE_OK : rc;
}

int orch_store_begin(orch_store *st, bool write)
{
	assert(!st->in_txn);
	if (control(st, write ? "BEGIN IMMEDIATE" : "BEGIN") != SQLITE_OK)
		return db_error(st, "begin");
	st->in_txn = true;
	return 0;
}

int orch_store_commit(orch_store *st)
{
	assert(st->in_txn);
	if (control(st, "COMMIT") != SQLITE_OK) {
		int rc = db_error(st, "commit");
		orch_store_rollback(st);
		return rc;
	}
	st->in_txn = false;
	return 0;
}

void orch_store_rollback(orch_store *st)
{
	if (!sqlite3_get_autocommit(st->db))
		control(st, "ROLLBACK");
	st->in_txn = false;
}

bool orch_store_in_txn(orch_store *st)
{
	return st->in_txn;
}

sqlite3_stmt *orch_store_stmt(orch_store *st, const char *sql)
{
	size_t h = ((uintptr_t)sql >> 3) % STMT_SLOTS;

	for (size_t n = 0; n < STMT_SLOTS; n++, h = (h + 1) % STMT_SLOTS) {
		if (st->cache[h].sql == sql) {
			sqlite3_reset(st->cache[h].st);
			sqlite3_clear_bindings(st->cache[h].st);
			return st->cache[h].st;
		}
		if (!st->cache[h].sql) {
			sqlite3_stmt *s;
			if (sqlite3_prepare_v3(st->db, sql, -1, SQLITE_PREPARE_PERSISTENT, &s, NULL) != SQLITE_OK)
				return NULL;
			st->cache[h].sql = sql;
			st->cache[h].st = s;
			return s;
		}
	}
	assert(!"statement cache full");
	return NULL;
}

int orch_store_schema_version(orch_store *st)
{
	int v = 0;

	user_version(st, &v);
	return v;
}
