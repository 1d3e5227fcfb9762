/*
 * `orchfs mount --store dqlite:...`: the daemon runs a dqlite node of the
 * cluster that holds the shared state, and its store is a client of that
 * cluster's leader (which may be this node or another host's).
 *
 *   dqlite:id=N,addr=HOST:PORT,dir=DIR[,peers=HOST:PORT[,HOST:PORT...]][,latency=MS]
 *
 * id 1 bootstraps a new cluster; any other joins through `peers` (or the
 * peers it remembers in DIR/peers from an earlier start).  Everything here
 * runs on the main thread before the daemon serves, and after it stops.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "orchfs/core.h"
#include "cli.h"
#ifdef ORCH_HAVE_DQLITE
#include "../store/dqlite.h"
#endif

#define MAX_PEERS 16

/* Parse `spec` into `o` (pointing into the modified copy `buf`); a message in `err` when it is wrong. */
static int parse_spec(char *buf, const char **id, const char **addr, const char **dir, const char **latency,
		      const char **peers, size_t *npeers, char *err, size_t errlen)
{
	char *save = NULL;
	bool in_peers = false;

	*id = *addr = *dir = *latency = NULL;
	*npeers = 0;
	if (strncmp(buf, "dqlite:", 7) != 0) {
		snprintf(err, errlen, "--store takes dqlite:id=N,addr=HOST:PORT,dir=DIR[,peers=HOST:PORT,...]");
		return -1;
	}
	for (char *p = strtok_r(buf + 7, ",", &save); p; p = strtok_r(NULL, ",", &save)) {
		char *eq = strchr(p, '=');
		if (!eq && in_peers) {
			if (*npeers == MAX_PEERS) {
				snprintf(err, errlen, "--store: at most %d peers", MAX_PEERS);
				return -1;
			}
			peers[(*npeers)++] = p;
			continue;
		}
		if (!eq) {
			snprintf(err, errlen, "--store: \"%s\" is not KEY=VALUE (keys: id, addr, dir, peers, latency)", p);
			return -1;
		}
		*eq++ = '\0';
		in_peers = false;
		if (strcmp(p, "id") == 0)
			*id = eq;
		else if (strcmp(p, "addr") == 0)
			*addr = eq;
		else if (strcmp(p, "dir") == 0)
			*dir = eq;
		else if (strcmp(p, "latency") == 0)
			*latency = eq;
		else if (strcmp(p, "peers") == 0) {
			in_peers = true;
			if (*eq && *npeers < MAX_PEERS)
				peers[(*npeers)++] = eq;
		} else {
			snprintf(err, errlen, "--store: unknown key \"%s\" (keys: id, addr, dir, peers, latency)", p);
			return -1;
		}
	}
	if (!*id || !*addr || !*dir) {
		snprintf(err, errlen, "--store: id, addr and dir are required");
		return -1;
	}
	char *end;
	long long v = strtoll(*id, &end, 10);
	if (*end || v < 1) {
		snprintf(err, errlen, "--store: id must be a positive integer, got \"%s\"", *id);
		return -1;
	}
	if (!strchr(*addr, ':')) {
		snprintf(err, errlen, "--store: addr must be HOST:PORT, got \"%s\"", *addr);
		return -1;
	}
	for (size_t i = 0; i < *npeers; i++)
		if (!strchr(peers[i], ':')) {
			snprintf(err, errlen, "--store: a peer must be HOST:PORT, got \"%s\"", peers[i]);
			return -1;
		}
	if (*latency) {
		long ms = strtol(*latency, &end, 10);
		if (*end || ms < 1 || ms > 10000) {
			snprintf(err, errlen, "--store: latency is milliseconds, 1 to 10000, got \"%s\"", *latency);
			return -1;
		}
	}
	return 0;
}

int cli_store_check(const char *spec, char *err, size_t errlen)
{
	char *buf = strdup(spec);
	const char *id, *addr, *dir, *latency, *peers[MAX_PEERS];
	size_t npeers;
	int rc;

	if (!buf) {
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	rc = parse_spec(buf, &id, &addr, &dir, &latency, peers, &npeers, err, errlen);
	free(buf);
#ifndef ORCH_HAVE_DQLITE
	if (rc == 0) {
		snprintf(err, errlen, "--store dqlite: this orchfs was built without dqlite (meson -Ddqlite=enabled)");
		rc = -1;
	}
#endif
	return rc;
}

#ifdef ORCH_HAVE_DQLITE
/* Whether the node directory `dir` holds raft state (dqlite's metadata files). */
static bool has_raft_state(const char *dir)
{
	char path[4096];
	struct stat sb;

	snprintf(path, sizeof(path), "%s/metadata1", dir);
	if (stat(path, &sb) == 0)
		return true;
	snprintf(path, sizeof(path), "%s/metadata2", dir);
	return stat(path, &sb) == 0;
}

/* Whether the comma-separated `list` has the item `a`. */
static bool listed(const char *list, const char *a)
{
	size_t n = strlen(a);

	for (const char *p = list; *p; p += strcspn(p, ","), p += *p == ',')
		if (strncmp(p, a, n) == 0 && (p[n] == ',' || p[n] == '\0'))
			return true;
	return false;
}

int cli_store_start(const char *spec, cli_store *out)
{
	char *buf = strdup(spec), err[256];
	const char *id, *addr, *dir, *latency, *peers[MAX_PEERS], *const *all;
	size_t npeers, nall, len;
	orch_dq_node_opts o = ORCH_DQ_NODE_OPTS_INIT;
	orch_dq_node *node = NULL;

	memset(out, 0, sizeof(*out));
	if (!buf)
		return orch_error_set(ORCH_EINTERNAL, "out of memory");
	if (parse_spec(buf, &id, &addr, &dir, &latency, peers, &npeers, err, sizeof(err)) != 0) {
		free(buf);
		return orch_error_set(ORCH_EINVALID_PARAMS, "%s", err);
	}
	o.id = strtoull(id, NULL, 10);
	/*
	 * Node 1 on a directory without raft state bootstraps a new cluster.
	 * Told peers to join, that is a mistake that would split the state in
	 * two (node 1's machine replaced with an empty dir): refuse it.
	 */
	if (o.id == 1 && npeers > 0 && !has_raft_state(dir)) {
		int rc = orch_error_set(ORCH_EINVALID_PARAMS, "--store: node 1 bootstraps a new cluster, but %s holds no "
					"raft state and peers are given: restart node 1 with its old dir, or join this "
					"machine with an id the cluster has not used", dir);
		free(buf);
		return rc;
	}
	o.address = addr;
	o.dir = dir;
	o.peers = peers;
	o.npeers = npeers;
	o.latency_ms = latency ? (unsigned)strtoul(latency, NULL, 10) : 0;
	if (orch_dq_node_start(&node, &o) != 0) {
		free(buf);
		return -1;
	}
	/*
	 * The client reaches the leader through this node first, then the
	 * others: those the node knows, and the members the cluster lists now
	 * (a restarted node 1 knows only itself from DIR/peers), so that
	 * `orchfs call` on this machine finds the cluster even while this
	 * daemon is down.
	 */
	nall = orch_dq_node_peers(node, &all);
	orch_dq_server *members = NULL;
	size_t nmembers = 0;
	orch_dq_opts co = ORCH_DQ_OPTS_INIT;
	orch_dq *c = NULL;
	co.peers = all;
	co.npeers = nall;
	co.database = ORCH_DQ_DATABASE; /* the store's (opening one creates it): no stray database */
	co.connect_ms = 1000;
	if (orch_dq_open(&c, &co) != 0 || orch_dq_cluster(c, &members, &nmembers) != 0)
		nmembers = 0;
	orch_dq_close(c);
	len = strlen("dqlite:") + strlen(addr) + 1;
	for (size_t i = 0; i < nall; i++)
		len += strlen(all[i]) + 1;
	for (size_t i = 0; i < nmembers; i++)
		len += strlen(members[i].address) + 1;
	if (!(out->where = malloc(len))) {
		free(members);
		orch_dq_node_stop(node);
		free(buf);
		return orch_error_set(ORCH_EINTERNAL, "out of memory");
	}
	strcpy(out->where, "dqlite:");
	strcat(out->where, addr);
	for (size_t i = 0; i < nall + nmembers; i++) {
		const char *a = i < nall ? all[i] : members[i - nall].address;
		if (!listed(out->where + 7, a)) {
			strcat(out->where, ",");
			strcat(out->where, a);
		}
	}
	free(members);
	out->address = strdup(addr);
	out->node = node;
	free(buf);
	return 0;
}

void cli_store_stop(cli_store *c)
{
	orch_dq_node_stop(c->node);
	free(c->where);
	free(c->address);
	memset(c, 0, sizeof(*c));
}
#else
int cli_store_start(const char *spec, cli_store *out)
{
	memset(out, 0, sizeof(*out));
	return orch_error_set(ORCH_EINVALID_PARAMS, "--store %s: this orchfs was built without dqlite", spec);
}

void cli_store_stop(cli_store *c)
{
	(void)c;
}
#endif
