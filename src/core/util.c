/*
 * Helpers shared by the method groups: time, SQL binding and row-to-JSON
 * conversion, path normalisation and the undo list for git side effects.
 */
#include <assert.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "orchfs/core.h"




/* ---- SQL ---- */

static int bind_args(orch_stmt *st, const char *fmt, va_list ap)
{
	int rc = 0;

	for (int i = 1; fmt && *fmt && rc == 0; fmt++, i++) {
		switch (*fmt) {
		case 'i':
			rc = orch_stmt_bind_int64(st, i, va_arg(ap, int64_t));
			break;
		case 'I': {
			int64_t v = va_arg(ap, int64_t);
			rc = v ? orch_stmt_bind_int64(st, i, v) : orch_stmt_bind_null(st, i);
			break;
		}
		case 's': {
			const char *s = va_arg(ap, const char *);
			rc = s ? orch_stmt_bind_text(st, i, s) : orch_stmt_bind_null(st, i);
			break;
		}
		case 'j': {
			json_t *j = va_arg(ap, json_t *);
			char *s = j ? json_dumps(j, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
			rc = s ? orch_stmt_bind_text(st, i, s) : orch_stmt_bind_null(st, i);
			free(s);
			break;
		}
		case 'n':
			rc = orch_stmt_bind_null(st, i);
			break;
		default:
			assert(!"bad bind format");
		}
	}
	return rc;
}

static orch_stmt *vsql(orch_ctx *ctx, const char *sql, const char *fmt, va_list ap)
{
	orch_stmt *st = orch_store_stmt(ctx->store, sql);

	if (!st) {
		orch_store_error(ctx->store, "");
		return NULL;
	}
	if (bind_args(st, fmt, ap) != 0) {
		orch_store_error(ctx->store, "bind");
		return NULL;
	}
	return st;
}

orch_stmt *orch_sql(orch_ctx *ctx, const char *sql, const char *fmt, ...)
{
	va_list ap;
	orch_stmt *st;

	va_start(ap, fmt);
	st = vsql(ctx, sql, fmt, ap);
	va_end(ap);
	return st;
}

int orch_sql_step(orch_ctx *ctx, orch_stmt *st)
{
	int rc = orch_stmt_step(st);

	if (rc != ORCH_ROW && rc != ORCH_DONE) {
		orch_store_error(ctx->store, "");
	}
	return rc;
}

int orch_sql_exec(orch_ctx *ctx, const char *sql, const char *fmt, ...)
{
	va_list ap;
	orch_stmt *st;
	int rc;

	va_start(ap, fmt);
	st = vsql(ctx, sql, fmt, ap);
	va_end(ap);
	if (!st)
		return ORCH_EINTERNAL;
	rc = orch_sql_step(ctx, st);
	orch_stmt_reset(st);
	return rc == ORCH_DONE ? 0 : ORCH_EINTERNAL;
}

static bool ends_with(const char *s, const char *suffix)
{
	size_t n = strlen(s), m = strlen(suffix);

	return n >= m && strcmp(s + n - m, suffix) == 0;
}

json_t *orch_row_json(orch_stmt *st)
{
	json_t *obj = json_object();
	int n = orch_stmt_column_count(st);

	for (int i = 0; i < n; i++) {
		const char *name = orch_stmt_column_name(st, i);
		int type = orch_stmt_column_type(st, i);
		json_t *v = NULL;
		char key[128];

		if (type == ORCH_NULL)
			continue;
		snprintf(key, sizeof(key), "%s", name);
		if (ends_with(name, "_json")) {
			const char *text = (const char *)orch_stmt_column_text(st, i);
			key[strlen(key) - 5] = '\0';
			v = json_loads(text, JSON_DECODE_ANY, NULL);
			if (!v)
				v = json_string(text);
		} else if (type == ORCH_INTEGER && (ends_with(name, "_at") || strcmp(name, "lease_until") == 0)) {
			char buf[32];
			orch_time_format(orch_stmt_column_int64(st, i), buf);
			v = json_string(buf);
		} else if (type == ORCH_INTEGER) {
			v = json_integer(orch_stmt_column_int64(st, i));
		} else if (type == ORCH_FLOAT) {
			v = json_real(orch_stmt_column_double(st, i));
		} else {
			v = json_stringn((const char *)orch_stmt_column_text(st, i),
					 (size_t)orch_stmt_column_bytes(st, i));
		}
		json_object_set_new(obj, key, v);
	}
	return obj;
}

int orch_sql_row(orch_ctx *ctx, json_t **out, const char *nf_fmt, int64_t id,
		 const char *sql, const char *fmt, ...)
{
	va_list ap;
	orch_stmt *st;
	int rc;

	*out = NULL;
	va_start(ap, fmt);
	st = vsql(ctx, sql, fmt, ap);
	va_end(ap);
	if (!st)
		return ORCH_EINTERNAL;
	rc = orch_sql_step(ctx, st);
	if (rc == ORCH_ROW)
		*out = orch_row_json(st);
	orch_stmt_reset(st);
	if (rc == ORCH_ROW)
		return 0;
	if (rc == ORCH_DONE)
		return orch_error_set(ORCH_ENOTFOUND, nf_fmt, (long long)id);
	return ORCH_EINTERNAL;
}

int orch_sql_rows(orch_ctx *ctx, json_t **out, const char *sql, const char *fmt, ...)
{
	va_list ap;
	orch_stmt *st;
	int rc;

	*out = NULL;
	va_start(ap, fmt);
	st = vsql(ctx, sql, fmt, ap);
	va_end(ap);
	if (!st)
		return ORCH_EINTERNAL;
	*out = json_array();
	while ((rc = orch_sql_step(ctx, st)) == ORCH_ROW)
		json_array_append_new(*out, orch_row_json(st));
	orch_stmt_reset(st);
	if (rc != ORCH_DONE) {
		json_decref(*out);
		*out = NULL;
		return ORCH_EINTERNAL;
	}
	return 0;
}

/* Append to a growing buffer (large ones grow in place: glibc remaps rather than copies). */
static void append(char **buf, size_t *len, size_t *cap, const char *s, size_t n)
{
	if (*len + n + 1 > *cap) {
		*cap = (*len + n + 1) * 2;
		*buf = orch_xrealloc(*buf, *cap);
	}
	memcpy(*buf + *len, s, n);
	*len += n;
	(*buf)[*len] = '\0';
}

static int dump_row(const char *text, size_t size, void *arg)
{
	void **a = arg;

	append(a[0], a[1], a[2], text, size);
	return 0;
}

int orch_sql_rows_result(orch_ctx *ctx, const char *sql, const char *fmt, ...)
{
	va_list ap;
	orch_stmt *st;
	char *buf = NULL;
	size_t len = 0, cap = 0;
	void *sink[3] = {&buf, &len, &cap};
	int rc;

	va_start(ap, fmt);
	st = vsql(ctx, sql, fmt, ap);
	va_end(ap);
	if (!st)
		return ORCH_EINTERNAL;
	append(&buf, &len, &cap, "[", 1);
	while ((rc = orch_sql_step(ctx, st)) == ORCH_ROW) {
		json_t *row = orch_row_json(st);
		if (len > 1)
			append(&buf, &len, &cap, ",", 1);
		json_dump_callback(row, dump_row, sink, JSON_COMPACT);
		json_decref(row);
	}
	orch_stmt_reset(st);
	if (rc != ORCH_DONE) {
		free(buf);
		return ORCH_EINTERNAL;
	}
	append(&buf, &len, &cap, "]", 1);
	free(ctx->result_text);
	ctx->result_text = buf;
	return 0;
}

int orch_sql_int(orch_ctx *ctx, int64_t *out, bool *found, const char *sql, const char *fmt, ...)
{
	va_list ap;
	orch_stmt *st;
	int rc;

	va_start(ap, fmt);
	st = vsql(ctx, sql, fmt, ap);
	va_end(ap);
	if (!st)
		return ORCH_EINTERNAL;
	rc = orch_sql_step(ctx, st);
	if (found)
		*found = rc == ORCH_ROW;
	*out = rc == ORCH_ROW ? orch_stmt_column_int64(st, 0) : 0;
	orch_stmt_reset(st);
	return rc == ORCH_ROW || rc == ORCH_DONE ? 0 : ORCH_EINTERNAL;
}

int orch_meta_read(orch_store *store, int64_t *db_version, int64_t *updated_at)
{
	orch_stmt *st = orch_store_stmt(store, "SELECT db_version, updated_at FROM mirror_meta WHERE id = 1");
	int rc;

	if (!st)
		return orch_store_error(store, "");
	rc = orch_stmt_step(st);
	if (rc == ORCH_ROW) {
		if (db_version)
			*db_version = orch_stmt_column_int64(st, 0);
		if (updated_at)
			*updated_at = orch_stmt_column_int64(st, 1);
	}
	orch_stmt_reset(st);
	return rc == ORCH_ROW ? 0 : orch_store_error(store, "");
}

int orch_meta_read_elsewhere(orch_store *store, int64_t *db_version, int64_t *updated_at, bool *elsewhere)
{
	/* One statement, so one round trip to a dqlite leader. */
	orch_stmt *st = orch_store_stmt(store, "SELECT db_version, updated_at, (SELECT data_version FROM "
					       "pragma_data_version) FROM mirror_meta WHERE id = 1");
	int rc;

	if (!st)
		return orch_store_error(store, "");
	rc = orch_stmt_step(st);
	if (rc == ORCH_ROW) {
		*db_version = orch_stmt_column_int64(st, 0);
		*updated_at = orch_stmt_column_int64(st, 1);
		*elsewhere = orch_store_data_version_seen(store, orch_stmt_column_int64(st, 2));
	}
	orch_stmt_reset(st);
	return rc == ORCH_ROW ? 0 : orch_store_error(store, "");
}

int orch_page_after(orch_ctx *ctx, json_t *p, const char *sql, const char *what)
{
	int64_t after = orch_param_int(p, "after_id", 0), id = 0;
	bool found = true;
	int rc;

	if (after && (rc = orch_sql_int(ctx, &id, &found, sql, "i", after)) != 0)
		return rc;
	return found ? 0 : orch_error_set(ORCH_ENOTFOUND, "after_id: %s %lld not found", what, (long long)after);
}

int64_t orch_last_id(orch_ctx *ctx)
{
	return orch_store_last_id(ctx->store);
}



/* ---- paths ---- */

/*
 * Normalise a client path: components "" and "." dropped, ".." pops one
 * component.  The result is "." for the repository root.  Absolute paths,
 * the empty string and ".." leaving the root are invalid_params.
 */
int orch_path_normalise(const char *name, const char *in, char **out)
{
	size_t n = strlen(in);
	char *buf = malloc(n + 2), *dup = strdup(in), *save = NULL;
	size_t len = 0;

	*out = NULL;
	/* A control character (a newline breaks `git worktree list --porcelain`, for one) is never a path. */
	for (size_t i = 0; i < n; i++) {
		if ((unsigned char)in[i] < 0x20 || in[i] == 0x7f) {
			free(buf);
			free(dup);
			return orch_error_set(ORCH_EINVALID_PARAMS, "%s must not contain control characters "
					      "(byte 0x%02x at %zu)", name, (unsigned char)in[i], i);
		}
	}
	if (n == 0 || in[0] == '/') {
		free(buf);
		free(dup);
		return orch_error_set(ORCH_EINVALID_PARAMS, "%s must be a repository-relative path, got \"%s\"",
				      name, in);
	}
	for (char *c = strtok_r(dup, "/", &save); c; c = strtok_r(NULL, "/", &save)) {
		if (strcmp(c, ".") == 0)
			continue;
		if (strcmp(c, "..") == 0) {
			if (len == 0) {
				free(buf);
				free(dup);
				return orch_error_set(ORCH_EINVALID_PARAMS,
						      "%s \"%s\" leaves the repository", name, in);
			}
			while (len > 0 && buf[len - 1] != '/')
				len--;
			if (len > 0)
				len--;
			continue;
		}
		if (len > 0)
			buf[len++] = '/';
		memcpy(buf + len, c, strlen(c));
		len += strlen(c);
	}
	if (len == 0)
		buf[len++] = '.';
	buf[len] = '\0';
	free(dup);
	*out = buf;
	return 0;
}

/* ---- transaction hooks ---- */

void orch_txn_hook(orch_ctx *ctx, orch_hook_fn on_rollback, orch_hook_fn on_commit, orch_hook_fn free_arg,
		   void *arg)
{
	orch_undo *u = orch_xrealloc(NULL, sizeof(*u));

	*u = (orch_undo){on_rollback, on_commit, free_arg, arg, ctx->undo};
	ctx->undo = u;
}

/* committed: 1 run on_commit, 0 run on_rollback, -1 run neither (outcome unknown). */
static void undo_drain(orch_ctx *ctx, int committed)
{
	while (ctx->undo) {
		orch_undo *u = ctx->undo;
		orch_hook_fn fn = committed > 0 ? u->on_commit : committed == 0 ? u->on_rollback : NULL;
		ctx->undo = u->next;
		if (fn)
			fn(u->arg);
		if (u->free_arg)
			u->free_arg(u->arg);
		free(u);
	}
}

void orch_txn_on_failure(orch_ctx *ctx, int (*fn)(orch_ctx *ctx, json_t *arg), json_t *arg)
{
	json_decref(ctx->fail_arg);
	ctx->fail_fn = fn;
	ctx->fail_arg = arg;
}

void orch_undo_run(orch_ctx *ctx)
{
	undo_drain(ctx, 0);
}

void orch_undo_clear(orch_ctx *ctx)
{
	undo_drain(ctx, 1);
}

void orch_undo_forget(orch_ctx *ctx)
{
	if (ctx->undo)
		orch_log("the outcome of a COMMIT is unknown (the store's leader was lost): its git effects are kept "
			 "as they are, for the retry or the next start-up to settle");
	undo_drain(ctx, -1);
}
