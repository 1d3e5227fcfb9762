/*
 * SQLite store: connection set-up, embedded migrations, transactions and a
 * prepared-statement cache keyed by the SQL literal's address.
 */
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

#include "orchfs/base.h"
#include "orchfs/store.h"

/* Generated from the schema/ migrations by scripts/embed_schema.py. */
extern const char *const orch_schema_sql[];
extern const char *const orch_schema_names[];
extern const int orch_schema_count;

#define STMT_SLOTS 512

/* Past this many rows in one batch, the changes collapse into one "*" (every table). */
#define CHANGES_MAX 4096

/* A connection is used by one thread at a time (the writer lane, or a pooled reader's borrower). */
struct orch_store {
	sqlite3 *db;
	bool in_txn;
	orch_change *changes; /* rows changed (update hook); [0, mark) are committed */
	size_t nchanges, capchanges, mark;
	int64_t data_version; /* last PRAGMA data_version seen */
	struct {
		const char *sql;
		sqlite3_stmt *st;
	} cache[STMT_SLOTS];
};

/*
 * Table names from the update hook live only during the callback: intern
 * them.  The set is the schema's tables, so it stays tiny.
 */
static const char *intern(const char *name)
{
	static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
	static char *names[64]; /* under mu; never freed (process lifetime) */
	static size_t n;
	const char *out = "*";

	pthread_mutex_lock(&mu);
	for (size_t i = 0; i < n; i++)
		if (strcmp(names[i], name) == 0) {
			out = names[i];
			goto done;
		}
	if (n < sizeof(names) / sizeof(names[0]))
		out = names[n++] = strdup(name);
done:
	pthread_mutex_unlock(&mu);
	return out;
}

static void update_hook(void *arg, int op, const char *db, const char *table, sqlite3_int64 rowid)
{
	orch_store *st = arg;

	(void)op, (void)db;
	if (st->nchanges && strcmp(st->changes[st->nchanges - 1].table, "*") == 0)
		return;
	if (st->nchanges == CHANGES_MAX) {
		st->changes[st->nchanges++] = (orch_change){"*", 0};
		return;
	}
	if (st->nchanges == st->capchanges) {
		st->capchanges = st->capchanges ? st->capchanges * 2 : 16;
		st->changes = realloc(st->changes, (st->capchanges + 1) * sizeof(*st->changes));
		if (!st->changes)
			abort();
	}
	st->changes[st->nchanges++] = (orch_change){intern(table), rowid};
}

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

int64_t orch_process_start(pid_t pid)
{
	char path[64], buf[1024];
	unsigned long long start = 0;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	if (!(f = fopen(path, "r")))
		return 0;
	size_t n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = '\0';
	/* Fields after the command name (which may hold spaces and parentheses); starttime is field 22. */
	char *p = strrchr(buf, ')');
	if (!p || sscanf(p + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %*u %*u %*d %*d %*d %*d %*d %*d %llu",
			 &start) != 1)
		return 0;
	return (int64_t)start;
}

/*
 * SQL orch_pid_alive(pid, start): whether process `pid` runs and started at
 * `start` (orch_process_start), i.e. is the same process, not a later one
 * that got its pid.  Used by the liveness of alive handles (session_alive).
 */
static void pid_alive(sqlite3_context *c, int argc, sqlite3_value **argv)
{
	static int64_t self_start; /* this process's start: read once, the same from any thread */
	pid_t pid = (pid_t)sqlite3_value_int64(argv[0]);
	int64_t start = sqlite3_value_int64(argv[1]);

	(void)argc;
	if (pid == getpid()) {
		if (!__atomic_load_n(&self_start, __ATOMIC_RELAXED))
			__atomic_store_n(&self_start, orch_process_start(pid), __ATOMIC_RELAXED);
		sqlite3_result_int(c, start == __atomic_load_n(&self_start, __ATOMIC_RELAXED));
		return;
	}
	sqlite3_result_int(c, pid > 0 && start != 0 && orch_process_start(pid) == start);
}

static int connect(orch_store *st, const char *path, int flags)
{
	if (sqlite3_open_v2(path, &st->db, flags | SQLITE_OPEN_NOMUTEX, NULL) != SQLITE_OK)
		return orch_error_set(ORCH_EINTERNAL, "cannot open database %s: %s", path,
				      st->db ? sqlite3_errmsg(st->db) : "out of memory");
	sqlite3_busy_timeout(st->db, ORCH_STORE_BUSY_MS);
	sqlite3_create_function(st->db, "orch_pid_alive", 2, SQLITE_UTF8, NULL, pid_alive, NULL, NULL);
	return 0;
}

int orch_store_open_reader(orch_store **out, const char *path)
{
	orch_store *st = calloc(1, sizeof(*st));
	int rc;

	*out = NULL;
	/*
	 * Read-write at the file level (a WAL reader maps the -shm index),
	 * query_only at the SQL level: a reader can never write.
	 */
	if ((rc = connect(st, path, SQLITE_OPEN_READWRITE)) != 0 ||
	    (rc = exec(st, "PRAGMA query_only = 1; PRAGMA foreign_keys = ON;")) != 0) {
		orch_store_close(st);
		return rc;
	}
	orch_store_changed_elsewhere(st);
	*out = st;
	return 0;
}

/*
 * Make `path` (created when `create`) readable by its owner only: remove
 * group and other bits of an existing file, so that a state directory made
 * by an older orchfs (0644) becomes private too.  Never follows a symlink.
 * A missing file that is not to be created is fine.
 */
static int make_private(const char *path, bool create)
{
	int fd = open(path, O_RDWR | O_NOFOLLOW | O_CLOEXEC | (create ? O_CREAT : 0), 0600);
	struct stat sb;
	int rc = 0;

	if (fd < 0)
		return errno == ENOENT && !create ? 0
		       : orch_error_set(ORCH_EINTERNAL, "cannot open database %s: %s", path, strerror(errno));
	if (fstat(fd, &sb) == 0 && (sb.st_mode & 077) && fchmod(fd, sb.st_mode & 0700) < 0)
		rc = orch_error_set(ORCH_EINTERNAL, "cannot make %s private: %s", path, strerror(errno));
	close(fd);
	return rc;
}

/*
 * The database and its -wal and -shm files are 0600 (SQLite gives the
 * latter two the database's mode when it creates them).
 */
static int make_store_private(const char *path)
{
	static const char *const suffix[] = {"-wal", "-shm"};
	char side[4096];
	int rc = make_private(path, true);

	for (size_t i = 0; i < 2 && !rc; i++) {
		if ((size_t)snprintf(side, sizeof(side), "%s%s", path, suffix[i]) >= sizeof(side))
			return orch_error_set(ORCH_EINTERNAL, "database path too long: %s", path);
		rc = make_private(side, false);
	}
	return rc;
}

int orch_store_open(orch_store **out, const char *path)
{
	orch_store *st = calloc(1, sizeof(*st));
	int rc;

	*out = NULL;
	if ((rc = make_store_private(path)) != 0 ||
	    (rc = connect(st, path, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE)) != 0)
		goto fail;
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
		if (!rc || (sqlite3_errcode(st->db) & 0xff) != SQLITE_BUSY || ms >= ORCH_STORE_BUSY_MS)
			break;
		orch_error_clear();
		usleep(20000);
	}
	if (rc)
		goto fail;
	sqlite3_update_hook(st->db, update_hook, st);
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
	free(st->changes);
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
	st->mark = st->nchanges; /* anything recorded outside a transaction was autocommitted */
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
	st->mark = st->nchanges;
	return 0;
}

void orch_store_rollback(orch_store *st)
{
	if (!sqlite3_get_autocommit(st->db))
		control(st, "ROLLBACK");
	st->in_txn = false;
	st->nchanges = st->mark;
}

const orch_change *orch_store_changes(orch_store *st, size_t *n)
{
	/* Autocommitted statements (outside BEGIN) count as committed. */
	if (!st->in_txn)
		st->mark = st->nchanges;
	*n = st->mark;
	return st->changes;
}

size_t orch_store_changes_mark(orch_store *st)
{
	return st->nchanges;
}

const orch_change *orch_store_changes_since(orch_store *st, size_t mark, size_t *n)
{
	/* Past CHANGES_MAX the hook records nothing more: every later call of the batch gets the "*". */
	if (st->nchanges && mark >= st->nchanges && strcmp(st->changes[st->nchanges - 1].table, "*") == 0) {
		*n = 1;
		return st->changes + st->nchanges - 1;
	}
	*n = st->nchanges > mark ? st->nchanges - mark : 0;
	return st->changes + mark;
}

void orch_store_changes_clear(orch_store *st)
{
	size_t pending = st->nchanges - st->mark;

	if (pending)
		memmove(st->changes, st->changes + st->mark, pending * sizeof(*st->changes));
	st->nchanges = pending;
	st->mark = 0;
}

bool orch_store_changed_elsewhere(orch_store *st)
{
	sqlite3_stmt *s = orch_store_stmt(st, "PRAGMA data_version");
	int64_t v;

	if (!s || sqlite3_step(s) != SQLITE_ROW)
		return true; /* cannot tell: assume so */
	v = sqlite3_column_int64(s, 0);
	sqlite3_reset(s);
	if (v == st->data_version)
		return false;
	st->data_version = v;
	return true;
}

bool orch_store_in_txn(orch_store *st)
{
	return st->in_txn;
}

bool orch_store_txn_alive(orch_store *st)
{
	return st->in_txn && !sqlite3_get_autocommit(st->db);
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
