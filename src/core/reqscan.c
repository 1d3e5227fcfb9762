/*
 * Request scanning: where a request's JSON value ends, found by looking at
 * each byte once, whatever the writes that brought the bytes.
 *
 * A ctl descriptor receives its request in writes of any size (one byte at
 * a time, 4 KiB stdio flushes, one write).  Re-parsing the whole buffer
 * after each write costs O(n^2); instead the scanner keeps the little state
 * a JSON lexer needs (nesting depth, inside a string, after a backslash,
 * inside a \u escape, inside a UTF-8 sequence) and advances over new bytes
 * only.  Its decisions depend on the bytes alone, never on where a write
 * ended, so a request has the same outcome however it is split.  When the
 * top-level value has ended, jansson parses the buffer once.
 *
 * The scanner refuses at once a byte that no JSON text can contain at that
 * point: NUL and other bytes outside the JSON alphabet between tokens, a
 * control character or invalid UTF-8 (overlong, surrogate, past U+10FFFF)
 * in a string, a bad escape.  Grammar errors between valid bytes
 * ("{]", "tru,") are left to jansson, which sees them once the value ends.
 */
#include <assert.h>
#include <ctype.h>
#include <string.h>

#include "orchfs/core.h"

enum { SCAN_VALUE, SCAN_STR, SCAN_ESC, SCAN_HEX, SCAN_NUMBER, SCAN_LITERAL };

void orch_reqscan_init(orch_reqscan *s)
{
	memset(s, 0, sizeof(*s));
	s->state = ORCH_INCOMPLETE;
	s->line = 1;
}

static bool json_space(unsigned char c)
{
	return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

/* Bytes of a number or of true/false/null, the only bare tokens of JSON. */
static bool bare_byte(unsigned char c)
{
	return isdigit(c) || (c && strchr("-+.eEtruefalsn", c) != NULL);
}

/*
 * The scan failed at byte `c` (offset s->pos): the error is set, and every
 * later feed returns it.  The place named is where the bad token starts: the
 * string for a fault inside one, else the byte itself.
 */
static int refuse(orch_reqscan *s, unsigned char c, const char *what)
{
	bool in_str = s->mode == SCAN_STR || s->mode == SCAN_ESC || s->mode == SCAN_HEX;

	s->state = ORCH_EINVALID_JSON;
	return orch_error_set(ORCH_EINVALID_JSON, "request is not valid JSON: %s (line %zu, column %zu; byte 0x%02x "
			      "at offset %zu)", what, in_str ? s->str_line : s->line,
			      in_str ? s->str_column : s->column, c, s->pos);
}

/* The value ends after byte s->pos (or, for a bare number, before it). */
static int complete(orch_reqscan *s, size_t end)
{
	s->end = end;
	s->state = 0;
	return 0;
}

/*
 * The first byte of a UTF-8 sequence inside a string: how many continuation
 * bytes follow and the range of the first one (which excludes overlong
 * forms, surrogates and code points past U+10FFFF).  False for a byte that
 * cannot start a sequence.
 */
static bool utf8_lead(orch_reqscan *s, unsigned char c)
{
	s->utf8_lo = 0x80;
	s->utf8_hi = 0xbf;
	if (c >= 0xc2 && c <= 0xdf)
		s->utf8_left = 1;
	else if (c >= 0xe0 && c <= 0xef)
		s->utf8_left = 2;
	else if (c >= 0xf0 && c <= 0xf4)
		s->utf8_left = 3;
	else
		return false;
	if (c == 0xe0)
		s->utf8_lo = 0xa0;
	else if (c == 0xed)
		s->utf8_hi = 0x9f;
	else if (c == 0xf0)
		s->utf8_lo = 0x90;
	else if (c == 0xf4)
		s->utf8_hi = 0x8f;
	return true;
}

/* One byte inside a string (not after a backslash). */
static int in_string(orch_reqscan *s, unsigned char c)
{
	if (s->utf8_left) {
		if (c < s->utf8_lo || c > s->utf8_hi)
			return refuse(s, c, "invalid UTF-8 in a string");
		s->utf8_left--;
		s->utf8_lo = 0x80;
		s->utf8_hi = 0xbf;
		return ORCH_INCOMPLETE;
	}
	if (c == '"') {
		s->mode = SCAN_VALUE;
		return s->depth == 0 ? complete(s, s->pos + 1) : ORCH_INCOMPLETE;
	}
	if (c == '\\')
		s->mode = SCAN_ESC;
	else if (c < 0x20)
		return refuse(s, c, "a control character in a string must be escaped");
	else if (c >= 0x80 && !utf8_lead(s, c))
		return refuse(s, c, "invalid UTF-8 in a string");
	return ORCH_INCOMPLETE;
}

/* One byte between tokens, or the start of one. */
static int between(orch_reqscan *s, unsigned char c)
{
	if (json_space(c))
		return ORCH_INCOMPLETE;
	s->started = true;
	switch (c) {
	case '{':
	case '[':
		/* Too deep for any params, whatever follows: refused now, as check_limits would. */
		if (++s->depth > ORCH_DEPTH_MAX) {
			s->state = ORCH_EINVALID_PARAMS;
			return orch_error_set(ORCH_EINVALID_PARAMS, "request nests deeper than %d levels",
					      ORCH_DEPTH_MAX);
		}
		return ORCH_INCOMPLETE;
	case '}':
	case ']':
		if (s->depth == 0)
			return refuse(s, c, "a closing bracket with nothing open");
		return --s->depth == 0 ? complete(s, s->pos + 1) : ORCH_INCOMPLETE;
	case '"':
		s->mode = SCAN_STR;
		s->str_line = s->line;
		s->str_column = s->column;
		return ORCH_INCOMPLETE;
	case ',':
	case ':':
		if (s->depth == 0)
			return refuse(s, c, "a separator outside an object or array");
		return ORCH_INCOMPLETE;
	}
	if (!bare_byte(c))
		return refuse(s, c, "a byte that JSON never has outside a string");
	if (s->depth == 0) {
		/*
		 * A bare value at the top: a literal ends with its last letter;
		 * a number only at the byte after it (more digits could follow).
		 */
		if (c == '-' || isdigit(c)) {
			s->mode = SCAN_NUMBER;
		} else if (c == 't' || c == 'f' || c == 'n') {
			s->mode = SCAN_LITERAL;
			s->literal = c == 't' ? "true" : c == 'f' ? "false" : "null";
			s->literal_pos = 1;
		} else {
			return refuse(s, c, "not the start of a JSON value");
		}
	}
	return ORCH_INCOMPLETE;
}

/* One byte of a top-level bare value (number or literal). */
static int top_bare(orch_reqscan *s, unsigned char c)
{
	if (s->mode == SCAN_NUMBER) {
		if (isdigit(c) || (c && strchr("-+.eE", c)))
			return ORCH_INCOMPLETE;
		/* The number ended before this byte; what follows it is the caller's to judge. */
		return complete(s, s->pos);
	}
	if ((unsigned char)s->literal[s->literal_pos] != c)
		return refuse(s, c, "not a JSON literal (true, false or null)");
	if (s->literal[++s->literal_pos] == '\0')
		return complete(s, s->pos + 1);
	return ORCH_INCOMPLETE;
}

/* One byte: the scanner's whole transition function. */
static int step(orch_reqscan *s, unsigned char c)
{
	switch (s->mode) {
	case SCAN_STR:
		return in_string(s, c);
	case SCAN_ESC:
		if (c == 'u') {
			s->mode = SCAN_HEX;
			s->hex_left = 4;
		} else if (c && strchr("\"\\/bfnrt", c)) {
			s->mode = SCAN_STR;
		} else {
			return refuse(s, c, "invalid escape in a string");
		}
		return ORCH_INCOMPLETE;
	case SCAN_HEX:
		if (!isxdigit(c))
			return refuse(s, c, "\\u must be followed by four hex digits");
		if (--s->hex_left == 0)
			s->mode = SCAN_STR;
		return ORCH_INCOMPLETE;
	case SCAN_NUMBER:
	case SCAN_LITERAL:
		return top_bare(s, c);
	default:
		return between(s, c);
	}
}

int orch_reqscan_feed(orch_reqscan *s, const char *p, size_t n)
{
	for (size_t i = 0; i < n && s->state == ORCH_INCOMPLETE; i++) {
		unsigned char c = (unsigned char)p[i];
		if ((c & 0xc0) != 0x80) /* a character starts here (not a UTF-8 continuation byte) */
			s->column++;
		step(s, c);
		if (s->state == ORCH_INCOMPLETE) {
			s->pos++;
			if (c == '\n') {
				s->line++;
				s->column = 0;
			}
		}
	}
	return s->state;
}

bool orch_reqscan_blank(const orch_reqscan *s)
{
	return !s->started;
}

/*
 * Where a JSON error of jansson's starts, 1-based, counting characters (not
 * bytes): jansson places it at the last byte it read, the end of the token
 * it names ("near 'tru'"), so its place would point past the token's start.
 */
static void error_place(const char *buf, const json_error_t *err, int *line, int *column)
{
	const char *near = strstr(err->text, "near '");
	size_t end = (size_t)err->position, tok;

	*line = err->line;
	*column = err->column;
	if (!near)
		return;
	near += strlen("near '");
	tok = strlen(near);
	if (tok && near[tok - 1] == '\'')
		tok--;
	if (tok == 0 || tok > end || memcmp(buf + end - tok, near, tok) != 0)
		return; /* not the bytes just read (a truncated or escaped token text): keep jansson's place */
	*line = 1;
	*column = 1;
	for (size_t i = 0; i < end - tok; i++) {
		if (buf[i] == '\n') {
			(*line)++;
			*column = 1;
		} else if (((unsigned char)buf[i] & 0xc0) != 0x80) {
			(*column)++;
		}
	}
}

int orch_request_parse_scanned(const char *buf, size_t len, const orch_reqscan *s, json_t **out)
{
	json_error_t err;

	*out = NULL;
	assert(s->state == 0 && s->end <= len);
	for (size_t i = s->end; i < len; i++)
		if (!json_space((unsigned char)buf[i]))
			return orch_error_set(ORCH_EINVALID_JSON,
					      "request is not valid JSON: more after the value ends (offset %zu)", i);
	/* Duplicate keys are refused: a repeated key must never silently win. */
	*out = json_loadb(buf, s->end, JSON_DECODE_ANY | JSON_REJECT_DUPLICATES, &err);
	if (*out)
		return 0;
	int line, column;
	error_place(buf, &err, &line, &column);
	return orch_error_set(ORCH_EINVALID_JSON, "request is not valid JSON: %s (line %d, column %d)", err.text,
			      line, column);
}

int orch_request_parse(const char *buf, size_t len, json_t **out)
{
	orch_reqscan s;
	int rc;

	*out = NULL;
	orch_reqscan_init(&s);
	rc = orch_reqscan_feed(&s, buf, len);
	return rc ? rc : orch_request_parse_scanned(buf, len, &s, out);
}
