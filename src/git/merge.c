/*
 * Merges: the state of a checkout, in-memory merges, checking a merge out
 * (a dry run first), moving a branch by compare-and-swap, and recognising
 * a merge that is already at a branch's tip.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "git_int.h"

int orch_git_dirty_paths(const char *workdir, bool untracked, json_t **paths)
{
	git_repository *repo = NULL;
	git_status_list *list = NULL;
	git_status_options opts = GIT_STATUS_OPTIONS_INIT;
	int rc = 0;

	*paths = NULL;
	if (git_repository_open(&repo, workdir) < 0) {
		rc = orch_git__fail("open worktree");
		goto done;
	}
	opts.show = GIT_STATUS_SHOW_INDEX_AND_WORKDIR;
	opts.flags = untracked ? GIT_STATUS_OPT_INCLUDE_UNTRACKED : 0;
	if (git_status_list_new(&list, repo, &opts) < 0) {
		rc = orch_git__fail("status");
		goto done;
	}
	*paths = json_array();
	for (size_t i = 0; i < git_status_list_entrycount(list); i++) {
		const git_status_entry *e = git_status_byindex(list, i);
		const git_diff_delta *d = e->index_to_workdir ? e->index_to_workdir : e->head_to_index;
		if (e->status == GIT_STATUS_CURRENT || !d)
			continue;
		json_array_append_new(*paths, json_string(d->new_file.path ? d->new_file.path : d->old_file.path));
	}
done:
	git_status_list_free(list);
	git_repository_free(repo);
	return rc;
}

/* Collects the paths a checkout reports as conflicts. */
static int collect_conflict(git_checkout_notify_t why, const char *path, const git_diff_file *baseline,
			    const git_diff_file *target, const git_diff_file *workdir, void *payload)
{
	(void)why, (void)baseline, (void)target, (void)workdir;
	if (path)
		json_array_append_new(payload, json_string(path));
	return 0;
}

/*
 * Check out the tree of commit `target` in the checkout at `workdir`, as a
 * change from commit `base` (the baseline).  `conflicts`, when given,
 * collects the paths that block a safe checkout.  Returns libgit2's code.
 */
static int checkout_commit(const char *workdir, const git_oid *target, const git_oid *base, unsigned strategy,
			   json_t *conflicts)
{
	git_repository *wrepo = NULL;
	git_commit *tc = NULL, *bc = NULL;
	git_tree *tt = NULL, *bt = NULL;
	git_checkout_options opts = GIT_CHECKOUT_OPTIONS_INIT;
	int err;

	/* Objects must come from the handle that checks them out. */
	if ((err = git_repository_open(&wrepo, workdir)) < 0 || (err = git_commit_lookup(&tc, wrepo, target)) < 0 ||
	    (err = git_commit_lookup(&bc, wrepo, base)) < 0 || (err = git_commit_tree(&tt, tc)) < 0 ||
	    (err = git_commit_tree(&bt, bc)) < 0)
		goto done;
	opts.checkout_strategy = strategy;
	opts.baseline = bt;
	if (conflicts) {
		opts.notify_flags = GIT_CHECKOUT_NOTIFY_CONFLICT;
		opts.notify_cb = collect_conflict;
		opts.notify_payload = conflicts;
	}
	err = git_checkout_tree(wrepo, (git_object *)tt, &opts);
done:
	git_tree_free(bt);
	git_tree_free(tt);
	git_commit_free(bc);
	git_commit_free(tc);
	git_repository_free(wrepo);
	return err;
}

/* Whether the checkout at `workdir` has refs/heads/<branch> as its HEAD. */
static bool has_checked_out(const char *workdir, const char *refname)
{
	git_repository *wrepo = NULL;
	git_reference *head = NULL;
	bool yes = false;

	if (git_repository_open(&wrepo, workdir) == 0 &&
	    git_reference_lookup(&head, wrepo, "HEAD") == 0 &&
	    git_reference_type(head) == GIT_REFERENCE_SYMBOLIC)
		yes = strcmp(git_reference_symbolic_target(head), refname) == 0;
	git_reference_free(head);
	git_repository_free(wrepo);
	return yes;
}

/*
 * A checkout other than `workdir` (the main one or a valid linked one)
 * that has `refname` checked out, or NULL (caller frees).  Moving that
 * branch would leave such a checkout behind its HEAD, which git refuses.
 */
static char *checked_out_elsewhere(git_repository *repo, const char *refname, const char *workdir)
{
	git_strarray names = {0};
	const char *main_dir = git_repository_workdir(repo);
	char *found = NULL;

	if (main_dir && (!workdir || !orch_git__same_dir(main_dir, workdir)) && has_checked_out(main_dir, refname))
		return strdup(main_dir);
	if (git_worktree_list(&names, repo) < 0)
		return NULL;
	for (size_t i = 0; i < names.count && !found; i++) {
		git_worktree *wt = NULL;
		if (git_worktree_lookup(&wt, repo, names.strings[i]) < 0)
			continue;
		const char *path = git_worktree_path(wt);
		if (git_worktree_validate(wt) == 0 && (!workdir || !orch_git__same_dir(path, workdir)) &&
		    has_checked_out(path, refname))
			found = strdup(path);
		git_worktree_free(wt);
	}
	git_strarray_dispose(&names);
	return found;
}

/* The paths of the conflicts left in an in-memory merge index, sorted and unique. */
static json_t *conflict_paths(git_index *index)
{
	git_index_conflict_iterator *it = NULL;
	const git_index_entry *anc, *ours, *theirs;
	json_t *paths = json_array();

	if (git_index_conflict_iterator_new(&it, index) < 0)
		return paths;
	while (git_index_conflict_next(&anc, &ours, &theirs, it) == 0) {
		const git_index_entry *e = ours ? ours : theirs ? theirs : anc;
		size_t n = json_array_size(paths);
		if (e && (n == 0 || strcmp(json_string_value(json_array_get(paths, n - 1)), e->path) != 0))
			json_array_append_new(paths, json_string(e->path));
	}
	git_index_conflict_iterator_free(it);
	return paths;
}

static char *paths_text(json_t *paths)
{
	char *s = json_dumps(paths, JSON_COMPACT);
	return s ? s : strdup("[]");
}

/* Fail with `code`, `msg` + the paths, and details {state?, paths}. */
static int fail_paths(int code, const char *state, json_t *paths, const char *fmt, const char *a, const char *b)
{
	char *list = paths_text(paths);
	char msg[512];

	snprintf(msg, sizeof(msg), fmt, a, b);
	orch_error_set(code, "%s: %s", msg, list);
	free(list);
	json_t *d = json_object();
	if (state)
		json_object_set_new(d, "state", json_string(state));
	json_object_set_new(d, "paths", paths);
	orch_error_details(d);
	return code;
}

/*
 * Whether the checkout at `workdir` holds tree `tree_id` in its index and
 * its files match the index: what a merge leaves when it is killed after
 * updating the checkout and before moving the branch.
 */
static bool checkout_holds_tree(const char *workdir, const git_oid *tree_id)
{
	git_status_options opts = GIT_STATUS_OPTIONS_INIT;
	git_repository *wt = NULL;
	git_status_list *list = NULL;
	git_index *idx = NULL;
	git_oid id;
	bool yes = false;

	if (git_repository_open(&wt, workdir) < 0)
		return false;
	if (git_repository_index(&idx, wt) == 0 && git_index_write_tree(&id, idx) == 0 && git_oid_equal(&id, tree_id)) {
		opts.show = GIT_STATUS_SHOW_WORKDIR_ONLY;
		opts.flags = 0; /* untracked files are not part of the question */
		if (git_status_list_new(&list, wt, &opts) == 0)
			yes = git_status_list_entrycount(list) == 0;
	}
	git_status_list_free(list);
	git_index_free(idx);
	git_repository_free(wt);
	return yes;
}

/*
 * Whether the regular file `full` holds a proper prefix of blob `id`: a
 * file whose write was cut by a kill (a checkout writes files in place).
 */
static bool cut_write_of(git_repository *repo, const git_oid *id, const char *full, off_t size)
{
	git_blob *blob = NULL;
	bool yes = false;
	FILE *f;

	if (git_blob_lookup(&blob, repo, id) < 0)
		return false;
	if ((git_object_size_t)size < git_blob_rawsize(blob) && (f = fopen(full, "rb")) != NULL) {
		char *buf = malloc((size_t)size + 1);
		yes = buf && fread(buf, 1, (size_t)size, f) == (size_t)size &&
		      memcmp(buf, git_blob_rawcontent(blob), (size_t)size) == 0;
		free(buf);
		fclose(f);
	}
	git_blob_free(blob);
	return yes;
}

/*
 * Whether every path in `paths` (relative to `workdir`) holds exactly what
 * `tree` has there, or is absent from both, except at most one file cut
 * short (the one being written when the kill came): the trace of a
 * checkout to `tree` killed part-way.  Finishing that checkout loses
 * nothing.
 */
static bool partial_checkout_of(git_tree *tree, const char *workdir, json_t *paths)
{
	git_repository *repo = git_tree_owner(tree);
	int cut = 0;
	json_t *p;
	size_t i;

	json_array_foreach(paths, i, p) {
		const char *rel = json_string_value(p);
		git_tree_entry *e = NULL;
		char *full = NULL;
		struct stat sb;
		bool same = false;
		if (!rel || asprintf(&full, "%s/%s", workdir, rel) < 0)
			return false;
		bool on_disk = lstat(full, &sb) == 0, in_tree = git_tree_entry_bypath(&e, tree, rel) == 0;
		if (in_tree && on_disk && S_ISREG(sb.st_mode)) {
			git_oid h;
			same = git_odb_hashfile(&h, full, GIT_OBJECT_BLOB) == 0 && git_oid_equal(&h, git_tree_entry_id(e));
			if (!same && cut == 0 && cut_write_of(repo, git_tree_entry_id(e), full, sb.st_size))
				same = ++cut == 1;
		} else {
			same = !in_tree && !on_disk;
		}
		git_tree_entry_free(e);
		free(full);
		if (!same)
			return false;
	}
	return json_array_size(paths) > 0;
}

/* ---- merging a branch into another ---- */

/* One merge of `child` into `parent`, as orch_git_merge_into goes through it. */
struct merge {
	orch_git *g;
	const char *parent, *child, *workdir;
	char *refname;      /* refs/heads/<parent> */
	git_oid ptip, ctip; /* the tips when the merge started */
	bool checkout;      /* `workdir` has `parent` checked out: update it too */
	git_commit *pc, *cc;
	git_tree *tree;     /* the merge's result */
	git_oid tree_id;
	bool resumed;       /* the checkout already holds the result: a merge killed before moving the branch */
	bool finish;        /* the checkout holds part of the result: a checkout killed half-way */
	bool ff_ok;         /* a fast-forward is allowed */
	bool ff;            /* and this merge is one: `merged` is the child's tip, no commit is made */
	const char *reflog; /* the reflog message asked for, or NULL */
	char *msg;          /* the merge commit's message, also the reflog's unless `reflog` */
	git_oid merged;     /* the merge commit (a fast-forward: the child's tip) */
};

static void merge_free(struct merge *m)
{
	free(m->msg);
	git_tree_free(m->tree);
	git_commit_free(m->cc);
	git_commit_free(m->pc);
	free(m->refname);
}

/*
 * The branches and their tips; ORCH_EINVALID_STATE when the child has
 * nothing new or the parent is checked out somewhere the merge would not
 * update.
 */
static int merge_start(struct merge *m)
{
	git_repository *repo = m->g->repo;
	git_reference *pref = NULL, *cref = NULL;
	char *elsewhere = NULL;
	struct stat sb;
	int rc = 0;

	if (git_branch_lookup(&pref, repo, m->parent, GIT_BRANCH_LOCAL) < 0) {
		rc = orch_error_set(ORCH_ENOTFOUND, "parent branch \"%s\" does not exist", m->parent);
		goto done;
	}
	if (git_branch_lookup(&cref, repo, m->child, GIT_BRANCH_LOCAL) < 0) {
		rc = orch_error_set(ORCH_ENOTFOUND, "branch \"%s\" does not exist", m->child);
		goto done;
	}
	if (!(m->refname = strdup(git_reference_name(pref)))) {
		rc = orch_error_set(ORCH_EINTERNAL, "out of memory");
		goto done;
	}
	git_oid_cpy(&m->ptip, git_reference_target(pref));
	git_oid_cpy(&m->ctip, git_reference_target(cref));
	if (git_oid_equal(&m->ptip, &m->ctip) || git_graph_descendant_of(repo, &m->ptip, &m->ctip) == 1) {
		rc = orch_error_set(ORCH_EINVALID_STATE, "branch \"%s\" has nothing to merge into \"%s\" "
				    "(its tip is already in it)", m->child, m->parent);
		orch_error_detail("state", json_string("nothing_to_merge"));
		goto done;
	}
	m->ff = m->ff_ok && git_graph_descendant_of(repo, &m->ctip, &m->ptip) == 1;
	m->checkout = m->workdir && stat(m->workdir, &sb) == 0 && has_checked_out(m->workdir, m->refname);
	if (!m->checkout && (elsewhere = checked_out_elsewhere(repo, m->refname, m->workdir)) != NULL) {
		rc = orch_error_set(ORCH_EINVALID_STATE, "branch \"%s\" is checked out at %s, not in the parent "
				    "worktree's directory; merging would move it under that checkout", m->parent,
				    elsewhere);
		orch_error_detail("state", json_string("checked_out_elsewhere"));
	}
done:
	free(elsewhere);
	git_reference_free(cref);
	git_reference_free(pref);
	return rc;
}

/* The merge in memory: its tree, or ORCH_ECONFLICT with the conflicting paths. */
static int merge_in_memory(struct merge *m)
{
	git_repository *repo = m->g->repo;
	git_index *index = NULL;
	int rc = 0;

	if (m->ff) {
		/* A fast-forward: the result is the child's tip itself. */
		if (git_commit_lookup(&m->pc, repo, &m->ptip) < 0 || git_commit_lookup(&m->cc, repo, &m->ctip) < 0 ||
		    git_commit_tree(&m->tree, m->cc) < 0)
			return orch_git__fail("look up the branch tips");
		git_oid_cpy(&m->tree_id, git_tree_id(m->tree));
		return 0;
	}
	if (git_commit_lookup(&m->pc, repo, &m->ptip) < 0 || git_commit_lookup(&m->cc, repo, &m->ctip) < 0 ||
	    git_merge_commits(&index, repo, m->pc, m->cc, NULL) < 0)
		rc = orch_git__fail("merge");
	else if (git_index_has_conflicts(index))
		rc = fail_paths(ORCH_ECONFLICT, NULL, conflict_paths(index), "merging \"%s\" into \"%s\" conflicts "
				"in", m->child, m->parent);
	else if (git_index_write_tree_to(&m->tree_id, index, repo) < 0 || git_tree_lookup(&m->tree, repo, &m->tree_id) < 0)
		rc = orch_git__fail("write merge tree");
	git_index_free(index);
	return rc;
}

/*
 * The parent's checkout must be clean, except for changes that are
 * exactly this merge's result, left by a merge killed after updating the
 * checkout (only the branch is left to move: resumed) or during it (the
 * checkout is to be finished).
 */
static int merge_check_checkout(struct merge *m)
{
	json_t *paths = NULL;
	int rc;

	if (!m->checkout)
		return 0;
	if ((rc = orch_git_dirty_paths(m->workdir, false, &paths)) != 0)
		return rc;
	if (json_array_size(paths) && checkout_holds_tree(m->workdir, &m->tree_id)) {
		m->resumed = true;
	} else if (json_array_size(paths) && partial_checkout_of(m->tree, m->workdir, paths)) {
		m->finish = true;
	} else if (json_array_size(paths)) {
		/* fail_paths takes `paths` into the error's details. */
		return fail_paths(ORCH_EINVALID_STATE, "dirty", paths, "the checkout of \"%s\" at %s has "
				  "uncommitted changes", m->parent, m->workdir);
	}
	json_decref(paths);
	return 0;
}

/* The merge commit (two parents), not yet on any branch. */
static int merge_commit(struct merge *m)
{
	git_repository *repo = m->g->repo;
	git_signature *sig = NULL;
	const git_commit *parents[2] = {m->pc, m->cc};
	int rc = 0;

	if (m->ff) {
		git_oid_cpy(&m->merged, &m->ctip);
		if (asprintf(&m->msg, "Fast-forward %s to '%s'", m->parent, m->child) < 0) {
			m->msg = NULL;
			return orch_error_set(ORCH_EINTERNAL, "out of memory");
		}
		return 0;
	}
	if (git_signature_default(&sig, repo) < 0 && git_signature_now(&sig, "orchfs", "orchfs@localhost") < 0)
		return orch_git__fail("signature");
	if (asprintf(&m->msg, "Merge branch '%s' into %s\n", m->child, m->parent) < 0) {
		m->msg = NULL;
		rc = orch_error_set(ORCH_EINTERNAL, "out of memory");
	} else if (git_commit_create(&m->merged, repo, NULL, sig, sig, NULL, m->msg, m->tree, 2, parents) < 0) {
		rc = orch_git__fail("create merge commit");
	}
	git_signature_free(sig);
	return rc;
}

/*
 * Update the parent's checkout to the merge, after a dry run: an untracked
 * or ignored file in the way stops everything (ORCH_EINVALID_STATE), unless
 * what is in the way is this merge's own result.  A failed checkout is
 * put back.
 */
static int merge_update_checkout(struct merge *m)
{
	unsigned safe = GIT_CHECKOUT_SAFE | GIT_CHECKOUT_DONT_OVERWRITE_IGNORED;
	json_t *paths = NULL;
	int rc = 0, err = 0;

	if (!m->checkout || m->resumed)
		return 0;
	if (!m->finish) {
		paths = json_array();
		err = checkout_commit(m->workdir, &m->merged, &m->ptip, safe | GIT_CHECKOUT_DRY_RUN, paths);
		if ((err == GIT_ECONFLICT || json_array_size(paths)) && partial_checkout_of(m->tree, m->workdir, paths)) {
			m->finish = true;
			err = 0;
		} else if (err == GIT_ECONFLICT || json_array_size(paths)) {
			/* fail_paths takes `paths` into the error's details. */
			return fail_paths(ORCH_EINVALID_STATE, "dirty", paths, "files in the checkout of \"%s\" at %s "
					  "would be overwritten by the merge", m->parent, m->workdir);
		}
	}
	/* Finishing an interrupted checkout: every difference is already the merge's own. */
	if (m->finish)
		safe = GIT_CHECKOUT_FORCE;
	if (err < 0 || checkout_commit(m->workdir, &m->merged, &m->ptip, safe, NULL) < 0) {
		rc = orch_git__fail("update the parent's checkout");
		checkout_commit(m->workdir, &m->ptip, &m->merged, GIT_CHECKOUT_FORCE, NULL);
	}
	json_decref(paths);
	return rc;
}

/*
 * Move the parent's branch to the merge, only if it still points where the
 * merge started (ORCH_ECONFLICT otherwise).  On failure the checkout is put back.
 */
/*
 * Move ref `refname` from `from` to `to` (compare-and-swap), named in an
 * inflight marker meanwhile: a kill between git taking the ref's lock and
 * renaming it over the ref leaves <ref>.lock, which the next merge or
 * start-up removes (orch_git_clear_dead_inflight).  libgit2's code.
 */
static int move_ref(orch_git *g, const char *refname, const git_oid *to, const git_oid *from, const char *msg)
{
	git_reference *moved = NULL;
	char *lock = NULL, *marker = NULL;
	int err;

	if (asprintf(&lock, "%s%s.lock", git_repository_commondir(g->repo), refname) >= 0)
		marker = orch_git__inflight_begin_lock(g, lock);
	err = git_reference_create_matching(&moved, g->repo, refname, to, 1, from, msg);
	orch_git__inflight_end(marker);
	free(lock);
	git_reference_free(moved);
	return err;
}

static int merge_move_branch(struct merge *m)
{
	int err = move_ref(m->g, m->refname, &m->merged, &m->ptip, m->reflog ? m->reflog : m->msg);
	int rc = 0;

	if (err == GIT_EMODIFIED)
		rc = orch_error_set(ORCH_ECONFLICT, "branch \"%s\" moved while merging \"%s\"; try again", m->parent,
				    m->child);
	else if (err < 0)
		rc = orch_git__fail("update branch");
	if (rc && m->checkout)
		checkout_commit(m->workdir, &m->ptip, &m->merged, GIT_CHECKOUT_FORCE, NULL);
	return rc;
}

/* The effect of a merge: the tips to put the branch (and the checkout) back between. */
struct merge_undo {
	orch_git_effect fx;
	char *refname;
	char *workdir; /* NULL: no checkout was updated */
	git_oid old_tip, new_tip;
};

/* Put the checkout back to the old tip, then the branch (only if it is still at the merge). */
static void merge_undo_run(orch_git_effect *fx)
{
	struct merge_undo *u = (struct merge_undo *)fx;

	if (u->workdir) {
		char *marker = orch_git__inflight_begin(fx->g, u->workdir);
		checkout_commit(u->workdir, &u->old_tip, &u->new_tip, GIT_CHECKOUT_FORCE, NULL);
		orch_git__inflight_end(marker);
	}
	move_ref(fx->g, u->refname, &u->old_tip, &u->new_tip, "orchfs: undo merge");
}

static void merge_undo_release(orch_git_effect *fx)
{
	struct merge_undo *u = (struct merge_undo *)fx;

	free(u->refname);
	free(u->workdir);
	free(u);
}

/*
 * The undo of merge `m`, made before git changes anything visible, so that
 * nothing can fail between a change and the caller holding its undo.
 * NULL when out of memory.  The new tip is filled in once it exists.
 */
static struct merge_undo *merge_undo_new(const struct merge *m)
{
	struct merge_undo *u = calloc(1, sizeof(*u));

	if (!u)
		return NULL;
	u->fx = (orch_git_effect){.undo = merge_undo_run, .release = merge_undo_release, .g = m->g};
	u->refname = strdup(m->refname);
	u->workdir = m->checkout ? strdup(m->workdir) : NULL;
	if (!u->refname || (m->checkout && !u->workdir)) {
		merge_undo_release(&u->fx);
		return NULL;
	}
	git_oid_cpy(&u->old_tip, &m->ptip);
	return u;
}

int orch_git_merge_into(orch_git *g, const char *parent, const char *workdir, const char *child,
			char *commit_hex, orch_git_effect **fx)
{
	orch_git_merge_opts opts = ORCH_GIT_MERGE_OPTS_INIT;

	return orch_git_merge_branch(g, parent, workdir, child, &opts, commit_hex, NULL, fx);
}

int orch_git_merge_branch(orch_git *g, const char *parent, const char *workdir, const char *child,
			  const orch_git_merge_opts *opts, char *commit_hex, bool *fast_forward, orch_git_effect **fx)
{
	struct merge m = {.g = g, .parent = parent, .child = child, .workdir = workdir, .ff_ok = opts->fast_forward,
			  .reflog = opts->reflog};
	struct merge_undo *u = NULL;
	char *marker = NULL;
	int rc;

	*fx = NULL;
	if (fast_forward)
		*fast_forward = false;
	/* A checkout left locked by a process killed while updating it is released first. */
	orch_git_clear_dead_inflight(g, NULL);
	/*
	 * From here on git may lock the parent checkout's index (status, a dry
	 * run, the checkout itself): name it, so that a kill leaves a lock
	 * that the next merge or start-up knows to be ours.
	 */
	if (workdir)
		marker = orch_git__inflight_begin(g, workdir);
	if ((rc = merge_start(&m)) != 0 || (rc = merge_in_memory(&m)) != 0 || (rc = merge_check_checkout(&m)) != 0 ||
	    (rc = merge_commit(&m)) != 0)
		goto done;
	if (!(u = merge_undo_new(&m))) {
		rc = orch_error_set(ORCH_EINTERNAL, "out of memory");
		goto done;
	}
	if ((rc = merge_update_checkout(&m)) != 0 || (rc = merge_move_branch(&m)) != 0)
		goto done;
	git_oid_cpy(&u->new_tip, &m.merged);
	git_oid_tostr(commit_hex, ORCH_GIT_HEX_SIZE, &m.merged);
	if (fast_forward)
		*fast_forward = m.ff;
	*fx = &u->fx;
	u = NULL;
done:
	if (u)
		merge_undo_release(&u->fx);
	orch_git__inflight_end(marker);
	merge_free(&m);
	return rc;
}

bool orch_git_merged_at_tip(orch_git *g, const char *parent, const char *child, char *commit_hex)
{
	git_reference *pref = NULL, *cref = NULL;
	git_commit *tipc = NULL;
	bool yes = false;

	if (git_branch_lookup(&pref, g->repo, parent, GIT_BRANCH_LOCAL) == 0 &&
	    git_branch_lookup(&cref, g->repo, child, GIT_BRANCH_LOCAL) == 0 &&
	    git_commit_lookup(&tipc, g->repo, git_reference_target(pref)) == 0 &&
	    git_commit_parentcount(tipc) == 2 &&
	    git_oid_equal(git_commit_parent_id(tipc, 1), git_reference_target(cref))) {
		git_oid_tostr(commit_hex, ORCH_GIT_HEX_SIZE, git_commit_id(tipc));
		yes = true;
	}
	git_commit_free(tipc);
	git_reference_free(cref);
	git_reference_free(pref);
	return yes;
}

bool orch_git_reflog_find(orch_git *g, const char *branch, const char *message, char *commit_hex)
{
	git_reference *ref = NULL;
	git_reflog *log = NULL;
	bool yes = false;

	if (git_branch_lookup(&ref, g->repo, branch, GIT_BRANCH_LOCAL) < 0 ||
	    git_reflog_read(&log, g->repo, git_reference_name(ref)) < 0)
		goto done;
	/* Index 0 is the newest entry. */
	for (size_t i = 0; i < git_reflog_entrycount(log) && !yes; i++) {
		const git_reflog_entry *e = git_reflog_entry_byindex(log, i);
		const char *msg = git_reflog_entry_message(e);
		const git_oid *id = git_reflog_entry_id_new(e), *tip = git_reference_target(ref);
		if (!msg || strcmp(msg, message) != 0)
			continue;
		if (git_oid_equal(id, tip) || git_graph_descendant_of(g->repo, tip, id) == 1) {
			git_oid_tostr(commit_hex, ORCH_GIT_HEX_SIZE, id);
			yes = true;
		}
		break; /* only the newest entry of that message counts */
	}
done:
	git_reflog_free(log);
	git_reference_free(ref);
	return yes;
}

int orch_git_branch_ahead(orch_git *g, const char *branch, const char *base, bool *ahead)
{
	git_reference *b = NULL, *t = NULL;
	int rc = 0;

	*ahead = false;
	if (git_branch_lookup(&b, g->repo, branch, GIT_BRANCH_LOCAL) < 0)
		rc = orch_error_set(ORCH_ENOTFOUND, "branch \"%s\" does not exist", branch);
	else if (git_branch_lookup(&t, g->repo, base, GIT_BRANCH_LOCAL) < 0)
		rc = orch_error_set(ORCH_ENOTFOUND, "branch \"%s\" does not exist", base);
	else
		*ahead = !git_oid_equal(git_reference_target(b), git_reference_target(t)) &&
			 git_graph_descendant_of(g->repo, git_reference_target(t), git_reference_target(b)) != 1;
	git_reference_free(t);
	git_reference_free(b);
	return rc;
}

#define SUMMARY_MAX_COMMITS 500
#define SUMMARY_MAX_PATHS 5000

/* The commits of `tip` that `base` lacks, newest first: [{id, subject}] (at most SUMMARY_MAX_COMMITS). */
static int summary_commits(git_repository *repo, const git_oid *tip, const git_oid *base, json_t *out, bool *more)
{
	git_revwalk *walk = NULL;
	git_oid id;
	int rc = 0;

	*more = false;
	if (git_revwalk_new(&walk, repo) < 0 || git_revwalk_push(walk, tip) < 0 ||
	    (base && git_revwalk_hide(walk, base) < 0)) {
		rc = orch_git__fail("walk commits");
		goto done;
	}
	git_revwalk_sorting(walk, GIT_SORT_TOPOLOGICAL | GIT_SORT_TIME);
	while (git_revwalk_next(&id, walk) == 0) {
		git_commit *c = NULL;
		char hex[ORCH_GIT_HEX_SIZE];
		if (json_array_size(out) == SUMMARY_MAX_COMMITS) {
			*more = true;
			break;
		}
		if (git_commit_lookup(&c, repo, &id) < 0)
			continue;
		git_oid_tostr(hex, sizeof(hex), &id);
		const char *subject = git_commit_summary(c);
		json_array_append_new(out, json_pack("{s:s, s:s}", "id", hex, "subject", subject ? subject : ""));
		git_commit_free(c);
	}
done:
	git_revwalk_free(walk);
	return rc;
}

/* The paths that differ between the trees of commits `from` (NULL: empty) and `to`. */
static int summary_paths(git_repository *repo, const git_oid *from, const git_oid *to, json_t *out, bool *more)
{
	git_commit *fc = NULL, *tc = NULL;
	git_tree *ft = NULL, *tt = NULL;
	git_diff *diff = NULL;
	int rc = 0;

	*more = false;
	if ((from && (git_commit_lookup(&fc, repo, from) < 0 || git_commit_tree(&ft, fc) < 0)) ||
	    git_commit_lookup(&tc, repo, to) < 0 || git_commit_tree(&tt, tc) < 0 ||
	    git_diff_tree_to_tree(&diff, repo, ft, tt, NULL) < 0) {
		rc = orch_git__fail("diff");
		goto done;
	}
	for (size_t i = 0; i < git_diff_num_deltas(diff); i++) {
		const git_diff_delta *d = git_diff_get_delta(diff, i);
		if (i == SUMMARY_MAX_PATHS) {
			*more = true;
			break;
		}
		json_array_append_new(out, json_string(d->new_file.path ? d->new_file.path : d->old_file.path));
	}
done:
	git_diff_free(diff);
	git_tree_free(tt);
	git_tree_free(ft);
	git_commit_free(tc);
	git_commit_free(fc);
	return rc;
}

int orch_git_branch_summary(const char *repo_dir, const char *branch, const char *base, json_t **out)
{
	git_repository *repo = NULL;
	git_reference *b = NULL, *t = NULL;
	git_oid mb;
	bool has_base = false, more_c = false, more_p = false;
	char hex[ORCH_GIT_HEX_SIZE];
	json_t *commits = json_array(), *paths = json_array();
	int rc = 0;

	*out = NULL;
	if (git_repository_open(&repo, repo_dir) < 0) {
		rc = orch_git__fail("open repository");
		goto done;
	}
	if (git_branch_lookup(&b, repo, branch, GIT_BRANCH_LOCAL) < 0) {
		*out = json_pack("{s:s, s:b}", "branch", branch, "exists", 0);
		goto done;
	}
	const git_oid *tip = git_reference_target(b);
	if (base && git_branch_lookup(&t, repo, base, GIT_BRANCH_LOCAL) == 0 &&
	    git_merge_base(&mb, repo, tip, git_reference_target(t)) == 0)
		has_base = true;
	if ((rc = summary_commits(repo, tip, t ? git_reference_target(t) : NULL, commits, &more_c)) != 0 ||
	    (rc = summary_paths(repo, has_base ? &mb : NULL, tip, paths, &more_p)) != 0)
		goto done;
	git_oid_tostr(hex, sizeof(hex), tip);
	*out = json_pack("{s:s, s:s, s:s?, s:O, s:O}", "branch", branch, "head", hex, "base", t ? base : NULL,
			 "commits", commits, "paths", paths);
	if (more_c || more_p)
		json_object_set_new(*out, "truncated", json_true());
done:
	json_decref(commits);
	json_decref(paths);
	git_reference_free(t);
	git_reference_free(b);
	git_repository_free(repo);
	return rc;
}
