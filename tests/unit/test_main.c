#include "test.h"
int main(void) { return test_run_all(); }
