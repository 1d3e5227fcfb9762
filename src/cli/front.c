/*
 * The process side of orchfs serve and orchfs mcp: held sessions, signals,
 * output, concurrent waits (see front.h).
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "front.h"
#include "lines.h"

struct front_wait {
	front_wait *next;  /* under front.mu */
	front *f;
	json_t *id;        /* the request's id; owned */
	json_t *params;    /* owned */
	bool cancelled;    /* under front.mu: the client gave it up (no reply) */
};

volatile sig_atomic_t front_signalled;

static void on_signal(int sig)
{
	(void)sig;
	front_signalled = 1;
}

/* Hold (or release) session `id` alive as this process: session.alive.hold / .release. */
static int alive(front *f, const orch_method *m, int64_t id)
{
	json_t *req = json_pack("{s:I}", "session_id", (json_int_t)id);
	char *reply = NULL;
	int rc = orch_call_method(&f->ctx, m, req, 0, &reply);

	if (rc)
		fprintf(stderr, "orchfs: session %lld: %s: %s\n", (long long)id, m->name, orch_error_last()->message);
	orch_error_clear();
	json_decref(req);
	free(reply);
	return rc;
}

static void hold(front *f, int64_t id)
{
	for (size_t i = 0; i < f->nheld; i++)
		if (f->held[i] == id)
			return;
	if (alive(f, &orch_alive_hold_method, id) != 0)
		return;
	f->held = orch_xrealloc(f->held, (f->nheld + 1) * sizeof(*f->held));
	f->held[f->nheld++] = id;
}

int front_open(front *f, const char *repo, const char *state, const char *host, int64_t session)
{
	struct sigaction sa;

	memset(f, 0, sizeof(*f));
	pthread_mutex_init(&f->mu, NULL);
	pthread_cond_init(&f->idle, NULL);
	if (orch_ctx_open_host(&f->ctx, repo, state, host) != 0) {
		fprintf(stderr, "orchfs: %s\n", orch_error_last()->message);
		pthread_cond_destroy(&f->idle);
		pthread_mutex_destroy(&f->mu);
		return 1;
	}
	/* A client that went away is an EPIPE from write(), not a signal. */
	signal(SIGPIPE, SIG_IGN);
	/* No SA_RESTART: the main thread's read() of stdin returns EINTR (line_reader.stop). */
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	if (session > 0) {
		hold(f, session);
		if (f->nheld == 0) {
			orch_ctx_close(&f->ctx);
			pthread_cond_destroy(&f->idle);
			pthread_mutex_destroy(&f->mu);
			return 1;
		}
	}
	return 0;
}

/* The new session's id in a session.open reply (new_work: session_context.session; resume_work: session). */
static int64_t opened_session(const char *reply)
{
	json_t *r = json_loads(reply, 0, NULL), *res = json_object_get(r, "result"), *ctx;
	json_t *s = (ctx = json_object_get(res, "session_context")) ? json_object_get(ctx, "session")
								    : json_object_get(res, "session");
	int64_t id = json_integer_value(json_object_get(s, "id"));

	json_decref(r);
	return id;
}

void front_after_call(front *f, const char *method, int rc, const char *reply)
{
	int64_t id;

	if (rc == 0 && reply && strcmp(method, "session.open") == 0 && (id = opened_session(reply)) > 0)
		hold(f, id);
}

/* Under f->mu. */
static int write_locked(front *f, const char *line, size_t len)
{
	if (f->status)
		return -1;
	if (write_all(STDOUT_FILENO, line, len) != 0) {
		if (errno != EPIPE)
			fprintf(stderr, "orchfs: writing stdout: %s\n", strerror(errno));
		f->status = 1;
		return -1;
	}
	return 0;
}

int front_write(front *f, const char *line, size_t len)
{
	pthread_mutex_lock(&f->mu);
	int rc = write_locked(f, line, len);
	pthread_mutex_unlock(&f->mu);
	return rc;
}

/* A wait's ctx->cancelled: the client gave it up, or the process was told to stop. */
static bool wait_cancelled(void *arg)
{
	front_wait *w = arg;

	pthread_mutex_lock(&w->f->mu);
	bool c = w->cancelled || front_signalled;
	pthread_mutex_unlock(&w->f->mu);
	return c;
}

static void *wait_main(void *arg)
{
	front_wait *w = arg;
	front *f = w->f;
	orch_ctx ctx;
	char *reply = NULL, *line = NULL;
	int rc;

	orch_ctx_init(&ctx, f->ctx.env, NULL, NULL);
	ctx.cancelled = wait_cancelled;
	ctx.cancelled_arg = w;
	rc = orch_call(&ctx, "wait", w->params, 0, &reply);
	orch_error_clear();
	line = f->line(f->line_arg, w->id, rc, reply);
	pthread_mutex_lock(&f->mu);
	/* Cancelled by the client: no reply (MCP); stopped by a signal: the reply says timed_out. */
	if (line && !w->cancelled)
		write_locked(f, line, strlen(line));
	for (front_wait **p = &f->waits; *p; p = &(*p)->next)
		if (*p == w) {
			*p = w->next;
			break;
		}
	if (--f->running == 0)
		pthread_cond_broadcast(&f->idle);
	pthread_mutex_unlock(&f->mu);
	free(line);
	free(reply);
	json_decref(w->id);
	json_decref(w->params);
	free(w);
	return NULL;
}

void front_wait_start(front *f, json_t *id, json_t *params)
{
	front_wait *w = calloc(1, sizeof(*w));
	sigset_t block, old;
	pthread_attr_t attr;
	pthread_t thread;

	if (!w)
		abort();
	w->f = f;
	w->id = json_incref(id ? id : json_null());
	w->params = json_incref(params);
	/* The signals go to the main thread, whose read() they interrupt. */
	sigemptyset(&block);
	sigaddset(&block, SIGTERM);
	sigaddset(&block, SIGINT);
	pthread_sigmask(SIG_BLOCK, &block, &old);
	pthread_attr_init(&attr);
	pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	pthread_mutex_lock(&f->mu);
	w->next = f->waits;
	f->waits = w;
	f->running++;
	bool started = pthread_create(&thread, &attr, wait_main, w) == 0;
	pthread_mutex_unlock(&f->mu);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	pthread_attr_destroy(&attr);
	if (!started)
		wait_main(w); /* no thread: it waits here (replies in order, as before) */
}

void front_wait_cancel(front *f, json_t *id)
{
	pthread_mutex_lock(&f->mu);
	for (front_wait *w = f->waits; w; w = w->next)
		if (json_equal(w->id, id))
			w->cancelled = true;
	pthread_mutex_unlock(&f->mu);
}

int front_close(front *f, int status)
{
	/* End of input or a signal: the sessions are let go at once, whatever is still waiting. */
	for (size_t i = 0; i < f->nheld; i++)
		alive(f, &orch_alive_release_method, f->held[i]);
	free(f->held);
	pthread_mutex_lock(&f->mu);
	while (f->running > 0)
		pthread_cond_wait(&f->idle, &f->mu);
	pthread_mutex_unlock(&f->mu);
	orch_ctx_close(&f->ctx);
	pthread_cond_destroy(&f->idle);
	pthread_mutex_destroy(&f->mu);
	return status ? status : f->status;
}

bool front_next_line(line_reader *r, const char **text, size_t *len, line_status *ls, int *status)
{
	*ls = line_next(r, text, len);
	if (*ls == LINE_EOF || front_signalled)
		return false;
	if (*ls == LINE_ERROR) {
		fprintf(stderr, "orchfs: reading stdin: %s\n", strerror(errno));
		*status = 1;
		return false;
	}
	return true;
}
