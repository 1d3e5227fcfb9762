/*
 * The stdio front ends' line reader (src/cli/lines.c), with a small line
 * limit so that every edge is a few bytes long.
 */
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include "test.h"
#include "../../src/cli/lines.h"

/* Read every line of `input` (written whole into a pipe, then closed) with limit `max`: "text|" per line, "!" per too long. */
static char *read_all(const char *input, size_t len, size_t max)
{
	int fds[2];
	line_reader r;
	const char *line;
	size_t n;
	char *out = calloc(1, 4096);
	line_status ls;

	if (pipe(fds) != 0 || write(fds[1], input, len) != (ssize_t)len)
		return out;
	close(fds[1]);
	line_reader_init(&r, fds[0], max);
	while ((ls = line_next(&r, &line, &n)) != LINE_EOF && ls != LINE_ERROR) {
		if (ls == LINE_TOO_LONG)
			strcat(out, "!");
		else
			strncat(strncat(out, line, n), "|", 2);
	}
	line_reader_free(&r);
	close(fds[0]);
	return out;
}

#define LINES(input, max, want)                                                  \
	do {                                                                     \
		char *got_ = read_all(input, sizeof(input) - 1, max);            \
		CHECK_EQ_STR(got_, want);                                        \
		free(got_);                                                      \
	} while (0)

TEST(lines_split_and_ends)
{
	LINES("", 10, "");
	LINES("a\nbc\n", 10, "a|bc|");
	LINES("a\r\nb\r\n\n", 10, "a|b||");          /* CRLF ends a line; empty lines are lines */
	LINES("a\nlast", 10, "a|last|");             /* a last line without "\n" */
	LINES("x\r", 10, "x|");
}

TEST(lines_too_long_is_reported_once_and_skipped)
{
	LINES("0123456789\n", 10, "0123456789|");    /* exactly the limit */
	LINES("0123456789A\nok\n", 10, "!ok|");      /* one byte over, "\n" in the same read */
	LINES("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ\nok\n", 10, "!ok|");
	LINES("ok\n0123456789ABCDEFGHIJ", 10, "ok|!"); /* too long at the end of input */
	LINES("0123456789ABC\n0123456789ABC\nz", 10, "!!z|");
}

TEST(lines_longer_than_a_read)
{
	/* Lines that span several 64 KiB reads, one over the limit, one under. */
	size_t big = 200 * 1024;
	char *in = malloc(2 * big + 16), *p = in;
	memset(p, 'a', big);
	p += big;
	*p++ = '\n';
	memset(p, 'b', big - 1);
	p += big - 1;
	memcpy(p, "\nend\n", 5);
	p += 5;

	int fds[2];
	line_reader r;
	const char *line;
	size_t n;
	CHECK(pipe(fds) == 0);
	pid_t pid = fork();
	if (pid == 0) {
		close(fds[0]);
		ssize_t w = write(fds[1], in, (size_t)(p - in));
		_exit(w == p - in ? 0 : 1);
	}
	close(fds[1]);
	line_reader_init(&r, fds[0], big - 1);
	CHECK_EQ_INT(line_next(&r, &line, &n), LINE_TOO_LONG);
	CHECK_EQ_INT(line_next(&r, &line, &n), LINE_OK);
	CHECK_EQ_INT(n, big - 1);
	CHECK(line[0] == 'b' && line[n - 1] == 'b');
	CHECK_EQ_INT(line_next(&r, &line, &n), LINE_OK);
	CHECK(n == 3 && memcmp(line, "end", 3) == 0);
	CHECK_EQ_INT(line_next(&r, &line, &n), LINE_EOF);
	line_reader_free(&r);
	close(fds[0]);
	free(in);
	int status = -1;
	CHECK(waitpid(pid, &status, 0) == pid && status == 0);
}
