/*
 * The FUSE daemon: what the command line needs of src/fs.
 */
#ifndef ORCHFS_FS_PUBLIC_H
#define ORCHFS_FS_PUBLIC_H

#include <stdbool.h>

#include "orchfs/core.h"

/* ---- the daemon (fs.c) ---- */

typedef struct {
	const char *mountpoint;
	bool foreground;
	bool debug;
	bool single_thread; /* -s: serve one request at a time (debugging) */
	int mirror_refresh_s; /* --mirror-refresh: refresh an outdated mirror at most this often (0: never) */
	void (*on_mounted)(void *arg); /* called once the mount is in place */
	void *arg;
} fs_options;

/* Mount and serve until unmounted or signalled.  Returns the process exit code. */
int fs_main(orch_env *env, const fs_options *opts);

#endif
