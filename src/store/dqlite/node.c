/*
 * A dqlite node embedded in the process (libdqlite 1.11's dqlite_node API).
 *
 * dqlite_node_start bootstraps a one-voter cluster when the node's id is 1
 * and its directory holds no raft state; any other node starts with no
 * configuration and must be added by the leader.  So after starting, a node
 * other than 1 asks the leader (found through its peers, with the wire
 * protocol client) to ADD it, then to ASSIGN it the voter role while the
 * cluster has fewer than three voters, else the standby role (a standby
 * replicates and can be promoted by hand).  Both steps are idempotent and
 * run at every start, so a node killed halfway through joining finishes on
 * its next start.  The members' addresses are saved in DIR/peers so that a
 * restart finds the cluster without being told the peers again.
 */
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdbool.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <dqlite.h>

#include "orchfs/error.h"
#include "../dqlite.h"

struct orch_dq_node {
	dqlite_node *node;
	char *dir;
	char *address;
	uint64_t id;
	bool started;
	char **peers; /* DIR/peers and the node's own address; owned by the starting thread */
	size_t npeers;
};

static int add_peer(orch_dq_node *n, const char *a)
{
	if (!*a)
		return 0;
	for (size_t i = 0; i < n->npeers; i++)
		if (strcmp(n->peers[i], a) == 0)
			return 0;
	char **p = realloc(n->peers, (n->npeers + 1) * sizeof *p);
	if (!p)
		return -1;
	n->peers = p;
	if (!(p[n->npeers] = strdup(a)))
		return -1;
	n->npeers++;
	return 0;
}

static void load_peers(orch_dq_node *n)
{
	char path[4096], line[256];
	snprintf(path, sizeof path, "%s/peers", n->dir);
	FILE *f = fopen(path, "r");
	if (!f)
		return;
	while (fgets(line, sizeof line, f)) {
		line[strcspn(line, "\r\n")] = 0;
		add_peer(n, line);
	}
	fclose(f);
}

/* Write DIR/peers through a temporary file and rename, so a crash leaves the old or the new list. */
static int save_peers(orch_dq_node *n)
{
	char path[4096], tmp[4200];
	snprintf(path, sizeof path, "%s/peers", n->dir);
	snprintf(tmp, sizeof tmp, "%s.tmp", path);
	FILE *f = fopen(tmp, "w");
	if (!f)
		return orch_error_set(ORCH_EINTERNAL, "cannot write %s: %s", tmp, strerror(errno));
	for (size_t i = 0; i < n->npeers; i++)
		fprintf(f, "%s\n", n->peers[i]);
	int bad = fflush(f) != 0 || fsync(fileno(f)) != 0;
	bad |= fclose(f) != 0;
	if (bad || rename(tmp, path) != 0) {
		unlink(tmp);
		return orch_error_set(ORCH_EINTERNAL, "cannot write %s: %s", path, strerror(errno));
	}
	return 0;
}

/*
 * Make this node a member: ADD it if the leader does not list it, then
 * promote it (voter below three voters, else standby).  Retries leader
 * changes until join_ms has passed.
 */
static int join(orch_dq_node *n, int join_ms)
{
	orch_dq_opts o = ORCH_DQ_OPTS_INIT;
	o.peers = (const char *const *)n->peers;
	o.npeers = n->npeers;
	o.connect_ms = join_ms;
	orch_dq *c;
	int rc = orch_dq_open(&c, &o);
	struct timespec start;
	clock_gettime(CLOCK_MONOTONIC, &start);
	for (int attempt = 0; rc == 0 || orch_dq_transient(rc); attempt++) {
		orch_dq_server *servers = NULL;
		size_t ns = 0;
		if (rc == 0)
			rc = orch_dq_cluster(c, &servers, &ns);
		int voters = 0, role = -1;
		for (size_t i = 0; rc == 0 && i < ns; i++) {
			voters += servers[i].role == ORCH_DQ_VOTER;
			if (servers[i].id == n->id)
				role = servers[i].role;
		}
		if (rc == 0 && role < 0)
			rc = orch_dq_add(c, n->id, n->address), role = ORCH_DQ_SPARE;
		if (rc == 0 && role != ORCH_DQ_VOTER && voters < 3)
			rc = orch_dq_assign(c, n->id, ORCH_DQ_VOTER);
		else if (rc == 0 && role == ORCH_DQ_SPARE)
			rc = orch_dq_assign(c, n->id, ORCH_DQ_STANDBY);
		if (rc == 0) {
			for (size_t i = 0; i < ns; i++)
				add_peer(n, servers[i].address);
			free(servers);
			break;
		}
		free(servers);
		struct timespec now;
		clock_gettime(CLOCK_MONOTONIC, &now);
		long waited = (now.tv_sec - start.tv_sec) * 1000 + (now.tv_nsec - start.tv_nsec) / 1000000;
		if (waited > join_ms)
			break;
		usleep(100000);
		rc = 0;
	}
	if (rc != 0) {
		rc = orch_error_set(ORCH_EINTERNAL, "node %llu cannot join the cluster: %s",
				    (unsigned long long)n->id, c ? orch_dq_errmsg(c) : "out of memory");
	}
	orch_dq_close(c);
	return rc;
}

/*
 * How this node connects to the others for raft: as dqlite's default (a
 * blocking connect to "HOST:PORT" or "[V6]:PORT", on libuv's thread pool;
 * dqlite then sends its handshake), plus TCP_NODELAY.  libraft sends every
 * message on the sender's own connection and never sets it, so with Nagle
 * an AppendEntries (or its result) written while the previous message on
 * that connection is not yet acknowledged -- a heartbeat a moment before,
 * say -- waits for that acknowledgement: about one more network round trip
 * per commit.  Connections accepted from others only carry their
 * acknowledgements back.
 */
static int connect_nodelay(void *arg, const char *address, int *fd)
{
	char host[256];
	const char *colon = strrchr(address, ':');
	struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *ai;
	int one = 1;

	(void)arg;
	if (!colon || (size_t)(colon - address) >= sizeof host)
		return DQLITE_ERROR;
	size_t hn = (size_t)(colon - address);
	const char *h = address;
	if (hn >= 2 && h[0] == '[' && h[hn - 1] == ']') {
		h++;
		hn -= 2;
	}
	memcpy(host, h, hn);
	host[hn] = 0;
	if (getaddrinfo(host, colon + 1, &hints, &ai) != 0)
		return DQLITE_ERROR;
	*fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (*fd < 0 || connect(*fd, ai->ai_addr, ai->ai_addrlen) != 0) {
		if (*fd >= 0)
			close(*fd);
		freeaddrinfo(ai);
		return DQLITE_ERROR;
	}
	freeaddrinfo(ai);
	setsockopt(*fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	return 0;
}

void orch_dq_node_stop(orch_dq_node *n)
{
	if (!n)
		return;
	if (n->node) {
		if (n->started)
			dqlite_node_stop(n->node);
		dqlite_node_destroy(n->node);
	}
	for (size_t i = 0; i < n->npeers; i++)
		free(n->peers[i]);
	free(n->peers);
	free(n->dir);
	free(n->address);
	free(n);
}

int orch_dq_node_start(orch_dq_node **out, const orch_dq_node_opts *o)
{
	*out = NULL;
	/* Writing to a dead peer's socket must fail with EPIPE, not kill the process. */
	signal(SIGPIPE, SIG_IGN);
	/* When this node leads, the cluster's SQL runs on its connections: give them our functions. */
	static pthread_once_t serve_once = PTHREAD_ONCE_INIT;
	pthread_once(&serve_once, orch_store_serve);
	if (o->id == 0 || !o->address || !o->dir)
		return orch_error_set(ORCH_EINVALID_PARAMS, "a dqlite node needs an id (1 or more), an address and a directory");
	if (mkdir(o->dir, 0700) != 0 && errno != EEXIST)
		return orch_error_set(ORCH_EINTERNAL, "cannot create %s: %s", o->dir, strerror(errno));
	orch_dq_node *n = calloc(1, sizeof *n);
	if (!n || !(n->dir = strdup(o->dir)) || !(n->address = strdup(o->address))) {
		orch_dq_node_stop(n);
		return orch_error_set(ORCH_EINTERNAL, "out of memory");
	}
	n->id = o->id;
	load_peers(n);
	for (size_t i = 0; i < o->npeers; i++)
		add_peer(n, o->peers[i]);
	add_peer(n, o->address);

	int rc = dqlite_node_create(o->id, o->address, o->dir, &n->node);
	if (rc == 0)
		rc = dqlite_node_set_bind_address(n->node, o->address);
	if (rc == 0)
		rc = dqlite_node_set_connect_func(n->node, connect_nodelay, NULL);
	if (rc == 0 && o->latency_ms)
		rc = dqlite_node_set_network_latency_ms(n->node, o->latency_ms);
	if (rc == 0)
		rc = dqlite_node_start(n->node);
	n->started = rc == 0;
	if (rc != 0) {
		rc = orch_error_set(ORCH_EINTERNAL, "dqlite node %llu at %s: %s (%d)", (unsigned long long)o->id,
				    o->address, n->node ? dqlite_node_errmsg(n->node) : "cannot create", rc);
		orch_dq_node_stop(n);
		return rc;
	}
	rc = o->id == 1 ? 0 : join(n, o->join_ms > 0 ? o->join_ms : 30000);
	if (rc == 0)
		rc = save_peers(n);
	if (rc != 0) {
		orch_dq_node_stop(n);
		return rc;
	}
	*out = n;
	return 0;
}

size_t orch_dq_node_peers(orch_dq_node *n, const char *const **out)
{
	*out = (const char *const *)n->peers;
	return n->npeers;
}
