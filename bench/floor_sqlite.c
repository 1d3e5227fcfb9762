/*
 * bench-floor-sqlite: the floor for task.create in scripts/bench.
 *
 * Times N one-row INSERTs into a table shaped like orchfs's tasks table (the
 * same columns and indexes), each in its own BEGIN IMMEDIATE ... COMMIT, at
 * the durability orchfs uses: journal_mode=WAL, synchronous=FULL.  The
 * statements are prepared once, as a daemon with a statement cache would.
 *
 * A daemon's WAL file stays at its high-water size and commits overwrite it
 * in place; a WAL that grows costs a file-system journal commit per fsync.
 * So the WAL is kept when this program exits (SQLITE_FCNTL_PERSIST_WAL) and
 * the untimed warm-up writes enough to wrap it past one auto-checkpoint.
 *
 * usage: bench-floor-sqlite [--samples] [--warmup W] DB N
 * Prints "n=N median_us=M p99_us=P mean_us=A" (and, with --samples, one
 * line per transaction in microseconds before it).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* st_mtim, clock_gettime when built outside meson */
#endif
#include <sqlite3.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const char schema[] =
	"CREATE TABLE IF NOT EXISTS tasks ("
	"  id INTEGER PRIMARY KEY AUTOINCREMENT,"
	"  level TEXT NOT NULL,"
	"  parent_id INTEGER REFERENCES tasks (id),"
	"  title TEXT NOT NULL,"
	"  status TEXT NOT NULL DEFAULT 'todo',"
	"  priority INTEGER NOT NULL DEFAULT 0,"
	"  assignee_session TEXT,"
	"  input_contract TEXT,"
	"  fixtures TEXT,"
	"  next_action TEXT,"
	"  created_at INTEGER NOT NULL,"
	"  updated_at INTEGER NOT NULL);"
	"CREATE INDEX IF NOT EXISTS tasks_by_parent ON tasks (parent_id);"
	"CREATE INDEX IF NOT EXISTS tasks_by_level_status"
	"  ON tasks (level, status, priority DESC, updated_at);";

static int64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int cmp_i64(const void *a, const void *b)
{
	int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;

	return (x > y) - (x < y);
}

/* One transaction inserting task number i; returns 0 or the SQLite error code. */
static int insert_one(sqlite3_stmt *begin, sqlite3_stmt *ins, sqlite3_stmt *commit, int i)
{
	char title[64];
	int64_t ms = now_ms();
	int rc;

	snprintf(title, sizeof(title), "bench task %d", i);
	if (sqlite3_step(begin) != SQLITE_DONE)
		return sqlite3_reset(begin);
	sqlite3_reset(begin);
	sqlite3_bind_text(ins, 1, "case", -1, SQLITE_STATIC);
	sqlite3_bind_text(ins, 2, title, -1, SQLITE_TRANSIENT);
	sqlite3_bind_int64(ins, 3, ms);
	sqlite3_bind_int64(ins, 4, ms);
	rc = sqlite3_step(ins) == SQLITE_DONE ? 0 : sqlite3_reset(ins);
	sqlite3_reset(ins);
	if (rc)
		return rc;
	rc = sqlite3_step(commit) == SQLITE_DONE ? 0 : sqlite3_reset(commit);
	sqlite3_reset(commit);
	return rc;
}

int main(int argc, char **argv)
{
	sqlite3 *db = NULL;
	sqlite3_stmt *begin = NULL, *ins = NULL, *commit = NULL;
	int64_t *samples = NULL;
	const char *path = NULL;
	int n = -1, warmup = 300, print_samples = 0, persist = 1, rc = 1;
	double sum = 0;

	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--samples") == 0)
			print_samples = 1;
		else if (strcmp(argv[i], "--warmup") == 0 && i + 1 < argc)
			warmup = atoi(argv[++i]);
		else if (!path)
			path = argv[i];
		else if (n < 0)
			n = atoi(argv[i]);
	}
	if (!path || n <= 0) {
		fprintf(stderr, "usage: bench-floor-sqlite [--samples] [--warmup W] DB N\n");
		return 2;
	}
	samples = calloc((size_t)n, sizeof(*samples));
	if (!samples || sqlite3_open(path, &db) != SQLITE_OK)
		goto out;
	sqlite3_file_control(db, "main", SQLITE_FCNTL_PERSIST_WAL, &persist);
	if (sqlite3_exec(db, "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;", NULL, NULL, NULL) != SQLITE_OK ||
	    sqlite3_exec(db, schema, NULL, NULL, NULL) != SQLITE_OK ||
	    sqlite3_prepare_v2(db, "BEGIN IMMEDIATE", -1, &begin, NULL) != SQLITE_OK ||
	    sqlite3_prepare_v2(db, "INSERT INTO tasks (level, title, status, priority, created_at, updated_at)"
			       " VALUES (?1, ?2, 'todo', 0, ?3, ?4)", -1, &ins, NULL) != SQLITE_OK ||
	    sqlite3_prepare_v2(db, "COMMIT", -1, &commit, NULL) != SQLITE_OK)
		goto out;
	for (int i = 0; i < warmup; i++)
		if (insert_one(begin, ins, commit, -i) != 0)
			goto out;
	for (int i = 0; i < n; i++) {
		int64_t t0 = now_ns();

		if (insert_one(begin, ins, commit, i) != 0)
			goto out;
		samples[i] = now_ns() - t0;
		sum += (double)samples[i];
	}
	if (print_samples)
		for (int i = 0; i < n; i++)
			printf("%.3f\n", (double)samples[i] / 1000.0);
	qsort(samples, (size_t)n, sizeof(*samples), cmp_i64);
	printf("n=%d median_us=%.1f p99_us=%.1f mean_us=%.1f\n", n,
	       (double)samples[n / 2] / 1000.0,
	       (double)samples[(size_t)((n - 1) * 0.99)] / 1000.0, sum / n / 1000.0);
	rc = 0;
out:
	if (rc && db)
		fprintf(stderr, "bench-floor-sqlite: %s\n", sqlite3_errmsg(db));
	sqlite3_finalize(begin);
	sqlite3_finalize(ins);
	sqlite3_finalize(commit);
	sqlite3_close(db);
	free(samples);
	return rc;
}
