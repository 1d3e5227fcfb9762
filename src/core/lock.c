/*
 * Path leases: lock.acquire, lock.heartbeat, lock.release.
 *
 * A lock covers a file or a prefix (a directory and everything below it)
 * of the repository for a time.  Expiry compares integer milliseconds with
 * the call's time: a lock whose lease_until is not after now is expired
 * whatever its stored state says, never conflicts, and cannot be revived.
 * Acquisition checks and inserts inside the call's BEGIN IMMEDIATE
 * transaction, so two racing acquisitions are serialised by SQLite and
 * can never both hold overlapping scopes.
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "orchfs/core.h"
#include "groups.h"


#define LOCK_SELECT                                                                                \
	"SELECT id, scope_type, scope_path, owner_session, lease_until, heartbeat_at, "              \
	"CASE WHEN state = 'active' AND lease_until <= ?2 THEN 'expired' ELSE state END AS state, "  \
	"released_at, released_by, release_reason, "                                                \
	"CASE WHEN release_forced = 1 THEN 'true' END AS release_forced_json FROM locks WHERE id = ?1"

/* The lock as clients see it; an active lock past its lease shows as expired. */
int orch_lock_json(orch_ctx *ctx, int64_t id, json_t **out)
{
	return orch_sql_row(ctx, out, "lock %lld not found", id, LOCK_SELECT, "ii", id, ctx->now);
}

/* Whether prefix `p` covers `path`: "." covers all, else equal or below "p/". */
static bool covers(const char *p, const char *path)
{
	size_t n = strlen(p);

	return strcmp(p, ".") == 0 || (strncmp(p, path, n) == 0 && (path[n] == '\0' || path[n] == '/'));
}

/*
 * The reference's conflict rule, component-wise on normalised paths:
 * file/file the same path; file/prefix when the prefix covers the file;
 * prefix/prefix when either covers the other.
 */
bool orch_lock_overlaps(const char *type_a, const char *path_a, const char *type_b, const char *path_b)
{
	bool file_a = strcmp(type_a, "file") == 0, file_b = strcmp(type_b, "file") == 0;

	if (file_a && file_b)
		return strcmp(path_a, path_b) == 0;
	if (file_a)
		return covers(path_b, path_a);
	if (file_b)
		return covers(path_a, path_b);
	return covers(path_a, path_b) || covers(path_b, path_a);
}

/* scope_type, trimmed and lower-cased as the reference does: "file" or "prefix". */
static int scope_type(json_t *p, char *out, size_t size)
{
	const char *in = orch_param_str(p, "scope_type", "");
	size_t n = 0;

	while (isspace((unsigned char)*in))
		in++;
	for (; *in && n + 1 < size; in++)
		out[n++] = (char)tolower((unsigned char)*in);
	while (n > 0 && isspace((unsigned char)out[n - 1]))
		n--;
	out[n] = '\0';
	if (strcmp(out, "file") && strcmp(out, "prefix"))
		return orch_error_set(ORCH_EINVALID_PARAMS, "scope_type must be one of: prefix, file; got \"%s\"",
				      orch_param_str(p, "scope_type", ""));
	return 0;
}

/* ORCH_ECONFLICT naming lock `id` (and its holder, in words) in the message and in details.lock. */
static int conflict(orch_ctx *ctx, const char *type, const char *path, int64_t id)
{
	json_t *lock = NULL;
	int rc = orch_lock_json(ctx, id, &lock);

	if (rc)
		return rc;
	char *holder = orch_owner_words(ctx, json_string_value(json_object_get(lock, "owner_session")));
	orch_error_set(ORCH_ECONFLICT, "%s:%s conflicts with lock %lld (%s:%s) held by %s until %s", type, path,
		       (long long)id, json_string_value(json_object_get(lock, "scope_type")),
		       json_string_value(json_object_get(lock, "scope_path")), holder,
		       json_string_value(json_object_get(lock, "lease_until")));
	free(holder);
	orch_error_detail("lock", lock);
	return ORCH_ECONFLICT;
}

/* The lowest id among *hit and the active lock of another owner that `sql` finds (0: none). */
static int lowest(orch_ctx *ctx, const char *sql, const char *owner, const char *a, const char *b, int64_t *hit)
{
	int64_t id = 0;
	bool found;
	int rc = orch_sql_int(ctx, &id, &found, sql, "isss", ctx->now, owner, a, b);

	if (!rc && found && (!*hit || id < *hit))
		*hit = id;
	return rc;
}

/*
 * The lowest-id active lock of another owner that overlaps (type, path),
 * found through the index of active paths rather than by testing every
 * lock: only the same path, its ancestors (prefix locks) and, for a
 * prefix, the paths below it can overlap (orch_lock_overlaps).
 */
static int first_overlap(orch_ctx *ctx, const char *type, const char *path, const char *owner, int64_t *hit)
{
	/* The planner would rather range over (state, lease_until), i.e. every live lock: name the index. */
#define LIVE                                                                                       \
	"SELECT min(id) FROM locks INDEXED BY locks_active_by_path WHERE state = 'active' AND "       \
	"lease_until > ?1 AND owner_session <> ?2 AND "
	static const char same[] = LIVE "scope_path = ?3 AND ?4 IS NOT NULL HAVING min(id) IS NOT NULL";
	static const char above[] = LIVE "scope_path = ?3 AND scope_type = 'prefix' AND ?4 IS NOT NULL "
				    "HAVING min(id) IS NOT NULL";
	static const char below[] = LIVE "scope_path > ?3 AND scope_path < ?4 HAVING min(id) IS NOT NULL";
	static const char any[] = LIVE "?3 IS NOT NULL AND ?4 IS NOT NULL HAVING min(id) IS NOT NULL";
#undef LIVE
	bool prefix = strcmp(type, "prefix") == 0;
	char *anc = strdup(path), *lo = NULL, *hi = NULL;
	int rc;

	*hit = 0;
	if (prefix && strcmp(path, ".") == 0) {
		rc = lowest(ctx, any, owner, "", "", hit);
		goto done;
	}
	if ((rc = lowest(ctx, same, owner, path, "", hit)) != 0 || (rc = lowest(ctx, above, owner, ".", "", hit)) != 0)
		goto done;
	for (char *slash = strrchr(anc, '/'); slash; slash = strrchr(anc, '/')) {
		*slash = '\0';
		if ((rc = lowest(ctx, above, owner, anc, "", hit)) != 0)
			goto done;
	}
	/* Below "p": from "p/" up to "p0" ('0' follows '/'). */
	if (prefix && asprintf(&lo, "%s/", path) >= 0 && asprintf(&hi, "%s0", path) >= 0)
		rc = lowest(ctx, below, owner, lo, hi, hit);
done:
	free(anc);
	free(lo);
	free(hi);
	return rc;
}

static int lock_acquire(orch_ctx *ctx, json_t *p, json_t **result)
{
	const char *path = orch_param_str(p, "scope_path", ""), *owner = orch_param_str(p, "owner_session", "");
	char type[16];
	int64_t ttl = 0, hit = 0;
	int rc;

	if ((rc = scope_type(p, type, sizeof(type))) != 0 || (rc = orch_param_ttl_ms(p, &ttl)) != 0)
		return rc;
	if (strcmp(type, "file") == 0 && strcmp(path, ".") == 0)
		return orch_error_set(ORCH_EINVALID_PARAMS, "a file lock needs a file path, got \".\" (the "
				      "repository root); use scope_type prefix");
	/* Expired leases are marked as such: part of this call, and harmless if it rolls back. */
	rc = orch_sql_exec(ctx, "UPDATE locks SET state = 'expired' WHERE state = 'active' AND lease_until <= ?",
			   "i", ctx->now);
	if (rc || (rc = first_overlap(ctx, type, path, owner, &hit)) != 0)
		return rc;
	if (hit)
		return conflict(ctx, type, path, hit);
	rc = orch_sql_exec(ctx, "INSERT INTO locks (scope_type, scope_path, owner_session, lease_until, heartbeat_at, "
			   "state) VALUES (?, ?, ?, ?, ?, 'active')", "sssii", type, path, owner, ctx->now + ttl,
			   ctx->now);
	return rc ? rc : orch_lock_json(ctx, orch_last_id(ctx), result);
}

/* not_found for a released lock, saying who released it, when and why. */
static int released(orch_ctx *ctx, json_t *lock)
{
	const char *by = json_string_value(json_object_get(lock, "released_by"));
	const char *why = json_string_value(json_object_get(lock, "release_reason"));
	const char *at = json_string_value(json_object_get(lock, "released_at"));
	char *who = by ? orch_owner_words(ctx, by) : NULL;

	orch_error_set(ORCH_ENOTFOUND, "lock %lld was released%s%s%s%s%s%s%s; it is no longer active",
		       (long long)json_integer_value(json_object_get(lock, "id")),
		       json_is_true(json_object_get(lock, "release_forced")) ? " by force" : "",
		       who ? " by " : "", who ? who : "", at ? " at " : "", at ? at : "", why ? ": " : "",
		       why ? why : "");
	free(who);
	return ORCH_ENOTFOUND;
}

/*
 * May `caller` free another owner's lock with force?  Only when the owner
 * is a session that is not live (orch_session_live: closed, taken over, or
 * silent past its own heartbeat window).  forbidden otherwise.
 */
static int may_force(orch_ctx *ctx, json_t *lock)
{
	const char *owner = json_string_value(json_object_get(lock, "owner_session"));
	int64_t id = json_integer_value(json_object_get(lock, "id")), sid, age;
	char *end;
	bool live = true, open;
	int rc;

	sid = strtoll(owner, &end, 10);
	if (!(*owner >= '1' && *owner <= '9' && *end == '\0'))
		return orch_error_set(ORCH_EFORBIDDEN, "lock %lld belongs to owner \"%s\", which is no session whose "
				      "liveness is known; it ends with its lease at %s", (long long)id, owner,
				      json_string_value(json_object_get(lock, "lease_until")));
	rc = orch_session_live(ctx, sid, 0, &live, &open, &age);
	if (rc == ORCH_ENOTFOUND) {
		orch_error_clear();
		return 0; /* no such session: nobody can be harmed */
	}
	if (rc)
		return rc;
	if (live) {
		char *who = orch_owner_words(ctx, owner);
		orch_error_set(ORCH_EFORBIDDEN, "lock %lld belongs to %s, which is live (last heard from %llds ago, "
			       "within its heartbeat window); only a lock whose owner is closed, taken over or "
			       "silent past its window can be released with force", (long long)id, who,
			       (long long)(age / 1000));
		free(who);
		return ORCH_EFORBIDDEN;
	}
	return 0;
}

/*
 * The lock a heartbeat or release names, checked in this order:
 * owner_session given (invalid_params: without it anyone could renew or
 * free anyone's lock), exists and was not released (not_found), belongs to
 * owner_session (forbidden; a release with force and a reason may free
 * the lock of an owner that is not live, *forced is then set), lease not
 * over (invalid_state for a heartbeat, not_found for a release: only
 * active locks can be released).
 */
static int live_lock(orch_ctx *ctx, json_t *p, bool release, json_t **lock, bool *forced)
{
	int64_t id = orch_param_int(p, "lock_id", 0);
	const char *owner = orch_param_str(p, "owner_session", NULL), *state, *reason = NULL;
	bool force = release && orch_param_bool(p, "force", false);
	int rc;

	*lock = NULL;
	*forced = false;
	if (!owner)
		return orch_error_set(ORCH_EINVALID_PARAMS, "%s needs owner_session: give owner_session (the "
				      "lock's owner), or call through sessions/<id>/ctl/",
				      release ? "lock.release" : "lock.heartbeat");
	if (force && (rc = orch_param_nonblank(p, "reason", &reason)) != 0)
		return orch_error_set(ORCH_EINVALID_PARAMS, "force needs a reason (a non-blank string): it is "
				      "recorded on the lock");
	if ((rc = orch_lock_json(ctx, id, lock)) != 0)
		return rc;
	state = json_string_value(json_object_get(*lock, "state"));
	if (strcmp(state, "released") == 0)
		return released(ctx, *lock);
	const char *holder = json_string_value(json_object_get(*lock, "owner_session"));
	if (strcmp(owner, holder) != 0) {
		if (force) {
			if ((rc = may_force(ctx, *lock)) != 0)
				return rc;
			*forced = true;
		} else {
			char *who = orch_owner_words(ctx, holder);
			orch_error_set(ORCH_EFORBIDDEN, "lock %lld belongs to %s, not \"%s\"%s", (long long)id, who,
				       owner, release ? "; a lock whose owner is no longer live can be released "
				       "with {\"force\": true, \"reason\": \"...\"}" : "");
			free(who);
			return ORCH_EFORBIDDEN;
		}
	}
	if (strcmp(state, "active") != 0) {
		if (release)
			return orch_error_set(ORCH_ENOTFOUND, "lock %lld is not active: its lease ended at %s",
					      (long long)id, json_string_value(json_object_get(*lock, "lease_until")));
		orch_error_set(ORCH_EINVALID_STATE, "lock %lld expired at %s and cannot be renewed; acquire a new one",
			       (long long)id, json_string_value(json_object_get(*lock, "lease_until")));
		orch_error_detail("state", json_string(state));
		return ORCH_EINVALID_STATE;
	}
	return 0;
}

static int lock_heartbeat(orch_ctx *ctx, json_t *p, json_t **result)
{
	int64_t id = orch_param_int(p, "lock_id", 0), ttl = 0;
	json_t *lock = NULL;
	bool forced;
	int rc;

	if ((rc = orch_param_ttl_ms(p, &ttl)) == 0 && (rc = live_lock(ctx, p, false, &lock, &forced)) == 0)
		rc = orch_sql_exec(ctx, "UPDATE locks SET heartbeat_at = ?, lease_until = ? WHERE id = ?", "iii",
				   ctx->now, ctx->now + ttl, id);
	json_decref(lock);
	return rc ? rc : orch_lock_json(ctx, id, result);
}

/* Release a lock: its owner's own, or (force) a lock whose owner is not live; who, why and when are kept. */
static int lock_release(orch_ctx *ctx, json_t *p, json_t **result)
{
	int64_t id = orch_param_int(p, "lock_id", 0);
	json_t *lock = NULL;
	bool forced;
	int rc;

	if ((rc = live_lock(ctx, p, true, &lock, &forced)) == 0)
		rc = orch_sql_exec(ctx, "UPDATE locks SET state = 'released', heartbeat_at = ?1, lease_until = ?1, "
				   "released_at = ?1, released_by = ?2, release_reason = ?3, release_forced = ?4 "
				   "WHERE id = ?5", "issIi", ctx->now, orch_param_str(p, "owner_session", NULL),
				   orch_param_str(p, "reason", NULL), (int64_t)forced, id);
	json_decref(lock);
	return rc ? rc : orch_lock_json(ctx, id, result);
}

static const orch_param acquire_params[] = {
	{"scope_type", ORCH_P_STR, ORCH_P_REQUIRED, "file | prefix (a directory and everything below it).", NULL},
	{"scope_path", ORCH_P_PATH, ORCH_P_REQUIRED, "Repository-relative path; \".\" as a prefix is the whole "
	 "repository.", NULL},
	{"owner_session", ORCH_P_OWNER, ORCH_P_REQUIRED, "Owner: a session id (\"1\" or 1; under "
	 "sessions/<id>/ctl/ it is implied) or free text. Locks of one owner never conflict with each other.",
	 NULL},
	{"ttl_seconds", ORCH_P_INT, 0, "Lease length in seconds (default 600; at most a year).", NULL},
	{NULL, 0, 0, NULL, NULL},
};
static const orch_param heartbeat_params[] = {
	{"lock_id", ORCH_P_ID, ORCH_P_REQUIRED, "The lock.", NULL},
	{"ttl_seconds", ORCH_P_INT, 0, "New lease from now, in seconds (default 600).", NULL},
	{"owner_session", ORCH_P_OWNER, 0, "The lock's owner; needed through ctl/ (implied under "
	 "sessions/<id>/ctl/).", NULL},
	{NULL, 0, 0, NULL, NULL},
};
static const orch_param release_params[] = {
	{"lock_id", ORCH_P_ID, ORCH_P_REQUIRED, "The lock.", NULL},
	{"owner_session", ORCH_P_OWNER, 0, "Who releases: the lock's owner, or with force the session freeing "
	 "it; needed through ctl/ (implied under sessions/<id>/ctl/).", NULL},
	{"force", ORCH_P_BOOL, 0, "true: free another owner's lock; allowed only when that owner is not live "
	 "(closed, taken over, or silent past its heartbeat window). Needs reason.", NULL},
	{"reason", ORCH_P_STR, 0, "Why (kept on the lock: released_by, release_reason, released_at, "
	 "release_forced).", NULL},
	{NULL, 0, 0, NULL, NULL},
};

const orch_method orch_lock_methods[] = {
	{"lock.acquire", lock_acquire, ORCH_M_WRITE, acquire_params,
	 "Lease a file or a prefix of the repository. It conflicts with another owner's unexpired lock on the "
	 "same file, on a prefix covering it, or (for a prefix) on anything below it; src/api does not cover "
	 "src/apix.",
	 "the lock {id, scope_type, scope_path, owner_session, lease_until, heartbeat_at, state: active}",
	 "{\"scope_type\": \"prefix\", \"scope_path\": \"src/api\", \"owner_session\": \"1\", \"ttl_seconds\": 300}",
	 "conflict (EBUSY: another owner's lock overlaps; details.lock is that lock), invalid_params (EINVAL: "
	 "scope_type, absolute or escaping path, ttl_seconds)."},
	{"lock.heartbeat", lock_heartbeat, ORCH_M_WRITE, heartbeat_params,
	 "Renew an active lock: lease_until = now + ttl_seconds. An expired lease cannot be renewed.",
	 "the lock", "{\"lock_id\": 1, \"owner_session\": \"1\", \"ttl_seconds\": 300}",
	 "invalid_params (EINVAL: no owner_session through ctl/), not_found (ENOENT: no such lock, or "
	 "released), invalid_state (EINVAL: the lease is over), forbidden (EPERM: owner_session is not the "
	 "owner)."},
	{"lock.release", lock_release, ORCH_M_WRITE, release_params,
	 "Release an active lock of yours; with force and a reason, the lock of an owner that is no longer "
	 "live (recorded on the lock).",
	 "the lock, state released, with released_by, released_at, release_reason?, release_forced?",
	 "{\"lock_id\": 1, \"owner_session\": \"1\"}",
	 "invalid_params (EINVAL: no owner_session through ctl/; force without reason), not_found (ENOENT: "
	 "no such lock, or not active: released or expired), forbidden (EPERM: owner_session is not the "
	 "owner, or force while the owner is live)."},
	{NULL, NULL, 0, NULL, NULL, NULL, NULL, NULL},
};
