/*
 * ctl transaction files: a descriptor accumulates one request, executes it
 * inside the write that completes the JSON value, and reads back the reply.
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "fs.h"

typedef enum {
	CTL_EMPTY,    /* nothing but white space written */
	CTL_PARTIAL,  /* a prefix of a JSON value */
	CTL_DONE,     /* executed (or rejected); reply holds the answer */
	CTL_TOOLARGE, /* past the request limit; every later write fails */
} ctl_state;

/*
 * One descriptor's transaction.  Two threads of a client may share the
 * descriptor: every entry point holds `mu`.
 */
struct fs_ctl {
	pthread_mutex_t mu;
	const orch_method *m;
	int64_t session_id;
	ctl_state state;
	char *req;
	size_t req_len, req_cap;
	orch_reqscan scan; /* how far req has been scanned (each byte once) */
	int done_errno;    /* CTL_DONE: what the write that ran the request returned (0 or -errno) */
	char *reply;
	size_t reply_len;
	bool origin_set;
	off_t origin;
	bool read_failed; /* a read came before the request was complete: reads fail from then on */
	char *usage; /* what a read without a write shows */
	size_t usage_len;
};

/* Last reply per (session, method) through sessions/<id>/ctl/, in memory, under last_mu. */
typedef struct {
	int64_t session_id;
	const orch_method *m;
	char *reply;
} last_reply;

static pthread_mutex_t last_mu = PTHREAD_MUTEX_INITIALIZER;
static last_reply *last;
static size_t nlast, caplast;

static void remember(int64_t session_id, const orch_method *m, const char *reply)
{
	pthread_mutex_lock(&last_mu);
	for (size_t i = 0; i < nlast; i++) {
		if (last[i].session_id == session_id && last[i].m == m) {
			free(last[i].reply);
			last[i].reply = strdup(reply);
			goto done;
		}
	}
	if (nlast == caplast) {
		caplast = caplast ? caplast * 2 : 64;
		last = orch_xrealloc(last, caplast * sizeof(*last));
	}
	last[nlast++] = (last_reply){session_id, m, strdup(reply)};
done:
	pthread_mutex_unlock(&last_mu);
}

/* A copy of the last reply a session got for a method through sessions/<id>/ctl/, or NULL. */
static char *last_reply_copy(int64_t session_id, const orch_method *m)
{
	char *out = NULL;

	pthread_mutex_lock(&last_mu);
	for (size_t i = 0; i < nlast && !out; i++)
		if (last[i].session_id == session_id && last[i].m == m)
			out = strdup(last[i].reply);
	pthread_mutex_unlock(&last_mu);
	return out;
}

char *fs_ctl_idle_text(const orch_method *m, int64_t session_id)
{
	char *lr = session_id > 0 ? last_reply_copy(session_id, m) : NULL;

	return lr ? lr : orch_method_usage(m, session_id > 0);
}

/* After the loop ended: no other thread is left. */
void fs_ctl_forget_all(void)
{
	for (size_t i = 0; i < nlast; i++)
		free(last[i].reply);
	free(last);
	last = NULL;
	nlast = caplast = 0;
}

fs_ctl *fs_ctl_new(const orch_method *m, int64_t session_id)
{
	fs_ctl *c = calloc(1, sizeof(*c));

	pthread_mutex_init(&c->mu, NULL);
	c->m = m;
	c->session_id = session_id;
	orch_reqscan_init(&c->scan);
	return c;
}

void fs_ctl_free(fs_ctl *c)
{
	if (!c)
		return;
	pthread_mutex_destroy(&c->mu);
	free(c->req);
	free(c->reply);
	free(c->usage);
	free(c);
}

/* Whether `len` bytes at `p` are JSON white space only. */
static bool all_space(const char *p, size_t len)
{
	for (size_t i = 0; i < len; i++)
		if (!strchr(" \t\r\n", p[i]) || p[i] == '\0')
			return false;
	return true;
}

static void set_reply(fs_ctl *c, char *reply)
{
	free(c->reply);
	c->reply = reply;
	c->reply_len = strlen(reply);
	if (c->session_id > 0)
		remember(c->session_id, c->m, reply);
}

/*
 * Append `len` bytes to the request buffer (grown geometrically, so that a
 * request written a byte at a time costs linear time) and scan them.
 * Returns what orch_reqscan_feed returns for the buffer so far.
 */
static int request_append(fs_ctl *c, const char *data, size_t len)
{
	if (c->req_len + len + 1 > c->req_cap) {
		size_t cap = c->req_cap ? c->req_cap : 256;
		while (cap < c->req_len + len + 1)
			cap *= 2;
		c->req = orch_xrealloc(c->req, cap);
		c->req_cap = cap;
	}
	memcpy(c->req + c->req_len, data, len);
	c->req_len += len;
	c->req[c->req_len] = '\0';
	return orch_reqscan_feed(&c->scan, data, len);
}

/*
 * A write after the request ran.  Not a second request: white space
 * written after it (printf, then echo), or the request's own bytes again.
 * A repeat of the whole request is a buffered writer (Python's) retrying
 * the write whose errno it already raised, before it reads the reply: 0.
 * A repeat of a proper tail is a writer that saw a short write and no
 * errno (a request larger than one FUSE write, whose second part failed)
 * sending the rest again: it gets the errno of the write that ran the
 * request, so a failed request is never reported as a success.  Anything
 * else is EBUSY.
 */
static int write_after_done(fs_ctl *c, const char *data, size_t len)
{
	if (all_space(data, len) || (len == c->req_len && memcmp(c->req, data, len) == 0))
		return 0;
	if (len < c->req_len && memcmp(c->req + c->req_len - len, data, len) == 0)
		return c->done_errno;
	return -EBUSY;
}

static int ctl_write(orch_env *env, fs_ctl *c, const char *data, size_t len)
{
	json_t *req = NULL;
	char *reply = NULL;
	int rc;

	if (c->state == CTL_TOOLARGE)
		return -EFBIG;
	if (c->state == CTL_DONE)
		return write_after_done(c, data, len);
	if (c->req_len + len > ORCH_REQUEST_MAX) {
		c->state = CTL_TOOLARGE;
		orch_error_set(ORCH_ETOOLARGE, "request is larger than %d bytes", ORCH_REQUEST_MAX);
		set_reply(c, orch_reply_error(NULL));
		return -EFBIG;
	}
	rc = request_append(c, data, len);
	if (rc == ORCH_INCOMPLETE) {
		c->state = orch_reqscan_blank(&c->scan) ? CTL_EMPTY : CTL_PARTIAL;
		return 0;
	}
	c->state = CTL_DONE;
	if (rc == 0)
		rc = orch_request_parse_scanned(c->req, c->req_len, &c->scan, &req);
	if (rc) {
		set_reply(c, orch_reply_error(NULL));
		return c->done_errno = -fs_errno(rc);
	}
	orch_ctx ctx;
	orch_ctx_init(&ctx, env, NULL, NULL);
	rc = orch_call(&ctx, c->m->name, req, c->session_id, &reply);
	json_decref(req);
	set_reply(c, reply);
	return c->done_errno = rc ? -fs_errno(rc) : 0;
}

static int ctl_read(fs_ctl *c, off_t off, size_t size, const char **out, size_t *n)
{
	const char *buf;
	size_t len;

	if (c->read_failed)
		return -EINVAL;
	switch (c->state) {
	case CTL_PARTIAL:
		c->read_failed = true;
		return -EINVAL;
	case CTL_DONE:
	case CTL_TOOLARGE:
		/* The first read fixes where the reply starts: after the write or at 0. */
		if (!c->origin_set) {
			c->origin_set = true;
			c->origin = off;
		}
		off -= c->origin;
		buf = c->reply;
		len = c->reply_len;
		break;
	case CTL_EMPTY:
	default:
		if (!c->usage) {
			c->usage = fs_ctl_idle_text(c->m, c->session_id);
			c->usage_len = strlen(c->usage);
		}
		buf = c->usage;
		len = c->usage_len;
		break;
	}
	if (off < 0 || (size_t)off >= len) {
		*out = buf;
		*n = 0;
		return 0;
	}
	*out = buf + off;
	*n = len - (size_t)off < size ? len - (size_t)off : size;
	return 0;
}

int fs_ctl_write(orch_env *env, fs_ctl *c, const char *data, size_t len)
{
	pthread_mutex_lock(&c->mu);
	int rc = ctl_write(env, c, data, len);
	pthread_mutex_unlock(&c->mu);
	return rc;
}

/* *out stays valid until the descriptor is released: the reply and usage are never replaced once read. */
int fs_ctl_read(fs_ctl *c, off_t off, size_t size, const char **out, size_t *n)
{
	pthread_mutex_lock(&c->mu);
	int rc = ctl_read(c, off, size, out, n);
	pthread_mutex_unlock(&c->mu);
	return rc;
}

int fs_ctl_flush(fs_ctl *c)
{
	pthread_mutex_lock(&c->mu);
	int rc = c->state == CTL_PARTIAL ? -EINVAL : 0;
	pthread_mutex_unlock(&c->mu);
	return rc;
}
