/*
 * FUSE low-level operations.  Every handler decodes the inode, asks tree.c
 * or ctl.c, and replies; core error codes become errno here and in ctl.c only.
 */
#define FUSE_USE_VERSION FUSE_MAKE_VERSION(3, 14)
#include <errno.h>
#include <fcntl.h>
#include <fuse_lowlevel.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fs.h"

/*
 * Open files and directories are kept on one list so that whatever the
 * kernel has not released when the session ends (SIGTERM with descriptors
 * still open) is freed on the way out.
 */
typedef struct fs_open_node {
	struct fs_open_node *prev, *next;
} fs_open_node;

static fs_open_node open_list = {&open_list, &open_list};

static void track(fs_open_node *n)
{
	n->next = open_list.next;
	n->prev = &open_list;
	open_list.next->prev = n;
	open_list.next = n;
}

static void untrack(fs_open_node *n)
{
	n->prev->next = n->next;
	n->next->prev = n->prev;
}

/* An open file: a state-file snapshot or a ctl transaction. */
typedef struct {
	fs_open_node link; /* first: the list frees through it */
	bool is_dir;
	fs_node node;
	char *buf;
	size_t len;
	fs_ctl *ctl;
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
	free(h->buf);
	free(h);
}

static void dir_free(fs_dir *d)
{
	untrack(&d->link);
	fs_dirents_free(d->ents, d->n);
	free(d);
}

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

static orch_ctx *CTX(fuse_req_t req)
{
	return fuse_req_userdata(req);
}

static int64_t last_change(orch_ctx *ctx)
{
	int64_t ms = 0;

	orch_sql_int(ctx, &ms, NULL, "SELECT updated_at FROM mirror_meta WHERE id = 1", "");
	return ms;
}

/*
 * Fill `st` for node `n`.  State files are rendered to learn their exact
 * size unless `h` (an open snapshot) already holds the content.
 */
static int node_stat(orch_ctx *ctx, fs_node n, const fs_handle *h, struct stat *st)
{
	int64_t ms = last_change(ctx);

	memset(st, 0, sizeof(*st));
	st->st_ino = fs_ino(n);
	st->st_uid = getuid();
	st->st_gid = getgid();
	st->st_mtim.tv_sec = st->st_ctim.tv_sec = st->st_atim.tv_sec = ms / 1000;
	st->st_mtim.tv_nsec = st->st_ctim.tv_nsec = st->st_atim.tv_nsec = (ms % 1000) * 1000000;
	st->st_blksize = 4096;
	switch (fs_node_type(n)) {
	case T_DIR:
		st->st_mode = S_IFDIR | 0555;
		st->st_nlink = 2;
		return 0;
	case T_CTL: {
		int64_t sid;
		const orch_method *m = fs_ctl_method(n, &sid);
		char *idle = m ? fs_ctl_idle_text(m, sid) : NULL;
		st->st_mode = S_IFREG | 0660;
		st->st_nlink = 1;
		st->st_size = idle ? (off_t)strlen(idle) : 0;
		free(idle);
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
	case T_FILE:
	case T_HEARTBEAT:
		st->st_mode = S_IFREG | (fs_node_type(n) == T_HEARTBEAT ? 0660 : 0444);
		st->st_nlink = 1;
		if (h) {
			st->st_size = (off_t)h->len;
		} else {
			char *buf;
			size_t len;
			int rc = fs_render(ctx, n, &buf, &len);
			if (rc)
				return rc;
			free(buf);
			st->st_size = (off_t)len;
		}
		st->st_blocks = (st->st_size + 511) / 512;
		return 0;
	}
	return -EIO;
}

/*
 * State files, links, directories and session ctl files change at any
 * moment (size, target, mtime): their attributes are never cached.
 */
static double attr_timeout(fs_node n)
{
	/* A global ctl file's size is its usage, fixed for the binary; a session's follows its last reply. */
	return n.kind == K_CTL ? 3600.0 : 0.0;
}

static void fs_lookup_op(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	orch_ctx *ctx = CTX(req);
	struct fuse_entry_param e;
	fs_node child;
	int rc;

	memset(&e, 0, sizeof(e));
	if (orch_store_begin(ctx->store, false) != 0) {
		fuse_reply_err(req, EIO);
		return;
	}
	rc = fs_lookup(ctx, fs_node_of(parent), name, &child);
	orch_store_rollback(ctx->store);
	if (rc == 0)
		rc = node_stat(ctx, child, NULL, &e.attr);
	if (rc) {
		fuse_reply_err(req, -rc);
		return;
	}
	e.ino = fs_ino(child);
	e.attr_timeout = attr_timeout(child);
	/*
	 * A name never comes to mean another node (ids are not reused), so the
	 * kernel may keep the dentry; getattr and open still check that the
	 * node exists, so a lock that expired is ENOENT at once.
	 */
	e.entry_timeout = 3600;
	fuse_reply_entry(req, &e);
}

static void fs_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	orch_ctx *ctx = CTX(req);
	fs_node n = fs_node_of(ino);
	fs_handle *h = fi ? (fs_handle *)(uintptr_t)fi->fh : NULL;
	struct stat st;
	int rc;

	if (h && h->ctl)
		h = NULL;
	/* Files and links are rendered or resolved below, which finds a vanished node itself. */
	if (!h && (fs_node_type(n) == T_DIR || fs_node_type(n) == T_CTL) && !fs_exists(ctx, n)) {
		fuse_reply_err(req, ENOENT);
		return;
	}
	rc = node_stat(ctx, n, h && h->buf ? h : NULL, &st);
	if (rc) {
		fuse_reply_err(req, -rc);
		return;
	}
	fuse_reply_attr(req, &st, attr_timeout(n));
}

/* session.heartbeat through the ordinary call path. */
static int heartbeat(orch_ctx *ctx, int64_t session_id)
{
	json_t *req = json_pack("{s:I}", "session_id", (json_int_t)session_id);
	char *reply = NULL;
	int rc = orch_call(ctx, "session.heartbeat", req, 0, &reply);

	json_decref(req);
	free(reply);
	return rc ? -orch_error_errno(rc) : 0;
}

/*
 * A heartbeat through sessions/<id>/heartbeat.  `echo > heartbeat` opens
 * and writes, `touch` opens and sets times: one gesture, several requests.
 * So file heartbeats of one session are coalesced to one a second; the
 * ctl method session.heartbeat always records.
 */
static int heartbeat_file(orch_ctx *ctx, int64_t session_id)
{
	static struct {
		int64_t sid, ms;
	} last[64];
	int64_t now = orch_now_ms();
	size_t slot = (size_t)session_id % 64;
	int rc;

	if (last[slot].sid == session_id && now - last[slot].ms < 1000) {
		/* Coalesced, but a session closed meanwhile still refuses. */
		if (orch_store_begin(ctx->store, false) != 0)
			return -EIO;
		rc = orch_session_require_open(ctx, session_id);
		orch_store_rollback(ctx->store);
		return rc ? -orch_error_errno(rc) : 0;
	}
	rc = heartbeat(ctx, session_id);
	if (!rc) {
		last[slot].sid = session_id;
		last[slot].ms = now;
	}
	return rc;
}

static void fs_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set,
		       struct fuse_file_info *fi)
{
	orch_ctx *ctx = CTX(req);
	fs_node n = fs_node_of(ino);
	fs_type t = fs_node_type(n);
	struct stat st;
	int rc = 0;

	if (t != T_CTL && t != T_HEARTBEAT) {
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
					    FUSE_SET_ATTR_MTIME_NOW))) {
		(void)fi;
		rc = heartbeat_file(ctx, n.id);
	}
	if (!rc)
		rc = node_stat(ctx, n, NULL, &st);
	if (rc) {
		fuse_reply_err(req, -rc);
		return;
	}
	fuse_reply_attr(req, &st, 0);
}

static void fs_readlink_op(fuse_req_t req, fuse_ino_t ino)
{
	char *target = NULL;
	int rc = fs_readlink(CTX(req), fs_node_of(ino), &target);

	if (rc) {
		fuse_reply_err(req, -rc);
		return;
	}
	fuse_reply_readlink(req, target);
	free(target);
}

static void fs_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	orch_ctx *ctx = CTX(req);
	fs_node n = fs_node_of(ino);
	bool writing = (fi->flags & O_ACCMODE) != O_RDONLY;
	fs_handle *h;
	int rc = 0;

	switch (fs_node_type(n)) {
	case T_DIR:
		fuse_reply_err(req, EISDIR);
		return;
	case T_LINK:
		fuse_reply_err(req, ELOOP);
		return;
	case T_FILE:
		if (writing || (fi->flags & O_TRUNC)) {
			fuse_reply_err(req, EROFS);
			return;
		}
		break;
	case T_HEARTBEAT:
		break;
	case T_CTL: {
		int64_t sid;
		const orch_method *m = fs_ctl_method(n, &sid);
		if (!m || (sid && !fs_exists(ctx, n))) {
			fuse_reply_err(req, ENOENT);
			return;
		}
		h = calloc(1, sizeof(*h));
		track(&h->link);
		h->node = n;
		h->ctl = fs_ctl_new(m, sid);
		fi->fh = (uintptr_t)h;
		fi->direct_io = 1;
		fi->keep_cache = 0;
		fuse_reply_open(req, fi);
		return;
	}
	}
	if (rc) {
		fuse_reply_err(req, -rc);
		return;
	}
	h = calloc(1, sizeof(*h));
	track(&h->link);
	h->node = n;
	if (fs_node_type(n) == T_HEARTBEAT && writing)
		rc = heartbeat_file(ctx, n.id);
	if (!rc)
		rc = fs_render(ctx, n, &h->buf, &h->len);
	if (rc) {
		handle_free(h);
		fuse_reply_err(req, -rc);
		return;
	}
	/* direct_io: every read is served from this open's snapshot, never a stale page. */
	fi->fh = (uintptr_t)h;
	fi->direct_io = 1;
	fi->keep_cache = 0;
	fuse_reply_open(req, fi);
}

static void fs_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi)
{
	fs_handle *h = (fs_handle *)(uintptr_t)fi->fh;
	const char *out;
	size_t n;

	(void)ino;
	if (h->ctl) {
		int rc = fs_ctl_read(h->ctl, off, size, &out, &n);
		if (rc) {
			fuse_reply_err(req, -rc);
			return;
		}
		fuse_reply_buf(req, out, n);
		return;
	}
	if (off < 0 || (size_t)off >= h->len) {
		fuse_reply_buf(req, NULL, 0);
		return;
	}
	n = h->len - (size_t)off < size ? h->len - (size_t)off : size;
	fuse_reply_buf(req, h->buf + off, n);
}

static void fs_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size, off_t off,
		     struct fuse_file_info *fi)
{
	fs_handle *h = (fs_handle *)(uintptr_t)fi->fh;
	int rc;

	(void)off;
	if (h->ctl)
		rc = fs_ctl_write(CTX(req), h->ctl, buf, size);
	else if (fs_node_type(fs_node_of(ino)) == T_HEARTBEAT)
		rc = heartbeat_file(CTX(req), h->node.id);
	else
		rc = -EROFS;
	if (rc) {
		fuse_reply_err(req, -rc);
		return;
	}
	fuse_reply_write(req, size);
}

static void fs_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	fs_handle *h = (fs_handle *)(uintptr_t)fi->fh;

	(void)ino;
	fuse_reply_err(req, h->ctl ? -fs_ctl_flush(h->ctl) : 0);
}

static void fs_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	fs_handle *h = (fs_handle *)(uintptr_t)fi->fh;

	(void)ino;
	handle_free(h);
	fuse_reply_err(req, 0);
}

static void fs_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	orch_ctx *ctx = CTX(req);
	fs_node n = fs_node_of(ino);
	fs_dir *d = calloc(1, sizeof(*d));
	int rc;

	d->is_dir = true;
	track(&d->link);
	if (orch_store_begin(ctx->store, false) != 0) {
		dir_free(d);
		fuse_reply_err(req, EIO);
		return;
	}
	rc = fs_exists(ctx, n) ? fs_list(ctx, n, &d->ents, &d->n) : -ENOENT;
	orch_store_rollback(ctx->store);
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
			st.st_ino = fs_ino(e->node);
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

static void fs_releasedir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	fs_dir *d = (fs_dir *)(uintptr_t)fi->fh;

	(void)ino;
	dir_free(d);
	fuse_reply_err(req, 0);
}

/* Everything that would add, remove or rename a node: the tree is not the user's to shape. */
static void fs_mknod(fuse_req_t req, fuse_ino_t p, const char *name, mode_t mode, dev_t rdev)
{
	(void)p, (void)name, (void)mode, (void)rdev;
	fuse_reply_err(req, EROFS);
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
	(void)p, (void)name, (void)mode, (void)fi;
	fuse_reply_err(req, EROFS);
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
	/* O_TRUNC arrives with open instead of as a separate truncate. */
	if (conn->capable & FUSE_CAP_ATOMIC_O_TRUNC)
		conn->want |= FUSE_CAP_ATOMIC_O_TRUNC;
	conn->want &= ~FUSE_CAP_WRITEBACK_CACHE;
}

static const struct fuse_lowlevel_ops fs_ops = {
	.init = fs_init,
	.lookup = fs_lookup_op,
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
};

int fs_main(orch_ctx *ctx, const fs_options *o)
{
	struct fuse_args args = FUSE_ARGS_INIT(0, NULL);
	struct fuse_session *se = NULL;
	int rc = 1;

	fuse_opt_add_arg(&args, "orchfs");
	fuse_opt_add_arg(&args, "-o");
	fuse_opt_add_arg(&args, "fsname=orchfs,subtype=orchfs");
	if (o->debug)
		fuse_opt_add_arg(&args, "-d");
	se = fuse_session_new(&args, &fs_ops, sizeof(fs_ops), ctx);
	if (!se)
		goto out;
	if (fuse_set_signal_handlers(se) != 0)
		goto destroy;
	if (fuse_session_mount(se, o->mountpoint) != 0)
		goto signals;
	if (o->on_mounted)
		o->on_mounted(o->arg);
	/*
	 * One thread: requests are served in order, so a ctl write that
	 * executes a method never races another request of this daemon;
	 * other processes are serialised by SQLite's write lock.
	 */
	rc = fuse_session_loop(se) < 0 ? 1 : 0;
	fuse_session_unmount(se);
signals:
	fuse_remove_signal_handlers(se);
destroy:
	fuse_session_destroy(se);
out:
	fuse_opt_free_args(&args);
	free_all_open();
	fs_ctl_forget_all();
	return rc;
}
