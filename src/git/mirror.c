/*
 * The mirror's history: the rendered markdown files as a tree, committed
 * on refs/orchfs/mirror.  Objects and that one ref only; HEAD, branches,
 * the index and the working tree are never touched.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "git_int.h"

static int open_repo(git_repository **repo, const char *repo_path)
{
	git_libgit2_init();
	if (git_repository_open(repo, repo_path) < 0) {
		int rc = orch_git__fail("open repository");
		git_libgit2_shutdown();
		return rc;
	}
	return 0;
}

static void close_repo(git_repository *repo)
{
	git_repository_free(repo);
	git_libgit2_shutdown();
}

int orch_git_mirror_tree(const char *repo_path, const char *dir, const char *const *names, size_t n,
			 char (*blobs)[ORCH_GIT_HEX_SIZE], char *tree)
{
	git_repository *repo;
	git_treebuilder *tb = NULL;
	git_odb *odb = NULL;
	git_oid oid;
	int rc;

	if ((rc = open_repo(&repo, repo_path)) != 0)
		return rc;
	if (git_repository_odb(&odb, repo) < 0 || git_treebuilder_new(&tb, repo, NULL) < 0) {
		rc = orch_git__fail("new tree");
		goto out;
	}
	for (size_t i = 0; i < n; i++) {
		char path[4096];
		snprintf(path, sizeof(path), "%s/%s", dir, names[i]);
		/*
		 * Hashing is cheap, compressing is not: a file the repository
		 * already has (an unchanged one) is not stored again.  From a path
		 * outside the working tree: no filters, the bytes as they are,
		 * streamed.
		 */
		if (git_odb_hashfile(&oid, path, GIT_OBJECT_BLOB) < 0 ||
		    (!git_odb_exists(odb, &oid) && git_blob_create_from_disk(&oid, repo, path) < 0) ||
		    git_treebuilder_insert(NULL, tb, names[i], &oid, GIT_FILEMODE_BLOB) < 0) {
			rc = orch_git__fail("store mirror file");
			goto out;
		}
		git_oid_tostr(blobs[i], ORCH_GIT_HEX_SIZE, &oid);
	}
	if (git_treebuilder_write(&oid, tb) < 0) {
		rc = orch_git__fail("write mirror tree");
		goto out;
	}
	git_oid_tostr(tree, ORCH_GIT_HEX_SIZE, &oid);
out:
	git_treebuilder_free(tb);
	git_odb_free(odb);
	close_repo(repo);
	return rc;
}

/* A moved mirror ref: where it was (zero: it did not exist) and where it went. */
typedef struct {
	orch_git_effect base;
	char *repo_path;
	git_oid before, after;
	bool existed;
} mirror_fx;

/* Put the ref back, only if it still names our commit. */
static void mirror_undo(orch_git_effect *fx)
{
	mirror_fx *m = (mirror_fx *)fx;
	git_repository *repo;
	git_reference *ref = NULL, *cur = NULL;

	if (open_repo(&repo, m->repo_path) != 0) {
		orch_log("mirror: cannot put %s back: %s", ORCH_GIT_MIRROR_REF, orch_error_last()->message);
		return;
	}
	if (git_reference_lookup(&cur, repo, ORCH_GIT_MIRROR_REF) == 0 &&
	    git_oid_equal(git_reference_target(cur), &m->after)) {
		if (m->existed)
			git_reference_create_matching(&ref, repo, ORCH_GIT_MIRROR_REF, &m->before, 1, &m->after,
						      "orchfs mirror: undo");
		else
			git_reference_delete(cur);
	}
	git_reference_free(ref);
	git_reference_free(cur);
	close_repo(repo);
}

static void mirror_release(orch_git_effect *fx)
{
	mirror_fx *m = (mirror_fx *)fx;

	free(m->repo_path);
	free(m);
}

int orch_git_mirror_commit(const char *repo_path, const char *tree_hex, const char *message, char *commit,
			   orch_git_effect **fx)
{
	git_repository *repo;
	git_reference *ref = NULL, *moved = NULL;
	git_commit *parent = NULL;
	git_tree *tree = NULL;
	git_signature *sig = NULL;
	git_oid tree_oid, oid;
	mirror_fx *m = NULL;
	int rc, err;

	*fx = NULL;
	if ((rc = open_repo(&repo, repo_path)) != 0)
		return rc;
	m = calloc(1, sizeof(*m));
	if (!m || !(m->repo_path = strdup(repo_path))) {
		rc = orch_error_set(ORCH_EINTERNAL, "out of memory");
		goto out;
	}
	m->base.release = mirror_release;
	m->base.undo = mirror_undo;
	if (git_oid_fromstr(&tree_oid, tree_hex) < 0 || git_tree_lookup(&tree, repo, &tree_oid) < 0) {
		rc = orch_git__fail("find mirror tree");
		goto out;
	}
	err = git_reference_lookup(&ref, repo, ORCH_GIT_MIRROR_REF);
	if (err == 0) {
		m->existed = true;
		git_oid_cpy(&m->before, git_reference_target(ref));
		if (git_commit_lookup(&parent, repo, &m->before) < 0) {
			rc = orch_git__fail("read " ORCH_GIT_MIRROR_REF);
			goto out;
		}
	} else if (err != GIT_ENOTFOUND) {
		rc = orch_git__fail("read " ORCH_GIT_MIRROR_REF);
		goto out;
	}
	/*
	 * The ref already names a commit of this very tree: a refresh killed
	 * after moving the ref and before its transaction committed.  That
	 * commit stands for this one (no empty commit in the history).
	 */
	if (parent && git_oid_equal(git_commit_tree_id(parent), &tree_oid)) {
		git_oid_tostr(commit, ORCH_GIT_HEX_SIZE, &m->before);
		goto out;
	}
	if (git_signature_new(&sig, "orchfs", "orchfs@localhost", (git_time_t)time(NULL), 0) < 0 ||
	    git_commit_create(&oid, repo, NULL, sig, sig, NULL, message, tree, parent ? 1 : 0,
			      (const git_commit **)&parent) < 0) {
		rc = orch_git__fail("commit mirror");
		goto out;
	}
	/* Compare-and-swap: a refresh of another process in between makes this one fail, not lose its commit. */
	err = m->existed ? git_reference_create_matching(&moved, repo, ORCH_GIT_MIRROR_REF, &oid, 1, &m->before,
							 "orchfs mirror")
			 : git_reference_create(&moved, repo, ORCH_GIT_MIRROR_REF, &oid, 0, "orchfs mirror");
	if (err < 0) {
		rc = orch_git__fail("move " ORCH_GIT_MIRROR_REF);
		goto out;
	}
	git_oid_cpy(&m->after, &oid);
	git_oid_tostr(commit, ORCH_GIT_HEX_SIZE, &oid);
	*fx = &m->base;
	m = NULL;
out:
	if (m)
		mirror_release(&m->base);
	git_reference_free(moved);
	git_reference_free(ref);
	git_commit_free(parent);
	git_tree_free(tree);
	git_signature_free(sig);
	close_repo(repo);
	return rc;
}
