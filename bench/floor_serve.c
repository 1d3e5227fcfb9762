/*
 * bench-floor-serve: the floor for `orchfs serve` in scripts/bench.
 *
 * A minimal server of the reference's wire format on stdin/stdout: one JSON
 * request per line, {"id", "method", "params": {"task_id"}}, answered with
 * one line {"id", "result": <the task row>}.  It parses the request with
 * jansson, runs one prepared SELECT of the row on a read-only WAL
 * connection to the given database (orchfs's own state.db), builds the
 * reply object and writes it: what any server of this protocol must do at
 * least, and less than the reference does (no method table, no
 * validation, no transaction, timestamps left as integers).
 *
 * usage: bench-floor-serve [--echo] DB
 *   --echo: no SQLite at all; the reply echoes the params (the pipe and
 *   JSON alone).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <jansson.h>
#include <sqlite3.h>

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int write_all(const char *buf, size_t len)
{
	while (len > 0) {
		ssize_t n = write(STDOUT_FILENO, buf, len);
		if (n <= 0)
			return -1;
		buf += n;
		len -= (size_t)n;
	}
	return 0;
}

/* The task row as a JSON object, or JSON null when there is none. */
static json_t *select_task(sqlite3_stmt *st, json_int_t id)
{
	json_t *row = json_null();

	sqlite3_bind_int64(st, 1, id);
	if (sqlite3_step(st) == SQLITE_ROW) {
		row = json_object();
		for (int i = 0; i < sqlite3_column_count(st); i++) {
			const char *name = sqlite3_column_name(st, i);
			switch (sqlite3_column_type(st, i)) {
			case SQLITE_INTEGER:
				json_object_set_new(row, name, json_integer(sqlite3_column_int64(st, i)));
				break;
			case SQLITE_TEXT:
				json_object_set_new(row, name, json_string((const char *)sqlite3_column_text(st, i)));
				break;
			default:
				break;
			}
		}
	}
	sqlite3_reset(st);
	return row;
}

int main(int argc, char **argv)
{
	bool echo = argc == 3 && strcmp(argv[1], "--echo") == 0;
	sqlite3 *db = NULL;
	sqlite3_stmt *st = NULL;
	char *line = NULL;
	size_t cap = 0;
	ssize_t n;

	if (argc != (echo ? 3 : 2)) {
		fprintf(stderr, "usage: bench-floor-serve [--echo] DB\n");
		return 2;
	}
	if (!echo) {
		if (sqlite3_open_v2(argv[argc - 1], &db, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK ||
		    sqlite3_prepare_v2(db, "SELECT id, level, parent_id, title, status, priority, created_at, "
				       "updated_at FROM tasks WHERE id = ?", -1, &st, NULL) != SQLITE_OK) {
			fprintf(stderr, "bench-floor-serve: %s\n", sqlite3_errmsg(db));
			return 1;
		}
		sqlite3_busy_timeout(db, 5000);
	}
	while ((n = getline(&line, &cap, stdin)) > 0) {
		json_t *req = json_loadb(line, (size_t)n, 0, NULL);
		json_t *params = json_object_get(req, "params");
		json_t *result = echo ? json_incref(params)
				      : select_task(st, json_integer_value(json_object_get(params, "task_id")));
		json_t *reply = json_pack("{s:O, s:o}", "id", req ? json_object_get(req, "id") : json_null(), "result",
					  result ? result : json_null());
		char *out = json_dumps(reply, JSON_COMPACT);
		size_t len = strlen(out);
		out = realloc(out, len + 2);
		out[len] = '\n';
		int rc = write_all(out, len + 1);
		free(out);
		json_decref(reply);
		json_decref(req);
		if (rc)
			break;
	}
	free(line);
	sqlite3_finalize(st);
	sqlite3_close(db);
	return 0;
}
