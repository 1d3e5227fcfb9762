/*
 * State files as immutable inodes, so the kernel's page cache can serve
 * them and every open is still one snapshot.
 *
 * A cacheable file's inode number carries a version (fs_ino's `sub` bits):
 * one inode is one rendering, never anything else.  The kernel may keep its
 * pages and attributes as long as it likes (keep_cache, long attribute
 * timeouts), and a descriptor open on it reads that rendering to the end,
 * whatever happens meanwhile.  When the file's content changes, the name
 * moves to a new version: the daemon drops the kernel's dentry
 * (fuse_lowlevel_notify_inval_entry) and the next lookup answers with the
 * new inode number.  The old inode lives on, unchanged, until the kernel
 * forgets it.
 *
 * Each file has an entry, keyed by its version-less inode number: the last
 * rendering (a shared immutable snapshot with its hash, size and mtime),
 * whether it is still valid, its current version, and how many lookups of
 * the current version the kernel holds.  Versions the name has moved away
 * from, and that the kernel still holds, are kept as "retired" records
 * (size and mtime) until forgotten.
 *
 * Changes reach the entries two ways.  Calls of this daemon: the writer lane
 * reports the rows it committed (fs_cache_committed) and the entries that
 * show them are invalidated, their dentries dropped before the call replies.
 * Other processes (a second daemon, `orchfs call`): every lookup, getattr,
 * open and readdir first asks its connection whether anyone else committed
 * (PRAGMA data_version); if the database moved in a way this daemon did not
 * do itself, every entry is invalidated and the dentries are dropped by the
 * notifier thread.  An invalid entry is rendered again at its next use; only
 * a rendering that differs moves the name to a new version.
 *
 * All state below is under `mu`, except the snapshots' reference counts
 * (atomic), publish_mu's turn and what fs_cache_start sets before the FUSE
 * threads start (marked as such).
 */
#define FUSE_USE_VERSION FUSE_MAKE_VERSION(3, 14)
#include <errno.h>
#include <fcntl.h>
#include <fuse_lowlevel.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/mman.h>
#include <unistd.h>

#include "fs.h"

#define SNAP_BUDGET (16u << 20) /* bytes of renderings kept for reuse (descriptors hold their own) */
#define VERSIONS 256            /* versions an inode number can carry (fs_ino's sub bits) */
#define RETIRED_BUCKETS 1024
#define DQLITE_WATCH_MS 25      /* how often the watcher asks a dqlite leader whether another host committed */
#define WATCH_MS 20             /* the watcher looks at most this often (another process's change: stat lag) */

typedef struct {
	uint64_t ino;       /* version-less inode number; 0: empty slot */
	fs_snap *snap;      /* last rendering; NULL once dropped for memory */
	uint64_t hash;      /* of the last rendering (kept when snap is dropped) */
	size_t len;
	int64_t mtime;
	bool rendered;      /* hash, len and mtime are set */
	bool valid;         /* no change since the rendering could have touched it */
	bool dentry;        /* the kernel may hold a dentry naming the current version */
	bool drop_queued;   /* its drop is queued for the notifier, not done yet */
	bool exhausted;     /* no free version to move to: served with direct I/O until one is */
	unsigned version;   /* the current version, < VERSIONS */
	uint64_t generation; /* FUSE generation of the current version: bumped with it, never reused */
	uint64_t nlookup;   /* lookups of the current version the kernel holds */
} entry;

typedef struct retired {
	struct retired *next;
	uint64_t ino;       /* with its version */
	size_t len;
	int64_t mtime;
	uint64_t nlookup;
	/*
	 * Its rendering, when this daemon's writer retired it: an open that
	 * walked the old name while the write was in flight is concurrent
	 * with it and gets this version whole.  NULL when another process's
	 * change retired it (that open must see the change: ESTALE, and the
	 * kernel looks the name up again) or over the budget.
	 */
	fs_snap *snap;
} retired;

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static entry *tab;
static size_t cap, used;
static size_t snap_bytes;      /* bytes of snapshots referenced by tab */
static retired *graveyard[RETIRED_BUCKETS];
static size_t retired_bytes;   /* of retired snapshots, at most SNAP_BUDGET */
static uint64_t seq;           /* bumped by every invalidation */
static int64_t known_version;  /* mirror_meta as this daemon last accounted for it */
static int64_t known_updated;
static int64_t coming_version; /* what this daemon's writer is committing right now */
static int64_t coming_updated;
static bool committing;        /* between its announcement and fs_cache_committed */
static bool check_mode;        /* ORCHFS_CACHE_CHECK: verify every hit (tests); set before the threads */

/* Dentries to drop (version-less inode numbers of the files), and the thread that drops them. */
static pthread_cond_t qcond = PTHREAD_COND_INITIALIZER;
static uint64_t *queue;
static size_t qn, qcap;
static bool stopping;
/* Thread handles: written by fs_cache_start before the FUSE loop and by fs_cache_stop after it. */
static pthread_t notifier;
static bool notifier_started;
static struct fuse_session *session; /* set before the loop starts */
static bool sync_notify;             /* the writer's drops are done before its calls reply (not -s) */

/* Drops found by the writer lane, published after writer_mu is released (under mu). */
static uint64_t *pending;
static size_t npending, cappending;
/* One publisher at a time: a call returns only once every drop found up to its commit is done. */
static pthread_mutex_t publish_mu = PTHREAD_MUTEX_INITIALIZER;

/*
 * The watcher: notices other processes' commits even when no request comes
 * to ask.  Set up by fs_cache_start before the loop; only the watcher
 * thread reads watch_fd and wake_pipe[0]; fs_cache_stop closes them after
 * joining it.
 */
static pthread_t watcher;
static bool watcher_started;
static int watch_fd = -1;   /* inotify on the state directory */
static int wake_pipe[2] = {-1, -1};

/* ---- snapshots ---- */

static uint64_t fnv1a(const char *p, size_t n)
{
	uint64_t h = 1469598103934665603ULL;

	for (size_t i = 0; i < n; i++)
		h = (h ^ (unsigned char)p[i]) * 1099511628211ULL;
	return h;
}

fs_snap *fs_snap_new(char *data, size_t len, int64_t mtime, bool mapped)
{
	fs_snap *s = orch_xrealloc(NULL, sizeof(*s));

	atomic_init(&s->refs, 1);
	s->data = data;
	s->len = len;
	s->mapped = mapped;
	s->hash = fnv1a(data, len);
	s->mtime = mtime;
	return s;
}

fs_snap *fs_snap_ref(fs_snap *s)
{
	atomic_fetch_add(&s->refs, 1);
	return s;
}

void fs_snap_unref(fs_snap *s)
{
	if (s && atomic_fetch_sub(&s->refs, 1) == 1) {
		if (s->mapped)
			munmap(s->data, s->len);
		else
			free(s->data);
		free(s);
	}
}

/* The daemon's memory a snapshot holds (a mapped file's pages are the page cache's). */
static size_t heap_len(const fs_snap *s)
{
	return s && !s->mapped ? s->len : 0;
}

/* ---- the tables ---- */

static uint64_t base_of(uint64_t ino)
{
	fs_node n = fs_node_of(ino);

	n.sub = 0;
	return fs_ino(n);
}

static uint64_t with_version(uint64_t base, unsigned version)
{
	fs_node n = fs_node_of(base);

	n.sub = version;
	return fs_ino(n);
}

static entry *slot(uint64_t ino)
{
	size_t h = (size_t)((ino * 0x9e3779b97f4a7c15ULL) >> 20) & (cap - 1);

	while (tab[h].ino && tab[h].ino != ino)
		h = (h + 1) & (cap - 1);
	return &tab[h];
}

static entry *find(uint64_t base, bool create)
{
	if (!cap) {
		if (!create)
			return NULL;
		cap = 1024;
		tab = calloc(cap, sizeof(*tab));
	}
	entry *e = slot(base);
	if (e->ino || !create)
		return e->ino ? e : NULL;
	if ((used + 1) * 10 > cap * 7) {
		entry *old = tab;
		size_t oldcap = cap;
		cap *= 2;
		tab = calloc(cap, sizeof(*tab));
		for (size_t i = 0; i < oldcap; i++)
			if (old[i].ino)
				*slot(old[i].ino) = old[i];
		free(old);
		e = slot(base);
	}
	used++;
	memset(e, 0, sizeof(*e));
	e->ino = base;
	e->generation = 1;
	return e;
}

static retired **grave(uint64_t ino)
{
	retired **r = &graveyard[(ino * 0x9e3779b97f4a7c15ULL) >> 54 & (RETIRED_BUCKETS - 1)];

	while (*r && (*r)->ino != ino)
		r = &(*r)->next;
	return r;
}

static void set_snap(entry *e, fs_snap *s)
{
	if (e->snap) {
		snap_bytes -= heap_len(e->snap);
		fs_snap_unref(e->snap);
	}
	e->snap = s ? fs_snap_ref(s) : NULL;
	snap_bytes += heap_len(s);
	/* Over budget: drop other renderings (the metadata stays; a drop costs one render). */
	for (size_t i = 0; snap_bytes > SNAP_BUDGET && i < cap; i++) {
		if (tab[i].ino && tab[i].snap && &tab[i] != e) {
			snap_bytes -= heap_len(tab[i].snap);
			fs_snap_unref(tab[i].snap);
			tab[i].snap = NULL;
		}
	}
}

static bool bump(entry *e, bool keep_snap);

/* ---- dropping dentries ---- */

/* Queue the entry's dentry for the notifier (list NULL) or for the caller to drop. */
static void drop_dentry(entry *e, uint64_t **list, size_t *n, size_t *listcap)
{
	/* A drop the notifier has not done yet is done by the writer too: its call must not return first. */
	if (!e->dentry && !(list && e->drop_queued))
		return;
	e->dentry = false;
	if (!list) {
		e->drop_queued = true;
		if (qn == qcap) {
			qcap = qcap ? qcap * 2 : 64;
			queue = orch_xrealloc(queue, qcap * sizeof(*queue));
		}
		queue[qn++] = e->ino;
		pthread_cond_signal(&qcond);
		return;
	}
	if (*n == *listcap) {
		*listcap = *listcap ? *listcap * 2 : 16;
		*list = orch_xrealloc(*list, *listcap * sizeof(**list));
	}
	(*list)[(*n)++] = e->ino;
}

/*
 * The rows `e` shows may have changed: render again before serving it.
 * A version the kernel holds is frozen as it is (retired), and the name is
 * looked up again, to the new one.
 */
static void invalidate(entry *e, uint64_t **list, size_t *n, size_t *listcap)
{
	e->valid = false;
	/* The writer's drops (list) are done before its calls reply: keep the old rendering for opens in flight. */
	if (e->nlookup && bump(e, list != NULL))
		e->dentry = true; /* the name must move even if no lookup was counted yet */
	drop_dentry(e, list, n, listcap);
}

static void invalidate_all(uint64_t **list, size_t *n, size_t *listcap)
{
	seq++;
	for (size_t i = 0; i < cap; i++)
		if (tab[i].ino)
			invalidate(&tab[i], list, n, listcap);
}

/* Tell the kernel to forget the names of these files (version-less inode numbers). */
static void notify(const uint64_t *bases, size_t n)
{
	for (size_t i = 0; i < n && session; i++) {
		fs_node parent;
		char name[64];
		if (fs_node_parent_name(fs_node_of(bases[i]), &parent, name, sizeof(name)))
			fuse_lowlevel_notify_inval_entry(session, fs_ino(parent), name, strlen(name));
	}
	pthread_mutex_lock(&mu);
	for (size_t i = 0; i < n; i++) {
		entry *e = find(bases[i], false);
		if (e && !e->dentry)
			e->drop_queued = false;
	}
	pthread_mutex_unlock(&mu);
}

/*
 * The notifier: dentries found stale on reader lanes are dropped from here,
 * never from a thread serving a lookup (the kernel holds the directory's
 * lock for it and the invalidation needs that lock too).
 */
static void *notifier_main(void *arg)
{
	(void)arg;
	pthread_mutex_lock(&mu);
	while (!stopping) {
		if (!qn) {
			pthread_cond_wait(&qcond, &mu);
			continue;
		}
		uint64_t *batch = queue;
		size_t n = qn;
		queue = NULL;
		qn = qcap = 0;
		pthread_mutex_unlock(&mu);
		notify(batch, n);
		free(batch);
		pthread_mutex_lock(&mu);
	}
	pthread_mutex_unlock(&mu);
	return NULL;
}

/*
 * The watcher: a kernel that holds a file's attributes and dentry asks
 * nothing before a `stat`, so a commit of another process must be noticed
 * without a request.  SQLite appends every commit to state.db-wal: an
 * inotify event on it (or, failing that, once a second) makes the watcher
 * look, on a read connection of its own, as every request does.  With a
 * dqlite store other hosts' commits leave no trace here: the watcher asks
 * the leader every DQLITE_WATCH_MS instead (PRAGMA data_version, one round
 * trip), and follows the events table from there (account).
 */
static void *watcher_main(void *arg)
{
	orch_env *env = arg;
	char buf[4096];
	orch_ctx ctx;
	orch_store *st;

	if (orch_env_reader(env, &st) != 0) {
		orch_log("cannot watch for other processes' changes: %s", orch_error_last()->message);
		orch_error_clear();
		return NULL;
	}
	orch_ctx_init(&ctx, env, st, NULL);
	int timeout = orch_store_is_dqlite(env->db_path) ? DQLITE_WATCH_MS : 1000;
	for (;;) {
		struct pollfd fds[2] = {{watch_fd, POLLIN, 0}, {wake_pipe[0], POLLIN, 0}};
		int n = poll(fds, 2, timeout);
		if (n > 0 && (fds[1].revents & POLLIN))
			break;
		if (n > 0 && (fds[0].revents & POLLIN) && read(watch_fd, buf, sizeof(buf)) < 0 && errno != EAGAIN)
			break;
		fs_cache_sync(&ctx);
		/*
		 * A commit writes the WAL several times, and this daemon's own
		 * commits wake us too: look at most every WATCH_MS, so a burst of
		 * writes costs a few wake-ups, not one per page.
		 */
		if (n > 0)
			usleep(WATCH_MS * 1000);
	}
	orch_env_reader_put(env, st);
	return NULL;
}

void fs_cache_start(struct fuse_session *se, orch_env *env, bool drop_synchronously)
{
	const char *check = getenv("ORCHFS_CACHE_CHECK");

	check_mode = check && *check && strcmp(check, "0") != 0;
	session = se;
	sync_notify = drop_synchronously;
	if (pthread_create(&notifier, NULL, notifier_main, NULL) == 0)
		notifier_started = true;
	watch_fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
	if (watch_fd >= 0)
		inotify_add_watch(watch_fd, env->state_dir, IN_MODIFY | IN_CREATE | IN_MOVED_TO);
	if (pipe2(wake_pipe, O_CLOEXEC) == 0 && pthread_create(&watcher, NULL, watcher_main, env) == 0)
		watcher_started = true;
}

void fs_cache_stop(void)
{
	if (watcher_started && write(wake_pipe[1], "", 1) == 1)
		pthread_join(watcher, NULL);
	watcher_started = false;
	for (int i = 0; i < 2; i++) {
		if (wake_pipe[i] >= 0)
			close(wake_pipe[i]);
		wake_pipe[i] = -1;
	}
	if (watch_fd >= 0)
		close(watch_fd);
	watch_fd = -1;
	pthread_mutex_lock(&mu);
	stopping = true;
	pthread_cond_signal(&qcond);
	pthread_mutex_unlock(&mu);
	if (notifier_started)
		pthread_join(notifier, NULL);
	notifier_started = false;
	session = NULL;
	for (size_t i = 0; i < cap; i++)
		if (tab[i].snap)
			fs_snap_unref(tab[i].snap);
	for (size_t b = 0; b < RETIRED_BUCKETS; b++) {
		while (graveyard[b]) {
			retired *r = graveyard[b];
			graveyard[b] = r->next;
			fs_snap_unref(r->snap);
			free(r);
		}
	}
	free(tab);
	free(queue);
	free(pending);
	tab = NULL;
	queue = NULL;
	pending = NULL;
	cap = used = qn = qcap = snap_bytes = npending = cappending = retired_bytes = 0;
	stopping = false;
}

/* ---- change detection ---- */

/* Invalidate the entry of node (kind, id) if there is one. */
static void invalidate_node(fs_kind kind, int64_t id, uint64_t **list, size_t *n, size_t *listcap)
{
	entry *e = find(fs_ino((fs_node){kind, 0, id}), false);

	if (e)
		invalidate(e, list, n, listcap);
}

/*
 * Invalidate what the committed rows show (under mu).  The table's rows
 * say which kinds show which tables (fs_kind_depends): a kind that shows
 * one row per node is found by its id; only a kind that shows any row of
 * a changed table makes the whole table be walked, and then only its
 * entries are looked at.
 */
static void invalidate_changed(const orch_change *changes, size_t n, uint64_t **list, size_t *nlist,
			       size_t *listcap)
{
	/* Which kinds show a table, worked out once per table of the batch (names are interned). */
	struct {
		const char *table;
		uint64_t any, row;
	} deps[32];
	size_t ndeps = 0;
	uint64_t walk = 0; /* kinds to walk */

	for (size_t c = 0; c < n; c++) {
		size_t t = 0;
		while (t < ndeps && deps[t].table != changes[c].table)
			t++;
		if (t == ndeps) {
			if (ndeps == sizeof(deps) / sizeof(deps[0])) {
				walk = ~0ULL; /* more tables than expected: look at everything */
				break;
			}
			deps[t].table = changes[c].table;
			deps[t].any = deps[t].row = 0;
			for (int k = 1; k < K_KIND_COUNT; k++) {
				fs_dep d = fs_kind_depends((fs_kind)k, changes[c].table);
				if (d == FS_DEP_ANY)
					deps[t].any |= 1ULL << k;
				else if (d == FS_DEP_ROW)
					deps[t].row |= 1ULL << k;
			}
			walk |= deps[t].any;
			ndeps++;
		}
		for (int k = 1; deps[t].row && k < K_KIND_COUNT; k++)
			if (deps[t].row & (1ULL << k))
				invalidate_node((fs_kind)k, changes[c].rowid, list, nlist, listcap);
	}
	for (size_t i = 0; walk && i < cap; i++)
		if (tab[i].ino && (walk & (1ULL << fs_node_of(tab[i].ino).kind)))
			invalidate(&tab[i], list, nlist, listcap);
}

/*
 * Writer lane, under writer_mu, after a commit: invalidate what the rows
 * show; the dentries to drop wait in `pending` for fs_cache_publish.
 */
void fs_cache_committed(void *arg, const orch_change *changes, size_t n)
{
	orch_env *env = arg;
	int64_t v = 0, t = 0;

	/*
	 * The row first: a commit of another process after it is then seen as
	 * elsewhere.  Without a state to read (a dqlite leader lost: no request
	 * is sent, each would wait for a leader) nothing is known: invalidate
	 * everything, and let the watcher account for the state when it can.
	 */
	bool elsewhere = true;
	bool known = !orch_store_lost(env->writer) && orch_meta_read_elsewhere(env->writer, &v, &t, &elsewhere) == 0;
	elsewhere = elsewhere || !known;
	orch_error_clear();
	pthread_mutex_lock(&mu);
	if (elsewhere) {
		/* Another process committed too since the last look: no telling what. */
		invalidate_all(&pending, &npending, &cappending);
	} else if (n) {
		seq++;
		invalidate_changed(changes, n, &pending, &npending, &cappending);
	}
	if (known) {
		known_version = v;
		known_updated = t;
	} else {
		/* Whether it committed is unknown: if it did, the watcher must take that state for news. */
		coming_version = coming_updated = -1;
	}
	committing = false;
	pthread_mutex_unlock(&mu);
	/* After the COMMIT: blocked readers of events, and calls of wait, look now. */
	if (known)
		fs_events_advance(v);
}

void fs_cache_committing(void *arg, int64_t v, int64_t t)
{
	(void)arg;
	pthread_mutex_lock(&mu);
	coming_version = v;
	coming_updated = t;
	committing = true;
	pthread_mutex_unlock(&mu);
}

/*
 * After writer_mu is released, before the calls reply: drop the dentries.
 * The kernel takes the directory's lock for it, which a lookup in flight
 * holds while it waits for a daemon thread: so never under writer_mu, and
 * with one thread (-s) by the notifier instead (a write then returns
 * before its names have moved; -s is for debugging).
 */
void fs_cache_publish(void *arg)
{
	uint64_t *list;
	size_t n;

	(void)arg;
	pthread_mutex_lock(&publish_mu);
	pthread_mutex_lock(&mu);
	list = pending;
	n = npending;
	pending = NULL;
	npending = cappending = 0;
	if (!sync_notify && n) {
		for (size_t i = 0; i < n; i++) {
			entry *e = find(list[i], false);
			if (e) {
				e->dentry = true;
				drop_dentry(e, NULL, NULL, NULL);
			}
		}
		free(list);
		list = NULL;
		n = 0;
	}
	pthread_mutex_unlock(&mu);
	notify(list, n);
	free(list);
	pthread_mutex_unlock(&publish_mu);
}

/*
 * Account for the database state (v, t) read on `st`: if it is not the
 * one last accounted for, invalidate what the events since then name (the
 * rows another process's or host's calls changed), or everything when they
 * cannot say (see orch_events_changes).
 */
static void account(orch_store *st, int64_t v, int64_t t)
{
	orch_change *changes = NULL;
	size_t n = 0;
	bool complete = false;

	pthread_mutex_lock(&mu);
	int64_t from = known_version, from_t = known_updated;
	pthread_mutex_unlock(&mu);
	/* Read outside mu (a round trip to the leader with dqlite); used only if nothing moved meanwhile. */
	if (v > from && orch_events_changes(st, from, v, &changes, &n, &complete) != 0) {
		orch_error_clear();
		complete = false;
	}
	pthread_mutex_lock(&mu);
	/*
	 * News is a state past the last one accounted for (db_version and
	 * updated_at only grow; a state read before this daemon's last commit
	 * is not news), and not this daemon's own commit seen before its
	 * writer got to fs_cache_committed.
	 */
	bool newer = v > known_version || (v == known_version && t > known_updated);
	if (newer && (v != coming_version || t != coming_updated)) {
		if (complete && v > from && known_version == from && known_updated == from_t) {
			static const orch_change meta = {"mirror_meta", 1};
			seq++;
			invalidate_changed(changes, n, NULL, NULL, NULL);
			invalidate_changed(&meta, 1, NULL, NULL, NULL);
		} else {
			invalidate_all(NULL, NULL, NULL);
		}
		known_version = v;
		known_updated = t;
	}
	pthread_mutex_unlock(&mu);
	free(changes);
	/* Another process's commit (or this daemon's, seen early): visible now, so readers of events may go on. */
	if (newer)
		fs_events_advance(v);
}

void fs_cache_sync(orch_ctx *ctx)
{
	int64_t v = 0, t = 0;

	if (!orch_store_changed_elsewhere(ctx->store) || orch_meta_read(ctx->store, &v, &t) != 0) {
		orch_error_clear();
		return;
	}
	account(ctx->store, v, t);
}

int64_t fs_cache_db_mtime(void)
{
	pthread_mutex_lock(&mu);
	int64_t t = known_updated;
	pthread_mutex_unlock(&mu);
	return t;
}

/* ---- versions ---- */

/*
 * Move the name of `e` to a new version; the current one is retired while
 * the kernel holds it.  False when every version is still held (then the
 * file is served with direct I/O until one is free).
 */
static bool bump(entry *e, bool keep_snap)
{
	uint64_t old = with_version(e->ino, e->version);
	unsigned next = e->version;

	/* Skip versions the kernel still holds as retired. */
	for (unsigned i = 1; i < VERSIONS; i++) {
		unsigned v = (e->version + i) % VERSIONS;
		if (!*grave(with_version(e->ino, v))) {
			next = v;
			break;
		}
	}
	if (next == e->version) {
		e->exhausted = true;
		return false;
	}
	if (e->nlookup) {
		retired *r = orch_xrealloc(NULL, sizeof(*r));
		bool keep = keep_snap && e->snap && e->snap->hash == e->hash &&
			    retired_bytes + heap_len(e->snap) <= SNAP_BUDGET;
		*r = (retired){*grave(old), old, e->len, e->mtime, e->nlookup, keep ? fs_snap_ref(e->snap) : NULL};
		if (keep)
			retired_bytes += heap_len(e->snap);
		*grave(old) = r;
	}
	e->version = next;
	e->generation++;
	e->nlookup = 0;
	e->exhausted = false;
	return true;
}

uint64_t fs_cache_ino(fs_node n, uint64_t *generation)
{
	uint64_t base;
	entry *e;

	if (generation)
		*generation = 0;
	if (!fs_node_cached(n))
		return fs_ino(n);
	n.sub = 0;
	base = fs_ino(n);
	pthread_mutex_lock(&mu);
	e = find(base, false);
	uint64_t ino = e ? with_version(base, e->version) : base;
	if (generation)
		*generation = e ? e->generation : 1;
	pthread_mutex_unlock(&mu);
	return ino;
}

int fs_cache_version(uint64_t ino, size_t *len, int64_t *mtime)
{
	fs_node n = fs_node_of(ino);
	int rc = FS_VERSION_CURRENT;

	if (!fs_node_cached(n))
		return FS_VERSION_CURRENT;
	pthread_mutex_lock(&mu);
	entry *e = find(base_of(ino), false);
	if (!e || with_version(e->ino, e->version) != ino) {
		retired *r = *grave(ino);
		if (r) {
			*len = r->len;
			*mtime = r->mtime;
			rc = FS_VERSION_RETIRED;
		} else {
			rc = e || n.sub ? FS_VERSION_GONE : FS_VERSION_CURRENT;
		}
	}
	pthread_mutex_unlock(&mu);
	return rc;
}

fs_snap *fs_cache_retired_snap(uint64_t ino)
{
	pthread_mutex_lock(&mu);
	retired *r = *grave(ino);
	fs_snap *s = r && r->snap ? fs_snap_ref(r->snap) : NULL;
	pthread_mutex_unlock(&mu);
	return s;
}

bool fs_cache_looked_up(uint64_t ino, size_t len, int64_t mtime, bool force)
{
	bool ok = true;

	if (!fs_node_cached(fs_node_of(ino)))
		return true;
	pthread_mutex_lock(&mu);
	entry *e = find(base_of(ino), true);
	if (with_version(e->ino, e->version) == ino) {
		/*
		 * A change committed while this lookup rendered: its attributes
		 * would sit in the kernel under the current version.  Render
		 * again (the caller) rather than register them.
		 */
		ok = force || (e->valid && e->len == len && e->mtime == mtime);
		if (ok) {
			e->nlookup++;
			e->dentry = true;
		}
	} else if (force) {
		/* The name moved on while this lookup was answered: the kernel holds a retired version. */
		retired **at = grave(ino);
		if (!*at) {
			*at = orch_xrealloc(NULL, sizeof(**at));
			**at = (retired){NULL, ino, len, mtime, 0, NULL};
		}
		(*at)->nlookup++;
	} else {
		ok = false;
	}
	pthread_mutex_unlock(&mu);
	return ok;
}

void fs_cache_forget(uint64_t ino, uint64_t nlookup)
{
	if (!fs_node_cached(fs_node_of(ino)))
		return;
	pthread_mutex_lock(&mu);
	entry *e = find(base_of(ino), false);
	if (e && with_version(e->ino, e->version) == ino) {
		e->nlookup = e->nlookup > nlookup ? e->nlookup - nlookup : 0;
	} else {
		retired **at = grave(ino), *r = *at;
		if (r && (r->nlookup = r->nlookup > nlookup ? r->nlookup - nlookup : 0) == 0) {
			*at = r->next;
			retired_bytes -= heap_len(r->snap);
			fs_snap_unref(r->snap);
			free(r);
		}
	}
	pthread_mutex_unlock(&mu);
}

/* ---- renderings ---- */

/* The mtime of a new rendering: its own newest timestamp when that moved, else the snapshot's time. */
static int64_t next_mtime(const entry *e, bool fresh, int64_t stamp, int64_t snapshot_at)
{
	int64_t m;

	if (fresh)
		return stamp > 0 ? stamp : snapshot_at;
	m = stamp > e->mtime ? stamp : snapshot_at;
	return m > e->mtime ? m : e->mtime + 1;
}

/*
 * Check mode: a hit must equal a fresh rendering of the same database
 * state; report it loudly otherwise (the tests fail on "WARNING").  Only
 * when nothing moved: no invalidation since the hit (s0), and no commit of
 * this daemon between its COMMIT and its invalidation (`committing`:
 * serving the old rendering then is right, the write has not returned).
 */
static void verify(orch_ctx *ctx, fs_node n, const fs_snap *s, uint64_t s0)
{
	fs_rendering r;

	if (fs_render(ctx, n, &r) != 0) {
		orch_error_clear();
		return;
	}
	pthread_mutex_lock(&mu);
	bool same_state = s0 == seq && !committing;
	pthread_mutex_unlock(&mu);
	if (same_state && !orch_store_changed_elsewhere(ctx->store) &&
	    (r.len != s->len || memcmp(r.data, s->data, r.len) != 0))
		orch_log("WARNING: cache served a stale rendering of inode %#llx (kind %d, id %lld)",
			 (unsigned long long)fs_ino(n), n.kind, (long long)n.id);
	fs_rendering_release(&r);
}

int fs_cache_get(orch_ctx *ctx, fs_node n, fs_snap **out, uint64_t *ino, uint64_t *generation, bool *direct)
{
	uint64_t base, s0;
	fs_rendering r;
	entry *e;
	int rc;

	n.sub = 0;
	base = fs_ino(n);
	*out = NULL;
	pthread_mutex_lock(&mu);
	e = find(base, false);
	if (e && e->valid && e->snap) {
		bool quiet = !committing;
		*out = fs_snap_ref(e->snap);
		*ino = with_version(base, e->version);
		*generation = e->generation;
		*direct = e->exhausted;
		s0 = seq;
		pthread_mutex_unlock(&mu);
		if (check_mode && quiet)
			verify(ctx, n, *out, s0);
		return 0;
	}
	s0 = seq;
	pthread_mutex_unlock(&mu);

	if ((rc = fs_render(ctx, n, &r)) != 0)
		return rc;

	pthread_mutex_lock(&mu);
	e = find(base, true);
	bool fresh = !e->rendered;
	uint64_t hash = fnv1a(r.data, r.len);
	bool changed = fresh || hash != e->hash || r.len != e->len;
	int64_t mtime = changed ? next_mtime(e, fresh, r.stamp, r.snapshot_at) : e->mtime;
	fs_snap *s = fs_snap_new(r.data, r.len, mtime, r.mapped);

	if (changed && e->nlookup && bump(e, false)) {
		/* The name moves on (the kernel keeps the old inode as it was): drop it, even mid-lookup. */
		e->dentry = true;
		drop_dentry(e, NULL, NULL, NULL);
	}
	*ino = with_version(base, e->version);
	*generation = e->generation;
	*direct = e->exhausted;
	if (seq == s0 || fresh || changed) {
		/*
		 * A rendering made while nothing was invalidated is the entry's
		 * state now.  One made across an invalidation is kept only as
		 * the content of its own (new) version: valid stays false, so
		 * the next use renders again.
		 */
		e->rendered = true;
		e->hash = s->hash;
		e->len = s->len;
		e->mtime = s->mtime;
		e->valid = seq == s0;
		set_snap(e, s);
	}
	pthread_mutex_unlock(&mu);
	*out = s;
	return 0;
}

int64_t fs_cache_mtime(fs_node n)
{
	n.sub = 0;
	pthread_mutex_lock(&mu);
	entry *e = find(fs_ino(n), false);
	int64_t m = e ? e->mtime : 0;
	pthread_mutex_unlock(&mu);
	return m;
}
