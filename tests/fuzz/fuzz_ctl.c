/*
 * libFuzzer target (issue 13): arbitrary bytes, split into writes
 * arbitrarily, through the ctl request path (src/fs/ctl.c: buffer, scanner,
 * parse) and method dispatch (orch_call) against a temporary repository
 * and store.  Checks what every reply must be: one JSON object holding
 * "result" or "error", whose error code matches the errno of the write.
 *
 * Input: "<method>\n<split seed byte><request bytes>".  An unknown method
 * name picks one by hash, so any input exercises some method; the seed
 * corpus (tests/fuzz/corpus, one valid request per method, made by
 * fuzz-seeds) starts from every method's example.
 *
 * Build and run (see README, "Fuzzing"):
 *   CC=clang meson setup build-fuzz -Dfuzz=true -Db_sanitize=address,undefined -Db_lundef=false
 *   ninja -C build-fuzz fuzz-ctl
 *   build-fuzz/fuzz-ctl -runs=1000000 tests/fuzz/corpus
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../../src/fs/fs.h"

/* The workspace every input runs against: made once, remade every RESET inputs so the disk stays small. */
static orch_ctx ctx;
static char root[64];
static unsigned long inputs;
#define RESET 5000

static void workspace_open(void)
{
	char cmd[512];

	snprintf(root, sizeof(root), "/tmp/orchfs-fuzz-XXXXXX");
	if (!mkdtemp(root))
		abort();
	snprintf(cmd, sizeof(cmd),
		 "git init -q -b main %s/repo && cd %s/repo && git -c user.email=f@x -c user.name=f "
		 "commit -q --allow-empty -m init",
		 root, root);
	if (system(cmd) != 0 || orch_ctx_open(&ctx, strcat(strcpy(cmd, root), "/repo"), NULL) != 0)
		abort();
}

static void workspace_close(void)
{
	char cmd[128];

	orch_ctx_close(&ctx);
	snprintf(cmd, sizeof(cmd), "rm -rf %s", root);
	if (system(cmd) != 0)
		abort();
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	workspace_open();
	atexit(workspace_close);
	return 0;
}

static const orch_method *pick_method(const uint8_t *name, size_t n)
{
	uint32_t h = 2166136261u;
	char buf[64];

	if (n < sizeof(buf)) {
		memcpy(buf, name, n);
		buf[n] = '\0';
		const orch_method *m = orch_method_find(buf);
		if (m)
			return m;
	}
	for (size_t i = 0; i < n; i++)
		h = (h ^ name[i]) * 16777619u;
	return orch_method_at(h % orch_method_count());
}

/* The reply must be one JSON object and a newline, with "result" or an "error" whose errno is the write's. */
static void check_reply(const char *reply, size_t len, int err)
{
	json_t *r = json_loadb(reply, len, 0, NULL);
	json_t *e;

	if (!r || !json_is_object(r) || len == 0 || reply[len - 1] != '\n')
		abort();
	e = json_object_get(r, "error");
	if (!e == !json_object_get(r, "result"))
		abort();
	/*
	 * EBUSY is either the request's own error (conflict) or a later write
	 * that was a second request, after a request that succeeded.
	 */
	if (e) {
		const char *code = json_string_value(json_object_get(e, "code"));
		if (!code || !json_is_string(json_object_get(e, "message")) || err == 0 ||
		    (err == -EBUSY && strcmp(code, "conflict") != 0))
			abort();
	} else if (err != 0 && err != -EBUSY) {
		abort();
	}
	json_decref(r);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const uint8_t *nl = memchr(data, '\n', size < 64 ? size : 64);
	const orch_method *m;
	uint32_t seed;
	size_t at, n;
	int first_err = 0, rc;

	if (!nl || (size_t)(nl - data) + 2 > size)
		return -1;
	m = pick_method(data, (size_t)(nl - data));
	seed = nl[1] * 2654435761u + 1;
	at = (size_t)(nl - data) + 2;
	fs_ctl *c = fs_ctl_new(ctx.env, m, 0, false);
	/* Split the request into writes of 1..seed-dependent bytes; stop at the first failure, as a client does. */
	while (at < size && !first_err) {
		seed = seed * 1103515245u + 12345u;
		n = 1 + (seed >> 16) % (nl[1] % 4 == 0 ? size : 1u + nl[1]);
		if (n > size - at)
			n = size - at;
		first_err = fs_ctl_write(ctx.env, c, (const char *)data + at, n, false, NULL, NULL);
		at += n;
	}
	const char *out;
	size_t len;
	rc = fs_ctl_read(c, 0, 1 << 20, &out, &len);
	/*
	 * A request that ran or failed has its reply (a JSON object); white
	 * space alone shows the usage (text starting with the method's name);
	 * an incomplete request fails its read and its flush with EINVAL.
	 */
	if (rc == 0 && len > 0 && out[0] == '{')
		check_reply(out, len, first_err);
	else if (rc == 0 && first_err)
		abort(); /* a failed write always leaves an error reply */
	else if (rc != 0 && (rc != -EINVAL || fs_ctl_flush(c) != -EINVAL))
		abort();
	fs_ctl_free(c);
	if (++inputs % RESET == 0) {
		workspace_close();
		workspace_open();
	}
	return 0;
}
