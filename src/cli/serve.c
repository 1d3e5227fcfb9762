/*
 * orchfs serve: the reference orchestrator's wire protocol on stdin/stdout.
 *
 * One request per line, {"id": <any>, "method": "<name>", "params": {...}},
 * one reply per line, {"id": <same>, "result": <value>} or
 * {"id": <same>, "error": {"code", "message", "details"?}}.  Replies come in
 * the order of the requests, except a `wait`'s: it runs on a thread of its
 * own (front.h), so it holds up nothing, and its reply comes when it is
 * done.  Sessions opened through the process (and --session) are held
 * alive by it until end of input or SIGTERM/SIGINT (front.h).  Every method runs
 * through orch_call, as a ctl write and `orchfs call` do, against the state a
 * mount of the same repository serves; other processes on that state are
 * serialised by SQLite (WAL, busy timeout, BEGIN IMMEDIATE).
 *
 * What the envelope itself gets wrong is answered in the same shape: a line
 * that is not JSON is invalid_json with id null, a missing method is
 * invalid_params, a line over 1 MiB is too_large with id null (the rest of
 * that line is skipped and serving goes on).  Blank lines are ignored;
 * missing or null params mean {}.  Unknown envelope keys (e.g. "jsonrpc")
 * are ignored, as the reference does.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "orchfs/core.h"
#include "cli.h"
#include "front.h"
#include "lines.h"

/* Whether [s, s+n) is only whitespace. */
static bool blank(const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (!strchr(" \t\r\n", s[i]))
			return false;
	return true;
}

/*
 * The reply line for `id` around an orch_call reply text ("{...}\n"): the id
 * goes first, the reply's own keys follow unchanged (no second copy of a
 * long result as JSON values).
 */
static char *with_id(json_t *id, const char *reply)
{
	char *id_text = json_dumps(id ? id : json_null(), JSON_COMPACT | JSON_ENCODE_ANY), *line = NULL;
	size_t n = id_text ? strlen(id_text) : 0, m = strlen(reply);

	if (id_text && reply[0] == '{') {
		/* {"id":<id>,<the reply after its "{"> */
		line = orch_xrealloc(NULL, 6 + n + 1 + m);
		memcpy(line, "{\"id\":", 6);
		memcpy(line + 6, id_text, n);
		line[6 + n] = ',';
		memcpy(line + 7 + n, reply + 1, m); /* with its NUL */
	}
	free(id_text);
	return line;
}

/* An error reply for `id` from the error slot (then cleared). */
static char *envelope_error(json_t *id)
{
	char *reply = orch_reply_error(NULL), *line = with_id(id, reply);

	free(reply);
	orch_error_clear();
	return line;
}

/* A finished wait's reply line (front_line_fn). */
static char *wait_line(void *arg, json_t *id, int rc, const char *reply)
{
	(void)arg;
	(void)rc;
	return with_id(id, reply);
}

/* The reply line of one request line; NULL with *later for a wait (its reply comes when it is done). */
static char *handle(front *f, const char *text, size_t len, bool *later)
{
	json_error_t err;
	json_t *req = json_loadb(text, len, JSON_DECODE_ANY | JSON_REJECT_DUPLICATES, &err), *id = NULL;
	char *reply = NULL, *line;

	if (!req) {
		orch_error_set(ORCH_EINVALID_JSON, "request line is not valid JSON: %s (column %d)", err.text,
			       err.column);
		return envelope_error(NULL);
	}
	if (!json_is_object(req)) {
		orch_error_set(ORCH_EINVALID_PARAMS, "a request is one JSON object {\"id\", \"method\", \"params\"} "
			       "per line, got %s", json_is_array(req) ? "an array" : "another JSON value");
		line = envelope_error(NULL);
		goto done;
	}
	id = json_object_get(req, "id");
	json_t *method = json_object_get(req, "method"), *params = json_object_get(req, "params");
	if (!json_is_string(method) || json_string_length(method) == 0) {
		orch_error_set(ORCH_EINVALID_PARAMS, "\"method\" must be a method name (a non-empty string; "
			       "orchfs methods lists them)");
		line = envelope_error(id);
		goto done;
	}
	json_t *empty = NULL;
	if (!params || json_is_null(params))
		params = empty = json_object();
	const orch_method *m = orch_method_find(json_string_value(method));
	orch_error_clear();
	if (m && (m->flags & ORCH_M_BLOCKING)) {
		front_wait_start(f, id, params);
		json_decref(empty);
		*later = true;
		line = NULL;
		goto done;
	}
	int rc = orch_call(&f->ctx, json_string_value(method), params, 0, &reply);
	json_decref(empty);
	line = with_id(id, reply);
	front_after_call(f, json_string_value(method), rc, reply);
	free(reply);
	orch_error_clear();
done:
	json_decref(req);
	return line;
}

int cli_serve(const char *repo, const char *state, const char *host, int64_t session)
{
	front f;
	line_reader r;
	const char *text;
	size_t len;
	int status = 0;

	if (front_open(&f, repo, state, host, session) != 0)
		return 1;
	f.line = wait_line;
	line_reader_init(&r, STDIN_FILENO, ORCH_REQUEST_MAX);
	r.stop = &front_signalled;
	line_status ls;
	while (front_next_line(&r, &text, &len, &ls, &status)) {
		bool later = false;
		char *line;

		if (ls == LINE_TOO_LONG) {
			orch_error_set(ORCH_ETOOLARGE, "request line longer than %d bytes (the request limit); it was "
				       "skipped", ORCH_REQUEST_MAX);
			line = envelope_error(NULL);
		} else if (blank(text, len)) {
			continue;
		} else {
			line = handle(&f, text, len, &later);
		}
		if (later)
			continue;
		if (!line) {
			fprintf(stderr, "orchfs: out of memory\n");
			status = 1;
			break;
		}
		int w = front_write(&f, line, strlen(line));
		free(line);
		if (w != 0)
			break;
	}
	line_reader_free(&r);
	return front_close(&f, status);
}
