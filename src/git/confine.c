/*
 * Confinement: every directory orchfs creates, renames or removes is
 * reached from its root (the state directory, or git's common directory
 * for worktree metadata) one component at a time with
 * openat(O_NOFOLLOW | O_DIRECTORY), so a symlink anywhere below the root,
 * <state>/worktrees itself included, can never lead a checkout, a removal
 * or a rename elsewhere.  The roots themselves are trusted: the user chose
 * them.
 *
 * libgit2 creates the checkout directory itself (git_worktree_add), by
 * path; its parent is checked just before, so what is left is a race with
 * someone who can write below the state directory, which is private
 * (0700) to the user orchfs runs as.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "git_int.h"

/* Whether `path` is `root` or below it; *rel is then the rest ("" for root itself). */
static bool below(const char *root, const char *path, const char **rel)
{
	size_t n = strlen(root);

	while (n > 1 && root[n - 1] == '/')
		n--;
	if (strncmp(path, root, n) != 0 || (path[n] != '/' && path[n] != '\0'))
		return false;
	*rel = path + n;
	while (**rel == '/')
		(*rel)++;
	return true;
}

/* The root `path` is confined to, and the part below it; NULL when it is below neither root. */
static const char *root_of(orch_git *g, const char *path, const char **rel)
{
	const char *common = git_repository_commondir(g->repo);

	if (g->state_dir && below(g->state_dir, path, rel))
		return g->state_dir;
	if (common && below(common, path, rel))
		return common;
	return NULL;
}

/*
 * Open the directory `rel` below the open directory `fd` (taken), one
 * component at a time without following a symlink; with `made` non-NULL
 * missing components are created (0755) and appended to it as full paths
 * (`rel` points into `full`, the whole path).  Returns the new fd, or -1 with errno
 * (ELOOP or ENOTDIR for a symlink).
 */
static int walk(int fd, const char *rel, const char *full, json_t *made)
{
	const char *c = rel;

	while (*c && fd >= 0) {
		size_t n = strcspn(c, "/");
		char comp[256];
		int next;
		if (n == 0 || n >= sizeof(comp)) {
			close(fd);
			errno = n ? ENAMETOOLONG : EINVAL;
			return -1;
		}
		memcpy(comp, c, n);
		comp[n] = '\0';
		if (strcmp(comp, "..") == 0 || strcmp(comp, ".") == 0) {
			close(fd);
			errno = EINVAL;
			return -1;
		}
		if (made && mkdirat(fd, comp, 0755) == 0)
			json_array_append_new(made, json_stringn(full, (size_t)(c + n - full)));
		next = openat(fd, comp, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		close(fd);
		fd = next;
		c += n;
		while (*c == '/')
			c++;
	}
	return fd;
}

int orch_git__open_dir(orch_git *g, const char *dir, json_t *made)
{
	const char *rel, *root = root_of(g, dir, &rel);
	int fd;

	if (!root) {
		errno = EXDEV;
		return -1;
	}
	if ((fd = open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0)
		return -1;
	return walk(fd, rel, dir, made);
}

int orch_git__open_parent(orch_git *g, const char *path, const char **base)
{
	const char *slash = strrchr(path, '/'), *rel;
	char *parent;
	int fd;

	if (!slash || !slash[1] || !root_of(g, path, &rel) || !*rel) {
		errno = EINVAL;
		return -1;
	}
	if (!(parent = strndup(path, (size_t)(slash - path)))) {
		errno = ENOMEM;
		return -1;
	}
	fd = orch_git__open_dir(g, parent, NULL);
	free(parent);
	*base = slash + 1;
	return fd;
}

/*
 * Remove `name` in the open directory `at`, a directory tree
 * recursively: never through a symlink (a symlink is removed, not
 * followed), never into another filesystem mounted inside it (`dev`).
 */
static void remove_at(int at, const char *name, dev_t dev)
{
	struct stat sb;
	struct dirent *e;
	DIR *d;
	int fd;

	if (fstatat(at, name, &sb, AT_SYMLINK_NOFOLLOW) < 0)
		return;
	if (!S_ISDIR(sb.st_mode)) {
		unlinkat(at, name, 0);
		return;
	}
	if (sb.st_dev != dev || (fd = openat(at, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)) < 0)
		return;
	if (!(d = fdopendir(fd))) {
		close(fd);
		return;
	}
	while ((e = readdir(d)) != NULL)
		if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0)
			remove_at(dirfd(d), e->d_name, dev);
	closedir(d);
	unlinkat(at, name, AT_REMOVEDIR);
}

void orch_git__rm_rf(orch_git *g, const char *path)
{
	const char *base;
	struct stat sb;
	int fd = orch_git__open_parent(g, path, &base);

	if (fd < 0) {
		if (errno != ENOENT)
			orch_log("not removing %s: %s (orchfs removes only what it reaches without a symlink "
				 "from the state directory)", path, strerror(errno));
		return;
	}
	if (fstatat(fd, base, &sb, AT_SYMLINK_NOFOLLOW) == 0)
		remove_at(fd, base, sb.st_dev);
	close(fd);
}

int orch_git__rmdir(orch_git *g, const char *dir)
{
	const char *base;
	int fd = orch_git__open_parent(g, dir, &base), rc;

	if (fd < 0)
		return -1;
	rc = unlinkat(fd, base, AT_REMOVEDIR);
	close(fd);
	return rc;
}

int orch_git__rename(orch_git *g, const char *from, const char *to)
{
	const char *b1, *b2;
	int fd1 = orch_git__open_parent(g, from, &b1), fd2 = -1, rc = -1, e;

	if (fd1 >= 0 && (fd2 = orch_git__open_parent(g, to, &b2)) >= 0)
		rc = renameat(fd1, b1, fd2, b2);
	e = errno;
	if (fd1 >= 0)
		close(fd1);
	if (fd2 >= 0)
		close(fd2);
	errno = e;
	return rc;
}
