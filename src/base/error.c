/*
 * The thread-local error slot and the code tables.
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <jansson.h>
#include <pthread.h>

#include "orchfs/base.h"

static _Thread_local orch_error slot;

static const struct {
	int code;
	const char *name;
} codes[] = {
	{ORCH_EINVALID_JSON, "invalid_json"},
	{ORCH_EINVALID_PARAMS, "invalid_params"},
	{ORCH_EINVALID_STATE, "invalid_state"},
	{ORCH_ENOTFOUND, "not_found"},
	{ORCH_ECONFLICT, "conflict"},
	{ORCH_EEXISTS, "exists"},
	{ORCH_EFORBIDDEN, "forbidden"},
	{ORCH_ETOOLARGE, "too_large"},
	{ORCH_EGIT, "git"},
	{ORCH_EINTERNAL, "internal"},
};

int orch_error_set(int code, const char *fmt, ...)
{
	va_list ap;

	orch_error_clear();
	slot.code = code;
	va_start(ap, fmt);
	int n = vsnprintf(slot.message, sizeof(slot.message), fmt, ap);
	va_end(ap);
	if (n >= (int)sizeof(slot.message)) {
		/* Messages echo client values: never cut inside a UTF-8 character. */
		size_t keep = orch_utf8_prefix(slot.message, sizeof(slot.message) - 4);
		memcpy(slot.message + keep, "\xe2\x80\xa6", 4); /* "…" and NUL */
	}
	return code;
}

/*
 * The slot's details are the one thing it owns: a thread that ends (the
 * FUSE loop retires idle threads) must not take them with it unfreed.
 */
static pthread_key_t slot_key;
static pthread_once_t slot_key_once = PTHREAD_ONCE_INIT;

static void slot_exit(void *arg)
{
	orch_error *e = arg;

	json_decref(e->details);
	e->details = NULL;
}

static void slot_key_make(void)
{
	pthread_key_create(&slot_key, slot_exit);
}

void orch_error_details(json_t *details)
{
	json_decref(slot.details);
	slot.details = details;
	if (details) {
		pthread_once(&slot_key_once, slot_key_make);
		pthread_setspecific(slot_key, &slot);
	}
}

void orch_error_detail(const char *key, json_t *value)
{
	json_t *d = json_object();

	json_object_set_new(d, key, value);
	orch_error_details(d);
}

void orch_error_detail_add(const char *key, json_t *value)
{
	if (!slot.details) {
		orch_error_detail(key, value);
		return;
	}
	json_object_set_new(slot.details, key, value);
}

const orch_error *orch_error_last(void)
{
	return &slot;
}

void orch_error_clear(void)
{
	json_decref(slot.details);
	slot.details = NULL;
	slot.code = 0;
	slot.message[0] = '\0';
}

const char *orch_error_name(int code)
{
	for (size_t i = 0; i < sizeof(codes) / sizeof(codes[0]); i++)
		if (codes[i].code == code)
			return codes[i].name;
	return "internal";
}

int orch_error_from_name(const char *name)
{
	for (size_t i = 0; i < sizeof(codes) / sizeof(codes[0]); i++)
		if (strcmp(codes[i].name, name) == 0)
			return codes[i].code;
	return 0;
}
