/*
 * orchfs error codes and the thread-local error slot.
 *
 * Every core function returns 0 on success or one of the negative codes
 * below.  The function that detects a fault records a message (and optional
 * structured details) with orch_error_set(); callers propagate the code
 * without touching the slot, so the message that reaches the client is the
 * one written where the fault was found.
 */
#ifndef ORCHFS_ERROR_H
#define ORCHFS_ERROR_H

#include <jansson.h>

typedef enum {
	ORCH_OK = 0,
	ORCH_EINVALID_JSON = -1,
	ORCH_EINVALID_PARAMS = -2,
	ORCH_EINVALID_STATE = -3,
	ORCH_ENOTFOUND = -4,
	ORCH_ECONFLICT = -5,
	ORCH_EEXISTS = -6,
	ORCH_EFORBIDDEN = -7,
	ORCH_ETOOLARGE = -8,
	ORCH_EGIT = -9,
	ORCH_EINTERNAL = -10,
} orch_error_code;

typedef struct {
	int code;
	char message[1024];
	json_t *details; /* object or NULL; owned by the slot */
} orch_error;

/* Record an error and return `code`, so `return orch_error_set(...)` reads well. */
int orch_error_set(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Attach structured details (a JSON object, reference stolen) to the current error. */
void orch_error_details(json_t *details);

/* Shorthand: details = {key: value}, value reference stolen. */
void orch_error_detail(const char *key, json_t *value);

/* Add key: value (reference stolen) to the current error's details, keeping the keys it has. */
void orch_error_detail_add(const char *key, json_t *value);

const orch_error *orch_error_last(void);
void orch_error_clear(void);

/* The wire name of a code ("not_found") and the reverse lookup (0 if unknown). */
const char *orch_error_name(int code);
int orch_error_from_name(const char *name);

#endif
