/*
 * The dqlite wire protocol client against a real single node started in this
 * process (built with -Ddqlite=enabled; run by scripts/test).  Ends with
 * "dqlite: N passed, N failed" like the unit tests.
 */
#include <arpa/inet.h>
#include <math.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "orchfs/error.h"
#include "dqlite.h"

static int failed_now;
#define CHECK(cond)                                                                         \
	do {                                                                                \
		if (!(cond)) {                                                              \
			fprintf(stderr, "  %s:%d: CHECK(%s) failed\n", __FILE__, __LINE__, #cond); \
			failed_now = 1;                                                     \
		}                                                                           \
	} while (0)
#define CHECK_RC(c, expr, want)                                                               \
	do {                                                                                  \
		int rc_ = (expr);                                                             \
		if (rc_ != (want)) {                                                          \
			fprintf(stderr, "  %s:%d: %s == %d (%s), expected %d\n", __FILE__, __LINE__, \
				#expr, rc_, orch_dq_errmsg(c), (want));                       \
			failed_now = 1;                                                       \
		}                                                                             \
	} while (0)

static char address[64];
static const char *peer_list[1];
static char node_dir[64];
static orch_dq_node *node; /* main thread only */

static int start_node(void)
{
	orch_dq_node_opts o = ORCH_DQ_NODE_OPTS_INIT;
	o.id = 1, o.address = address, o.dir = node_dir;
	if (orch_dq_node_start(&node, &o) != 0) {
		fprintf(stderr, "cannot start a node: %s\n", orch_error_last()->message);
		return -1;
	}
	return 0;
}

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static orch_dq *client(const char *database, int busy_ms)
{
	orch_dq_opts o = ORCH_DQ_OPTS_INIT;
	o.peers = peer_list;
	o.npeers = 1;
	o.database = database;
	if (busy_ms)
		o.busy_ms = busy_ms;
	orch_dq *c;
	int rc = orch_dq_open(&c, &o);
	if (rc) {
		fprintf(stderr, "  cannot open: %s (%d)\n", orch_dq_errmsg(c), rc);
		failed_now = 1;
	}
	return c;
}

/* Every SQLite type and its edges go out as parameters and come back as the same values. */
static void test_types(void)
{
	orch_dq *c = client("types.db", 0);
	CHECK_RC(c, orch_dq_exec(c, "CREATE TABLE t (k INTEGER PRIMARY KEY, v)"), SQLITE_OK);
	orch_dq_stmt *ins, *sel;
	CHECK_RC(c, orch_dq_prepare(c, "INSERT INTO t (k, v) VALUES (?, ?)", &ins), SQLITE_OK);
	CHECK(orch_dq_bind_parameter_count(ins) == 2);
	static uint8_t big[100000];
	for (size_t i = 0; i < sizeof big; i++)
		big[i] = (uint8_t)(i * 7);
	const char *utf8 = "h\xc3\xa9llo \xe2\x82\xac \xf0\x9f\x90\x8d";
	for (int k = 1; k <= 11; k++) {
		orch_dq_reset(ins);
		orch_dq_bind_int64(ins, 1, k);
		switch (k) {
		case 1: orch_dq_bind_int64(ins, 2, INT64_MIN); break;
		case 2: orch_dq_bind_int64(ins, 2, INT64_MAX); break;
		case 3: orch_dq_bind_double(ins, 2, -1.5e-300); break;
		case 4: orch_dq_bind_text(ins, 2, utf8, -1); break;
		case 5: orch_dq_bind_text(ins, 2, "", 0); break;
		case 6: orch_dq_bind_blob(ins, 2, "\0a\0b", 4); break;
		case 7: orch_dq_bind_blob(ins, 2, big, sizeof big); break;
		case 8: orch_dq_bind_null(ins, 2); break;
		case 9: orch_dq_bind_text(ins, 2, "1234567", 3); break; /* a prefix */
		case 10: orch_dq_bind_double(ins, 2, 3.0); break;
		case 11: orch_dq_bind_int64(ins, 2, 0); break;
		}
		CHECK_RC(c, orch_dq_step(ins), SQLITE_DONE);
		CHECK(orch_dq_changes(c) == 1);
		CHECK(orch_dq_last_insert_rowid(c) == k);
	}
	CHECK_RC(c, orch_dq_bind_int64(ins, 3, 1), SQLITE_RANGE);
	CHECK_RC(c, orch_dq_bind_text(ins, 2, "a\0b", 3), SQLITE_MISMATCH);
	orch_dq_finalize(ins);

	CHECK_RC(c, orch_dq_prepare(c, "SELECT k, v, typeof(v) AS ty FROM t WHERE k >= ? ORDER BY k", &sel), SQLITE_OK);
	orch_dq_bind_int64(sel, 1, 1);
	int n = 0;
	while (orch_dq_step(sel) == SQLITE_ROW) {
		n++;
		int k = (int)orch_dq_column_int64(sel, 0);
		CHECK(orch_dq_column_count(sel) == 3);
		CHECK(strcmp(orch_dq_column_name(sel, 2), "ty") == 0);
		switch (k) {
		case 1: CHECK(orch_dq_column_type(sel, 1) == SQLITE_INTEGER && orch_dq_column_int64(sel, 1) == INT64_MIN); break;
		case 2: CHECK(orch_dq_column_int64(sel, 1) == INT64_MAX); break;
		case 3: CHECK(orch_dq_column_type(sel, 1) == SQLITE_FLOAT && orch_dq_column_double(sel, 1) == -1.5e-300); break;
		case 4: CHECK(orch_dq_column_type(sel, 1) == SQLITE_TEXT && strcmp(orch_dq_column_text(sel, 1), utf8) == 0); break;
		case 5: CHECK(orch_dq_column_type(sel, 1) == SQLITE_TEXT && orch_dq_column_bytes(sel, 1) == 0); break;
		case 6:
			CHECK(orch_dq_column_type(sel, 1) == SQLITE_BLOB && orch_dq_column_bytes(sel, 1) == 4);
			CHECK(memcmp(orch_dq_column_blob(sel, 1), "\0a\0b", 4) == 0);
			break;
		case 7:
			CHECK(orch_dq_column_bytes(sel, 1) == (int)sizeof big);
			CHECK(memcmp(orch_dq_column_blob(sel, 1), big, sizeof big) == 0);
			break;
		case 8: CHECK(orch_dq_column_type(sel, 1) == SQLITE_NULL && orch_dq_column_text(sel, 1) == NULL); break;
		case 9: CHECK(strcmp(orch_dq_column_text(sel, 1), "123") == 0); break;
		case 10: CHECK(orch_dq_column_type(sel, 1) == SQLITE_FLOAT && orch_dq_column_double(sel, 1) == 3.0); break;
		case 11: CHECK(orch_dq_column_type(sel, 1) == SQLITE_INTEGER && orch_dq_column_int64(sel, 1) == 0); break;
		}
		const char *ty = orch_dq_column_text(sel, 2);
		const char *want[] = { "", "integer", "integer", "real", "text", "text", "blob", "blob", "null", "text", "real", "integer" };
		CHECK(ty && strcmp(ty, want[k]) == 0);
	}
	CHECK(n == 11);
	CHECK_RC(c, orch_dq_step(sel), SQLITE_MISUSE); /* finished: reset first */
	orch_dq_finalize(sel);
	orch_dq_close(c);
}

/* 100k rows come in many batches; other statements can run meanwhile; a query reset midway leaves the connection usable. */
static void test_many_rows(void)
{
	orch_dq *c = client("rows.db", 0);
	CHECK_RC(c, orch_dq_exec(c, "CREATE TABLE r (i INTEGER PRIMARY KEY, s TEXT)"), SQLITE_OK);
	CHECK_RC(c, orch_dq_exec(c, "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 100000) "
				    "INSERT INTO r SELECT i, printf('row %06d', i) FROM n"),
		 SQLITE_OK);
	CHECK(orch_dq_changes(c) == 100000);
	orch_dq_stmt *s;
	CHECK_RC(c, orch_dq_prepare(c, "SELECT i, s FROM r ORDER BY i", &s), SQLITE_OK);
	long n = 0;
	bool in_order = true;
	char want[32];
	int rc;
	while ((rc = orch_dq_step(s)) == SQLITE_ROW) {
		n++;
		snprintf(want, sizeof want, "row %06ld", n);
		if (orch_dq_column_int64(s, 0) != n || strcmp(orch_dq_column_text(s, 1), want) != 0)
			in_order = false;
	}
	CHECK_RC(c, rc, SQLITE_DONE);
	CHECK(n == 100000);
	CHECK(in_order);

	/* Read ten rows, run other statements meanwhile (the rest is read ahead), read on to the end. */
	orch_dq_reset(s);
	for (int i = 0; i < 10; i++)
		CHECK_RC(c, orch_dq_step(s), SQLITE_ROW);
	orch_dq_stmt *one;
	CHECK_RC(c, orch_dq_prepare(c, "SELECT s FROM r WHERE i = ?", &one), SQLITE_OK);
	orch_dq_bind_int64(one, 1, 77777);
	CHECK_RC(c, orch_dq_step(one), SQLITE_ROW);
	CHECK(strcmp(orch_dq_column_text(one, 0), "row 077777") == 0);
	orch_dq_finalize(one);
	CHECK_RC(c, orch_dq_exec(c, "DELETE FROM r WHERE i = 1"), SQLITE_OK);
	CHECK(orch_dq_changes(c) == 1);
	n = 10;
	while ((rc = orch_dq_step(s)) == SQLITE_ROW)
		if (orch_dq_column_int64(s, 0) != ++n)
			in_order = false;
	CHECK_RC(c, rc, SQLITE_DONE);
	CHECK(n == 100000 && in_order);
	/* Read ten rows and reset: the rest is dropped (interrupted) and the connection goes on. */
	orch_dq_reset(s);
	for (int i = 0; i < 10; i++)
		CHECK_RC(c, orch_dq_step(s), SQLITE_ROW);
	orch_dq_reset(s);
	CHECK_RC(c, orch_dq_exec(c, "DELETE FROM r WHERE i = 2"), SQLITE_OK);
	CHECK(orch_dq_changes(c) == 1);
	orch_dq_stmt *count;
	CHECK_RC(c, orch_dq_prepare(c, "SELECT count(*), sum(i) FROM r", &count), SQLITE_OK);
	CHECK_RC(c, orch_dq_step(count), SQLITE_ROW);
	CHECK(orch_dq_column_int64(count, 0) == 99998);
	CHECK(orch_dq_column_int64(count, 1) == 100000LL * 100001 / 2 - 3);
	CHECK_RC(c, orch_dq_step(count), SQLITE_DONE);
	orch_dq_finalize(count);
	orch_dq_finalize(s);
	orch_dq_close(c);
}

/* Failures carry SQLite's codes and messages, and change nothing. */
static void test_errors(void)
{
	orch_dq *c = client("errors.db", 0);
	orch_dq_stmt *s = NULL;
	CHECK_RC(c, orch_dq_prepare(c, "SELEC 1", &s), SQLITE_ERROR);
	CHECK(s == NULL && strstr(orch_dq_errmsg(c), "syntax error"));
	CHECK_RC(c, orch_dq_prepare(c, "SELECT * FROM missing", &s), SQLITE_ERROR);
	CHECK(strstr(orch_dq_errmsg(c), "no such table: missing"));
	CHECK_RC(c, orch_dq_exec(c, "CREATE TABLE u (k TEXT PRIMARY KEY, n INTEGER NOT NULL, CHECK (n >= 0))"), SQLITE_OK);
	CHECK_RC(c, orch_dq_exec(c, "INSERT INTO u VALUES ('a', 1)"), SQLITE_OK);
	int rc = orch_dq_exec(c, "INSERT INTO u VALUES ('a', 2)");
	CHECK((rc & 0xff) == SQLITE_CONSTRAINT);
	fprintf(stderr, "  unique violation: %d %s\n", rc, orch_dq_errmsg(c));
	CHECK(strstr(orch_dq_errmsg(c), "UNIQUE constraint failed: u.k"));
	CHECK_RC(c, orch_dq_prepare(c, "INSERT INTO u VALUES (?, ?)", &s), SQLITE_OK);
	orch_dq_bind_text(s, 1, "b", -1);
	rc = orch_dq_step(s); /* n unbound: NULL */
	CHECK((rc & 0xff) == SQLITE_CONSTRAINT && strstr(orch_dq_errmsg(c), "NOT NULL constraint failed: u.n"));
	orch_dq_reset(s);
	orch_dq_bind_int64(s, 2, -1);
	rc = orch_dq_step(s);
	CHECK((rc & 0xff) == SQLITE_CONSTRAINT && strstr(orch_dq_errmsg(c), "CHECK constraint failed"));
	orch_dq_reset(s);
	orch_dq_bind_int64(s, 2, 5);
	CHECK_RC(c, orch_dq_step(s), SQLITE_DONE);
	orch_dq_finalize(s);
	CHECK_RC(c, orch_dq_prepare(c, "INSERT INTO u VALUES ('c', 1) RETURNING k", &s), SQLITE_ERROR);
	CHECK(strstr(orch_dq_errmsg(c), "RETURNING"));
	CHECK_RC(c, orch_dq_prepare(c, "SELECT count(*) FROM u", &s), SQLITE_OK);
	CHECK_RC(c, orch_dq_step(s), SQLITE_ROW);
	CHECK(orch_dq_column_int64(s, 0) == 2);
	orch_dq_finalize(s);
	orch_dq_close(c);
}

/* Explicit transactions: rollback drops, commit keeps, a failed statement inside leaves the transaction open. */
static void test_transactions(void)
{
	orch_dq *c = client("txn.db", 0);
	CHECK_RC(c, orch_dq_exec(c, "CREATE TABLE x (k INTEGER PRIMARY KEY)"), SQLITE_OK);
	CHECK_RC(c, orch_dq_exec(c, "BEGIN IMMEDIATE"), SQLITE_OK);
	CHECK(orch_dq_in_txn(c));
	CHECK_RC(c, orch_dq_exec(c, "INSERT INTO x VALUES (1)"), SQLITE_OK);
	CHECK_RC(c, orch_dq_exec(c, "ROLLBACK"), SQLITE_OK);
	CHECK(!orch_dq_in_txn(c));
	orch_dq_stmt *begin, *ins, *commit, *count;
	CHECK_RC(c, orch_dq_prepare(c, "BEGIN IMMEDIATE", &begin), SQLITE_OK);
	CHECK_RC(c, orch_dq_prepare(c, "INSERT INTO x VALUES (?)", &ins), SQLITE_OK);
	CHECK_RC(c, orch_dq_prepare(c, "COMMIT", &commit), SQLITE_OK);
	CHECK_RC(c, orch_dq_prepare(c, "SELECT count(*) FROM x", &count), SQLITE_OK);
	CHECK_RC(c, orch_dq_step(begin), SQLITE_DONE);
	CHECK(orch_dq_in_txn(c));
	for (int k = 1; k <= 3; k++) {
		orch_dq_reset(ins);
		orch_dq_bind_int64(ins, 1, k);
		CHECK_RC(c, orch_dq_step(ins), SQLITE_DONE);
	}
	orch_dq_reset(ins);
	orch_dq_bind_int64(ins, 1, 2);
	CHECK(orch_dq_step(ins) == SQLITE_CONSTRAINT_PRIMARYKEY);
	CHECK(orch_dq_in_txn(c));
	CHECK_RC(c, orch_dq_exec(c, "SAVEPOINT sp"), SQLITE_OK);
	CHECK_RC(c, orch_dq_exec(c, "INSERT INTO x VALUES (9)"), SQLITE_OK);
	CHECK_RC(c, orch_dq_exec(c, "ROLLBACK TO sp"), SQLITE_OK);
	CHECK(orch_dq_in_txn(c));
	CHECK_RC(c, orch_dq_exec(c, "RELEASE sp"), SQLITE_OK);
	CHECK_RC(c, orch_dq_step(commit), SQLITE_DONE);
	CHECK(!orch_dq_in_txn(c));
	CHECK_RC(c, orch_dq_step(count), SQLITE_ROW);
	CHECK(orch_dq_column_int64(count, 0) == 3);

	/* Another connection sees the committed rows. */
	orch_dq *d = client("txn.db", 0);
	orch_dq_stmt *q;
	CHECK_RC(d, orch_dq_prepare(d, "SELECT group_concat(k) FROM x", &q), SQLITE_OK);
	CHECK_RC(d, orch_dq_step(q), SQLITE_ROW);
	CHECK(orch_dq_column_text(q, 0) && strcmp(orch_dq_column_text(q, 0), "1,2,3") == 0);
	orch_dq_finalize(q);
	orch_dq_close(d);
	orch_dq_finalize(begin);
	orch_dq_finalize(ins);
	orch_dq_finalize(commit);
	orch_dq_finalize(count);
	orch_dq_close(c);
}

static void *commit_later(void *arg)
{
	orch_dq *c = arg;
	usleep(300000);
	if (orch_dq_exec(c, "COMMIT") != SQLITE_OK)
		failed_now = 1;
	return NULL;
}

/* A second BEGIN IMMEDIATE waits (retrying busy) for the first to end, up to busy_ms. */
static void test_busy(void)
{
	orch_dq *a = client("busy.db", 0), *b = client("busy.db", 400);
	CHECK_RC(a, orch_dq_exec(a, "CREATE TABLE b (k INTEGER PRIMARY KEY)"), SQLITE_OK);
	CHECK_RC(a, orch_dq_exec(a, "BEGIN IMMEDIATE"), SQLITE_OK);
	CHECK_RC(a, orch_dq_exec(a, "INSERT INTO b VALUES (1)"), SQLITE_OK);
	int64_t t0 = now_ms();
	int rc = orch_dq_exec(b, "BEGIN IMMEDIATE");
	int64_t waited = now_ms() - t0;
	CHECK((rc & 0xff) == SQLITE_BUSY);
	CHECK(waited >= 350 && waited < 3000);
	fprintf(stderr, "  busy after %lld ms: %d %s\n", (long long)waited, rc, orch_dq_errmsg(b));
	CHECK(!orch_dq_in_txn(b));

	pthread_t t;
	pthread_create(&t, NULL, commit_later, a);
	orch_dq_close(b);
	b = client("busy.db", 5000);
	t0 = now_ms();
	CHECK_RC(b, orch_dq_exec(b, "BEGIN IMMEDIATE"), SQLITE_OK);
	waited = now_ms() - t0;
	CHECK(waited >= 200);
	pthread_join(t, NULL);
	CHECK_RC(b, orch_dq_exec(b, "INSERT INTO b VALUES (2)"), SQLITE_OK);
	CHECK_RC(b, orch_dq_exec(b, "COMMIT"), SQLITE_OK);
	orch_dq_stmt *s;
	CHECK_RC(b, orch_dq_prepare(b, "SELECT count(*) FROM b", &s), SQLITE_OK);
	CHECK_RC(b, orch_dq_step(s), SQLITE_ROW);
	CHECK(orch_dq_column_int64(s, 0) == 2);
	orch_dq_finalize(s);
	orch_dq_close(a);
	orch_dq_close(b);
}

/* PRAGMA user_version is set and read like SQLite's (tests/fs/test_dqlite.py reads it on a new leader). */
static void test_user_version(void)
{
	orch_dq *c = client("pragma.db", 0);
	CHECK_RC(c, orch_dq_exec(c, "CREATE TABLE p (k)"), SQLITE_OK);
	CHECK_RC(c, orch_dq_exec(c, "PRAGMA user_version = 7"), SQLITE_OK);
	orch_dq_close(c);
	c = client("pragma.db", 0);
	orch_dq_stmt *s;
	CHECK_RC(c, orch_dq_prepare(c, "PRAGMA user_version", &s), SQLITE_OK);
	CHECK_RC(c, orch_dq_step(s), SQLITE_ROW);
	CHECK(orch_dq_column_int64(s, 0) == 7);
	orch_dq_finalize(s);
	orch_dq_close(c);
}

/* Columns declared DATETIME and BOOLEAN (dqlite's own wire types) come back as TEXT and INTEGER. */
static void test_declared_types(void)
{
	orch_dq *c = client("decl.db", 0);
	CHECK_RC(c, orch_dq_exec(c, "CREATE TABLE d (t DATETIME, b BOOLEAN)"), SQLITE_OK);
	CHECK_RC(c, orch_dq_exec(c, "INSERT INTO d VALUES ('2024-01-02 03:04:05', 1)"), SQLITE_OK);
	orch_dq_stmt *s;
	CHECK_RC(c, orch_dq_prepare(c, "SELECT t, b FROM d", &s), SQLITE_OK);
	CHECK_RC(c, orch_dq_step(s), SQLITE_ROW);
	CHECK(orch_dq_column_type(s, 0) == SQLITE_TEXT);
	fprintf(stderr, "  DATETIME column: %s\n", orch_dq_column_text(s, 0) ? orch_dq_column_text(s, 0) : "(null)");
	CHECK(orch_dq_column_text(s, 0) && strncmp(orch_dq_column_text(s, 0), "2024-01-02", 10) == 0);
	CHECK(orch_dq_column_type(s, 1) == SQLITE_INTEGER && orch_dq_column_int64(s, 1) == 1);
	orch_dq_finalize(s);
	/* Foreign keys are enforced on every connection without asking (dqlite turns them on). */
	CHECK_RC(c, orch_dq_exec(c, "CREATE TABLE parent (id INTEGER PRIMARY KEY); "
				    "CREATE TABLE child (p INTEGER REFERENCES parent(id))"), SQLITE_OK);
	orch_dq *d = client("decl.db", 0);
	int rc = orch_dq_exec(d, "INSERT INTO child VALUES (42)");
	CHECK((rc & 0xff) == SQLITE_CONSTRAINT && strstr(orch_dq_errmsg(d), "FOREIGN KEY"));
	CHECK_RC(d, orch_dq_exec(d, "PRAGMA foreign_keys = OFF"), SQLITE_OK);
	CHECK_RC(d, orch_dq_exec(d, "INSERT INTO child VALUES (43)"), SQLITE_OK); /* per connection */
	orch_dq_close(d);
	orch_dq_close(c);
}

/*
 * The node restarts under open handles: a prepared read runs again on the new
 * connection (re-prepared, retried); a transaction open across the restart is
 * reported lost and its write is not there.
 */
static void test_reconnect(void)
{
	orch_dq *c = client("re.db", 0);
	CHECK_RC(c, orch_dq_exec(c, "CREATE TABLE t (k INTEGER PRIMARY KEY)"), SQLITE_OK);
	CHECK_RC(c, orch_dq_exec(c, "INSERT INTO t VALUES (1)"), SQLITE_OK);
	orch_dq_stmt *count;
	CHECK_RC(c, orch_dq_prepare(c, "SELECT count(*) FROM t", &count), SQLITE_OK);
	orch_dq_node_stop(node);
	if (start_node() != 0) {
		failed_now = 1;
		return;
	}
	CHECK_RC(c, orch_dq_step(count), SQLITE_ROW);
	CHECK(orch_dq_column_int64(count, 0) == 1);
	orch_dq_reset(count);

	CHECK_RC(c, orch_dq_exec(c, "BEGIN IMMEDIATE"), SQLITE_OK);
	CHECK_RC(c, orch_dq_exec(c, "INSERT INTO t VALUES (2)"), SQLITE_OK);
	orch_dq_node_stop(node);
	if (start_node() != 0) {
		failed_now = 1;
		return;
	}
	CHECK_RC(c, orch_dq_exec(c, "INSERT INTO t VALUES (3)"), ORCH_DQ_LEADERSHIP_LOST);
	CHECK(!orch_dq_in_txn(c));
	CHECK(strstr(orch_dq_errmsg(c), "transaction lost"));
	CHECK_RC(c, orch_dq_step(count), SQLITE_ROW);
	CHECK(orch_dq_column_int64(count, 0) == 1);
	orch_dq_finalize(count);
	orch_dq_close(c);
}

/* The cluster of one: itself, a voter. */
static void test_cluster(void)
{
	orch_dq *c = client("x.db", 0);
	orch_dq_server *v;
	size_t n;
	CHECK_RC(c, orch_dq_cluster(c, &v, &n), SQLITE_OK);
	CHECK(n == 1 && v[0].id == 1 && strcmp(v[0].address, address) == 0 && v[0].role == ORCH_DQ_VOTER);
	CHECK(strcmp(orch_dq_leader_address(c), address) == 0);
	free(v);
	orch_dq_close(c);
}

static int free_port(void)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t len = sizeof a;
	bind(fd, (struct sockaddr *)&a, sizeof a);
	getsockname(fd, (struct sockaddr *)&a, &len);
	close(fd);
	return ntohs(a.sin_port);
}

int main(void)
{
	snprintf(node_dir, sizeof node_dir, "/tmp/orchfs-dqlite-XXXXXX");
	if (!mkdtemp(node_dir))
		return 1;
	snprintf(address, sizeof address, "127.0.0.1:%d", free_port());
	peer_list[0] = address;
	if (start_node() != 0) {
		printf("dqlite: 0 passed, 1 failed\n");
		return 1;
	}
	struct {
		const char *name;
		void (*fn)(void);
	} tests[] = {
		{ "types", test_types }, { "many_rows", test_many_rows }, { "errors", test_errors },
		{ "transactions", test_transactions }, { "busy", test_busy },
		{ "user_version", test_user_version }, { "declared_types", test_declared_types },
		{ "reconnect", test_reconnect }, { "cluster", test_cluster },
	};
	int passed = 0, failed = 0;
	for (size_t i = 0; i < sizeof tests / sizeof tests[0]; i++) {
		failed_now = 0;
		int64_t t0 = now_ms();
		tests[i].fn();
		printf("%s dqlite_%s (%lld ms)\n", failed_now ? "FAIL" : "ok", tests[i].name, (long long)(now_ms() - t0));
		failed_now ? failed++ : passed++;
	}
	orch_dq_node_stop(node);
	char cmd[128];
	snprintf(cmd, sizeof cmd, "rm -rf %s", node_dir);
	if (system(cmd) != 0)
		failed++;
	printf("dqlite: %d passed, %d failed\n", passed, failed);
	return failed ? 1 : 0;
}
