/*
 * Writes the fuzzer's seed corpus: one file per method, "<method>\n",
 * a split byte, and the method's example request (the same text its usage
 * shows).  Run by hand when methods change: build/fuzz-seeds tests/fuzz/corpus
 */
#include <stdio.h>
#include <string.h>

#include "orchfs/core.h"

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: fuzz-seeds DIR\n");
		return 2;
	}
	for (size_t i = 0; i < orch_method_count(); i++) {
		const orch_method *m = orch_method_at(i);
		char path[4096];
		/* Two seeds per method: one write, and small pieces (the split byte picks the piece size). */
		for (int split = 0; split < 2; split++) {
			snprintf(path, sizeof(path), "%s/%s.%d", argv[1], m->name, split);
			FILE *f = fopen(path, "w");
			if (!f) {
				perror(path);
				return 1;
			}
			fprintf(f, "%s\n%c%s", m->name, split ? 3 : 0, m->example ? m->example : "{}");
			fclose(f);
		}
	}
	return 0;
}
