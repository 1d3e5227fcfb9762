/*
 * FUSE low-level operations.  Every handler decodes the inode, asks tree.c
 * or ctl.c, and replies; core error codes become errno here and in ctl.c only.
 */
#define FUSE_USE_VERSION FUSE_MAKE_VERSION(3, 14)
#include <errno.h>
#include <fcntl.h>
#include <fuse_lowlevel.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "fs.h"

/*
 * Open files and directories are kept on one list so that whatever the
 * kernel has not released when the session ends (SIGTERM with descriptors
 * still open) is freed on the way out.  The list is under open_mu.
 */
typedef struct fs_open_node {
	struct fs_open_node *prev, *next;
} fs_open_node;

static pthread_mutex_t open_mu = PTHREAD_MUTEX_INITIALIZER;
static fs_open_node open_list = {&open_list, &open_list};

static void track(fs_open_node *n)
{
	pthread_mutex_lock(&open_mu);
	n->next = open_list.next;
	n->prev = &open_list;
	open_list.next->prev = n;
	open_list.next = n;
	pthread_mutex_unlock(&open_mu);
}

static void untrack(fs_open_node *n)
{
	pthread_mutex_lock(&open_mu);
	n->prev->next = n->next;
	n->next->prev = n->prev;
	pthread_mutex_unlock(&open_mu);
}

/*
 * An open file: a state-file snapshot or a ctl transaction.  Immutable
 * after open (ctl has its own lock).  A client killed in the middle of a
 * read can have the release served beside that read, so every request
 * holds a reference (`refs`, under open_mu) and the last one frees.
 */
typedef struct {
	fs_open_node link; /* first: the list frees through it */
	bool is_dir;
	int refs;
	fs_node node;
	fs_snap *snap;      /* state files: the rendering this open serves */
	fs_ctl *ctl;
	fs_evstream *ev;    /* events, events-since/<N>: the stream's position */
	orch_env *alive_env; /* sessions/<id>/alive: set while this open holds the session (node.id) */
} fs_handle;

/* An open directory: the listing taken at opendir. */
typedef struct {
	fs_open_node link;
	bool is_dir;
	fs_dirent *ents;
	size_t n;
} fs_dir;

static void handle_free(fs_handle *h)
{
	untrack(&h->link);
	fs_ctl_free(h->ctl);
	fs_evstream_close(h->ev);
	fs_snap_unref(h->snap);
	free(h);
}

static fs_handle *hold(struct fuse_file_info *fi)
{
	fs_handle *h = (fs_handle *)(uintptr_t)fi->fh;

	pthread_mutex_lock(&open_mu);
	h->refs++;
	pthread_mutex_unlock(&open_mu);
	return h;
}

/* A new open file of node `n` (its `sub` cleared for state files), tracked, with the open's reference. */
static fs_handle *handle_new(fs_node n)
{
	fs_handle *h = calloc(1, sizeof(*h));

	if (!h) {
		orch_log("out of memory");
		abort();
	}
	h->refs = 1;
	h->node = n;
	if (fs_node_type(n) != T_CTL)
		h->node.sub = 0;
	track(&h->link);
	return h;
}

static void put(fs_handle *h)
{
	pthread_mutex_lock(&open_mu);
	bool last = --h->refs == 0;
	pthread_mutex_unlock(&open_mu);
	if (!last)
		return;
	/* The last close of sessions/<id>/alive (exit, kill -9): the session is dropped now. */
	if (h->alive_env)
		fs_alive_close(h->alive_env, h->node.id);
	handle_free(h);
}

static void put_cb(void *h)
{
	put(h);
}

static void dir_free(fs_dir *d)
{
	untrack(&d->link);
	fs_dirents_free(d->ents, d->n);
	free(d);
}

/* After the loop ended: no other thread is left. */
static void free_all_open(void)
{
	while (open_list.next != &open_list) {
		fs_handle *h = (fs_handle *)open_list.next;
		if (h->is_dir)
			dir_free((fs_dir *)h);
		else
			handle_free(h);
	}
}

static orch_env *ENV(fuse_req_t req)
{
	return fuse_req_userdata(req);
}

/*
 * A request's context on a pooled read-only connection (no transaction
 * open yet).  Every read of the tree runs on one: never behind the writer
 * lane, git, or another process's write lock.
 */
static int reader(orch_env *env, orch_ctx *ctx)
{
	orch_store *st;

	if (orch_env_reader(env, &st) != 0) {
		orch_log("cannot open a read connection: %s", orch_error_last()->message);
		orch_error_clear();
		return -EIO;
	}
	orch_ctx_init(ctx, env, st, NULL);
	return 0;
}

static void reader_done(orch_ctx *ctx)
{
	orch_env_reader_put(ctx->env, ctx->store);
	ctx->store = NULL;
}

/*
 * How long the kernel may keep attributes.  A state file's inode is one
 * rendering and never changes (cache.c), so its attributes can be kept;
 * everything else (directories, links, session ctl files) changes in place.
 */
#define ATTR_IMMUTABLE 3600.0

static void set_time(struct stat *st, int64_t ms)
{
	st->st_mtim.tv_sec = st->st_ctim.tv_sec = st->st_atim.tv_sec = ms / 1000;
	st->st_mtim.tv_nsec = st->st_ctim.tv_nsec = st->st_atim.tv_nsec = (ms % 1000) * 1000000;
}

static void stat_init(struct stat *st, uint64_t ino)
{
	memset(st, 0, sizeof(*st));
	st->st_ino = ino;
	st->st_uid = getuid();
	st->st_gid = getgid();
	st->st_blksize = 4096;
}

/* A file's size and mtime from a rendering. */
static void file_stat(struct stat *st, fs_type t, size_t len, int64_t mtime)
{
	st->st_mode = S_IFREG | (t == T_HEARTBEAT ? 0660 : 0444);
	st->st_nlink = 1;
	st->st_size = (off_t)len;
	st->st_blocks = (st->st_size + 511) / 512;
	set_time(st, mtime);
}

/*
 * Fill `st` for node `n` (ctx: a reader, no transaction open) and say how
 * long the kernel may keep it.  A directory named by an id takes the mtime
 * of the file that shows its row (tasks/<id>/ that of task.json), so
 * `ls -lt tasks/` orders tasks by their last change; other directories and
 * links show the database's last change.  A state file's inode number is
 * its current version's.
 */
static int node_stat(orch_ctx *ctx, fs_node n, struct stat *st, double *timeout, uint64_t *generation)
{
	stat_init(st, fs_ino(n));
	set_time(st, fs_cache_db_mtime());
	*timeout = 0;
	*generation = 0;
	switch (fs_node_type(n)) {
	case T_DIR: {
		fs_node primary;
		st->st_mode = S_IFDIR | 0555;
		st->st_nlink = 2;
		if (fs_primary_file(n, &primary)) {
			int64_t m = fs_cache_mtime(primary);
			if (m)
				set_time(st, m);
		}
		return 0;
	}
	case T_CTL: {
		int64_t sid;
		const orch_method *m = fs_ctl_method(n, &sid);
		char *idle = m ? fs_ctl_idle_text(ctx, m, sid) : NULL;
		st->st_mode = S_IFREG | 0660;
		st->st_nlink = 1;
		st->st_size = idle ? (off_t)strlen(idle) : 0;
		free(idle);
		/* A global ctl file's size is its usage, fixed for the binary; a session's follows its last reply. */
		*timeout = n.kind == K_CTL ? 3600.0 : 0.0;
		return 0;
	}
	case T_LINK: {
		char *target;
		int rc = fs_readlink(ctx, n, &target);
		if (rc)
			return rc;
		st->st_mode = S_IFLNK | 0777;
		st->st_nlink = 1;
		st->st_size = (off_t)strlen(target);
		free(target);
		return 0;
	}
	case T_EVENTS:
	case T_ALIVE:
		/* A stream and a token: nothing to size; the mtime is the database's last change. */
		st->st_mode = S_IFREG | (fs_node_type(n) == T_ALIVE ? 0660 : 0444);
		st->st_nlink = 1;
		return 0;
	case T_FILE:
	case T_HEARTBEAT:
		if (fs_node_cached(n)) {
			fs_snap *s;
			uint64_t ino;
			bool direct;
			int rc = fs_cache_get(ctx, n, &s, &ino, generation, &direct);
			if (rc)
				return rc;
			st->st_ino = ino;
			file_stat(st, fs_node_type(n), s->len, s->mtime);
			fs_snap_unref(s);
			*timeout = direct ? 0 : ATTR_IMMUTABLE;
		} else {
			fs_rendering r;
			int rc = fs_render(ctx, n, &r);
			if (rc)
				return rc;
			file_stat(st, fs_node_type(n), r.len, r.stamp ? r.stamp : r.snapshot_at);
			fs_rendering_release(&r);
		}
		return 0;
	}
	return -EIO;
}

static void fs_lookup_op(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct fuse_entry_param e;
	orch_ctx ctx;
	fs_node child;
	int rc;

	memset(&e, 0, sizeof(e));
	if ((rc = reader(ENV(req), &ctx)) != 0) {
		fuse_reply_err(req, -rc);
		return;
	}
	fs_cache_sync(&ctx);
	if (orch_ctx_read_begin(&ctx) != 0) {
		orch_error_clear();
		rc = -EIO;
	} else {
		rc = fs_lookup(&ctx, fs_node_of(parent), name, &child);
		orch_ctx_read_end(&ctx);
	}
	/* A change committed while it rendered makes it render again (a few times at most). */
	for (int tries = 0; rc == 0; tries++) {
		rc = node_stat(&ctx, child, &e.attr, &e.attr_timeout, &e.generation);
		if (rc || fs_cache_looked_up(e.attr.st_ino, (size_t)e.attr.st_size,
					     (int64_t)e.attr.st_mtim.tv_sec * 1000 + e.attr.st_mtim.tv_nsec / 1000000,
					     tries == 3))
			break;
	}
	reader_done(&ctx);
	if (rc) {
		fuse_reply_err(req, -rc);
		return;
	}
	e.ino = e.attr.st_ino;
	/*
	 * A name never comes to mean another node (ids are not reused), so the
	 * kernel may keep the dentry; getattr and open still check that the
	 * node exists, so a lock that expired is ENOENT at once.
	 */
	e.entry_timeout = 3600;
	fuse_reply_entry(req, &e);
}

/* Whether `n` exists now (ctx: a reader, no transaction open). */
static bool exists_now(orch_ctx *ctx, fs_node n)
{
	bool found;

	if (orch_ctx_read_begin(ctx) != 0) {
		orch_error_clear();
		return false;
	}
	found = fs_exists(ctx, n);
	orch_ctx_read_end(ctx);
	return found;
}

static void fs_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	fs_node n = fs_node_of(ino);
	double timeout = 0;
	uint64_t generation;
	struct stat st;
	size_t len;
	int64_t mtime;
	orch_ctx ctx;
	int rc;

	(void)fi;
	switch (fs_cache_version(ino, &len, &mtime)) {
	case FS_VERSION_RETIRED:
		/* A rendering the name has moved away from: descriptors still read it, as it was. */
		stat_init(&st, ino);
		file_stat(&st, fs_node_type(n), len, mtime);
		fuse_reply_attr(req, &st, ATTR_IMMUTABLE);
		return;
	case FS_VERSION_GONE:
		fuse_reply_err(req, ESTALE);
		return;
	}
	if ((rc = reader(ENV(req), &ctx)) != 0) {
		fuse_reply_err(req, -rc);
		return;
	}
	fs_cache_sync(&ctx);
	n.sub = fs_node_type(n) == T_CTL ? n.sub : 0;
	/* Files and links are rendered or resolved below, which finds a vanished node itself. */
	if ((fs_node_type(n) == T_DIR || fs_node_type(n) == T_CTL || fs_node_type(n) == T_ALIVE) &&
	    !exists_now(&ctx, n))
		rc = -ENOENT;
	else
		rc = node_stat(&ctx, n, &st, &timeout, &generation);
	reader_done(&ctx);
	if (rc) {
		fuse_reply_err(req, -rc);
		return;
	}
	if (st.st_ino != ino && fs_cache_version(ino, &len, &mtime) == FS_VERSION_RETIRED) {
		/*
		 * The file changed (another process's commit, noticed just now):
		 * this inode keeps its own rendering's attributes, and the name,
		 * whose dentry is being dropped, moves to the new inode.
		 */
		stat_init(&st, ino);
		file_stat(&st, fs_node_type(n), len, mtime);
	} else {
		st.st_ino = ino;
	}
	fuse_reply_attr(req, &st, timeout);
}

/* session.heartbeat through the ordinary call path (the writer lane). */
static int heartbeat(orch_env *env, int64_t session_id)
{
	json_t *req = json_pack("{s:I}", "session_id", (json_int_t)session_id);
	char *reply = NULL;
	orch_ctx ctx;
	int rc;

	orch_ctx_init(&ctx, env, NULL, NULL);
	rc = orch_call(&ctx, "session.heartbeat", req, 0, &reply);
	json_decref(req);
	free(reply);
	return rc ? -fs_errno(rc) : 0;
}

/*
 * A heartbeat through sessions/<id>/heartbeat.  `echo > heartbeat` opens
 * and writes, `touch` opens and sets times: one gesture, several requests.
 * So file heartbeats of one session are coalesced to one a second; the
 * ctl method session.heartbeat always records.
 */
static int heartbeat_file(orch_env *env, int64_t session_id)
{
	static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
	static struct {
		int64_t sid, ms;
	} last[64]; /* under mu */
	int64_t now = orch_now_ms();
	size_t slot = (size_t)session_id % 64;
	bool coalesced;
	orch_ctx ctx;
	int rc;

	pthread_mutex_lock(&mu);
	coalesced = last[slot].sid == session_id && now - last[slot].ms < 1000;
	pthread_mutex_unlock(&mu);
	if (coalesced) {
		/* Coalesced, but a session closed meanwhile still refuses. */
		if ((rc = reader(env, &ctx)) != 0)
			return rc;
		if (orch_ctx_read_begin(&ctx) != 0) {
			orch_error_clear();
			rc = -EIO;
		} else {
			rc = orch_session_require_open(&ctx, session_id);
			rc = rc ? -fs_errno(rc) : 0;
			orch_ctx_read_end(&ctx);
		}
		reader_done(&ctx);
		return rc;
	}
	rc = heartbeat(env, session_id);
	if (!rc) {
		pthread_mutex_lock(&mu);
		last[slot].sid = session_id;
		last[slot].ms = now;
		pthread_mutex_unlock(&mu);
	}
	return rc;
}

static void fs_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set,
		       struct fuse_file_info *fi)
{
	fs_node n = fs_node_of(ino);
	fs_type t = fs_node_type(n);
	double timeout;
	struct stat st;
	orch_ctx ctx;
	int rc = 0;

	(void)fi;
	if (t != T_CTL && t != T_HEARTBEAT && t != T_ALIVE) {
		fuse_reply_err(req, EROFS);
		return;
	}
	/* Only truncation to 0 and times are accepted; they mean nothing but "touch". */
	if (to_set & ~(FUSE_SET_ATTR_SIZE | FUSE_SET_ATTR_ATIME | FUSE_SET_ATTR_MTIME | FUSE_SET_ATTR_ATIME_NOW |
		       FUSE_SET_ATTR_MTIME_NOW | FUSE_SET_ATTR_CTIME)) {
		fuse_reply_err(req, EROFS);
		return;
	}
	if ((to_set & FUSE_SET_ATTR_SIZE) && attr->st_size != 0) {
		fuse_reply_err(req, EINVAL);
		return;
	}
	if (t == T_HEARTBEAT && (to_set & (FUSE_SET_ATTR_ATIME | FUSE_SET_ATTR_MTIME | FUSE_SET_ATTR_ATIME_NOW |
					    FUSE_SET_ATTR_MTIME_NOW)))
		rc = heartbeat_file(ENV(req), n.id);
	uint64_t generation;
	if (!rc && (rc = reader(ENV(req), &ctx)) == 0) {
		rc = node_stat(&ctx, n, &st, &timeout, &generation);
		reader_done(&ctx);
	}
	if (rc) {
		fuse_reply_err(req, -rc);
		return;
	}
	fuse_reply_attr(req, &st, 0);
}

static void fs_readlink_op(fuse_req_t req, fuse_ino_t ino)
{
	char *target = NULL;
	orch_ctx ctx;
	int rc;

	if ((rc = reader(ENV(req), &ctx)) == 0) {
		rc = fs_readlink(&ctx, fs_node_of(ino), &target);
		reader_done(&ctx);
	}
	if (rc) {
		fuse_reply_err(req, -rc);
		return;
	}
	fuse_reply_readlink(req, target);
	free(target);
}

/*
 * The kernel's reply to an open (struct fuse_open_out and FOPEN_* of
 * linux/fuse.h).  libfuse 3.14 has no field for FOPEN_PARALLEL_DIRECT_WRITES:
 * without it the kernel holds the inode's lock through every direct write,
 * so all agents writing ctl/task.create would run one at a time, each
 * waiting for the other's commit.  Kernels older than 6.2 ignore the flag.
 */
struct open_out {
	uint64_t fh;
	uint32_t open_flags;
	uint32_t padding;
};
#define OPEN_DIRECT_IO (1u << 0)
#define OPEN_PARALLEL_DIRECT_WRITES (1u << 6)

static void reply_open_parallel(fuse_req_t req, uint64_t fh)
{
	struct open_out out = {fh, OPEN_DIRECT_IO | OPEN_PARALLEL_DIRECT_WRITES, 0};
	struct iovec iov = {&out, sizeof(out)};

	fuse_reply_iov(req, &iov, 1);
}

/* Open a ctl transaction file. */
static void open_ctl(fuse_req_t req, fs_node n, struct fuse_file_info *fi)
{
	int64_t sid;
	const orch_method *m = fs_ctl_method(n, &sid);
	orch_ctx ctx;
	fs_handle *h;
	bool found = m != NULL, reply_errors = false;

	if (found && sid) {
		if (reader(ENV(req), &ctx) != 0) {
			fuse_reply_err(req, EIO);
			return;
		}
		found = exists_now(&ctx, n);
		reply_errors = found && orch_session_ctl_errors_reply(&ctx, sid);
		reader_done(&ctx);
	}
	if (!found) {
		fuse_reply_err(req, ENOENT);
		return;
	}
	h = handle_new(n);
	h->ctl = fs_ctl_new(ENV(req), m, sid, reply_errors);
	(void)fi;
	reply_open_parallel(req, (uintptr_t)h);
}

/*
 * Open the change feed: a stream with its own position, served direct.
 * Offsets count this descriptor's bytes from its open; a read at the end
 * gets what is new (events.c), and seeking back a little re-reads.
 */
static void open_events(fuse_req_t req, fs_node n, struct fuse_file_info *fi)
{
	fs_evstream *s;
	int rc = fs_evstream_open(ENV(req), n.kind == K_EVENTS_SINCE, n.id, &s);
	fs_handle *h;

	if (rc) {
		fuse_reply_err(req, -rc);
		return;
	}
	h = handle_new(n);
	h->node.id = n.id;
	h->ev = s;
	fi->fh = (uintptr_t)h;
	fi->direct_io = 1;
	fi->keep_cache = 0;
	fi->noflush = 1;
	fuse_reply_open(req, fi);
}

/* Open sessions/<id>/alive: the session is held by this open until its release. */
static void open_alive(fuse_req_t req, fs_node n, struct fuse_file_info *fi)
{
	orch_ctx ctx;
	fs_handle *h;
	int rc;

	if ((rc = reader(ENV(req), &ctx)) != 0) {
		fuse_reply_err(req, -rc);
		return;
	}
	bool found = exists_now(&ctx, n);
	reader_done(&ctx);
	if (!found) {
		fuse_reply_err(req, ENOENT);
		return;
	}
	if ((rc = fs_alive_open(ENV(req), n.id)) != 0) {
		fuse_reply_err(req, -rc);
		return;
	}
	h = handle_new(n);
	h->alive_env = ENV(req);
	fi->fh = (uintptr_t)h;
	fi->direct_io = 1;
	fi->keep_cache = 0;
	fi->noflush = 1;
	fuse_reply_open(req, fi);
}

/* Open inode `ino` of `n`, a version the name has moved away from (see fs_open). */
static void open_retired(fuse_req_t req, fs_node n, fuse_ino_t ino, struct fuse_file_info *fi)
{
	fs_snap *s = fs_cache_retired_snap(ino);
	fs_handle *h;

	if (!s) {
		fuse_reply_err(req, ESTALE);
		return;
	}
	h = handle_new(n);
	h->snap = s;
	fi->fh = (uintptr_t)h;
	fi->direct_io = 0;
	fi->keep_cache = 1; /* the inode is this rendering */
	fi->noflush = 1;
	fuse_reply_open(req, fi);
}

static void fs_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	fs_node n = fs_node_of(ino);
	bool writing = (fi->flags & O_ACCMODE) != O_RDONLY;
	orch_ctx ctx;
	fs_handle *h;
	int rc = 0;

	switch (fs_node_type(n)) {
	case T_DIR:
		fuse_reply_err(req, EISDIR);
		return;
	case T_LINK:
		fuse_reply_err(req, ELOOP);
		return;
	case T_CTL:
		open_ctl(req, n, fi);
		return;
	case T_EVENTS:
		if (writing || (fi->flags & O_TRUNC)) {
			fuse_reply_err(req, EROFS);
			return;
		}
		open_events(req, n, fi);
		return;
	case T_ALIVE:
		open_alive(req, n, fi);
		return;
	case T_FILE:
		if (writing || (fi->flags & O_TRUNC)) {
			fuse_reply_err(req, EROFS);
			return;
		}
		break;
	case T_HEARTBEAT:
		break;
	}
	if (fs_node_type(n) == T_HEARTBEAT && writing && (rc = heartbeat_file(ENV(req), n.id)) != 0) {
		fuse_reply_err(req, -rc);
		return;
	}
	size_t len;
	int64_t mtime;
	/*
	 * An inode the name has moved away from: opened whole as it was when
	 * this daemon's writer moved the name (the open walked the name while
	 * that write was in flight); else ESTALE, and the kernel looks the
	 * name up again and opens the new one, whose attributes match it.
	 */
	if (fs_node_cached(n) && fs_cache_version(ino, &len, &mtime) != FS_VERSION_CURRENT) {
		open_retired(req, n, ino, fi);
		return;
	}
	if ((rc = reader(ENV(req), &ctx)) != 0) {
		fuse_reply_err(req, -rc);
		return;
	}
	h = handle_new(n);
	bool cached = false;
	if (fs_node_cached(n)) {
		uint64_t cur, generation;
		fs_cache_sync(&ctx);
		bool direct;
		rc = fs_cache_get(&ctx, h->node, &h->snap, &cur, &generation, &direct);
		if (!rc && cur != ino) {
			/* It moved during this open. */
			reader_done(&ctx);
			handle_free(h);
			open_retired(req, n, ino, fi);
			return;
		}
		cached = !rc && !direct;
	} else {
		fs_rendering r;
		if ((rc = fs_render(&ctx, h->node, &r)) == 0)
			h->snap = fs_snap_new(r.data, r.len, r.stamp ? r.stamp : r.snapshot_at, r.mapped);
	}
	reader_done(&ctx);
	if (rc) {
		handle_free(h);
		fuse_reply_err(req, -rc);
		return;
	}
	/*
	 * Cached: this inode is this rendering, so the kernel's pages are too.
	 * Direct: a file that is not cached (rendered at every open), or one
	 * with no version free to move to: every read is served from this
	 * open's snapshot.
	 */
	fi->fh = (uintptr_t)h;
	fi->direct_io = !cached;
	fi->keep_cache = cached;
	fi->noflush = 1; /* a state file has nothing to flush: close costs no round trip */
	fuse_reply_open(req, fi);
}

static void reply_range(fuse_req_t req, const char *buf, size_t len, size_t size, off_t off)
{
	if (off < 0 || (size_t)off >= len) {
		fuse_reply_buf(req, NULL, 0);
		return;
	}
	fuse_reply_buf(req, buf + off, len - (size_t)off < size ? len - (size_t)off : size);
}

static void read_handle(fuse_req_t req, fs_handle *h, size_t size, off_t off)
{
	if (h->ctl) {
		const char *out;
		size_t n;
		int rc = fs_ctl_read(h->ctl, off, size, &out, &n);
		if (rc) {
			fuse_reply_err(req, -rc);
			return;
		}
		fuse_reply_buf(req, out, n);
		return;
	}
	if (!h->snap) {
		fuse_reply_buf(req, NULL, 0); /* alive: nothing to read */
		return;
	}
	reply_range(req, h->snap->data, h->snap->len, size, off);
}

static void fs_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi)
{
	fs_handle *h = hold(fi);

	(void)ino;
	if (h->ev) {
		/* Answered now or when there is news; the reference goes with the answer. */
		fs_evstream_read(req, h->ev, off, size, (fi->flags & O_NONBLOCK) != 0, put_cb, h);
		return;
	}
	read_handle(req, h, size, off);
	put(h);
}

static void fs_poll(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi, struct fuse_pollhandle *ph)
{
	fs_handle *h = hold(fi);
	unsigned revents;

	(void)ino;
	if (h->ev) {
		revents = fs_evstream_poll(h->ev, ph);
	} else {
		/* Everything else is always ready, as a regular file is. */
		revents = POLLIN | POLLRDNORM | (h->ctl || h->alive_env ? POLLOUT | POLLWRNORM : 0);
		if (ph)
			fuse_pollhandle_destroy(ph);
	}
	put(h);
	fuse_reply_poll(req, revents);
}

/* Whether the writing process was signalled (FUSE interrupt): a blocking call (wait) stops. */
static bool write_interrupted(void *req)
{
	return fuse_req_interrupted(req) != 0;
}

static void fs_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size, off_t off,
		     struct fuse_file_info *fi)
{
	fs_handle *h = hold(fi);
	int rc;

	(void)off;
	if (h->ctl) {
		rc = fs_ctl_write(ENV(req), h->ctl, buf, size, true, write_interrupted, req);
		if (rc == FS_CTL_PENDING) {
			/* A wait with nothing to report yet: answered later, holding no thread; the reference goes with it. */
			fs_events_park_ctl(req, h->ctl, size, put_cb, h);
			return;
		}
	} else if (fs_node_type(fs_node_of(ino)) == T_HEARTBEAT)
		rc = heartbeat_file(ENV(req), h->node.id);
	else if (h->alive_env)
		rc = 0; /* alive: what is written means nothing; holding it open is what counts */
	else
		rc = -EROFS;
	put(h);
	if (rc) {
		fuse_reply_err(req, -rc);
		return;
	}
	fuse_reply_write(req, size);
}

static void fs_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	fs_handle *h = hold(fi);
	int rc = h->ctl ? fs_ctl_flush(h->ctl) : 0;

	(void)ino;
	put(h);
	fuse_reply_err(req, -rc);
}

static void fs_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	(void)ino;
	put((fs_handle *)(uintptr_t)fi->fh);
	fuse_reply_err(req, 0);
}

static void fs_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	fs_node n = fs_node_of(ino);
	fs_dir *d;
	orch_ctx ctx;
	int rc;

	if ((rc = reader(ENV(req), &ctx)) != 0) {
		fuse_reply_err(req, -rc);
		return;
	}
	fs_cache_sync(&ctx);
	d = calloc(1, sizeof(*d));
	d->is_dir = true;
	track(&d->link);
	if (orch_ctx_read_begin(&ctx) != 0) {
		orch_error_clear();
		rc = -EIO;
	} else {
		rc = fs_exists(&ctx, n) ? fs_list(&ctx, n, &d->ents, &d->n) : -ENOENT;
		orch_ctx_read_end(&ctx);
	}
	reader_done(&ctx);
	if (rc) {
		dir_free(d);
		fuse_reply_err(req, -rc);
		return;
	}
	fi->fh = (uintptr_t)d;
	fuse_reply_open(req, fi);
}

static void fs_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi)
{
	fs_dir *d = (fs_dir *)(uintptr_t)fi->fh;
	char *buf = calloc(1, size);
	size_t used = 0;

	/* Offsets: 0 ".", 1 "..", 2+i entry i; each entry's off is the next one's. */
	for (off_t i = off; i < (off_t)d->n + 2; i++) {
		struct stat st = {0};
		const char *name;
		if (i == 0) {
			name = ".";
			st.st_ino = ino;
			st.st_mode = S_IFDIR;
		} else if (i == 1) {
			name = "..";
			st.st_ino = 1;
			st.st_mode = S_IFDIR;
		} else {
			fs_dirent *e = &d->ents[i - 2];
			fs_type t = fs_node_type(e->node);
			name = e->name;
			st.st_ino = fs_cache_ino(e->node, NULL);
			st.st_mode = t == T_DIR ? S_IFDIR : t == T_LINK ? S_IFLNK : S_IFREG;
		}
		size_t need = fuse_add_direntry(req, buf + used, size - used, name, &st, i + 1);
		if (need > size - used)
			break;
		used += need;
	}
	fuse_reply_buf(req, buf, used);
	free(buf);
}

static void fs_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup)
{
	fs_cache_forget(ino, nlookup);
	fuse_reply_none(req);
}

static void fs_forget_multi(fuse_req_t req, size_t count, struct fuse_forget_data *forgets)
{
	for (size_t i = 0; i < count; i++)
		fs_cache_forget(forgets[i].ino, forgets[i].nlookup);
	fuse_reply_none(req);
}

static void fs_releasedir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	fs_dir *d = (fs_dir *)(uintptr_t)fi->fh;

	(void)ino;
	dir_free(d);
	fuse_reply_err(req, 0);
}

/*
 * Everything that would add, remove or rename a node: the tree is not the
 * user's to shape (EROFS).  Except that a name created in a ctl directory
 * is a method that does not exist (lookup found none): ENOENT, so an agent
 * with a typo in the method name is not told the mount is read-only.
 */
static int create_errno(fuse_ino_t parent)
{
	fs_kind k = fs_node_of(parent).kind;

	return k == K_CTL_DIR || k == K_SCTL_DIR ? ENOENT : EROFS;
}

static void fs_mknod(fuse_req_t req, fuse_ino_t p, const char *name, mode_t mode, dev_t rdev)
{
	(void)name, (void)mode, (void)rdev;
	fuse_reply_err(req, create_errno(p));
}

static void fs_mkdir(fuse_req_t req, fuse_ino_t p, const char *name, mode_t mode)
{
	(void)p, (void)name, (void)mode;
	fuse_reply_err(req, EROFS);
}

static void fs_unlink(fuse_req_t req, fuse_ino_t p, const char *name)
{
	(void)p, (void)name;
	fuse_reply_err(req, EROFS);
}

static void fs_symlink(fuse_req_t req, const char *link, fuse_ino_t p, const char *name)
{
	(void)link, (void)p, (void)name;
	fuse_reply_err(req, EROFS);
}

static void fs_rename(fuse_req_t req, fuse_ino_t p, const char *name, fuse_ino_t np, const char *nn,
		      unsigned int flags)
{
	(void)p, (void)name, (void)np, (void)nn, (void)flags;
	fuse_reply_err(req, EROFS);
}

static void fs_link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t np, const char *nn)
{
	(void)ino, (void)np, (void)nn;
	fuse_reply_err(req, EROFS);
}

static void fs_create(fuse_req_t req, fuse_ino_t p, const char *name, mode_t mode, struct fuse_file_info *fi)
{
	(void)name, (void)mode, (void)fi;
	fuse_reply_err(req, create_errno(p));
}

static void fs_setxattr(fuse_req_t req, fuse_ino_t ino, const char *name, const char *value, size_t size,
			int flags)
{
	(void)ino, (void)name, (void)value, (void)size, (void)flags;
	fuse_reply_err(req, EROFS);
}

static void fs_removexattr(fuse_req_t req, fuse_ino_t ino, const char *name)
{
	(void)ino, (void)name;
	fuse_reply_err(req, EROFS);
}

static void fs_statfs(fuse_req_t req, fuse_ino_t ino)
{
	struct statvfs sv = {0};

	(void)ino;
	sv.f_bsize = sv.f_frsize = 4096;
	sv.f_namemax = 255;
	sv.f_flag = 0;
	fuse_reply_statfs(req, &sv);
}

static void fs_init(void *userdata, struct fuse_conn_info *conn)
{
	(void)userdata;
	/* Pages are dropped when cache.c says so, not whenever mtime moves. */
	conn->want &= ~FUSE_CAP_AUTO_INVAL_DATA;
	/* O_TRUNC arrives with open instead of as a separate truncate. */
	if (conn->capable & FUSE_CAP_ATOMIC_O_TRUNC)
		conn->want |= FUSE_CAP_ATOMIC_O_TRUNC;
	conn->want &= ~FUSE_CAP_WRITEBACK_CACHE;
}

static const struct fuse_lowlevel_ops fs_ops = {
	.init = fs_init,
	.lookup = fs_lookup_op,
	.forget = fs_forget,
	.forget_multi = fs_forget_multi,
	.getattr = fs_getattr,
	.setattr = fs_setattr,
	.readlink = fs_readlink_op,
	.mknod = fs_mknod,
	.mkdir = fs_mkdir,
	.unlink = fs_unlink,
	.rmdir = fs_unlink,
	.symlink = fs_symlink,
	.rename = fs_rename,
	.link = fs_link,
	.open = fs_open,
	.read = fs_read,
	.write = fs_write,
	.flush = fs_flush,
	.release = fs_release,
	.opendir = fs_opendir,
	.readdir = fs_readdir,
	.releasedir = fs_releasedir,
	.statfs = fs_statfs,
	.setxattr = fs_setxattr,
	.removexattr = fs_removexattr,
	.create = fs_create,
	.poll = fs_poll,
};

/*
 * --mirror-refresh: a thread that, every period, refreshes the markdown
 * mirror if the state moved since its last rendering, as the role the
 * rule asks for (the daemon's own refresh; calls of clients are still
 * checked).  Started once the writer runs, stopped before it stops.
 */
typedef struct {
	orch_env *env;
	int period_s;          /* immutable */
	pthread_mutex_t mu;
	pthread_cond_t cond;   /* signalled to stop */
	bool stop;             /* under mu */
	pthread_t thread;
} auto_refresh;

static void refresh_if_outdated(orch_env *env)
{
	orch_ctx ctx;
	char *reply = NULL;
	json_t *req = json_object(), *status = NULL;

	orch_ctx_init(&ctx, env, NULL, NULL);
	if (orch_call(&ctx, "mirror.status", req, 0, &reply) == 0)
		status = json_loads(reply, 0, NULL);
	free(reply);
	reply = NULL;
	if (json_is_true(json_object_get(json_object_get(status, "result"), "outdated"))) {
		json_object_set_new(req, "requester_role", json_string("doc-mirror-manager"));
		if (orch_call(&ctx, "mirror.refresh", req, 0, &reply) != 0)
			orch_log("mirror refresh failed: %s", orch_error_last()->message);
		free(reply);
	}
	orch_error_clear();
	json_decref(status);
	json_decref(req);
}

static void *auto_refresh_main(void *arg)
{
	auto_refresh *a = arg;
	struct timespec until;

	pthread_mutex_lock(&a->mu);
	while (!a->stop) {
		clock_gettime(CLOCK_MONOTONIC, &until);
		until.tv_sec += a->period_s;
		while (!a->stop && pthread_cond_timedwait(&a->cond, &a->mu, &until) != ETIMEDOUT)
			;
		if (a->stop)
			break;
		pthread_mutex_unlock(&a->mu);
		refresh_if_outdated(a->env);
		pthread_mutex_lock(&a->mu);
	}
	pthread_mutex_unlock(&a->mu);
	return NULL;
}

static bool auto_refresh_start(auto_refresh *a, orch_env *env, int period_s)
{
	pthread_condattr_t attr;

	a->env = env;
	a->period_s = period_s;
	a->stop = false;
	pthread_mutex_init(&a->mu, NULL);
	pthread_condattr_init(&attr);
	pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
	pthread_cond_init(&a->cond, &attr);
	pthread_condattr_destroy(&attr);
	if (pthread_create(&a->thread, NULL, auto_refresh_main, a) != 0) {
		orch_log("cannot start the mirror refresh thread");
		pthread_cond_destroy(&a->cond);
		pthread_mutex_destroy(&a->mu);
		return false;
	}
	return true;
}

static void auto_refresh_stop(auto_refresh *a)
{
	pthread_mutex_lock(&a->mu);
	a->stop = true;
	pthread_cond_broadcast(&a->cond);
	pthread_mutex_unlock(&a->mu);
	pthread_join(a->thread, NULL);
	pthread_cond_destroy(&a->cond);
	pthread_mutex_destroy(&a->mu);
}

int fs_main(orch_env *env, const fs_options *o)
{
	auto_refresh refresher;
	bool refreshing = false;
	struct fuse_args args = FUSE_ARGS_INIT(0, NULL);
	struct fuse_loop_config *cfg = NULL;
	struct fuse_session *se = NULL;
	int rc = 1;

	fuse_opt_add_arg(&args, "orchfs");
	fuse_opt_add_arg(&args, "-o");
	fuse_opt_add_arg(&args, "fsname=orchfs,subtype=orchfs");
	if (o->debug)
		fuse_opt_add_arg(&args, "-d");
	/* jansson's hash seed is set once here, before any thread could race to set it. */
	json_object_seed(0);
	env->committed = fs_cache_committed;
	env->publish = fs_cache_publish;
	env->committing = fs_cache_committing;
	env->committed_arg = env;
	se = fuse_session_new(&args, &fs_ops, sizeof(fs_ops), env);
	if (!se)
		goto out;
	if (fuse_set_signal_handlers(se) != 0)
		goto destroy;
	if (fuse_session_mount(se, o->mountpoint) != 0)
		goto signals;
	fs_cache_start(se, env, !o->single_thread);
	fs_events_start(env);
	/* Mutating calls run on a writer thread niced below the readers: checkouts yield to reads. */
	if (!o->single_thread && orch_env_start_writer(env, 5) != 0) {
		orch_log("%s; writes run on the FUSE threads", orch_error_last()->message);
		orch_error_clear();
	}
	fs_alive_reap(env);
	fs_alive_beat_start(env);
	if (o->mirror_refresh_s > 0)
		refreshing = auto_refresh_start(&refresher, env, o->mirror_refresh_s);
	if (o->on_mounted)
		o->on_mounted(o->arg);
	if (o->single_thread) {
		rc = fuse_session_loop(se) < 0 ? 1 : 0;
	} else {
		/*
		 * Many threads: reads run on pooled read-only connections beside
		 * the writer lane (orch_env.writer_mu), so a reader never waits
		 * for a method, its git work, or another process's write lock.
		 */
		cfg = fuse_loop_cfg_create();
		fuse_loop_cfg_set_clone_fd(cfg, 0);
		fuse_loop_cfg_set_idle_threads(cfg, 16);
		/*
		 * Threads are made as requests need them: a lookup must always
		 * find one, since a writer dropping a dentry waits for the
		 * lookups in that directory.
		 */
		fuse_loop_cfg_set_max_threads(cfg, 1024);
		rc = fuse_session_loop_mt(se, cfg) < 0 ? 1 : 0;
		fuse_loop_cfg_destroy(cfg);
	}
	if (refreshing)
		auto_refresh_stop(&refresher);
	fs_alive_beat_stop();
	fs_events_stop();
	fuse_session_unmount(se);
	orch_env_stop_writer(env);
	fs_cache_stop();
signals:
	fuse_remove_signal_handlers(se);
destroy:
	fuse_session_destroy(se);
out:
	env->committed = NULL;
	env->publish = NULL;
	env->committing = NULL;
	fuse_opt_free_args(&args);
	free_all_open();
	fs_alive_forget_all();
	return rc;
}
