/*
 * orchfs: mount | umount | call | serve | mcp | methods.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include "orchfs/core.h"
#include "orchfs/fs.h"
#include "cli.h"

static void usage(FILE *f)
{
	fputs("usage:\n"
	      "  orchfs mount [--repo DIR] [--state DIR] [--host NAME] [--mirror-refresh SECONDS] [--store SPEC] [-f] [-d] [-s] "
	      "MOUNTPOINT\n"
	      "  orchfs umount MOUNTPOINT\n"
	      "  orchfs call [--repo DIR] [--state DIR] [--host NAME] [--session ID] METHOD [JSON]\n"
	      "  orchfs serve [--repo DIR] [--state DIR] [--host NAME] [--session ID]\n"
	      "  orchfs mcp [--repo DIR] [--state DIR] [--host NAME] [--session ID]\n"
	      "  orchfs methods [--json]\n"
	      "  orchfs check [--repo DIR] [--state DIR] [--host NAME]\n"
	      "  orchfs backup [--repo DIR] [--state DIR] PATH\n"
	      "  orchfs --version\n"
	      "mount --store SPEC: share the state with other machines through a dqlite cluster:\n"
	      "  dqlite:id=N,addr=HOST:PORT,dir=DIR[,peers=HOST:PORT,...][,latency=MS]\n"
	      "--host NAME: the machine this process works for when several machines share one state (1 to 64\n"
	      "  characters of A-Za-z0-9._:-; default: none with a SQLite state, the node's HOST:PORT with --store,\n"
	      "  and what the daemon's --store wrote for other commands). Worktrees it makes are recorded as on\n"
	      "  NAME, and only a process with the same host touches their checkouts and branches.\n",
	      f);
}

typedef struct {
	const char *repo;
	const char *state;
	const char *host;  /* --host: NULL on one machine */
	long long session; /* call: as through sessions/<id>/ctl/ (0: ctl/) */
	bool foreground;
	bool debug;
	bool single_thread;
	int mirror_refresh_s;
	const char *store; /* mount: --store dqlite:... */
	int argc;
	char **argv;
} cli_args;

static int parse(int argc, char **argv, cli_args *a)
{
	memset(a, 0, sizeof(*a));
	int i;
	for (i = 0; i < argc; i++) {
		if (strcmp(argv[i], "--repo") == 0 && i + 1 < argc)
			a->repo = argv[++i];
		else if (strcmp(argv[i], "--state") == 0 && i + 1 < argc)
			a->state = argv[++i];
		else if (strcmp(argv[i], "--host") == 0 && i + 1 < argc) {
			a->host = argv[++i];
			if (!orch_host_valid(a->host)) {
				fprintf(stderr, "orchfs: --host takes a name of 1 to %d characters of A-Za-z0-9._:-, "
					"got \"%s\"\n", ORCH_HOST_MAX, a->host);
				return -1;
			}
		}
		else if (strcmp(argv[i], "--session") == 0 && i + 1 < argc) {
			char *end;
			a->session = strtoll(argv[++i], &end, 10);
			if (*end || a->session <= 0) {
				fprintf(stderr, "orchfs: --session takes a session id, got %s\n", argv[i]);
				return -1;
			}
		} else if (strcmp(argv[i], "-f") == 0)
			a->foreground = true;
		else if (strcmp(argv[i], "-d") == 0)
			a->debug = a->foreground = true;
		else if (strcmp(argv[i], "-s") == 0)
			a->single_thread = true;
		else if (strcmp(argv[i], "--store") == 0 && i + 1 < argc) {
			char err[256];
			a->store = argv[++i];
			if (cli_store_check(a->store, err, sizeof(err)) != 0) {
				fprintf(stderr, "orchfs: %s\n", err);
				return -1;
			}
		} else if (strcmp(argv[i], "--mirror-refresh") == 0 && i + 1 < argc) {
			char *end;
			long s = strtol(argv[++i], &end, 10);
			if (*end || end == argv[i] || s < 1 || s > 86400) {
				fprintf(stderr, "orchfs: --mirror-refresh takes whole seconds, 1 to 86400, got %s\n", argv[i]);
				return -1;
			}
			a->mirror_refresh_s = (int)s;
		}
		else if (strcmp(argv[i], "--") == 0) {
			i++;
			break;
		} else if (argv[i][0] == '-' && argv[i][1]) {
			fprintf(stderr, "orchfs: unknown option %s\n", argv[i]);
			return -1;
		} else
			break;
	}
	a->argc = argc - i;
	a->argv = argv + i;
	return 0;
}

static int cmd_call(cli_args *a)
{
	orch_ctx ctx;
	char *reply = NULL;
	int rc;

	if (a->argc < 1 || a->argc > 2) {
		usage(stderr);
		return 2;
	}
	if (orch_ctx_open_host(&ctx, a->repo, a->state, a->host) != 0) {
		fprintf(stderr, "orchfs: %s\n", orch_error_last()->message);
		return 1;
	}
	const char *body = a->argc == 2 ? a->argv[1] : "{}";
	const orch_method *m = orch_method_find(a->argv[0]);
	if (a->session && m && !orch_method_takes_session(m)) {
		fprintf(stderr, "orchfs: %s takes no session: call it without --session\n", m->name);
		orch_ctx_close(&ctx);
		return 2;
	}
	/* --session: the call sessions/<id>/ctl/<method> would make, and its reply is remembered there. */
	ctx.remember = a->session > 0;
	rc = orch_call_text(&ctx, a->argv[0], body, strlen(body), (int64_t)a->session, &reply);
	fputs(reply, stdout);
	if (rc)
		fprintf(stderr, "orchfs: %s: %s\n", orch_error_name(rc), orch_error_last()->message);
	free(reply);
	orch_ctx_close(&ctx);
	orch_error_clear();
	return rc ? 1 : 0;
}

/* Whether `path` is a mount point listed in /proc/self/mountinfo. */
static bool is_mounted(const char *path)
{
	FILE *f = fopen("/proc/self/mountinfo", "r");
	char line[4096];
	bool found = false;

	if (!f)
		return false;
	while (!found && fgets(line, sizeof(line), f)) {
		char mp[PATH_MAX];
		if (sscanf(line, "%*s %*s %*s %*s %4095s", mp) == 1)
			found = strcmp(mp, path) == 0;
	}
	fclose(f);
	return found;
}

/* Whether `path` is `dir` or lies below it (both absolute and canonical). */
static bool path_within(const char *path, const char *dir)
{
	size_t n = strlen(dir);

	return strncmp(path, dir, n) == 0 && (path[n] == '/' || path[n] == '\0' || (n == 1 && dir[0] == '/'));
}

static int ready_fd = -1;

typedef struct {
	const char *log_path;
	orch_env *env;
	const char *mountpoint;
	json_t *reconciled; /* lines of what the start-up reconcile found */
} mount_info;

static void log_start(mount_info *mi)
{
	json_t *line;
	size_t i;

	orch_log("serving %s (state %s%s%s) at %s", mi->env->repo_path, mi->env->state_dir,
		 *mi->env->host ? ", host " : "", mi->env->host, mi->mountpoint);
	json_array_foreach(mi->reconciled, i, line)
		orch_log("reconcile: %s", json_string_value(line));
}

static void mounted(void *arg)
{
	mount_info *mi = arg;
	const char *log_path = mi->log_path;

	if (ready_fd < 0) {
		log_start(mi);
		return;
	}
	/* Detach: the parent returns once the mount is usable. */
	int null = open("/dev/null", O_RDWR);
	int log = open(log_path, O_WRONLY | O_CREAT | O_APPEND, 0644);
	dup2(null, 0);
	dup2(null, 1);
	dup2(log >= 0 ? log : null, 2);
	if (null > 2)
		close(null);
	if (log > 2)
		close(log);
	log_start(mi);
	if (write(ready_fd, "", 1) < 0) {
		/* the parent is gone; nothing to tell */
	}
	close(ready_fd);
	ready_fd = -1;
}

/*
 * Compare worktree records with the disk before serving.  The findings go
 * to the daemon's log once it is in place (see mounted()): stderr in the
 * foreground, else `log_path`.  A failure is reported and does not stop
 * the mount.
 */
static json_t *reconcile(orch_env *env)
{
	json_t *lines = NULL;
	orch_ctx ctx;

	/* Before any thread: the writer's connection and git, as the writer lane. */
	orch_ctx_init(&ctx, env, env->writer, env->git);
	if (orch_worktree_reconcile(&ctx, &lines) != 0) {
		json_decref(lines);
		lines = json_pack("[s+]", "failed: ", orch_error_last()->message);
	}
	orch_error_clear();
	return lines;
}

static int cmd_mount(cli_args *a)
{
	char mp[PATH_MAX], *log_path = NULL;
	struct stat sb;
	bool created = false; /* made here: removed again if the mount is refused */
	orch_env env;
	int rc;

	if (a->argc != 1) {
		usage(stderr);
		return 2;
	}
	const char *mount_arg = a->argv[0];
	if (stat(mount_arg, &sb) < 0) {
		if (errno == ENOTCONN) {
			fprintf(stderr, "orchfs: %s is a stale mount (its daemon is gone); clear it with:\n"
				"  fusermount3 -u %s\n", mount_arg, mount_arg);
			return 1;
		}
		if (errno == ENOENT && mkdir(mount_arg, 0755) == 0) {
			created = true;
			stat(mount_arg, &sb);
		} else {
			fprintf(stderr, "orchfs: mount point %s: %s\n", mount_arg, strerror(errno));
			return 1;
		}
	}
	if (!S_ISDIR(sb.st_mode) || !realpath(mount_arg, mp)) {
		fprintf(stderr, "orchfs: mount point %s is not a directory\n", mount_arg);
		return 1;
	}
	struct statvfs sv;
	if (is_mounted(mp) && statvfs(mp, &sv) < 0 && errno == ENOTCONN) {
		fprintf(stderr, "orchfs: %s is a stale mount (its daemon is gone); clear it with:\n"
			"  fusermount3 -u %s\n", mp, mp);
		return 1;
	}
	if (is_mounted(mp)) {
		fprintf(stderr, "orchfs: %s is already mounted (unmount it with: orchfs umount %s)\n", mp, mp);
		return 1;
	}

	int pipefd[2] = {-1, -1};
	if (!a->foreground) {
		if (pipe(pipefd) < 0) {
			perror("orchfs: pipe");
			return 1;
		}
		pid_t pid = fork();
		if (pid < 0) {
			perror("orchfs: fork");
			return 1;
		}
		if (pid > 0) {
			char c;
			close(pipefd[1]);
			if (read(pipefd[0], &c, 1) == 1)
				return 0;
			int status = 0;
			waitpid(pid, &status, 0);
			return 1;
		}
		close(pipefd[0]);
		ready_fd = pipefd[1];
		setsid();
	}

	/* Everything is opened in the process that serves, never across a fork (the dqlite node's threads too). */
	cli_store cluster = {0};
	orch_env_opts opts = ORCH_ENV_OPTS_INIT;
	int started = a->store ? cli_store_start(a->store, &cluster) : 0;
	opts.store = cluster.where;
	/* Several machines: each is a host; by default the node's address names it. */
	opts.host = a->host ? a->host : cluster.address;
	if (started != 0 || orch_env_open_opts(&env, a->repo, a->state, &opts) != 0) {
		fprintf(stderr, "orchfs: %s\n", orch_error_last()->message);
		cli_store_stop(&cluster);
		if (created)
			rmdir(mp);
		return 1;
	}
	/*
	 * The daemon must never look into its own mount: not through the
	 * state directory (hidden by a mount above it), and not through the
	 * repository, whose status git walks while it serves the mount.
	 */
	if (path_within(env.state_dir, mp) || path_within(mp, env.repo_path) || path_within(env.repo_path, mp)) {
		fprintf(stderr, "orchfs: the mount point %s must be outside the repository %s and its state %s "
			"(try /tmp/orchfs/<name>)\n", mp, env.repo_path, env.state_dir);
		orch_env_close(&env);
		cli_store_stop(&cluster);
		if (created)
			rmdir(mp);
		return 1;
	}
	if (asprintf(&log_path, "%s/orchfs.log", env.state_dir) < 0)
		log_path = NULL;
	mount_info mi = {log_path, &env, mp, reconcile(&env)};
	fs_options o = {.mountpoint = mp, .foreground = a->foreground, .debug = a->debug,
			.single_thread = a->single_thread, .mirror_refresh_s = a->mirror_refresh_s, .on_mounted = mounted, .arg = &mi};
	rc = fs_main(&env, &o);
	if (rc && ready_fd >= 0)
		fprintf(stderr, "orchfs: cannot mount %s\n", mp);
	orch_log("unmounted %s", mp);
	json_decref(mi.reconciled);
	orch_env_close(&env);
	cli_store_stop(&cluster);
	free(log_path);
	return rc;
}

static int cmd_umount(cli_args *a)
{
	if (a->argc != 1) {
		usage(stderr);
		return 2;
	}
	execlp("fusermount3", "fusermount3", "-u", a->argv[0], (char *)NULL);
	perror("orchfs: fusermount3");
	return 1;
}

static const char *ptype_name(orch_ptype t)
{
	static const char *const names[] = {
		[ORCH_P_ID] = "id", [ORCH_P_INT] = "int", [ORCH_P_STR] = "string", [ORCH_P_BOOL] = "bool",
		[ORCH_P_JSON] = "json", [ORCH_P_STRS] = "strings", [ORCH_P_PATHS] = "paths",
		[ORCH_P_PATH] = "path", [ORCH_P_OBJS] = "objects", [ORCH_P_OWNER] = "owner",
	};
	return names[t];
}

static json_t *params_json(const orch_param *ps)
{
	json_t *a = json_array();

	for (const orch_param *p = ps; p && p->name; p++) {
		json_t *o = json_pack("{s:s, s:s, s:b, s:s}", "name", p->name, "type", ptype_name(p->type), "required",
				      (p->flags & ORCH_P_REQUIRED) != 0, "doc", p->doc ? p->doc : "");
		if (p->type == ORCH_P_OBJS)
			json_object_set_new(o, "items", params_json(p->items));
		json_array_append_new(a, o);
	}
	return a;
}

/*
 * The method table: names, or with --json every method's entry (parameters
 * with their types and doc lines, and the texts the usage shows).
 */
static int cmd_methods(cli_args *a)
{
	bool as_json = a->argc == 1 && strcmp(a->argv[0], "--json") == 0;
	json_t *all = json_array();

	for (size_t i = 0; i < orch_method_count(); i++) {
		const orch_method *m = orch_method_at(i);
		if (!as_json) {
			printf("%s\n", m->name);
			continue;
		}
		json_t *example = json_loads(m->example, 0, NULL);
		json_array_append_new(all, json_pack("{s:s, s:b, s:b, s:o, s:s, s:s, s:o, s:s}", "name", m->name, "write",
						     (m->flags & ORCH_M_WRITE) != 0, "session",
						     orch_method_takes_session(m), "params", params_json(m->params),
						     "summary", m->summary, "output", m->output, "example",
						     example ? example : json_string(m->example), "errors",
						     m->errors ? m->errors : ""));
	}
	if (as_json)
		json_dumpf(all, stdout, JSON_INDENT(2));
	json_decref(all);
	return 0;
}

/* Verify the store and the worktrees, changing nothing: 0 all well, 1 problems found, 2 could not check. */
static int cmd_check(cli_args *a)
{
	json_t *report = NULL;
	int rc = orch_check(a->repo, a->state, a->host, &report);
	size_t n = json_array_size(json_object_get(report, "problems"));

	if (rc) {
		fprintf(stderr, "orchfs check: %s\n", orch_error_last()->message);
		json_decref(report);
		return 2;
	}
	json_dumpf(report, stdout, JSON_INDENT(2));
	printf("\n");
	fprintf(stderr, "orchfs check: %zu problem%s\n", n, n == 1 ? "" : "s");
	json_decref(report);
	return n ? 1 : 0;
}

/* A consistent copy of the database at a new file PATH, while the mount serves. */
static int cmd_backup(cli_args *a)
{
	if (a->argc != 1) {
		usage(stderr);
		return 2;
	}
	if (orch_backup(a->repo, a->state, a->argv[0]) != 0) {
		fprintf(stderr, "orchfs backup: %s\n", orch_error_last()->message);
		return 1;
	}
	return 0;
}

int main(int argc, char **argv)
{
	cli_args a;

	if (argc < 2) {
		usage(stderr);
		return 2;
	}
	if (strcmp(argv[1], "methods") == 0) {
		a.argc = argc - 2;
		a.argv = argv + 2;
		return cmd_methods(&a);
	}
	if (parse(argc - 2, argv + 2, &a) != 0)
		return 2;
	if (strcmp(argv[1], "mount") == 0)
		return cmd_mount(&a);
	if (strcmp(argv[1], "call") == 0)
		return cmd_call(&a);
	if (strcmp(argv[1], "umount") == 0)
		return cmd_umount(&a);
	if (strcmp(argv[1], "serve") == 0 || strcmp(argv[1], "mcp") == 0) {
		if (a.argc != 0) {
			usage(stderr);
			return 2;
		}
		return argv[1][0] == 's' ? cli_serve(a.repo, a.state, a.host, a.session)
					    : cli_mcp(a.repo, a.state, a.host, a.session);
	}
	if (strcmp(argv[1], "--version") == 0) {
		printf("orchfs %s\n", ORCHFS_VERSION);
		return 0;
	}
	if (strcmp(argv[1], "check") == 0)
		return cmd_check(&a);
	if (strcmp(argv[1], "backup") == 0)
		return cmd_backup(&a);
	if (strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0) {
		usage(stdout);
		return 0;
	}
	usage(stderr);
	return 2;
}
