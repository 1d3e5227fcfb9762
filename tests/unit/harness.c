/*
 * Test registry, per-test environment (temporary git repo + state) and
 * call helpers.
 */
#include <stdarg.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <netinet/in.h>
#include <unistd.h>
#include <git2.h>

#include "test.h"
#ifdef ORCH_HAVE_DQLITE
#include "../../src/store/dqlite.h"
#endif

#define MAX_TESTS 512

static struct {
	const char *name;
	test_fn fn;
} tests[MAX_TESTS];
static int ntests;
int test_failed;

void test_register(const char *name, test_fn fn)
{
	tests[ntests].name = name;
	tests[ntests].fn = fn;
	ntests++;
}

int sh(const char *fmt, ...)
{
	char cmd[4096];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(cmd, sizeof(cmd), fmt, ap);
	va_end(ap);
	int st = system(cmd);
	return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/*
 * ORCHFS_TEST_STORE=dqlite: every test's state is a database of its own in
 * one single-node dqlite cluster this process runs (node 1 on a free
 * loopback port), named in the state directory's `store` file exactly as
 * `orchfs mount --store` names it; the tests themselves do not change.
 */
static char dqlite_where[128]; /* "dqlite:127.0.0.1:PORT" once the node runs; main thread only */
static int dqlite_tests;

#ifdef ORCH_HAVE_DQLITE
static char dqlite_dir[64];
static orch_dq_node *dqlite_node; /* main thread only */

static int dqlite_start(void)
{
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t len = sizeof(a);
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	char address[64];

	/* A port free now (the kernel's pick); the node binds it right after. */
	if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)) != 0 || getsockname(fd, (struct sockaddr *)&a, &len) != 0)
		return -1;
	close(fd);
	snprintf(address, sizeof(address), "127.0.0.1:%d", ntohs(a.sin_port));
	snprintf(dqlite_dir, sizeof(dqlite_dir), "/tmp/orchfs-unit-dqlite-XXXXXX");
	if (!mkdtemp(dqlite_dir))
		return -1;
	orch_dq_node_opts o = ORCH_DQ_NODE_OPTS_INIT;
	o.id = 1, o.address = address, o.dir = dqlite_dir;
	if (orch_dq_node_start(&dqlite_node, &o) != 0) {
		fprintf(stderr, "cannot start a dqlite node: %s\n", orch_error_last()->message);
		return -1;
	}
	snprintf(dqlite_where, sizeof(dqlite_where), "dqlite:%s", address);
	return 0;
}

static void dqlite_stop(void)
{
	orch_dq_node_stop(dqlite_node);
	dqlite_node = NULL;
	sh("rm -rf %s", dqlite_dir);
}
#else
static int dqlite_start(void)
{
	fprintf(stderr, "ORCHFS_TEST_STORE=dqlite: this build has no dqlite (meson -Ddqlite=enabled)\n");
	return -1;
}

static void dqlite_stop(void)
{
}
#endif

bool test_store_is_dqlite(void)
{
	return dqlite_where[0] != '\0';
}

static int env_setup(test_env *env)
{
	snprintf(env->root, sizeof(env->root), "/tmp/orchfs-unit-XXXXXX");
	if (!mkdtemp(env->root))
		return -1;
	snprintf(env->repo, sizeof(env->repo), "%s/repo", env->root);
	if (sh("git init -q -b main %s && cd %s && git config user.email t@example.com && "
	       "git config user.name test && echo hello > README && git add README && "
	       "git commit -q -m initial", env->repo, env->repo) != 0)
		return -1;
	if (dqlite_where[0]) {
		char state[400], where[256];
		snprintf(state, sizeof(state), "%s/.orchfs", env->repo);
		snprintf(where, sizeof(where), "%s/unit-%d", dqlite_where, ++dqlite_tests);
		if (mkdir(state, 0700) != 0 || orch_env_set_store(state, where, NULL) != 0)
			return -1;
	}
	if (orch_ctx_open(&env->ctx, env->repo, NULL) != 0) {
		fprintf(stderr, "  ctx: %s\n", orch_error_last()->message);
		return -1;
	}
	return 0;
}

static void env_teardown(test_env *env)
{
	orch_ctx_close(&env->ctx);
	sh("rm -rf %s", env->root);
	orch_error_clear();
}

int test_run_all(void)
{
	int passed = 0, failed = 0;
	const char *only = getenv("TEST_ONLY"), *store = getenv("ORCHFS_TEST_STORE");

	if (store && strcmp(store, "dqlite") == 0 && dqlite_start() != 0)
		return 1;

	for (int i = 0; i < ntests; i++) {
		test_env env;
		if (only && !strstr(tests[i].name, only))
			continue;
		test_failed = 0;
		memset(&env, 0, sizeof(env));
		if (env_setup(&env) != 0) {
			fprintf(stderr, "FAIL %s (setup)\n", tests[i].name);
			failed++;
			continue;
		}
		tests[i].fn(&env);
		env_teardown(&env);
		if (test_failed) {
			fprintf(stderr, "FAIL %s\n", tests[i].name);
			failed++;
		} else {
			printf("ok   %s\n", tests[i].name);
			passed++;
		}
	}
	if (dqlite_where[0])
		dqlite_stop();
	printf("unit%s: %d passed, %d failed\n", dqlite_where[0] ? " (dqlite)" : "", passed, failed);
	return failed ? 1 : 0;
}

static json_t *vcall(test_env *env, int *code, const char *method, const char *fmt, va_list ap)
{
	char *body = NULL;
	char *reply = NULL;
	json_t *r;

	if (vasprintf(&body, fmt, ap) < 0)
		return NULL;
	*code = orch_call_text(&env->ctx, method, body, strlen(body), 0, &reply);
	free(body);
	r = json_loads(reply, 0, NULL);
	if (!r)
		fprintf(stderr, "  unparseable reply: %s\n", reply);
	free(reply);
	return r;
}

json_t *call(test_env *env, int *code, const char *method, const char *fmt, ...)
{
	va_list ap;
	json_t *r;

	va_start(ap, fmt);
	r = vcall(env, code, method, fmt, ap);
	va_end(ap);
	return r;
}

json_t *ok(test_env *env, const char *method, const char *fmt, ...)
{
	va_list ap;
	int code;
	json_t *r;

	va_start(ap, fmt);
	r = vcall(env, &code, method, fmt, ap);
	va_end(ap);
	return expect_result(r, code, method);
}

json_t *expect_result(json_t *r, int code, const char *method)
{
	json_t *res;

	if (code != 0) {
		char *s = json_dumps(r, JSON_COMPACT);
		fprintf(stderr, "  %s failed: %s\n", method, s);
		free(s);
		test_failed = 1;
	}
	res = json_incref(json_object_get(r, "result"));
	json_decref(r);
	return res ? res : json_null();
}

bool log_has(json_t *log, const char *needle)
{
	size_t i;
	json_t *l;

	json_array_foreach(log, i, l)
		if (strstr(json_string_value(l), needle))
			return true;
	return false;
}

json_t *fails(test_env *env, int want, const char *method, const char *fmt, ...)
{
	va_list ap;
	int code;
	json_t *r, *err;

	va_start(ap, fmt);
	r = vcall(env, &code, method, fmt, ap);
	va_end(ap);
	err = json_incref(json_object_get(r, "error"));
	if (code != want || !err ||
	    strcmp(json_string_value(json_object_get(err, "code")), orch_error_name(want)) != 0) {
		char *s = json_dumps(r, JSON_COMPACT);
		fprintf(stderr, "  %s: expected %s, got code %d: %s\n", method, orch_error_name(want), code, s);
		free(s);
		test_failed = 1;
	}
	json_decref(r);
	return err ? err : json_object();
}

int64_t db_version(test_env *env)
{
	json_t *s = ok(env, "mirror.status", "{}");
	int64_t v = json_integer_value(json_object_get(s, "db_version"));
	json_decref(s);
	return v;
}

static json_t *jpath(json_t *obj, const char *path)
{
	char buf[256], *save = NULL;

	snprintf(buf, sizeof(buf), "%s", path);
	for (char *k = strtok_r(buf, ".", &save); k && obj; k = strtok_r(NULL, ".", &save)) {
		if (json_is_array(obj))
			obj = json_array_get(obj, (size_t)atoi(k));
		else
			obj = json_object_get(obj, k);
	}
	return obj;
}

int64_t jint(json_t *obj, const char *path)
{
	return json_integer_value(jpath(obj, path));
}

const char *jstr(json_t *obj, const char *path)
{
	return json_string_value(jpath(obj, path));
}

const char *out1(const char *fmt, ...)
{
	static char line[4096];
	char cmd[4096];
	va_list ap;
	FILE *p;

	va_start(ap, fmt);
	vsnprintf(cmd, sizeof(cmd), fmt, ap);
	va_end(ap);
	line[0] = '\0';
	if ((p = popen(cmd, "r")) != NULL) {
		if (!fgets(line, sizeof(line), p))
			line[0] = '\0';
		pclose(p);
	}
	line[strcspn(line, "\n")] = '\0';
	return line;
}
