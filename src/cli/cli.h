/*
 * The subcommands of src/cli/ besides main.c's: the stdio front ends.
 */
#ifndef ORCHFS_CLI_H
#define ORCHFS_CLI_H

#include <stddef.h>
#include <stdint.h>

/*
 * orchfs serve: the reference's newline-delimited JSON on stdin/stdout.
 * Returns the exit status.  Sessions opened through it, and `session`
 * (> 0, --session), are held alive by the process (front.h).
 */
int cli_serve(const char *repo, const char *state, const char *host, int64_t session);

/* orchfs mcp: an MCP server over stdio.  Returns the exit status. */
int cli_mcp(const char *repo, const char *state, const char *host, int64_t session);

/*
 * orchfs mount --store dqlite:...: the dqlite node the daemon runs
 * (cluster.c).  Main thread only: started before the daemon serves, stopped
 * after it is done.
 */
typedef struct cli_store {
	struct orch_dq_node *node;
	char *where;   /* the store for orch_env_open_opts: "dqlite:<addr>,<peers>" */
	char *address; /* the node's HOST:PORT */
} cli_store;

/* Whether `spec` is a well-formed --store value this build can run (a message in `err` if not). */
int cli_store_check(const char *spec, char *err, size_t errlen);
/* Start the node `spec` describes, joined to its cluster: 0, or an orch error set. */
int cli_store_start(const char *spec, cli_store *out);
void cli_store_stop(cli_store *c);

#endif
