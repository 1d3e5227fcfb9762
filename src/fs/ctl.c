/*
 * ctl transaction files: a descriptor accumulates one request, executes it
 * inside the write that completes the JSON value, and reads back the reply.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fs.h"

typedef enum {
	CTL_EMPTY,    /* nothing but white space written */
	CTL_PARTIAL,  /* a prefix of a JSON value */
	CTL_DONE,     /* executed (or rejected); reply holds the answer */
	CTL_TOOLARGE, /* past the request limit; every later write fails */
	CTL_WAITING,  /* a blocking call (wait) parked: its write is answered later (fs_ctl_resume) */
} ctl_state;

/*
 * One descriptor's transaction.  Two threads of a client may share the
 * descriptor: every entry point holds `mu`.
 */
struct fs_ctl {
	pthread_mutex_t mu;
	orch_env *env;
	const orch_method *m;
	int64_t session_id;
	bool reply_errors; /* the session chose ctl_errors "reply": a delivered request's write never fails */
	bool wrote;        /* a write reached this descriptor */
	bool settled;      /* what a flush remembers for an empty or incomplete request is remembered */
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
	json_t *waiting;        /* CTL_WAITING: the request, called again at each look */
	orch_wait_state wait;   /* CTL_WAITING: what the looks so far fixed */
};

/*
 * What a read without a write shows: under sessions/<id>/ctl/ the reply the
 * session last got for the method (remembered in the database, so every
 * daemon and `orchfs call` agree), else the usage.  ctx: a reader.
 */
char *fs_ctl_idle_text(orch_ctx *ctx, const orch_method *m, int64_t session_id)
{
	char *lr = session_id > 0 ? orch_remembered_reply(ctx, session_id, m->name) : NULL;

	return lr ? lr : orch_method_usage(m, session_id > 0);
}

/* The idle text on a connection of the pool (a read with nothing written). */
static char *idle_text(fs_ctl *c)
{
	orch_store *st;
	orch_ctx ctx;
	char *text;

	if (c->session_id <= 0 || orch_env_reader(c->env, &st) != 0) {
		orch_error_clear();
		return orch_method_usage(c->m, c->session_id > 0);
	}
	orch_ctx_init(&ctx, c->env, st, NULL);
	text = fs_ctl_idle_text(&ctx, c->m, c->session_id);
	orch_env_reader_put(c->env, st);
	return text;
}

fs_ctl *fs_ctl_new(orch_env *env, const orch_method *m, int64_t session_id, bool reply_errors)
{
	fs_ctl *c = calloc(1, sizeof(*c));

	pthread_mutex_init(&c->mu, NULL);
	c->env = env;
	c->m = m;
	c->session_id = session_id;
	c->reply_errors = reply_errors;
	orch_reqscan_init(&c->scan);
	return c;
}

void fs_ctl_free(fs_ctl *c)
{
	if (!c)
		return;
	pthread_mutex_destroy(&c->mu);
	json_decref(c->waiting);
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

/* The descriptor's reply; `remember`: also the session ctl file's (a reply no call remembered). */
static void set_reply(fs_ctl *c, char *reply, bool remember)
{
	free(c->reply);
	c->reply = reply;
	c->reply_len = strlen(reply);
	if (remember && c->session_id > 0)
		orch_remember_reply(c->env, c->session_id, c->m->name, reply);
}

/* The errno of a delivered request's write: none when the session reads its errors from the reply. */
static int delivered(fs_ctl *c, int rc)
{
	return rc && !c->reply_errors ? -fs_errno(rc) : 0;
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

static int ctl_write(orch_env *env, fs_ctl *c, const char *data, size_t len, bool park,
		     bool (*cancelled)(void *arg), void *arg)
{
	json_t *req = NULL;
	char *reply = NULL;
	int rc;

	c->wrote = true;
	if (c->state == CTL_TOOLARGE)
		return -EFBIG;
	if (c->state == CTL_WAITING)
		return -EBUSY;
	if (c->state == CTL_DONE)
		return write_after_done(c, data, len);
	if (c->req_len + len > ORCH_REQUEST_MAX) {
		c->state = CTL_TOOLARGE;
		orch_error_set(ORCH_ETOOLARGE, "request is larger than %d bytes", ORCH_REQUEST_MAX);
		set_reply(c, orch_reply_error(NULL), true);
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
		set_reply(c, orch_reply_error(NULL), true);
		return c->done_errno = delivered(c, rc);
	}
	orch_ctx ctx;
	orch_ctx_init(&ctx, env, NULL, NULL);
	ctx.remember = c->session_id > 0; /* orch_call remembers it, with the call when it can */
	ctx.cancelled = cancelled;
	ctx.cancelled_arg = arg;
	if (park && (c->m->flags & ORCH_M_BLOCKING))
		ctx.wait_state = &c->wait;
	rc = orch_call(&ctx, c->m->name, req, c->session_id, &reply);
	if (!rc && c->wait.pending) {
		/* Nothing yet: the caller parks the write; fs_ctl_resume calls again. */
		free(reply);
		c->waiting = req;
		c->state = CTL_WAITING;
		return FS_CTL_PENDING;
	}
	json_decref(req);
	set_reply(c, reply, false);
	/* A blocking call (wait) whose writer was signalled: the write says so. */
	if (cancelled && cancelled(arg))
		return c->done_errno = -EINTR;
	return c->done_errno = delivered(c, rc);
}

static int ctl_read(fs_ctl *c, off_t off, size_t size, const char **out, size_t *n)
{
	const char *buf;
	size_t len;

	if (c->read_failed)
		return -EINVAL;
	switch (c->state) {
	case CTL_WAITING:
		return -EBUSY; /* another thread's write on this descriptor is still waiting */
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
			c->usage = idle_text(c);
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

int fs_ctl_write(orch_env *env, fs_ctl *c, const char *data, size_t len, bool park, bool (*cancelled)(void *arg),
		 void *arg)
{
	pthread_mutex_lock(&c->mu);
	int rc = ctl_write(env, c, data, len, park, cancelled, arg);
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

/*
 * A close with nothing executed: under sessions/<id>/ctl/ the file's
 * remembered reply must not go on answering for an earlier request.  An
 * incomplete request leaves an invalid_json reply, a write of white space
 * only a note that nothing was run.  Once per descriptor.
 */
static void settle(fs_ctl *c)
{
	char *text = NULL;

	if (c->session_id <= 0 || c->settled || !c->wrote || (c->state != CTL_PARTIAL && c->state != CTL_EMPTY))
		return;
	c->settled = true;
	if (c->state == CTL_PARTIAL) {
		orch_error_set(ORCH_EINVALID_JSON, "incomplete request: the descriptor was closed after %zu bytes "
			       "that are not a whole JSON value; nothing was run", c->req_len);
		text = orch_reply_error(NULL);
		orch_error_clear();
	} else if (asprintf(&text, "{\"note\": \"nothing was run: the request written to "
			    "sessions/%lld/ctl/%s was empty (white space only); write the params, {} for none\"}\n",
			    (long long)c->session_id, c->m->name) < 0) {
		return;
	}
	orch_remember_reply(c->env, c->session_id, c->m->name, text);
	free(text);
}

int fs_ctl_resume(orch_env *env, fs_ctl *c, int64_t *wake_at)
{
	orch_ctx ctx;
	char *reply = NULL;
	int rc;

	pthread_mutex_lock(&c->mu);
	if (c->state != CTL_WAITING) {
		pthread_mutex_unlock(&c->mu);
		return -EIO;
	}
	orch_ctx_init(&ctx, env, NULL, NULL);
	ctx.remember = c->session_id > 0;
	ctx.wait_state = &c->wait;
	rc = orch_call(&ctx, c->m->name, c->waiting, c->session_id, &reply);
	if (!rc && c->wait.pending) {
		free(reply);
		*wake_at = c->wait.wake_at;
		pthread_mutex_unlock(&c->mu);
		return FS_CTL_PENDING;
	}
	json_decref(c->waiting);
	c->waiting = NULL;
	c->state = CTL_DONE;
	set_reply(c, reply, false);
	rc = c->done_errno = delivered(c, rc);
	pthread_mutex_unlock(&c->mu);
	return rc;
}

int64_t fs_ctl_wake_at(fs_ctl *c, int64_t *seen)
{
	pthread_mutex_lock(&c->mu);
	int64_t t = c->state == CTL_WAITING ? c->wait.wake_at : 0;
	*seen = c->wait.scanned;
	pthread_mutex_unlock(&c->mu);
	return t;
}

void fs_ctl_cancel(fs_ctl *c)
{
	pthread_mutex_lock(&c->mu);
	if (c->state == CTL_WAITING) {
		json_decref(c->waiting);
		c->waiting = NULL;
		c->state = CTL_DONE;
		orch_error_set(ORCH_EINTERNAL, "%s was interrupted by a signal before anything changed", c->m->name);
		/*
		 * Not remembered: this runs on the interrupt or shut-down path, which
		 * must not wait for the writer lane; a wait changes nothing anyway.
		 */
		set_reply(c, orch_reply_error(NULL), false);
		orch_error_clear();
	}
	pthread_mutex_unlock(&c->mu);
}

int fs_ctl_flush(fs_ctl *c)
{
	/*
	 * Busy: a request on this descriptor is being written or executed (a
	 * wait can take minutes).  A flush comes from every close of a copy of
	 * the descriptor -- a child closing what it inherited at exec -- and
	 * must not wait for that: the request is not this close's to judge.
	 */
	if (pthread_mutex_trylock(&c->mu) != 0)
		return 0;
	int rc = c->state == CTL_PARTIAL ? -EINVAL : 0;
	settle(c);
	pthread_mutex_unlock(&c->mu);
	return rc;
}
