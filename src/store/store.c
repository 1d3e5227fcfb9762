/*
 * The store: connection set-up, embedded migrations, transactions and a
 * prepared-statement cache keyed by the SQL literal's address, over two
 * engines.  SQLite is the default; with -Ddqlite=enabled a store opened on
 * "dqlite:..." sends the same SQL to a dqlite cluster's leader through the
 * wire-protocol client (src/store/dqlite/client.c).  The statement and
 * connection functions below dispatch on which of the two a store holds.
 *
 * Changed rows: SQLite's update hook records them on the writer's own
 * connection.  With dqlite the SQL runs in the leader's process, so every
 * process that runs a dqlite node installs (orch_store_serve) the same hook
 * on the connections dqlite opens, keeps the rows there per connection, and
 * the client fetches them with SELECT orch_changes_take() when it needs them.
 */
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

#include "orchfs/base.h"
#include "orchfs/store.h"

#include <sqlite3.h>
#ifdef ORCH_HAVE_DQLITE
#include "dqlite.h"
#endif

/* Generated from the schema/ migrations by scripts/embed_schema.py. */
extern const char *const orch_schema_sql[];
extern const char *const orch_schema_names[];
extern const int orch_schema_count;

#define STMT_SLOTS 512

/* Past this many rows in one batch, the changes collapse into one "*" (every table). */
#define CHANGES_MAX 4096

/* The engines use the same numbers: ORCH_ values pass through unchanged. */
_Static_assert(ORCH_ROW == SQLITE_ROW && ORCH_DONE == SQLITE_DONE, "step codes");
_Static_assert(ORCH_INTEGER == SQLITE_INTEGER && ORCH_FLOAT == SQLITE_FLOAT && ORCH_TEXT == SQLITE_TEXT &&
		       ORCH_BLOB == SQLITE_BLOB && ORCH_NULL == SQLITE_NULL,
	       "column types");

/* A statement of either engine; it belongs to its store's thread. */
struct orch_stmt {
	orch_store *store;
	sqlite3_stmt *s; /* SQLite */
#ifdef ORCH_HAVE_DQLITE
	orch_dq_stmt *q; /* dqlite */
	bool changes_rows; /* dqlite: may change rows (not a query, not transaction control or a PRAGMA) */
#endif
};

/* A connection is used by one thread at a time (the writer lane, or a pooled reader's borrower). */
struct orch_store {
	sqlite3 *db; /* SQLite; NULL with dqlite */
#ifdef ORCH_HAVE_DQLITE
	orch_dq *dq;          /* dqlite; NULL with SQLite */
	bool dq_unsynced;     /* a write ran since the leader's changed rows were last fetched */
	bool dq_lost;         /* the last request failed for want of a leader (orch_store_lost) */
#endif
	bool in_txn;
	orch_change *changes; /* rows changed (update hook); [0, mark) are committed */
	size_t nchanges, capchanges, mark;
	int64_t data_version; /* last PRAGMA data_version seen */
	struct {
		const char *sql;
		orch_stmt *st;
	} cache[STMT_SLOTS];
};

/* The dqlite client of a store (NULL with SQLite); ON_ENGINE: the expression for the store's engine. */
#ifdef ORCH_HAVE_DQLITE
#define DQ(st) ((st)->dq)
#define ON_ENGINE(st, dq_expr, sqlite_expr) ((st)->dq ? (dq_expr) : (sqlite_expr))
#else
#define DQ(st) ((void)(st), 0)
#define ON_ENGINE(st, dq_expr, sqlite_expr) (sqlite_expr)
#endif

/*
 * Table names from the update hook live only during the callback: intern
 * them.  The set is the schema's tables, so it stays tiny.
 */
const char *orch_store_intern(const char *name)
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

static void record_change(orch_store *st, const char *table, int64_t rowid)
{
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
	st->changes[st->nchanges++] = (orch_change){orch_store_intern(table), rowid};
}

static void update_hook(void *arg, int op, const char *db, const char *table, sqlite3_int64 rowid)
{
	(void)op, (void)db;
	record_change(arg, table, rowid);
}

int orch_store_error(orch_store *st, const char *what)
{
	if (orch_store_lost(st) && strcmp(what, "commit") == 0)
		return orch_error_set(ORCH_EINTERNAL, "the replicated store lost its leader while committing this call "
				      "(%s): it may or may not have committed; retry it with the same call_id, which "
				      "gives back its reply if it had", orch_store_errmsg(st));
	if (orch_store_lost(st))
		return orch_error_set(ORCH_EINTERNAL, "the replicated store lost its leader during this call (%s); "
				      "nothing of it was committed: retry it (with the same call_id to be safe)",
				      orch_store_errmsg(st));
	return orch_error_set(ORCH_EINTERNAL, "database%s%s: %s", *what ? " " : "", what, orch_store_errmsg(st));
}

static int db_error(orch_store *st, const char *what)
{
	return orch_store_error(st, what);
}

static int exec(orch_store *st, const char *sql)
{
	return orch_store_exec(st, sql);
}

static int user_version(orch_store *st, int *out)
{
	orch_stmt *s;

	if (orch_store_prepare(st, "PRAGMA user_version", &s) != 0)
		return db_error(st, "user_version");
	*out = orch_stmt_step(s) == ORCH_ROW ? orch_stmt_column_int(s, 0) : 0;
	orch_stmt_finalize(s);
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
 * The host this process runs on, as holders of sessions/<id>/alive name it:
 * "" unless the store is a dqlite cluster.  Set once, before any thread
 * that uses the store starts (orch_store_set_host); read-only afterwards.
 */
static char process_host[ORCH_HOST_MAX + 1];

void orch_store_set_host(const char *host)
{
	snprintf(process_host, sizeof(process_host), "%s", host ? host : "");
}

const char *orch_store_host(void)
{
	return process_host;
}

/* Whether process `pid` runs and started at `start` (orch_process_start): the same process, not a later one with its pid. */
static bool process_runs(int64_t pid, int64_t start)
{
	static int64_t self_start; /* this process's start: read once, the same from any thread */

	if (pid == getpid()) {
		if (!__atomic_load_n(&self_start, __ATOMIC_RELAXED))
			__atomic_store_n(&self_start, orch_process_start((pid_t)pid), __ATOMIC_RELAXED);
		return start == __atomic_load_n(&self_start, __ATOMIC_RELAXED);
	}
	return pid > 0 && start != 0 && orch_process_start((pid_t)pid) == start;
}

/*
 * SQL orch_holder_alive(host, pid, start, seen_at): whether a holder of
 * session_alive still runs.  On the host that evaluates it (the dqlite
 * leader's, or the only one with SQLite), by its pid and start time; on
 * another host, by when that host's daemon last saw it running (seen_at,
 * refreshed every ORCH_HOLDER_BEAT_MS; gone after ORCH_HOLDER_TIMEOUT_MS).
 */
static void holder_alive(sqlite3_context *c, int argc, sqlite3_value **argv)
{
	const char *host = (const char *)sqlite3_value_text(argv[0]);

	(void)argc;
	if (!host || strcmp(host, process_host) == 0) {
		sqlite3_result_int(c, process_runs(sqlite3_value_int64(argv[1]), sqlite3_value_int64(argv[2])));
		return;
	}
	sqlite3_result_int(c, sqlite3_value_type(argv[3]) == SQLITE_INTEGER &&
				      sqlite3_value_int64(argv[3]) >= orch_now_ms() - ORCH_HOLDER_TIMEOUT_MS);
}

bool orch_holder_runs_here(int64_t pid, int64_t start)
{
	return process_runs(pid, start);
}

/*
 * The server side of a dqlite store, in a process that runs a node: dqlite
 * executes the cluster's SQL on connections it opens in the leader's
 * process, so they get our SQL functions and a per-connection record of
 * the rows changed, which the client on the other end takes with
 * SELECT orch_changes_take() (see dq_sync).
 */
typedef struct served_changes {
	char *text; /* "table rowid\n" per row; owned by the connection's thread (dqlite's loop) */
	size_t len, cap, rows;
	bool overflow; /* more than CHANGES_MAX rows: "*" */
} served_changes;

static void served_reset(served_changes *sc)
{
	sc->len = sc->rows = 0;
	sc->overflow = false;
	if (sc->text)
		sc->text[0] = '\0';
}

static void served_hook(void *arg, int op, const char *db, const char *table, sqlite3_int64 rowid)
{
	served_changes *sc = arg;
	size_t need = strlen(table) + 24;

	(void)op, (void)db;
	if (sc->overflow)
		return;
	if (sc->rows == CHANGES_MAX) {
		sc->overflow = true;
		return;
	}
	if (sc->len + need >= sc->cap) {
		size_t cap = 2 * (sc->cap + need);
		char *text = realloc(sc->text, cap);
		if (!text) {
			sc->overflow = true; /* the client then takes "*": every table */
			return;
		}
		sc->text = text;
		sc->cap = cap;
	}
	sc->len += (size_t)snprintf(sc->text + sc->len, sc->cap - sc->len, "%s %lld\n", table, (long long)rowid);
	sc->rows++;
}

static void served_rollback(void *arg)
{
	served_reset(arg);
}

static void changes_take(sqlite3_context *c, int argc, sqlite3_value **argv)
{
	served_changes *sc = sqlite3_user_data(c);

	(void)argc, (void)argv;
	sqlite3_result_text(c, sc->overflow ? "*" : sc->text ? sc->text : "", -1, SQLITE_TRANSIENT);
	served_reset(sc);
}

static void served_free(void *arg)
{
	served_changes *sc = arg;

	free(sc->text);
	free(sc);
}

static int served_init(sqlite3 *db, char **err, const void *api)
{
	served_changes *sc = calloc(1, sizeof(*sc));

	(void)err, (void)api;
	if (!sc)
		return SQLITE_NOMEM;
	sqlite3_create_function(db, "orch_holder_alive", 4, SQLITE_UTF8, NULL, holder_alive, NULL, NULL);
	if (sqlite3_create_function_v2(db, "orch_changes_take", 0, SQLITE_UTF8, sc, changes_take, NULL, NULL,
				       served_free) != SQLITE_OK)
		return SQLITE_ERROR; /* sc was freed by served_free */
	sqlite3_update_hook(db, served_hook, sc);
	sqlite3_rollback_hook(db, served_rollback, sc);
	return SQLITE_OK;
}

void orch_store_serve(void)
{
	/* Every connection opened from now on, in any thread (dqlite's opens them in its own). */
	sqlite3_auto_extension((void (*)(void))served_init);
}

static int connect(orch_store *st, const char *path, int flags)
{
	if (sqlite3_open_v2(path, &st->db, flags | SQLITE_OPEN_NOMUTEX, NULL) != SQLITE_OK)
		return orch_error_set(ORCH_EINTERNAL, "cannot open database %s: %s", path,
				      st->db ? sqlite3_errmsg(st->db) : "out of memory");
	sqlite3_busy_timeout(st->db, ORCH_STORE_BUSY_MS);
	sqlite3_create_function(st->db, "orch_holder_alive", 4, SQLITE_UTF8, NULL, holder_alive, NULL, NULL);
	return 0;
}

bool orch_store_is_dqlite(const char *where)
{
	return strncmp(where, "dqlite:", 7) == 0;
}

#ifdef ORCH_HAVE_DQLITE
#define DQ_FIND_LEADER_MS 1500 /* how long a request looks for a leader before failing */
#define DQ_REPLY_MS 1500       /* how long a leader may stay silent on one request */

/*
 * "dqlite:HOST:PORT[,HOST:PORT...][/NAME]": a client of the cluster's
 * leader, found through any of the members named, on database NAME
 * ("orchfs" when not given).
 */
static int connect_dqlite(orch_store *st, const char *where)
{
	char *spec = strdup(where + 7), *name = NULL, *save = NULL;
	const char *peers[16];
	orch_dq_opts opts = ORCH_DQ_OPTS_INIT;
	size_t n = 0;
	int rc = 0;

	if (!spec)
		return orch_error_set(ORCH_EINTERNAL, "out of memory");
	if ((name = strchr(spec, '/')))
		*name++ = '\0';
	for (char *p = strtok_r(spec, ",", &save); p; p = strtok_r(NULL, ",", &save))
		if (n < sizeof(peers) / sizeof(peers[0]))
			peers[n++] = p;
	if (!n || (name && !*name)) {
		free(spec);
		return orch_error_set(ORCH_EINVALID_PARAMS, "bad dqlite store %s: want dqlite:HOST:PORT[,HOST:PORT...][/NAME]",
				      where);
	}
	opts.peers = peers;
	opts.npeers = n;
	opts.database = name ? name : ORCH_DQ_DATABASE;
	/*
	 * A leader that is lost (killed, or cut off from the majority) fails the
	 * call within about two seconds with a transient error (orch_store_lost)
	 * rather than holding the agent: the cluster elects a new one in well
	 * under a second, and the agent's retry (with its call_id) reaches it.
	 */
	opts.connect_ms = DQ_FIND_LEADER_MS;
	opts.io_timeout_ms = DQ_REPLY_MS;
	if (orch_dq_open(&st->dq, &opts) != SQLITE_OK)
		rc = orch_error_set(ORCH_EINTERNAL, "cannot reach the dqlite cluster %s: %s", where,
				    st->dq ? orch_dq_errmsg(st->dq) : "out of memory");
	free(spec);
	return rc;
}
#endif

/* Connect `st` to `where` with SQLite `flags`, or to a dqlite cluster. */
static int open_where(orch_store *st, const char *where, int flags)
{
	if (!orch_store_is_dqlite(where))
		return connect(st, where, flags);
#ifdef ORCH_HAVE_DQLITE
	return connect_dqlite(st, where);
#else
	return orch_error_set(ORCH_EINVALID_PARAMS, "%s: this orchfs was built without dqlite (meson -Ddqlite=enabled)", where);
#endif
}

int orch_store_open_reader(orch_store **out, const char *where)
{
	orch_store *st = calloc(1, sizeof(*st));
	int rc;

	*out = NULL;
	if (!st)
		return orch_error_set(ORCH_EINTERNAL, "out of memory");
	/*
	 * Read-write at the file level (a WAL reader maps the -shm index),
	 * query_only at the SQL level: a reader can never write.
	 */
	if ((rc = open_where(st, where, SQLITE_OPEN_READWRITE)) != 0 ||
	    (rc = exec(st, "PRAGMA query_only = 1")) != 0 || (rc = exec(st, "PRAGMA foreign_keys = ON")) != 0) {
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

int orch_store_open(orch_store **out, const char *where)
{
	orch_store *st = calloc(1, sizeof(*st));
	bool dq = orch_store_is_dqlite(where);
	int rc;

	*out = NULL;
	if (!st)
		return orch_error_set(ORCH_EINTERNAL, "out of memory");
	if ((!dq && (rc = make_store_private(where)) != 0) ||
	    (rc = open_where(st, where, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE)) != 0)
		goto fail;
	/*
	 * WAL lets readers (the daemon rendering files) run beside a writer;
	 * synchronous=FULL makes a committed reply survive power loss, not
	 * just a killed process.  (dqlite has its own WAL, replicated: a
	 * commit it acknowledges is on a majority of the nodes' disks.)
	 */
	/*
	 * Switching a new database to WAL, and its first migration, take locks
	 * for which SQLite may answer SQLITE_BUSY without waiting (several
	 * processes opening one new state directory at once): retry for up to
	 * the busy timeout.  The dqlite client retries BEGIN itself.
	 */
	for (int ms = 0;; ms += 20) {
		rc = dq ? 0 : exec(st, "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL");
		if (!rc)
			rc = exec(st, "PRAGMA foreign_keys = ON");
		if (!rc)
			rc = migrate(st);
		if (!rc || dq || (sqlite3_errcode(st->db) & 0xff) != SQLITE_BUSY || ms >= ORCH_STORE_BUSY_MS)
			break;
		orch_error_clear();
		usleep(20000);
	}
	if (rc)
		goto fail;
	if (st->db)
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
		orch_stmt_finalize(st->cache[i].st);
#ifdef ORCH_HAVE_DQLITE
	orch_dq_close(st->dq);
#endif
	sqlite3_close(st->db);
	free(st->changes);
	free(st);
}

const char *orch_store_errmsg(orch_store *st)
{
	return ON_ENGINE(st, orch_dq_errmsg(st->dq), sqlite3_errmsg(st->db));
}

bool orch_store_lost(orch_store *st)
{
#ifdef ORCH_HAVE_DQLITE
	return st->dq_lost;
#else
	(void)st;
	return false;
#endif
}

#ifdef ORCH_HAVE_DQLITE
/* Note whether the dqlite request that gave `rc` failed for want of a leader; returns rc. */
static int dq_outcome(orch_store *st, int rc)
{
	st->dq_lost = rc != SQLITE_OK && rc != SQLITE_ROW && rc != SQLITE_DONE && orch_dq_transient(rc);
	return rc;
}
#endif

int64_t orch_store_rows_changed(orch_store *st)
{
	return ON_ENGINE(st, orch_dq_changes(st->dq), sqlite3_changes(st->db));
}

int64_t orch_store_last_id(orch_store *st)
{
	return ON_ENGINE(st, orch_dq_last_insert_rowid(st->dq), sqlite3_last_insert_rowid(st->db));
}

int orch_store_exec(orch_store *st, const char *sql)
{
#ifdef ORCH_HAVE_DQLITE
	if (st->dq) {
		if (st->in_txn && st->dq_lost)
			return orch_error_set(ORCH_EINTERNAL, "database: %s", orch_dq_errmsg(st->dq));
		if (dq_outcome(st, orch_dq_exec(st->dq, sql)) != SQLITE_OK)
			return orch_error_set(ORCH_EINTERNAL, "database: %s", orch_dq_errmsg(st->dq));
		st->dq_unsynced = true;
		return 0;
	}
#endif
	char *msg = NULL;

	if (sqlite3_exec(st->db, sql, NULL, NULL, &msg) != SQLITE_OK) {
		int rc = orch_error_set(ORCH_EINTERNAL, "database: %s", msg ? msg : "error");
		sqlite3_free(msg);
		return rc;
	}
	return 0;
}

int orch_store_backup(orch_store *st, const char *dest)
{
	sqlite3 *out = NULL;
	sqlite3_backup *b;
	int rc = 0;

	if (DQ(st))
		return orch_error_set(ORCH_EINVALID_STATE, "a dqlite store is backed up by its nodes: copy a node's "
				      "dir while it is stopped, or keep three voters");
	if (sqlite3_open_v2(dest, &out, SQLITE_OPEN_READWRITE, NULL) != SQLITE_OK) {
		rc = orch_error_set(ORCH_EINTERNAL, "cannot open %s: %s", dest, out ? sqlite3_errmsg(out) : "no memory");
		goto done;
	}
	/* One step copies every page under one read transaction: a snapshot, while writers go on (WAL). */
	if (!(b = sqlite3_backup_init(out, "main", st->db, "main"))) {
		rc = orch_error_set(ORCH_EINTERNAL, "backup: %s", sqlite3_errmsg(out));
		goto done;
	}
	int step = sqlite3_backup_step(b, -1);
	if (sqlite3_backup_finish(b) != SQLITE_OK || step != SQLITE_DONE) {
		rc = orch_error_set(ORCH_EINTERNAL, "backup: %s", sqlite3_errmsg(out));
		goto done;
	}
	/* The copy is a plain rollback-journal database, durable once this returns. */
	if (sqlite3_exec(out, "PRAGMA journal_mode = DELETE", NULL, NULL, NULL) != SQLITE_OK)
		rc = orch_error_set(ORCH_EINTERNAL, "backup %s: %s", dest, sqlite3_errmsg(out));
done:
	sqlite3_close(out);
	return rc;
}

/* ---- statements ---- */

#ifdef ORCH_HAVE_DQLITE
/*
 * Whether `sql` is transaction control or a PRAGMA: it changes no row, so
 * it leaves nothing for dq_sync to fetch (a round trip to the leader saved).
 */
static bool controls(const char *sql)
{
	static const char *const words[] = {"BEGIN", "COMMIT", "END", "ROLLBACK", "SAVEPOINT", "RELEASE", "PRAGMA"};

	while (*sql == ' ' || *sql == '\t' || *sql == '\n')
		sql++;
	for (size_t i = 0; i < sizeof(words) / sizeof(words[0]); i++) {
		size_t n = strlen(words[i]);
		if (strncasecmp(sql, words[i], n) == 0 && !((sql[n] >= 'A' && sql[n] <= 'Z') || (sql[n] >= 'a' && sql[n] <= 'z') || sql[n] == '_'))
			return true;
	}
	return false;
}
#endif

int orch_store_prepare(orch_store *st, const char *sql, orch_stmt **out)
{
	orch_stmt *s = calloc(1, sizeof(*s));
	int rc;

	*out = NULL;
	if (!s)
		return orch_error_set(ORCH_EINTERNAL, "out of memory");
	s->store = st;
#ifdef ORCH_HAVE_DQLITE
	if (st->dq) {
		rc = dq_outcome(st, orch_dq_prepare(st->dq, sql, &s->q));
		s->changes_rows = rc == SQLITE_OK && !orch_dq_stmt_yields_rows(s->q) && !controls(sql);
	} else
#endif
		rc = sqlite3_prepare_v3(st->db, sql, -1, SQLITE_PREPARE_PERSISTENT, &s->s, NULL);
	if (rc != SQLITE_OK) {
		free(s);
		return orch_error_set(ORCH_EINTERNAL, "database: %s", orch_store_errmsg(st));
	}
	*out = s;
	return 0;
}

void orch_stmt_finalize(orch_stmt *s)
{
	if (!s)
		return;
#ifdef ORCH_HAVE_DQLITE
	orch_dq_finalize(s->q);
#endif
	sqlite3_finalize(s->s);
	free(s);
}

#ifdef ORCH_HAVE_DQLITE
#define DISPATCH(s, dq_call, sqlite_call) ((s)->q ? (dq_call) : (sqlite_call))
#else
#define DISPATCH(s, dq_call, sqlite_call) (sqlite_call)
#endif

int orch_stmt_step(orch_stmt *s)
{
#ifdef ORCH_HAVE_DQLITE
	if (s->q) {
		/* The transaction went with the lost leader: the rest of it fails at once, not after a search. */
		if (s->store->in_txn && s->store->dq_lost)
			return ORCH_DQ_LEADERSHIP_LOST;
		int rc = dq_outcome(s->store, orch_dq_step(s->q));
		if (rc == SQLITE_DONE && s->changes_rows)
			s->store->dq_unsynced = true;
		return rc;
	}
#endif
	return sqlite3_step(s->s);
}

int orch_stmt_reset(orch_stmt *s)
{
	return DISPATCH(s, orch_dq_reset(s->q), sqlite3_reset(s->s));
}

int orch_stmt_clear_bindings(orch_stmt *s)
{
	return DISPATCH(s, orch_dq_clear_bindings(s->q), sqlite3_clear_bindings(s->s));
}

int orch_stmt_bind_null(orch_stmt *s, int i)
{
	return DISPATCH(s, orch_dq_bind_null(s->q, i), sqlite3_bind_null(s->s, i));
}

int orch_stmt_bind_int64(orch_stmt *s, int i, int64_t v)
{
	return DISPATCH(s, orch_dq_bind_int64(s->q, i, v), sqlite3_bind_int64(s->s, i, v));
}

int orch_stmt_bind_double(orch_stmt *s, int i, double v)
{
	return DISPATCH(s, orch_dq_bind_double(s->q, i, v), sqlite3_bind_double(s->s, i, v));
}

int orch_stmt_bind_text(orch_stmt *s, int i, const char *v)
{
	return DISPATCH(s, orch_dq_bind_text(s->q, i, v, -1), sqlite3_bind_text(s->s, i, v, -1, SQLITE_TRANSIENT));
}

int orch_stmt_column_count(orch_stmt *s)
{
	return DISPATCH(s, orch_dq_column_count(s->q), sqlite3_column_count(s->s));
}

const char *orch_stmt_column_name(orch_stmt *s, int i)
{
	return DISPATCH(s, orch_dq_column_name(s->q, i), sqlite3_column_name(s->s, i));
}

int orch_stmt_column_type(orch_stmt *s, int i)
{
	return DISPATCH(s, orch_dq_column_type(s->q, i), sqlite3_column_type(s->s, i));
}

int64_t orch_stmt_column_int64(orch_stmt *s, int i)
{
	return DISPATCH(s, orch_dq_column_int64(s->q, i), sqlite3_column_int64(s->s, i));
}

int orch_stmt_column_int(orch_stmt *s, int i)
{
	return (int)orch_stmt_column_int64(s, i);
}

double orch_stmt_column_double(orch_stmt *s, int i)
{
	return DISPATCH(s, orch_dq_column_double(s->q, i), sqlite3_column_double(s->s, i));
}

const char *orch_stmt_column_text(orch_stmt *s, int i)
{
	return DISPATCH(s, orch_dq_column_text(s->q, i), (const char *)sqlite3_column_text(s->s, i));
}

int orch_stmt_column_bytes(orch_stmt *s, int i)
{
	return DISPATCH(s, orch_dq_column_bytes(s->q, i), sqlite3_column_bytes(s->s, i));
}

orch_stmt *orch_store_stmt(orch_store *st, const char *sql)
{
	size_t h = ((uintptr_t)sql >> 3) % STMT_SLOTS;

	for (size_t n = 0; n < STMT_SLOTS; n++, h = (h + 1) % STMT_SLOTS) {
		if (st->cache[h].sql == sql) {
			orch_stmt_reset(st->cache[h].st);
			orch_stmt_clear_bindings(st->cache[h].st);
			return st->cache[h].st;
		}
		if (!st->cache[h].sql) {
			orch_stmt *s;
			if (orch_store_prepare(st, sql, &s) != 0)
				return NULL;
			st->cache[h].sql = sql;
			st->cache[h].st = s;
			return s;
		}
	}
	assert(!"statement cache full");
	return NULL;
}

/* ---- transactions ---- */

/* Run a cached transaction-control statement; every file read opens and closes one. */
static int control(orch_store *st, const char *sql)
{
	orch_stmt *s = orch_store_stmt(st, sql);
	int rc;

	if (!s)
		return SQLITE_ERROR;
	rc = orch_stmt_step(s);
	orch_stmt_reset(s);
	return rc == SQLITE_DONE ? SQLITE_OK : rc;
}

#ifdef ORCH_HAVE_DQLITE
/*
 * Fetch the rows the leader's connection recorded for this client since
 * the last fetch (orch_store_serve's hook) into the changes.  A leader
 * without the hook, or lost, cannot say: every table changed ("*").
 */
static void dq_sync(orch_store *st)
{
	orch_stmt *s;
	const char *text;

	if (!st->dq || !st->dq_unsynced)
		return;
	st->dq_unsynced = false;
	s = orch_store_stmt(st, "SELECT orch_changes_take()");
	if (!s || orch_stmt_step(s) != SQLITE_ROW) {
		record_change(st, "*", 0);
		if (s)
			orch_stmt_reset(s);
		return;
	}
	/* "table rowid\n" per row; a lone "*" when the leader's list overflowed. */
	text = orch_stmt_column_text(s, 0);
	for (const char *p = text ? text : ""; *p;) {
		char table[128];
		long long rowid = 0;
		int used = 0;
		if (sscanf(p, "%127s %lld%n", table, &rowid, &used) < 1)
			break;
		if (strcmp(table, "*") == 0) {
			record_change(st, "*", 0);
			if (!used)
				break;
		} else {
			record_change(st, table, rowid);
		}
		p += used ? used : (int)strlen(p);
		while (*p == '\n')
			p++;
	}
	orch_stmt_reset(s);
}
#else
#define dq_sync(st) ((void)(st))
#endif

int orch_store_begin(orch_store *st, bool write)
{
	const char *begin = write ? "BEGIN IMMEDIATE" : "BEGIN";

	assert(!st->in_txn);
	/*
	 * A BEGIN that found its leader gone (the connection still pointed at a
	 * node cut off or killed since) has nothing to lose: once more, with a
	 * fresh search for the leader the cluster has elected meanwhile.
	 */
	if (control(st, begin) != SQLITE_OK && (!orch_store_lost(st) || control(st, begin) != SQLITE_OK))
		return db_error(st, "begin");
	st->in_txn = true;
	dq_sync(st); /* rows of an earlier autocommitted write */
	st->mark = st->nchanges; /* anything recorded outside a transaction was autocommitted */
	return 0;
}

int orch_store_commit(orch_store *st)
{
	assert(st->in_txn);
	dq_sync(st); /* before COMMIT: afterwards a new leader would not know them */
	int crc = control(st, "COMMIT");
#ifdef ORCH_HAVE_DQLITE
	/*
	 * The leader has no transaction of ours to commit: it went with a
	 * leadership change in between (the node closed the connection's
	 * database).  A loss like the others, though the reply came.
	 */
	if (st->dq && crc == SQLITE_ERROR && strstr(orch_dq_errmsg(st->dq), "no transaction is active"))
		st->dq_lost = true;
#endif
	if (crc != SQLITE_OK) {
		int rc = db_error(st, "commit");
		orch_store_rollback(st);
		return rc;
	}
	st->in_txn = false;
	st->mark = st->nchanges;
	return 0;
}

static bool engine_in_txn(orch_store *st)
{
#ifdef ORCH_HAVE_DQLITE
	if (st->dq)
		return orch_dq_in_txn(st->dq);
#endif
	return !sqlite3_get_autocommit(st->db);
}

void orch_store_rollback(orch_store *st)
{
	/*
	 * A dqlite client cannot tell whether a failed COMMIT left the
	 * transaction open on the leader (a deferred constraint does, as in
	 * SQLite): send ROLLBACK whenever one was begun; an error saying there
	 * was none is harmless.  A lost leader took the transaction with it:
	 * nothing to send (and no one to send it to).
	 */
	if (engine_in_txn(st) || (DQ(st) && st->in_txn && !orch_store_lost(st)))
		control(st, "ROLLBACK");
	st->in_txn = false;
	st->nchanges = st->mark;
#ifdef ORCH_HAVE_DQLITE
	st->dq_unsynced = false; /* the leader's hook dropped them at the rollback */
#endif
}

const orch_change *orch_store_changes(orch_store *st, size_t *n)
{
	dq_sync(st);
	/* Autocommitted statements (outside BEGIN) count as committed. */
	if (!st->in_txn)
		st->mark = st->nchanges;
	*n = st->mark;
	return st->changes;
}

size_t orch_store_changes_mark(orch_store *st)
{
	dq_sync(st);
	return st->nchanges;
}

const orch_change *orch_store_changes_since(orch_store *st, size_t mark, size_t *n)
{
	dq_sync(st);
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
	orch_stmt *s = orch_store_stmt(st, "PRAGMA data_version");
	int64_t v;

	if (!s || orch_stmt_step(s) != SQLITE_ROW)
		return true; /* cannot tell: assume so */
	v = orch_stmt_column_int64(s, 0);
	orch_stmt_reset(s);
	return orch_store_data_version_seen(st, v);
}

bool orch_store_data_version_seen(orch_store *st, int64_t v)
{
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
	return st->in_txn && engine_in_txn(st);
}

int orch_store_schema_version(orch_store *st)
{
	int v = 0;

	user_version(st, &v);
	return v;
}
