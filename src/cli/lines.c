/*
 * Newline-delimited input: see lines.h.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "orchfs/base.h"
#include "lines.h"

#define CHUNK (64 * 1024) /* one read(); a pipe holds 64 KiB */

void line_reader_init(line_reader *r, int fd, size_t max)
{
	memset(r, 0, sizeof(*r));
	r->fd = fd;
	r->max = max;
}

void line_reader_free(line_reader *r)
{
	free(r->buf);
	memset(r, 0, sizeof(*r));
}

/* Take the line [start, end) (end is at its "\n" or the end of input). */
static void take(line_reader *r, size_t end, const char **line, size_t *len)
{
	*line = r->buf + r->start;
	*len = end - r->start;
	if (*len > 0 && (*line)[*len - 1] == '\r')
		(*len)--;
}

line_status line_next(line_reader *r, const char **line, size_t *len)
{
	for (;;) {
		char *nl = r->len > r->start + r->scanned
				   ? memchr(r->buf + r->start + r->scanned, '\n', r->len - r->start - r->scanned)
				   : NULL;
		if (nl) {
			size_t end = (size_t)(nl - r->buf);
			bool skipped = r->skipping;
			if (!skipped)
				take(r, end, line, len);
			r->start = end + 1;
			r->scanned = 0;
			r->skipping = false;
			if (skipped)
				continue; /* the end of a line already reported too long */
			if (end - (size_t)(*line - r->buf) > r->max)
				return LINE_TOO_LONG;
			return LINE_OK;
		}
		r->scanned = r->len - r->start;
		if (r->skipping || r->scanned > r->max) {
			/* Too long: say so once, then drop what is held (never more than max + CHUNK bytes). */
			bool report = !r->skipping;
			r->start = r->len = r->scanned = 0;
			r->skipping = true;
			if (report)
				return LINE_TOO_LONG;
		}
		if (r->eof) {
			if (r->len > r->start) {
				take(r, r->len, line, len);
				r->start = r->len;
				r->scanned = 0;
				return LINE_OK;
			}
			return LINE_EOF;
		}
		/* Keep the partial line at the front and read more after it. */
		if (r->start > 0) {
			memmove(r->buf, r->buf + r->start, r->len - r->start);
			r->len -= r->start;
			r->start = 0;
		}
		if (r->cap - r->len < CHUNK) {
			r->cap = r->len + CHUNK;
			r->buf = orch_xrealloc(r->buf, r->cap);
		}
		if (r->stop && *r->stop) {
			/* A signal came while the caller was busy: do not block in read() first. */
			errno = EINTR;
			return LINE_ERROR;
		}
		ssize_t n = read(r->fd, r->buf + r->len, r->cap - r->len);
		if (n < 0 && errno == EINTR && !(r->stop && *r->stop))
			continue;
		if (n < 0)
			return LINE_ERROR;
		if (n == 0)
			r->eof = true;
		r->len += (size_t)n;
	}
}

int write_all(int fd, const char *buf, size_t len)
{
	while (len > 0) {
		ssize_t n = write(fd, buf, len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -1;
		buf += n;
		len -= (size_t)n;
	}
	return 0;
}
