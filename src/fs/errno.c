/*
 * The one place core error codes become errno: a ctl write, a read of the
 * tree, a heartbeat.  (SPEC section 3 lists the mapping.)
 */
#include <errno.h>

#include "fs.h"

int fs_errno(int code)
{
	switch (code) {
	case ORCH_OK:
		return 0;
	case ORCH_EINVALID_JSON:
	case ORCH_EINVALID_PARAMS:
	case ORCH_EINVALID_STATE:
		return EINVAL;
	case ORCH_ENOTFOUND:
		return ENOENT;
	case ORCH_ECONFLICT:
		return EBUSY;
	case ORCH_EEXISTS:
		return EEXIST;
	case ORCH_EFORBIDDEN:
		return EPERM;
	case ORCH_ETOOLARGE:
		return EFBIG;
	case ORCH_EGIT:
	case ORCH_EINTERNAL:
	default:
		return EIO;
	}
}
