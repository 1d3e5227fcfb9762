/*
 * Hardening (issue 13): a failed call leaves no git state, leftovers are
 * detached from git's metadata and cleaned at start-up, every directory
 * orchfs creates or removes is reached without following a symlink.
 */
#include <errno.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "orchfs/git.h"
#include "test.h"

/* Start-up as `orchfs mount` runs it: reconcile records and disk. */
static void restart(test_env *env)
{
	json_t *log = NULL;

	orch_ctx_close(&env->ctx);
	CHECK_EQ_INT(orch_ctx_open(&env->ctx, env->repo, NULL), 0);
	CHECK_EQ_INT(orch_worktree_reconcile(&env->ctx, &log), 0);
	json_decref(log);
}

/* Whether a path exists (without following a last symlink). */
static bool exists(const char *fmt, const char *a, const char *b)
{
	char p[4096];
	struct stat sb;

	snprintf(p, sizeof(p), fmt, a, b);
	return lstat(p, &sb) == 0;
}

TEST(failed_checkout_enospc_leaves_no_git_state)
{
	/* A checkout larger than the filesystem that holds <state>/worktrees. */
	CHECK(sh("cd %s && head -c 3000000 /dev/urandom > big && git add big && git commit -qm big && "
		 "mkdir -p .orchfs/worktrees && mount -t tmpfs -o size=1m orchfs-test %s/.orchfs/worktrees",
		 env->repo, env->repo) == 0);
	for (int round = 0; round < 2; round++) {
		json_decref(fails(env, ORCH_EGIT, "worktree.create", "{\"branch\": \"feat\", \"create_on_disk\": true}"));
		CHECK(sh("cd %s && test -z \"$(git branch --list feat)\"", env->repo) == 0);
		CHECK(!exists("%s/.git/worktrees/orchfs-feat%s", env->repo, ""));
		CHECK(!exists("%s/.orchfs/worktrees/feat%s", env->repo, ""));
		json_decref(fails(env, ORCH_EGIT, "session.open", "{}"));
		CHECK(sh("cd %s && test -z \"$(git branch --list 'session/*')\"", env->repo) == 0);
		CHECK(!exists("%s/.git/worktrees/orchfs-session-1%s", env->repo, ""));
		CHECK_EQ_INT(db_version(env), 0);
	}
	CHECK(sh("umount %s/.orchfs/worktrees", env->repo) == 0);
	/* With room, the same calls succeed: nothing was left to say `exists` or `git`. */
	json_decref(ok(env, "worktree.create", "{\"branch\": \"feat\", \"create_on_disk\": true}"));
	json_decref(ok(env, "session.open", "{}"));
	CHECK(sh("cd %s/.orchfs/worktrees/feat && git status --porcelain | grep -q . && exit 1; "
		 "cmp big %s/big", env->repo, env->repo) == 0);
}

TEST(startup_prunes_orchfs_metadata_no_record_claims)
{
	/* A call killed while git wrote its metadata: a directory with no gitdir or HEAD yet. */
	CHECK(sh("mkdir -p %s/.git/worktrees/orchfs-feat %s/.git/worktrees/orchfs-x && "
		 "echo ../.. > %s/.git/worktrees/orchfs-x/commondir", env->repo, env->repo, env->repo) == 0);
	/* One that is not orchfs's stays. */
	CHECK(sh("mkdir -p %s/.git/worktrees/theirs", env->repo) == 0);
	restart(env);
	CHECK(!exists("%s/.git/worktrees/orchfs-feat%s", env->repo, ""));
	CHECK(!exists("%s/.git/worktrees/orchfs-x%s", env->repo, ""));
	CHECK(exists("%s/.git/worktrees/theirs%s", env->repo, ""));
	json_decref(ok(env, "worktree.create", "{\"branch\": \"feat\", \"create_on_disk\": true}"));
	/* A valid checkout no record names, with work in it, stays (reclaim keeps what could be lost). */
	CHECK(sh("cd %s && git worktree add -q -b mine %s/.orchfs/worktrees/mine 2>/dev/null && "
		 "echo w > %s/.orchfs/worktrees/mine/w", env->repo, env->repo, env->repo) == 0);
	restart(env);
	CHECK(exists("%s/.orchfs/worktrees/mine/w%s", env->repo, ""));
	CHECK(exists("%s/.orchfs/worktrees/feat/README%s", env->repo, ""));
}

TEST(worktrees_dir_that_is_a_symlink_is_never_followed)
{
	/* <state>/worktrees points elsewhere: no checkout may be made there. */
	CHECK(sh("mkdir -p %s/elsewhere %s/.orchfs && ln -s %s/elsewhere %s/.orchfs/worktrees", env->root, env->repo,
		 env->root, env->repo) == 0);
	json_t *e = fails(env, ORCH_EINVALID_STATE, "worktree.create",
			  "{\"branch\": \"feat\", \"path\": \"a/b\", \"create_on_disk\": true}");
	CHECK(e && strstr(jstr(e, "message"), "symlink"));
	json_decref(e);
	json_decref(fails(env, ORCH_EINVALID_STATE, "session.open", "{}"));
	CHECK(sh("test -z \"$(ls -A %s/elsewhere)\"", env->root) == 0);
	CHECK(sh("cd %s && test -z \"$(git branch --list feat 'session/*')\"", env->repo) == 0);
	CHECK_EQ_INT(db_version(env), 0);
	/* The in-flight directory is not made through a symlink either. */
	CHECK(!exists("%s/elsewhere/inflight%s", env->root, ""));
	/* A real directory again: the same calls work. */
	CHECK(sh("rm %s/.orchfs/worktrees", env->repo) == 0);
	json_decref(ok(env, "worktree.create", "{\"branch\": \"feat\", \"path\": \"a/b\", \"create_on_disk\": true}"));
	CHECK(exists("%s/.orchfs/worktrees/a/b/README%s", env->repo, ""));
}

/* The one leftover of `dir` below <state>/worktrees (its full path into `out`); whether there is exactly one. */
static bool one_leftover(test_env *env, const char *dir, char *out, size_t size)
{
	char cmd[1024];
	FILE *f;
	int n = 0;

	snprintf(cmd, sizeof(cmd), "ls -d %s/.orchfs/worktrees/%s.orchfs-leftover-* 2>/dev/null", env->repo, dir);
	if (!(f = popen(cmd, "r")))
		return false;
	while (fgets(out, (int)size, f))
		n++;
	pclose(f);
	out[strcspn(out, "\n")] = '\0';
	return n == 1;
}

TEST(leftover_is_detached_and_cleaned_at_startup)
{
	char left[1024];

	/* A session.open killed mid-checkout: a tracked file missing, another half written. */
	CHECK(sh("cd %s && seq 1 20000 > nums && mkdir d && echo x > d/y && git add nums d && git commit -qm more && "
		 "git worktree add -q -b session/1 .orchfs/worktrees/session-1 2>/dev/null && "
		 "cd .orchfs/worktrees/session-1 && rm README && head -c 1000 nums > n && mv n nums",
		 env->repo) == 0);
	json_decref(ok(env, "session.open", "{}"));
	/* The retry set the half-made checkout aside, detached, and made the live one. */
	CHECK(one_leftover(env, "session-1", left, sizeof(left)));
	CHECK(exists("%s/ORCHFS-LEFTOVER%s", left, ""));
	CHECK(exists("%s/.git.orchfs-detached%s", left, ""));
	/* git refuses to run inside it: nothing there can move the live branch. */
	CHECK(sh("cd %s && git status >/dev/null 2>&1", left) != 0);
	CHECK(sh("cd %s && echo z >> d/y && git commit -qam evil >/dev/null 2>&1", left) != 0);
	CHECK(sh("cd %s/.orchfs/worktrees/session-1 && test -z \"$(git status --porcelain)\" && "
		 "test \"$(git rev-parse HEAD)\" = \"$(git -C %s rev-parse main)\"", env->repo, env->repo) == 0);
	/* d/y now holds a change of the user's: kept at start-up, and listed. */
	restart(env);
	CHECK(one_leftover(env, "session-1", left, sizeof(left)));
	json_t *all = NULL;
	char root[600];
	snprintf(root, sizeof(root), "%s/.orchfs/worktrees", env->repo);
	CHECK_EQ_INT(orch_git_leftovers(env->ctx.git, root, false, &all, NULL), 0);
	CHECK_EQ_INT(json_array_size(all), 1);
	CHECK(json_is_true(json_object_get(json_array_get(all, 0), "user_changes")));
	json_decref(all);
	/* Undo the user's change: only files git had not written remain, so start-up removes it. */
	CHECK(sh("cd %s && echo x > d/y", left) == 0);
	restart(env);
	CHECK(!one_leftover(env, "session-1", left, sizeof(left)));
	CHECK(exists("%s/.orchfs/worktrees/session-1/nums%s", env->repo, ""));
}

TEST(leftover_left_attached_by_an_older_orchfs_is_detached_at_startup)
{
	char left[1024];

	/* Set aside the way older versions did: renamed, its .git still pointing at live metadata. */
	CHECK(sh("cd %s && git worktree add -q -b session/1 .orchfs/worktrees/session-1 2>/dev/null && "
		 "mv .orchfs/worktrees/session-1 .orchfs/worktrees/session-1.orchfs-leftover-5 && "
		 "echo mine > .orchfs/worktrees/session-1.orchfs-leftover-5/mine", env->repo) == 0);
	restart(env);
	CHECK(one_leftover(env, "session-1", left, sizeof(left)));
	CHECK(exists("%s/.git.orchfs-detached%s", left, ""));
	CHECK(exists("%s/mine%s", left, ""));
	CHECK(sh("cd %s && git status >/dev/null 2>&1", left) != 0);
}

TEST(leftover_of_a_checkout_killed_before_git_wrote_its_dot_git_is_removed)
{
	char left[1024];

	/*
	 * A spawn killed inside git_worktree_add after it made the checkout's
	 * directory and before it wrote the .git file there: the branch and an
	 * empty directory.  Start-up sets it aside and, as it holds nothing,
	 * removes it (the note keeps its commit: start-up's visit must not take
	 * it for an older orchfs's attached leftover and ask a .git that points
	 * at the note).
	 */
	CHECK(sh("cd %s && git branch task/1/5 && mkdir -p .orchfs/worktrees/task-1-5", env->repo) == 0);
	restart(env);
	CHECK(!one_leftover(env, "task-1-5", left, sizeof(left)));
	CHECK(!exists("%s/.orchfs/worktrees/task-1-5%s", env->repo, ""));
	/* The same left by a session.open, set aside by the retry, removed at the next start-up. */
	CHECK(sh("cd %s && git branch session/1 && mkdir -p .orchfs/worktrees/session-1", env->repo) == 0);
	json_decref(ok(env, "session.open", "{}"));
	CHECK(one_leftover(env, "session-1", left, sizeof(left)));
	CHECK(sh("grep -q \"^commit $(git -C %s rev-parse main)$\" %s/ORCHFS-LEFTOVER", env->repo, left) == 0);
	restart(env);
	CHECK(!one_leftover(env, "session-1", left, sizeof(left)));
	/* A detach cut after its note, in a directory without .git: the note's commit still counts. */
	CHECK(sh("cd %s/.orchfs/worktrees && mkdir x.orchfs-leftover-7 && printf 'set aside\\n%%s\\ncommit %%s\\n' "
		 "x $(git -C %s rev-parse main) > x.orchfs-leftover-7/ORCHFS-LEFTOVER", env->repo, env->repo) == 0);
	restart(env);
	CHECK(!exists("%s/.orchfs/worktrees/x.orchfs-leftover-7%s", env->repo, ""));
	/*
	 * What an earlier orchfs made of such a checkout (its note rewritten to
	 * "commit unknown"): with no commit to compare, a leftover that holds
	 * only orchfs's own files holds nothing; one with any other file stays.
	 */
	CHECK(sh("cd %s/.orchfs/worktrees && for d in y.orchfs-leftover-8 z.orchfs-leftover-9; do mkdir $d && "
		 "printf 'set aside\\n%%s\\ncommit unknown\\n' $d > $d/ORCHFS-LEFTOVER && "
		 "echo 'gitdir: ORCHFS-LEFTOVER' > $d/.git && cp $d/.git $d/.git.orchfs-detached; done && "
		 "echo mine > z.orchfs-leftover-9/mine", env->repo) == 0);
	restart(env);
	CHECK(!exists("%s/.orchfs/worktrees/y.orchfs-leftover-8%s", env->repo, ""));
	CHECK(exists("%s/.orchfs/worktrees/z.orchfs-leftover-9/mine%s", env->repo, ""));
}

TEST(check_reports_and_changes_nothing)
{
	json_t *r = NULL;

	json_decref(ok(env, "worktree.create", "{\"branch\": \"feat\", \"create_on_disk\": true}"));
	CHECK_EQ_INT(orch_check(env->repo, NULL, NULL, &r), 0);
	CHECK_EQ_STR(jstr(r, "integrity"), "ok");
	CHECK_EQ_INT(json_array_size(json_object_get(r, "problems")), 0);
	json_decref(r);
	/* Work of a killed call's checkout, set aside; a record whose checkout is gone; a checkout no record names. */
	CHECK(sh("cd %s && git worktree add -q -b session/1 .orchfs/worktrees/session-1 2>/dev/null && "
		 "echo mine > .orchfs/worktrees/session-1/mine", env->repo) == 0);
	json_decref(ok(env, "session.open", "{}"));
	CHECK(sh("cd %s && git worktree add -q -b stray .orchfs/worktrees/orchfs-stray 2>/dev/null && "
		 "mv .orchfs/worktrees/feat /tmp/orchfs-check-moved-$$ && rm -rf /tmp/orchfs-check-moved-$$",
		 env->repo) == 0);
	CHECK(sh("cd %s && find .orchfs/worktrees -maxdepth 2 | sort > %s/before && git branch > %s/b1",
		 env->repo, env->root, env->root) == 0);
	int64_t v = db_version(env);
	CHECK_EQ_INT(orch_check(env->repo, NULL, NULL, &r), 0);
	char *text = json_dumps(r, 0);
	CHECK(strstr(text, "session-1.orchfs-leftover-") && strstr(text, "holds changes git did not write"));
	CHECK(strstr(text, "feat is not a checkout"));
	CHECK(strstr(text, "orchfs-stray") && strstr(text, "named by no record"));
	CHECK(json_is_true(json_object_get(json_array_get(json_object_get(r, "leftovers"), 0), "user_changes")));
	free(text);
	json_decref(r);
	CHECK(sh("cd %s && find .orchfs/worktrees -maxdepth 2 | sort | cmp -s - %s/before && git branch | cmp -s - %s/b1",
		 env->repo, env->root, env->root) == 0);
	CHECK_EQ_INT(db_version(env), v);
}

TEST(unusual_inputs_get_the_right_codes)
{
	/* A branch spelled as a ref, and paths with control characters, are invalid_params. */
	json_decref(fails(env, ORCH_EINVALID_PARAMS, "worktree.create", "{\"branch\": \"refs/heads/x\"}"));
	json_decref(fails(env, ORCH_EINVALID_PARAMS, "worktree.create", "{\"branch\": \"x\", \"path\": \"a\\nb\"}"));
	json_decref(fails(env, ORCH_EINVALID_PARAMS, "worktree.create", "{\"branch\": \"x\\ty\"}"));
	/* A blank path is a mistake, not a file named by spaces. */
	json_decref(ok(env, "session.open", "{}"));
	json_t *e = fails(env, ORCH_EINVALID_PARAMS, "lock.acquire",
			  "{\"owner_session\": 1, \"scope_type\": \"file\", \"scope_path\": \"   \"}");
	CHECK(e && strstr(jstr(e, "message"), "scope_path must not be blank"));
	json_decref(e);
	json_decref(fails(env, ORCH_EINVALID_PARAMS, "lock.acquire",
			  "{\"owner_session\": 1, \"scope_type\": \"file\", \"scope_path\": \"a\\u0001\"}"));
	CHECK(sh("cd %s && test -z \"$(git branch --list x 'refs/*')\"", env->repo) == 0);
}

TEST(repository_without_commits_is_invalid_state)
{
	/* Turn the fixture into a repository whose HEAD is unborn. */
	orch_ctx_close(&env->ctx);
	CHECK(sh("rm -rf %s && git init -q -b main %s", env->repo, env->repo) == 0);
	CHECK_EQ_INT(orch_ctx_open(&env->ctx, env->repo, NULL), 0);
	json_t *e = fails(env, ORCH_EINVALID_STATE, "session.open", "{}");
	CHECK(e && strstr(jstr(e, "message"), "no commits yet"));
	json_decref(e);
	json_decref(fails(env, ORCH_EINVALID_STATE, "worktree.create", "{\"branch\": \"x\", \"create_on_disk\": true}"));
	CHECK_EQ_INT(db_version(env), 0);
	CHECK(sh("cd %s && git commit -q --allow-empty -m first", env->repo) == 0);
	json_decref(ok(env, "session.open", "{}"));
}

TEST(detached_main_worktree_has_no_branch_to_merge_into)
{
	json_t *r = ok(env, "session.open", "{}");
	int64_t main_id = jint(r, "session_context.main_worktree.id"), root = jint(r, "session_context.session_root_worktree.id");
	json_decref(r);
	CHECK(sh("cd %s/.orchfs/worktrees/session-1 && echo w > w && git add w && git commit -qm w", env->repo) == 0);
	/* The user detaches the main worktree's HEAD; the next open records no branch. */
	CHECK(sh("cd %s && git checkout -q --detach", env->repo) == 0);
	r = ok(env, "session.open", "{}");
	CHECK_EQ_STR(jstr(r, "session_context.main_worktree.branch"), "");
	json_decref(r);
	/* Main is reached only through the queue, detached or not. */
	json_decref(fails(env, ORCH_EFORBIDDEN, "worktree.spawn", "{\"session_id\": 2, \"parent_worktree_id\": %lld}",
			  (long long)main_id));
	/* The queue has no default target: it says how to get one, and nothing is queued. */
	json_t *e = fails(env, ORCH_EINVALID_STATE, "merge.main.request", "{\"session_id\": 1, \"from_worktree_id\": %lld}",
			  (long long)root);
	CHECK(e && strstr(jstr(e, "message"), "detached HEAD") && strstr(jstr(e, "message"), "git switch"));
	json_decref(e);
	/* On a branch again: the root is queued for it. */
	CHECK(sh("cd %s && git checkout -q main", env->repo) == 0);
	json_decref(ok(env, "session.open", "{}"));
	r = ok(env, "merge.main.request", "{\"session_id\": 1, \"from_worktree_id\": %lld}", (long long)root);
	CHECK_EQ_STR(jstr(r, "target_branch"), "main");
	json_decref(r);
}
