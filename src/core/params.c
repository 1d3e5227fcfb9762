/*
 * Request validation against a method's parameter table, typed accessors,
 * and the usage text a ctl file shows when read without a write.
 */
#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "orchfs/core.h"

static const char *type_name(orch_ptype t)
{
	switch (t) {
	case ORCH_P_ID: return "id (positive integer)";
	case ORCH_P_INT: return "integer";
	case ORCH_P_STR: return "string";
	case ORCH_P_BOOL: return "boolean";
	case ORCH_P_JSON: return "any JSON value";
	case ORCH_P_STRS: return "array of strings";
	case ORCH_P_PATHS: return "array of repository-relative paths";
	case ORCH_P_PATH: return "repository-relative path";
	case ORCH_P_OBJS: return "array of objects";
	case ORCH_P_OWNER: return "string or session id";
	}
	return "?";
}

static const char *json_kind(const json_t *v)
{
	switch (json_typeof(v)) {
	case JSON_OBJECT: return "an object";
	case JSON_ARRAY: return "an array";
	case JSON_STRING: return "a string";
	case JSON_INTEGER: return "an integer";
	case JSON_REAL: return "a fractional number";
	case JSON_TRUE:
	case JSON_FALSE: return "a boolean";
	case JSON_NULL: return "null";
	}
	return "?";
}

static const orch_param *param_find(const orch_param *ps, const char *key)
{
	for (; ps && ps->name; ps++)
		if (strcmp(ps->name, key) == 0)
			return ps;
	return NULL;
}

static json_t *accepted_keys(const orch_param *ps, bool with_call_id)
{
	json_t *a = json_array();

	for (; ps && ps->name; ps++)
		json_array_append_new(a, json_string(ps->name));
	if (with_call_id)
		json_array_append_new(a, json_string("call_id"));
	return a;
}

/* Unknown keys, at the top level and inside ORCH_P_OBJS items. */
static int check_keys(const orch_param *ps, json_t *obj, const char *where, bool top)
{
	const char *key;
	json_t *v;

	json_object_foreach(obj, key, v) {
		const orch_param *p = param_find(ps, key);
		if (!p && !(top && strcmp(key, "call_id") == 0)) {
			json_t *acc = accepted_keys(ps, top);
			char *list = json_dumps(acc, JSON_COMPACT);
			orch_error_set(ORCH_EINVALID_PARAMS, "unknown key \"%s\" in %s; accepted keys: %s",
				       key, where, list);
			free(list);
			orch_error_detail("accepted", acc);
			return ORCH_EINVALID_PARAMS;
		}
		if (p && p->type == ORCH_P_OBJS && json_is_array(v)) {
			size_t i;
			json_t *item;
			json_array_foreach(v, i, item) {
				char sub[256];
				if (!json_is_object(item))
					continue;
				snprintf(sub, sizeof(sub), "%s[%zu]", key, i);
				int rc = check_keys(p->items, item, sub, false);
				if (rc)
					return rc;
			}
		}
	}
	return 0;
}

/*
 * SPEC limits: strings 64 KiB, arrays 10,000 items, depth 64.  `name` is
 * what a message names: "request" for the whole, then the top-level key
 * the offending value is under.
 */
static int check_limits(const char *name, json_t *v, int depth)
{
	if (depth > ORCH_DEPTH_MAX)
		return orch_error_set(ORCH_EINVALID_PARAMS, "%s nests deeper than %d levels", name, ORCH_DEPTH_MAX);
	if (json_is_string(v) && json_string_length(v) > ORCH_STRING_MAX)
		return orch_error_set(ORCH_EINVALID_PARAMS, "%s is longer than %d bytes", name, ORCH_STRING_MAX);
	if (json_is_array(v)) {
		size_t i;
		json_t *item;
		if (json_array_size(v) > ORCH_ARRAY_MAX)
			return orch_error_set(ORCH_EINVALID_PARAMS, "%s has more than %d items", name, ORCH_ARRAY_MAX);
		json_array_foreach(v, i, item) {
			int rc = check_limits(name, item, depth + 1);
			if (rc)
				return rc;
		}
	}
	if (json_is_object(v)) {
		const char *k;
		json_t *item;
		json_object_foreach(v, k, item) {
			if (strlen(k) > ORCH_STRING_MAX)
				return orch_error_set(ORCH_EINVALID_PARAMS, "a key in %s is longer than %d bytes",
						      name, ORCH_STRING_MAX);
			int rc = check_limits(depth == 1 ? k : name, item, depth + 1);
			if (rc)
				return rc;
		}
	}
	return 0;
}

static bool blank(const char *s)
{
	for (; *s; s++)
		if (!isspace((unsigned char)*s))
			return false;
	return true;
}

static int type_error(const char *name, const orch_param *p, const json_t *v)
{
	return orch_error_set(ORCH_EINVALID_PARAMS, "%s must be %s%s, got %s", name,
			      p->type == ORCH_P_ID ? "a positive integer id" : type_name(p->type),
			      "", json_kind(v));
}

static int check_params(const orch_param *ps, json_t *obj, const char *prefix);

/* Check one present value against its declared type; paths are normalised in place. */
static int check_value(const orch_param *p, json_t *obj, const char *name, json_t *v)
{
	size_t i;
	json_t *item;
	int rc;

	switch (p->type) {
	case ORCH_P_ID:
		if (!json_is_integer(v) || json_integer_value(v) <= 0) {
			if (json_is_number(v))
				return orch_error_set(ORCH_EINVALID_PARAMS,
						      "%s must be a positive integer id, got %g", name,
						      json_number_value(v));
			return type_error(name, p, v);
		}
		return 0;
	case ORCH_P_INT:
		return json_is_integer(v) ? 0 : type_error(name, p, v);
	case ORCH_P_BOOL:
		return json_is_boolean(v) ? 0 : type_error(name, p, v);
	case ORCH_P_JSON:
		return 0;
	case ORCH_P_STR:
		if (!json_is_string(v))
			return type_error(name, p, v);
		if ((p->flags & ORCH_P_REQUIRED) && blank(json_string_value(v)))
			return orch_error_set(ORCH_EINVALID_PARAMS, "%s must not be blank", name);
		return 0;
	case ORCH_P_PATH: {
		char *norm;
		if (!json_is_string(v))
			return type_error(name, p, v);
		/* "   " is not a file named by spaces but a client's mistake: as for required strings. */
		if (blank(json_string_value(v)))
			return orch_error_set(ORCH_EINVALID_PARAMS, "%s must not be blank", name);
		rc = orch_path_normalise(name, json_string_value(v), &norm);
		if (rc)
			return rc;
		json_object_set_new(obj, p->name, json_string(norm));
		free(norm);
		return 0;
	}
	case ORCH_P_STRS:
	case ORCH_P_PATHS:
		if (!json_is_array(v))
			return type_error(name, p, v);
		json_array_foreach(v, i, item) {
			char *norm;
			if (!json_is_string(item))
				return orch_error_set(ORCH_EINVALID_PARAMS, "%s[%zu] must be a string, got %s",
						      name, i, json_kind(item));
			if (p->type == ORCH_P_STRS)
				continue;
			rc = orch_path_normalise(name, json_string_value(item), &norm);
			if (rc)
				return rc;
			json_array_set_new(v, i, json_string(norm));
			free(norm);
		}
		return 0;
	case ORCH_P_OWNER:
		if (json_is_integer(v) && json_integer_value(v) > 0) {
			json_object_set_new(obj, p->name, json_sprintf("%lld", (long long)json_integer_value(v)));
			return 0;
		}
		if (!json_is_string(v))
			return type_error(name, p, v);
		if ((p->flags & ORCH_P_REQUIRED) && blank(json_string_value(v)))
			return orch_error_set(ORCH_EINVALID_PARAMS, "%s must not be blank", name);
		return 0;
	case ORCH_P_OBJS:
		if (!json_is_array(v))
			return type_error(name, p, v);
		json_array_foreach(v, i, item) {
			char sub[256];
			snprintf(sub, sizeof(sub), "%s[%zu].", name, i);
			if (!json_is_object(item))
				return orch_error_set(ORCH_EINVALID_PARAMS, "%s[%zu] must be an object, got %s",
						      name, i, json_kind(item));
			rc = check_params(p->items, item, sub);
			if (rc)
				return rc;
		}
		return 0;
	}
	return 0;
}

static int check_params(const orch_param *ps, json_t *obj, const char *prefix)
{
	/* JSON null means "not given". */
	const char *key;
	json_t *v;
	void *tmp;

	json_object_foreach_safe(obj, tmp, key, v) {
		if (json_is_null(v))
			json_object_del(obj, key);
	}
	for (const orch_param *p = ps; p && p->name; p++) {
		char name[192];
		snprintf(name, sizeof(name), "%s%s", prefix, p->name);
		v = json_object_get(obj, p->name);
		if (!v) {
			if (p->flags & ORCH_P_REQUIRED)
				return orch_error_set(ORCH_EINVALID_PARAMS, "%s is required", name);
			continue;
		}
		int rc = check_value(p, obj, name, v);
		if (rc)
			return rc;
	}
	return 0;
}

/*
 * Validate `params` (an object without call_id) for method `m`: unknown keys
 * first (nested objects too), then limits, then types and required keys.
 */
int orch_params_validate(const orch_method *m, json_t *params)
{
	char where[128];
	int rc;

	snprintf(where, sizeof(where), "%s params", m->name);
	rc = check_keys(m->params, params, where, true);
	if (!rc)
		rc = check_limits("request", params, 1);
	if (!rc)
		rc = check_params(m->params, params, "");
	return rc;
}

/* ---- accessors ---- */

bool orch_param_has(json_t *params, const char *name)
{
	return json_object_get(params, name) != NULL;
}

int64_t orch_param_int(json_t *params, const char *name, int64_t dflt)
{
	json_t *v = json_object_get(params, name);

	return json_is_integer(v) ? json_integer_value(v) : dflt;
}

const char *orch_param_str(json_t *params, const char *name, const char *dflt)
{
	json_t *v = json_object_get(params, name);

	return json_is_string(v) ? json_string_value(v) : dflt;
}

bool orch_param_bool(json_t *params, const char *name, bool dflt)
{
	json_t *v = json_object_get(params, name);

	return json_is_boolean(v) ? json_is_true(v) : dflt;
}

json_t *orch_param_json(json_t *params, const char *name)
{
	return json_object_get(params, name);
}

int orch_param_nonblank(json_t *params, const char *name, const char **out)
{
	const char *s = orch_param_str(params, name, NULL);

	*out = s;
	if (!s)
		return orch_error_set(ORCH_EINVALID_PARAMS, "%s is required", name);
	if (blank(s))
		return orch_error_set(ORCH_EINVALID_PARAMS, "%s must not be blank", name);
	return 0;
}

/* ---- usage ---- */

static void append(char **buf, size_t *len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void append(char **buf, size_t *len, const char *fmt, ...)
{
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(NULL, 0, fmt, ap);
	va_end(ap);
	*buf = orch_xrealloc(*buf, *len + (size_t)n + 1);
	va_start(ap, fmt);
	vsnprintf(*buf + *len, (size_t)n + 1, fmt, ap);
	va_end(ap);
	*len += (size_t)n;
}

static bool implied(const char *name)
{
	return strcmp(name, "session_id") == 0 || strcmp(name, "requester_session_id") == 0 ||
	       strcmp(name, "owner_session") == 0;
}

static void usage_params(char **buf, size_t *len, const orch_param *ps, int indent, bool session_scoped)
{
	for (const orch_param *p = ps; p && p->name; p++) {
		const char *req = (p->flags & ORCH_P_REQUIRED) ? "required" : "optional";
		if (session_scoped && indent == 2 && implied(p->name))
			req = "implied by this directory";
		append(buf, len, "%*s%-26s %s, %s. %s\n", indent, "", p->name, type_name(p->type), req,
		       p->doc ? p->doc : "");
		if (p->type == ORCH_P_OBJS)
			usage_params(buf, len, p->items, indent + 4, session_scoped);
	}
}

char *orch_method_usage(const orch_method *m, bool session_scoped)
{
	char *buf = NULL;
	size_t len = 0;

	append(&buf, &len, "%s — %s\n\n", m->name, m->summary);
	if (!session_scoped)
		append(&buf, &len, "(This is the usage: nothing was written on this descriptor. To read a reply in a "
		       "separate open, put a call_id in the request and read replies/<call_id>.json.)\n\n");
	append(&buf, &len, "Input: one JSON object with these keys.\n");
	if (!m->params || !m->params[0].name)
		append(&buf, &len, "  (none)\n");
	usage_params(&buf, &len, m->params, 2, session_scoped);
	append(&buf, &len, "  %-26s string, optional. 1-64 chars of A-Za-z0-9._:-; makes the call "
	       "idempotent and keeps the reply at replies/<call_id>.json.\n", "call_id");
	append(&buf, &len, "\nOutput: %s\n", m->output);
	if (session_scoped) {
		/* Under sessions/<id>/ctl/ the session keys go without saying. */
		json_t *ex = json_loads(m->example, 0, NULL);
		char *text;
		json_object_del(ex, "session_id");
		json_object_del(ex, "requester_session_id");
		json_object_del(ex, "owner_session");
		text = ex ? json_dumps(ex, JSON_COMPACT) : strdup(m->example);
		append(&buf, &len, "\nExample (from this directory):\n  exec 3<>%s; echo '%s' >&3; cat <&3\n",
		       m->name, text);
		free(text);
		json_decref(ex);
	} else {
		append(&buf, &len, "\nExample:\n  exec 3<>ctl/%s; echo '%s' >&3; cat <&3\n", m->name, m->example);
	}
	append(&buf, &len, "\nErrors (reply {\"error\": {code, message, details}}, and the write fails "
	       "with the errno):\n  %s\n  invalid_json (EINVAL), invalid_params (EINVAL: unknown key, "
	       "wrong type, missing key), too_large (EFBIG: request over 1 MiB).\n",
	       m->errors ? m->errors : "");
	append(&buf, &len, "  ENOENT from a write is a method's not_found, not a missing file: read the reply.\n");
	if (session_scoped)
		append(&buf, &len, "\nIn this directory: reading this file without writing shows the last reply this "
		       "session got here. A session opened with {\"ctl_errors\": \"reply\"} gets no errno from a "
		       "complete request: the error is only in the reply. Writes here count as heartbeats, reads "
		       "do not: while you think, touch ../heartbeat at least every heartbeat_timeout_seconds/2 "
		       "(default window 120 s), or another session may take yours over.\n");
	return buf;
}

/* ---- JSON Schema (the MCP tools' inputSchema) ---- */

static json_t *object_schema(const orch_param *ps);

/* The schema of one parameter's value: its type, limits, and its doc line as description. */
static json_t *param_schema(const orch_param *p)
{
	json_t *s;

	switch (p->type) {
	case ORCH_P_ID:
		s = json_pack("{s:s, s:i}", "type", "integer", "minimum", 1);
		break;
	case ORCH_P_INT:
		s = json_pack("{s:s}", "type", "integer");
		break;
	case ORCH_P_STR:
	case ORCH_P_PATH:
		s = json_pack("{s:s}", "type", "string");
		if (p->flags & ORCH_P_REQUIRED)
			json_object_set_new(s, "minLength", json_integer(1));
		break;
	case ORCH_P_BOOL:
		s = json_pack("{s:s}", "type", "boolean");
		break;
	case ORCH_P_OWNER:
		s = json_pack("{s:[{s:s}, {s:s, s:i}]}", "anyOf", "type", "string", "type", "integer", "minimum", 1);
		if (p->flags & ORCH_P_REQUIRED)
			json_object_set_new(json_array_get(json_object_get(s, "anyOf"), 0), "minLength",
					    json_integer(1));
		break;
	case ORCH_P_STRS:
	case ORCH_P_PATHS:
		s = json_pack("{s:s, s:{s:s}, s:i}", "type", "array", "items", "type", "string", "maxItems",
			      ORCH_ARRAY_MAX);
		break;
	case ORCH_P_OBJS:
		s = json_pack("{s:s, s:o, s:i}", "type", "array", "items", object_schema(p->items), "maxItems",
			      ORCH_ARRAY_MAX);
		break;
	case ORCH_P_JSON:
	default:
		s = json_object(); /* any JSON value */
		break;
	}
	/* The type's name as the usage text says it (it means more than the JSON type), then the doc line. */
	json_object_set_new(s, "description", p->doc && p->doc[0] ? json_sprintf("%s. %s", type_name(p->type), p->doc)
							      : json_string(type_name(p->type)));
	return s;
}

/* An object of exactly these keys (unknown keys are invalid_params, as everywhere). */
static json_t *object_schema(const orch_param *ps)
{
	json_t *props = json_object(), *req = json_array();

	for (const orch_param *p = ps; p && p->name; p++) {
		json_object_set_new(props, p->name, param_schema(p));
		if (p->flags & ORCH_P_REQUIRED)
			json_array_append_new(req, json_string(p->name));
	}
	json_t *s = json_pack("{s:s, s:o}", "type", "object", "properties", props);
	if (json_array_size(req))
		json_object_set(s, "required", req);
	json_decref(req);
	json_object_set_new(s, "additionalProperties", json_false());
	return s;
}

json_t *orch_method_schema(const orch_method *m)
{
	json_t *s = object_schema(m->params);
	json_t *ex = m->example ? json_loads(m->example, 0, NULL) : NULL;

	json_object_set_new(json_object_get(s, "properties"), "call_id",
			    json_pack("{s:s, s:s, s:s}", "type", "string", "pattern", "^[A-Za-z0-9._:-]{1,64}$",
				      "description", "Optional. Makes the call idempotent: a repeat with the same "
				      "call_id returns the stored reply (kept at replies/<call_id>.json) without "
				      "running again."));
	if (ex)
		json_object_set_new(s, "examples", json_pack("[o]", ex));
	return s;
}

int orch_param_ttl_ms(json_t *params, int64_t *out)
{
	const int64_t max_s = 366LL * 24 * 3600;
	int64_t ttl = orch_param_int(params, "ttl_seconds", 0);

	if (ttl < 0 || ttl > max_s)
		return orch_error_set(ORCH_EINVALID_PARAMS, "ttl_seconds must be between 1 and %lld (0 or absent "
				      "means %d), got %lld", (long long)max_s, ORCH_LEASE_DEFAULT_S, (long long)ttl);
	*out = (ttl ? ttl : ORCH_LEASE_DEFAULT_S) * 1000;
	return 0;
}
