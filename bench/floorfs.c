/*
 * bench-floorfs: the floor for reads and stat in scripts/bench.
 *
 * A minimal FUSE file system on the low-level API: one directory holding
 * one read-only file whose content is read from a file named on the
 * command line at start-up.  Opens set keep_cache, so once the page cache
 * holds the file an open+read+close costs one FUSE round trip (the open)
 * and no read requests; attributes and the entry are cached for the
 * configured timeouts.  No flush handler: the kernel learns from the first
 * ENOSYS and stops sending it (a daemon that needs flush for other files
 * gets the same for these by setting fi->noflush at open).  Release is
 * sent asynchronously and does not delay close.  The loop is multi-threaded.
 *
 * usage: bench-floorfs [--attr-timeout S] [--entry-timeout S] [--name NAME]
 *                      [-d] CONTENT_FILE MOUNTPOINT
 * Runs in the foreground until unmounted (fusermount3 -u) or signalled.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* st_mtim, clock_gettime when built outside meson */
#endif
#define FUSE_USE_VERSION FUSE_MAKE_VERSION(3, 14)

#include <fuse_lowlevel.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

enum { INO_ROOT = FUSE_ROOT_ID, INO_FILE = 2 };

static struct {
	char *data;
	size_t len;
	const char *name;
	double attr_timeout;
	double entry_timeout;
	struct timespec mtime;
} floor_fs = { .name = "task.json", .attr_timeout = 1.0, .entry_timeout = 1.0 };

/* Fills *st for INO_ROOT or INO_FILE; returns 0, or ENOENT for any other inode. */
static int floor_stat(fuse_ino_t ino, struct stat *st)
{
	memset(st, 0, sizeof(*st));
	st->st_ino = ino;
	st->st_uid = getuid();
	st->st_gid = getgid();
	st->st_atim = st->st_mtim = st->st_ctim = floor_fs.mtime;
	switch (ino) {
	case INO_ROOT:
		st->st_mode = S_IFDIR | 0555;
		st->st_nlink = 2;
		return 0;
	case INO_FILE:
		st->st_mode = S_IFREG | 0444;
		st->st_nlink = 1;
		st->st_size = (off_t)floor_fs.len;
		st->st_blocks = (st->st_size + 511) / 512;
		return 0;
	default:
		return ENOENT;
	}
}

static void fs_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct fuse_entry_param e;

	memset(&e, 0, sizeof(e));
	if (parent != INO_ROOT || strcmp(name, floor_fs.name) != 0) {
		fuse_reply_err(req, ENOENT);
		return;
	}
	e.ino = INO_FILE;
	e.attr_timeout = floor_fs.attr_timeout;
	e.entry_timeout = floor_fs.entry_timeout;
	floor_stat(INO_FILE, &e.attr);
	fuse_reply_entry(req, &e);
}

static void fs_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct stat st;
	int err = floor_stat(ino, &st);

	(void)fi;
	if (err) {
		fuse_reply_err(req, err);
		return;
	}
	fuse_reply_attr(req, &st, floor_fs.attr_timeout);
}

static void fs_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	if (ino != INO_FILE) {
		fuse_reply_err(req, ino == INO_ROOT ? EISDIR : ENOENT);
		return;
	}
	if ((fi->flags & O_ACCMODE) != O_RDONLY) {
		fuse_reply_err(req, EROFS);
		return;
	}
	/* The content never changes: keep the pages across opens. */
	fi->keep_cache = 1;
	fuse_reply_open(req, fi);
}

static void fs_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		    struct fuse_file_info *fi)
{
	size_t n = 0;

	(void)ino;
	(void)fi;
	if (off >= 0 && (size_t)off < floor_fs.len) {
		n = floor_fs.len - (size_t)off;
		if (n > size)
			n = size;
	}
	fuse_reply_buf(req, n ? floor_fs.data + off : NULL, n);
}

static void fs_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	if (ino != INO_ROOT) {
		fuse_reply_err(req, ino == INO_FILE ? ENOTDIR : ENOENT);
		return;
	}
	fuse_reply_open(req, fi);
}

/* Appends one entry to buf (of cap bytes, used *len); returns 0, or -1 when it does not fit. */
static int add_entry(fuse_req_t req, char *buf, size_t cap, size_t *len,
		     const char *name, fuse_ino_t ino, off_t next)
{
	struct stat st = { .st_ino = ino, .st_mode = ino == INO_FILE ? S_IFREG : S_IFDIR };
	size_t need = fuse_add_direntry(req, NULL, 0, name, NULL, 0);

	if (*len + need > cap)
		return -1;
	fuse_add_direntry(req, buf + *len, cap - *len, name, &st, next);
	*len += need;
	return 0;
}

static void fs_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		       struct fuse_file_info *fi)
{
	const char *names[] = { ".", "..", floor_fs.name };
	const fuse_ino_t inos[] = { INO_ROOT, INO_ROOT, INO_FILE };
	char *buf;
	size_t len = 0;

	(void)ino;
	(void)fi;
	buf = malloc(size ? size : 1);
	if (!buf) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	for (off_t i = off; i >= 0 && i < 3; i++)
		if (add_entry(req, buf, size, &len, names[i], inos[i], i + 1) != 0)
			break;
	fuse_reply_buf(req, buf, len);
	free(buf);
}

/* Reads the whole of path into floor_fs.data; returns 0 or -1 with a message printed. */
static int load_content(const char *path)
{
	FILE *f = fopen(path, "rb");
	size_t cap = 4096;
	int rc = -1;

	if (!f) {
		perror(path);
		return -1;
	}
	floor_fs.data = malloc(cap);
	floor_fs.len = 0;
	while (floor_fs.data) {
		size_t n = fread(floor_fs.data + floor_fs.len, 1, cap - floor_fs.len, f);

		floor_fs.len += n;
		if (floor_fs.len < cap) {
			rc = ferror(f) ? -1 : 0;
			break;
		}
		cap *= 2;
		char *grown = realloc(floor_fs.data, cap);
		if (!grown)
			break;
		floor_fs.data = grown;
	}
	if (rc)
		fprintf(stderr, "%s: cannot read\n", path);
	fclose(f);
	return rc;
}

static const struct fuse_lowlevel_ops fs_ops = {
	.lookup = fs_lookup,
	.getattr = fs_getattr,
	.open = fs_open,
	.read = fs_read,
	.opendir = fs_opendir,
	.readdir = fs_readdir,
};

static int usage(void)
{
	fprintf(stderr, "usage: bench-floorfs [--attr-timeout S] [--entry-timeout S] [--name NAME] [-d]"
		" CONTENT_FILE MOUNTPOINT\n");
	return 2;
}

int main(int argc, char **argv)
{
	struct fuse_args args = FUSE_ARGS_INIT(0, NULL);
	struct fuse_session *se = NULL;
	struct fuse_loop_config *cfg = NULL;
	const char *content = NULL, *mountpoint = NULL;
	int debug = 0, rc = 1;

	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--attr-timeout") == 0 && i + 1 < argc)
			floor_fs.attr_timeout = atof(argv[++i]);
		else if (strcmp(argv[i], "--entry-timeout") == 0 && i + 1 < argc)
			floor_fs.entry_timeout = atof(argv[++i]);
		else if (strcmp(argv[i], "--name") == 0 && i + 1 < argc)
			floor_fs.name = argv[++i];
		else if (strcmp(argv[i], "-d") == 0)
			debug = 1;
		else if (argv[i][0] == '-')
			return usage();
		else if (!content)
			content = argv[i];
		else if (!mountpoint)
			mountpoint = argv[i];
		else
			return usage();
	}
	if (!mountpoint)
		return usage();
	if (load_content(content) != 0)
		return 1;
	clock_gettime(CLOCK_REALTIME, &floor_fs.mtime);

	fuse_opt_add_arg(&args, "bench-floorfs");
	fuse_opt_add_arg(&args, "-o");
	fuse_opt_add_arg(&args, "fsname=floorfs,subtype=floorfs");
	if (debug)
		fuse_opt_add_arg(&args, "-d");
	se = fuse_session_new(&args, &fs_ops, sizeof(fs_ops), NULL);
	if (!se)
		goto out;
	if (fuse_set_signal_handlers(se) != 0)
		goto destroy;
	if (fuse_session_mount(se, mountpoint) != 0)
		goto signals;
	cfg = fuse_loop_cfg_create();
	if (cfg) {
		rc = fuse_session_loop_mt(se, cfg) < 0 ? 1 : 0;
		fuse_loop_cfg_destroy(cfg);
	}
	fuse_session_unmount(se);
signals:
	fuse_remove_signal_handlers(se);
destroy:
	fuse_session_destroy(se);
out:
	fuse_opt_free_args(&args);
	free(floor_fs.data);
	return rc;
}
