/*
 * Newline-delimited input for the stdio front ends (orchfs serve, orchfs
 * mcp): one request per line, read from a descriptor in large chunks.
 */
#ifndef ORCHFS_CLI_LINES_H
#define ORCHFS_CLI_LINES_H

#include <stdbool.h>
#include <signal.h>
#include <stddef.h>

typedef enum {
	LINE_OK,       /* *line, *len: one line without its "\n" (or "\r\n") */
	LINE_TOO_LONG, /* a line longer than `max`: reported once, the rest of it is skipped */
	LINE_EOF,      /* end of input (a last line without "\n" was returned as LINE_OK before) */
	LINE_ERROR,    /* read() failed; errno says why */
} line_status;

/* One reader per descriptor, owned by the thread that reads it. */
typedef struct {
	int fd;
	size_t max;     /* the longest line accepted, in bytes */
	char *buf;
	size_t cap;
	size_t len;     /* bytes held in buf */
	size_t start;   /* where the next line starts */
	size_t scanned; /* bytes after start already searched for "\n" */
	bool eof;
	bool skipping;  /* inside a line that was too long: drop bytes up to its "\n" */
	/* When set (by a signal handler): a read() interrupted by a signal is LINE_ERROR with errno EINTR. */
	volatile sig_atomic_t *stop;
} line_reader;

void line_reader_init(line_reader *r, int fd, size_t max);
void line_reader_free(line_reader *r);

/*
 * The next line.  It stays valid until the next call; it is not
 * NUL-terminated (a JSON parser is given its length).
 */
line_status line_next(line_reader *r, const char **line, size_t *len);

/* Write all of buf to fd (retrying short writes and EINTR); 0, or -1 with errno. */
int write_all(int fd, const char *buf, size_t len);

#endif
