/*
 * orchfs-dqlite: run a dqlite node and drive the wire protocol client from
 * the command line (built only with -Ddqlite=enabled; the cluster tests in
 * tests/fs/test_dqlite.py use it).
 *
 *   orchfs-dqlite node --id N --addr HOST:PORT --dir DIR [--peer HOST:PORT]... [--latency-ms MS]
 *   orchfs-dqlite exec|query --peer HOST:PORT... [--db NAME] [--connect-ms MS] [--timeout-ms MS] SQL
 *   orchfs-dqlite writer --peer ... --from N --to M [--db NAME]
 *   orchfs-dqlite race --peer ... --keys N --name NAME [--go FILE] [--db NAME]
 *   orchfs-dqlite cluster --peer ...
 *   orchfs-dqlite bench --peer ... --n N [--warmup W] [--samples 1] [--db NAME]
 *   orchfs-dqlite shell --peer ... [--db NAME]
 *
 * `writer` inserts ids N..M one by one into table w and prints "ack ID" for
 * each insert the leader acknowledged, retrying across leader changes;
 * `race` takes keys 0..N-1 of table lease, in an order shuffled by NAME, in
 * BEGIN IMMEDIATE transactions and prints "won KEY" for each key it holds,
 * "lost KEY" for each another holds;
 * with --go it prints "set" once connected and starts when FILE exists, so
 * that two racers really overlap.  Both flush every line, so a
 * test that kills nodes meanwhile knows exactly what was acknowledged.
 * `bench` is the cluster's counterpart of bench/floor_sqlite.c (the floor
 * of scripts/bench-cluster): N one-row INSERTs into a table shaped like
 * orchfs's tasks table, each in its own BEGIN IMMEDIATE ... COMMIT through
 * the leader, the INSERT prepared once; it prints the same summary line
 * "n=N median_us=M p99_us=P mean_us=A" (with --samples 1, one line per
 * transaction in microseconds before it).
 * `shell` keeps one client open and runs each line of its input as one
 * orch_dq_exec, printing "ok" or "error CODE MESSAGE" for it: a test can let
 * the cluster change under a connection that stays open between requests.
 */
#include <signal.h>
#include <sqlite3.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "orchfs/error.h"
#include "../dqlite.h"

static const char *peers[16];
static size_t npeers;
static const char *db = "orchfs.db";
static int connect_ms = 20000, timeout_ms = 5000; /* orch_dq_opts' connect_ms and io_timeout_ms */

static volatile sig_atomic_t stop_flag;
static void on_signal(int sig) { stop_flag = sig; }

static int usage(void)
{
	fprintf(stderr, "usage: orchfs-dqlite node|exec|query|writer|race|cluster|bench|shell [options] (see the source's header)\n");
	return 2;
}

static orch_dq *open_client(void)
{
	orch_dq_opts o = ORCH_DQ_OPTS_INIT;
	o.peers = peers;
	o.npeers = npeers;
	o.database = db;
	o.connect_ms = connect_ms;
	o.io_timeout_ms = timeout_ms;
	orch_dq *c;
	int rc = orch_dq_open(&c, &o);
	if (rc) {
		fprintf(stderr, "orchfs-dqlite: %s (%d)\n", c ? orch_dq_errmsg(c) : "out of memory", rc);
		orch_dq_close(c);
		exit(1);
	}
	return c;
}

static int cmd_node(uint64_t id, const char *addr, const char *dir, unsigned latency)
{
	orch_dq_node_opts o = ORCH_DQ_NODE_OPTS_INIT;
	o.id = id, o.address = addr, o.dir = dir, o.peers = peers, o.npeers = npeers, o.latency_ms = latency;
	signal(SIGTERM, on_signal);
	signal(SIGINT, on_signal);
	orch_dq_node *n;
	if (orch_dq_node_start(&n, &o) != 0) {
		fprintf(stderr, "orchfs-dqlite: %s\n", orch_error_last()->message);
		return 1;
	}
	printf("ready %llu %s\n", (unsigned long long)id, addr);
	fflush(stdout);
	while (!stop_flag)
		pause();
	orch_dq_node_stop(n);
	return 0;
}

static int cmd_sql(const char *sql, bool rows)
{
	orch_dq *c = open_client();
	int rc;
	if (!rows) {
		rc = orch_dq_exec(c, sql);
		if (rc == SQLITE_OK)
			printf("changes %lld last_insert_rowid %lld\n", (long long)orch_dq_changes(c),
			       (long long)orch_dq_last_insert_rowid(c));
	} else {
		orch_dq_stmt *s;
		rc = orch_dq_prepare(c, sql, &s);
		while (rc == SQLITE_OK && (rc = orch_dq_step(s)) == SQLITE_ROW) {
			for (int i = 0; i < orch_dq_column_count(s); i++) {
				const char *t = orch_dq_column_text(s, i);
				printf("%s%s", i ? "\t" : "", orch_dq_column_type(s, i) == SQLITE_NULL ? "NULL" : t ? t : "");
				if (!t && orch_dq_column_type(s, i) != SQLITE_NULL)
					printf("%lld", (long long)orch_dq_column_int64(s, i));
			}
			printf("\n");
			rc = SQLITE_OK;
		}
		if (rc == SQLITE_DONE)
			rc = SQLITE_OK;
		orch_dq_finalize(s);
	}
	if (rc)
		fprintf(stderr, "orchfs-dqlite: %s (%d)\n", orch_dq_errmsg(c), rc);
	orch_dq_close(c);
	return rc ? 1 : 0;
}

/* Run `sql` until it succeeds or fails for a reason other than a leader change. */
static int exec_retry(orch_dq *c, const char *sql)
{
	int rc;
	while (orch_dq_transient(rc = orch_dq_exec(c, sql)))
		usleep(20000);
	return rc;
}

static int cmd_writer(long from, long to)
{
	orch_dq *c = open_client();
	int rc = exec_retry(c, "CREATE TABLE IF NOT EXISTS w (id INTEGER PRIMARY KEY)");
	orch_dq_stmt *s = NULL;
	if (rc == SQLITE_OK)
		rc = orch_dq_prepare(c, "INSERT INTO w (id) VALUES (?)", &s);
	for (long id = from; rc == SQLITE_OK && id <= to; id++) {
		bool unknown = false;
		for (;;) {
			orch_dq_reset(s);
			orch_dq_bind_int64(s, 1, id);
			rc = orch_dq_step(s);
			if (rc == SQLITE_DONE) {
				printf("ack %ld\n", id);
				break;
			}
			/* The first attempt committed although its reply was lost. */
			if (rc == SQLITE_CONSTRAINT_PRIMARYKEY && unknown) {
				printf("ack %ld (committed before the leader change)\n", id);
				break;
			}
			if (!orch_dq_transient(rc))
				break;
			fprintf(stderr, "writer: id %ld: %s (%d); retrying\n", id, orch_dq_errmsg(c), rc);
			unknown = unknown || rc == ORCH_DQ_LEADERSHIP_LOST;
			usleep(20000);
		}
		fflush(stdout);
		if (rc == SQLITE_DONE || rc == SQLITE_CONSTRAINT_PRIMARYKEY)
			rc = SQLITE_OK;
	}
	if (rc)
		fprintf(stderr, "writer: %s (%d)\n", orch_dq_errmsg(c), rc);
	orch_dq_finalize(s);
	orch_dq_close(c);
	return rc ? 1 : 0;
}

/* Take `key` for `name` if nobody holds it: 1 won, 0 held by another, else an error code (negated). */
static int take(orch_dq *c, orch_dq_stmt *get, orch_dq_stmt *put, long key, const char *name)
{
	int rc = orch_dq_exec(c, "BEGIN IMMEDIATE");
	if (rc)
		return -rc;
	orch_dq_reset(get);
	orch_dq_bind_int64(get, 1, key);
	rc = orch_dq_step(get);
	int won = -1;
	if (rc == SQLITE_ROW)
		won = strcmp(orch_dq_column_text(get, 0), name) == 0;
	else if (rc == SQLITE_DONE) {
		orch_dq_reset(put);
		orch_dq_bind_int64(put, 1, key);
		orch_dq_bind_text(put, 2, name, -1);
		rc = orch_dq_step(put);
		won = rc == SQLITE_DONE ? 1 : -1;
	}
	orch_dq_reset(get);
	if (won < 0) {
		if (orch_dq_in_txn(c))
			orch_dq_exec(c, "ROLLBACK");
		return -rc;
	}
	rc = orch_dq_exec(c, "COMMIT");
	return rc ? -rc : won;
}

static int cmd_race(long keys, const char *name, const char *go)
{
	orch_dq *c = open_client();
	int rc = exec_retry(c, "CREATE TABLE IF NOT EXISTS lease (key INTEGER PRIMARY KEY, holder TEXT NOT NULL)");
	orch_dq_stmt *get = NULL, *put = NULL;
	if (rc == SQLITE_OK)
		rc = orch_dq_prepare(c, "SELECT holder FROM lease WHERE key = ?", &get);
	if (rc == SQLITE_OK)
		rc = orch_dq_prepare(c, "INSERT INTO lease (key, holder) VALUES (?, ?)", &put);
	long *order = calloc((size_t)keys + 1, sizeof *order);
	unsigned seed = 5381;
	for (const char *p = name; *p; p++)
		seed = seed * 33 + (unsigned char)*p;
	for (long k = 0; k < keys; k++)
		order[k] = k;
	for (long k = keys - 1; k > 0; k--) {
		long j = (long)(rand_r(&seed) % (unsigned)(k + 1)), t = order[k];
		order[k] = order[j], order[j] = t;
	}
	if (go) {
		printf("set\n");
		fflush(stdout);
		while (access(go, F_OK) != 0)
			usleep(1000);
	}
	for (long i = 0; rc == SQLITE_OK && i < keys; i++) {
		long k = order[i];
		int r;
		while ((r = take(c, get, put, k, name)) < 0 && orch_dq_transient(-r))
			usleep(20000);
		if (r < 0)
			rc = -r;
		else
			printf("%s %ld\n", r == 1 ? "won" : "lost", k);
		fflush(stdout);
	}
	if (rc)
		fprintf(stderr, "race: %s (%d)\n", orch_dq_errmsg(c), rc);
	free(order);
	orch_dq_finalize(get);
	orch_dq_finalize(put);
	orch_dq_close(c);
	return rc ? 1 : 0;
}

static int cmd_cluster(void)
{
	orch_dq *c = open_client();
	orch_dq_server *v;
	size_t n;
	int rc = orch_dq_cluster(c, &v, &n);
	if (rc == SQLITE_OK) {
		printf("leader %s\n", orch_dq_leader_address(c));
		for (size_t i = 0; i < n; i++)
			printf("%llu %s %s\n", (unsigned long long)v[i].id, v[i].address,
			       v[i].role == ORCH_DQ_VOTER ? "voter" : v[i].role == ORCH_DQ_STANDBY ? "standby" : "spare");
		free(v);
	} else {
		fprintf(stderr, "cluster: %s (%d)\n", orch_dq_errmsg(c), rc);
	}
	orch_dq_close(c);
	return rc ? 1 : 0;
}

static int64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int cmp_i64(const void *a, const void *b)
{
	int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
	return (x > y) - (x < y);
}

/* One transaction inserting task number i (as bench/floor_sqlite.c's insert_one); an SQLite code. */
static int bench_one(orch_dq *c, orch_dq_stmt *ins, long i)
{
	char title[64];
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	int64_t ms = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
	int rc = orch_dq_exec(c, "BEGIN IMMEDIATE");
	if (rc)
		return rc;
	snprintf(title, sizeof(title), "bench task %ld", i);
	orch_dq_reset(ins);
	orch_dq_bind_text(ins, 1, "case", -1);
	orch_dq_bind_text(ins, 2, title, -1);
	orch_dq_bind_int64(ins, 3, ms);
	orch_dq_bind_int64(ins, 4, ms);
	rc = orch_dq_step(ins);
	if (rc != SQLITE_DONE) {
		if (orch_dq_in_txn(c))
			orch_dq_exec(c, "ROLLBACK");
		return rc;
	}
	return orch_dq_exec(c, "COMMIT");
}

static int cmd_bench(long n, long warmup, bool print_samples)
{
	static const char *schema[] = {
		"CREATE TABLE IF NOT EXISTS tasks (id INTEGER PRIMARY KEY AUTOINCREMENT, level TEXT NOT NULL,"
		" parent_id INTEGER REFERENCES tasks (id), title TEXT NOT NULL, status TEXT NOT NULL DEFAULT 'todo',"
		" priority INTEGER NOT NULL DEFAULT 0, assignee_session TEXT, input_contract TEXT, fixtures TEXT,"
		" next_action TEXT, created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL)",
		"CREATE INDEX IF NOT EXISTS tasks_by_parent ON tasks (parent_id)",
		"CREATE INDEX IF NOT EXISTS tasks_by_level_status ON tasks (level, status, priority DESC, updated_at)",
	};
	if (n <= 0 || warmup < 0)
		return usage();
	orch_dq *c = open_client();
	orch_dq_stmt *ins = NULL;
	int64_t *samples = calloc((size_t)n, sizeof *samples);
	double sum = 0;
	int rc = samples ? SQLITE_OK : SQLITE_NOMEM;
	for (size_t i = 0; rc == SQLITE_OK && i < sizeof(schema) / sizeof(schema[0]); i++)
		rc = exec_retry(c, schema[i]);
	if (rc == SQLITE_OK)
		rc = orch_dq_prepare(c, "INSERT INTO tasks (level, title, status, priority, created_at, updated_at)"
				     " VALUES (?, ?, 'todo', 0, ?, ?)", &ins);
	for (long i = 0; rc == SQLITE_OK && i < warmup; i++)
		rc = bench_one(c, ins, -i);
	for (long i = 0; rc == SQLITE_OK && i < n; i++) {
		int64_t t0 = now_ns();
		rc = bench_one(c, ins, i);
		samples[i] = now_ns() - t0;
		sum += (double)samples[i];
	}
	if (rc == SQLITE_OK) {
		if (print_samples)
			for (long i = 0; i < n; i++)
				printf("%.3f\n", (double)samples[i] / 1000.0);
		qsort(samples, (size_t)n, sizeof *samples, cmp_i64);
		printf("n=%ld median_us=%.1f p99_us=%.1f mean_us=%.1f\n", n, (double)samples[n / 2] / 1000.0,
		       (double)samples[(size_t)((double)(n - 1) * 0.99)] / 1000.0, sum / (double)n / 1000.0);
	} else {
		fprintf(stderr, "bench: %s (%d)\n", orch_dq_errmsg(c), rc);
	}
	free(samples);
	orch_dq_finalize(ins);
	orch_dq_close(c);
	return rc ? 1 : 0;
}

static int cmd_shell(void)
{
	orch_dq *c = open_client();
	char line[4096];
	printf("ready\n");
	while (fgets(line, sizeof line, stdin)) {
		line[strcspn(line, "\n")] = 0;
		if (!*line)
			continue;
		int rc = orch_dq_exec(c, line);
		if (rc == SQLITE_OK)
			printf("ok\n");
		else
			printf("error %d %s\n", rc, orch_dq_errmsg(c));
	}
	orch_dq_close(c);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc < 2)
		return usage();
	const char *cmd = argv[1], *addr = NULL, *dir = NULL, *name = NULL, *sql = NULL, *go = NULL;
	unsigned long long id = 0;
	long from = 0, to = 0, keys = 0, n = 0, warmup = 100;
	bool samples = false;
	unsigned latency = 0;
	for (int i = 2; i < argc; i++) {
		const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
		if (strncmp(a, "--", 2) != 0) {
			sql = a;
			continue;
		}
		if (!v)
			return usage();
		i++;
		if (!strcmp(a, "--peer") && npeers < 16)
			peers[npeers++] = v;
		else if (!strcmp(a, "--id"))
			id = strtoull(v, NULL, 10);
		else if (!strcmp(a, "--addr"))
			addr = v;
		else if (!strcmp(a, "--dir"))
			dir = v;
		else if (!strcmp(a, "--db"))
			db = v;
		else if (!strcmp(a, "--from"))
			from = atol(v);
		else if (!strcmp(a, "--to"))
			to = atol(v);
		else if (!strcmp(a, "--keys"))
			keys = atol(v);
		else if (!strcmp(a, "--name"))
			name = v;
		else if (!strcmp(a, "--go"))
			go = v;
		else if (!strcmp(a, "--connect-ms"))
			connect_ms = atoi(v);
		else if (!strcmp(a, "--timeout-ms"))
			timeout_ms = atoi(v);
		else if (!strcmp(a, "--n"))
			n = atol(v);
		else if (!strcmp(a, "--warmup"))
			warmup = atol(v);
		else if (!strcmp(a, "--samples"))
			samples = atoi(v) != 0;
		else if (!strcmp(a, "--latency-ms"))
			latency = (unsigned)atoi(v);
		else
			return usage();
	}
	signal(SIGPIPE, SIG_IGN);
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (!strcmp(cmd, "node") && id && addr && dir)
		return cmd_node(id, addr, dir, latency);
	if (npeers == 0)
		return usage();
	if ((!strcmp(cmd, "exec") || !strcmp(cmd, "query")) && sql)
		return cmd_sql(sql, !strcmp(cmd, "query"));
	if (!strcmp(cmd, "writer"))
		return cmd_writer(from, to);
	if (!strcmp(cmd, "race") && name)
		return cmd_race(keys, name, go);
	if (!strcmp(cmd, "cluster"))
		return cmd_cluster();
	if (!strcmp(cmd, "bench"))
		return cmd_bench(n, warmup, samples);
	if (!strcmp(cmd, "shell"))
		return cmd_shell();
	return usage();
}
