"""Crash consistency: kill -9 the daemon while several agents work, then check the guarantees.

Agents of two kinds run at once:

- mount agents (threads) do their work through the mount's ctl files: open a session, take a
  case (work.current_ref or resume.next), begin / check / complete it, lease overlapping paths
  with short TTLs, spawn a child worktree, commit in it, merge it into the session root, create
  tasks, close the session;
- cli agents run `orchfs call` processes against the same state, truly in parallel with the
  daemon and with each other, and keep working while the daemon is dead.

Every mutating call carries a call_id.  A mount call whose transport fails (the daemon died:
ENOTCONN, ENOENT on the bare mount point, a short read) is repeated with the same call_id until
it gets a reply, as a careful agent would: the repeat returns the stored reply if the first one
committed, and runs the method if it did not.  So every call ends with a known outcome.

Meanwhile the daemon is killed with SIGKILL at random moments and mounted again (its start-up
reconcile runs), and a monitor reads the database (read-only, one snapshot per sample) and checks
that no case is held twice and that no two conflicting unexpired locks of different owners are
active.  At the end: every success an agent saw is durable (its reply in replies/ and the
database, its effect in the database, exactly once), db_version covers them, the worktree records
agree with git (no orphan, no stale metadata, fsck clean, merged children reachable from their
parents, checkouts clean), and the daemon's log has no sanitizer report (the fixture).

The seed is random and printed with any failure; CHAOS_SEED=<n> repeats a schedule.
"""
import json
import os
import random
import re
import sqlite3
import subprocess
import threading
import time

import pytest

from conftest import ORCHFS, check_sanitizers, git

SANITIZER = re.compile(r'AddressSanitizer|LeakSanitizer|UndefinedBehaviorSanitizer|runtime error:')

# Scopes leased by the agents: they overlap in every way the rules know.
SCOPES = [('file', 'src/a.c'), ('file', 'src/api/x.c'), ('prefix', 'src'), ('prefix', 'src/api'),
          ('prefix', 'src/apix'), ('file', 'src/apix/y.c'), ('file', 'docs/r.md'), ('prefix', 'docs'),
          ('prefix', '.')]
OWN_BRANCH = re.compile(r'^(session/\d+|task/\d+/\d+)$')
SCOPE_WEIGHTS = [4, 4, 2, 3, 3, 4, 4, 2, 1]

MOUNT_AGENTS = 3
CLI_AGENTS = 2
KILLS = int(os.environ.get('CHAOS_KILLS') or 10)   # scripts/crash runs 100 and more
CALL_DEADLINE = 30      # seconds a mount call may keep failing for transport reasons

# Methods that change the database when they succeed (reads are left out of the count).
MUTATING = {'session.open', 'session.close', 'case.begin', 'step.check', 'case.complete', 'lock.acquire',
            'lock.release', 'worktree.spawn', 'worktree.merge_to_parent', 'task.create'}


def covers(prefix, path):
    return prefix == '.' or path == prefix or path.startswith(prefix + '/')


def locks_conflict(a, b):
    """README's rules for two leases of different owners."""
    (ta, pa), (tb, pb) = a, b
    if ta == 'file' and tb == 'file':
        return pa == pb
    if ta == 'prefix' and tb == 'file':
        return covers(pa, pb)
    if ta == 'file' and tb == 'prefix':
        return covers(pb, pa)
    return covers(pa, pb) or covers(pb, pa)


def open_db(state):
    db = sqlite3.connect(f'file:{state}/state.db?mode=ro', uri=True, timeout=5, isolation_level=None)
    db.row_factory = sqlite3.Row
    return db


def snapshot_violations(db):
    """Invariants 1 and 2 in one read transaction; [] when they hold."""
    bad = []
    db.execute('BEGIN')
    try:
        for r in db.execute("SELECT node_type, node_id, group_concat(session_id) AS s FROM current_refs "
                            "WHERE status = 'active' GROUP BY node_type, node_id HAVING count(*) > 1"):
            bad.append(f"case {r['node_type']} {r['node_id']} held by sessions {r['s']}")
        for r in db.execute("SELECT session_id, count(*) AS n FROM current_refs WHERE status = 'active' "
                            "GROUP BY session_id HAVING count(*) > 1"):
            bad.append(f"session {r['session_id']} has {r['n']} active refs")
        locks = [dict(r) for r in db.execute("SELECT id, scope_type, scope_path, owner_session, lease_until "
                                             "FROM locks WHERE state = 'active'")]
    finally:
        db.execute('COMMIT')
    # Taken after the snapshot: a lease still running now was running when the later one was granted.
    now = int(time.time() * 1000)
    live = [lk for lk in locks if lk['lease_until'] > now]
    for i, a in enumerate(live):
        for b in live[i + 1:]:
            if a['owner_session'] != b['owner_session'] and \
                    locks_conflict((a['scope_type'], a['scope_path']), (b['scope_type'], b['scope_path'])):
                bad.append(f'locks overlap: {a} and {b}')
    return bad


class World:
    def __init__(self, mount, seed):
        self.mount = mount
        self.seed = seed
        self.stop = threading.Event()
        self.guard = threading.Lock()
        self.successes = []     # (call_id, method, params, result, session)
        self.unexpected = []    # (agent, method, params, reply)
        self.own_name_taken = []  # (agent, method, message): default branch/path taken, or its git lock
        self.retries = 0
        self.killed_calls = 0
        self.exceptions = []


class Agent:
    def __init__(self, world, name, rng):
        self.w = world
        self.name = name
        self.rng = rng
        self.n = 0
        self.session = None     # (session id, session-root worktree)

    def next_session(self, role, session_ctl):
        """Open a new session and close the previous one; keep the previous one if the open fails."""
        r = self.do('session.open', {'agent_role': role, 'owner': self.name})
        if r is not None:
            if self.session is not None:
                old = self.session[0]
                self.do('session.close', {} if session_ctl else {'session_id': old},
                        session=old if session_ctl else None)
            self.session = (r['session_context']['session']['id'], r['session_context']['session_root_worktree'])
        return self.session

    def call_id(self):
        self.n += 1
        return f'{self.name}.{self.n}'

    def transport(self, method, params, session):
        raise NotImplementedError

    def do(self, method, params, session=None, expect=()):
        """One call with a call_id; the result, or None for an error (recorded unless expected)."""
        params = dict(params, call_id=self.call_id())
        reply = self.transport(method, params, session)
        if reply.get('call_id') != params['call_id']:
            self.note(method, params, reply)
            return None
        if 'result' in reply:
            with self.w.guard:
                self.w.successes.append((params['call_id'], method, params, reply['result'], session))
            return reply['result']
        err = reply['error']
        if method in ('session.open', 'worktree.spawn') and (
                err['code'] == 'exists' or err['code'] == 'git' and 'failed to lock file' in err['message']):
            # orchfs's own default name is taken, or git's lock on it: by what? Judged at the end.
            with self.w.guard:
                self.w.own_name_taken.append((self.name, method, err['message']))
            time.sleep(0.1)
        elif err['code'] not in expect:
            self.note(method, params, reply)
        return None

    def note(self, method, params, reply):
        with self.w.guard:
            self.w.unexpected.append((self.name, method, params, reply))

    def run(self):
        try:
            while not self.w.stop.is_set():
                self.cycle()
        except Exception as e:  # noqa: BLE001 -- reported by the test
            import traceback
            with self.w.guard:
                self.w.exceptions.append(f'{self.name}: {e!r}\n{traceback.format_exc()}')

    def take_case(self, sid, session_ctl):
        """work.current_ref or resume.next with the session: the case it now holds, or None."""
        extra = {} if session_ctl else {'session_id': sid}
        if self.rng.random() < 0.5:
            r = self.do('work.current_ref', extra, session=sid if session_ctl else None)
            return r['current_ref']['node_id'] if r and r.get('current_ref') else None
        r = self.do('resume.next', extra, session=sid if session_ctl else None)
        return r['task']['id'] if r and r.get('task') else None

    def work_case(self, sid, case, session_ctl):
        extra = {} if session_ctl else {'session_id': sid}
        s = sid if session_ctl else None
        if self.do('case.begin', dict(extra, case_id=case, input_contract={'agent': self.name}), session=s) is None:
            return
        for i in range(self.rng.randint(1, 3)):
            if self.do('step.check', dict(extra, case_id=case, step_title=f'{self.name} step {i}',
                                          result='pass'), session=s) is None:
                return
        self.do('case.complete', dict(extra, case_id=case, summary=f'done by {self.name}'), session=s)

    def lease(self, sid, session_ctl):
        scope_type, scope_path = self.rng.choices(SCOPES, SCOPE_WEIGHTS)[0]
        params = {'scope_type': scope_type, 'scope_path': scope_path, 'ttl_seconds': self.rng.choice([1, 2])}
        if not session_ctl:
            params['owner_session'] = str(sid)
        s = sid if session_ctl else None
        lock = self.do('lock.acquire', params, session=s, expect=('conflict',))
        if lock and self.rng.random() < 0.7:
            time.sleep(self.rng.uniform(0, 0.2))
            rel = {'lock_id': lock['id']}
            if not session_ctl:
                rel['owner_session'] = str(sid)
            # The lease may have run out meanwhile (1 s TTL and a dead daemon): not_found.
            self.do('lock.release', rel, session=s, expect=('not_found',))


class MountAgent(Agent):
    """Works through the mount; retries a call whose transport failed with the same call_id."""

    def transport(self, method, params, session):
        deadline = time.time() + CALL_DEADLINE
        first = True
        while True:
            # The daemon serving this call, if one is (a restarted one may not be mounted yet).
            daemon = self.w.mount.proc
            if daemon is not None and not os.path.ismount(self.w.mount.path):
                daemon = None
            try:
                return self.w.mount.call(method, params, session)[1]
            except (OSError, ValueError):
                # Only a kill excuses a transport failure: with the same daemon still alive (give
                # the killer a second to reap it and clear the mount), it is a bug.
                if daemon is not None:
                    for _ in range(50):
                        if daemon is not self.w.mount.proc or daemon.returncode is not None:
                            break
                        time.sleep(0.02)
                    else:
                        raise
                if time.time() > deadline:
                    raise
                with self.w.guard:
                    self.w.retries += 1
                    self.w.killed_calls += first
                first = False
                time.sleep(0.02)

    def cycle(self):
        if self.next_session('implementer', True) is None:
            return
        sid, root = self.session
        for _ in range(2):
            if self.w.stop.is_set():
                break
            case = self.take_case(sid, True)
            if case is not None:
                self.work_case(sid, case, True)
            self.lease(sid, True)
            child = self.do('worktree.spawn', {'parent_worktree_id': root['id']}, session=sid)
            if child is not None:
                name = f'{self.name}-{self.n}.txt'
                with open(os.path.join(child['path'], name), 'w') as f:
                    f.write(f'{self.name} {self.n}\n')
                git(child['path'], 'add', name)
                git(child['path'], 'commit', '-q', '-m', f'{self.name} adds {name}')
                self.do('worktree.merge_to_parent', {'worktree_id': child['id']}, session=sid)
            self.do('task.create', {'level': 'chore', 'title': f'chore {self.name}.{self.n}'})


class CliAgent(Agent):
    """Works with `orchfs call` processes: no mount needed, so it goes on while the daemon is down."""

    def transport(self, method, params, session):
        assert session is None
        p = self.w.mount.orchfs_call(method, params)
        if SANITIZER.search(p.stderr):
            raise AssertionError(f'orchfs call {method} {params}: {p.stderr}')
        reply = json.loads(p.stdout)
        assert p.returncode == (0 if 'result' in reply else 1), (p.returncode, p.stdout, p.stderr)
        return reply

    def cycle(self):
        if self.next_session('tester', False) is None:
            return
        sid = self.session[0]
        case = self.take_case(sid, False)
        if case is not None:
            self.work_case(sid, case, False)
        self.lease(sid, False)
        self.do('task.create', {'level': 'chore', 'title': f'chore {self.name}.{self.n}'})


def worktree_list(repo):
    """`git worktree list --porcelain` as a list of dicts (path, branch, flags)."""
    out, cur = [], None
    for line in git(repo, 'worktree', 'list', '--porcelain').stdout.splitlines():
        if line.startswith('worktree '):
            cur = {'path': line[len('worktree '):]}
            out.append(cur)
        elif line and cur is not None:
            key, _, val = line.partition(' ')
            cur[key] = val or True
    return out


def test_kill_9_during_concurrent_work(mount, repo):
    seed = int(os.environ.get('CHAOS_SEED') or random.randrange(1 << 30))
    rng = random.Random(seed)
    why = f'(CHAOS_SEED={seed})'
    w = World(mount, seed)

    feature = mount.ok('task.create', {'level': 'feature', 'title': 'chaos'})['id']
    cases = [mount.ok('task.create', {'level': 'case', 'title': f'case {i}', 'parent_id': feature,
                                      'priority': i % 3})['id'] for i in range(40)]
    base_version = mount.db_version()

    agents = [MountAgent(w, f'm{i}', random.Random(rng.random())) for i in range(MOUNT_AGENTS)]
    agents += [CliAgent(w, f'c{i}', random.Random(rng.random())) for i in range(CLI_AGENTS)]
    threads = [threading.Thread(target=a.run, name=a.name) for a in agents]

    violations, samples = [], [0]
    monitor_stop = threading.Event()

    def monitor():
        while not monitor_stop.is_set():
            try:
                db = open_db(mount.state)
                try:
                    found = snapshot_violations(db)
                finally:
                    db.close()
            except sqlite3.OperationalError:
                found = None    # busy or mid-recovery after a kill: next sample
            if found is not None:
                samples[0] += 1
                violations.extend(found)
            time.sleep(0.05)

    mon = threading.Thread(target=monitor, name='monitor')
    mon.start()
    for t in threads:
        t.start()
    restarts = []
    try:
        time.sleep(0.5)
        for _ in range(KILLS):
            time.sleep(rng.uniform(0.7, 1.8))
            mount.kill()
            # Dead for a moment: mount calls fail, cli agents go on.
            time.sleep(rng.uniform(0.0, 0.4))
            t0 = time.time()
            mount.start()
            restarts.append(round(time.time() - t0, 2))
            db = open_db(mount.state)
            violations.extend(f'after restart: {v}' for v in snapshot_violations(db))
            db.close()
        time.sleep(1.0)
    finally:
        w.stop.set()
        for t in threads:
            t.join(timeout=CALL_DEADLINE + 30)
        monitor_stop.set()
        mon.join()
    assert not any(t.is_alive() for t in threads), why
    assert not w.exceptions, f'{why} agent failed:\n' + '\n'.join(w.exceptions)

    # One more restart after the work: its reconcile must leave nothing to find.
    mount.stop()
    log_before = len(open(mount.log).read())
    mount.start()
    reconcile = [line for line in open(mount.log).read()[log_before:].splitlines() if 'reconcile' in line]

    stats = (f'{why} {len(w.successes)} successes, {w.killed_calls} calls cut by kills, {w.retries} retries, '
             f'{samples[0]} monitor samples, restarts took {restarts}s')
    print(stats)
    assert not w.unexpected, f'{stats}\nunexpected replies:\n' + '\n'.join(map(repr, w.unexpected))

    # 1, 2: never a case held twice or overlapping leases -- during the run and now.
    assert not violations, f'{stats}\n' + '\n'.join(violations)
    db = open_db(mount.state)
    assert snapshot_violations(db) == [], stats

    # The agents did real work: cases were completed, leases granted, children merged.
    seen = {m: [s for s in w.successes if s[1] == m] for m in MUTATING}
    assert seen['case.complete'] and seen['lock.acquire'] and seen['worktree.merge_to_parent'], stats
    assert w.killed_calls > 0, stats

    # 3: every success an agent saw is durable, with its stored reply and its effect, exactly once.
    for call_id, method, params, result, session in w.successes:
        row = db.execute('SELECT method, reply FROM replies WHERE call_id = ?', (call_id,)).fetchone()
        assert row is not None, f'{stats} reply of {call_id} ({method}) lost'
        assert row['method'] == method and json.loads(row['reply'])['result'] == result, (stats, call_id)
        assert mount.read_json('replies', f'{call_id}.json')['result'] == result, (stats, call_id)
        if method == 'task.create':
            rows = db.execute('SELECT id FROM tasks WHERE title = ?', (params['title'],)).fetchall()
            assert [r['id'] for r in rows] == [result['id']], f'{stats} task {params["title"]!r}: {list(map(dict, rows))}'
        elif method == 'session.open':
            sid = result['session_context']['session']['id']
            assert db.execute('SELECT 1 FROM sessions WHERE id = ?', (sid,)).fetchone(), (stats, call_id)
        elif method == 'session.close':
            sid = session or params['session_id']
            st = db.execute('SELECT status FROM sessions WHERE id = ?', (sid,)).fetchone()['status']
            assert st == 'closed', (stats, call_id, st)
        elif method == 'case.complete':
            st = db.execute('SELECT status FROM tasks WHERE id = ?', (params['case_id'],)).fetchone()['status']
            assert st == 'done', (stats, call_id, st)
        elif method == 'step.check':
            assert db.execute('SELECT 1 FROM steps WHERE id = ? AND task_id = ?',
                              (result['id'], params['case_id'])).fetchone(), (stats, call_id)
        elif method == 'lock.acquire':
            lk = db.execute('SELECT scope_path, owner_session FROM locks WHERE id = ?', (result['id'],)).fetchone()
            assert lk and lk['scope_path'] == params['scope_path'], (stats, call_id)
        elif method == 'lock.release':
            st = db.execute('SELECT state FROM locks WHERE id = ?', (params['lock_id'],)).fetchone()['state']
            assert st == 'released', (stats, call_id, st)
        elif method == 'worktree.spawn':
            assert db.execute('SELECT 1 FROM worktrees WHERE id = ? AND branch = ?',
                              (result['id'], result['branch'])).fetchone(), (stats, call_id)
        elif method == 'worktree.merge_to_parent':
            child = result['child_worktree']
            ms = db.execute('SELECT merge_state FROM worktrees WHERE id = ?', (child['id'],)).fetchone()
            assert ms['merge_state'] == 'merged_to_parent', (stats, call_id)
            parent_branch = result['parent_worktree']['branch']
            assert git(repo, 'merge-base', '--is-ancestor', result['merge_commit'], f'refs/heads/{parent_branch}',
                       check=False).returncode == 0, (stats, call_id)
            assert git(repo, 'rev-parse', f"{result['merge_commit']}^2").stdout.strip() == \
                git(repo, 'rev-parse', f"refs/heads/{child['branch']}").stdout.strip(), (stats, call_id)
    # Every case an agent completed is done, and each completion happened once.
    completed = [s[2]['case_id'] for s in seen['case.complete']]
    assert len(completed) == len(set(completed)), (stats, completed)
    assert set(completed) <= set(cases)

    # 4: db_version covers every distinct success; mirror.status answers through both paths.
    status = mount.ok('mirror.status')
    n_mutations = len({s[0] for s in w.successes if s[1] in MUTATING})
    # At most: every writing call that succeeded (work.current_ref and resume.next change the
    # database only when they hand out a case), plus one bump per start-up reconcile that changed
    # a record.  Failed calls never bump; a call cut by a kill is counted once, by its call_id.
    n_writes = len({s[0] for s in w.successes if s[1] in MUTATING | {'work.current_ref', 'resume.next'}})
    bumped = status['db_version'] - base_version
    assert n_mutations <= bumped <= n_writes + KILLS + 1, (stats, bumped, n_mutations, n_writes)
    p = mount.orchfs_call('mirror.status')
    assert p.returncode == 0 and json.loads(p.stdout)['result']['db_version'] == status['db_version'], p

    # 5: worktree records and git agree; nothing orphaned, nothing stale, nothing broken.
    state_wt = os.path.realpath(os.path.join(mount.state, 'worktrees'))
    listed = worktree_list(repo)
    by_path = {os.path.realpath(e['path']): e for e in listed}
    records = [dict(r) for r in db.execute('SELECT id, path, branch, status, kind FROM worktrees ORDER BY id')]
    on_disk = {}   # real path -> record, for every record whose checkout must exist
    for rec in records:
        assert rec['status'] in ('active', 'closed'), f'{stats} worktree {rec}: nobody abandoned or removed it'
        if rec['kind'] == 'main':
            continue
        on_disk[os.path.realpath(rec['path'])] = rec
        e = by_path.get(os.path.realpath(rec['path']))
        assert e is not None, f'{stats} worktree {rec} not in git worktree list {listed}'
        assert e.get('branch') == f"refs/heads/{rec['branch']}", (stats, rec, e)
        assert git(rec['path'], 'status', '--porcelain').stdout == '', f'{stats} checkout of {rec} is dirty'
    # What no record names: checkouts under <state>/worktrees (in git's list or just a directory)
    # and orchfs's own branches.  They can only come from calls killed before their commit.
    orphan_dirs = sorted(({p for p in by_path if p.startswith(state_wt + os.sep)} |
                          {os.path.join(state_wt, d) for d in os.listdir(state_wt)}) - set(on_disk))
    named = {r['branch'] for r in records}
    orphan_branches = [b for b in git(repo, 'for-each-ref', '--format=%(refname:short)', 'refs/heads/').stdout.split()
                       if OWN_BRANCH.match(b) and b not in named]
    meta = os.path.join(repo, '.git', 'worktrees')
    orphan_meta = []    # git's metadata of a worktree no record names, or half written
    for name in os.listdir(meta) if os.path.isdir(meta) else []:
        gitdir_file = os.path.join(meta, name, 'gitdir')
        gitdir = os.path.exists(gitdir_file) and \
            os.path.realpath(os.path.dirname(open(gitdir_file).read().strip()))
        if gitdir not in on_disk:
            orphan_meta.append(name)
    stale_locks = sorted(os.path.relpath(os.path.join(d, f), repo) for d, _, fs in os.walk(os.path.join(repo, '.git'))
                         for f in fs if f.endswith('.lock'))
    fsck = git(repo, 'fsck', '--no-dangling', '--no-progress', check=False)
    fsck_errors = [line for line in (fsck.stdout + fsck.stderr).splitlines() if line.strip()]
    # Half-written metadata of a leftover worktree is judged with the leftovers, below.
    fsck_leftover = [line for line in fsck_errors if any(f'worktrees/{n}/' in line for n in orphan_meta)]
    assert set(fsck_errors) == set(fsck_leftover), (stats, fsck.stdout, fsck.stderr)
    assert fsck.returncode == 0 or fsck_leftover, (stats, fsck.stdout, fsck.stderr)
    assert not [line for line in reconcile if 'changed' not in line], (stats, reconcile)
    assert any('0 changed' in line for line in reconcile), (stats, reconcile)

    # 6: every merged child's tip is in its parent's branch.
    merged = db.execute("SELECT c.id, c.branch AS child, p.branch AS parent FROM worktrees c "
                        "JOIN worktrees p ON p.id = c.parent_worktree_id "
                        "WHERE c.merge_state = 'merged_to_parent'").fetchall()
    assert len(merged) >= len(seen['worktree.merge_to_parent']), stats
    for r in merged:
        assert git(repo, 'merge-base', '--is-ancestor', f"refs/heads/{r['child']}", f"refs/heads/{r['parent']}",
                   check=False).returncode == 0, (stats, dict(r))
    db.close()
    # 7: the fixture fails the test if the daemon's log has a sanitizer report.

    # Last: leftovers of calls killed between their git work and their commit.  orchfs takes them
    # back at the next call that wants the name and at start-up: a clean checkout is removed, a
    # half-made one is set aside as <dir>.orchfs-leftover-<ms>, detached from git; stale ref locks,
    # bare branches and half-written metadata are removed.  No agent ever writes into a checkout whose
    # call it saw fail, so every leftover holds only files git had not yet written, and the last
    # start-up removed them all.  Nothing may be left, and no call may have failed over a name.
    assert orphan_dirs == [], (stats, orphan_dirs)
    assert orphan_branches == [] and orphan_meta == [] and stale_locks == [], \
        (stats, orphan_branches, orphan_meta, stale_locks, fsck_leftover)
    assert w.own_name_taken == [], (stats, w.own_name_taken)
    # And `orchfs check` agrees: store intact, records and disk agree, no leftover.
    p = subprocess.run([ORCHFS, 'check', '--repo', str(repo), '--state', mount.state], capture_output=True,
                       text=True, timeout=300)
    check_sanitizers(p, 'orchfs check')
    assert p.returncode == 0, (stats, p.stdout, p.stderr)
