/*
 * The tree: one table of node kinds, inode numbering, lookup, listing and
 * rendering of state files.  Adding a file to the tree means adding a kind
 * to fs.h and a row to `specs` here.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include "fs.h"

typedef struct {
	fs_kind kind;
	fs_kind parent;
	const char *name;       /* fixed name, or NULL for id-, name- or method-named nodes */
	const char *suffix;     /* id-named: appended to the id ("" or ".json") */
	fs_type type;
	orch_coll coll;         /* id-named: the ids it lists; fixed names: the ids it exists for (NONE: all) */
	int (*render)(orch_ctx *ctx, int64_t id, json_t **out);
	int (*text)(orch_ctx *ctx, int64_t id, char **buf);
	/* Bytes read as they are, with the time they last changed (its mtime). */
	int (*file)(orch_ctx *ctx, int64_t id, char **buf, size_t *len, int64_t *mtime);
	/* Nodes named from a fixed list by id (1-based; NULL past the last), existing as `coll` says. */
	const char *(*names)(int64_t id);
	int methods;            /* 1: one node per method; 2: per method that takes a session */
	const char *doc;        /* one line for the generated README.md */
	/*
	 * Files served from the page cache: the tables whose rows the file
	 * shows, space-separated; "table#" when the row's id is the node's
	 * id.  A committed change to one of them invalidates the file, so a
	 * table missing here is a stale read (ORCHFS_CACHE_CHECK finds it).
	 * NULL: not cached (rendered at every open: time-dependent content).
	 */
	const char *deps;
} node_spec;

static int readme_text(orch_ctx *ctx, int64_t id, char **buf);

static const node_spec specs[K_KIND_COUNT] = {
	[K_ROOT] = {K_ROOT, K_ROOT, "", NULL, T_DIR},
	[K_README] = {K_README, K_ROOT, "README.md", NULL, T_FILE, .text = readme_text, .doc = "this file", .deps = ""},
	[K_CTL_DIR] = {K_CTL_DIR, K_ROOT, "ctl", NULL, T_DIR},
	[K_CTL] = {K_CTL, K_CTL_DIR, NULL, NULL, T_CTL, .methods = 1, .doc = "one transaction file per method: write a JSON request, read the reply"},
	[K_REPLIES_DIR] = {K_REPLIES_DIR, K_ROOT, "replies", NULL, T_DIR},
	[K_REPLY] = {K_REPLY, K_REPLIES_DIR, NULL, ".json", T_FILE,
		     .coll = ORCH_COLL_REPLIES, .render = orch_reply_json, .doc = "the reply of each request that carried a call_id"},
	[K_SESSIONS_DIR] = {K_SESSIONS_DIR, K_ROOT, "sessions", NULL, T_DIR},
	[K_SESSION_DIR] = {K_SESSION_DIR, K_SESSIONS_DIR, NULL, "", T_DIR,
			   .coll = ORCH_COLL_SESSIONS},
	[K_SESSION_JSON] = {K_SESSION_JSON, K_SESSION_DIR, "session.json", NULL, T_FILE,
			    .render = orch_session_file_json,
			    .doc = "the session, with heartbeat_age_seconds, alive_held and stale (rendered at every open: it ages)"},
	[K_CONTEXT_JSON] = {K_CONTEXT_JSON, K_SESSION_DIR, "context.json", NULL, T_FILE,
			    .render = orch_session_context, .doc = "session.context: session, worktrees, current ref",
			    .deps = "sessions# worktrees current_refs"},
	[K_CURRENT_REF_JSON] = {K_CURRENT_REF_JSON, K_SESSION_DIR, "current_ref.json", NULL, T_FILE,
				.render = orch_current_ref_json, .doc = "the active current ref, or null (a pure read)",
				.deps = "current_refs"},
	[K_HEARTBEAT] = {K_HEARTBEAT, K_SESSION_DIR, "heartbeat", NULL, T_HEARTBEAT, .text = orch_heartbeat_text, .doc = "open for writing, write or touch it: session.heartbeat"},
	[K_ROOT_LINK] = {K_ROOT_LINK, K_SESSION_DIR, "root", NULL, T_LINK,
			 .coll = ORCH_COLL_SESSION_ROOTS, .doc = "symlink to the session-root worktree"},
	[K_SCTL_DIR] = {K_SCTL_DIR, K_SESSION_DIR, "ctl", NULL, T_DIR},
	[K_SCTL] = {K_SCTL, K_SCTL_DIR, NULL, NULL, T_CTL, .methods = 2, .doc = "methods taking a session, session_id implied; read alone: last reply"},
	[K_TASKS_DIR] = {K_TASKS_DIR, K_ROOT, "tasks", NULL, T_DIR},
	[K_TASK_DIR] = {K_TASK_DIR, K_TASKS_DIR, NULL, "", T_DIR,
			.coll = ORCH_COLL_TASKS},
	[K_TASK_JSON] = {K_TASK_JSON, K_TASK_DIR, "task.json", NULL, T_FILE, .render = orch_task_json,
			 .doc = "the task (held_by: the session holding the case; last_checkpoint_id)",
			 .deps = "tasks# current_refs checkpoints"},

	/* case lifecycle */
	[K_STEPS_JSON] = {K_STEPS_JSON, K_TASK_DIR, "steps.json", NULL, T_FILE,
			  .coll = ORCH_COLL_CASES,
			  .render = orch_task_steps_json, .doc = "its steps in order (cases)", .deps = "tasks# steps"},
	[K_CHECKPOINTS_JSON] = {K_CHECKPOINTS_JSON, K_TASK_DIR, "checkpoints.json", NULL, T_FILE,
				.coll = ORCH_COLL_CASES,
				.render = orch_task_checkpoints_json, .doc = "its checkpoints in order (cases)",
				.deps = "tasks# checkpoints"},

	/* isolation */
	[K_WORKTREES_DIR] = {K_WORKTREES_DIR, K_ROOT, "worktrees", NULL, T_DIR},
	[K_WORKTREE_JSON] = {K_WORKTREE_JSON, K_WORKTREES_DIR, NULL, ".json", T_FILE,
			     .coll = ORCH_COLL_WORKTREES, .render = orch_worktree_json, .doc = "worktree record (planned, active, closed, abandoned, missing)",
			     .deps = "worktrees#"},
	[K_LOCKS_DIR] = {K_LOCKS_DIR, K_ROOT, "locks", NULL, T_DIR},
	[K_LOCK_JSON] = {K_LOCK_JSON, K_LOCKS_DIR, NULL, ".json", T_FILE,
			 .coll = ORCH_COLL_LOCKS,
			 .render = orch_lock_json, .doc = "active locks only: released or expired ones disappear"},

	/* planning graph */
	[K_GRAPH_DIR] = {K_GRAPH_DIR, K_ROOT, "graph", NULL, T_DIR},
	[K_NODES_DIR] = {K_NODES_DIR, K_GRAPH_DIR, "nodes", NULL, T_DIR},
	[K_NODE_DIR] = {K_NODE_DIR, K_NODES_DIR, NULL, "", T_DIR,
			.coll = ORCH_COLL_NODES},
	[K_NODE_JSON] = {K_NODE_JSON, K_NODE_DIR, "node.json", NULL, T_FILE, .render = orch_node_json, .doc = "planning-graph node", .deps = "graph_nodes#"},
	[K_NODE_CHECKLIST_JSON] = {K_NODE_CHECKLIST_JSON, K_NODE_DIR, "checklist.json", NULL, T_FILE,
				   .render = orch_node_checklist_json, .doc = "its checklist, by facet then order_no",
				   .deps = "graph_nodes# node_checklists"},
	[K_NODE_SNAPSHOTS_JSON] = {K_NODE_SNAPSHOTS_JSON, K_NODE_DIR, "snapshots.json", NULL, T_FILE,
				   .render = orch_node_snapshots_json, .doc = "its snapshots, by id",
				   .deps = "graph_nodes# node_snapshots"},
	[K_NODE_EDGES_JSON] = {K_NODE_EDGES_JSON, K_NODE_DIR, "edges.json", NULL, T_FILE,
				.render = orch_node_edges_json, .doc = "every edge from or to it, by id",
				.deps = "graph_nodes# graph_edges"},

	/* merge pipeline */
	[K_MERGE_DIR] = {K_MERGE_DIR, K_ROOT, "merge", NULL, T_DIR},
	[K_MERGE_REQUESTS_DIR] = {K_MERGE_REQUESTS_DIR, K_MERGE_DIR, "requests", NULL, T_DIR},
	[K_MERGE_REQUEST_JSON] = {K_MERGE_REQUEST_JSON, K_MERGE_REQUESTS_DIR, NULL, ".json", T_FILE,
				  .coll = ORCH_COLL_MERGE_REQUESTS, .render = orch_merge_request_json,
				  .doc = "feature merge requests", .deps = "merge_requests#"},
	[K_MAIN_DIR] = {K_MAIN_DIR, K_MERGE_DIR, "main", NULL, T_DIR},
	[K_MAIN_QUEUE_JSON] = {K_MAIN_QUEUE_JSON, K_MAIN_DIR, "queue.json", NULL, T_FILE,
			       .render = orch_main_queue_json, .doc = "the queued main-merge requests, oldest first",
			       .deps = "merge_main_queue"},
	/* Not cached: a lease ends with time, not with a commit (as locks/ files). */
	[K_MAIN_LOCK_JSON] = {K_MAIN_LOCK_JSON, K_MAIN_DIR, "lock.json", NULL, T_FILE,
			      .render = orch_main_lock_json, .doc = "the main merge lock while held, else null"},
	[K_MAIN_ITEM_JSON] = {K_MAIN_ITEM_JSON, K_MAIN_DIR, NULL, ".json", T_FILE,
			      .coll = ORCH_COLL_MAIN_ITEMS, .render = orch_main_item_json,
			      .doc = "main-merge requests (queue items), every state", .deps = "merge_main_queue#"},
	/* markdown mirror */
	[K_MIRROR_DIR] = {K_MIRROR_DIR, K_ROOT, "mirror", NULL, T_DIR},
	[K_MIRROR_STATUS] = {K_MIRROR_STATUS, K_MIRROR_DIR, "status.json", NULL, T_FILE,
			     .render = orch_mirror_status_json, .doc = "what mirror.status returns", .deps = "mirror_meta"},
	[K_MIRROR_MD] = {K_MIRROR_MD, K_MIRROR_DIR, NULL, NULL, T_FILE, .coll = ORCH_COLL_MIRROR,
			 .file = orch_mirror_file, .names = orch_mirror_file_name,
			 .doc = "the markdown mirror as of the last mirror.refresh (index.md first)",
			 .deps = "mirror_files#"},

	/* change feed and liveness (events.c) */
	[K_EVENTS] = {K_EVENTS, K_ROOT, "events", NULL, T_EVENTS,
		      .doc = "change feed: a JSON line per committed change; reads block until there is one"},
	[K_EVENTS_SINCE_DIR] = {K_EVENTS_SINCE_DIR, K_ROOT, "events-since", NULL, T_DIR},
	[K_EVENTS_SINCE] = {K_EVENTS_SINCE, K_EVENTS_SINCE_DIR, NULL, "", T_EVENTS,
			    .doc = "the feed after that db_version (ENOENT once older than the kept history)"},
	[K_ALIVE] = {K_ALIVE, K_SESSION_DIR, "alive", NULL, T_ALIVE,
		     .doc = "hold it open while the agent runs: live without heartbeats; the last close frees its locks"},
};

/*
 * ---- inode numbers ----
 *
 * Below 2^53, so that JavaScript (Node.js, editors built on it) reads
 * them exactly: the kind in bits 46-51, the method index (ctl files) in
 * bits 38-45, the id in bits 0-37.  Ids past 2^38 have no node.
 */
#define INO_ID_BITS 38
#define INO_SUB_BITS 8
#define INO_ID_MASK ((1ULL << INO_ID_BITS) - 1)
#define INO_SUB_MASK ((1ULL << INO_SUB_BITS) - 1)

_Static_assert(K_KIND_COUNT <= 64, "the kind has 6 bits of the inode number");

uint64_t fs_ino(fs_node n)
{
	if (n.kind == K_ROOT)
		return 1; /* FUSE_ROOT_ID */
	return ((uint64_t)n.kind << (INO_ID_BITS + INO_SUB_BITS)) | (((uint64_t)n.sub & INO_SUB_MASK) << INO_ID_BITS) |
	       ((uint64_t)n.id & INO_ID_MASK);
}

fs_node fs_node_of(uint64_t ino)
{
	fs_node n = {K_ROOT, 0, 0};

	if (ino == 1)
		return n;
	n.kind = (fs_kind)(ino >> (INO_ID_BITS + INO_SUB_BITS));
	n.sub = (unsigned)((ino >> INO_ID_BITS) & INO_SUB_MASK);
	n.id = (int64_t)(ino & INO_ID_MASK);
	if (n.kind >= K_KIND_COUNT || n.kind == K_ROOT)
		n.kind = K_ROOT, n.id = -1;
	return n;
}

bool fs_primary_file(fs_node dir, fs_node *file)
{
	static const fs_kind primary[K_KIND_COUNT] = {
		[K_SESSION_DIR] = K_SESSION_JSON,
		[K_TASK_DIR] = K_TASK_JSON,
		[K_NODE_DIR] = K_NODE_JSON,
	};

	if (!primary[dir.kind])
		return false;
	*file = (fs_node){primary[dir.kind], 0, dir.id};
	return true;
}

bool fs_node_parent_name(fs_node n, fs_node *parent, char *name, size_t size)
{
	const node_spec *s = &specs[n.kind];

	if (n.kind == K_ROOT || orch_coll_named(s->coll) || s->methods)
		return false;
	if (s->name) {
		*parent = (fs_node){s->parent, 0, specs[s->parent].name ? 0 : n.id};
		snprintf(name, size, "%s", s->name);
	} else if (s->names) {
		if (!s->names(n.id))
			return false;
		*parent = (fs_node){s->parent, 0, 0};
		snprintf(name, size, "%s", s->names(n.id));
	} else {
		*parent = (fs_node){s->parent, 0, 0};
		snprintf(name, size, "%lld%s", (long long)n.id, s->suffix);
	}
	if (parent->kind == K_ROOT)
		parent->id = 0;
	return true;
}

bool fs_node_cached(fs_node n)
{
	return specs[n.kind].deps != NULL;
}

fs_dep fs_kind_depends(fs_kind k, const char *table)
{
	const char *d = specs[k].deps;
	size_t tl = strlen(table);

	if (!d)
		return FS_DEP_NONE;
	if (strcmp(table, "*") == 0)
		return FS_DEP_ANY;
	for (const char *p = d; (p = strstr(p, table)) != NULL; p += tl) {
		bool starts = p == d || p[-1] == ' ';
		char end = p[tl];
		if (!starts || (end != '\0' && end != ' ' && end != '#'))
			continue;
		return end == '#' ? FS_DEP_ROW : FS_DEP_ANY;
	}
	return FS_DEP_NONE;
}

fs_type fs_node_type(fs_node n)
{
	return specs[n.kind].type;
}

/* ---- queries ---- */

bool fs_exists(orch_ctx *ctx, fs_node n)
{
	const node_spec *s = &specs[n.kind];

	if (n.id < 0)
		return false;
	if (s->methods) {
		int64_t sid;
		return fs_ctl_method(n, &sid) != NULL && (n.kind != K_SCTL || orch_coll_has(ctx, ORCH_COLL_SESSIONS, n.id));
	}
	/* A fixed child exists when its parent does. */
	if (s->name && s->parent != n.kind && specs[s->parent].coll) {
		fs_node p = {s->parent, 0, n.id};
		if (!fs_exists(ctx, p))
			return false;
	}
	return !s->coll || orch_coll_has(ctx, s->coll, n.id);
}

const orch_method *fs_ctl_method(fs_node n, int64_t *session_id)
{
	const orch_method *m = orch_method_at(n.sub);

	*session_id = n.kind == K_SCTL ? n.id : 0;
	if (!m || (n.kind == K_SCTL && !orch_method_takes_session(m)))
		return NULL;
	return m;
}

/* Parse a decimal id: digits only, no leading zero, > 0, fits the inode's id bits. */
static int64_t parse_id(const char *name, size_t len)
{
	int64_t v = 0;

	if (len == 0 || len > 12 || name[0] == '0')
		return 0;
	for (size_t i = 0; i < len; i++) {
		if (name[i] < '0' || name[i] > '9')
			return 0;
		v = v * 10 + (name[i] - '0');
	}
	return (uint64_t)v <= INO_ID_MASK ? v : 0;
}

int fs_lookup(orch_ctx *ctx, fs_node dir, const char *name, fs_node *child)
{
	if (specs[dir.kind].type != T_DIR)
		return -ENOTDIR;
	for (int k = 1; k < K_KIND_COUNT; k++) {
		const node_spec *s = &specs[k];
		fs_node c = {(fs_kind)k, 0, dir.id};

		if (s->parent != dir.kind)
			continue;
		if (s->name) {
			if (strcmp(s->name, name) != 0)
				continue;
		} else if (s->methods) {
			size_t i = 0;
			while (i < orch_method_count() && strcmp(orch_method_at(i)->name, name) != 0)
				i++;
			if (i == orch_method_count())
				continue;
			c.sub = (unsigned)i;
		} else if (s->names) {
			int64_t id = 1;
			while (s->names(id) && strcmp(s->names(id), name) != 0)
				id++;
			if (!s->names(id))
				continue;
			c.id = id;
		} else {
			size_t n = strlen(name), sl = strlen(s->suffix);
			if (n <= sl || strcmp(name + n - sl, s->suffix) != 0)
				continue;
			if (k == K_EVENTS_SINCE) {
				/* Any db_version, 0 too; whether it is still kept is checked at open. */
				c.id = n - sl == 1 && name[0] == '0' ? 0 : parse_id(name, n - sl);
				if (c.id == 0 && !(n - sl == 1 && name[0] == '0'))
					continue;
				*child = c;
				return 0;
			}
			if (orch_coll_named(s->coll)) {
				char *base = strndup(name, n - sl);
				c.id = orch_coll_find(ctx, s->coll, base);
				free(base);
			} else {
				c.id = parse_id(name, n - sl);
			}
			if (c.id <= 0)
				continue;
		}
		if (!fs_exists(ctx, c))
			return -ENOENT;
		*child = c;
		return 0;
	}
	return -ENOENT;
}

static void add(fs_dirent **out, size_t *n, size_t *cap, char *name, fs_node node)
{
	if (*n == *cap) {
		*cap = *cap ? *cap * 2 : 16;
		*out = orch_xrealloc(*out, *cap * sizeof(**out));
	}
	(*out)[*n].name = name;
	(*out)[*n].node = node;
	(*n)++;
}

/* Collecting a collection's members as directory entries. */
typedef struct {
	fs_dirent **out;
	size_t *n, *cap;
	const char *suffix;
	fs_node node;
} lister;

static void list_one(void *arg, int64_t id, const char *name)
{
	lister *l = arg;
	char *entry;

	l->node.id = id;
	if (name ? asprintf(&entry, "%s%s", name, l->suffix) < 0 : asprintf(&entry, "%lld%s", (long long)id, l->suffix) < 0)
		return;
	add(l->out, l->n, l->cap, entry, l->node);
}

int fs_list(orch_ctx *ctx, fs_node dir, fs_dirent **out, size_t *n)
{
	size_t cap = 0;

	*out = NULL;
	*n = 0;
	if (specs[dir.kind].type != T_DIR)
		return -ENOTDIR;
	for (int k = 1; k < K_KIND_COUNT; k++) {
		const node_spec *s = &specs[k];
		fs_node c = {(fs_kind)k, 0, dir.id};

		if (s->parent != dir.kind)
			continue;
		if (s->name) {
			if (!s->coll || fs_exists(ctx, c))
				add(out, n, &cap, strdup(s->name), c);
		} else if (s->methods) {
			for (size_t i = 0; i < orch_method_count(); i++) {
				const orch_method *m = orch_method_at(i);
				if (s->methods == 2 && !orch_method_takes_session(m))
					continue;
				c.sub = (unsigned)i;
				add(out, n, &cap, strdup(m->name), c);
			}
		} else if (s->names) {
			for (c.id = 1; s->names(c.id); c.id++)
				if (fs_exists(ctx, c))
					add(out, n, &cap, strdup(s->names(c.id)), c);
		} else if (s->coll != ORCH_COLL_NONE) {
			lister l = {out, n, &cap, s->suffix, c};
			if (orch_coll_list(ctx, s->coll, list_one, &l) != 0) {
				orch_error_clear();
				return -EIO;
			}
		}
	}
	return 0;
}

void fs_dirents_free(fs_dirent *d, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(d[i].name);
	free(d);
}

static int errno_of(int code)
{
	return -fs_errno(code);
}

/* Parse an RFC 3339 time as orch_time_format writes it; 0 when it is not one. */
static int64_t parse_stamp(const char *s)
{
	struct tm tm = {0};
	int ms = 0;

	if (strlen(s) != 24 || s[10] != 'T' || s[23] != 'Z' ||
	    sscanf(s, "%4d-%2d-%2dT%2d:%2d:%2d.%3d", &tm.tm_year, &tm.tm_mon, &tm.tm_mday, &tm.tm_hour, &tm.tm_min,
		   &tm.tm_sec, &ms) != 7)
		return 0;
	tm.tm_year -= 1900;
	tm.tm_mon -= 1;
	return (int64_t)timegm(&tm) * 1000 + ms;
}

/* The newest "*_at" timestamp anywhere in `j` (0 if none): when the rows shown last changed. */
static int64_t newest_stamp(json_t *j)
{
	int64_t best = 0, t;
	const char *key;
	json_t *v;
	size_t i;

	if (json_is_object(j)) {
		json_object_foreach(j, key, v) {
			size_t n = strlen(key);
			if (json_is_string(v) && n > 3 && strcmp(key + n - 3, "_at") == 0)
				t = parse_stamp(json_string_value(v));
			else
				t = newest_stamp(v);
			best = t > best ? t : best;
		}
	} else if (json_is_array(j)) {
		json_array_foreach(j, i, v) {
			t = newest_stamp(v);
			best = t > best ? t : best;
		}
	}
	return best;
}

int fs_render(orch_ctx *ctx, fs_node n, fs_rendering *r)
{
	const node_spec *s = &specs[n.kind];
	json_t *j = NULL;
	int rc;

	memset(r, 0, sizeof(*r));
	if (!s->render && !s->text && !s->file)
		return -EISDIR;
	/* Views that depend on time (lock expiry) see the time of the open. */
	if (orch_ctx_read_begin(ctx) != 0) {
		orch_error_clear();
		return -EIO;
	}
	if (!fs_exists(ctx, n)) {
		orch_ctx_read_end(ctx);
		return -ENOENT;
	}
	r->mapped = s->file != NULL;
	rc = s->render ? s->render(ctx, n.id, &j)
	     : s->file ? s->file(ctx, n.id, &r->data, &r->len, &r->stamp)
	     : s->text(ctx, n.id, &r->data);
	if (!rc)
		rc = orch_meta_read(ctx->store, NULL, &r->snapshot_at);
	orch_ctx_read_end(ctx);
	if (rc) {
		json_decref(j);
		fs_rendering_release(r);
		return errno_of(rc);
	}
	if (j) {
		char *text = json_dumps(j, JSON_INDENT(2) | JSON_ENCODE_ANY);
		r->stamp = newest_stamp(j);
		json_decref(j);
		if (text && asprintf(&r->data, "%s\n", text) < 0)
			r->data = NULL;
		free(text);
	}
	if (!r->data)
		return -ENOMEM;
	if (!s->file)
		r->len = strlen(r->data);
	return 0;
}

void fs_rendering_release(fs_rendering *r)
{
	if (r->mapped && r->data)
		munmap(r->data, r->len);
	else
		free(r->data);
	r->data = NULL;
}

int fs_readlink(orch_ctx *ctx, fs_node n, char **target)
{
	int rc;

	if (specs[n.kind].type != T_LINK)
		return -EINVAL;
	if (orch_ctx_read_begin(ctx) != 0) {
		orch_error_clear();
		return -EIO;
	}
	rc = orch_session_root_path(ctx, n.id, target);
	orch_ctx_read_end(ctx);
	return rc ? errno_of(rc) : 0;
}

static const char readme_head[] =
	"# orchfs\n"
	"\n"
	"This directory is the orchestrator's state for the repository at %s.\n"
	"Everything is a file: read state files with cat, call methods by writing a JSON\n"
	"object into ctl/<method> and reading the reply on the same descriptor.\n"
	"\n"
	"    exec 3<>ctl/task.create\n"
	"    echo '{\"level\": \"case\", \"title\": \"parse dates\"}' >&3\n"
	"    cat <&3        # {\"result\": {...}} or {\"error\": {\"code\", \"message\"}}\n"
	"\n"
	"## Quick start for an agent\n"
	"\n"
	"    M=<this directory>; S=$M/sessions/<your session id>/ctl\n"
	"    1. open:     exec 3<>$M/ctl/session.open; echo '{\"agent_role\": \"implementer\", \"owner\": \"alice\"}' >&3; cat <&3\n"
	"                 -> result.session_context.session.id is your session id; sessions/<id>/root is your checkout\n"
	"    2. where:    cat $M/sessions/<id>/context.json\n"
	"    3. work:     exec 3<>$S/work.current_ref; echo '{}' >&3; cat <&3    (a case is handed to you, or none)\n"
	"    4. hold it:  exec 3<>$S/case.begin; echo '{\"case_id\": <case id>}' >&3; cat <&3\n"
	"    5. branch:   exec 3<>$S/worktree.spawn; echo '{}' >&3; cat <&3    (a child of your session root)\n"
	"    6. commit in that worktree's path with git, as usual (only commits are merged, never uncommitted files)\n"
	"    7. merge:    exec 3<>$S/worktree.merge_to_parent; echo '{\"worktree_id\": <child id>}' >&3; cat <&3\n"
	"    8. record:   step.check {case_id, step_title, result}; then case.complete {case_id, summary}\n"
	"    9. close:    exec 3<>$S/session.close; echo '{}' >&3; cat <&3\n"
	"                 (your root reaches main through the main-merge queue, merge.main.*; then\n"
	"                 {\"remove_worktree\": true} removes its checkout)\n"
	"\n"
	"Holding a case: case.begin (or work.current_ref / resume.next handing you one) makes\n"
	"your current ref point at it; no other session is handed it or may change it until\n"
	"you complete it, set it blocked (task.update) or close.  Locks (lock.acquire) are\n"
	"advisory: they stop other lock.acquire calls on overlapping paths, not git or editors.\n"
	"\n"
	"Liveness: a session is live while it is heard from within its own heartbeat window\n"
	"(heartbeat_timeout_seconds at session.open, default 120).  Reads do not count as\n"
	"heartbeats: only `touch sessions/<id>/heartbeat`, session.heartbeat and writes through\n"
	"sessions/<id>/ctl/ do.  Touch it at least every window/2 seconds while you think.\n"
	"A silent session holding a case may be taken over: another session opens with\n"
	"{\"intent\": \"resume_work\"}, reads resume_candidates, and writes\n"
	"{\"target_session_id\": <id>} to its resume.candidates.attach.\n"
	"\n"
	"Errors: a failed call also fails the write with an errno, so `echo '{...}' > ctl/x`\n"
	"exits non-zero: EINVAL invalid_json, invalid_params or invalid_state; ENOENT\n"
	"not_found (a method's error, not a missing file: read the reply); EBUSY conflict;\n"
	"EEXIST exists; EPERM forbidden; EFBIG too_large; EIO git or internal.  The reply\n"
	"says what was wrong.  Read it on the same descriptor, or afterwards by reading\n"
	"sessions/<id>/ctl/<method> without writing (the last reply you got there), or\n"
	"replies/<call_id>.json when the request carried a \"call_id\".  File tools that take\n"
	"ENOENT for a missing file should open with {\"ctl_errors\": \"reply\"}: through that\n"
	"session's ctl/ a complete request's write always succeeds and the error is only in\n"
	"the reply.  A name under ctl/ that is no method is ENOENT: `ls ctl/` lists them.\n"
	"Reading ctl/<method> without writing shows its usage.\n"
	"\n"
	"## Tree\n"
	"\n";

static const char readme_mid[] =
	"\n"
	"State files are JSON, one consistent snapshot per open; everything but ctl files\n"
	"and heartbeat is read-only (EROFS).\n"
	"\n"
	"## Methods\n"
	"\n";

/* The path pattern of kind `k`: "sessions/<id>/ctl/<method>". */
static void spec_path(fs_kind k, char *buf, size_t size)
{
	const node_spec *s = &specs[k];
	char name[64];

	if (k == K_ROOT)
		return;
	spec_path(s->parent, buf, size);
	if (s->name)
		snprintf(name, sizeof(name), "%s", s->name);
	else if (s->methods)
		snprintf(name, sizeof(name), "<method>");
	else if (s->names)
		snprintf(name, sizeof(name), "*.md");
	else
		snprintf(name, sizeof(name), "<%s>%s", orch_coll_named(s->coll) ? "call_id" : k == K_EVENTS_SINCE ?
			 "db_version" : "id", s->suffix);
	size_t n = strlen(buf);
	snprintf(buf + n, size - n, "%s%s", n ? "/" : "", name);
}

static int readme_text(orch_ctx *ctx, int64_t id, char **buf)
{
	size_t cap = 0;
	char *out = NULL;
	FILE *f = open_memstream(&out, &cap);

	(void)id;
	fprintf(f, readme_head, ctx->repo_path);
	for (int k = 1; k < K_KIND_COUNT; k++) {
		char path[256] = "";
		if (!specs[k].doc)
			continue;
		spec_path((fs_kind)k, path, sizeof(path));
		fprintf(f, "    %-34s %s\n", path, specs[k].doc);
	}
	fputs(readme_mid, f);
	for (size_t i = 0; i < orch_method_count(); i++) {
		const orch_method *m = orch_method_at(i);
		fprintf(f, "- `%s`: %s\n", m->name, m->summary);
	}
	fclose(f);
	*buf = out;
	return 0;
}
