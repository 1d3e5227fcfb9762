/*
 * What orchfs serve and orchfs mcp share as processes: the sessions they
 * hold alive, their signals, their output, and their waits.
 *
 * Liveness.  A session opened through the process (a session.open that
 * succeeded) and the one named by --session are held alive by the process
 * exactly as an open sessions/<id>/alive is held by a daemon: a
 * session_alive row naming this process (pid and start time), so the
 * session is live without heartbeats.  End of input, SIGTERM and SIGINT
 * release them (session.alive.release: resume candidates at once, their
 * locks released).  A process killed with SIGKILL cannot: its rows name a
 * process that is gone, so the liveness rule counts the sessions dropped
 * at once, and the next mutating or blocking call of any process on the
 * state (orch_call_method's reap) releases their locks.
 *
 * Waits.  A `wait` runs on a thread of its own, so a long wait never holds
 * up the requests after it; its reply is written when it is done (replies
 * carry their request's id, so they may come out of order).  Writes to
 * stdout are whole lines under one mutex.
 */
#ifndef ORCHFS_CLI_FRONT_H
#define ORCHFS_CLI_FRONT_H

#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "orchfs/core.h"
#include "lines.h"

/* The reply line (with its "\n") of a finished wait, made by the front end from orch_call's reply. */
typedef char *(*front_line_fn)(void *arg, json_t *id, int rc, const char *reply);

typedef struct front_wait front_wait;

typedef struct {
	orch_ctx ctx;             /* the main thread's; wait threads make their own on ctx.env */
	front_line_fn line;       /* set once before the first wait */
	void *line_arg;
	pthread_mutex_t mu;       /* guards waits and every write to stdout */
	front_wait *waits;        /* under mu: running waits (detached threads; each unlinks and frees itself) */
	int running;              /* under mu: how many; `idle` is signalled when it drops to 0 */
	pthread_cond_t idle;
	int64_t *held;            /* main thread only: the sessions this process holds alive */
	size_t nheld;
	int status;               /* under mu: 1 once writing stdout failed */
} front;

/* Set by SIGTERM / SIGINT: the main loop stops, running waits end. */
extern volatile sig_atomic_t front_signalled;

/* Open the state, take SIGTERM/SIGINT/SIGPIPE, hold `session` (> 0) alive. 0, or 1 (said on stderr). */
int front_open(front *f, const char *repo, const char *state, const char *host, int64_t session);

/*
 * The next line of stdin (its status in *ls: a line, or LINE_TOO_LONG), or
 * false when the loop must end: end of input, a signal, or a read error
 * (said on stderr, *status set to 1).
 */
bool front_next_line(line_reader *r, const char **text, size_t *len, line_status *ls, int *status);

/* After a call of `method` on the main thread: a session.open that succeeded holds its new session. */
void front_after_call(front *f, const char *method, int rc, const char *reply);

/* Write one whole line to stdout (under mu); 0, or -1 when the client is gone or stdout fails. */
int front_write(front *f, const char *line, size_t len);

/* Run a `wait` with `params` on its own thread; its reply (line fn) is written when done. */
void front_wait_start(front *f, json_t *id, json_t *params);

/* The client gave up request `id` (MCP notifications/cancelled): its wait ends without a reply. */
void front_wait_cancel(front *f, json_t *id);

/*
 * The end: release the held sessions, then let running waits finish
 * (ended at once when a signal came), then close.  Returns the exit status.
 */
int front_close(front *f, int status);

#endif
