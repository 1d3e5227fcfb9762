"""Three orchfs daemons on three "hosts" sharing one state through dqlite, tested through their mounts.

Each host is a network namespace (10.78.0.N/24, joined by a bridge in a fourth, hub namespace;
nothing reaches another network) with its own git repository, its own state directory and its
own mount; the daemons run `orchfs mount --store dqlite:...` and form one cluster (node 1
bootstraps, 2 and 3 join through it).  A daemon is started with `nsenter --net=...`, which
changes only its network namespace: `ip netns exec` would also give it a mount namespace of
its own, where its FUSE mount would be invisible to this test.

- one state: a lock taken through host A's mount is refused through B's (conflict, EBUSY), and
  through `orchfs call` on C (which finds the cluster through <state>/store); a session opened
  on A is in B's sessions/; a task created or changed on B shows in A's tasks/ at once (A's
  daemon notices B's commits, through its watcher or its next request, and drops what its
  kernel cached).
- race: two hosts take the same 300 lock paths through their mounts, as two sessions; each
  path has exactly one holder, as the third host's locks/ shows.
- failover: a writer through a follower's mount creates tasks with sequential titles and
  call_ids, retrying a failed call with the same call_id; the leader's daemon is SIGKILLed;
  writes resume within 2 s; every acknowledged task is there exactly once; both survivors
  serve; the killed daemon restarts from its directory, catches up, and is a voter again.
- partition: the leader's link is cut; a write through its mount fails within 2 s (internal,
  EIO); the majority grants the lease the minority wanted; once the link is back there is one
  leader and the minority's write is nowhere.
- events: an `events` reader on a follower's mount sees every committed call once, in order
  (db_version up by one each time), across a SIGKILL of the leader.

It needs root and a build with -Ddqlite=enabled (scripts/test builds one); without either it
fails, it does not skip.  The namespaces, mounts and daemons are removed even when a test fails.
"""
import errno
import json
import os
import random
import select
import signal
import subprocess
import threading
import time

import pytest

from conftest import BAD_OUTPUT, ORCHFS, check_sanitizers, make_repo
from netns import bridged, ip

TOOL = os.environ.get('ORCHFS_DQLITE_BIN', os.path.join(os.path.dirname(ORCHFS), 'orchfs-dqlite'))
NS = f'ocl{os.getpid() % 100000}'
HUB = f'{NS}h'
PORT = 9101
SUBNET = '10.78.0'
# Expected network latency given to each node: elections after some 15 heartbeats of silence (~300 ms).
LATENCY_MS = 20


def addr(i):
    return f'{SUBNET}.{i}:{PORT}'


def host_of(address):
    return int(address.split(':')[0].rsplit('.', 1)[1])


def in_net(i, argv):
    """argv run in host i's network namespace only (its mounts stay visible here)."""
    return ['nsenter', f'--net=/run/netns/{NS}n{i}', *argv]


def quiet_env():
    env = dict(os.environ)
    # The tool is a short-lived client: LeakSanitizer's exit report would be noise.
    env['ASAN_OPTIONS'] = env.get('ASAN_OPTIONS', '') + ':detect_leaks=0'
    return env


def cluster(i, peers=(1, 2, 3)):
    """(leader's host, {host: role}) as host i's client sees the cluster through `peers`."""
    argv = [TOOL, 'cluster']
    for n in peers:
        argv += ['--peer', addr(n)]
    r = subprocess.run(in_net(i, argv), capture_output=True, text=True, timeout=30, env=quiet_env())
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    return host_of(lines[0].split()[1]), {int(l.split()[0]): l.split()[2] for l in lines[1:]}


def wait_voters(i, timeout=20):
    deadline = time.monotonic() + timeout
    while True:
        leader, members = cluster(i)
        if members == {1: 'voter', 2: 'voter', 3: 'voter'}:
            return leader
        assert time.monotonic() < deadline, f'not three voters: {members}'
        time.sleep(0.1)


class Host:
    """One host: a namespace, a repository, a state directory, a dqlite directory and a mount."""

    def __init__(self, i, tmp_path):
        self.i = i
        self.repo = make_repo(tmp_path / f'repo{i}')
        self.state = tmp_path / f'state{i}'
        self.dqdir = tmp_path / f'dqlite{i}'
        self.path = str(tmp_path / f'mnt{i}')
        os.mkdir(self.path)
        self.log = str(tmp_path / f'orchfs{i}.log')
        self.proc = None
        self.problems = []   # what went wrong at a stop: an exit status, a kill

    def start(self, peers=()):
        spec = f'dqlite:id={self.i},addr={addr(self.i)},dir={self.dqdir},latency={LATENCY_MS}'
        if peers:
            spec += ',peers=' + ','.join(addr(p) for p in peers)
        # nsenter execs orchfs: self.proc is the daemon itself.
        with open(self.log, 'ab') as log:
            self.proc = subprocess.Popen(in_net(self.i, [ORCHFS, 'mount', '-f', '--repo', str(self.repo), '--state',
                                                         str(self.state), '--store', spec, self.path]),
                                         stdout=subprocess.DEVNULL, stderr=log)
        deadline = time.monotonic() + 30
        while not os.path.ismount(self.path):
            if self.proc.poll() is not None:
                raise RuntimeError(f'host {self.i}: orchfs exited: ' + open(self.log).read())
            if time.monotonic() > deadline:
                raise RuntimeError(f'host {self.i}: mount did not appear: ' + open(self.log).read())
            time.sleep(0.02)

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def kill(self):
        """SIGKILL the daemon and clear its dead mount (fusermount3 -u works on an aborted connection)."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        self.proc = None
        if subprocess.run(['fusermount3', '-u', self.path], capture_output=True).returncode != 0:
            subprocess.run(['fusermount3', '-u', '-z', self.path], capture_output=True)
        assert not os.path.ismount(self.path)

    def stop(self):
        if self.proc is None:
            if os.path.ismount(self.path):
                subprocess.run(['fusermount3', '-u', '-z', self.path], capture_output=True)
            return
        if subprocess.run(['fusermount3', '-u', self.path], capture_output=True).returncode != 0:
            subprocess.run(['fusermount3', '-u', '-z', self.path], capture_output=True)
        try:
            status = self.proc.wait(timeout=20)
            if status != 0:
                self.problems.append(f'host {self.i}: the daemon exited with status {status}')
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            self.problems.append(f'host {self.i}: the daemon did not exit within 20 s of its unmount')
        self.proc = None

    def p(self, *parts):
        return os.path.join(self.path, *parts)

    def call(self, method, params=None, session=None):
        """Write ctl/<method> (or sessions/<id>/ctl/<method>) and read the reply on the same descriptor."""
        path = self.p('sessions', str(session), 'ctl', method) if session else self.p('ctl', method)
        fd = os.open(path, os.O_RDWR)
        try:
            err = 0
            try:
                os.write(fd, json.dumps(params or {}).encode())
            except OSError as e:
                err = e.errno
            data = b''
            while chunk := os.read(fd, 65536):
                data += chunk
        finally:
            os.close(fd)
        return err, json.loads(data)

    def ok(self, method, params=None, session=None):
        err, reply = self.call(method, params, session)
        assert err == 0 and 'result' in reply, (self.i, reply)
        return reply['result']

    def attempt(self, method, params):
        """call(), with a failed open of the ctl file (EIO: its lookup met a lost leader) as an `internal` reply."""
        try:
            return self.call(method, params)
        except OSError as e:
            if e.errno != errno.EIO:
                raise
            return e.errno, {'error': {'code': 'internal', 'message': f'open: {e}'}}

    def call_retrying(self, method, params, timeout=10):
        """A call retried (same call_id) while it fails with `internal`: the cluster is electing a leader,
        or this daemon's client has yet to find the new one."""
        deadline = time.monotonic() + timeout
        while True:
            err, reply = self.attempt(method, params)
            if 'result' in reply or reply['error']['code'] != 'internal':
                return err, reply
            assert err == errno.EIO, (err, reply)
            assert time.monotonic() < deadline, reply
            time.sleep(0.05)

    def ok_retrying(self, method, params, timeout=10):
        err, reply = self.call_retrying(method, params, timeout)
        assert err == 0 and 'result' in reply, (self.i, reply)
        return reply['result']

    def read_json(self, *parts):
        with open(self.p(*parts)) as f:
            return json.load(f)

    def titles(self):
        return [t['title'] for t in self.ok_retrying('task.list', {})]


@pytest.fixture(scope='module')
def netns():
    if os.geteuid() != 0:
        pytest.fail('the cluster tests make network namespaces and mounts: run them as root')
    if not os.access(TOOL, os.X_OK):
        pytest.fail(f'{TOOL} is missing: build with meson -Ddqlite=enabled (scripts/test does)')
    r = subprocess.run([ORCHFS, 'mount', '--store', 'dqlite:id=1,addr=127.0.0.1:1,dir=/nonexistent', '--help'],
                       capture_output=True, text=True)
    if 'built without dqlite' in r.stderr:
        pytest.fail(f'{ORCHFS} was built without dqlite: build with meson -Ddqlite=enabled (scripts/test does)')
    with bridged(NS, SUBNET):
        yield


@pytest.fixture
def hosts(netns, tmp_path):
    """Three daemons on one fresh cluster, three voters; stopped (and their logs checked) at the end."""
    hs = [Host(i, tmp_path) for i in (1, 2, 3)]
    try:
        hs[0].start()
        hs[1].start([1])
        hs[2].start([1])
        wait_voters(1)
        yield hs
    finally:
        # Whatever the outcome, every link is up again (a node stops with its cluster in reach).
        for i in (1, 2, 3):
            subprocess.run(['ip', '-n', HUB, 'link', 'set', f'v{i}', 'up'], capture_output=True)
        for h in hs:
            h.stop()
    problems = [p for h in hs for p in h.problems]
    for h in hs:
        log = open(h.log).read()
        bad = [line for line in log.splitlines() if BAD_OUTPUT.search(line)]
        assert not bad, f'host {h.i} daemon reported:\n' + log
    assert not problems, problems


class Writer(threading.Thread):
    """Creates tasks "<prefix>N" with call_id "<prefix>-N", N = 1, 2, ..., through one mount.

    A failed call is retried with the same call_id until it succeeds (a leader lost mid-call
    leaves its outcome unknown: the retry either runs it or returns the stored reply).
    acks: (monotonic time, N, task id) for each acknowledged call.
    """

    def __init__(self, host, prefix):
        super().__init__(daemon=True)
        self.host = host
        self.prefix = prefix
        self.acks = []
        self.failures = []     # (time, code, errno) of each failed attempt
        self.broken = None     # what ended the writer other than stop
        self.stopping = threading.Event()

    def run(self):
        n = 0
        try:
            while not self.stopping.is_set():
                n += 1
                params = {'level': 'case', 'title': f'{self.prefix}{n}', 'call_id': f'{self.prefix}-{n}'}
                first = None
                while True:
                    err, reply = self.host.attempt('task.create', params)
                    if 'result' in reply:
                        self.acks.append((time.monotonic(), n, reply['result']['id']))
                        break
                    now = time.monotonic()
                    self.failures.append((now, reply['error']['code'], err))
                    if reply['error']['code'] != 'internal' or err != errno.EIO:
                        self.broken = f'task.create {params}: {err} {reply}'
                        return
                    first = first or now
                    if now - first > 15:
                        self.broken = f'task.create {params} still failing after 15 s: {reply}'
                        return
                    time.sleep(0.01)
        except Exception as e:  # noqa: BLE001 -- reported by the test
            self.broken = f'{type(e).__name__}: {e}'

    def wait_acks(self, count, timeout):
        deadline = time.monotonic() + timeout
        while len(self.acks) < count and time.monotonic() < deadline and self.is_alive():
            time.sleep(0.01)
        assert len(self.acks) >= count, f'{len(self.acks)} acknowledged, wanted {count}: {self.broken}'

    def finish(self):
        self.stopping.set()
        self.join(timeout=30)
        assert not self.is_alive(), 'the writer is stuck'
        assert self.broken is None, self.broken


def kill_under_writer(hs, w, leader):
    """SIGKILL the leader's daemon while w writes; writes resume within 2 s. Returns the longest pause."""
    w.wait_acks(100, 60)
    n_before = len(w.acks)
    killed_at = time.monotonic()
    hs[leader - 1].kill()
    # 100 more acknowledgements, the first ones maybe of calls committed just before the kill.
    w.wait_acks(n_before + 100, 30)
    times = [killed_at] + [t for t, _, _ in w.acks[n_before:]]
    pause = max(b - a for a, b in zip(times, times[1:]))
    fails = [f for f in w.failures if f[0] > killed_at]
    print(f'writes paused {pause:.3f} s at most after the leader was killed; {len(fails)} failed attempts retried')
    assert pause < 2.0, f'writes paused {pause:.3f} s'
    return pause


def test_one_state_across_hosts(hosts):
    a, b, c = hosts
    lock = a.ok('lock.acquire', {'scope_type': 'file', 'scope_path': 'src/a.c', 'owner_session': 'on-a'})
    err, reply = b.call('lock.acquire', {'scope_type': 'file', 'scope_path': 'src/a.c', 'owner_session': 'on-b'})
    assert err == errno.EBUSY and reply['error']['code'] == 'conflict', reply
    assert reply['error']['details']['lock']['id'] == lock['id']
    assert b.read_json('locks', f"{lock['id']}.json")['owner_session'] == 'on-a'
    # `orchfs call` on host C finds the cluster through C's <state>/store.
    r = subprocess.run(in_net(3, [ORCHFS, 'call', '--repo', str(c.repo), '--state', str(c.state), 'lock.acquire',
                                  json.dumps({'scope_type': 'prefix', 'scope_path': 'src', 'owner_session': 'on-c'})]),
                       capture_output=True, text=True, timeout=60)
    check_sanitizers(r, 'orchfs call on host 3')
    assert r.returncode == 1 and json.loads(r.stdout)['error']['code'] == 'conflict', (r.stdout, r.stderr)

    before = os.listdir(b.p('sessions'))
    sid = a.ok('session.open', {'agent_role': 'implementer'})['session_context']['session']['id']
    assert str(sid) not in before
    assert str(sid) in os.listdir(b.p('sessions'))
    assert b.read_json('sessions', str(sid), 'session.json')['agent_role'] == 'implementer'

    # A reads (and its kernel caches) tasks/ and a task before B changes them: A must not serve the old renderings.
    first = b.ok('task.create', {'level': 'case', 'title': 'first'})
    assert str(first['id']) in os.listdir(a.p('tasks'))
    old = a.read_json('tasks', str(first['id']), 'task.json')
    assert old['priority'] == 0
    listed = set(os.listdir(a.p('tasks')))
    t0 = time.monotonic()
    second = b.ok('task.create', {'level': 'case', 'title': 'second'})
    b.ok('task.update', {'task_id': first['id'], 'priority': 7})
    while True:
        seen = set(os.listdir(a.p('tasks')))
        now = a.read_json('tasks', str(first['id']), 'task.json')
        if str(second['id']) in seen and now['priority'] == 7:
            break
        assert time.monotonic() - t0 < 2, f'host A still shows {sorted(seen)}, {now}'
        time.sleep(0.01)
    print(f"host B's commits visible through host A's mount after {time.monotonic() - t0:.3f} s")
    assert seen == listed | {str(second['id'])}
    # stat sees the new size too (the kernel's attributes were dropped, not only the pages).
    with open(a.p('tasks', str(first['id']), 'task.json')) as f:
        assert os.fstat(f.fileno()).st_size == len(f.read().encode())
    assert [t['title'] for t in c.ok('task.list', {})] == ['first', 'second']


def test_race_for_300_paths_has_one_holder_each(hosts):
    a, b, c = hosts
    sessions = {h.i: h.ok('session.open', {'agent_role': f'racer-{h.i}'})['session_context']['session']['id']
                for h in (a, b)}
    paths = [f'race/{n:03d}.c' for n in range(300)]
    won = {a.i: set(), b.i: set()}
    lost = {a.i: set(), b.i: set()}
    errors = []
    go = threading.Barrier(2)

    def race(h):
        order = paths[:]
        random.Random(h.i).shuffle(order)
        try:
            go.wait(timeout=30)
            for path in order:
                err, reply = h.call('lock.acquire', {'scope_type': 'file', 'scope_path': path}, session=sessions[h.i])
                if 'result' in reply:
                    won[h.i].add(path)
                elif reply['error']['code'] == 'conflict' and err == errno.EBUSY:
                    assert reply['error']['details']['lock']['owner_session'] != str(sessions[h.i])
                    lost[h.i].add(path)
                else:
                    errors.append((h.i, path, err, reply))
        except Exception as e:  # noqa: BLE001 -- reported below
            errors.append((h.i, repr(e)))

    t0 = time.monotonic()
    threads = [threading.Thread(target=race, args=(h,)) for h in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), 'a racer is stuck'
    print(f'600 lock.acquire through two mounts in {time.monotonic() - t0:.2f} s; '
          f'host 1 won {len(won[1])}, host 2 {len(won[2])}')
    assert not errors, errors[:5]
    for h in (a, b):
        assert won[h.i] | lost[h.i] == set(paths) and not won[h.i] & lost[h.i]
    assert won[1] & won[2] == set() and won[1] | won[2] == set(paths)
    # The third host's locks/ shows exactly one holder per path: the racer that won it.
    holders = {}
    for name in os.listdir(c.p('locks')):
        lock = c.read_json('locks', name)
        assert lock['scope_path'] not in holders, f"two holders of {lock['scope_path']}"
        holders[lock['scope_path']] = lock['owner_session']
    assert holders == {p: str(sessions[1] if p in won[1] else sessions[2]) for p in paths}


def test_failover_loses_no_acknowledged_write(hosts):
    leader = cluster(2)[0]
    follower = next(h for h in hosts if h.i != leader)
    victim = hosts[leader - 1]
    w = Writer(follower, 'w')
    w.start()
    try:
        kill_under_writer(hosts, w, leader)
    finally:
        w.finish()
    survivors = [h for h in hosts if h is not victim]
    assert all(h.alive() for h in survivors), 'a survivor died with the leader'
    acked = {n: tid for _, n, tid in w.acks}
    # Every acknowledged task is there exactly once, with the id its reply gave; nothing else was
    # created (a retried call_id returned the stored reply, it did not run again).
    for h in survivors:
        tasks = h.ok('task.list', {})
        by_title = {}
        for t in tasks:
            assert t['title'] not in by_title, f"{t['title']} twice"
            by_title[t['title']] = t['id']
        missing = [n for n in acked if by_title.get(f'w{n}') != acked[n]]
        assert not missing, f'acknowledged but lost: {missing[:10]}'
        # Only the call in flight when the writer stopped may be there unacknowledged.
        assert set(by_title) - {f'w{n}' for n in acked} <= {f'w{max(acked) + 1}'}
        # And its mount shows them: the files of the first and the last.
        for n in (min(acked), max(acked)):
            assert h.read_json('tasks', str(acked[n]), 'task.json')['title'] == f'w{n}'
    expected = survivors[0].titles()
    assert survivors[1].titles() == expected

    # The killed daemon restarts from its directory (no peers: it remembers them) on its old mount point.
    victim.start()
    deadline = time.monotonic() + 20
    while victim.titles() != expected:
        assert time.monotonic() < deadline, 'the restarted host does not show every task'
        time.sleep(0.1)
    assert victim.read_json('tasks', str(acked[max(acked)]), 'task.json')['title'] == f'w{max(acked)}'
    leader = wait_voters(victim.i)
    # Its node has caught up: with a survivor that is not the leader stopped, a write needs its vote.
    stopped = next(h for h in survivors if h.i != leader)
    stopped.stop()
    victim.ok_retrying('task.create', {'level': 'case', 'title': 'after', 'call_id': 'after'})
    live = [h for h in hosts if h is not stopped]
    for h in live:
        assert h.titles() == expected + ['after']
    assert all(h.alive() for h in live)


def test_partition_minority_cannot_write(hosts):
    leader = cluster(1)[0]
    old = hosts[leader - 1]
    majority = [h for h in hosts if h is not old]
    old.ok('task.create', {'level': 'case', 'title': 'before the cut'})
    ip('-n', HUB, 'link', 'set', f'v{old.i}', 'down')
    try:
        t0 = time.monotonic()
        err, reply = old.call('lock.acquire', {'scope_type': 'file', 'scope_path': 'lease', 'owner_session': 'minority',
                                               'call_id': 'minority'})
        took = time.monotonic() - t0
        print(f'write through the cut-off leader failed after {took:.3f} s: {reply}')
        assert 'error' in reply and reply['error']['code'] == 'internal' and err == errno.EIO, (err, reply)
        assert took < 2.0
        # The majority elects a leader of its own and grants the lease the minority wanted.
        t0 = time.monotonic()
        lock = majority[0].ok_retrying('lock.acquire', {'scope_type': 'file', 'scope_path': 'lease',
                                                        'owner_session': 'majority', 'call_id': 'majority'})
        print(f'the majority granted the lease after {time.monotonic() - t0:.3f} s')
        assert majority[1].read_json('locks', f"{lock['id']}.json")['owner_session'] == 'majority'
        err, reply = majority[1].call_retrying('lock.acquire', {'scope_type': 'file', 'scope_path': 'lease',
                                                                'owner_session': 'minority'})
        assert err == errno.EBUSY and reply['error']['details']['lock']['owner_session'] == 'majority', reply
    finally:
        ip('-n', HUB, 'link', 'set', f'v{old.i}', 'up')
    # Every node, asked alone, names the same leader (one of the majority's, or the old one re-elected).
    t0 = time.monotonic()
    while True:
        leaders = {cluster(h.i, peers=[h.i])[0] for h in hosts}
        if len(leaders) == 1:
            break
        assert time.monotonic() - t0 < 20, f'leaders: {leaders}'
        time.sleep(0.1)
    print(f'one leader ({leaders}) {time.monotonic() - t0:.3f} s after the link came back')
    # The minority's write is nowhere, through every mount (the old leader's too, once it reaches the leader).
    for h in hosts:
        deadline = time.monotonic() + 10
        while True:
            try:
                locks = [h.read_json('locks', name) for name in os.listdir(h.p('locks'))]
                break
            except OSError as e:   # EIO while its client finds the leader again
                assert e.errno == errno.EIO and time.monotonic() < deadline, e
                time.sleep(0.05)
        assert [(l['id'], l['scope_path'], l['owner_session']) for l in locks] == [(lock['id'], 'lease', 'majority')]
        assert h.titles() == ['before the cut']
    # The minority's call_id is unused: its call never committed, so a retry now runs it (and is refused).
    err, reply = old.call('lock.acquire', {'scope_type': 'file', 'scope_path': 'lease', 'owner_session': 'minority',
                                           'call_id': 'minority'})
    assert err == errno.EBUSY and reply['error']['code'] == 'conflict', reply
    assert all(h.alive() for h in hosts)


def test_events_follow_commits_across_failover(hosts):
    leader = cluster(1)[0]
    writer_host, reader_host = [h for h in hosts if h.i != leader]
    lines = []
    stop = threading.Event()
    problems = []
    eio = []
    fd = os.open(reader_host.p('events'), os.O_RDONLY | os.O_NONBLOCK)

    def read():
        buf = b''
        try:
            while not stop.is_set():
                if not select.select([fd], [], [], 0.1)[0]:
                    continue
                try:
                    chunk = os.read(fd, 65536)
                except BlockingIOError:
                    continue
                except OSError as e:
                    # The daemon could not fetch the lines (its leader lost meanwhile): the
                    # descriptor keeps its position, so the next read goes on from there.
                    if e.errno != errno.EIO:
                        raise
                    eio.append(time.monotonic())
                    time.sleep(0.05)
                    continue
                buf += chunk
                *whole, buf = buf.split(b'\n')
                lines.extend(json.loads(l) for l in whole)
        except Exception as e:  # noqa: BLE001 -- reported by the test
            problems.append(repr(e))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    w = Writer(writer_host, 'e')
    w.start()
    try:
        kill_under_writer(hosts, w, leader)
    finally:
        w.finish()
    try:
        created = {t['id'] for t in writer_host.ok('task.list', {})}
        deadline = time.monotonic() + 10
        while {i for e in list(lines) for i in e['ids'].get('tasks', [])} != created:
            assert time.monotonic() < deadline and not problems, \
                f'the reader saw {len(lines)} events for {len(created)} tasks: {problems}'
            time.sleep(0.05)
        time.sleep(0.2)   # nothing more comes
    finally:
        stop.set()
        reader.join(timeout=10)
        os.close(fd)
    assert not problems, problems
    versions = [e['db_version'] for e in lines]
    assert versions == list(range(versions[0], versions[0] + len(versions))), \
        f'db_versions not one apart: {[(a, b) for a, b in zip(versions, versions[1:]) if b != a + 1][:10]}'
    assert [e['method'] for e in lines] == ['task.create'] * len(lines)
    task_ids = [e['ids']['tasks'] for e in lines]
    assert all(len(ids) == 1 for ids in task_ids)
    task_ids = [ids[0] for ids in task_ids]
    assert len(set(task_ids)) == len(task_ids), 'an event came twice'
    assert {tid for _, _, tid in w.acks} <= set(task_ids), 'an acknowledged call has no event'
    assert set(task_ids) == created
    print(f'{len(lines)} events through the follower, db_version {versions[0]}..{versions[-1]}, '
          f'{len(w.acks)} acknowledged calls, {len(eio)} reads failed with EIO and were retried')


def test_store_specs_that_are_wrong_are_refused_and_make_nothing(tmp_path):
    """Bad --store values are usage errors; node 1 told to join peers with an empty dir is refused
    (it would bootstrap a second, separate cluster), and nothing is created."""
    repo = tmp_path / 'repo'
    make_repo(repo)
    mnt = tmp_path / 'mnt'
    mnt.mkdir()
    usage = [
        ('dqlite:id=0,addr=127.0.0.1:1,dir=x', 'id must be a positive integer'),
        ('dqlite:id=1,addr=nohostport,dir=x', 'addr must be HOST:PORT'),
        ('dqlite:id=1,addr=127.0.0.1:1', 'id, addr and dir are required'),
        ('dqlite:id=1,addr=127.0.0.1:1,dir=x,colour=blue', 'unknown key "colour"'),
        ('dqlite:id=2,addr=127.0.0.1:1,dir=x,peers=nohostport', 'a peer must be HOST:PORT'),
        ('sqlite:x', '--store takes dqlite:'),
    ]
    for spec, message in usage:
        r = subprocess.run([ORCHFS, 'mount', '--repo', str(repo), '--store', spec, str(mnt)],
                           capture_output=True, text=True, timeout=30)
        check_sanitizers(r, spec)
        assert r.returncode == 2 and message in r.stderr, (spec, r.returncode, r.stderr)
    node = tmp_path / 'node'
    r = subprocess.run([ORCHFS, 'mount', '--repo', str(repo), '--store',
                        f'dqlite:id=1,addr=127.0.0.1:{PORT + 50},dir={node},peers=127.0.0.1:{PORT + 51}', str(mnt)],
                       capture_output=True, text=True, timeout=30)
    check_sanitizers(r, 'node 1 with peers')
    assert r.returncode == 1 and 'node 1 bootstraps a new cluster' in r.stderr and 'holds no raft state' in r.stderr, r.stderr
    assert not node.exists()
    assert not (repo / '.orchfs' / 'store').exists()
    assert not os.path.ismount(mnt)
