/*
 * ctl transaction files: a descriptor accumulates one request, executes it
 * inside the write that completes the JSON value, and reads back the reply.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "fs.h"

typedef enum {
	CTL_EMPTY,    /* nothing but white space written */
	CTL_PARTIAL,  /* a prefix of a JSON value */
	CTL_DONE,     /* executed (or rejected); reply holds the answer */
	CTL_TOOLARGE, /* past the request limit; every later write fails */
} ctl_state;

struct fs_ctl {
	const orch_method *m;
	int64_t session_id;
	ctl_state state;
	char *req;
	size_t req_len;
	char *reply;
	size_t reply_len;
	bool origin_set;
	off_t origin;
	bool read_failed; /* a read came before the request was complete: reads fail from then on */
	char *usage; /* what a read without a write shows */
	size_t usage_len;
};

/* Last reply per (session, method) through sessions/<id>/ctl/, in memory. */
typedef struct {
	int64_t session_id;
	const orch_method *m;
	char *reply;
} last_reply;

static last_reply *last;
static size_t nlast, caplast;

static void remember(int64_t session_id, const orch_method *m, const char *reply)
{
	for (size_t i = 0; i < nlast; i++) {
		if (last[i].session_id == session_id && last[i].m == m) {
			free(last[i].reply);
			last[i].reply = strdup(reply);
			return;
		}
	}
	if (nlast == caplast) {
		caplast = caplast ? caplast * 2 : 64;
		last = orch_xrealloc(last, caplast * sizeof(*last));
	}
	last[nlast++] = (last_reply){session_id, m, strdup(reply)};
}

char *fs_ctl_idle_text(const orch_method *m, int64_t session_id)
{
	const char *lr = session_id > 0 ? fs_ctl_last_reply(session_id, m) : NULL;

	return lr ? strdup(lr) : orch_method_usage(m, session_id > 0);
}

const char *fs_ctl_last_reply(int64_t session_id, const orch_method *m)
{
	for (size_t i = 0; i < nlast; i++)
		if (last[i].session_id == session_id && last[i].m == m)
			return last[i].reply;
	return NULL;
}

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

	c->m = m;
	c->session_id = session_id;
	return c;
}

void fs_ctl_free(fs_ctl *c)
{
	if (!c)
		return;
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

int fs_ctl_write(orch_ctx *ctx, fs_ctl *c, const char *data, size_t len)
{
	json_t *req = NULL;
	char *reply = NULL;
	int rc;

	if (c->state == CTL_TOOLARGE)
		return -EFBIG;
	if (c->state == CTL_DONE) {
		/*
		 * Not a second request: a newline written after it (printf,
		 * then echo), or the request's own bytes again (a buffered
		 * writer such as Python's retries the write that failed with
		 * the call's errno, then reads the reply).
		 */
		if (all_space(data, len) ||
		    (len <= c->req_len && memcmp(c->req + c->req_len - len, data, len) == 0))
			return 0;
		return -EBUSY;
	}
	if (c->req_len + len > ORCH_REQUEST_MAX) {
		c->state = CTL_TOOLARGE;
		orch_error_set(ORCH_ETOOLARGE, "request is larger than %d bytes", ORCH_REQUEST_MAX);
		set_reply(c, orch_reply_error(NULL));
		return -EFBIG;
	}
	c->req = orch_xrealloc(c->req, c->req_len + len + 1);
	memcpy(c->req + c->req_len, data, len);
	c->req_len += len;
	c->req[c->req_len] = '\0';

	rc = orch_request_parse(c->req, c->req_len, &req);
	if (rc == ORCH_INCOMPLETE) {
		c->state = all_space(c->req, c->req_len) ? CTL_EMPTY : CTL_PARTIAL;
		return 0;
	}
	c->state = CTL_DONE;
	if (rc) {
		set_reply(c, orch_reply_error(NULL));
		return -orch_error_errno(rc);
	}
	rc = orch_call(ctx, c->m->name, req, c->session_id, &reply);
	json_decref(req);
	set_reply(c, reply);
	return rc ? -orch_error_errno(rc) : 0;
}

int fs_ctl_read(fs_ctl *c, off_t off, size_t size, const char **out, size_t *n)
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

int fs_ctl_flush(fs_ctl *c)
{
	return c->state == CTL_PARTIAL ? -EINVAL : 0;
}
