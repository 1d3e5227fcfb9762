/*
 * The markdown mirror: the whole state as markdown files a person opens in
 * an editor, and their history in git.
 *
 * mirror.refresh works in two steps (orch_prepare_fn):
 *
 *  1. Outside the writer lane, on a pooled read-only connection inside one
 *     read transaction: check the role, render every file from that one
 *     snapshot into a new directory <state>/mirror/r.XXXXXX (streamed
 *     row by row, never the whole state in memory), fsync it, and store
 *     the files as git blobs and a tree.  Neither the readers of the
 *     mount nor the writers wait for this.
 *  2. On the writer lane, a short transaction: if the tree differs from
 *     the one served, point mirror_files at the new directory and commit
 *     the tree on refs/orchfs/mirror; record md_version (the db_version the
 *     snapshot showed), md_path, and write target_path.  The directory of
 *     the rendering replaced is removed after the commit (the one before
 *     it at the next change: a reader whose snapshot still names it can
 *     finish its read).
 *
 * A refresh changes only the mirror's bookkeeping, never the state it
 * shows, so it does not bump db_version (as in the reference): a refresh
 * right after a refresh finds the mirror up to date.
 *
 * Determinism: the content depends on the state only.  Times are absolute
 * (RFC 3339); ages ("heartbeat 12s before") are measured from the moment
 * of the state's last change (mirror_meta.version_at), never from the
 * refresh, and lists are ordered by id.  "Changes since the previous
 * refresh" compare with the previous rendering of another db_version, which
 * a refresh of the same db_version keeps.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "orchfs/core.h"
#include "orchfs/git.h"
#include "gitfx.h"
#include "groups.h"

#define ROLE "doc-mirror-manager"
#define MERMAID_MAX 300  /* nodes drawn in plan.md's flowchart (renderers give up on larger ones) */
#define CHANGES_MAX 12   /* items listed per kind under "changes since the previous refresh" */
#define STALE_DIR_MS (10 * 60 * 1000) /* an unreferenced rendering directory older than this is garbage */

/* The files, in the order mirror/ lists them; file i has id i + 1 in mirror_files. */
static const char *const files[] = {
	"index.md", "tasks.md", "plan.md", "sessions.md", "worktrees.md", "locks.md", "merges.md",
};
#define NFILES (sizeof(files) / sizeof(files[0]))

const char *orch_mirror_file_name(int64_t id)
{
	return id >= 1 && (size_t)id <= NFILES ? files[id - 1] : NULL;
}

/* ---- mirror.status ---- */

int orch_mirror_status_json(orch_ctx *ctx, int64_t id, json_t **out)
{
	int rc = orch_sql_row(ctx, out, "mirror state %lld missing", 1,
			      "SELECT db_version, md_version, md_path, db_version <> md_version AS outdated, "
			      "updated_at FROM mirror_meta WHERE id = 1", "");

	(void)id;
	if (!rc)
		json_object_set_new(*out, "outdated",
				    json_boolean(json_integer_value(json_object_get(*out, "outdated"))));
	return rc;
}

static int mirror_status(orch_ctx *ctx, json_t *p, json_t **result)
{
	(void)p;
	return orch_mirror_status_json(ctx, 1, result);
}

/* ---- serving the files ---- */

int orch_mirror_file(orch_ctx *ctx, int64_t id, char **buf, size_t *len, int64_t *mtime)
{
	orch_stmt *st = orch_sql(ctx, "SELECT dir, name, size, changed_at FROM mirror_files WHERE id = ?", "i", id);
	char *path = NULL;
	struct stat sb;
	size_t size;
	void *map;
	int rc, fd;

	*buf = NULL;
	if (!st)
		return ORCH_EINTERNAL;
	if ((rc = orch_sql_step(ctx, st)) != ORCH_ROW) {
		orch_stmt_reset(st);
		return rc == ORCH_DONE ? orch_error_set(ORCH_ENOTFOUND, "mirror file %lld not rendered", (long long)id)
					 : ORCH_EINTERNAL;
	}
	if (asprintf(&path, "%s/mirror/%s/%s", ctx->state_dir, (const char *)orch_stmt_column_text(st, 0),
		     (const char *)orch_stmt_column_text(st, 1)) < 0)
		path = NULL;
	size = (size_t)orch_stmt_column_int64(st, 2);
	*mtime = orch_stmt_column_int64(st, 3);
	orch_stmt_reset(st);
	if (!path)
		return orch_error_set(ORCH_EINTERNAL, "out of memory");
	/* Mapped, not copied: the daemon's memory stays small and the pages are the page cache's. */
	if ((fd = open(path, O_RDONLY | O_CLOEXEC)) < 0 || fstat(fd, &sb) != 0) {
		rc = orch_error_set(ORCH_EINTERNAL, "mirror file %s: %s", path, strerror(errno));
	} else if ((size_t)sb.st_size != size || size == 0) {
		rc = orch_error_set(ORCH_EINTERNAL, "mirror file %s: %lld bytes, %zu recorded", path,
				    (long long)sb.st_size, size);
	} else if ((map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0)) == MAP_FAILED) {
		rc = orch_error_set(ORCH_EINTERNAL, "mirror file %s: %s", path, strerror(errno));
	} else {
		*buf = map;
		*len = size;
		rc = 0;
	}
	if (fd >= 0)
		close(fd);
	free(path);
	return rc;
}

/* ---- rendering helpers ---- */

/* One file being rendered from the snapshot. */
typedef struct {
	orch_ctx *ctx;
	FILE *f;
	int64_t version;      /* db_version of the snapshot */
	int64_t at;           /* its version_at: the moment ages are measured from */
	int64_t base_version; /* the previous rendering of another db_version (0: none) */
	int64_t base_at;
} rd;

static const char *col(orch_stmt *st, int i)
{
	const char *s = (const char *)orch_stmt_column_text(st, i);
	return s ? s : "";
}

static bool has(orch_stmt *st, int i)
{
	return orch_stmt_column_type(st, i) != ORCH_NULL;
}

static bool word_char(char c)
{
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

/*
 * Text inside a markdown line or table cell (never at the start of one):
 * no markup, no line breaks, no cell breaks.  An underscore inside a word
 * (in_progress) is no markup and stays as it is, for people reading the
 * raw file.
 */
static void text(FILE *f, const char *s)
{
	for (const char *p = s; *p; p++) {
		unsigned char c = (unsigned char)*p;
		if (c == '\n' || c == '\r' || c == '\t')
			fputc(' ', f);
		else if (c < 0x20)
			continue;
		else if (c == '_' && p > s && word_char(p[-1]) && word_char(p[1]))
			fputc(c, f);
		else if (strchr("\\`*_[]<>|~", c))
			fprintf(f, "\\%c", c);
		else
			fputc(c, f);
	}
}

/* Text inside a `code span`: shown as it is, but no backtick, line break or table cell break. */
static void code(FILE *f, const char *s)
{
	fputc('`', f);
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;
		if (c == '`')
			fputc('\'', f);
		else if (c == '|')
			fputs("\\|", f);
		else if (c < 0x20)
			fputc(' ', f);
		else
			fputc(c, f);
	}
	fputc('`', f);
}

static void stamp(FILE *f, int64_t ms)
{
	char buf[32];

	orch_time_format(ms, buf);
	fputs(buf, f);
}

/* A duration, coarsely: "42s", "3m 05s", "2h 10m", "4d 03h". */
static void duration(FILE *f, int64_t ms)
{
	int64_t s = ms / 1000;

	if (s < 60)
		fprintf(f, "%llds", (long long)s);
	else if (s < 3600)
		fprintf(f, "%lldm %02llds", (long long)(s / 60), (long long)(s % 60));
	else if (s < 86400)
		fprintf(f, "%lldh %02lldm", (long long)(s / 3600), (long long)(s % 3600 / 60));
	else
		fprintf(f, "%lldd %02lldh", (long long)(s / 86400), (long long)(s % 86400 / 3600));
}

/* "12s before the state's last change" for a time at or before it. */
static void age(rd *r, int64_t ms)
{
	if (ms > r->at) {
		fputs("after the last change", r->f);
		return;
	}
	duration(r->f, r->at - ms);
	fputs(" before", r->f);
}

static void nav(rd *r, const char *self)
{
	static const char *const titles[] = {"Overview", "Tasks", "Plan", "Sessions", "Worktrees", "Locks",
					     "Merges"};

	for (size_t i = 0; i < NFILES; i++) {
		fputs(i ? " · " : "", r->f);
		if (strcmp(files[i], self) == 0)
			fprintf(r->f, "**%s**", titles[i]);
		else
			fprintf(r->f, "[%s](%s)", titles[i], files[i]);
	}
	fputs("\n\n", r->f);
}

/*
 * A file's title and the links to the others.  Only index.md names the
 * db_version: the other files change (and show in git's history) only
 * when what they list changes.
 */
static void header(rd *r, const char *self, const char *title)
{
	fprintf(r->f, "# %s\n\n", title);
	nav(r, self);
	if (strcmp(self, "index.md") == 0) {
		fprintf(r->f, "State as of db_version %lld (last change ", (long long)r->version);
		stamp(r->f, r->at);
		fputs("). Times are UTC; ages are measured from that last change, not from the refresh.\n\n", r->f);
	} else {
		fputs("Times are UTC. The state's version and time: [Overview](index.md).\n\n", r->f);
	}
}

/* Link to a session's entry in sessions.md. */
static void session_link(rd *r, int64_t id)
{
	fprintf(r->f, "[session %lld](sessions.md#session-%lld)", (long long)id, (long long)id);
}

/* The owner of a lock is free text; a decimal session id links to it. */
static void owner_link(rd *r, const char *owner)
{
	char *end;
	long long id = strtoll(owner, &end, 10);

	if (*owner && !*end && id > 0 && owner[0] != '0')
		session_link(r, id);
	else
		code(r->f, owner);
}

/* "todo 3, done 7" from rows (status, count); "none" when there are none.  Returns the total. */
static int64_t counts(rd *r, orch_stmt *st, int *rc)
{
	int64_t total = 0;
	bool any = false;

	while ((*rc = orch_sql_step(r->ctx, st)) == ORCH_ROW) {
		fprintf(r->f, "%s", any ? ", " : "");
		text(r->f, col(st, 0));
		fprintf(r->f, " %lld", (long long)orch_stmt_column_int64(st, 1));
		total += orch_stmt_column_int64(st, 1);
		any = true;
	}
	orch_stmt_reset(st);
	if (!any)
		fputs("none", r->f);
	*rc = *rc == ORCH_DONE ? 0 : ORCH_EINTERNAL;
	return total;
}

/* One row of the counts table: a link, the total, the statuses. */
static int count_row(rd *r, const char *label, const char *link, orch_stmt *st)
{
	char *by = NULL;
	size_t n = 0;
	FILE *f = r->f, *mem;
	int rc;
	int64_t total;

	if (!st)
		return ORCH_EINTERNAL;
	mem = open_memstream(&by, &n);
	r->f = mem;
	total = counts(r, st, &rc);
	fclose(mem);
	r->f = f;
	fprintf(f, "| [%s](%s) | %lld | %s |\n", label, link, (long long)total, by);
	free(by);
	return rc;
}

/* ---- index.md ---- */

/*
 * Whether a session is live at the state's moment: open and within its own
 * heartbeat window.  The same rule as orch_session_live (session.c), as SQL
 * so that a listing streams; change both together.
 */
#define LIVE_SQL                                                                                   \
	"(" ORCH_SQL_ALIVE_HELD("s") " OR (NOT " ORCH_SQL_ALIVE_DROPPED("s") " AND "               \
	"s.last_seen_at + coalesce(nullif(s.heartbeat_timeout_seconds, 0), 120) * 1000 > ?1))"

static int index_counts(rd *r)
{
	orch_ctx *ctx = r->ctx;
	int rc;

	fputs("## Counts\n\n| | total | by status |\n|---|---:|---|\n", r->f);
	if ((rc = count_row(r, "Tasks", "tasks.md", orch_sql(ctx, "SELECT status, count(*) FROM tasks "
							      "GROUP BY status ORDER BY status", ""))) ||
	    (rc = count_row(r, "Cases", "tasks.md", orch_sql(ctx, "SELECT status, count(*) FROM tasks "
							      "WHERE level = 'case' GROUP BY status ORDER BY status", ""))) ||
	    (rc = count_row(r, "Plan nodes", "plan.md", orch_sql(ctx, "SELECT status, count(*) FROM graph_nodes "
								  "GROUP BY status ORDER BY status", ""))) ||
	    (rc = count_row(r, "Sessions", "sessions.md", orch_sql(ctx, "SELECT status, count(*) FROM sessions "
								    "GROUP BY status ORDER BY status", ""))) ||
	    (rc = count_row(r, "Worktrees", "worktrees.md", orch_sql(ctx, "SELECT status, count(*) FROM worktrees "
								      "GROUP BY status ORDER BY status", ""))) ||
	    (rc = count_row(r, "Active locks", "locks.md", orch_sql(ctx, "SELECT scope_type, count(*) FROM locks "
								     "WHERE state = 'active' GROUP BY scope_type "
								     "ORDER BY scope_type", ""))) ||
	    (rc = count_row(r, "Merge requests", "merges.md#merge-requests",
			    orch_sql(ctx, "SELECT status, count(*) FROM merge_requests GROUP BY status "
				     "ORDER BY status", ""))) ||
	    (rc = count_row(r, "Main-merge queue", "merges.md#main-merge-queue",
			    orch_sql(ctx, "SELECT state, count(*) FROM merge_main_queue GROUP BY state "
				     "ORDER BY state", ""))))
		return rc;
	fputc('\n', r->f);
	return 0;
}

/* What a current ref points at: a task (case) or a plan node, linked. */
static void ref_target(rd *r, const char *type, int64_t id, const char *title)
{
	bool task = strcmp(type, "case") == 0 || strcmp(type, "task") == 0;

	text(r->f, type);
	fprintf(r->f, " [#%lld](%s#%s-%lld)", (long long)id, task ? "tasks.md" : "plan.md", task ? "task" : "node",
		(long long)id);
	if (title && *title) {
		fputc(' ', r->f);
		text(r->f, title);
	}
}

/* The columns of a session's current ref and its last checkpoint (columns 7-13 of the sessions queries). */
#define REF_COLS                                                                                    \
	"r.node_type, r.node_id, "                                                                      \
	"CASE WHEN r.node_type IN ('case', 'task') THEN (SELECT title FROM tasks WHERE id = r.node_id) "  \
	"ELSE (SELECT title FROM graph_nodes WHERE id = r.node_id) END, "                                  \
	"(SELECT status FROM tasks WHERE id = r.node_id AND r.node_type IN ('case', 'task')), "           \
	"c.step_title, c.created_at, r.next_action "
#define REF_JOIN                                                                                    \
	"LEFT JOIN current_refs r ON r.session_id = s.id AND r.status = 'active' "                        \
	"LEFT JOIN checkpoints c ON c.id = (SELECT max(id) FROM checkpoints WHERE task_id = r.node_id "   \
	"AND r.node_type IN ('case', 'task')) "

static void ref_cells(rd *r, orch_stmt *st, int c0)
{
	if (has(st, c0)) {
		ref_target(r, col(st, c0), orch_stmt_column_int64(st, c0 + 1), col(st, c0 + 2));
		if (has(st, c0 + 3)) {
			fputs(" (", r->f);
			text(r->f, col(st, c0 + 3));
			fputc(')', r->f);
		}
	} else {
		fputs("—", r->f);
	}
	fputs(" | ", r->f);
	if (has(st, c0 + 4)) {
		text(r->f, col(st, c0 + 4));
		fputs(", ", r->f);
		age(r, orch_stmt_column_int64(st, c0 + 5));
	} else {
		fputs("—", r->f);
	}
}

static int index_sessions(rd *r)
{
	orch_stmt *st = orch_sql(r->ctx,
		"SELECT s.id, s.agent_role, s.owner, s.status, s.last_seen_at, " LIVE_SQL ", "
		"NOT " LIVE_SQL " AND r.id IS NOT NULL, " REF_COLS
		"FROM sessions s " REF_JOIN
		"WHERE s.status NOT IN ('closed', 'handoff_attached') ORDER BY s.id", "i", r->at);
	int rc;
	bool any = false;

	if (!st)
		return ORCH_EINTERNAL;
	fputs("## Who is doing what\n\n", r->f);
	while ((rc = orch_sql_step(r->ctx, st)) == ORCH_ROW) {
		if (!any)
			fputs("| session | role | owner | heartbeat | resume candidate | holds | last checkpoint |\n"
			      "|---|---|---|---|---|---|---|\n", r->f);
		any = true;
		fputs("| ", r->f);
		session_link(r, orch_stmt_column_int64(st, 0));
		fputs(" | ", r->f);
		text(r->f, col(st, 1));
		fputs(" | ", r->f);
		text(r->f, col(st, 2));
		fputs(" | ", r->f);
		age(r, orch_stmt_column_int64(st, 4));
		fputs(orch_stmt_column_int(st, 5) ? " (live)" : " (stale)", r->f);
		fputs(orch_stmt_column_int(st, 6) ? " | **yes** | " : " | no | ", r->f);
		ref_cells(r, st, 7);
		fputs(" |\n", r->f);
	}
	orch_stmt_reset(st);
	if (!any)
		fputs("No open sessions.\n", r->f);
	fputc('\n', r->f);
	return rc == ORCH_DONE ? 0 : ORCH_EINTERNAL;
}

static int lock_rows(rd *r, bool with_heading);
static int queue_rows(rd *r, bool queued_only);

/* A list of changed ids with links, at most CHANGES_MAX, then "and N more". */
static int changed_list(rd *r, const char *label, orch_stmt *st, const char *file, const char *anchor)
{
	int64_t n = 0;
	int rc;

	if (!st)
		return ORCH_EINTERNAL;
	while ((rc = orch_sql_step(r->ctx, st)) == ORCH_ROW) {
		if (n == 0)
			fprintf(r->f, "- %s:", label);
		if (n < CHANGES_MAX) {
			int64_t id = orch_stmt_column_int64(st, 0);
			fprintf(r->f, "%s [#%lld](%s#%s-%lld) ", n ? "," : "", (long long)id, file, anchor, (long long)id);
			text(r->f, col(st, 1));
			if (has(st, 2)) {
				fputs(" (", r->f);
				text(r->f, col(st, 2));
				fputc(')', r->f);
			}
		}
		n++;
	}
	orch_stmt_reset(st);
	if (n > CHANGES_MAX)
		fprintf(r->f, ", and %lld more", (long long)(n - CHANGES_MAX));
	if (n)
		fputc('\n', r->f);
	return rc == ORCH_DONE ? 0 : ORCH_EINTERNAL;
}

static int index_changes(rd *r)
{
	orch_ctx *ctx = r->ctx;
	int64_t t = r->base_at;
	long pos;
	int rc;

	fputs("## Changes since the previous refresh\n\n", r->f);
	if (!r->base_version) {
		fputs("This is the first rendering.\n\n", r->f);
		return 0;
	}
	fprintf(r->f, "Since db_version %lld (", (long long)r->base_version);
	stamp(r->f, t);
	fputs("):\n\n", r->f);
	pos = ftell(r->f);
	if ((rc = changed_list(r, "tasks", orch_sql(ctx, "SELECT id, title, status FROM tasks WHERE updated_at > ? "
						       "ORDER BY id", "i", t), "tasks.md", "task")) ||
	    (rc = changed_list(r, "plan nodes", orch_sql(ctx, "SELECT id, title, status FROM graph_nodes "
							    "WHERE updated_at > ? ORDER BY id", "i", t), "plan.md", "node")) ||
	    (rc = changed_list(r, "sessions opened", orch_sql(ctx, "SELECT id, agent_role, status FROM sessions "
								 "WHERE started_at > ? ORDER BY id", "i", t),
			       "sessions.md", "session")) ||
	    (rc = changed_list(r, "sessions closed or taken over",
			       orch_sql(ctx, "SELECT id, agent_role, status FROM sessions WHERE last_seen_at > ? "
				        "AND started_at <= ?1 AND status IN ('closed', 'handoff_attached') ORDER BY id",
					"i", t), "sessions.md", "session")) ||
	    (rc = changed_list(r, "worktrees created", orch_sql(ctx, "SELECT id, branch, status FROM worktrees "
								   "WHERE created_at > ? ORDER BY id", "i", t),
			       "worktrees.md", "worktree")) ||
	    (rc = changed_list(r, "worktrees merged", orch_sql(ctx, "SELECT id, branch, status FROM worktrees "
								  "WHERE merged_at > ? ORDER BY id", "i", t),
			       "worktrees.md", "worktree")) ||
	    (rc = changed_list(r, "locks taken or renewed",
			       orch_sql(ctx, "SELECT id, scope_path, state FROM locks WHERE heartbeat_at > ? "
				        "AND state = 'active' ORDER BY id", "i", t), "locks.md", "lock")) ||
	    (rc = changed_list(r, "merge requests", orch_sql(ctx, "SELECT id, 'feature ' || feature_task_id, status "
								 "FROM merge_requests WHERE updated_at > ? ORDER BY id",
								 "i", t), "merges.md", "merge-request")) ||
	    (rc = changed_list(r, "main-merge queue", orch_sql(ctx, "SELECT id, target_branch, state FROM "
								  "merge_main_queue WHERE updated_at > ? ORDER BY id",
								  "i", t), "merges.md", "queue")))
		return rc;
	if (ftell(r->f) == pos)
		fputs("Nothing that the mirror lists changed (heartbeats only).\n", r->f);
	fputc('\n', r->f);
	return 0;
}

static int render_index(rd *r)
{
	int rc;

	header(r, "index.md", "orchfs: who is doing what");
	if ((rc = index_counts(r)) || (rc = index_sessions(r)))
		return rc;
	fputs("## Active locks\n\n", r->f);
	if ((rc = lock_rows(r, false)))
		return rc;
	fputs("## Merge queue\n\nQueued main merges, oldest first ([all merges](merges.md)):\n\n", r->f);
	if ((rc = queue_rows(r, true)))
		return rc;
	return index_changes(r);
}

/* ---- tasks.md ---- */

/*
 * The task tree in one pass: a depth-first walk (roots are tasks without a
 * parent, or whose parent is gone), each task with its holder, its steps
 * as a checkbox list and its latest checkpoint, from one statement so
 * that 100k tasks are one scan, not 100k queries.
 */
static int render_tasks(rd *r)
{
	orch_stmt *st = orch_sql(r->ctx,
		"WITH RECURSIVE walk (id, depth, path) AS ("
		" SELECT id, 0, printf('%012d', id) FROM tasks t WHERE parent_id IS NULL "
		"  OR NOT EXISTS (SELECT 1 FROM tasks p WHERE p.id = t.parent_id)"
		" UNION ALL SELECT c.id, w.depth + 1, w.path || printf('%012d', c.id) FROM tasks c "
		"  JOIN walk w ON c.parent_id = w.id WHERE w.depth < 60)"
		"SELECT t.id, w.depth, t.level, t.title, t.status, t.priority, t.assignee_session, t.next_action, "
		" (SELECT r.session_id FROM current_refs r WHERE r.node_type = t.level AND r.node_id = t.id "
		"   AND r.status = 'active' ORDER BY r.id LIMIT 1), "
		" (SELECT json_group_array(json_array(s.title, s.status)) FROM "
		"   (SELECT title, status FROM steps WHERE task_id = t.id ORDER BY order_no) s), "
		" c.step_title, c.created_at, t.updated_at "
		"FROM walk w JOIN tasks t ON t.id = w.id "
		"LEFT JOIN checkpoints c ON c.id = (SELECT max(id) FROM checkpoints WHERE task_id = t.id) "
		"ORDER BY w.path", "");
	int rc;
	bool any = false;

	header(r, "tasks.md", "Tasks");
	fputs("The task tree. Cases list their steps as checkboxes (ticked: done) and the session holding them.\n\n",
	      r->f);
	if (!st)
		return ORCH_EINTERNAL;
	while ((rc = orch_sql_step(r->ctx, st)) == ORCH_ROW) {
		int depth = orch_stmt_column_int(st, 1);
		int64_t id = orch_stmt_column_int64(st, 0);
		bool done = strcmp(col(st, 4), "done") == 0;

		any = true;
		fprintf(r->f, "%*s- <a id=\"task-%lld\"></a>%s#%lld ", depth * 2, "", (long long)id,
			done ? "~~" : "", (long long)id);
		text(r->f, col(st, 2));
		fputs(": ", r->f);
		text(r->f, col(st, 3));
		fprintf(r->f, "%s — **", done ? "~~" : "");
		text(r->f, col(st, 4));
		fputs("**", r->f);
		if (orch_stmt_column_int64(st, 5))
			fprintf(r->f, ", priority %lld", (long long)orch_stmt_column_int64(st, 5));
		if (has(st, 8)) {
			fputs(", held by ", r->f);
			session_link(r, orch_stmt_column_int64(st, 8));
		}
		if (has(st, 6)) {
			fputs(", assigned to ", r->f);
			owner_link(r, col(st, 6));
		}
		if (has(st, 7) && *col(st, 7)) {
			fputs(", next: ", r->f);
			text(r->f, col(st, 7));
		}
		fputc('\n', r->f);
		json_t *steps = json_loads(col(st, 9), 0, NULL);
		size_t i;
		json_t *s;
		json_array_foreach(steps, i, s) {
			const char *status = json_string_value(json_array_get(s, 1));
			fprintf(r->f, "%*s- [%c] ", depth * 2 + 2, "", status && strcmp(status, "done") == 0 ? 'x' : ' ');
			text(r->f, json_string_value(json_array_get(s, 0)) ? json_string_value(json_array_get(s, 0)) : "");
			fputc('\n', r->f);
		}
		json_decref(steps);
		if (has(st, 10)) {
			fprintf(r->f, "%*s- last checkpoint: ", depth * 2 + 2, "");
			text(r->f, col(st, 10));
			fputs(" at ", r->f);
			stamp(r->f, orch_stmt_column_int64(st, 11));
			fputc('\n', r->f);
		}
	}
	orch_stmt_reset(st);
	if (!any)
		fputs("No tasks.\n", r->f);
	return rc == ORCH_DONE ? 0 : ORCH_EINTERNAL;
}

/* ---- plan.md ---- */

/* A label inside a mermaid "..." string: characters that could end or break it as entity codes. */
static void mermaid_text(FILE *f, const char *s, size_t max)
{
	size_t n = 0;

	for (; *s && n < max; s++, n++) {
		unsigned char c = (unsigned char)*s;
		if (c < 0x20)
			fputc(' ', f);
		else if (c < 0x80 && !((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
					strchr(" .,:-_/()+=?!'", c)))
			fprintf(f, "#%d;", c);
		else
			fputc(c, f);
	}
	if (*s)
		fputs("...", f);
}

static int plan_mermaid(rd *r)
{
	orch_ctx *ctx = r->ctx;
	orch_stmt *st;
	int64_t total = 0;
	int rc;

	if ((rc = orch_sql_int(ctx, &total, NULL, "SELECT count(*) FROM graph_nodes", "")))
		return rc;
	if (!total)
		return 0;
	fputs("```mermaid\nflowchart TD\n", r->f);
	st = orch_sql(ctx, "SELECT id, node_type, title, status, approval_state FROM graph_nodes ORDER BY id LIMIT ?",
		      "i", (int64_t)MERMAID_MAX);
	if (!st)
		return ORCH_EINTERNAL;
	while ((rc = orch_sql_step(ctx, st)) == ORCH_ROW) {
		const char *status = col(st, 3), *approval = col(st, 4);
		const char *cls = strcmp(approval, "pending") == 0 ? "pending"
				  : strcmp(status, "done") == 0 || strcmp(approval, "approved") == 0 ? "done"
				  : strcmp(status, "blocked") == 0 || strcmp(approval, "rejected") == 0 ? "blocked"
				  : strcmp(status, "in_progress") == 0 || strcmp(status, "in_review") == 0 ? "active"
				  : "todo";
		fprintf(r->f, "  n%lld[\"", (long long)orch_stmt_column_int64(st, 0));
		mermaid_text(r->f, col(st, 1), 20);
		fprintf(r->f, " #35;%lld: ", (long long)orch_stmt_column_int64(st, 0));
		mermaid_text(r->f, col(st, 2), 60);
		fputs(" (", r->f);
		mermaid_text(r->f, status, 20);
		fprintf(r->f, ")\"]:::%s\n", cls);
	}
	orch_stmt_reset(st);
	if (rc != ORCH_DONE)
		return ORCH_EINTERNAL;
	/* Only edges between drawn nodes (the first MERMAID_MAX by id). */
	int64_t last = 0;
	if ((rc = orch_sql_int(ctx, &last, NULL, "SELECT coalesce(max(id), 0) FROM (SELECT id FROM graph_nodes "
			       "ORDER BY id LIMIT ?)", "i", (int64_t)MERMAID_MAX)))
		return rc;
	/* Containment by parent (solid); every other edge dotted and named. */
	st = orch_sql(ctx, "SELECT g.parent_id, g.id, NULL FROM graph_nodes g WHERE g.id <= ?1 AND g.parent_id <= ?1 "
		      "AND EXISTS (SELECT 1 FROM graph_nodes p WHERE p.id = g.parent_id) "
		      "UNION ALL SELECT e.from_node_id, e.to_node_id, e.edge_type FROM graph_edges e "
		      "WHERE e.from_node_id <= ?1 AND e.to_node_id <= ?1 AND NOT (e.edge_type = 'contains' AND "
		      "EXISTS (SELECT 1 FROM graph_nodes n WHERE n.id = e.to_node_id AND n.parent_id = e.from_node_id)) "
		      "ORDER BY 3 NULLS FIRST, 1, 2", "i", last);
	if (!st)
		return ORCH_EINTERNAL;
	while ((rc = orch_sql_step(ctx, st)) == ORCH_ROW) {
		int64_t a = orch_stmt_column_int64(st, 0), b = orch_stmt_column_int64(st, 1);
		if (has(st, 2)) {
			fprintf(r->f, "  n%lld -.->|", (long long)a);
			mermaid_text(r->f, col(st, 2), 30);
			fprintf(r->f, "| n%lld\n", (long long)b);
		} else {
			fprintf(r->f, "  n%lld --> n%lld\n", (long long)a, (long long)b);
		}
	}
	orch_stmt_reset(st);
	if (rc != ORCH_DONE)
		return ORCH_EINTERNAL;
	fputs("  classDef todo fill:#f6f8fa,stroke:#57606a\n"
	      "  classDef active fill:#ddf4ff,stroke:#0969da\n"
	      "  classDef pending fill:#fff8c5,stroke:#9a6700\n"
	      "  classDef done fill:#dafbe1,stroke:#1a7f37\n"
	      "  classDef blocked fill:#ffebe9,stroke:#cf222e\n"
	      "```\n\n", r->f);
	if (total > MERMAID_MAX)
		fprintf(r->f, "The chart shows the first %d of %lld nodes; the list below has them all.\n\n",
			MERMAID_MAX, (long long)total);
	return 0;
}

/* A node's checklist and snapshots, indented under it. */
static int plan_details(rd *r, int64_t id, int indent)
{
	orch_ctx *ctx = r->ctx;
	orch_stmt *st = orch_sql(ctx, "SELECT item_text, status, facet FROM node_checklists WHERE node_id = ? "
				    "ORDER BY facet, order_no", "i", id);
	int rc;

	if (!st)
		return ORCH_EINTERNAL;
	while ((rc = orch_sql_step(ctx, st)) == ORCH_ROW) {
		fprintf(r->f, "%*s- [%c] ", indent, "", strcmp(col(st, 1), "done") == 0 ? 'x' : ' ');
		text(r->f, col(st, 0));
		if (strcmp(col(st, 2), "planning") != 0) {
			fputs(" (", r->f);
			text(r->f, col(st, 2));
			fputc(')', r->f);
		}
		fputc('\n', r->f);
	}
	orch_stmt_reset(st);
	if (rc != ORCH_DONE)
		return ORCH_EINTERNAL;
	st = orch_sql(ctx, "SELECT snapshot_type, summary, next_action, created_at, affected_files_json "
		      "FROM node_snapshots WHERE node_id = ? ORDER BY id", "i", id);
	if (!st)
		return ORCH_EINTERNAL;
	while ((rc = orch_sql_step(ctx, st)) == ORCH_ROW) {
		fprintf(r->f, "%*s- snapshot *", indent, "");
		text(r->f, col(st, 0));
		fputs("* at ", r->f);
		stamp(r->f, orch_stmt_column_int64(st, 3));
		if (has(st, 1)) {
			fputs(": ", r->f);
			text(r->f, col(st, 1));
		}
		if (has(st, 2)) {
			fputs("; next: ", r->f);
			text(r->f, col(st, 2));
		}
		if (has(st, 4) && strcmp(col(st, 4), "[]") != 0) {
			fputs("; files: ", r->f);
			code(r->f, col(st, 4));
		}
		fputc('\n', r->f);
	}
	orch_stmt_reset(st);
	return rc == ORCH_DONE ? 0 : ORCH_EINTERNAL;
}

static int render_plan(rd *r)
{
	orch_ctx *ctx = r->ctx;
	orch_stmt *st;
	int rc;
	bool any = false;

	header(r, "plan.md", "Plan");
	fputs("Initiatives, plans and slices with their checklists (ticked: done), snapshots and approval state.\n\n",
	      r->f);
	if ((rc = plan_mermaid(r)))
		return rc;
	st = orch_sql(ctx,
		"WITH RECURSIVE walk (id, depth, path) AS ("
		" SELECT id, 0, printf('%012d', id) FROM graph_nodes g WHERE parent_id IS NULL "
		"  OR NOT EXISTS (SELECT 1 FROM graph_nodes p WHERE p.id = g.parent_id)"
		" UNION ALL SELECT c.id, w.depth + 1, w.path || printf('%012d', c.id) FROM graph_nodes c "
		"  JOIN walk w ON c.parent_id = w.id WHERE w.depth < 60)"
		"SELECT g.id, w.depth, g.node_type, g.title, g.status, g.approval_state, g.owner_session_id, "
		" g.worktree_id, g.summary, g.risk_level, g.token_estimate, g.affected_files_json, g.facet "
		"FROM walk w JOIN graph_nodes g ON g.id = w.id ORDER BY w.path", "");
	if (!st)
		return ORCH_EINTERNAL;
	while ((rc = orch_sql_step(ctx, st)) == ORCH_ROW) {
		int64_t id = orch_stmt_column_int64(st, 0);
		int depth = orch_stmt_column_int(st, 1);

		if (!any)
			fputs("## Nodes\n\n", r->f);
		any = true;
		fprintf(r->f, "%*s- <a id=\"node-%lld\"></a>**", depth * 2, "", (long long)id);
		text(r->f, col(st, 2));
		fprintf(r->f, " #%lld: ", (long long)id);
		text(r->f, col(st, 3));
		fputs("** — ", r->f);
		text(r->f, col(st, 4));
		if (strcmp(col(st, 5), "none") != 0) {
			fputs(", approval **", r->f);
			text(r->f, col(st, 5));
			fputs("**", r->f);
		}
		if (has(st, 6)) {
			fputs(", owner ", r->f);
			session_link(r, orch_stmt_column_int64(st, 6));
		}
		if (has(st, 7))
			fprintf(r->f, ", [worktree %lld](worktrees.md#worktree-%lld)", (long long)orch_stmt_column_int64(st, 7),
				(long long)orch_stmt_column_int64(st, 7));
		if (has(st, 9))
			fprintf(r->f, ", risk %lld", (long long)orch_stmt_column_int64(st, 9));
		if (has(st, 10))
			fprintf(r->f, ", ~%lld tokens", (long long)orch_stmt_column_int64(st, 10));
		fputc('\n', r->f);
		if (has(st, 8) && *col(st, 8)) {
			fprintf(r->f, "%*s  ", depth * 2, "");
			text(r->f, col(st, 8));
			fputc('\n', r->f);
		}
		if (has(st, 11) && strcmp(col(st, 11), "[]") != 0) {
			fprintf(r->f, "%*s- files: ", depth * 2 + 2, "");
			code(r->f, col(st, 11));
			fputc('\n', r->f);
		}
		/* The walk's statement stays open; a node's details are other statements. */
		if ((rc = plan_details(r, id, depth * 2 + 2)) != 0) {
			orch_stmt_reset(st);
			return rc;
		}
	}
	orch_stmt_reset(st);
	if (!any)
		fputs("No plan yet.\n", r->f);
	return rc == ORCH_DONE ? 0 : ORCH_EINTERNAL;
}

/* ---- sessions.md ---- */

static int render_sessions(rd *r)
{
	orch_ctx *ctx = r->ctx;
	orch_stmt *st = orch_sql(ctx,
		"SELECT s.id, s.agent_role, s.owner, s.status, s.last_seen_at, " LIVE_SQL ", "
		"NOT " LIVE_SQL " AND r.id IS NOT NULL AND s.status NOT IN ('closed', 'handoff_attached'), " REF_COLS ", "
		"s.intent, s.started_at, coalesce(nullif(s.heartbeat_timeout_seconds, 0), 120), s.session_root_worktree_id, "
		"(SELECT to_session_id FROM session_handoffs WHERE from_session_id = s.id), r.mode "
		"FROM sessions s " REF_JOIN "ORDER BY s.id", "i", r->at);
	int rc;
	bool any = false;

	header(r, "sessions.md", "Sessions");
	if (!st)
		return ORCH_EINTERNAL;
	while ((rc = orch_sql_step(ctx, st)) == ORCH_ROW) {
		int64_t id = orch_stmt_column_int64(st, 0);
		bool open = strcmp(col(st, 3), "closed") != 0 && strcmp(col(st, 3), "handoff_attached") != 0;

		any = true;
		fprintf(r->f, "## <a id=\"session-%lld\"></a>Session %lld: ", (long long)id, (long long)id);
		text(r->f, col(st, 1));
		fputs("\n\n- owner: ", r->f);
		text(r->f, col(st, 2));
		fputs("\n- status: **", r->f);
		text(r->f, col(st, 3));
		fputs("**", r->f);
		if (open)
			fputs(orch_stmt_column_int(st, 5) ? " (live)" : " (stale)", r->f);
		if (orch_stmt_column_int(st, 6))
			fputs(", a resume candidate", r->f);
		if (has(st, 18)) {
			fputs(", taken over by ", r->f);
			session_link(r, orch_stmt_column_int64(st, 18));
		}
		if (has(st, 14) && *col(st, 14)) {
			fputs("\n- intent: ", r->f);
			text(r->f, col(st, 14));
		}
		fputs("\n- started: ", r->f);
		stamp(r->f, orch_stmt_column_int64(st, 15));
		fputs("\n- last heartbeat: ", r->f);
		stamp(r->f, orch_stmt_column_int64(st, 4));
		fprintf(r->f, " (window %llds)", (long long)orch_stmt_column_int64(st, 16));
		if (has(st, 17))
			fprintf(r->f, "\n- session root: [worktree %lld](worktrees.md#worktree-%lld)",
				(long long)orch_stmt_column_int64(st, 17), (long long)orch_stmt_column_int64(st, 17));
		fputs("\n- holds: ", r->f);
		if (has(st, 7)) {
			ref_target(r, col(st, 7), orch_stmt_column_int64(st, 8), col(st, 9));
			if (has(st, 10)) {
				fputs(" (", r->f);
				text(r->f, col(st, 10));
				fputc(')', r->f);
			}
			fputs(", mode ", r->f);
			text(r->f, col(st, 19));
			if (has(st, 13) && *col(st, 13)) {
				fputs("; next: ", r->f);
				text(r->f, col(st, 13));
			}
		} else {
			fputs("nothing", r->f);
		}
		if (has(st, 11)) {
			fputs("\n- last checkpoint: ", r->f);
			text(r->f, col(st, 11));
			fputs(" at ", r->f);
			stamp(r->f, orch_stmt_column_int64(st, 12));
		}
		fputs("\n\n", r->f);
	}
	orch_stmt_reset(st);
	if (!any)
		fputs("No sessions.\n", r->f);
	return rc == ORCH_DONE ? 0 : ORCH_EINTERNAL;
}

/* ---- worktrees.md ---- */

static int render_worktrees(rd *r)
{
	orch_ctx *ctx = r->ctx;
	orch_stmt *st = orch_sql(ctx,
		"SELECT w.id, w.kind, w.branch, w.owner_session_id, w.parent_worktree_id, w.status, w.merge_state, "
		"w.merged_at, coalesce(w.merge_commit, (SELECT q.merged_commit FROM merge_main_queue q "
		"WHERE q.from_worktree_id = w.id AND q.merged_commit IS NOT NULL ORDER BY q.id DESC LIMIT 1)), "
		"w.path, w.task_id, w.host, EXISTS (SELECT 1 FROM worktrees WHERE host <> '') "
		"FROM worktrees w ORDER BY w.id", "");
	int rc;
	bool any = false, hosts = false;

	header(r, "worktrees.md", "Worktrees");
	if (!st)
		return ORCH_EINTERNAL;
	while ((rc = orch_sql_step(ctx, st)) == ORCH_ROW) {
		int64_t id = orch_stmt_column_int64(st, 0);
		if (!any) {
			/* The host column only once some worktree has one (several machines). */
			hosts = orch_stmt_column_int64(st, 12) != 0;
			fputs(hosts ? "| worktree | kind | branch | owner | parent | status | merge | path | host |\n"
				      "|---|---|---|---|---|---|---|---|---|\n"
				    : "| worktree | kind | branch | owner | parent | status | merge | path |\n"
				      "|---|---|---|---|---|---|---|---|\n", r->f);
		}
		any = true;
		fprintf(r->f, "| <a id=\"worktree-%lld\"></a>#%lld | ", (long long)id, (long long)id);
		text(r->f, col(st, 1));
		fputs(" | ", r->f);
		code(r->f, col(st, 2));
		fputs(" | ", r->f);
		if (has(st, 3))
			session_link(r, orch_stmt_column_int64(st, 3));
		else
			fputs("—", r->f);
		fputs(" | ", r->f);
		if (has(st, 4))
			fprintf(r->f, "[#%lld](#worktree-%lld)", (long long)orch_stmt_column_int64(st, 4),
				(long long)orch_stmt_column_int64(st, 4));
		else
			fputs("—", r->f);
		fputs(" | **", r->f);
		text(r->f, col(st, 5));
		fputs("** | ", r->f);
		text(r->f, has(st, 6) ? col(st, 6) : "—");
		if (has(st, 7)) {
			fputs(" at ", r->f);
			stamp(r->f, orch_stmt_column_int64(st, 7));
		}
		if (has(st, 8)) {
			fputs(", commit ", r->f);
			code(r->f, col(st, 8));
		}
		fputs(" | ", r->f);
		code(r->f, col(st, 9));
		if (hosts) {
			fputs(" | ", r->f);
			if (*col(st, 11))
				code(r->f, col(st, 11));
			else
				fputs("—", r->f);
		}
		fputs(" |\n", r->f);
	}
	orch_stmt_reset(st);
	if (!any)
		fputs("No worktrees.\n", r->f);
	return rc == ORCH_DONE ? 0 : ORCH_EINTERNAL;
}

/* ---- locks.md ---- */

/* Active locks as a table (a lease past the state's moment is marked). */
static int lock_rows(rd *r, bool anchors)
{
	orch_stmt *st = orch_sql(r->ctx, "SELECT id, scope_type, scope_path, owner_session, lease_until, heartbeat_at "
				    "FROM locks WHERE state = 'active' ORDER BY id", "");
	int rc;
	bool any = false;

	if (!st)
		return ORCH_EINTERNAL;
	while ((rc = orch_sql_step(r->ctx, st)) == ORCH_ROW) {
		int64_t id = orch_stmt_column_int64(st, 0), lease = orch_stmt_column_int64(st, 4);
		if (!any)
			fputs("| lock | scope | owner | lease until | last renewed |\n|---|---|---|---|---|\n", r->f);
		any = true;
		if (anchors)
			fprintf(r->f, "| <a id=\"lock-%lld\"></a>#%lld | ", (long long)id, (long long)id);
		else
			fprintf(r->f, "| [#%lld](locks.md#lock-%lld) | ", (long long)id, (long long)id);
		text(r->f, col(st, 1));
		fputc(' ', r->f);
		code(r->f, col(st, 2));
		fputs(" | ", r->f);
		owner_link(r, col(st, 3));
		fputs(" | ", r->f);
		stamp(r->f, lease);
		if (lease <= r->at)
			fputs(" (lapsed)", r->f);
		fputs(" | ", r->f);
		if (anchors)
			stamp(r->f, orch_stmt_column_int64(st, 5));
		else
			age(r, orch_stmt_column_int64(st, 5));
		fputs(" |\n", r->f);
	}
	orch_stmt_reset(st);
	fputs(any ? "\n" : "No active locks.\n\n", r->f);
	return rc == ORCH_DONE ? 0 : ORCH_EINTERNAL;
}

static int render_locks(rd *r)
{
	int rc;

	header(r, "locks.md", "Locks");
	fputs("Active file and prefix locks. A lease that had passed at the state's last change is marked "
	      "lapsed: it no longer conflicts.\n\n", r->f);
	if ((rc = lock_rows(r, true)))
		return rc;
	orch_stmt *st = orch_sql(r->ctx, "SELECT state, count(*) FROM locks WHERE state <> 'active' "
				    "GROUP BY state ORDER BY state", "");
	if (!st)
		return ORCH_EINTERNAL;
	fputs("Locks no longer held: ", r->f);
	counts(r, st, &rc);
	fputs(".\n", r->f);
	return rc;
}

/* ---- merges.md ---- */

/* Main-merge queue items as a table: queued only (oldest first) or all (by id). */
static int queue_rows(rd *r, bool queued_only)
{
	orch_stmt *st = queued_only
		? orch_sql(r->ctx, "SELECT id, session_id, from_worktree_id, target_branch, state, merged_commit, "
			   "error_message, created_at, updated_at FROM merge_main_queue WHERE state = 'queued' "
			   "ORDER BY id", "")
		: orch_sql(r->ctx, "SELECT id, session_id, from_worktree_id, target_branch, state, merged_commit, "
			   "error_message, created_at, updated_at FROM merge_main_queue ORDER BY id", "");
	int rc;
	bool any = false;

	if (!st)
		return ORCH_EINTERNAL;
	while ((rc = orch_sql_step(r->ctx, st)) == ORCH_ROW) {
		int64_t id = orch_stmt_column_int64(st, 0);
		if (!any)
			fputs("| item | session | worktree | into | state | since |\n|---|---|---|---|---|---|\n", r->f);
		any = true;
		if (queued_only)
			fprintf(r->f, "| [#%lld](merges.md#queue-%lld) | ", (long long)id, (long long)id);
		else
			fprintf(r->f, "| <a id=\"queue-%lld\"></a>#%lld | ", (long long)id, (long long)id);
		session_link(r, orch_stmt_column_int64(st, 1));
		fprintf(r->f, " | [#%lld](worktrees.md#worktree-%lld) | ", (long long)orch_stmt_column_int64(st, 2),
			(long long)orch_stmt_column_int64(st, 2));
		code(r->f, col(st, 3));
		fputs(" | **", r->f);
		text(r->f, col(st, 4));
		fputs("**", r->f);
		if (has(st, 5)) {
			fputc(' ', r->f);
			code(r->f, col(st, 5));
		}
		if (has(st, 6)) {
			fputs(": ", r->f);
			text(r->f, col(st, 6));
		}
		fputs(" | ", r->f);
		stamp(r->f, orch_stmt_column_int64(st, queued_only ? 7 : 8));
		fputs(" |\n", r->f);
	}
	orch_stmt_reset(st);
	fputs(any ? "\n" : queued_only ? "Nothing queued.\n\n" : "No items.\n\n", r->f);
	return rc == ORCH_DONE ? 0 : ORCH_EINTERNAL;
}

static int render_merges(rd *r)
{
	orch_ctx *ctx = r->ctx;
	orch_stmt *st;
	int rc;
	bool any = false;

	header(r, "merges.md", "Merges");
	fputs("## <a id=\"main-merge-lock\"></a>Main merge lock\n\n", r->f);
	st = orch_sql(ctx, "SELECT state, holder_session_id, lease_until FROM merge_main_lock WHERE id = 1", "");
	if (!st)
		return ORCH_EINTERNAL;
	if ((rc = orch_sql_step(ctx, st)) == ORCH_ROW && has(st, 1) && strcmp(col(st, 0), "locked") == 0) {
		fputs("**locked** by ", r->f);
		session_link(r, orch_stmt_column_int64(st, 1));
		if (has(st, 2)) {
			fputs(" until ", r->f);
			stamp(r->f, orch_stmt_column_int64(st, 2));
			if (orch_stmt_column_int64(st, 2) <= r->at)
				fputs(" (lapsed)", r->f);
		}
		fputs("\n\n", r->f);
	} else if (rc == ORCH_ROW || rc == ORCH_DONE) {
		fputs("unlocked\n\n", r->f);
		rc = ORCH_ROW;
	}
	orch_stmt_reset(st);
	if (rc != ORCH_ROW)
		return ORCH_EINTERNAL;
	fputs("## <a id=\"main-merge-queue\"></a>Main-merge queue\n\n", r->f);
	if ((rc = queue_rows(r, false)))
		return rc;
	fputs("## <a id=\"merge-requests\"></a>Merge requests\n\n", r->f);
	st = orch_sql(ctx, "SELECT m.id, m.feature_task_id, t.title, m.status, m.reviewer_session, m.notes_json, "
		      "m.updated_at FROM merge_requests m LEFT JOIN tasks t ON t.id = m.feature_task_id ORDER BY m.id", "");
	if (!st)
		return ORCH_EINTERNAL;
	while ((rc = orch_sql_step(ctx, st)) == ORCH_ROW) {
		int64_t id = orch_stmt_column_int64(st, 0);
		if (!any)
			fputs("| request | feature | status | reviewer | notes | updated |\n|---|---|---|---|---|---|\n", r->f);
		any = true;
		fprintf(r->f, "| <a id=\"merge-request-%lld\"></a>#%lld | [#%lld](tasks.md#task-%lld) ", (long long)id,
			(long long)id, (long long)orch_stmt_column_int64(st, 1), (long long)orch_stmt_column_int64(st, 1));
		text(r->f, col(st, 2));
		fputs(" | **", r->f);
		text(r->f, col(st, 3));
		fputs("** | ", r->f);
		text(r->f, has(st, 4) ? col(st, 4) : "—");
		fputs(" | ", r->f);
		if (has(st, 5))
			code(r->f, col(st, 5));
		fputs(" | ", r->f);
		stamp(r->f, orch_stmt_column_int64(st, 6));
		fputs(" |\n", r->f);
	}
	orch_stmt_reset(st);
	if (!any)
		fputs("No merge requests.\n", r->f);
	return rc == ORCH_DONE ? 0 : ORCH_EINTERNAL;
}

static int (*const renderers[])(rd *r) = {
	render_index, render_tasks, render_plan, render_sessions, render_worktrees, render_locks, render_merges,
};
_Static_assert(sizeof(renderers) / sizeof(renderers[0]) == NFILES, "one renderer per file");

/* ---- mirror.refresh ---- */

/* `s` without leading and trailing blanks (caller frees). */
static char *trimmed(const char *s)
{
	size_t n;

	while (*s == ' ' || *s == '\t' || *s == '\n' || *s == '\r')
		s++;
	n = strlen(s);
	while (n && strchr(" \t\n\r", s[n - 1]))
		n--;
	return strndup(s, n);
}

/*
 * The role rule: the role is requester_role, or, when requester_session_id
 * is given (implied under sessions/<id>/ctl/), that session's agent_role,
 * which a requester_role given beside it must repeat.
 */
static int check_role(orch_ctx *ctx, json_t *p)
{
	char *role = NULL, *given = orch_param_has(p, "requester_role")
					   ? trimmed(orch_param_str(p, "requester_role", "")) : NULL;
	int rc = 0;

	if (orch_param_has(p, "requester_session_id")) {
		int64_t sid = orch_param_int(p, "requester_session_id", 0);
		orch_stmt *st = orch_sql(ctx, "SELECT agent_role FROM sessions WHERE id = ?", "i", sid);
		if (!st) {
			rc = ORCH_EINTERNAL;
			goto out;
		}
		if ((rc = orch_sql_step(ctx, st)) == ORCH_ROW)
			role = trimmed(col(st, 0));
		orch_stmt_reset(st);
		if (rc != ORCH_ROW) {
			rc = rc == ORCH_DONE ? orch_error_set(ORCH_ENOTFOUND, "session %lld not found", (long long)sid)
					       : ORCH_EINTERNAL;
			goto out;
		}
		rc = 0;
		if (given && strcmp(given, role) != 0) {
			rc = orch_error_set(ORCH_EINVALID_PARAMS, "requester_role is implied by session %lld's agent_role "
					    "\"%s\" and must be that, got \"%s\"", (long long)sid, role, given);
			goto out;
		}
	} else {
		role = given;
		given = NULL;
	}
	if (!role || !*role)
		rc = orch_error_set(ORCH_EFORBIDDEN, "mirror.refresh is restricted to role=" ROLE
				    "; give requester_role (or call it from the session's ctl)");
	else if (strcmp(role, ROLE) != 0)
		rc = orch_error_set(ORCH_EFORBIDDEN, "mirror.refresh is restricted to role=" ROLE ", got \"%s\"", role);
out:
	free(role);
	free(given);
	return rc;
}

/* target_path: a repository-relative .md file outside .git (already normalised and confined by params). */
static int check_target(orch_ctx *ctx, const char *t)
{
	size_t n = strlen(t);

	(void)ctx;
	if (n <= 3 || strcmp(t + n - 3, ".md") != 0 || t[n - 4] == '/')
		return orch_error_set(ORCH_EINVALID_PARAMS, "target_path must name a .md file, got \"%s\"", t);
	if (strcmp(t, ".git") == 0 || strncmp(t, ".git/", 5) == 0)
		return orch_error_set(ORCH_EINVALID_PARAMS, "target_path must not be inside .git, got \"%s\"", t);
	return 0;
}

/* Remove a rendering directory (flat: files only) and say nothing if it is gone. */
static void rm_render_dir(const char *path)
{
	DIR *d = opendir(path);
	struct dirent *e;

	if (!d)
		return;
	while ((e = readdir(d)) != NULL)
		if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, ".."))
			unlinkat(dirfd(d), e->d_name, 0);
	closedir(d);
	rmdir(path);
}

/* The marker a rendering directory gets once the database has served it. */
#define SERVED_MARK ".served"

/*
 * Remove rendering directories under `root` that nothing needs: any but
 * `keep` and `keep2` that was served once (marked), or that is older than
 * STALE_DIR_MS (a rendering whose process died before its commit; a
 * rendering in progress is younger).
 */
static void sweep(const char *root, const char *keep, const char *keep2)
{
	DIR *d = opendir(root);
	struct dirent *e;
	int64_t now = orch_now_ms();

	if (!d)
		return;
	while ((e = readdir(d)) != NULL) {
		struct stat sb;
		char *path;
		if (strncmp(e->d_name, "r.", 2) != 0 || (keep && strcmp(e->d_name, keep) == 0) ||
		    (keep2 && strcmp(e->d_name, keep2) == 0))
			continue;
		if (asprintf(&path, "%s/%s", root, e->d_name) < 0)
			continue;
		char mark[512];
		snprintf(mark, sizeof(mark), "%s/" SERVED_MARK, e->d_name);
		bool served = faccessat(dirfd(d), mark, F_OK, 0) == 0;
		if (served || (fstatat(dirfd(d), e->d_name, &sb, AT_SYMLINK_NOFOLLOW) == 0 && S_ISDIR(sb.st_mode) &&
			       (int64_t)sb.st_mtim.tv_sec * 1000 < now - STALE_DIR_MS))
			rm_render_dir(path);
		free(path);
	}
	closedir(d);
}

/* Write and fsync a whole file; 0 or errno. */
static int fsync_path(const char *path, bool dir)
{
	int fd = open(path, (dir ? O_RDONLY | O_DIRECTORY : O_RDONLY) | O_CLOEXEC), rc = 0;

	if (fd < 0)
		return errno;
	if (fsync(fd) != 0)
		rc = errno;
	close(fd);
	return rc;
}

/* Render every file from the snapshot into directory `dir`; sizes[i] gets each size. */
static int render_all(orch_ctx *ctx, rd *r, const char *dir, json_t *sizes)
{
	int rc = 0;

	for (size_t i = 0; i < NFILES && !rc; i++) {
		char path[4096];
		struct stat sb;
		if ((size_t)snprintf(path, sizeof(path), "%s/%s", dir, files[i]) >= sizeof(path))
			return orch_error_set(ORCH_EINTERNAL, "mirror: path too long: %s/%s", dir, files[i]);
		/* Private like the rest of the state directory. */
		int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
		r->f = fd >= 0 ? fdopen(fd, "w") : NULL;
		if (!r->f && fd >= 0)
			close(fd);
		if (!r->f)
			return orch_error_set(ORCH_EINTERNAL, "mirror: cannot write %s: %s", path, strerror(errno));
		setvbuf(r->f, NULL, _IOFBF, 1 << 16);
		rc = renderers[i](r);
		if (fflush(r->f) != 0 || ferror(r->f) || fsync(fileno(r->f)) != 0)
			rc = rc ? rc : orch_error_set(ORCH_EINTERNAL, "mirror: cannot write %s: %s", path, strerror(errno));
		fclose(r->f);
		r->f = NULL;
		if (!rc && stat(path, &sb) != 0)
			rc = orch_error_set(ORCH_EINTERNAL, "mirror: %s: %s", path, strerror(errno));
		if (!rc)
			json_array_append_new(sizes, json_integer((json_int_t)sb.st_size));
	}
	(void)ctx;
	return rc;
}

/*
 * Step 1 (outside the writer lane, one read snapshot): the role, then every
 * file rendered into a new directory and stored in git as a tree.
 */
static int mirror_prepare(orch_ctx *ctx, json_t *p, json_t **out)
{
	rd r = {ctx, NULL, 0, 0, 0, 0};
	int64_t md_version = 0, md_at = 0, base_version = 0, base_at = 0;
	char root[4096], dir[4200], tree[ORCH_GIT_HEX_SIZE], blobs[NFILES][ORCH_GIT_HEX_SIZE];
	const char *target = orch_param_str(p, "target_path", NULL);
	json_t *sizes = json_array(), *bl;
	orch_stmt *st;
	int rc;

	*out = NULL;
	if ((rc = check_role(ctx, p)) || (target && (rc = check_target(ctx, target))))
		goto fail;
	st = orch_sql(ctx, "SELECT db_version, version_at, md_version, md_at, md_base_version, md_base_at "
		      "FROM mirror_meta WHERE id = 1", "");
	if (!st || orch_sql_step(ctx, st) != ORCH_ROW) {
		if (st)
			orch_stmt_reset(st);
		rc = orch_error_set(ORCH_EINTERNAL, "mirror state missing");
		goto fail;
	}
	r.version = orch_stmt_column_int64(st, 0);
	r.at = orch_stmt_column_int64(st, 1);
	md_version = orch_stmt_column_int64(st, 2);
	md_at = orch_stmt_column_int64(st, 3);
	base_version = orch_stmt_column_int64(st, 4);
	base_at = orch_stmt_column_int64(st, 5);
	orch_stmt_reset(st);
	/* The previous rendering of another db_version: the one served, unless it shows this very version. */
	if (md_version != r.version && md_version > 0) {
		base_version = md_version;
		base_at = md_at;
	} else if (md_version != r.version) {
		base_version = base_at = 0;
	}
	r.base_version = base_version;
	r.base_at = base_at;

	snprintf(root, sizeof(root), "%s/mirror", ctx->state_dir);
	if (mkdir(root, 0700) != 0 && errno != EEXIST) {
		rc = orch_error_set(ORCH_EINTERNAL, "mirror: cannot create %s: %s", root, strerror(errno));
		goto fail;
	}
	snprintf(dir, sizeof(dir), "%s/r.XXXXXX", root);
	if (!mkdtemp(dir)) {
		rc = orch_error_set(ORCH_EINTERNAL, "mirror: cannot create a directory in %s: %s", root, strerror(errno));
		goto fail;
	}
	if ((rc = render_all(ctx, &r, dir, sizes)) != 0)
		goto fail_dir;
	if (fsync_path(dir, true) != 0) {
		rc = orch_error_set(ORCH_EINTERNAL, "mirror: cannot sync %s: %s", dir, strerror(errno));
		goto fail_dir;
	}
	if ((rc = orch_git_mirror_tree(ctx->repo_path, dir, files, NFILES, blobs, tree)) != 0)
		goto fail_dir;
	bl = json_array();
	for (size_t i = 0; i < NFILES; i++)
		json_array_append_new(bl, json_string(blobs[i]));
	*out = json_pack("{s:s, s:s, s:I, s:I, s:I, s:I, s:s, s:o, s:o, s:b}", "root", root, "dir",
			 strrchr(dir, '/') + 1, "version", (json_int_t)r.version, "at", (json_int_t)r.at, "base_version",
			 (json_int_t)base_version, "base_at", (json_int_t)base_at, "tree", tree, "blobs", bl, "sizes", sizes,
			 "adopted", 0);
	return 0;
fail_dir:
	rm_render_dir(dir);
fail:
	json_decref(sizes);
	return rc;
}

/* The rendering directory of a prepared refresh, unless its write took it over. */
static void mirror_unprepare(json_t *prep)
{
	char path[4096];

	if (!prep || json_is_true(json_object_get(prep, "adopted")))
		return;
	snprintf(path, sizeof(path), "%s/%s", json_string_value(json_object_get(prep, "root")),
		 json_string_value(json_object_get(prep, "dir")));
	rm_render_dir(path);
}

/* A rendering directory taken over by the write: removed if it fails, served (and old ones swept) if it commits. */
typedef struct {
	char *root, *dir, *old_dir;
} dir_switch;

static void switch_rollback(void *arg)
{
	dir_switch *s = arg;
	char path[4096];

	snprintf(path, sizeof(path), "%s/%s", s->root, s->dir);
	rm_render_dir(path);
}

static void switch_commit(void *arg)
{
	dir_switch *s = arg;
	char path[4096];
	int fd;

	snprintf(path, sizeof(path), "%s/%s/" SERVED_MARK, s->root, s->dir);
	if ((fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0600)) >= 0)
		close(fd);
	/* The directory replaced stays for readers whose snapshot still names it; the ones before go. */
	sweep(s->root, s->dir, s->old_dir);
}

static void switch_free(void *arg)
{
	dir_switch *s = arg;

	free(s->root);
	free(s->dir);
	free(s->old_dir);
	free(s);
}

/*
 * Write index.md to <repo>/<rel> atomically: parents made as needed (never
 * through a symlink), a temporary file beside it renamed over it.
 */
static int write_target(orch_ctx *ctx, const char *rel, const char *src)
{
	char full[4096], tmp[4200], buf[1 << 16];
	struct stat sb;
	int in = -1, outfd = -1, rc = 0;
	ssize_t n;

	snprintf(full, sizeof(full), "%s/%s", ctx->repo_path, rel);
	if (strncmp(full, ctx->state_dir, strlen(ctx->state_dir)) == 0 && full[strlen(ctx->state_dir)] == '/')
		return orch_error_set(ORCH_EINVALID_PARAMS, "target_path must not be inside the state directory, got \"%s\"",
				      rel);
	for (char *s = full + strlen(ctx->repo_path) + 1; (s = strchr(s, '/')) != NULL; s++) {
		*s = '\0';
		if (lstat(full, &sb) != 0 && mkdir(full, 0755) != 0 && errno != EEXIST)
			rc = orch_error_set(ORCH_EINVALID_PARAMS, "target_path: cannot create %s: %s", full, strerror(errno));
		else if (lstat(full, &sb) != 0 || !S_ISDIR(sb.st_mode))
			rc = orch_error_set(ORCH_EINVALID_PARAMS, "target_path: %s is not a directory of the repository "
					    "(a symlink or a file)", full + strlen(ctx->repo_path) + 1);
		*s = '/';
		if (rc)
			return rc;
	}
	if (lstat(full, &sb) == 0 && !S_ISREG(sb.st_mode))
		return orch_error_set(ORCH_EINVALID_PARAMS, "target_path %s exists and is not a regular file", rel);
	snprintf(tmp, sizeof(tmp), "%s.orchfs-%d.tmp", full, (int)getpid());
	if ((in = open(src, O_RDONLY | O_CLOEXEC)) < 0 ||
	    (outfd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0644)) < 0) {
		rc = orch_error_set(ORCH_EINTERNAL, "target_path %s: %s", rel, strerror(errno));
		goto out;
	}
	while ((n = read(in, buf, sizeof(buf))) > 0)
		if (write(outfd, buf, (size_t)n) != n) {
			n = -1;
			break;
		}
	if (n < 0 || fsync(outfd) != 0 || rename(tmp, full) != 0) {
		rc = orch_error_set(ORCH_EINTERNAL, "target_path %s: %s", rel, strerror(errno));
		unlink(tmp);
	}
out:
	if (in >= 0)
		close(in);
	if (outfd >= 0)
		close(outfd);
	return rc;
}

/* The files whose blob differs from the one served, for the commit message ("" when none is served). */
static int changed_names(orch_ctx *ctx, json_t *blobs, char *out, size_t size)
{
	size_t used = 0;

	out[0] = '\0';
	for (size_t i = 0; i < NFILES; i++) {
		char *old = NULL;
		orch_stmt *st = orch_sql(ctx, "SELECT blob FROM mirror_files WHERE id = ?", "i", (int64_t)(i + 1));
		if (!st)
			return ORCH_EINTERNAL;
		if (orch_sql_step(ctx, st) == ORCH_ROW)
			old = strdup(col(st, 0));
		orch_stmt_reset(st);
		if (!old || strcmp(old, json_string_value(json_array_get(blobs, i))) != 0)
			used += (size_t)snprintf(out + used, used < size ? size - used : 0, "%s%s", used ? ", " : "",
						 files[i]);
		free(old);
	}
	return 0;
}

/*
 * Step 2 (writer lane, short): serve the new rendering if it differs and is
 * not older than the one served, commit it on refs/orchfs/mirror, record
 * md_version and md_path, write target_path.  No db_version bump.
 */
static int mirror_refresh(orch_ctx *ctx, json_t *p, json_t **result)
{
	json_t *prep = ctx->prepared, *status;
	const char *target = orch_param_str(p, "target_path", NULL), *md_path = target ? target : "mirror/index.md";
	const char *root = json_string_value(json_object_get(prep, "root"));
	const char *dir = json_string_value(json_object_get(prep, "dir"));
	const char *tree = json_string_value(json_object_get(prep, "tree"));
	json_t *blobs = json_object_get(prep, "blobs"), *sizes = json_object_get(prep, "sizes");
	int64_t version = json_integer_value(json_object_get(prep, "version"));
	int64_t db_version = 0, md_version = 0;
	char *md_tree = NULL, *old_dir = NULL, changed[256], msg[512], commit[ORCH_GIT_HEX_SIZE], src[4096];
	orch_stmt *st;
	int rc = 0;

	ctx->unchanged = true; /* the mirror's bookkeeping only: db_version stays */
	st = orch_sql(ctx, "SELECT db_version, md_version, md_tree, (SELECT dir FROM mirror_files WHERE id = 1) "
		      "FROM mirror_meta WHERE id = 1", "");
	if (!st || orch_sql_step(ctx, st) != ORCH_ROW) {
		if (st)
			orch_stmt_reset(st);
		return orch_error_set(ORCH_EINTERNAL, "mirror state missing");
	}
	db_version = orch_stmt_column_int64(st, 0);
	md_version = orch_stmt_column_int64(st, 1);
	md_tree = strdup(col(st, 2));
	old_dir = has(st, 3) ? strdup(col(st, 3)) : NULL;
	orch_stmt_reset(st);
	bool outdated_before = db_version != md_version;

	/* A refresh of another process that rendered a later state got in first: it stands, this one is dropped. */
	if (version < md_version)
		goto reply;
	if (strcmp(tree, md_tree) != 0) {
		orch_git_effect *fx = NULL;
		if ((rc = changed_names(ctx, blobs, changed, sizeof(changed))) != 0)
			goto out;
		for (size_t i = 0; i < NFILES && !rc; i++)
			rc = orch_sql_exec(ctx, "INSERT INTO mirror_files (id, name, dir, size, blob, changed_at) "
					   "VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (id) DO UPDATE SET dir = ?3, "
					   "size = ?4, changed_at = CASE WHEN blob = ?5 THEN changed_at ELSE ?6 END, blob = ?5",
					   "issisi", (int64_t)(i + 1), files[i], dir,
					   (int64_t)json_integer_value(json_array_get(sizes, i)),
					   json_string_value(json_array_get(blobs, i)), ctx->now);
		if (rc)
			goto out;
		snprintf(msg, sizeof(msg), "mirror: db_version %lld\n\nchanged: %s\n", (long long)version, changed);
		if ((rc = orch_git_mirror_commit(ctx->repo_path, tree, msg, commit, &fx)) != 0)
			goto out;
		if (fx)
			orch_txn_git(ctx, fx);
		dir_switch *s = calloc(1, sizeof(*s));
		s->root = strdup(root);
		s->dir = strdup(dir);
		s->old_dir = old_dir;
		old_dir = NULL;
		orch_txn_hook(ctx, switch_rollback, switch_commit, switch_free, s);
		json_object_set_new(prep, "adopted", json_true());
	}
	if ((rc = orch_sql_exec(ctx, "UPDATE mirror_meta SET md_version = ?1, md_tree = ?2, md_at = ?3, "
				"md_base_version = ?4, md_base_at = ?5, md_path = ?6, updated_at = max(updated_at, ?7) "
				"WHERE id = 1", "isiiisi", version, tree,
				(int64_t)json_integer_value(json_object_get(prep, "at")),
				(int64_t)json_integer_value(json_object_get(prep, "base_version")),
				(int64_t)json_integer_value(json_object_get(prep, "base_at")), md_path, ctx->now)) != 0)
		goto out;
	snprintf(src, sizeof(src), "%s/%s/index.md", root, dir);
	if (target && (rc = write_target(ctx, target, src)) != 0)
		goto out;
reply:
	if ((rc = orch_mirror_status_json(ctx, 1, &status)) != 0)
		goto out;
	*result = json_pack("{s:b, s:o, s:O}", "outdated_before_refresh", outdated_before, "mirror_status", status,
			    "path", json_object_get(status, "md_path"));
out:
	free(md_tree);
	free(old_dir);
	return rc;
}

static const orch_param no_params[] = {{NULL, 0, 0, NULL, NULL}};

static const orch_param refresh_params[] = {
	{"requester_role", ORCH_P_STR, 0,
	 "must be \"" ROLE "\" (trimmed, case-sensitive); under sessions/<id>/ctl/ the session's agent_role is the "
	 "role", NULL},
	{"target_path", ORCH_P_PATH, 0,
	 "a repository-relative .md path: index.md is also written there, atomically; md_path becomes it "
	 "(default: none, md_path mirror/index.md)", NULL},
	{"requester_session_id", ORCH_P_ID, 0,
	 "the session refreshing: its agent_role is the role (implied by sessions/<id>/ctl/)", NULL},
	{NULL, 0, 0, NULL, NULL},
};

const orch_method orch_mirror_methods[] = {
	{"mirror.status", mirror_status, 0, no_params,
	 "How far the markdown mirror is behind: db_version counts successful mutating calls, "
	 "md_version is the db_version last rendered.",
	 "{db_version, md_version, md_path, outdated, updated_at}", "{}", "none."},
	{"mirror.refresh", mirror_refresh, ORCH_M_WRITE, refresh_params,
	 "Render the whole state as markdown under mirror/ (index.md, tasks.md, plan.md, sessions.md, "
	 "worktrees.md, locks.md, merges.md) from one snapshot, and commit a changed rendering on "
	 "refs/orchfs/mirror. Role doc-mirror-manager only. Does not bump db_version: md_version becomes the "
	 "db_version rendered.",
	 "{outdated_before_refresh, mirror_status: {db_version, md_version, md_path, outdated, updated_at}, path}",
	 "{\"requester_role\": \"doc-mirror-manager\"}",
	 "forbidden (another role, or none); invalid_params (target_path not a .md file of the repository, "
	 "requester_role differing from the session's agent_role); not_found (requester_session_id); "
	 "git (the mirror commit); internal (writing the files).",
	 mirror_prepare, mirror_unprepare},
	{NULL, NULL, 0, NULL, NULL, NULL, NULL, NULL, NULL, NULL},
};
