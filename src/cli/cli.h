/*
 * The subcommands of src/cli/ besides main.c's: the stdio front ends.
 */
#ifndef ORCHFS_CLI_H
#define ORCHFS_CLI_H

#include <stdint.h>

/*
 * orchfs serve: the reference's newline-delimited JSON on stdin/stdout.
 * Returns the exit status.  Sessions opened through it, and `session`
 * (> 0, --session), are held alive by the process (front.h).
 */
int cli_serve(const char *repo, const char *state, const char *host, int64_t session);

/* orchfs mcp: an MCP server over stdio.  Returns the exit status. */
int cli_mcp(const char *repo, const char *state, const char *host, int64_t session);

#endif
