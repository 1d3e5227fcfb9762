/*
 * The base layer under core, store and git: the error slot (error.h),
 * time, the daemon's log and memory.  It depends on nothing of orchfs.
 */
#ifndef ORCHFS_BASE_H
#define ORCHFS_BASE_H

#include <stddef.h>
#include <stdint.h>

#include "orchfs/error.h"

/* ms since the epoch (real time). */
int64_t orch_now_ms(void);

/* RFC 3339 UTC with exactly three fraction digits; buf >= 32 bytes. */
void orch_time_format(int64_t ms, char *buf);

/* A timestamped line on stderr (the daemon's log): "<time> orchfs: <message>". */
void orch_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/*
 * realloc that never returns NULL: out of memory, the process reports and
 * aborts (a daemon that cannot allocate cannot keep any promise anyway).
 */
void *orch_xrealloc(void *p, size_t n);

/* The length of the longest prefix of `s` within `max` bytes that ends on a UTF-8 character boundary. */
size_t orch_utf8_prefix(const char *s, size_t max);

#endif
