/*
 * The scheduler: should a piece of work get its own worktree or share the
 * session's?  A pure function of the inputs, scored exactly as the
 * reference does.
 */
#include <stdint.h>
#include <stdio.h>

#include "orchfs/core.h"
#include "groups.h"

#define WORKTREE_THRESHOLD 12

/* a + b, saturating at INT64_MAX (both are non-negative). */
static int64_t sat_add(int64_t a, int64_t b)
{
	int64_t r;

	return __builtin_add_overflow(a, b, &r) ? INT64_MAX : r;
}

static int64_t sat_mul(int64_t a, int64_t b)
{
	int64_t r;

	return __builtin_mul_overflow(a, b, &r) ? INT64_MAX : r;
}

/*
 * Score = changed_files + ceil(estimate_minutes / 15) + 3 risk
 * + 2 parallel_workers + 2 conflicting_paths, each term only when its input
 * is positive; "worktree" at 12 or more.  One reason per contributing term,
 * in that order.  Arithmetic saturates instead of wrapping, so absurd
 * inputs still give "worktree" rather than undefined behaviour.
 */
static int decide_worktree(orch_ctx *ctx, json_t *p, json_t **result)
{
	static const struct {
		const char *name;
		int64_t weight; /* 0: ceil(n / 15) */
		bool show_points;
	} terms[] = {
		{"changed_files", 1, false},
		{"estimate_minutes", 0, true},
		{"risk", 3, true},
		{"parallel_workers", 2, true},
		{"conflicting_paths", 2, true},
	};
	json_t *reasons = json_array();
	int64_t score = 0;
	char buf[96];

	(void)ctx;
	for (size_t i = 0; i < sizeof(terms) / sizeof(terms[0]); i++) {
		int64_t n = orch_param_int(p, terms[i].name, 0), pts;
		if (n <= 0)
			continue;
		pts = terms[i].weight ? sat_mul(n, terms[i].weight) : n / 15 + (n % 15 != 0);
		score = sat_add(score, pts);
		if (terms[i].show_points)
			snprintf(buf, sizeof(buf), "%s=%lld(+%lld)", terms[i].name, (long long)n, (long long)pts);
		else
			snprintf(buf, sizeof(buf), "%s=%lld", terms[i].name, (long long)n);
		json_array_append_new(reasons, json_string(buf));
	}
	*result = json_pack("{s:s, s:I, s:o}", "mode", score >= WORKTREE_THRESHOLD ? "worktree" : "shared",
			    "score", (json_int_t)score, "reasons", reasons);
	return 0;
}

static const orch_param decide_params[] = {
	{"changed_files", ORCH_P_INT, 0, "Files the work will change (+1 each; default 0).", NULL},
	{"estimate_minutes", ORCH_P_INT, 0, "Estimated minutes (+1 per started 15 minutes; default 0).", NULL},
	{"risk", ORCH_P_INT, 0, "Risk level (+3 each; default 0).", NULL},
	{"parallel_workers", ORCH_P_INT, 0, "Agents working in parallel (+2 each; default 0).", NULL},
	{"conflicting_paths", ORCH_P_INT, 0, "How many paths others are touching, a count (+2 each; default 0).",
	 NULL},
	{NULL, 0, 0, NULL, NULL},
};

const orch_method orch_scheduler_methods[] = {
	{"scheduler.decide_worktree", decide_worktree, 0, decide_params,
	 "Decide whether work needs its own worktree: score = changed_files + ceil(estimate_minutes/15) "
	 "+ 3 risk + 2 parallel_workers + 2 conflicting_paths (negative inputs count 0); worktree at 12 "
	 "or more. Changes nothing.",
	 "{mode: \"shared\" | \"worktree\", score, reasons: [\"changed_files=6\", \"estimate_minutes=60(+4)\", ...]}",
	 "{\"changed_files\": 6, \"estimate_minutes\": 60, \"risk\": 2, \"parallel_workers\": 2, "
	 "\"conflicting_paths\": 2}",
	 "none beyond validation (every input is an integer)."},
	{NULL, NULL, 0, NULL, NULL, NULL, NULL, NULL},
};
