/*
 * The change feed as files, and liveness by a held-open file.
 *
 * `events` and `events-since/<N>` are streams of JSON lines (core
 * events.c), one per successful mutating call.  Each open descriptor has a
 * position: the db_version of the last event it handed out (a fresh
 * `events` starts at the current db_version, `events-since/N` at N).  A
 * read returns the next whole lines that fit (see fs_evstream: offsets
 * count the descriptor's own bytes, so seeking back over them works), or,
 * when there are none yet, blocks:
 *
 *  - A blocked read holds no thread.  The FUSE handler puts the request
 *    on the waiter list and returns without replying; libfuse keeps the
 *    request until it is answered.  When a commit becomes visible -- this
 *    daemon's (fs_cache_committed, after the COMMIT) or another process's
 *    (noticed by the cache's watcher thread or any request) -- it calls
 *    fs_events_advance, which only records the new db_version and wakes
 *    the events thread; that thread answers the waiters that have
 *    something to read and notifies pollers.  Writers never serve readers.
 *  - A signal to the reader (Ctrl-C) reaches the daemon as a FUSE
 *    interrupt: the request is answered with EINTR.  A request is on the
 *    waiter list or held by exactly one thread that took it off under
 *    ev_mu; only that one answers it, so it gets exactly one reply.
 *  - poll/select/epoll: POLLIN when there is something to read at the
 *    descriptor's position; otherwise the poll handle is kept and
 *    notified (fuse_lowlevel_notify_poll) when the position has news.
 *  - O_NONBLOCK: EAGAIN instead of blocking.
 *
 * Writes of ctl/wait are parked the same way (fs_events_park_ctl): the
 * call looked once and found nothing (ctl.c, core wait.c); the events
 * thread calls it again after each commit and when its deadline or a
 * lock's lease end comes (a timed wait on ev_cond), and answers the write
 * when it is done; a signal answers it with EINTR.
 *
 * sessions/<id>/alive: the first open of a session's alive file in this
 * daemon makes the session held (core: session.alive.hold, in the
 * database); the release of the last one drops it (session.alive.release:
 * a resume candidate at once, its locks released, an event).  Both are
 * calls on the writer lane.  Holds left by a process that died (a daemon,
 * orchfs serve or mcp) are released by the next mutating or blocking call
 * of any process (core: session.alive.reap) or the next daemon to start
 * (fs_alive_reap).
 *
 * Everything below is under ev_mu unless said otherwise; alive holders are
 * under alive_mu (held across the two internal calls, so that a hold and a
 * release of one session happen in the order of their opens and closes).
 */
#define FUSE_USE_VERSION FUSE_MAKE_VERSION(3, 14)
#include <errno.h>
#include <fuse_lowlevel.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "fs.h"

#define LINES_PER_READ 256 /* fetched from the database for one read (the newest come from memory) */

/*
 * Under a stream of commits (two wake-ups closer than this), readers are
 * woken at most this often: each wake-up hands a reader all that came
 * meanwhile in one read, instead of one wake-up per commit for each of
 * hundreds of readers.  A commit after a quiet spell wakes them at once.
 */
#define WAKE_INTERVAL_MS 40
/* The events thread runs below the writer thread (niced 5): under load, commits come first. */
#define EVENTS_NICE 10

/*
 * A descriptor's stream is a file of its own: the lines it was given, at
 * offsets counted from its open.  The bytes around the reader's position
 * are kept (buf), so that a reader that read past a line and seeks back
 * to it (bash's `read`, `head -1`: they read a buffer, keep one line and
 * seek back over the rest) reads the rest again, and a read shorter than
 * a line gets the line's start and the next read the rest.
 */
#define KEEP_BEHIND (64 * 1024) /* bytes kept before the reader's position for its seeks back */

struct fs_evstream {
	int64_t pos;          /* db_version of the last event put in buf */
	char *buf;            /* stream bytes [buf_off, buf_off + buf_len) */
	size_t buf_len, buf_cap;
	int64_t buf_off;
	int64_t served;       /* just after the last bytes a read returned: the reader's position */
	bool lost;            /* the history after pos was no longer kept: the error line is in buf, then EOF */
	struct fuse_pollhandle *ph; /* a poll waiting for news; the stream is then on `pollers` */
	fs_evstream *pnext, *pprev;
};

/* A read parked until its stream has news. */
typedef struct waiter {
	struct waiter *next, *prev;
	fuse_req_t req;
	fs_evstream *s;
	int64_t off;
	size_t size;
	void (*done)(void *arg); /* after the reply: drops the read's reference to the open file */
	void *arg;
} waiter;

/*
 * The newest events, in memory: a woken reader copies its line from here,
 * never asking SQLite.  The events thread fills it (one query per wake-up)
 * before it answers the parked reads.  Slot v % RING holds version v when
 * ring[v % RING].v == v; every event in (ring_lo, ring_hi] is here (a
 * version with no event -- bumped before events existed -- has line NULL).
 */
#define RING 4096
static struct {
	int64_t v;
	char *line;
	size_t len;
} ring[RING];
static int64_t ring_lo, ring_hi;

/* A write of ctl/wait parked until its object changes, its lease ends or its time runs out. */
typedef struct cwaiter {
	struct cwaiter *next, *prev;
	fuse_req_t req;
	fs_ctl *c;
	size_t size;
	int64_t wake_at; /* ms: look again by then at the latest */
	bool due;        /* look again now (a commit came between its look and its parking) */
	void (*done)(void *arg);
	void *arg;
} cwaiter;

/*
 * The feed's shared state.  ev_mu guards everything from ev_cond down to
 * `pollers`: the newest version, the flags, and the lists of parked reads,
 * parked waits and pollers (any FUSE thread adds to them; the events
 * thread, interrupts and stop take from them, and whoever unlinks a
 * request under ev_mu is the one that answers it).
 */
static pthread_mutex_t ev_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t ev_cond = PTHREAD_COND_INITIALIZER;
static int64_t latest;                 /* the newest db_version known to be committed and visible */
static bool news;                      /* latest moved since the events thread last looked */
static bool stopping;
static waiter parked = {&parked, &parked, NULL, NULL, 0, 0, NULL, NULL};
static size_t nparked;
static cwaiter cparked = {&cparked, &cparked, NULL, NULL, 0, 0, false, NULL, NULL};
static fs_evstream pollers = {.pnext = &pollers, .pprev = &pollers};
/* Set by fs_events_start before the FUSE loop, cleared by fs_events_stop after it (read under ev_mu by advance). */
static orch_env *env;
/* The events thread's handle: written and read only by the mount's main thread (start, stop). */
static pthread_t thread;
static bool thread_started;

static void unlink_waiter(waiter *w)
{
	w->prev->next = w->next;
	w->next->prev = w->prev;
	w->next = w->prev = w;
	nparked--;
}

static void link_waiter(waiter *w)
{
	w->next = &parked;
	w->prev = parked.prev;
	parked.prev->next = w;
	parked.prev = w;
	nparked++;
}

static void cunlink(cwaiter *w)
{
	w->prev->next = w->next;
	w->next->prev = w->prev;
	w->next = w->prev = w;
}

static void clink(cwaiter *list, cwaiter *w)
{
	w->next = list;
	w->prev = list->prev;
	list->prev->next = w;
	list->prev = w;
}

static void unlink_poller(fs_evstream *s)
{
	if (!s->pnext)
		return;
	s->pprev->pnext = s->pnext;
	s->pnext->pprev = s->pprev;
	s->pnext = s->pprev = NULL;
}

/* Under ev_mu: whether a read at the stream's position would not block. */
static bool ready(const fs_evstream *s)
{
	return s->served < s->buf_off + (int64_t)s->buf_len || s->lost || s->pos < latest;
}

void fs_events_advance(int64_t v)
{
	pthread_mutex_lock(&ev_mu);
	bool moved = v > latest;
	if (moved) {
		latest = v;
		news = true;
		pthread_cond_signal(&ev_cond);
	}
	orch_env *e = env;
	pthread_mutex_unlock(&ev_mu);
	/* Calls of `wait` look again (core wait.c). */
	if (moved && e)
		orch_env_notify_commit(e);
}

/* ---- reading ---- */

/* Outcome of one attempt at a read. */
typedef enum { R_DATA, R_EMPTY, R_ERROR } rd;

/* Append a line to the stream (under ev_mu); `v` its db_version. */
static void append(fs_evstream *s, int64_t v, const char *line, size_t len)
{
	/* Drop what lies well behind the reader first. */
	int64_t keep_from = s->served - KEEP_BEHIND;
	if (keep_from > s->buf_off + KEEP_BEHIND) {
		size_t drop = (size_t)(keep_from - s->buf_off);
		memmove(s->buf, s->buf + drop, s->buf_len - drop);
		s->buf_len -= drop;
		s->buf_off += (int64_t)drop;
	}
	if (s->buf_len + len > s->buf_cap) {
		s->buf_cap = (s->buf_len + len) * 2;
		s->buf = orch_xrealloc(s->buf, s->buf_cap);
	}
	memcpy(s->buf + s->buf_len, line, len);
	s->buf_len += len;
	s->pos = v;
}

/*
 * Under ev_mu, reading at the end of buf with ring_lo <= s->pos < ring_hi:
 * append the next lines from the ring, as many as `size` bytes hold (at
 * least one).  False when there were only versions without an event.
 */
static bool from_ring(fs_evstream *s, size_t size)
{
	size_t added = 0;

	for (int64_t v = s->pos + 1; v <= ring_hi; v++) {
		if (ring[v % RING].v != v || !ring[v % RING].line)
			continue;
		if (added && added + ring[v % RING].len > size)
			break;
		append(s, v, ring[v % RING].line, ring[v % RING].len);
		added += ring[v % RING].len;
	}
	if (!added)
		s->pos = ring_hi; /* only versions without an event */
	return added > 0;
}

/* Under ev_mu: copy what buf holds at `off` (up to `size`) for a read. */
static void copy_out(fs_evstream *s, int64_t off, size_t size, char **out, size_t *n)
{
	size_t at = (size_t)(off - s->buf_off), k = s->buf_len - at;

	*n = k < size ? k : size;
	*out = orch_xrealloc(NULL, *n ? *n : 1);
	memcpy(*out, s->buf + at, *n);
	s->served = off + (int64_t)*n;
}

/*
 * What a read of `size` bytes at stream offset `off` returns (ctx: a
 * reader, no transaction open): bytes the stream already holds there, else
 * (at its end) the next whole lines that fit (at least one: a longer line
 * is cut and its rest read next).  R_EMPTY: nothing new yet.  R_ERROR: an
 * offset the stream no longer holds (EINVAL), or the database failed
 * (EIO); *err says which.  *out, *n: the bytes (caller frees).
 */
static rd take(orch_ctx *ctx, fs_evstream *s, int64_t off, size_t size, char **out, size_t *n, int *err)
{
	orch_event_line *lines = NULL;
	int64_t pos, from = 0, last = 0;
	size_t nl = 0;

	*out = NULL;
	*n = 0;
	*err = EIO;
	for (;;) {
		pthread_mutex_lock(&ev_mu);
		int64_t end = s->buf_off + (int64_t)s->buf_len;
		if (off < s->buf_off || off > end) {
			pthread_mutex_unlock(&ev_mu);
			*err = EINVAL;
			return R_ERROR;
		}
		if (off < end || s->lost) {
			copy_out(s, off, size, out, n); /* at the end of a lost stream: end of file */
			pthread_mutex_unlock(&ev_mu);
			return R_DATA;
		}
		pos = s->pos;
		/* The ring, when it holds everything up to now (else the database has more). */
		if (pos >= ring_lo && pos < ring_hi && ring_hi >= latest && from_ring(s, size)) {
			copy_out(s, off, size, out, n);
			pthread_mutex_unlock(&ev_mu);
			return R_DATA;
		}
		if (s->pos >= latest) {
			pthread_mutex_unlock(&ev_mu);
			return R_EMPTY;
		}
		pos = s->pos;
		pthread_mutex_unlock(&ev_mu);

		if (orch_events_bounds(ctx->store, &from, &last) != 0 ||
		    (pos >= from && orch_events_after(ctx->store, pos, LINES_PER_READ, &lines, &nl) != 0)) {
			orch_log("events: %s", orch_error_last()->message);
			orch_error_clear();
			return R_ERROR;
		}
		pthread_mutex_lock(&ev_mu);
		if (s->pos != pos || s->buf_off + (int64_t)s->buf_len != end || s->lost) {
			/* Another read of this descriptor moved it meanwhile: look again. */
			pthread_mutex_unlock(&ev_mu);
			orch_event_lines_free(lines, nl);
			lines = NULL;
			nl = 0;
			continue;
		}
		break;
	}
	/* Under ev_mu from here. */
	rd r = R_DATA;
	if (pos < from) {
		/* Fell behind the kept history: one JSON error line (read like any line), then end of file. */
		char *line = NULL;
		int len = asprintf(&line, "{\"error\":{\"code\":\"not_found\",\"message\":\"the events after "
				   "db_version %lld are no longer kept (the newest %d are); open events again\"}}\n",
				   (long long)pos, ORCH_EVENTS_KEPT);
		if (len < 0)
			abort();
		append(s, pos, line, (size_t)len);
		free(line);
		s->lost = true;
	} else if (nl == 0) {
		/* Versions without an event (bumped before events existed): nothing to wait for there. */
		if (last > s->pos)
			s->pos = last;
		r = R_EMPTY;
	} else {
		size_t added = 0;
		for (size_t i = 0; i < nl && (!added || added + lines[i].len <= size); i++) {
			append(s, lines[i].db_version, lines[i].line, lines[i].len);
			added += lines[i].len;
		}
	}
	if (r == R_DATA)
		copy_out(s, off, size, out, n);
	pthread_mutex_unlock(&ev_mu);
	orch_event_lines_free(lines, nl);
	return r;
}

/*
 * Answer a read if the stream has something (or an error): true when
 * answered.  ctx: a reader of the caller's.
 */
static bool try_answer(orch_ctx *ctx, fuse_req_t req, fs_evstream *s, int64_t off, size_t size)
{
	char *buf;
	size_t n;
	int err;

	switch (take(ctx, s, off, size, &buf, &n, &err)) {
	case R_DATA:
		fuse_reply_buf(req, buf, n);
		free(buf);
		return true;
	case R_ERROR:
		fuse_reply_err(req, err);
		return true;
	case R_EMPTY:
		break;
	}
	return false;
}

/* libfuse: the reader was signalled.  Called with the request's own lock held, never after its reply. */
static void on_interrupt(fuse_req_t req, void *data)
{
	waiter *w;

	cwaiter *cw;

	(void)data;
	pthread_mutex_lock(&ev_mu);
	for (w = parked.next; w != &parked && w->req != req; w = w->next)
		;
	if (w != &parked)
		unlink_waiter(w);
	else
		w = NULL; /* not parked: the thread that holds it answers it */
	for (cw = cparked.next; !w && cw != &cparked && cw->req != req; cw = cw->next)
		;
	if (!w && cw != &cparked)
		cunlink(cw);
	else
		cw = NULL;
	pthread_mutex_unlock(&ev_mu);
	if (w) {
		fuse_reply_err(req, EINTR);
		w->done(w->arg);
		free(w);
	}
	if (cw) {
		fs_ctl_cancel(cw->c);
		fuse_reply_err(req, EINTR);
		cw->done(cw->arg);
		free(cw);
	}
}

/*
 * Park `w` unless its stream became ready meanwhile or the read must not
 * block: true when parked (the request is answered later), false when the
 * caller must try again.  Answers EAGAIN / EINTR itself (then true too).
 */
static bool park(waiter *w, bool nonblock)
{
	pthread_mutex_lock(&ev_mu);
	if (ready(w->s)) {
		pthread_mutex_unlock(&ev_mu);
		return false;
	}
	if (nonblock || stopping || fuse_req_interrupted(w->req)) {
		pthread_mutex_unlock(&ev_mu);
		fuse_reply_err(w->req, nonblock ? EAGAIN : EINTR);
		w->done(w->arg);
		free(w);
		return true;
	}
	link_waiter(w);
	pthread_mutex_unlock(&ev_mu);
	return true;
}

void fs_evstream_read(fuse_req_t req, fs_evstream *s, int64_t off, size_t size, bool nonblock,
		      void (*done)(void *arg), void *arg)
{
	waiter *w = orch_xrealloc(NULL, sizeof(*w));
	orch_ctx ctx;
	orch_store *st;

	*w = (waiter){w, w, req, s, off, size, done, arg};
	/* Before it can be parked: an interrupt then finds it on the list (or sees it is not). */
	fuse_req_interrupt_func(req, on_interrupt, NULL);
	if (orch_env_reader(env, &st) != 0) {
		orch_error_clear();
		fuse_reply_err(req, EIO);
		done(arg);
		free(w);
		return;
	}
	orch_ctx_init(&ctx, env, st, NULL);
	fs_cache_sync(&ctx); /* another process's commit not noticed yet: noticed now */
	for (;;) {
		if (try_answer(&ctx, req, s, off, size)) {
			done(arg);
			free(w);
			break;
		}
		if (park(w, nonblock))
			break;
	}
	orch_env_reader_put(env, st);
}

/*
 * Park `w` again (or for the first time) unless the session ends or its
 * writer was signalled (then it is answered with EINTR here).
 */
static void cpark(cwaiter *w, int64_t seen)
{
	pthread_mutex_lock(&ev_mu);
	if (stopping || fuse_req_interrupted(w->req)) {
		pthread_mutex_unlock(&ev_mu);
		fs_ctl_cancel(w->c);
		fuse_reply_err(w->req, EINTR);
		w->done(w->arg);
		free(w);
		return;
	}
	/* A commit it did not see was announced meanwhile: look again at once. */
	w->due = latest > seen;
	clink(&cparked, w);
	if (w->due) {
		news = true;
		pthread_cond_signal(&ev_cond);
	} else {
		pthread_cond_signal(&ev_cond); /* its wake_at may come before the thread's next one */
	}
	pthread_mutex_unlock(&ev_mu);
}

void fs_events_park_ctl(fuse_req_t req, fs_ctl *c, size_t size, void (*done)(void *arg), void *arg)
{
	cwaiter *w = orch_xrealloc(NULL, sizeof(*w));
	int64_t seen = 0;

	*w = (cwaiter){w, w, req, c, size, 0, false, done, arg};
	w->wake_at = fs_ctl_wake_at(c, &seen);
	fuse_req_interrupt_func(req, on_interrupt, NULL);
	cpark(w, seen);
}

/* Look again for a parked write of ctl/wait: answer it, or park it again. */
static void cresume(cwaiter *w)
{
	int64_t wake_at = 0, seen = 0;
	int rc = fs_ctl_resume(env, w->c, &wake_at);

	if (rc == FS_CTL_PENDING) {
		w->wake_at = fs_ctl_wake_at(w->c, &seen);
		cpark(w, seen);
		return;
	}
	if (rc)
		fuse_reply_err(w->req, -rc);
	else
		fuse_reply_write(w->req, w->size);
	w->done(w->arg);
	free(w);
}

/* ---- the events thread ---- */

/* Bring the ring up to what the database holds (the events thread; st: its reader). */
static void fill_ring(orch_store *st)
{
	orch_event_line *lines = NULL;
	int64_t from = 0, last = 0;
	size_t nl = 0;

	pthread_mutex_lock(&ev_mu);
	int64_t hi = ring_hi;
	pthread_mutex_unlock(&ev_mu);
	/* One snapshot: the rows and the db_version they go up to. */
	if (orch_store_begin(st, false) != 0 || orch_events_bounds(st, &from, &last) != 0 ||
	    orch_events_after(st, hi > from ? hi : from, RING, &lines, &nl) != 0) {
		orch_error_clear();
		if (orch_store_in_txn(st))
			orch_store_rollback(st);
		return;
	}
	orch_store_rollback(st);
	pthread_mutex_lock(&ev_mu);
	if (ring_hi == hi) {
		for (size_t i = 0; i < nl; i++) {
			int64_t v = lines[i].db_version;
			free(ring[v % RING].line);
			ring[v % RING].v = v;
			ring[v % RING].line = lines[i].line;
			ring[v % RING].len = lines[i].len;
			lines[i].line = NULL;
		}
		/* Complete up to `last` unless RING rows were not all of them. */
		int64_t top = nl == RING ? lines[nl - 1].db_version : last;
		if (top > ring_hi) {
			ring_hi = top;
			if (ring_lo < ring_hi - RING)
				ring_lo = ring_hi - RING;
			if (ring_lo < from)
				ring_lo = from;
		}
	}
	pthread_mutex_unlock(&ev_mu);
	orch_event_lines_free(lines, nl);
}

/* Answer the parked reads whose streams have news; notify the polls that wait for it. */
static void *events_main(void *arg)
{
	orch_ctx ctx;
	orch_store *st = NULL;

	(void)arg;
	if (setpriority(PRIO_PROCESS, (id_t)gettid(), EVENTS_NICE) != 0)
		orch_log("events thread keeps the default priority: %s", strerror(errno));
	int64_t last_wake = 0, gap = WAKE_INTERVAL_MS; /* the last wake-up, and the time between the last two */
	pthread_mutex_lock(&ev_mu);
	while (!stopping) {
		int64_t now = orch_now_ms(), next = 0;
		bool due = false;
		if (news && gap < WAKE_INTERVAL_MS && now < last_wake + WAKE_INTERVAL_MS) {
			/* Let the commits of the next few ms join this wake-up. */
			int64_t at = last_wake + WAKE_INTERVAL_MS;
			struct timespec ts = {at / 1000, (at % 1000) * 1000000};
			pthread_cond_timedwait(&ev_cond, &ev_mu, &ts);
			continue;
		}
		for (cwaiter *w = cparked.next; w != &cparked; w = w->next) {
			due |= w->due || w->wake_at <= now;
			if (!next || w->wake_at < next)
				next = w->wake_at;
		}
		if (!news && !due) {
			if (next) {
				struct timespec ts = {next / 1000, (next % 1000) * 1000000};
				pthread_cond_timedwait(&ev_cond, &ev_mu, &ts);
			} else {
				pthread_cond_wait(&ev_cond, &ev_mu);
			}
			continue;
		}
		bool had_news = news;
		news = false;
		if (had_news) {
			gap = now - last_wake;
			last_wake = now;
		}
		/* Parked waits to look at again: all of them after a commit, else those whose time came. */
		cwaiter clist = {&clist, &clist, NULL, NULL, 0, 0, false, NULL, NULL};
		for (cwaiter *w = cparked.next, *nx; w != &cparked; w = nx) {
			nx = w->next;
			if (had_news || w->due || w->wake_at <= now) {
				cunlink(w);
				w->due = false;
				clink(&clist, w);
			}
		}
		/* Take the ready ones off the lists: from now on this thread alone answers them. */
		waiter ready_list = {&ready_list, &ready_list, NULL, NULL, 0, 0, NULL, NULL};
		for (waiter *w = parked.next, *nx; w != &parked; w = nx) {
			nx = w->next;
			if (!ready(w->s))
				continue;
			unlink_waiter(w);
			w->next = &ready_list;
			w->prev = ready_list.prev;
			ready_list.prev->next = w;
			ready_list.prev = w;
		}
		struct fuse_pollhandle **phs = NULL;
		size_t nph = 0;
		for (fs_evstream *s = pollers.pnext, *nx; s != &pollers; s = nx) {
			nx = s->pnext;
			if (!ready(s))
				continue;
			phs = orch_xrealloc(phs, (nph + 1) * sizeof(*phs));
			phs[nph++] = s->ph;
			s->ph = NULL;
			unlink_poller(s);
		}
		pthread_mutex_unlock(&ev_mu);

		if (!st) {
			if (orch_env_reader(env, &st) != 0) {
				orch_log("events: cannot open a read connection: %s", orch_error_last()->message);
				orch_error_clear();
				st = NULL;
			} else {
				orch_ctx_init(&ctx, env, st, NULL);
			}
		}
		if (st)
			fill_ring(st);
		for (size_t i = 0; i < nph; i++) {
			fuse_lowlevel_notify_poll(phs[i]);
			fuse_pollhandle_destroy(phs[i]);
		}
		free(phs);
		for (waiter *w = ready_list.next, *nx; w != &ready_list; w = nx) {
			nx = w->next;
			if (!st) {
				fuse_reply_err(w->req, EIO);
			} else if (!try_answer(&ctx, w->req, w->s, w->off, w->size)) {
				/* Nothing after all (a version without an event): back on the list. */
				if (park(w, false))
					continue;
				if (!try_answer(&ctx, w->req, w->s, w->off, w->size))
					fuse_reply_err(w->req, EIO);
			}
			w->done(w->arg);
			free(w);
		}
		for (cwaiter *w = clist.next, *nx; w != &clist; w = nx) {
			nx = w->next;
			cunlink(w);
			cresume(w);
		}
		pthread_mutex_lock(&ev_mu);
	}
	pthread_mutex_unlock(&ev_mu);
	if (st)
		orch_env_reader_put(env, st);
	return NULL;
}

void fs_events_start(orch_env *e)
{
	orch_store *st;
	int64_t v = 0, t = 0;

	env = e;
	if (orch_env_reader(e, &st) == 0) {
		orch_meta_read(st, &v, &t);
		orch_env_reader_put(e, st);
	}
	orch_error_clear();
	latest = ring_lo = ring_hi = v;
	stopping = false;
	if (pthread_create(&thread, NULL, events_main, NULL) == 0)
		thread_started = true;
	else
		orch_log("events: cannot start the events thread: blocked reads wake only at their next request");
}

void fs_events_stop(void)
{
	waiter list = {&list, &list, NULL, NULL, 0, 0, NULL, NULL};

	pthread_mutex_lock(&ev_mu);
	stopping = true;
	pthread_cond_signal(&ev_cond);
	pthread_mutex_unlock(&ev_mu);
	if (thread_started)
		pthread_join(thread, NULL);
	thread_started = false;
	/* The session is over: answer what is still parked so that libfuse frees it. */
	pthread_mutex_lock(&ev_mu);
	while (parked.next != &parked) {
		waiter *w = parked.next;
		unlink_waiter(w);
		w->next = &list;
		w->prev = list.prev;
		list.prev->next = w;
		list.prev = w;
	}
	cwaiter clist = {&clist, &clist, NULL, NULL, 0, 0, false, NULL, NULL};
	while (cparked.next != &cparked) {
		cwaiter *w = cparked.next;
		cunlink(w);
		clink(&clist, w);
	}
	while (pollers.pnext != &pollers) {
		fs_evstream *s = pollers.pnext;
		fuse_pollhandle_destroy(s->ph);
		s->ph = NULL;
		unlink_poller(s);
	}
	pthread_mutex_unlock(&ev_mu);
	for (waiter *w = list.next, *nx; w != &list; w = nx) {
		nx = w->next;
		fuse_reply_err(w->req, EINTR);
		w->done(w->arg);
		free(w);
	}
	for (cwaiter *w = clist.next, *nx; w != &clist; w = nx) {
		nx = w->next;
		fs_ctl_cancel(w->c);
		fuse_reply_err(w->req, EINTR);
		w->done(w->arg);
		free(w);
	}
	pthread_mutex_lock(&ev_mu);
	env = NULL;
	for (size_t i = 0; i < RING; i++) {
		free(ring[i].line);
		ring[i].line = NULL;
		ring[i].v = 0;
	}
	pthread_mutex_unlock(&ev_mu);
}

/* ---- descriptors ---- */

int fs_evstream_open(orch_env *e, bool since, int64_t after, fs_evstream **out)
{
	orch_store *st;
	int64_t from = 0, last = 0;
	int rc = 0;

	*out = NULL;
	if (orch_env_reader(e, &st) != 0) {
		orch_error_clear();
		return -EIO;
	}
	if (orch_events_bounds(st, &from, &last) != 0) {
		orch_error_clear();
		rc = -EIO;
	} else if (since && after < from) {
		rc = -ENOENT; /* older than the kept history (README: events-since) */
	}
	orch_env_reader_put(e, st);
	if (rc)
		return rc;
	fs_evstream *s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	s->pos = since ? after : last;
	fs_events_advance(last);
	*out = s;
	return 0;
}

void fs_evstream_close(fs_evstream *s)
{
	if (!s)
		return;
	pthread_mutex_lock(&ev_mu);
	if (s->ph) {
		fuse_pollhandle_destroy(s->ph);
		s->ph = NULL;
	}
	unlink_poller(s);
	pthread_mutex_unlock(&ev_mu);
	free(s->buf);
	free(s);
}

unsigned fs_evstream_poll(fs_evstream *s, struct fuse_pollhandle *ph)
{
	unsigned revents = 0;

	pthread_mutex_lock(&ev_mu);
	if (ready(s)) {
		revents = POLLIN | POLLRDNORM;
		if (ph)
			fuse_pollhandle_destroy(ph);
	} else if (ph) {
		if (s->ph)
			fuse_pollhandle_destroy(s->ph);
		s->ph = ph;
		if (!s->pnext) {
			s->pnext = &pollers;
			s->pprev = pollers.pprev;
			pollers.pprev->pnext = s;
			pollers.pprev = s;
		}
	}
	pthread_mutex_unlock(&ev_mu);
	return revents;
}

size_t fs_events_parked(void)
{
	pthread_mutex_lock(&ev_mu);
	size_t n = nparked;
	pthread_mutex_unlock(&ev_mu);
	return n;
}

/* ---- sessions/<id>/alive ---- */

typedef struct {
	int64_t session_id;
	unsigned holders;
} alive_entry;

static pthread_mutex_t alive_mu = PTHREAD_MUTEX_INITIALIZER;
static alive_entry *alive;  /* under alive_mu */
static size_t nalive, capalive; /* under alive_mu */

/* One internal call for session `sid`: 0 or -errno (the reason logged when `log`). */
static int alive_call(orch_env *e, const orch_method *m, int64_t sid, bool log)
{
	orch_ctx ctx;
	char *reply = NULL;
	json_t *req = json_pack("{s:I}", "session_id", (json_int_t)sid);
	int rc;

	orch_ctx_init(&ctx, e, NULL, NULL);
	rc = orch_call_method(&ctx, m, req, 0, &reply);
	if (rc && log)
		orch_log("sessions/%lld/alive: %s failed: %s", (long long)sid, m->name, orch_error_last()->message);
	orch_error_clear();
	json_decref(req);
	free(reply);
	return rc ? -fs_errno(rc) : 0;
}

int fs_alive_open(orch_env *e, int64_t sid)
{
	int rc = 0;
	size_t i;

	pthread_mutex_lock(&alive_mu);
	for (i = 0; i < nalive && alive[i].session_id != sid; i++)
		;
	if (i == nalive || alive[i].holders == 0) {
		if ((rc = alive_call(e, &orch_alive_hold_method, sid, false)) != 0)
			goto done;
		if (i == nalive) {
			if (nalive == capalive) {
				capalive = capalive ? capalive * 2 : 16;
				alive = orch_xrealloc(alive, capalive * sizeof(*alive));
			}
			alive[nalive++] = (alive_entry){sid, 0};
		}
	}
	alive[i].holders++;
done:
	pthread_mutex_unlock(&alive_mu);
	return rc;
}

void fs_alive_close(orch_env *e, int64_t sid)
{
	size_t i;

	pthread_mutex_lock(&alive_mu);
	for (i = 0; i < nalive && alive[i].session_id != sid; i++)
		;
	if (i < nalive && alive[i].holders > 0 && --alive[i].holders == 0) {
		alive_call(e, &orch_alive_release_method, sid, true);
		alive[i] = alive[--nalive];
	}
	pthread_mutex_unlock(&alive_mu);
}

void fs_alive_reap(orch_env *e)
{
	orch_store *st;
	int64_t *ids = NULL;
	size_t n = 0;

	if (orch_env_reader(e, &st) != 0) {
		orch_error_clear();
		return;
	}
	orch_stmt *q = orch_store_stmt(st, "SELECT DISTINCT session_id FROM session_alive "
					  "WHERE NOT " ORCH_SQL_HOLDER_ALIVE("session_alive"));
	while (q && orch_stmt_step(q) == ORCH_ROW) {
		ids = orch_xrealloc(ids, (n + 1) * sizeof(*ids));
		ids[n++] = orch_stmt_column_int64(q, 0);
	}
	if (q)
		orch_stmt_reset(q);
	orch_env_reader_put(e, st);
	for (size_t i = 0; i < n; i++) {
		orch_log("sessions/%lld/alive was held by a daemon that is gone: releasing it", (long long)ids[i]);
		alive_call(e, &orch_alive_release_method, ids[i], true);
	}
	free(ids);
}

void fs_alive_forget_all(void)
{
	pthread_mutex_lock(&alive_mu);
	free(alive);
	alive = NULL;
	nalive = capalive = 0;
	pthread_mutex_unlock(&alive_mu);
}

/*
 * The holders' beat (orch_alive_beat) with a dqlite store: its own thread
 * and connection, so that nothing on the writer lane delays it; it sleeps
 * on beat_cond between rounds.  beat_mu owns beat_stop; beat_thread and
 * beat_started belong to the thread that starts and stops the daemon.
 */
static pthread_t beat_thread;
static bool beat_started;
static pthread_mutex_t beat_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t beat_cond = PTHREAD_COND_INITIALIZER;
static bool beat_stop;

static void *beat_main(void *arg)
{
	orch_env *e = arg;
	orch_store *st = NULL; /* this thread's own connection, opened (again) when needed */

	pthread_mutex_lock(&beat_mu);
	while (!beat_stop) {
		pthread_mutex_unlock(&beat_mu);
		if ((!st && orch_store_open(&st, e->db_path) != 0) || orch_alive_beat(st) != 0) {
			orch_log("alive: cannot refresh this host's holders: %s", orch_error_last()->message);
			orch_error_clear();
		}
		struct timespec until;
		clock_gettime(CLOCK_REALTIME, &until);
		until.tv_sec += ORCH_HOLDER_BEAT_MS / 1000;
		until.tv_nsec += (ORCH_HOLDER_BEAT_MS % 1000) * 1000000L;
		if (until.tv_nsec >= 1000000000L) {
			until.tv_sec++;
			until.tv_nsec -= 1000000000L;
		}
		pthread_mutex_lock(&beat_mu);
		if (!beat_stop)
			pthread_cond_timedwait(&beat_cond, &beat_mu, &until);
	}
	pthread_mutex_unlock(&beat_mu);
	orch_store_close(st);
	return NULL;
}

void fs_alive_beat_start(orch_env *e)
{
	if (!*orch_store_host())
		return;
	beat_stop = false;
	beat_started = pthread_create(&beat_thread, NULL, beat_main, e) == 0;
	if (!beat_started)
		orch_log("alive: cannot start the beat thread: other hosts will count this host's holders gone");
}

void fs_alive_beat_stop(void)
{
	if (!beat_started)
		return;
	pthread_mutex_lock(&beat_mu);
	beat_stop = true;
	pthread_cond_signal(&beat_cond);
	pthread_mutex_unlock(&beat_mu);
	pthread_join(beat_thread, NULL);
	beat_started = false;
}
