/*
 * The merge pipeline without FUSE: orch_git_merge_branch (the merge into a
 * target branch: fast-forward or merge commit, compare-and-swap of the
 * ref, the checkout updated only when clean, its undo, the reflog mark a
 * retry recognises) and the merge.main.* methods on a real repository.
 */
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "orchfs/git.h"
#include "test.h"

static char *tip(test_env *env, const char *branch)
{
	return strdup(out1("git -C %s rev-parse -q --verify refs/heads/%s", env->repo, branch));
}

/* Commit `content` to `file` in the checkout at `dir`. */
static int commit_in(const char *dir, const char *file, const char *content)
{
	return sh("cd %s && printf '%%s' '%s' > %s && git add %s && git -c user.name=t -c user.email=t@e "
		  "commit -q -m 'change %s'", dir, content, file, file, file);
}

/* A branch `name` from main with one commit of `file`, made without a checkout of it. */
static int branch_with(test_env *env, const char *name, const char *file, const char *content)
{
	return sh("cd %s && git branch %s main && git worktree add -q %s/wt-%s %s && cd %s/wt-%s && printf '%%s' '%s' "
		  "> %s && git add %s && git -c user.name=t -c user.email=t@e commit -q -m 'add %s'", env->repo, name,
		  env->root, name, name, env->root, name, content, file, file, file);
}

/* A digest of the main checkout's files (.git aside) and its index. */
static char *digest(test_env *env)
{
	return strdup(out1("cd %s && (find . -path ./.git -prune -o -type f -print0 | sort -z | xargs -0 sha1sum; "
			   "sha1sum .git/index) | sha1sum", env->repo));
}

static int merge(test_env *env, const char *source, bool ff_ok, const char *reflog, char *hex, bool *ff,
		 orch_git_effect **fx)
{
	orch_git_merge_opts opts = ORCH_GIT_MERGE_OPTS_INIT;

	opts.fast_forward = ff_ok;
	opts.reflog = reflog;
	orch_error_clear();
	return orch_git_merge_branch(env->ctx.git, "main", env->repo, source, &opts, hex, ff, fx);
}

TEST(git_merge_fast_forwards_and_updates_checkout)
{
	char hex[ORCH_GIT_HEX_SIZE];
	orch_git_effect *fx = NULL;
	bool ff = false;

	CHECK(branch_with(env, "feat", "f.txt", "feature") == 0);
	char *ftip = tip(env, "feat");
	CHECK_EQ_INT(merge(env, "feat", true, "orchfs test mark", hex, &ff, &fx), 0);
	CHECK(ff);
	CHECK_EQ_STR(hex, ftip);
	char *mtip = tip(env, "main");
	CHECK_EQ_STR(mtip, ftip);
	CHECK_EQ_STR(out1("cat %s/f.txt", env->repo), "feature");
	CHECK_EQ_STR(out1("git -C %s status --porcelain", env->repo), "");
	/* The reflog carries the mark, and a retry finds it. */
	CHECK_EQ_STR(out1("git -C %s reflog -1 --format=%%gs main", env->repo), "orchfs test mark");
	char found[ORCH_GIT_HEX_SIZE];
	CHECK(orch_git_reflog_find(env->ctx.git, "main", "orchfs test mark", found));
	CHECK_EQ_STR(found, ftip);
	CHECK(!orch_git_reflog_find(env->ctx.git, "main", "orchfs other mark", found));
	/* The undo puts the checkout and the ref back. */
	orch_git_effect_undo(fx);
	orch_git_effect_free(fx);
	char *back = tip(env, "main");
	CHECK(strcmp(back, ftip) != 0);
	CHECK(sh("test ! -e %s/f.txt", env->repo) == 0);
	CHECK_EQ_STR(out1("git -C %s status --porcelain", env->repo), "");
	free(ftip);
	free(mtip);
	free(back);
}

TEST(git_merge_commit_when_target_moved_on)
{
	char hex[ORCH_GIT_HEX_SIZE];
	orch_git_effect *fx = NULL;
	bool ff = true;

	CHECK(branch_with(env, "feat", "f.txt", "feature") == 0);
	CHECK(commit_in(env->repo, "m.txt", "main side") == 0);
	char *before = tip(env, "main"), *ftip = tip(env, "feat");
	CHECK_EQ_INT(merge(env, "feat", true, NULL, hex, &ff, &fx), 0);
	CHECK(!ff);
	char want[200];
	snprintf(want, sizeof(want), "%s %s %s", hex, before, ftip);
	CHECK_EQ_STR(out1("git -C %s rev-list --parents -n 1 main", env->repo), want);
	CHECK_EQ_STR(out1("cat %s/f.txt %s/m.txt | tr -d '\\n'", env->repo, env->repo), "featuremain side");
	CHECK_EQ_STR(out1("git -C %s status --porcelain", env->repo), "");
	orch_git_effect_free(fx);
	/* Nothing new now. */
	CHECK_EQ_INT(merge(env, "feat", true, NULL, hex, &ff, &fx), ORCH_EINVALID_STATE);
	CHECK_EQ_STR(jstr(orch_error_last()->details, "state"), "nothing_to_merge");
	CHECK(fx == NULL);
	free(before);
	free(ftip);
}

TEST(git_merge_conflict_and_dirty_change_nothing)
{
	char hex[ORCH_GIT_HEX_SIZE];
	orch_git_effect *fx = NULL;
	bool ff;

	CHECK(branch_with(env, "feat", "README", "theirs") == 0);
	CHECK(commit_in(env->repo, "README", "ours") == 0);
	char *before = tip(env, "main"), *d = digest(env);
	CHECK_EQ_INT(merge(env, "feat", true, NULL, hex, &ff, &fx), ORCH_ECONFLICT);
	CHECK_EQ_STR(jstr(orch_error_last()->details, "paths.0"), "README");
	char *after = tip(env, "main"), *d2 = digest(env);
	CHECK_EQ_STR(after, before);
	CHECK_EQ_STR(d2, d);
	free(after);
	free(d2);
	/* A dirty checkout (a tracked change) blocks a clean merge; nothing moves. */
	CHECK(branch_with(env, "feat2", "g.txt", "g") == 0);
	CHECK(sh("echo local >> %s/README", env->repo) == 0);
	CHECK_EQ_INT(merge(env, "feat2", true, NULL, hex, &ff, &fx), ORCH_EINVALID_STATE);
	CHECK_EQ_STR(jstr(orch_error_last()->details, "state"), "dirty");
	CHECK_EQ_STR(jstr(orch_error_last()->details, "paths.0"), "README");
	after = tip(env, "main");
	CHECK_EQ_STR(after, before);
	CHECK(sh("test ! -e %s/g.txt", env->repo) == 0);
	free(after);
	/* An untracked file in the way blocks too; one out of the way does not. */
	CHECK(sh("git -C %s checkout -q README && echo mine > %s/g.txt", env->repo, env->repo) == 0);
	CHECK_EQ_INT(merge(env, "feat2", true, NULL, hex, &ff, &fx), ORCH_EINVALID_STATE);
	CHECK_EQ_STR(jstr(orch_error_last()->details, "paths.0"), "g.txt");
	CHECK_EQ_STR(out1("cat %s/g.txt", env->repo), "mine");
	CHECK(sh("mv %s/g.txt %s/notes.txt", env->repo, env->repo) == 0);
	CHECK_EQ_INT(merge(env, "feat2", true, NULL, hex, &ff, &fx), 0);
	CHECK_EQ_STR(out1("cat %s/notes.txt", env->repo), "mine");
	CHECK_EQ_STR(out1("cat %s/g.txt", env->repo), "g");
	orch_git_effect_free(fx);
	free(before);
	free(d);
}

/* The target moved after the merge started: the compare-and-swap refuses (tested through a checkout-less target). */
TEST(git_merge_target_not_checked_out_moves_only_the_branch)
{
	char hex[ORCH_GIT_HEX_SIZE];
	orch_git_effect *fx = NULL;
	bool ff;

	CHECK(branch_with(env, "feat", "f.txt", "f") == 0);
	CHECK(sh("git -C %s checkout -q -b dev", env->repo) == 0);
	CHECK_EQ_INT(merge(env, "feat", true, NULL, hex, &ff, &fx), 0);
	CHECK(sh("test ! -e %s/f.txt", env->repo) == 0);
	CHECK_EQ_STR(out1("git -C %s rev-parse --abbrev-ref HEAD", env->repo), "dev");
	CHECK_EQ_STR(out1("git -C %s status --porcelain", env->repo), "");
	CHECK_EQ_STR(out1("git -C %s show main:f.txt", env->repo), "f");
	orch_git_effect_free(fx);
	/* Checked out in another worktree: refused, nothing moves. */
	CHECK(branch_with(env, "feat2", "g.txt", "g") == 0);
	CHECK(sh("git -C %s worktree add -q %s/other main", env->repo, env->root) == 0);
	char *before = tip(env, "main");
	CHECK_EQ_INT(merge(env, "feat2", true, NULL, hex, &ff, &fx), ORCH_EINVALID_STATE);
	CHECK_EQ_STR(jstr(orch_error_last()->details, "state"), "checked_out_elsewhere");
	char *after = tip(env, "main");
	CHECK_EQ_STR(after, before);
	free(before);
	free(after);
}

/* A merge killed after updating the checkout, before moving the ref: the next merge finishes it. */
TEST(git_merge_finishes_a_checkout_left_by_a_kill)
{
	char hex[ORCH_GIT_HEX_SIZE];
	orch_git_effect *fx = NULL;
	bool ff;

	CHECK(branch_with(env, "feat", "f.txt", "feature") == 0);
	/* What the killed merge left: the checkout at feat's tree, the ref still at main. */
	CHECK(sh("cd %s && git read-tree -u -m main feat", env->repo) == 0);
	CHECK_EQ_INT(merge(env, "feat", true, NULL, hex, &ff, &fx), 0);
	CHECK(ff);
	char *ftip = tip(env, "feat"), *mtip = tip(env, "main");
	CHECK_EQ_STR(mtip, ftip);
	CHECK_EQ_STR(out1("git -C %s status --porcelain", env->repo), "");
	orch_git_effect_free(fx);
	free(ftip);
	free(mtip);
}

/* ---- the methods ---- */

/* Session `n`'s root: commit `file` there. */
static void root_commit(test_env *env, int n, const char *file, const char *content)
{
	char dir[512];

	snprintf(dir, sizeof(dir), "%s/.orchfs/worktrees/session-%d", env->repo, n);
	CHECK(commit_in(dir, file, content) == 0);
}

TEST(main_queue_lock_and_run)
{
	json_decref(ok(env, "session.open", "{}")); /* session 1, root worktree 2 */
	json_decref(ok(env, "session.open", "{}")); /* session 2, root worktree 3 */
	root_commit(env, 1, "one.txt", "1");
	root_commit(env, 2, "two.txt", "2");
	json_t *a = ok(env, "merge.main.request", "{\"session_id\": 1, \"from_worktree_id\": 2}");
	CHECK_EQ_STR(jstr(a, "state"), "queued");
	CHECK_EQ_STR(jstr(a, "target_branch"), "main");
	json_decref(a);
	json_decref(ok(env, "merge.main.request", "{\"session_id\": 2, \"from_worktree_id\": 3}"));
	json_decref(fails(env, ORCH_EEXISTS, "merge.main.request", "{\"session_id\": 1, \"from_worktree_id\": 2}"));
	json_decref(fails(env, ORCH_EFORBIDDEN, "merge.main.request", "{\"session_id\": 2, \"from_worktree_id\": 2}"));
	json_t *n = ok(env, "merge.main.next", "{}");
	CHECK_EQ_INT(jint(n, "id"), 1);
	json_decref(n);
	/* No lock, no run. */
	json_decref(fails(env, ORCH_EFORBIDDEN, "merge.main.run", "{\"session_id\": 1}"));
	json_t *l = ok(env, "merge.main.acquire_lock", "{\"session_id\": 1, \"ttl_seconds\": 60}");
	CHECK_EQ_STR(jstr(l, "state"), "locked");
	CHECK_EQ_INT(jint(l, "holder_session_id"), 1);
	json_decref(l);
	json_decref(fails(env, ORCH_ECONFLICT, "merge.main.acquire_lock", "{\"session_id\": 2}"));
	json_decref(fails(env, ORCH_EFORBIDDEN, "merge.main.release_lock", "{\"session_id\": 2}"));
	json_decref(fails(env, ORCH_EFORBIDDEN, "merge.main.run", "{\"session_id\": 2}"));
	json_t *r = ok(env, "merge.main.run", "{\"session_id\": 1}");
	CHECK_EQ_INT(jint(r, "id"), 1);
	CHECK_EQ_STR(jstr(r, "state"), "merged");
	CHECK(json_is_true(json_object_get(r, "fast_forward")));
	char *m = tip(env, "main");
	CHECK_EQ_STR(jstr(r, "merged_commit"), m);
	json_decref(r);
	free(m);
	json_decref(fails(env, ORCH_EINVALID_STATE, "merge.main.run", "{\"session_id\": 1, \"request_id\": 1}"));
	json_decref(ok(env, "merge.main.release_lock", "{\"session_id\": 1}"));
	json_decref(ok(env, "merge.main.acquire_lock", "{\"session_id\": 2}"));
	r = ok(env, "merge.main.run", "{\"session_id\": 2}");
	CHECK_EQ_INT(jint(r, "id"), 2);
	CHECK(json_is_false(json_object_get(r, "fast_forward")));
	json_decref(r);
	CHECK_EQ_STR(out1("cat %s/one.txt %s/two.txt | tr -d '\\n'", env->repo, env->repo), "12");
	CHECK_EQ_STR(out1("git -C %s status --porcelain", env->repo), "");
	json_t *none = ok(env, "merge.main.next", "{}");
	CHECK(json_is_null(none));
	json_decref(none);
	json_decref(fails(env, ORCH_ENOTFOUND, "merge.main.run", "{\"session_id\": 2}"));
	/* session.close releases the lock. */
	json_decref(ok(env, "session.close", "{\"session_id\": 2}"));
	l = ok(env, "merge.main.acquire_lock", "{\"session_id\": 1}");
	CHECK_EQ_INT(jint(l, "holder_session_id"), 1);
	json_decref(l);
}

/* A conflicting item fails (recorded although the call fails), main is untouched. */
TEST(main_run_conflict_records_failed)
{
	json_decref(ok(env, "session.open", "{}"));
	root_commit(env, 1, "README", "root side");
	CHECK(commit_in(env->repo, "README", "main side") == 0);
	json_decref(ok(env, "merge.main.request", "{\"session_id\": 1, \"from_worktree_id\": 2}"));
	json_decref(ok(env, "merge.main.acquire_lock", "{\"session_id\": 1}"));
	char *before = tip(env, "main");
	int64_t v = db_version(env);
	json_t *e = fails(env, ORCH_ECONFLICT, "merge.main.run", "{\"session_id\": 1}");
	CHECK_EQ_STR(jstr(e, "details.paths.0"), "README");
	CHECK(strstr(jstr(e, "message"), "git merge main") != NULL);
	json_decref(e);
	char *after = tip(env, "main");
	CHECK_EQ_STR(after, before);
	json_t *s = ok(env, "merge.main.status", "{\"request_id\": 1}");
	CHECK_EQ_STR(jstr(s, "state"), "failed");
	CHECK(strstr(jstr(s, "error_message"), "README") != NULL);
	json_decref(s);
	CHECK_EQ_INT(db_version(env), v + 1);
	free(before);
	free(after);
}

/* The ref moved but the call did not commit (killed): the retry recognises the mark and records it. */
TEST(main_run_retry_after_ref_moved)
{
	json_decref(ok(env, "session.open", "{}"));
	root_commit(env, 1, "one.txt", "1");
	json_decref(ok(env, "merge.main.request", "{\"session_id\": 1, \"from_worktree_id\": 2}"));
	json_decref(ok(env, "merge.main.acquire_lock", "{\"session_id\": 1}"));
	char *rtip = tip(env, "session/1"), mark[200];
	snprintf(mark, sizeof(mark), "orchfs merge.main.run #1 (session/1 at %s)", rtip);
	/* What the killed call did in git: the checkout, then the ref with its mark. */
	CHECK(sh("cd %s && git read-tree -u -m main session/1 && git update-ref -m '%s' refs/heads/main session/1",
		 env->repo, mark) == 0);
	json_t *r = ok(env, "merge.main.run", "{\"session_id\": 1}");
	CHECK_EQ_STR(jstr(r, "state"), "merged");
	CHECK_EQ_STR(jstr(r, "merged_commit"), rtip);
	json_decref(r);
	char *m = tip(env, "main");
	CHECK_EQ_STR(m, rtip);
	CHECK_EQ_STR(out1("git -C %s status --porcelain", env->repo), "");
	free(m);
	free(rtip);
}
