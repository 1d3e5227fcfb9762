/*
 * Leftovers: checkouts that a call killed part-way left under a path a
 * retry reuses, set aside as <path>.orchfs-leftover-<ms>.
 *
 * A leftover is detached from git before anything else reuses its name:
 * its .git file (which points at .git/worktrees/orchfs-<name>, the
 * metadata the retried call makes again for the live checkout) is renamed
 * to .git.orchfs-detached, a note ORCHFS-LEFTOVER says what the directory
 * is, and a new .git file points git at that note, so that any git command
 * run inside the leftover fails ("not a git repository") instead of
 * finding the live checkout's metadata, or the main repository above.
 *
 * A leftover whose only differences from the commit it was checking out
 * are files git had not yet written (missing, or a prefix of their
 * content) holds nothing that is not in git: orchfs's own half-made
 * checkout.  Start-up removes those.  Any other is user work: kept, and
 * listed by `orchfs check`.
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

#define LEFTOVER_MARK ".orchfs-leftover-"
#define NOTE "ORCHFS-LEFTOVER"
#define DETACHED_GIT ".git.orchfs-detached"

/* Read at most `size` - 1 bytes of `name` in directory `fd` into `buf`, NUL-terminated; -1 on error. */
static ssize_t read_small(int fd, const char *name, char *buf, size_t size)
{
	int f = openat(fd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	ssize_t n;

	if (f < 0)
		return -1;
	n = read(f, buf, size - 1);
	close(f);
	if (n < 0)
		return -1;
	buf[n] = '\0';
	return n;
}

/* Write `text` to `name` in directory `fd` (replacing it) and fsync it; 0 or -1. */
static int write_small(int fd, const char *name, const char *text)
{
	int f = openat(fd, name, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0644);
	size_t n = strlen(text);
	int rc;

	if (f < 0)
		return -1;
	rc = write(f, text, n) == (ssize_t)n && fsync(f) == 0 ? 0 : -1;
	close(f);
	return rc;
}

/* The commit a note records ("commit <hex>" line), into `hex`; whether there was one. */
static bool note_commit(int fd, char *hex)
{
	char buf[4096], *c;

	if (read_small(fd, NOTE, buf, sizeof(buf)) < 0 || !(c = strstr(buf, "\ncommit ")))
		return false;
	c += 8;
	if (strspn(c, "0123456789abcdef") != GIT_OID_HEXSZ)
		return false;
	memcpy(hex, c, GIT_OID_HEXSZ);
	hex[GIT_OID_HEXSZ] = '\0';
	return true;
}

/*
 * The commit the checkout in directory `dir` (attached: .git still points
 * at its metadata) has checked out, into `hex`; whether it resolved.
 */
static bool checkout_commit(const char *dir, char *hex)
{
	git_repository *wt = NULL;
	git_object *obj = NULL;
	bool ok = false;

	if (git_repository_open_ext(&wt, dir, GIT_REPOSITORY_OPEN_NO_SEARCH, NULL) == 0 &&
	    git_revparse_single(&obj, wt, "HEAD^{commit}") == 0) {
		git_oid_tostr(hex, GIT_OID_HEXSZ + 1, git_object_id(obj));
		ok = true;
	}
	git_object_free(obj);
	git_repository_free(wt);
	return ok;
}

/*
 * Whether the directory `fd` is detached already: its .git was set aside,
 * or (a checkout killed before git wrote its .git file had none to set
 * aside) its .git is the one that points at the note.
 */
static bool detached_already(int fd)
{
	char buf[64];
	struct stat sb;

	return fstatat(fd, DETACHED_GIT, &sb, AT_SYMLINK_NOFOLLOW) == 0 ||
	       (read_small(fd, ".git", buf, sizeof(buf)) >= 0 && strcmp(buf, "gitdir: " NOTE "\n") == 0);
}

int orch_git__detach_leftover(orch_git *g, const char *dir, const char *was, const char *commit_hex)
{
	char hex[GIT_OID_HEXSZ + 1] = "", *note = NULL;
	int fd = orch_git__open_dir(g, dir, NULL), rc = -1;

	if (fd < 0)
		return -1;
	if (detached_already(fd)) {
		rc = 0; /* a kill came after that, or start-up visits what a call set aside */
		goto done;
	}
	/*
	 * Not given: the commit a note of a detach cut short names (the
	 * checkout may have no .git to ask), else the checkout's own HEAD.
	 */
	if (commit_hex)
		snprintf(hex, sizeof(hex), "%s", commit_hex);
	else if (!note_commit(fd, hex))
		checkout_commit(dir, hex);
	if (asprintf(&note, "orchfs set this directory aside: a checkout that a call killed part-way left at\n"
			    "%s\ncommit %s\n\n"
			    "It is detached from git (its .git link is %s): nothing run here can\n"
			    "touch the live checkout that took its place.  orchfs removes it at start-up when it\n"
			    "holds nothing but files git had not yet written; otherwise it stays, listed by\n"
			    "`orchfs check`.  Copy out what you need, then delete the directory.\n",
		     was, hex[0] ? hex : "unknown", DETACHED_GIT) < 0) {
		note = NULL;
		goto done;
	}
	/* The note first, so that a kill at any later step leaves it saying what this is. */
	if (write_small(fd, NOTE, note) < 0)
		goto done;
	if (renameat(fd, ".git", fd, DETACHED_GIT) < 0 && errno != ENOENT)
		goto done;
	rc = write_small(fd, ".git", "gitdir: " NOTE "\n");
	fsync(fd);
done:
	free(note);
	close(fd);
	return rc;
}

/* ---- what a leftover holds ---- */

/*
 * Whether the file `name` in directory `fd` holds the blob `id` or a
 * prefix of it (git had not finished writing it).
 */
static bool prefix_of_blob(git_repository *repo, int fd, const char *name, const git_oid *id, off_t size)
{
	git_blob *blob = NULL;
	bool same = false;
	char buf[65536];
	int f;

	if (git_blob_lookup(&blob, repo, id) < 0)
		return false;
	if ((git_object_size_t)size <= git_blob_rawsize(blob) &&
	    (f = openat(fd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC)) >= 0) {
		const char *want = git_blob_rawcontent(blob);
		off_t at = 0;
		ssize_t n;
		same = true;
		while (same && (n = read(f, buf, sizeof(buf))) > 0) {
			same = at + n <= size && memcmp(buf, want + at, (size_t)n) == 0;
			at += n;
		}
		same = same && at == size;
		close(f);
	}
	git_blob_free(blob);
	return same;
}

/*
 * Whether every entry of the directory `fd` (at `rel` in the checkout,
 * "" for its top) is in `tree` as git would have written it, or a file git
 * had not finished: nothing in it is user work.  Missing entries are fine.
 */
static bool only_unwritten(git_repository *repo, git_tree *tree, int fd, const char *rel)
{
	DIR *d = fdopendir(dup(fd));
	struct dirent *e;
	bool ok = d != NULL;

	while (ok && (e = readdir(d)) != NULL) {
		git_tree_entry *te = NULL;
		char path[4096];
		struct stat sb;
		if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
			continue;
		if (!*rel && (!strcmp(e->d_name, ".git") || !strcmp(e->d_name, DETACHED_GIT) ||
			      !strcmp(e->d_name, NOTE)))
			continue;
		snprintf(path, sizeof(path), "%s%s%s", rel, *rel ? "/" : "", e->d_name);
		if (fstatat(fd, e->d_name, &sb, AT_SYMLINK_NOFOLLOW) < 0 ||
		    git_tree_entry_bypath(&te, tree, path) < 0) {
			ok = false;
			break;
		}
		if (S_ISDIR(sb.st_mode)) {
			int sub = openat(fd, e->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
			ok = sub >= 0 && git_tree_entry_type(te) == GIT_OBJECT_TREE &&
			     only_unwritten(repo, tree, sub, path);
			if (sub >= 0)
				close(sub);
		} else if (S_ISREG(sb.st_mode)) {
			ok = git_tree_entry_type(te) == GIT_OBJECT_BLOB && git_tree_entry_filemode(te) != GIT_FILEMODE_LINK &&
			     prefix_of_blob(repo, fd, e->d_name, git_tree_entry_id(te), sb.st_size);
		} else if (S_ISLNK(sb.st_mode)) {
			char target[4096];
			git_blob *blob = NULL;
			ssize_t n = readlinkat(fd, e->d_name, target, sizeof(target));
			ok = n >= 0 && git_tree_entry_filemode(te) == GIT_FILEMODE_LINK &&
			     git_blob_lookup(&blob, repo, git_tree_entry_id(te)) == 0 &&
			     git_blob_rawsize(blob) == (git_object_size_t)n &&
			     memcmp(git_blob_rawcontent(blob), target, (size_t)n) == 0;
			git_blob_free(blob);
		} else {
			ok = false;
		}
		git_tree_entry_free(te);
	}
	if (d)
		closedir(d);
	return ok;
}

/* Whether the top of a leftover, directory `fd`, holds nothing but orchfs's own .git files and note. */
static bool holds_nothing(int fd)
{
	DIR *d = fdopendir(dup(fd));
	struct dirent *e;
	bool empty = d != NULL;

	while (empty && (e = readdir(d)) != NULL)
		empty = !strcmp(e->d_name, ".") || !strcmp(e->d_name, "..") || !strcmp(e->d_name, ".git") ||
			!strcmp(e->d_name, DETACHED_GIT) || !strcmp(e->d_name, NOTE);
	if (d)
		closedir(d);
	return empty;
}

/*
 * Whether the detached leftover `dir` holds user work (anything git would
 * not have written).  Without a known commit, anything but orchfs's own
 * files counts.
 */
static bool holds_user_work(orch_git *g, const char *dir, char *hex)
{
	git_oid oid;
	git_commit *commit = NULL;
	git_tree *tree = NULL;
	bool work;
	int fd = orch_git__open_dir(g, dir, NULL);

	if (fd < 0)
		return true;
	if (note_commit(fd, hex) && git_oid_fromstr(&oid, hex) == 0 && git_commit_lookup(&commit, g->repo, &oid) == 0 &&
	    git_commit_tree(&tree, commit) == 0)
		work = !only_unwritten(g->repo, tree, fd, "");
	else
		work = !holds_nothing(fd);
	git_tree_free(tree);
	git_commit_free(commit);
	close(fd);
	return work;
}

/* ---- finding them ---- */

/*
 * Visit the leftovers below directory `dir` (not inside checkouts, which
 * hold a .git).  With `clean`: detach one still attached, and remove those
 * without user work; each one kept is appended to `out`.  Without `clean`
 * nothing changes, and every one is appended (one still attached, or
 * without a note, counts as user work: nothing says what it held).
 */
static void visit(orch_git *g, const char *dir, int depth, bool clean, json_t *out, json_t *log)
{
	struct dirent *e;
	DIR *d;
	int fd = orch_git__open_dir(g, dir, NULL);

	if (fd < 0 || depth > 32 || !(d = fdopendir(fd))) {
		if (fd >= 0)
			close(fd);
		return;
	}
	while ((e = readdir(d)) != NULL) {
		char *sub = NULL, hex[GIT_OID_HEXSZ + 1] = "";
		struct stat sb;
		if (e->d_name[0] == '.' && (!e->d_name[1] || !strcmp(e->d_name, "..") || !strcmp(e->d_name, ".git")))
			continue;
		if (fstatat(dirfd(d), e->d_name, &sb, AT_SYMLINK_NOFOLLOW) < 0 || !S_ISDIR(sb.st_mode) ||
		    asprintf(&sub, "%s/%s", dir, e->d_name) < 0)
			continue;
		if (!strstr(e->d_name, LEFTOVER_MARK)) {
			char *dotgit = NULL;
			struct stat gs;
			/* Only into directories that hold checkouts, never into a checkout. */
			if (asprintf(&dotgit, "%s/.git", e->d_name) >= 0 &&
			    fstatat(dirfd(d), dotgit, &gs, AT_SYMLINK_NOFOLLOW) < 0)
				visit(g, sub, depth + 1, clean, out, log);
			free(dotgit);
			free(sub);
			continue;
		}
		/* An older orchfs set leftovers aside still attached: detach them now (never in a check). */
		if (clean && orch_git__detach_leftover(g, sub, sub, NULL) < 0 && log)
			json_array_append_new(log, json_sprintf("could not detach leftover %s from git: %s", sub,
								strerror(errno)));
		bool work = holds_user_work(g, sub, hex);
		if (clean && !work) {
			orch_git__rm_rf(g, sub);
			if (log)
				json_array_append_new(log, json_sprintf("removed leftover %s: only files git had not "
									"yet written", sub));
		} else {
			json_array_append_new(out, json_pack("{s:s, s:s, s:b}", "path", sub, "commit",
							     hex[0] ? hex : "unknown", "user_changes", work));
		}
		free(sub);
	}
	closedir(d);
}

int orch_git_leftovers(orch_git *g, const char *root, bool clean, json_t **out, json_t *log)
{
	*out = json_array();
	visit(g, root, 0, clean, *out, log);
	return 0;
}
