/*
 * ctl request buffers (src/fs/ctl.c) driven as the FUSE layer drives them:
 * a request's outcome does not depend on how its bytes are split into
 * writes, bytes that JSON never has fail at once, a repeat of a failed
 * request fails again, and scanning costs linear time.
 */
#include <errno.h>
#include <stdlib.h>
#include <time.h>

#include "../../src/fs/fs.h"
#include "test.h"

/* What a client sees: the errno of the first write that failed (0: none), and the reply. */
typedef struct {
	int err;
	char *reply;
} outcome;

/*
 * Write `req` (`n` bytes) to a fresh ctl descriptor of `method` in the
 * pieces that `cuts` (ascending offsets, `ncuts` of them) mark, stopping
 * at the first failed write as a client does, then read the reply.
 */
static outcome run_split(test_env *env, const char *method, const char *req, size_t n, const size_t *cuts,
			 size_t ncuts)
{
	fs_ctl *c = fs_ctl_new(env->ctx.env, orch_method_find(method), 0, false);
	outcome o = {0, NULL};
	size_t at = 0;
	const char *out;
	size_t len;

	for (size_t k = 0; k <= ncuts && !o.err; k++) {
		size_t to = k < ncuts ? cuts[k] : n;
		o.err = fs_ctl_write(env->ctx.env, c, req + at, to - at, false, NULL, NULL);
		at = to;
	}
	if (fs_ctl_read(c, 0, 1 << 20, &out, &len) == 0)
		o.reply = strndup(out, len);
	fs_ctl_free(c);
	return o;
}

static bool same(outcome a, outcome b)
{
	return a.err == b.err && a.reply && b.reply && strcmp(a.reply, b.reply) == 0;
}

/* Requests whose outcomes are all deterministic (read-only or refused). */
static const struct {
	const char *method, *req;
	size_t len; /* 0: strlen */
} cases[] = {
	{"task.list", "{\"level\": \"case\", \"status\": \"in_progress\"}\n", 0},
	{"task.list", "  \n{\"level\":\"caf\xc3\xa9 \\u00e9 \\\" \\\\ \xf0\x9f\x98\x80\"}", 0},
	{"task.list", "{\"level\": \"case\", \"limit\": -1.5e+3, \"x\": [true, false, null, {}]}", 0},
	{"task.create", "{\"level\": \"case\", \"titel\": \"t\"}", 0},
	{"task.create", "{\"level\": \"case\", \"title\": tru}", 0},
	{"task.create", "{\"level\": \"case\", \"title\": \"a\" \"b\"}", 0},
	{"task.create", "{\"level\": \"case\", \"title\": \"a\", \"title\": \"b\"}", 0},
	{"task.create", "{\"level\": \"ca\0se\"}", 18},
	{"task.create", "{\"level\": 1\0}", 13},
	{"task.create", "{\"level\": \"\xc0\x80\"}", 0},
	{"task.create", "{\"level\": \"\xed\xa0\x80\"}", 0},
	{"task.create", "{\"level\": \"\xf4\x90\x80\x80\"}", 0},
	{"task.create", "{\"level\": \"a\tb\"}", 0},
	{"task.create", "{\"level\": \"\\x\"}", 0},
	{"task.create", "{\"level\": \"\\u12g4\"}", 0},
	{"task.create", "42 ", 0},
	{"task.create", "\"str\"\n", 0},
	{"task.create", "[1, [2, {\"a\": \"]\"}]]", 0},
	{"task.create", "null", 0},
	{"task.create", "nul!", 0},
	{"task.create", "]", 0},
	{"task.create", "{]", 0},
};

TEST(ctl_outcome_does_not_depend_on_the_split)
{
	srand(13);
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		const char *req = cases[i].req;
		size_t n = cases[i].len ? cases[i].len : strlen(req), cuts[64];
		outcome whole = run_split(env, cases[i].method, req, n, NULL, 0);
		CHECK(whole.reply != NULL);
		/* Every split in two, and every byte on its own. */
		for (size_t at = 1; at < n; at++) {
			outcome o = run_split(env, cases[i].method, req, n, &at, 1);
			if (!same(whole, o))
				fprintf(stderr, "  case %zu cut at %zu: %d %s vs %d %s\n", i, at, o.err, o.reply, whole.err,
					whole.reply);
			CHECK(same(whole, o));
			free(o.reply);
		}
		for (size_t k = 0; k + 1 < n && k < 64; k++)
			cuts[k] = k + 1;
		outcome bytes = run_split(env, cases[i].method, req, n, cuts, n - 1 < 64 ? n - 1 : 64);
		CHECK(same(whole, bytes));
		free(bytes.reply);
		/* Random chunkings. */
		for (int r = 0; r < 50; r++) {
			size_t nc = 0, at = 0;
			while (nc < 64 && (at += 1 + (size_t)rand() % 7) < n)
				cuts[nc++] = at;
			outcome o = run_split(env, cases[i].method, req, n, cuts, nc);
			CHECK(same(whole, o));
			free(o.reply);
		}
		free(whole.reply);
	}
}

/*
 * Bytes after the value in the write that completes it are not part of any
 * request: "{...}]" in one write is invalid_json, while "{...}" then "]" runs
 * the request and fails the second write with EBUSY (a second request).
 */
TEST(ctl_bytes_after_the_value)
{
	outcome o = run_split(env, "task.list", "{\"level\": \"case\"}]", 18, NULL, 0);
	CHECK_EQ_INT(o.err, -EINVAL);
	CHECK(o.reply && strstr(o.reply, "more after the value ends"));
	free(o.reply);
	fs_ctl *c = fs_ctl_new(env->ctx.env, orch_method_find("task.list"), 0, false);
	CHECK_EQ_INT(fs_ctl_write(env->ctx.env, c, "{\"level\": \"case\"}", 17, false, NULL, NULL), 0);
	CHECK_EQ_INT(fs_ctl_write(env->ctx.env, c, "]", 1, false, NULL, NULL), -EBUSY);
	CHECK_EQ_INT(fs_ctl_write(env->ctx.env, c, "}", 1, false, NULL, NULL), 0); /* the request's own tail again */
	fs_ctl_free(c);
}

TEST(ctl_bytes_json_never_has_fail_at_once)
{
#define B(s) {s, sizeof(s) - 1}
	static const struct {
		const char *p;
		size_t n;
	} bad[] = {B("\0"), B("{\"a\": \0"), B("{\"a\": \"\xff"), B("\xc3\xa9"), B("{\"a\": \"\xe0\x80"),
		   B("{\"a\": \"\x01"), B("{\"a\": x"), B("@"), B("{\"a\": \"\\q")};
#undef B

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		outcome o = run_split(env, "task.list", bad[i].p, bad[i].n, NULL, 0);
		CHECK_EQ_INT(o.err, -EINVAL);
		CHECK(o.reply && strstr(o.reply, "\"invalid_json\""));
		free(o.reply);
	}
	/* Valid prefixes stay incomplete, whatever bytes of a character are still missing. */
	fs_ctl *c = fs_ctl_new(env->ctx.env, orch_method_find("task.list"), 0, false);
	CHECK_EQ_INT(fs_ctl_write(env->ctx.env, c, "{\"a\": \"\xf0\x9f", 9, false, NULL, NULL), 0);
	CHECK_EQ_INT(fs_ctl_write(env->ctx.env, c, "\x98", 1, false, NULL, NULL), 0);
	CHECK_EQ_INT(fs_ctl_flush(c), -EINVAL);
	fs_ctl_free(c);
}

TEST(ctl_repeat_of_failed_request_fails_again)
{
	const char *req = "{\"level\": \"case\", \"titel\": \"t\"}";
	fs_ctl *c = fs_ctl_new(env->ctx.env, orch_method_find("task.create"), 0, false);

	CHECK_EQ_INT(fs_ctl_write(env->ctx.env, c, req, strlen(req), false, NULL, NULL), -EINVAL);
	/* A writer looping on a short write re-sends the tail. */
	CHECK_EQ_INT(fs_ctl_write(env->ctx.env, c, req + 10, strlen(req) - 10, false, NULL, NULL), -EINVAL);
	CHECK_EQ_INT(fs_ctl_write(env->ctx.env, c, req + 1, strlen(req) - 1, false, NULL, NULL), -EINVAL);
	/* A buffered writer retrying the whole write it already got the errno for, before it reads. */
	CHECK_EQ_INT(fs_ctl_write(env->ctx.env, c, req, strlen(req), false, NULL, NULL), 0);
	CHECK_EQ_INT(fs_ctl_write(env->ctx.env, c, "\n", 1, false, NULL, NULL), 0);
	CHECK_EQ_INT(fs_ctl_write(env->ctx.env, c, "{}", 2, false, NULL, NULL), -EBUSY);
	fs_ctl_free(c);
	/* A request over the string limit, arriving in two writes as a 1 MiB write does. */
	size_t n = 70 * 1024;
	char *big = malloc(n + 64);
	int off = snprintf(big, 64, "{\"level\": \"case\", \"title\": \"");
	memset(big + off, 'x', n);
	strcpy(big + off + n, "\"}");
	size_t total = off + n + 2, half = total / 2;
	c = fs_ctl_new(env->ctx.env, orch_method_find("task.create"), 0, false);
	CHECK_EQ_INT(fs_ctl_write(env->ctx.env, c, big, half, false, NULL, NULL), 0);
	CHECK_EQ_INT(fs_ctl_write(env->ctx.env, c, big + half, total - half, false, NULL, NULL), -EINVAL);
	CHECK_EQ_INT(fs_ctl_write(env->ctx.env, c, big + half, total - half, false, NULL, NULL), -EINVAL);
	fs_ctl_free(c);
	free(big);
	CHECK_EQ_INT(db_version(env), 0);
}

/* Seconds spent writing a request of `n` bytes to task.list one byte at a time. */
static double one_byte_at_a_time(test_env *env, size_t n, int *err)
{
	char *req = malloc(n + 1);
	const char *head = "{\"level\": \"case\", \"status\": \"";
	size_t h = strlen(head);
	struct timespec t0, t1;

	memcpy(req, head, h);
	/* Letters with a \u escape now and then. */
	for (size_t i = h; i < n - 2; i++)
		req[i] = i % 97 == 0 && i + 6 < n - 2 ? '\\' : 'a' + (char)(i % 26);
	for (size_t i = h; i + 6 < n - 2; i++)
		if (req[i] == '\\') {
			memcpy(req + i, "\\u00e9", 6);
			i += 5;
		}
	req[n - 2] = '"';
	req[n - 1] = '}';
	fs_ctl *c = fs_ctl_new(env->ctx.env, orch_method_find("task.list"), 0, false);
	clock_gettime(CLOCK_MONOTONIC, &t0);
	*err = 0;
	for (size_t i = 0; i < n && !*err; i++)
		*err = fs_ctl_write(env->ctx.env, c, req + i, 1, false, NULL, NULL);
	clock_gettime(CLOCK_MONOTONIC, &t1);
	fs_ctl_free(c);
	free(req);
	return (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
}

TEST(ctl_one_byte_writes_cost_linear_time)
{
	int err;
	double small = one_byte_at_a_time(env, 64 * 1024, &err);
	CHECK_EQ_INT(err, 0); /* a status no task has: an empty list */
	double big = one_byte_at_a_time(env, ORCH_REQUEST_MAX, &err);
	CHECK_EQ_INT(err, -EINVAL); /* a string over 64 KiB, refused once the whole value is there */
	printf("     64 KiB one byte at a time: %.1f ms; 1 MiB: %.1f ms (ctl buffer and scan, this build)\n",
	       small * 1e3, big * 1e3);
	/* Generous for a sanitizer build on a shared machine; quadratic work takes minutes. */
	CHECK(small < 1.0);
	CHECK(big < 10.0);
}

TEST(ctl_limits_name_the_key_and_depth_fails_at_any_depth)
{
	char req[8192];
	outcome o;

	/* 65 levels: refused at the 65th bracket, before the value is complete; 3000 too (not jansson's limit). */
	for (int levels = 65; levels <= 3000; levels += 2935) {
		int n = snprintf(req, sizeof(req), "{\"level\": ");
		for (int i = 1; i < levels; i++)
			req[n++] = '[';
		o = run_split(env, "task.list", req, (size_t)n, NULL, 0);
		CHECK_EQ_INT(o.err, -EINVAL);
		CHECK(o.reply && strstr(o.reply, "\"invalid_params\"") && strstr(o.reply, "deeper than 64"));
		free(o.reply);
	}
	/* 64 levels are within the limit: the type is what is wrong then. */
	int n = snprintf(req, sizeof(req), "{\"level\": ");
	for (int i = 1; i < 64; i++)
		req[n++] = '[';
	for (int i = 1; i < 64; i++)
		req[n++] = ']';
	req[n++] = '}';
	o = run_split(env, "task.list", req, (size_t)n, NULL, 0);
	CHECK(o.reply && strstr(o.reply, "\"invalid_params\"") && !strstr(o.reply, "deeper"));
	free(o.reply);
	json_t *e = fails(env, ORCH_EINVALID_PARAMS, "task.create", "{\"level\": \"case\", \"title\": \"%070000d\"}", 0);
	CHECK(strstr(jstr(e, "message"), "title is longer than 65536 bytes") != NULL);
	json_decref(e);
}
