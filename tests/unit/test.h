/*
 * A small unit-test harness: TEST(name) registers a test, CHECK* record
 * failures, and every test gets a fresh git repository and state directory.
 */
#ifndef ORCHFS_TEST_H
#define ORCHFS_TEST_H

#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <jansson.h>

#include "orchfs/core.h"

typedef struct {
	orch_ctx ctx;
	char root[256];  /* temporary directory */
	char repo[300];  /* <root>/repo, a git repository with one commit */
} test_env;

typedef void (*test_fn)(test_env *env);
void test_register(const char *name, test_fn fn);
int test_run_all(void);
/* Whether the tests run against a dqlite store (ORCHFS_TEST_STORE=dqlite), not a SQLite file. */
bool test_store_is_dqlite(void);
extern int test_failed;

#define TEST(name)                                                                 \
	static void name(test_env *env);                                           \
	__attribute__((constructor)) static void reg_##name(void) { test_register(#name, name); } \
	static void name(test_env *env)

#define CHECK(cond)                                                                \
	do {                                                                       \
		if (!(cond)) {                                                     \
			fprintf(stderr, "  %s:%d: CHECK(%s) failed\n", __FILE__, __LINE__, #cond); \
			test_failed = 1;                                           \
		}                                                                  \
	} while (0)

#define CHECK_EQ_INT(a, b)                                                         \
	do {                                                                       \
		long long a_ = (long long)(a), b_ = (long long)(b);                \
		if (a_ != b_) {                                                    \
			fprintf(stderr, "  %s:%d: %s == %lld, expected %lld\n", __FILE__, __LINE__, #a, a_, b_); \
			test_failed = 1;                                           \
		}                                                                  \
	} while (0)

#define CHECK_EQ_STR(a, b)                                                         \
	do {                                                                       \
		const char *a_ = (a), *b_ = (b);                                   \
		if (!a_ || !b_ || strcmp(a_, b_) != 0) {                           \
			fprintf(stderr, "  %s:%d: %s == \"%s\", expected \"%s\"\n", __FILE__, __LINE__, #a, \
				a_ ? a_ : "(null)", b_ ? b_ : "(null)");           \
			test_failed = 1;                                           \
		}                                                                  \
	} while (0)

/*
 * Call `method` with the JSON text `body` (printf-style).  Returns the reply
 * parsed (caller decrefs); *code receives the error code (0 on success).
 */
json_t *call(test_env *env, int *code, const char *method, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

/* Call and expect success; returns the result (caller decrefs the returned reference). */
json_t *ok(test_env *env, const char *method, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Call and expect error `code`; returns the error object (caller decrefs). */
json_t *fails(test_env *env, int code, const char *method, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

/* The result of a reply `r` whose code is `code`: success expected (a failure is reported); caller decrefs. */
json_t *expect_result(json_t *r, int code, const char *method);
/* Whether a line of the JSON array of strings `log` contains `needle`. */
bool log_has(json_t *log, const char *needle);

int64_t db_version(test_env *env);
int64_t jint(json_t *obj, const char *path); /* "a.b.c" */
const char *jstr(json_t *obj, const char *path);
int sh(const char *fmt, ...) __attribute__((format(printf, 1, 2))); /* run a shell command, return its exit status */
/* The first line of a shell command's output, without its newline (a static buffer, overwritten by the next call). */
const char *out1(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
