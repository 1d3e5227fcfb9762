/*
 * A client of dqlite's wire protocol (the "dqlite wire protocol" reference),
 * written for Debian 12's libdqlite 1.11.1, which gives a C program a node but
 * no SQL API.
 *
 * The protocol, as used here: after connecting, the client sends one word
 * (8 bytes, little endian) with the protocol version, 1.  Then each request
 * gets one response, except a query, whose rows may come in several "rows"
 * messages that the server sends one after another.  A message is an 8-byte
 * header (body size in words: uint32; type: byte; schema revision: byte; two
 * unused bytes) and a body padded to a whole number of words.  Requests used:
 * LEADER 0, OPEN 3, PREPARE 4, EXEC 5, QUERY 6, FINALIZE 7, EXEC_SQL 8,
 * INTERRUPT 10, ADD 12, ASSIGN 13, CLUSTER 16.  Responses: FAILURE 0 (code,
 * message), SERVER 1 (id, address), SERVERS 3, DB 4, STMT 5 (db, id, number
 * of parameters), RESULT 6 (last insert id, rows affected), ROWS 7, EMPTY 8.
 *
 * What 1.11.1's server does, checked by tests/unit/test_dqlite.c ([u]) and
 * tests/fs/test_dqlite.py ([c]):
 *  - Any node answers LEADER with the leader's id and address, or id 0 and ""
 *    while there is none; a follower answers OPEN/PREPARE/EXEC/QUERY with
 *    failure SQLITE_IOERR_NOT_LEADER (10250).  A node that loses the
 *    leadership closes every connection's database: if it leads again, a
 *    connection left open meanwhile gets SQLITE_NOTFOUND "no database
 *    opened" for every request (taken as NOT_LEADER here) [c].  A request
 *    cut by a leader change fails with SQLITE_IOERR_LEADERSHIP_LOST (10506), or the
 *    connection just closes (SIGKILL): a write may or may not have committed
 *    [c: the writer's "ack … (committed before the leader change)"].
 *  - A connection opens one database.  Explicit transactions (BEGIN
 *    IMMEDIATE, SAVEPOINT, ROLLBACK TO, RELEASE) span requests on one
 *    connection [u].  While one connection holds the write lock, another's
 *    BEGIN IMMEDIATE fails at once with SQLITE_BUSY "database is locked" (no
 *    busy timeout on the server) [u]; this client retries that with
 *    jittered backoff up to busy_ms (ORCH_STORE_BUSY_MS by default).
 *  - Failures carry SQLite's extended codes and messages, e.g. 1555
 *    SQLITE_CONSTRAINT_PRIMARYKEY "UNIQUE constraint failed: u.k", 787
 *    FOREIGN KEY, syntax errors at PREPARE [u].
 *  - QUERY runs the statement without replication (1.11 does not check that
 *    it is read-only), so writes must go through EXEC, and EXEC discards
 *    rows: `INSERT … RETURNING` cannot work; such text is refused here.  A
 *    QUERY of a statement without result columns fails ("query error").
 *  - Rows come in batches of about one memory page; every ROWS message
 *    repeats the column count and names; a batch ends with the word
 *    0xeeee…ee (more follow unasked) or 0xffff…ff (done) [u: 100k rows].
 *    INTERRUPT stops the rest; the server answers EMPTY after any batches
 *    already sent [u].
 *  - Columns declared DATETIME come back as ISO-8601 text (type 10), BOOLEAN
 *    as type 11; this client gives them as TEXT and INTEGER [u].
 *  - PRAGMA user_version works: set through the leader, it is replicated
 *    (the new leader after a SIGKILL reads it) [u, c].  So schema versioning
 *    can stay on user_version with 1.11.
 *  - PRAGMA foreign_keys is ON for every new connection (dqlite turns it on)
 *    and can be turned off per connection [u].
 *  - Parameters: schema revision 0 of EXEC/QUERY carries at most 255.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "../dqlite.h"

enum {
	REQ_LEADER = 0, REQ_OPEN = 3, REQ_PREPARE = 4, REQ_EXEC = 5, REQ_QUERY = 6,
	REQ_FINALIZE = 7, REQ_EXEC_SQL = 8, REQ_INTERRUPT = 10, REQ_ADD = 12,
	REQ_ASSIGN = 13, REQ_CLUSTER = 16,
};
enum {
	RES_FAILURE = 0, RES_SERVER = 1, RES_SERVERS = 3, RES_DB = 4, RES_STMT = 5,
	RES_RESULT = 6, RES_ROWS = 7, RES_EMPTY = 8,
};
enum { T_INTEGER = 1, T_FLOAT = 2, T_TEXT = 3, T_BLOB = 4, T_NULL = 5, T_ISO8601 = 10, T_BOOLEAN = 11 };

#define ROWS_PART UINT64_C(0xeeeeeeeeeeeeeeee)
#define ROWS_DONE UINT64_C(0xffffffffffffffff)
#define MAX_PARAMS 255
#define CONNECT_MS 1000 /* for one TCP connect */
#define MAX_BODY (64u << 20) /* a larger message is a broken stream */

/* A growable byte buffer: requests are built and responses read into one. */
typedef struct buf {
	uint8_t *p;
	size_t len, cap;
} buf;

struct orch_dq {
	char **peers;        /* known members; grows with what CLUSTER reports */
	size_t npeers;
	char *database;
	int io_timeout_ms, connect_ms, busy_ms;
	int fd;              /* -1 when disconnected */
	char leader[128];    /* address fd is connected to */
	uint32_t db_id;
	uint64_t gen;        /* bumped on every new connection: statements re-prepare */
	bool in_txn;
	orch_dq_stmt *streaming; /* the statement whose rows are still coming on fd, or NULL */
	int64_t changes, last_rowid;
	int errcode;
	char errmsg[512];
	buf out, in;         /* request being sent, last response */
	uint8_t in_type;
	unsigned rand_state;
};

/* One bound parameter or one column value of the current row. */
typedef struct value {
	int type;            /* T_* */
	int64_t i;
	double d;
	const uint8_t *p;    /* text (NUL-terminated) or blob bytes */
	size_t n;
	uint8_t *own;        /* parameters own a copy of text/blob */
} value;

enum { ST_IDLE, ST_ROWS, ST_DONE, ST_ERROR };

struct orch_dq_stmt {
	orch_dq *c;
	char *sql;
	bool yields_rows;
	int txn_effect;      /* +1 BEGIN, -1 COMMIT/END/ROLLBACK, 0 none */
	uint64_t gen;        /* connection generation id was prepared on (0: never) */
	uint32_t id;
	int nparams;
	value params[MAX_PARAMS];
	int state;
	/* rows: the current batch and the position of the next row in it */
	buf rows;
	size_t pos;
	/* batches read ahead so that another request could use the connection */
	buf *pending;
	size_t npending, pending_head;
	int pending_rc;      /* the failure that ended them (0: none) */
	char pending_msg[256];
	int ncols;
	char **names;
	int names_cap;
	value *row;
};

/* ---- errors ---- */

static int fail(orch_dq *c, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail(orch_dq *c, int code, const char *fmt, ...)
{
	char msg[sizeof c->errmsg]; /* the arguments may be c->errmsg itself */
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	memcpy(c->errmsg, msg, sizeof msg);
	c->errcode = code;
	return code;
}

bool orch_dq_transient(int rc)
{
	return rc == ORCH_DQ_NOT_LEADER || rc == ORCH_DQ_LEADERSHIP_LOST || rc == SQLITE_IOERR;
}

int orch_dq_errcode(orch_dq *c) { return c->errcode; }
const char *orch_dq_errmsg(orch_dq *c) { return c->errmsg; }
int64_t orch_dq_changes(orch_dq *c) { return c->changes; }
int64_t orch_dq_last_insert_rowid(orch_dq *c) { return c->last_rowid; }
bool orch_dq_in_txn(orch_dq *c) { return c->in_txn; }
const char *orch_dq_leader_address(orch_dq *c) { return c->fd >= 0 ? c->leader : ""; }

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Sleep a random time in [d/2, d] ms: clients that collided should not collide again. */
static void jitter_sleep(orch_dq *c, int d)
{
	int ms = d / 2 + (int)(rand_r(&c->rand_state) % (unsigned)(d / 2 + 1));
	struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000 };
	nanosleep(&ts, NULL);
}

/* ---- encoding ---- */

static int buf_reserve(buf *b, size_t more)
{
	if (b->len + more <= b->cap)
		return 0;
	size_t cap = b->cap ? b->cap : 4096;
	while (cap < b->len + more)
		cap *= 2;
	uint8_t *p = realloc(b->p, cap);
	if (!p)
		return -1;
	b->p = p;
	b->cap = cap;
	return 0;
}

static size_t pad8(size_t n) { return (n + 7) & ~(size_t)7; }

static void put_u64(buf *b, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		b->p[b->len++] = (uint8_t)(v >> (8 * i));
}

static void put_u32(buf *b, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		b->p[b->len++] = (uint8_t)(v >> (8 * i));
}

static void put_bytes_padded(buf *b, const void *p, size_t n)
{
	memcpy(b->p + b->len, p, n);
	memset(b->p + b->len + n, 0, pad8(n) - n);
	b->len += pad8(n);
}

static void put_text(buf *b, const char *s)
{
	size_t n = strlen(s) + 1;
	memcpy(b->p + b->len, s, n);
	memset(b->p + b->len + n, 0, pad8(n) - n);
	b->len += pad8(n);
}

static uint64_t get_u64(const uint8_t *p)
{
	uint64_t v = 0;
	for (int i = 7; i >= 0; i--)
		v = (v << 8) | p[i];
	return v;
}

static uint32_t get_u32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* A reader over a response body: every get checks the bounds. */
typedef struct rd {
	const uint8_t *p;
	size_t pos, len;
	bool bad;
} rd;

static uint64_t rd_u64(rd *r)
{
	if (r->bad || r->len - r->pos < 8) {
		r->bad = true;
		return 0;
	}
	uint64_t v = get_u64(r->p + r->pos);
	r->pos += 8;
	return v;
}

static const char *rd_text(rd *r)
{
	if (r->bad || r->pos >= r->len) {
		r->bad = true;
		return "";
	}
	const uint8_t *s = r->p + r->pos;
	const uint8_t *z = memchr(s, 0, r->len - r->pos);
	if (!z) {
		r->bad = true;
		return "";
	}
	size_t n = pad8((size_t)(z - s) + 1);
	if (n > r->len - r->pos) {
		r->bad = true;
		return "";
	}
	r->pos += n;
	return (const char *)s;
}

/* ---- connection ---- */

static void disconnect(orch_dq *c)
{
	if (c->streaming) {
		/* its reader finds out when it gets to the rows that will not come */
		c->streaming->pending_rc = ORCH_DQ_LEADERSHIP_LOST;
		snprintf(c->streaming->pending_msg, sizeof c->streaming->pending_msg,
			 "connection to the leader lost while reading rows");
	}
	if (c->fd >= 0)
		close(c->fd);
	c->fd = -1;
	c->streaming = NULL;
	c->leader[0] = 0;
}

/* Connect to "HOST:PORT" (or "[V6]:PORT") within timeout_ms; returns the fd or -1. */
static int tcp_connect(const char *address, int timeout_ms, int io_timeout_ms)
{
	char host[128];
	const char *colon = strrchr(address, ':');
	if (!colon || (size_t)(colon - address) >= sizeof host)
		return -1;
	const char *h = address;
	size_t hn = (size_t)(colon - address);
	if (hn >= 2 && h[0] == '[' && h[hn - 1] == ']') {
		h++;
		hn -= 2;
	}
	memcpy(host, h, hn);
	host[hn] = 0;
	struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM }, *ai;
	if (getaddrinfo(host, colon + 1, &hints, &ai) != 0)
		return -1;
	int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0) {
		freeaddrinfo(ai);
		return -1;
	}
	int rc = connect(fd, ai->ai_addr, ai->ai_addrlen);
	freeaddrinfo(ai);
	if (rc < 0 && errno == EINPROGRESS) {
		struct pollfd pfd = { fd, POLLOUT, 0 };
		int err = 0;
		socklen_t len = sizeof err;
		if (poll(&pfd, 1, timeout_ms) == 1 && getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0 && err == 0)
			rc = 0;
	}
	if (rc < 0) {
		close(fd);
		return -1;
	}
	fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
	int one = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	struct timeval tv = { io_timeout_ms / 1000, (io_timeout_ms % 1000) * 1000 };
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
	return fd;
}

static int write_all(int fd, const uint8_t *p, size_t n)
{
	while (n > 0) {
		ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return -1;
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

static int read_all(int fd, uint8_t *p, size_t n)
{
	while (n > 0) {
		ssize_t r = recv(fd, p, n, 0);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return -1;
		p += r;
		n -= (size_t)r;
	}
	return 0;
}

/* Start a request of `type` in c->out (room for the header); body follows. */
static int req_begin(orch_dq *c, size_t body_max)
{
	c->out.len = 0;
	if (buf_reserve(&c->out, 8 + pad8(body_max)))
		return fail(c, SQLITE_NOMEM, "out of memory");
	c->out.len = 8;
	return 0;
}

/* Send the request built in c->out; -1 on a broken connection. */
static int req_send(orch_dq *c, uint8_t type, uint8_t schema)
{
	size_t body = c->out.len - 8;
	if (body % 8) {
		memset(c->out.p + c->out.len, 0, 8 - body % 8);
		c->out.len += 8 - body % 8;
		body = c->out.len - 8;
	}
	uint8_t *h = c->out.p;
	uint32_t words = (uint32_t)(body / 8);
	h[0] = (uint8_t)words, h[1] = (uint8_t)(words >> 8), h[2] = (uint8_t)(words >> 16), h[3] = (uint8_t)(words >> 24);
	h[4] = type, h[5] = schema, h[6] = h[7] = 0;
	return write_all(c->fd, c->out.p, c->out.len);
}

/* Read one message's body into `into` and its type into *type; -1 on a broken connection. */
static int recv_msg(orch_dq *c, buf *into, uint8_t *type)
{
	uint8_t h[8];
	if (read_all(c->fd, h, 8))
		return -1;
	size_t body = (size_t)get_u32(h) * 8;
	if (body > MAX_BODY)
		return -1;
	into->len = 0;
	if (buf_reserve(into, body + 8))
		return -1;
	if (read_all(c->fd, into->p, body))
		return -1;
	into->len = body;
	*type = h[4];
	return 0;
}

static int res_recv(orch_dq *c)
{
	return recv_msg(c, &c->in, &c->in_type);
}

/* Whether a ROWS body is the last batch of its query. */
static bool rows_last(const buf *b)
{
	return b->len < 8 || get_u64(b->p + b->len - 8) != UINT64_C(0xeeeeeeeeeeeeeeee);
}

/*
 * Read the rest of the streaming statement's batches into its queue, so that
 * the connection is free for another request (SQLite lets a caller run
 * statements while another's rows are half read; the protocol carries one
 * request at a time).  What ends the stream, a failure or a lost connection,
 * is kept for when the statement reaches it.
 */
static void spill(orch_dq *c)
{
	orch_dq_stmt *s = c->streaming;
	while (c->streaming == s && s) {
		if (s->npending % 8 == 0) {
			buf *p = realloc(s->pending, (s->npending + 8) * sizeof *p);
			if (!p) {
				disconnect(c);
				s->pending_rc = SQLITE_NOMEM;
				snprintf(s->pending_msg, sizeof s->pending_msg, "out of memory");
				return;
			}
			s->pending = p;
		}
		buf *b = &s->pending[s->npending];
		memset(b, 0, sizeof *b);
		uint8_t type;
		if (recv_msg(c, b, &type)) {
			free(b->p);
			disconnect(c);
			s->pending_rc = ORCH_DQ_LEADERSHIP_LOST;
			snprintf(s->pending_msg, sizeof s->pending_msg, "connection to the leader lost while reading rows");
			return;
		}
		if (type == RES_ROWS) {
			s->npending++;
			if (rows_last(b))
				c->streaming = NULL;
			continue;
		}
		if (type == RES_FAILURE && b->len >= 8) {
			s->pending_rc = (int)get_u64(b->p);
			const uint8_t *z = memchr(b->p + 8, 0, b->len - 8);
			snprintf(s->pending_msg, sizeof s->pending_msg, "%s", z ? (const char *)b->p + 8 : "");
			c->streaming = NULL;
		} else {
			disconnect(c);
			s->pending_rc = SQLITE_PROTOCOL;
			snprintf(s->pending_msg, sizeof s->pending_msg, "unexpected response type %d in rows", type);
		}
		free(b->p);
	}
}

/* The failure in c->in as this handle's error; returns its code. */
static int res_failure(orch_dq *c)
{
	rd r = { c->in.p, 0, c->in.len, false };
	uint64_t code = rd_u64(&r);
	const char *msg = rd_text(&r);
	if (r.bad)
		return fail(c, SQLITE_PROTOCOL, "malformed failure response");
	if (code == 0)
		code = SQLITE_ERROR;
	return fail(c, (int)code, "%s", msg);
}

/*
 * Send c->out and read the response, which must be of `want` type; a failure
 * response becomes the handle's error.  A broken connection is closed and
 * reported as ORCH_DQ_LEADERSHIP_LOST with *sent telling whether the
 * request may have reached the server.
 */
static int roundtrip(orch_dq *c, uint8_t type, uint8_t want, bool *sent)
{
	if (sent)
		*sent = false;
	if (c->streaming)
		spill(c);
	if (c->fd < 0)
		return fail(c, ORCH_DQ_LEADERSHIP_LOST, "connection to the leader lost while reading rows");
	if (req_send(c, type, 0)) {
		disconnect(c);
		/* a partial send may still have reached the server whole */
		if (sent)
			*sent = true;
		return fail(c, ORCH_DQ_LEADERSHIP_LOST, "connection to the leader lost while sending");
	}
	if (sent)
		*sent = true;
	if (res_recv(c)) {
		disconnect(c);
		return fail(c, ORCH_DQ_LEADERSHIP_LOST, "connection to the leader lost (no reply)");
	}
	if (c->in_type == RES_FAILURE) {
		int rc = res_failure(c);
		/*
		 * A node that loses the leadership closes the database of every
		 * connection to it; if it leads again, a request on a connection
		 * that stayed open meanwhile fails before it runs with this, for
		 * good: as a follower's refusal, the connection is dropped and
		 * the request may run on a new one.
		 */
		if (rc == SQLITE_NOTFOUND && strcmp(c->errmsg, "no database opened") == 0)
			rc = fail(c, ORCH_DQ_NOT_LEADER, "the leader lost and regained the leadership: no database opened");
		if (rc == ORCH_DQ_NOT_LEADER || rc == ORCH_DQ_LEADERSHIP_LOST)
			disconnect(c);
		return rc;
	}
	size_t min = want == RES_STMT || want == RES_RESULT || want == RES_SERVER ? 16 : 8;
	if (c->in_type != want || c->in.len < min) {
		disconnect(c);
		return fail(c, SQLITE_PROTOCOL, "unexpected response type %d of %zu bytes (wanted %d)", c->in_type,
			    c->in.len, want);
	}
	return SQLITE_OK;
}

/* Connect to `address`, send the protocol version and ask it for the leader. */
static int ask_leader(orch_dq *c, const char *address, int timeout_ms, char *leader, size_t leader_len)
{
	c->fd = tcp_connect(address, timeout_ms, c->io_timeout_ms);
	if (c->fd < 0)
		return fail(c, SQLITE_CANTOPEN, "cannot connect to %s", address);
	uint8_t version[8] = { 1 };
	if (write_all(c->fd, version, 8)) {
		disconnect(c);
		return fail(c, SQLITE_CANTOPEN, "cannot send the handshake to %s", address);
	}
	snprintf(c->leader, sizeof c->leader, "%s", address);
	req_begin(c, 8);
	put_u64(&c->out, 0);
	int rc = roundtrip(c, REQ_LEADER, RES_SERVER, NULL);
	if (rc) {
		disconnect(c);
		return rc;
	}
	rd r = { c->in.p, 0, c->in.len, false };
	rd_u64(&r);
	const char *a = rd_text(&r);
	if (r.bad) {
		disconnect(c);
		return fail(c, SQLITE_PROTOCOL, "malformed leader response from %s", address);
	}
	snprintf(leader, leader_len, "%s", a);
	return SQLITE_OK;
}

static bool has_peer(orch_dq *c, const char *a)
{
	for (size_t i = 0; i < c->npeers; i++)
		if (strcmp(c->peers[i], a) == 0)
			return true;
	return false;
}

/* Remember a member's address; -1 when out of memory. */
static int add_peer(orch_dq *c, const char *a)
{
	if (!*a || has_peer(c, a))
		return 0;
	char **p = realloc(c->peers, (c->npeers + 1) * sizeof *p);
	if (!p)
		return -1;
	c->peers = p;
	if (!(c->peers[c->npeers] = strdup(a)))
		return -1;
	c->npeers++;
	return 0;
}

static int cluster_request(orch_dq *c, orch_dq_server **out, size_t *n);

/*
 * Find the leader (asking every known peer in turn, until connect_ms has
 * passed), connect to it and open the database.  Learns the members'
 * addresses from the leader so a later failover can find the new one.
 */
static int connect_leader(orch_dq *c)
{
	int64_t deadline = now_ms() + c->connect_ms;
	int backoff = 20;
	char leader[128];
	disconnect(c);
	for (;;) {
		for (size_t i = 0; i < c->npeers; i++) {
			/*
			 * One address gets at most a second to accept: a node cut off (or
			 * a stale leader's address) must not use up the whole search.
			 */
			int left = (int)(deadline - now_ms());
			if (left > CONNECT_MS)
				left = CONNECT_MS;
			if (left < 50)
				left = 50;
			if (ask_leader(c, c->peers[i], left, leader, sizeof leader) != SQLITE_OK)
				continue;
			if (!*leader) {
				disconnect(c);
				continue;
			}
			if (strcmp(leader, c->peers[i]) != 0) {
				/* Ask the named leader itself: it may have lost the leadership since. */
				char again[128];
				disconnect(c);
				add_peer(c, leader);
				if (ask_leader(c, leader, left, again, sizeof again) != SQLITE_OK)
					continue;
				if (strcmp(again, leader) != 0) {
					disconnect(c);
					continue;
				}
			}
			req_begin(c, 8 + pad8(strlen(c->database) + 1) + 16);
			put_text(&c->out, c->database);
			put_u64(&c->out, 0);
			put_text(&c->out, "");
			if (roundtrip(c, REQ_OPEN, RES_DB, NULL) != SQLITE_OK) {
				disconnect(c);
				continue;
			}
			c->db_id = get_u32(c->in.p);
			c->gen++;
			orch_dq_server *servers;
			size_t ns;
			if (cluster_request(c, &servers, &ns) == SQLITE_OK) {
				for (size_t k = 0; k < ns; k++)
					add_peer(c, servers[k].address);
				free(servers);
			}
			if (c->fd >= 0) {
				c->errcode = 0;
				c->errmsg[0] = 0;
				return SQLITE_OK;
			}
		}
		if (now_ms() >= deadline)
			break;
		jitter_sleep(c, backoff);
		if (backoff < 500)
			backoff *= 2;
	}
	char saved[512];
	snprintf(saved, sizeof saved, "%s", c->errmsg);
	return fail(c, ORCH_DQ_NOT_LEADER, "no leader found among %zu peers within %d ms (last: %s)",
		    c->npeers, c->connect_ms, saved[0] ? saved : "no node knows a leader");
}

static int ensure_connected(orch_dq *c)
{
	return c->fd >= 0 ? SQLITE_OK : connect_leader(c);
}

int orch_dq_open(orch_dq **out, const orch_dq_opts *opts)
{
	orch_dq *c = calloc(1, sizeof *c);
	*out = c;
	if (!c)
		return SQLITE_NOMEM;
	c->fd = -1;
	c->io_timeout_ms = opts->io_timeout_ms > 0 ? opts->io_timeout_ms : 5000;
	c->connect_ms = opts->connect_ms > 0 ? opts->connect_ms : 10000;
	c->busy_ms = opts->busy_ms > 0 ? opts->busy_ms : ORCH_STORE_BUSY_MS;
	c->database = strdup(opts->database ? opts->database : "orchfs.db");
	c->rand_state = (unsigned)now_ms() ^ (unsigned)getpid() ^ (unsigned)(uintptr_t)c;
	bool oom = !c->database;
	for (size_t i = 0; i < opts->npeers; i++)
		oom |= add_peer(c, opts->peers[i]) != 0;
	if (oom)
		return fail(c, SQLITE_NOMEM, "out of memory");
	if (c->npeers == 0)
		return fail(c, SQLITE_MISUSE, "no peers given");
	return connect_leader(c);
}

void orch_dq_close(orch_dq *c)
{
	if (!c)
		return;
	disconnect(c);
	for (size_t i = 0; i < c->npeers; i++)
		free(c->peers[i]);
	free(c->peers);
	free(c->database);
	free(c->out.p);
	free(c->in.p);
	free(c);
}

/* ---- the text of a statement ---- */

/* Skip blanks and comments. */
static const char *skip_space(const char *p)
{
	for (;;) {
		while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r' || *p == '\f')
			p++;
		if (p[0] == '-' && p[1] == '-') {
			while (*p && *p != '\n')
				p++;
		} else if (p[0] == '/' && p[1] == '*') {
			const char *e = strstr(p + 2, "*/");
			p = e ? e + 2 : p + strlen(p);
		} else {
			return p;
		}
	}
}

static bool is_word_char(char ch)
{
	return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '_';
}

static bool word_is(const char *p, size_t n, const char *w)
{
	return strlen(w) == n && strncasecmp(p, w, n) == 0;
}

/*
 * Walk the statement's words at parenthesis depth 0 (outside strings and
 * quoted names), calling `fn` on each until it returns true.
 */
static void top_words(const char *p, bool (*fn)(const char *w, size_t n, void *arg), void *arg)
{
	int depth = 0;
	for (p = skip_space(p); *p; p = skip_space(p)) {
		if (*p == '\'' || *p == '"' || *p == '`' || *p == '[') {
			char end = *p == '[' ? ']' : *p;
			for (p++; *p; p++) {
				if (*p == end) {
					if (end != ']' && p[1] == end) {
						p++;
						continue;
					}
					p++;
					break;
				}
			}
		} else if (*p == '(') {
			depth++, p++;
		} else if (*p == ')') {
			depth--, p++;
		} else if (is_word_char(*p)) {
			const char *s = p;
			while (is_word_char(*p))
				p++;
			if (depth == 0 && fn(s, (size_t)(p - s), arg))
				return;
		} else {
			p++;
		}
	}
}

typedef struct classify {
	int n;           /* words seen */
	bool first_with; /* statement starts WITH: the main verb decides */
	bool rows, returning, write_verb, pragma_set;
	int txn;
} classify;

static bool classify_word(const char *w, size_t n, void *arg)
{
	classify *k = arg;
	bool first = k->n++ == 0;
	if (first) {
		if (word_is(w, n, "SELECT") || word_is(w, n, "VALUES") || word_is(w, n, "EXPLAIN"))
			k->rows = true;
		else if (word_is(w, n, "PRAGMA"))
			k->rows = true; /* unless it sets a value: see prepare */
		else if (word_is(w, n, "WITH"))
			k->first_with = true;
		else if (word_is(w, n, "BEGIN"))
			k->txn = 1;
		else if (word_is(w, n, "COMMIT") || word_is(w, n, "END") || word_is(w, n, "ROLLBACK"))
			k->txn = -1;
		return false;
	}
	if (k->txn < 0 && word_is(w, n, "TO"))
		k->txn = 0; /* ROLLBACK TO a savepoint: the transaction goes on */
	if (k->first_with && !k->rows && !k->write_verb) {
		if (word_is(w, n, "SELECT") || word_is(w, n, "VALUES"))
			k->rows = true;
		else if (word_is(w, n, "INSERT") || word_is(w, n, "UPDATE") || word_is(w, n, "DELETE") ||
			 word_is(w, n, "REPLACE"))
			k->write_verb = true;
	}
	if (word_is(w, n, "RETURNING"))
		k->returning = true;
	return false;
}

static classify classify_sql(const char *sql)
{
	classify k = { 0 };
	top_words(sql, classify_word, &k);
	if (k.rows) {
		const char *p = skip_space(sql);
		if (strncasecmp(p, "PRAGMA", 6) == 0 && strchr(p, '='))
			k.rows = false, k.pragma_set = true;
	}
	return k;
}

/* ---- statements ---- */

static void value_clear(value *v)
{
	free(v->own);
	memset(v, 0, sizeof *v);
	v->type = T_NULL;
}

int orch_dq_prepare(orch_dq *c, const char *sql, orch_dq_stmt **out)
{
	*out = NULL;
	classify k = classify_sql(sql);
	if (k.returning && !k.rows)
		return fail(c, SQLITE_ERROR, "RETURNING is not supported by dqlite 1.11 (a write cannot return rows)");
	orch_dq_stmt *s = calloc(1, sizeof *s);
	if (!s || !(s->sql = strdup(sql))) {
		free(s);
		return fail(c, SQLITE_NOMEM, "out of memory");
	}
	s->c = c;
	s->yields_rows = k.rows;
	s->txn_effect = k.txn;
	for (int i = 0; i < MAX_PARAMS; i++)
		s->params[i].type = T_NULL;
	/* Prepare now, so a syntax error shows here as it would with SQLite. */
	int rc = SQLITE_OK;
	for (int attempt = 0; attempt < 2; attempt++) {
		rc = ensure_connected(c);
		if (rc)
			break;
		req_begin(c, 8 + strlen(sql) + 1);
		put_u64(&c->out, c->db_id);
		put_text(&c->out, sql);
		rc = roundtrip(c, REQ_PREPARE, RES_STMT, NULL);
		if (rc == SQLITE_OK) {
			s->id = get_u32(c->in.p + 4);
			uint64_t np = get_u64(c->in.p + 8);
			s->nparams = (int)np;
			s->gen = c->gen;
			break;
		}
		/* Preparing changes nothing: retry once on a new leader unless a transaction was cut. */
		if (!orch_dq_transient(rc) || c->in_txn)
			break;
	}
	if (rc == SQLITE_OK && s->nparams > MAX_PARAMS)
		rc = fail(c, SQLITE_RANGE, "%d parameters: dqlite's protocol carries at most %d", s->nparams, MAX_PARAMS);
	if (rc != SQLITE_OK) {
		if (c->fd < 0 && c->in_txn) {
			c->in_txn = false;
			rc = fail(c, ORCH_DQ_LEADERSHIP_LOST, "transaction lost with the leader: %s", c->errmsg);
		}
		orch_dq_finalize(s);
		return rc;
	}
	*out = s;
	return SQLITE_OK;
}

/* Drop the rest of the statement's rows: those read ahead, and those the server is still sending. */
static void drain_rows(orch_dq_stmt *s)
{
	orch_dq *c = s->c;
	for (size_t i = s->pending_head; i < s->npending; i++) /* those before moved into s->rows */
		free(s->pending[i].p);
	s->npending = s->pending_head = 0;
	s->pending_rc = 0;
	if (c->streaming != s)
		return;
	c->streaming = NULL;
	if (c->fd < 0)
		return;
	req_begin(c, 8);
	put_u64(&c->out, c->db_id);
	if (req_send(c, REQ_INTERRUPT, 0)) {
		disconnect(c);
		return;
	}
	/* Batches already on their way come first; then the interrupt's EMPTY. */
	for (;;) {
		if (res_recv(c)) {
			disconnect(c);
			return;
		}
		if (c->in_type == RES_EMPTY || c->in_type == RES_FAILURE)
			break;
		if (c->in_type != RES_ROWS) {
			disconnect(c);
			return;
		}
	}
}

static void free_names(orch_dq_stmt *s)
{
	for (int i = 0; i < s->ncols; i++)
		free(s->names[i]);
	s->ncols = 0;
}

int orch_dq_reset(orch_dq_stmt *s)
{
	drain_rows(s);
	s->state = ST_IDLE;
	return SQLITE_OK;
}

void orch_dq_finalize(orch_dq_stmt *s)
{
	if (!s)
		return;
	orch_dq *c = s->c;
	orch_dq_reset(s);
	if (s->gen && s->gen == c->gen && c->fd >= 0) {
		req_begin(c, 8);
		put_u32(&c->out, c->db_id);
		put_u32(&c->out, s->id);
		roundtrip(c, REQ_FINALIZE, RES_EMPTY, NULL);
	}
	for (int i = 0; i < MAX_PARAMS; i++)
		free(s->params[i].own);
	free_names(s);
	free(s->names);
	free(s->row);
	free(s->rows.p);
	free(s->pending);
	free(s->sql);
	free(s);
}

int orch_dq_bind_parameter_count(orch_dq_stmt *s) { return s->nparams; }

static value *param(orch_dq_stmt *s, int i)
{
	if (i < 1 || i > s->nparams) {
		fail(s->c, SQLITE_RANGE, "parameter %d out of range (1..%d)", i, s->nparams);
		return NULL;
	}
	value_clear(&s->params[i - 1]);
	return &s->params[i - 1];
}

int orch_dq_bind_null(orch_dq_stmt *s, int i)
{
	return param(s, i) ? SQLITE_OK : SQLITE_RANGE;
}

int orch_dq_bind_int64(orch_dq_stmt *s, int i, int64_t v)
{
	value *p = param(s, i);
	if (!p)
		return SQLITE_RANGE;
	p->type = T_INTEGER, p->i = v;
	return SQLITE_OK;
}

int orch_dq_bind_double(orch_dq_stmt *s, int i, double v)
{
	value *p = param(s, i);
	if (!p)
		return SQLITE_RANGE;
	p->type = T_FLOAT, p->d = v;
	return SQLITE_OK;
}

static int bind_bytes(orch_dq_stmt *s, int i, int type, const void *v, size_t n)
{
	value *p = param(s, i);
	if (!p)
		return SQLITE_RANGE;
	p->own = malloc(n + 1);
	if (!p->own)
		return fail(s->c, SQLITE_NOMEM, "out of memory");
	if (n)
		memcpy(p->own, v, n);
	p->own[n] = 0;
	p->type = type, p->p = p->own, p->n = n;
	return SQLITE_OK;
}

int orch_dq_bind_text(orch_dq_stmt *s, int i, const char *v, int n)
{
	if (!v)
		return orch_dq_bind_null(s, i);
	size_t len = n < 0 ? strlen(v) : (size_t)n;
	/* The wire's text is NUL-terminated: text with a NUL inside would be cut. */
	if (memchr(v, 0, len))
		return fail(s->c, SQLITE_MISMATCH, "text parameter %d contains a NUL byte", i);
	return bind_bytes(s, i, T_TEXT, v, len);
}

int orch_dq_bind_blob(orch_dq_stmt *s, int i, const void *v, int n)
{
	if (!v)
		return orch_dq_bind_null(s, i);
	return bind_bytes(s, i, T_BLOB, v, n < 0 ? 0 : (size_t)n);
}

int orch_dq_clear_bindings(orch_dq_stmt *s)
{
	for (int i = 0; i < MAX_PARAMS; i++)
		value_clear(&s->params[i]);
	return SQLITE_OK;
}

/* Append the params-tuple (schema 0) of the statement's bindings to c->out. */
static int put_params(orch_dq_stmt *s)
{
	orch_dq *c = s->c;
	int n = s->nparams;
	size_t size = pad8(1 + (size_t)n);
	for (int i = 0; i < n; i++) {
		value *v = &s->params[i];
		size += v->type == T_TEXT ? pad8(v->n + 1) : v->type == T_BLOB ? 8 + pad8(v->n) : 8;
	}
	if (buf_reserve(&c->out, size + 8))
		return fail(c, SQLITE_NOMEM, "out of memory");
	uint8_t *hdr = c->out.p + c->out.len;
	memset(hdr, 0, pad8(1 + (size_t)n));
	hdr[0] = (uint8_t)n;
	for (int i = 0; i < n; i++)
		hdr[1 + i] = (uint8_t)s->params[i].type;
	c->out.len += pad8(1 + (size_t)n);
	for (int i = 0; i < n; i++) {
		value *v = &s->params[i];
		switch (v->type) {
		case T_INTEGER: put_u64(&c->out, (uint64_t)v->i); break;
		case T_FLOAT: {
			uint64_t u;
			memcpy(&u, &v->d, 8);
			put_u64(&c->out, u);
			break;
		}
		case T_TEXT: put_bytes_padded(&c->out, v->p, v->n + 1); break;
		case T_BLOB:
			put_u64(&c->out, v->n);
			put_bytes_padded(&c->out, v->p, v->n);
			break;
		default: put_u64(&c->out, 0); break;
		}
	}
	return SQLITE_OK;
}

/*
 * Parse the column header of the ROWS message in s->rows; positions s->pos
 * at the first row.
 */
static int rows_header(orch_dq_stmt *s)
{
	orch_dq *c = s->c;
	rd r = { s->rows.p, 0, s->rows.len, false };
	uint64_t n = rd_u64(&r);
	if (r.bad || n > 32767)
		return fail(c, SQLITE_PROTOCOL, "malformed rows response");
	free_names(s);
	if ((int)n > s->names_cap) {
		char **names = realloc(s->names, n * sizeof *names);
		value *row = realloc(s->row, n * sizeof *row);
		if (names)
			s->names = names;
		if (row)
			s->row = row;
		if (!names || !row)
			return fail(c, SQLITE_NOMEM, "out of memory");
		s->names_cap = (int)n;
	}
	for (uint64_t i = 0; i < n; i++) {
		s->names[i] = strdup(rd_text(&r));
		s->ncols = (int)i + 1;
		if (!s->names[i]) {
			s->ncols--;
			return fail(c, SQLITE_NOMEM, "out of memory");
		}
	}
	if (r.bad)
		return fail(c, SQLITE_PROTOCOL, "malformed rows response");
	s->pos = r.pos;
	return SQLITE_OK;
}

/*
 * Decode the next row at s->pos into s->row: SQLITE_ROW, SQLITE_DONE at the
 * end marker, or reads the next batch at a "more" marker.
 */
static int next_row(orch_dq_stmt *s)
{
	orch_dq *c = s->c;
	for (;;) {
		if (s->rows.len - s->pos < 8)
			return fail(c, SQLITE_PROTOCOL, "rows response without end marker");
		uint64_t w = get_u64(s->rows.p + s->pos);
		if (w == ROWS_DONE) {
			if (c->streaming == s)
				c->streaming = NULL;
			return SQLITE_DONE;
		}
		if (w != ROWS_PART)
			break;
		if (s->pending_head < s->npending) {
			/* a batch read ahead */
			free(s->rows.p);
			s->rows = s->pending[s->pending_head++];
		} else if (c->streaming == s) {
			uint8_t type;
			if (recv_msg(c, &s->rows, &type)) {
				disconnect(c);
				return fail(c, ORCH_DQ_LEADERSHIP_LOST, "connection to the leader lost while reading rows");
			}
			if (type == RES_FAILURE) {
				c->streaming = NULL;
				buf t = c->in;
				c->in = s->rows, s->rows = t;
				return res_failure(c);
			}
			if (type != RES_ROWS) {
				disconnect(c);
				return fail(c, SQLITE_PROTOCOL, "unexpected response type %d in rows", type);
			}
			if (rows_last(&s->rows))
				c->streaming = NULL;
		} else if (s->pending_rc) {
			return fail(c, s->pending_rc, "%s", s->pending_msg);
		} else {
			return fail(c, SQLITE_PROTOCOL, "rows stopped without an end");
		}
		int rc = rows_header(s);
		if (rc)
			return rc;
	}
	int n = s->ncols;
	size_t hdr = pad8(((size_t)n + 1) / 2);
	rd r = { s->rows.p, s->pos + hdr, s->rows.len, s->rows.len - s->pos < hdr };
	for (int i = 0; i < n && !r.bad; i++) {
		int type = (s->rows.p[s->pos + (size_t)i / 2] >> (i % 2 ? 4 : 0)) & 0x0f;
		value *v = &s->row[i];
		memset(v, 0, sizeof *v);
		switch (type) {
		case T_INTEGER:
		case T_BOOLEAN:
			v->type = T_INTEGER, v->i = (int64_t)rd_u64(&r);
			break;
		case T_FLOAT: {
			uint64_t u = rd_u64(&r);
			v->type = T_FLOAT;
			memcpy(&v->d, &u, 8);
			break;
		}
		case T_TEXT:
		case T_ISO8601:
			v->type = T_TEXT;
			v->p = (const uint8_t *)rd_text(&r);
			v->n = strlen((const char *)v->p);
			break;
		case T_BLOB: {
			uint64_t len = rd_u64(&r);
			if (r.bad || len > r.len - r.pos || pad8(len) > r.len - r.pos) {
				r.bad = true;
				break;
			}
			v->type = T_BLOB, v->p = r.p + r.pos, v->n = len;
			r.pos += pad8(len);
			break;
		}
		case T_NULL:
			v->type = T_NULL;
			rd_u64(&r);
			break;
		default:
			r.bad = true;
		}
	}
	if (r.bad) {
		disconnect(c);
		return fail(c, SQLITE_PROTOCOL, "malformed row");
	}
	s->pos = r.pos;
	return SQLITE_ROW;
}

/* Bring the statement onto the current connection (re-preparing after a reconnect). */
static int stmt_ready(orch_dq_stmt *s)
{
	orch_dq *c = s->c;
	int rc = ensure_connected(c);
	if (rc)
		return rc;
	if (s->gen == c->gen)
		return SQLITE_OK;
	req_begin(c, 8 + strlen(s->sql) + 1);
	put_u64(&c->out, c->db_id);
	put_text(&c->out, s->sql);
	rc = roundtrip(c, REQ_PREPARE, RES_STMT, NULL);
	if (rc)
		return rc;
	s->id = get_u32(c->in.p + 4);
	s->gen = c->gen;
	return SQLITE_OK;
}

/*
 * One attempt at running the statement: EXEC for writes, QUERY (first batch)
 * for reads.  *sent says whether the request may have reached the leader.
 */
static int run_once(orch_dq_stmt *s, bool *sent)
{
	orch_dq *c = s->c;
	*sent = false;
	int rc = stmt_ready(s);
	if (rc)
		return rc;
	req_begin(c, 8);
	put_u32(&c->out, c->db_id);
	put_u32(&c->out, s->id);
	rc = put_params(s);
	if (rc)
		return rc;
	if (!s->yields_rows) {
		rc = roundtrip(c, REQ_EXEC, RES_RESULT, sent);
		if (rc)
			return rc;
		c->last_rowid = (int64_t)get_u64(c->in.p);
		c->changes = (int64_t)get_u64(c->in.p + 8);
		return SQLITE_DONE;
	}
	rc = roundtrip(c, REQ_QUERY, RES_ROWS, sent);
	if (rc)
		return rc;
	buf t = s->rows;
	s->rows = c->in, c->in = t;
	if (!rows_last(&s->rows))
		c->streaming = s;
	rc = rows_header(s);
	if (rc) {
		drain_rows(s);
		return rc;
	}
	return SQLITE_ROW; /* the caller reads the first row */
}

/*
 * The retry policy shared by statements and orch_dq_exec: run `once` until it
 * succeeds or fails for good.  SQLITE_BUSY outside a transaction (another
 * connection holds the write lock; nothing ran) is retried with jittered
 * backoff up to busy_ms.  A lost leader is retried on the new one when the
 * request did not reach the old one, or was a read; a write whose outcome is
 * unknown, or any request inside a transaction, fails with
 * ORCH_DQ_LEADERSHIP_LOST (the transaction is gone).
 */
static int with_retries(orch_dq *c, bool is_read, int (*once)(void *arg, bool *sent), void *arg)
{
	int64_t busy_deadline = now_ms() + c->busy_ms;
	int64_t leader_deadline = now_ms() + c->connect_ms;
	int backoff = 2;
	bool txn = c->in_txn;
	for (;;) {
		bool sent = false;
		int rc = once(arg, &sent);
		if (rc == SQLITE_OK || rc == SQLITE_ROW || rc == SQLITE_DONE)
			return rc;
		if ((rc & 0xff) == SQLITE_BUSY && !txn && now_ms() < busy_deadline) {
			jitter_sleep(c, backoff);
			if (backoff < 100)
				backoff *= 2;
			continue;
		}
		if (!orch_dq_transient(rc) && rc != SQLITE_CANTOPEN)
			return rc;
		if (txn) {
			disconnect(c);
			c->in_txn = false;
			return fail(c, ORCH_DQ_LEADERSHIP_LOST, "transaction lost with the leader: %s", c->errmsg);
		}
		bool not_run = !sent || rc == ORCH_DQ_NOT_LEADER;
		if (!(not_run || is_read) || now_ms() >= leader_deadline) {
			if (rc != ORCH_DQ_NOT_LEADER)
				return fail(c, ORCH_DQ_LEADERSHIP_LOST, "leader lost; the write may or may not have committed: %s",
					    c->errmsg);
			return rc;
		}
		/* connect_leader waits for a new leader itself */
	}
}

static int stmt_once(void *arg, bool *sent) { return run_once(arg, sent); }

bool orch_dq_stmt_yields_rows(orch_dq_stmt *s)
{
	return s->yields_rows;
}

int orch_dq_step(orch_dq_stmt *s)
{
	orch_dq *c = s->c;
	if (s->state == ST_DONE || s->state == ST_ERROR)
		return fail(c, SQLITE_MISUSE, "statement stepped after it finished: reset it first");
	int rc;
	if (s->state == ST_IDLE) {
		rc = with_retries(c, s->yields_rows && !c->in_txn, stmt_once, s);
		if (rc == SQLITE_DONE && s->txn_effect)
			c->in_txn = s->txn_effect > 0;
		if (rc == SQLITE_ROW) {
			s->state = ST_ROWS;
			rc = next_row(s);
		}
	} else {
		rc = next_row(s);
	}
	if (rc == SQLITE_ROW) {
		s->state = ST_ROWS;
	} else if (rc == SQLITE_DONE) {
		s->state = ST_DONE;
	} else {
		s->state = ST_ERROR;
		if (c->fd < 0 && c->in_txn) {
			c->in_txn = false;
			if (rc != ORCH_DQ_LEADERSHIP_LOST)
				rc = fail(c, ORCH_DQ_LEADERSHIP_LOST, "transaction lost with the leader: %s", c->errmsg);
		}
		/* A failed COMMIT/ROLLBACK leaves no transaction in dqlite. */
		if (s->txn_effect < 0)
			c->in_txn = false;
	}
	return rc;
}

typedef struct exec_arg {
	orch_dq *c;
	const char *sql;
} exec_arg;

static int exec_once(void *arg, bool *sent)
{
	exec_arg *a = arg;
	orch_dq *c = a->c;
	*sent = false;
	int rc = ensure_connected(c);
	if (rc)
		return rc;
	req_begin(c, 16 + strlen(a->sql) + 1);
	put_u64(&c->out, c->db_id);
	put_text(&c->out, a->sql);
	put_u64(&c->out, 0); /* an empty params-tuple */
	rc = roundtrip(c, REQ_EXEC_SQL, RES_RESULT, sent);
	if (rc)
		return rc;
	c->last_rowid = (int64_t)get_u64(c->in.p);
	c->changes = (int64_t)get_u64(c->in.p + 8);
	return SQLITE_OK;
}

int orch_dq_exec(orch_dq *c, const char *sql)
{
	classify k = classify_sql(sql);
	if (k.returning && !k.rows)
		return fail(c, SQLITE_ERROR, "RETURNING is not supported by dqlite 1.11 (a write cannot return rows)");
	exec_arg a = { c, sql };
	int rc = with_retries(c, false, exec_once, &a);
	if (rc == SQLITE_OK && k.txn)
		c->in_txn = k.txn > 0;
	else if (rc != SQLITE_OK && k.txn < 0)
		c->in_txn = false;
	return rc;
}

int orch_dq_column_count(orch_dq_stmt *s) { return s->state == ST_ROWS ? s->ncols : 0; }

static const value *col(orch_dq_stmt *s, int i)
{
	static const value null_value = { .type = T_NULL }; /* read only: shared by every thread */
	if (s->state != ST_ROWS || i < 0 || i >= s->ncols)
		return &null_value;
	return &s->row[i];
}

const char *orch_dq_column_name(orch_dq_stmt *s, int i)
{
	return i >= 0 && i < s->ncols ? s->names[i] : NULL;
}

int orch_dq_column_type(orch_dq_stmt *s, int i)
{
	switch (col(s, i)->type) {
	case T_INTEGER: return SQLITE_INTEGER;
	case T_FLOAT: return SQLITE_FLOAT;
	case T_TEXT: return SQLITE_TEXT;
	case T_BLOB: return SQLITE_BLOB;
	default: return SQLITE_NULL;
	}
}

int64_t orch_dq_column_int64(orch_dq_stmt *s, int i)
{
	const value *v = col(s, i);
	switch (v->type) {
	case T_INTEGER: return v->i;
	case T_FLOAT: return (int64_t)v->d;
	case T_TEXT: return strtoll((const char *)v->p, NULL, 10);
	default: return 0;
	}
}

double orch_dq_column_double(orch_dq_stmt *s, int i)
{
	const value *v = col(s, i);
	switch (v->type) {
	case T_INTEGER: return (double)v->i;
	case T_FLOAT: return v->d;
	case T_TEXT: return strtod((const char *)v->p, NULL);
	default: return 0;
	}
}

const char *orch_dq_column_text(orch_dq_stmt *s, int i)
{
	const value *v = col(s, i);
	return v->type == T_TEXT ? (const char *)v->p : NULL;
}

const void *orch_dq_column_blob(orch_dq_stmt *s, int i)
{
	const value *v = col(s, i);
	return v->type == T_BLOB || v->type == T_TEXT ? v->p : NULL;
}

int orch_dq_column_bytes(orch_dq_stmt *s, int i)
{
	const value *v = col(s, i);
	return v->type == T_BLOB || v->type == T_TEXT ? (int)v->n : 0;
}

/* ---- administration ---- */

static int cluster_request(orch_dq *c, orch_dq_server **out, size_t *n)
{
	*out = NULL;
	*n = 0;
	req_begin(c, 8);
	put_u64(&c->out, 1);
	int rc = roundtrip(c, REQ_CLUSTER, RES_SERVERS, NULL);
	if (rc)
		return rc;
	rd r = { c->in.p, 0, c->in.len, false };
	uint64_t count = rd_u64(&r);
	if (count > 1024)
		return fail(c, SQLITE_PROTOCOL, "malformed servers response");
	orch_dq_server *v = calloc(count ? count : 1, sizeof *v);
	if (!v)
		return fail(c, SQLITE_NOMEM, "out of memory");
	for (uint64_t i = 0; i < count; i++) {
		v[i].id = rd_u64(&r);
		snprintf(v[i].address, sizeof v[i].address, "%s", rd_text(&r));
		v[i].role = (int)rd_u64(&r);
	}
	if (r.bad) {
		free(v);
		return fail(c, SQLITE_PROTOCOL, "malformed servers response");
	}
	*out = v;
	*n = count;
	return SQLITE_OK;
}

int orch_dq_cluster(orch_dq *c, orch_dq_server **out, size_t *n)
{
	int rc = ensure_connected(c);
	if (rc == SQLITE_OK)
		rc = cluster_request(c, out, n);
	return rc;
}

int orch_dq_add(orch_dq *c, uint64_t id, const char *address)
{
	int rc = ensure_connected(c);
	if (rc)
		return rc;
	req_begin(c, 8 + strlen(address) + 1);
	put_u64(&c->out, id);
	put_text(&c->out, address);
	return roundtrip(c, REQ_ADD, RES_EMPTY, NULL);
}

int orch_dq_assign(orch_dq *c, uint64_t id, int role)
{
	int rc = ensure_connected(c);
	if (rc)
		return rc;
	req_begin(c, 16);
	put_u64(&c->out, id);
	put_u64(&c->out, (uint64_t)role);
	return roundtrip(c, REQ_ASSIGN, RES_EMPTY, NULL);
}
