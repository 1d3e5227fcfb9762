/*
 * orchfs mcp: a Model Context Protocol server over stdio.
 *
 * JSON-RPC 2.0 messages, one per line on stdin and stdout (the MCP stdio
 * transport), for protocol versions 2024-11-05 through 2025-11-25:
 * initialize (version negotiation), ping, tools/list, tools/call.
 * Notifications (messages without an id) get no reply, whatever their
 * method; a JSON-RPC batch (an array) gets an array of replies.
 *
 * Every method of the table is a tool.  Its name is the method's with "_"
 * for "." (task.create is task_create: several clients accept only
 * [A-Za-z0-9_-] in tool names), its title the method's name; its input
 * schema, description and example come from the method's entry in the
 * table (orch_method_schema), as the ctl usage texts and `orchfs methods
 * --json` do.  A call runs through orch_call exactly as `orchfs call` does;
 * the reply is the tool result: its text is the ctl reply, its
 * structuredContent (2025-06-18 and later) the same object, and an orchfs
 * error ({"error": {code, message, details}}) sets isError.
 *
 * The `wait` tool runs on a thread of its own (front.h): other calls go on
 * while it blocks, and its response comes when it is done.  A
 * notifications/cancelled naming its request ends it without a response,
 * as the protocol asks.  A client's own request timeout (often 60 s) may be
 * shorter than timeout_ms: such a client should pass a shorter timeout_ms.
 * Sessions opened through the process (and --session) are held alive by
 * it until end of input or SIGTERM/SIGINT (front.h).
 */
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "orchfs/core.h"
#include "cli.h"
#include "front.h"
#include "lines.h"

#ifndef ORCHFS_VERSION
#define ORCHFS_VERSION "0"
#endif

/* Newest first: the answer to a client that asks for a version not listed. */
static const char *const versions[] = {"2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05", NULL};

/* JSON-RPC error codes. */
#define RPC_PARSE_ERROR -32700
#define RPC_INVALID_REQUEST -32600
#define RPC_METHOD_NOT_FOUND -32601
#define RPC_INVALID_PARAMS -32602

/* The one client's session: used by the main thread only (version: set before any wait starts). */
typedef struct {
	front f;
	const char *version; /* negotiated protocol version (an entry of versions[]) */
} mcp_server;

/* Whether the negotiated version is `v` or later (versions are dates). */
static bool since(const mcp_server *s, const char *v)
{
	return strcmp(s->version, v) >= 0;
}

static json_t *rpc_result(json_t *id, json_t *result)
{
	return json_pack("{s:s, s:O, s:o}", "jsonrpc", "2.0", "id", id ? id : json_null(), "result", result);
}

static json_t *rpc_error(json_t *id, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static json_t *rpc_error(json_t *id, int code, const char *fmt, ...)
{
	char msg[1024];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	return json_pack("{s:s, s:O, s:{s:i, s:s}}", "jsonrpc", "2.0", "id", id ? id : json_null(), "error", "code",
			 code, "message", msg);
}

/* task.create -> task_create */
static void tool_name(const orch_method *m, char *buf, size_t size)
{
	snprintf(buf, size, "%s", m->name);
	for (char *c = buf; *c; c++)
		if (*c == '.')
			*c = '_';
}

/* The method of a tool name (its method's own name is accepted too). */
static const orch_method *find_tool(const char *name)
{
	char buf[128];

	for (size_t i = 0; i < orch_method_count(); i++) {
		const orch_method *m = orch_method_at(i);
		tool_name(m, buf, sizeof(buf));
		if (strcmp(buf, name) == 0 || strcmp(m->name, name) == 0)
			return m;
	}
	return NULL;
}

static json_t *tool_json(const mcp_server *s, const orch_method *m)
{
	char name[128];
	bool write = (m->flags & ORCH_M_WRITE) != 0;
	json_t *t;

	tool_name(m, name, sizeof(name));
	t = json_pack("{s:s}", "name", name);
	if (since(s, "2025-06-18"))
		json_object_set_new(t, "title", json_string(m->name));
	json_object_set_new(t, "description",
			    json_sprintf("%s\n\nOutput: %s\n\nErrors: %s Any call: invalid_params (unknown key, "
					 "wrong type, missing key), too_large (request over 1 MiB).\n\nExample "
					 "arguments: %s\n\n(orchfs method %s, as ctl/%s of a mount; %s.)",
					 m->summary, m->output, m->errors ? m->errors : "", m->example, m->name,
					 m->name, write ? "it changes the state, all or nothing" : "read-only"));
	json_object_set_new(t, "inputSchema", orch_method_schema(m));
	if (since(s, "2025-03-26"))
		json_object_set_new(t, "annotations",
				    json_pack("{s:s, s:b, s:b}", "title", m->name, "readOnlyHint", !write,
					      "openWorldHint", false));
	return t;
}

static json_t *tools_list(mcp_server *s, json_t *id)
{
	json_t *tools = json_array();

	for (size_t i = 0; i < orch_method_count(); i++)
		json_array_append_new(tools, tool_json(s, orch_method_at(i)));
	return rpc_result(id, json_pack("{s:o}", "tools", tools));
}

static json_t *initialize(mcp_server *s, json_t *id, json_t *params)
{
	const char *want = json_string_value(json_object_get(params, "protocolVersion"));

	if (!want)
		return rpc_error(id, RPC_INVALID_PARAMS, "initialize needs params.protocolVersion (one of %s, %s, %s, "
				 "%s)", versions[0], versions[1], versions[2], versions[3]);
	s->version = versions[0];
	for (size_t i = 0; versions[i]; i++)
		if (strcmp(want, versions[i]) == 0)
			s->version = versions[i];
	json_t *result = json_pack(
		"{s:s, s:{s:{s:b}}, s:{s:s, s:s}}", "protocolVersion", s->version, "capabilities", "tools",
		"listChanged", false, "serverInfo", "name", "orchfs", "version", ORCHFS_VERSION);
	json_object_set_new(
		result, "instructions",
		json_sprintf("orchfs coordinates AI coding agents working on the git repository %s. Each tool is "
			     "one orchfs method (tool name: the method's with _ for .), run as one transaction: "
			     "a success is durable, a failure changes nothing. Start with session_open; "
			     "task_*, case_begin/step_check/case_complete, lock_*, worktree_* and plan_* "
			     "follow. A failed call is a tool result with isError and {\"error\": {code, message, "
			     "details?}}; code is one of invalid_json, invalid_params, invalid_state, not_found, "
			     "conflict, exists, forbidden, too_large, git, internal. Give call_id to make a call "
			     "safe to repeat.", s->f.ctx.repo_path));
	return rpc_result(id, result);
}

/* The tool result of orch_call's reply. */
static json_t *tool_result(const mcp_server *s, json_t *id, int rc, const char *reply)
{
	size_t n = strlen(reply);
	json_t *result;

	if (n > 0 && reply[n - 1] == '\n')
		n--;
	result = json_pack("{s:[{s:s, s:s%}], s:b}", "content", "type", "text", "text", reply, n, "isError", rc != 0);
	if (since(s, "2025-06-18")) {
		json_t *obj = json_loadb(reply, n, 0, NULL);
		if (obj)
			json_object_set_new(result, "structuredContent", obj);
	}
	return rpc_result(id, result);
}

/* A finished wait's response line (front_line_fn). */
static char *wait_line(void *arg, json_t *id, int rc, const char *reply)
{
	json_t *r = tool_result(arg, id, rc, reply);
	char *out = json_dumps(r, JSON_COMPACT);
	size_t n;

	json_decref(r);
	if (!out)
		return NULL;
	n = strlen(out);
	out = orch_xrealloc(out, n + 2);
	out[n] = '\n';
	out[n + 1] = '\0';
	return out;
}

static json_t *tools_call(mcp_server *s, json_t *id, json_t *params)
{
	const char *name = json_string_value(json_object_get(params, "name"));
	json_t *args = json_object_get(params, "arguments"), *empty = NULL, *result;
	const orch_method *m;
	char *reply = NULL;
	int rc;

	if (!name)
		return rpc_error(id, RPC_INVALID_PARAMS, "tools/call needs params.name (a tool of tools/list)");
	if (!(m = find_tool(name)))
		return rpc_error(id, RPC_INVALID_PARAMS, "Unknown tool: %s (tools/list lists them)", name);
	if (!args || json_is_null(args))
		args = empty = json_object();
	if ((m->flags & ORCH_M_BLOCKING) && json_is_object(args)) {
		front_wait_start(&s->f, id, args);
		json_decref(empty);
		return NULL; /* the response comes when the wait is done */
	}
	/* Not an object: orch_call says invalid_params, as a tool error the model can read. */
	rc = orch_call(&s->f.ctx, m->name, args, 0, &reply);
	json_decref(empty);
	orch_error_clear();
	front_after_call(&s->f, m->name, rc, reply);
	result = tool_result(s, id, rc, reply);
	free(reply);
	return result;
}

/* The reply to one message (a request), or NULL (a notification, or a response of the client's). */
static json_t *handle_message(mcp_server *s, json_t *msg)
{
	if (!json_is_object(msg))
		return rpc_error(NULL, RPC_INVALID_REQUEST, "Invalid Request: a message is a JSON object");
	json_t *id = json_object_get(msg, "id"), *method = json_object_get(msg, "method");
	json_t *params = json_object_get(msg, "params"), *jsonrpc = json_object_get(msg, "jsonrpc");

	if (!method && (json_object_get(msg, "result") || json_object_get(msg, "error")))
		return NULL; /* a response: this server sends no requests, so there is nothing to match */
	if (id && !json_is_string(id) && !json_is_number(id))
		return rpc_error(NULL, RPC_INVALID_REQUEST, "Invalid Request: id must be a string or a number");
	if (!json_is_string(method) || (jsonrpc && strcmp(json_string_value(jsonrpc) ? json_string_value(jsonrpc) : "", "2.0") != 0))
		return id ? rpc_error(id, RPC_INVALID_REQUEST, "Invalid Request: needs \"jsonrpc\": \"2.0\" and a "
				      "method") : NULL;
	if (!id) {
		/* notifications/cancelled ends a running wait; no notification is answered. */
		if (strcmp(json_string_value(method), "notifications/cancelled") == 0 && json_is_object(params) &&
		    json_object_get(params, "requestId"))
			front_wait_cancel(&s->f, json_object_get(params, "requestId"));
		return NULL;
	}
	if (params && !json_is_object(params) && !json_is_null(params))
		return rpc_error(id, RPC_INVALID_PARAMS, "params must be an object");

	const char *name = json_string_value(method);
	if (strcmp(name, "initialize") == 0)
		return initialize(s, id, params);
	if (strcmp(name, "ping") == 0)
		return rpc_result(id, json_object());
	if (strcmp(name, "tools/list") == 0)
		return tools_list(s, id); /* one page: no nextCursor */
	if (strcmp(name, "tools/call") == 0)
		return tools_call(s, id, params);
	return rpc_error(id, RPC_METHOD_NOT_FOUND, "Method not found: %s", name);
}

/* The reply to one line: a message, a batch (array) of them, or not JSON at all. */
static json_t *handle_line(mcp_server *s, const char *text, size_t len)
{
	json_error_t err;
	json_t *msg = json_loadb(text, len, JSON_DECODE_ANY | JSON_REJECT_DUPLICATES, &err), *out;

	if (!msg)
		return rpc_error(NULL, RPC_PARSE_ERROR, "Parse error: %s (column %d)", err.text, err.column);
	if (json_is_array(msg)) {
		size_t i;
		json_t *item;
		out = json_array();
		json_array_foreach(msg, i, item) {
			json_t *r = handle_message(s, item);
			if (r)
				json_array_append_new(out, r);
		}
		if (json_array_size(msg) == 0) {
			json_decref(out);
			out = rpc_error(NULL, RPC_INVALID_REQUEST, "Invalid Request: empty batch");
		} else if (json_array_size(out) == 0) {
			json_decref(out);
			out = NULL; /* only notifications */
		}
	} else {
		out = handle_message(s, msg);
	}
	json_decref(msg);
	return out;
}

static bool blank(const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (!strchr(" \t\r\n", s[i]))
			return false;
	return true;
}

int cli_mcp(const char *repo, const char *state, const char *host, int64_t session)
{
	mcp_server s = {.version = versions[0]};
	line_reader r;
	const char *text;
	size_t len;
	int status = 0;

	if (front_open(&s.f, repo, state, host, session) != 0)
		return 1;
	s.f.line = wait_line;
	s.f.line_arg = &s;
	line_reader_init(&r, STDIN_FILENO, ORCH_REQUEST_MAX);
	r.stop = &front_signalled;
	line_status ls;
	while (front_next_line(&r, &text, &len, &ls, &status)) {
		json_t *reply;

		if (ls == LINE_TOO_LONG)
			reply = rpc_error(NULL, RPC_INVALID_REQUEST, "Invalid Request: message longer than %d bytes "
					  "(the request limit); it was skipped", ORCH_REQUEST_MAX);
		else if (blank(text, len))
			continue;
		else
			reply = handle_line(&s, text, len);
		if (!reply)
			continue;
		char *out = json_dumps(reply, JSON_COMPACT);
		json_decref(reply);
		if (!out) {
			fprintf(stderr, "orchfs: cannot encode a reply\n");
			status = 1;
			break;
		}
		size_t n = strlen(out);
		out = orch_xrealloc(out, n + 2);
		out[n++] = '\n';
		int w = front_write(&s.f, out, n);
		free(out);
		if (w != 0)
			break;
	}
	line_reader_free(&r);
	return front_close(&s.f, status);
}
