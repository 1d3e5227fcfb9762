"""A concurrent daemon through the mount: reads that never wait for git or the writer,
state files served from the page cache yet never stale, per-file mtimes, inode numbers
that Node.js can tell apart, paged lists, and many readers and writers at once.

Timing is only ever compared with the duration of the operation being measured in the
same run, never with an absolute number, because other tests share this 2-core machine.
"""
import errno
import json
import os
import random
import shutil
import subprocess
import threading
import time

import pytest

from conftest import ORCHFS, git


def read_fd_all(fd):
    data = b''
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            return data
        data += chunk


def read_bytes(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        return read_fd_all(fd)
    finally:
        os.close(fd)


def make_big_repo(path, dirs=20, subdirs=20, files=50):
    """A repository of dirs * subdirs * files small files (20,000 by default), committed once."""
    path.mkdir(parents=True)
    git(path, 'init', '-q', '-b', 'main')
    git(path, 'config', 'user.email', 'test@example.com')
    git(path, 'config', 'user.name', 'test')
    for d in range(dirs):
        for e in range(subdirs):
            sub = path / f'd{d:02}' / f'e{e:02}'
            sub.mkdir(parents=True)
            for f in range(files):
                with open(sub / f'f{f:02}.txt', 'w') as fh:
                    fh.write(f'{d} {e} {f}\n')
    (path / 'README').write_text('hello\n')
    git(path, 'add', '-A')
    git(path, 'commit', '-q', '-m', 'many files')
    return path


# ---- a. reads complete while a slow git operation runs ----

class TestReadsDuringCheckout:
    """The mount fixture, on a repository of 20,000 files."""

    @pytest.fixture
    def repo(self, tmp_path):
        return make_big_repo(tmp_path / 'repo')

    @staticmethod
    def reads_during(mount, method, params, session=None):
        """Run one ctl call in a thread while this thread reads a state file and lists
        directories.  Returns (t0, t1, reply, ops) where ops are (start, end) pairs."""
        task_path = mount.p('tasks', '1', 'task.json')
        expected = read_bytes(task_path)
        box = {}
        started = threading.Event()

        def caller():
            started.set()
            box['t0'] = time.monotonic()
            box['reply'] = mount.call(method, params, session)
            box['t1'] = time.monotonic()

        th = threading.Thread(target=caller)
        th.start()
        started.wait()
        ops = []
        bad = []
        n = 0
        while th.is_alive():
            s = time.monotonic()
            if n % 2 == 0:
                data = read_bytes(task_path)
                if data != expected:
                    bad.append(data)
            else:
                names = os.listdir(mount.p('tasks' if n % 4 == 1 else 'locks'))
                if n % 4 == 1 and '1' not in names:
                    bad.append(names)
            ops.append((s, time.monotonic()))
            n += 1
        th.join()
        assert not bad, bad[:3]
        return box['t0'], box['t1'], box['reply'], ops

    def check(self, what, t0, t1, ops):
        d = t1 - t0
        if d < 0.3:
            pytest.skip(f'{what} took only {d:.3f} s: too short to tell whether reads wait for it')
        # Reads that started and ended inside the middle half of the call: a daemon that
        # serves one request at a time lets none through there, whatever the machine's load.
        lo, hi = t0 + d / 4, t1 - d / 4
        inside = [(s, e) for s, e in ops if s >= lo and e <= hi]
        overlapping = [e - s for s, e in ops if e > t0 and s < t1]
        slowest = max(overlapping)
        assert len(inside) >= 20, (f'{what} took {d:.2f} s; only {len(inside)} reads or listings ran in its '
                                   f'middle half ({len(ops)} in all, slowest {slowest:.2f} s): reads wait for it')
        assert slowest < d / 4, f'{what} took {d:.2f} s and the slowest read overlapping it {slowest:.2f} s'

    def test_reads_complete_while_checkouts_run(self, mount):
        mount.ok('task.create', {'level': 'case', 'title': 'read me while git works'})
        # session.open checks out 20,000 files as the session root.
        t0, t1, (err, reply), ops = self.reads_during(mount, 'session.open', {'agent_role': 'implementer'})
        assert err == 0 and 'result' in reply, reply
        ctx = reply['result']['session_context']
        root = ctx['session_root_worktree']
        assert os.path.isfile(os.path.join(root['path'], 'd19', 'e19', 'f49.txt'))
        self.check('session.open', t0, t1, ops)
        # worktree.spawn checks out a child of it: as large.
        sid = ctx['session']['id']
        t0, t1, (err, reply), ops = self.reads_during(mount, 'worktree.spawn',
                                                      {'parent_worktree_id': root['id']}, session=sid)
        assert err == 0 and 'result' in reply, reply
        assert os.path.isfile(os.path.join(reply['result']['path'], 'd00', 'e00', 'f00.txt'))
        self.check('worktree.spawn', t0, t1, ops)


# ---- b. a change by `orchfs call` in another process, after the kernel cached the file ----

def test_change_by_orchfs_call_is_visible_at_next_read(mount):
    mount.ok('task.create', {'level': 'case', 'title': 'cached'})
    mount.ok('session.open', {})
    lock = mount.ok('lock.acquire', {'scope_type': 'file', 'scope_path': 'src/a.c', 'owner_session': 'x'})
    files = {
        'task': mount.p('tasks', '1', 'task.json'),
        'checkpoints': mount.p('tasks', '1', 'checkpoints.json'),
        'session': mount.p('sessions', '1', 'session.json'),
        'lock': mount.p('locks', f"{lock['id']}.json"),
    }
    before = {}
    for name, p in files.items():
        os.stat(p)
        before[name] = read_bytes(p)
        assert read_bytes(p) == before[name]          # twice: now in the page cache, if it is used
        assert os.stat(p).st_size == len(before[name])
    assert json.loads(before['task'])['status'] == 'todo'

    time.sleep(0.005)    # last_seen_at has millisecond resolution
    for method, params in [('case.begin', {'case_id': 1}), ('session.heartbeat', {'session_id': 1}),
                           ('lock.release', {'lock_id': lock['id'], 'owner_session': 'x'})]:
        r = mount.orchfs_call(method, params)
        assert r.returncode == 0, (method, r.stdout, r.stderr)

    data = read_bytes(files['task'])
    assert json.loads(data)['status'] == 'in_progress', data
    assert os.stat(files['task']).st_size == len(data)
    data = read_bytes(files['checkpoints'])
    assert len(json.loads(data)) == len(json.loads(before['checkpoints'])) + 1
    assert os.stat(files['checkpoints']).st_size == len(data)
    data = read_bytes(files['session'])
    assert json.loads(data)['last_seen_at'] > json.loads(before['session'])['last_seen_at']
    assert os.stat(files['session']).st_size == len(data)
    # A released lock is gone at once, though the kernel knew its name and bytes.
    with pytest.raises(FileNotFoundError):
        os.stat(files['lock'])
    with pytest.raises(FileNotFoundError):
        read_bytes(files['lock'])
    assert os.listdir(mount.p('locks')) == []


def test_stat_alone_follows_another_process(mount):
    """A kernel that holds a file's attributes asks nothing before stat: the daemon's
    watcher must notice another process's commit by itself and drop the name."""
    mount.ok('task.create', {'level': 'case', 'title': 'watched'})
    p = mount.p('tasks', '1', 'task.json')
    old = os.stat(p)
    assert os.stat(p).st_size == old.st_size
    time.sleep(0.005)
    r = mount.orchfs_call('case.begin', {'case_id': 1})
    assert r.returncode == 0, r.stderr
    deadline = time.time() + 5
    while os.stat(p).st_mtime_ns == old.st_mtime_ns and time.time() < deadline:
        time.sleep(0.01)   # no open, no read: only stat
    st = os.stat(p)
    assert st.st_mtime_ns != old.st_mtime_ns, 'stat never showed the other process\'s change'
    data = read_bytes(p)
    assert json.loads(data)['status'] == 'in_progress'
    assert st.st_size == len(data)


# ---- c. size, mtime and content agree after every change ----

def test_size_mtime_and_content_agree_after_every_change(mount):
    sid = mount.ok('session.open', {})['session_context']['session']['id']
    assert sid == 1
    mount.ok('task.create', {'level': 'case', 'title': 'one'})
    mount.ok('task.create', {'level': 'case', 'title': 'two'})
    mount.ok('task.create', {'level': 'epic', 'title': 'three'})
    mount.ok('plan.bootstrap', {'initiative_title': 'init', 'plan_title': 'plan'})

    state_files = ['tasks/1/task.json', 'tasks/1/steps.json', 'tasks/1/checkpoints.json',
                   'tasks/2/task.json', 'tasks/2/checkpoints.json', 'tasks/3/task.json',
                   'sessions/1/session.json', 'sessions/1/context.json', 'sessions/1/current_ref.json',
                   'worktrees/1.json', 'worktrees/2.json', 'locks/1.json',
                   'graph/nodes/1/node.json', 'graph/nodes/1/edges.json', 'graph/nodes/2/node.json',
                   'graph/nodes/2/checklist.json', 'graph/nodes/2/snapshots.json', 'graph/nodes/3/edges.json']
    # Not JSON, or not rows: only size and content must agree.
    other_files = ['README.md', 'ctl/task.create', 'sessions/1/heartbeat', 'sessions/1/ctl/session.heartbeat',
                   'sessions/1/ctl/lock.acquire']

    def observe(rel):
        p = mount.p(rel)
        try:
            st = os.stat(p)
        except FileNotFoundError:
            with pytest.raises(FileNotFoundError):
                read_bytes(p)
            return None
        fd = os.open(p, os.O_RDONLY)
        try:
            data = read_fd_all(fd)
            fst = os.fstat(fd)
        finally:
            os.close(fd)
        assert st.st_size == len(data), (rel, st.st_size, len(data))
        assert fst.st_size == len(data), (rel, fst.st_size, len(data))
        return st.st_mtime_ns, data

    def observe_all():
        seen = {}
        for rel in state_files:
            seen[rel] = observe(rel)
            if seen[rel] is not None:
                json.loads(seen[rel][1])
        for rel in other_files:
            observe(rel)
        return seen

    mutations = [
        ('task.create', {'level': 'case', 'title': 'four'}, None),
        ('case.begin', {'case_id': 1}, sid),
        ('session.heartbeat', {}, sid),
        ('step.check', {'case_id': 1, 'step_title': 'unit', 'result': 'pass'}, sid),
        ('lock.acquire', {'scope_type': 'file', 'scope_path': 'src/a.c'}, sid),
        ('lock.heartbeat', {'lock_id': 1, 'ttl_seconds': 300}, sid),
        ('task.create', {'level': 'case', 'title': 'five', 'parent_id': 3}, None),
        ('graph.checklist.upsert', {'node_id': 2, 'item_text': 'parser'}, None),
        ('graph.snapshot.create', {'node_id': 2, 'snapshot_type': 'note', 'summary': 's'}, None),
        ('graph.node.create', {'node_type': 'risk', 'title': 'r', 'parent_id': 1}, None),
        ('graph.edge.create', {'from_node_id': 1, 'to_node_id': 3, 'edge_type': 'depends_on'}, None),
        ('lock.release', {'lock_id': 1}, sid),
        ('touch', None, sid),
        ('case.begin', {'case_id': 2}, None),
        ('case.complete', {'case_id': 1, 'summary': 'green'}, sid),
        ('plan.rollup.submit', {'node_id': 2, 'summary': 'laid out'}, None),
        ('session.heartbeat', {'session_id': sid}, None),
    ]
    prev = observe_all()
    changed = unchanged = 0
    for method, params, session in mutations:
        time.sleep(0.005)    # timestamps have millisecond resolution: each change gets its own
        if method == 'touch':
            r = subprocess.run(['touch', mount.p('sessions', str(session), 'heartbeat')], capture_output=True)
            assert r.returncode == 0, r.stderr
        else:
            mount.ok(method, params, session)
        cur = observe_all()
        for rel in state_files:
            a, b = prev[rel], cur[rel]
            if a is None or b is None:
                continue
            if a[1] == b[1]:
                unchanged += 1
                assert b[0] == a[0], f'after {method}: {rel} did not change, yet its mtime moved ({a[0]} -> {b[0]})'
            else:
                changed += 1
                assert b[0] > a[0], f'after {method}: {rel} changed, yet its mtime did not advance ({a[0]} -> {b[0]})'
        prev = cur
    assert prev['locks/1.json'] is None
    # Both kinds were seen often enough for the checks to mean something.
    assert changed >= 20 and unchanged >= 100, (changed, unchanged)


# ---- d. inode numbers ----

def populate(mount):
    sid = mount.ok('session.open', {})['session_context']['session']['id']
    for i in range(3):
        mount.ok('task.create', {'level': 'case', 'title': f't{i}'})
    mount.ok('case.begin', {'case_id': 1}, session=sid)
    mount.ok('step.check', {'case_id': 1, 'step_title': 's', 'result': 'pass'}, session=sid)
    mount.ok('lock.acquire', {'scope_type': 'file', 'scope_path': 'a.c'}, session=sid)
    mount.ok('lock.acquire', {'scope_type': 'prefix', 'scope_path': 'lib'}, session=sid)
    mount.ok('plan.bootstrap', {'initiative_title': 'i', 'plan_title': 'p'})
    mount.ok('plan.slice.generate', {'plan_node_id': 2, 'slice_specs': [{'title': 'a'}, {'title': 'b'}]})
    mount.ok('graph.checklist.upsert', {'node_id': 3, 'item_text': 'x'})
    mount.ok('task.get', {'task_id': 1, 'call_id': 'inode-walk'})
    mount.ok('session.heartbeat', {}, session=sid)     # a last reply under sessions/1/ctl/
    return sid


def test_inode_numbers_below_2_53_and_unique(mount):
    populate(mount)
    paths = {}
    for root, dirs, files in os.walk(mount.path):
        for name in dirs + files:
            p = os.path.join(root, name)
            st = os.lstat(p)
            paths[os.path.relpath(p, mount.path)] = st.st_ino
    paths['.'] = os.lstat(mount.path).st_ino
    # Everything the tree has is there.
    for rel in ['ctl/task.create', 'sessions/1/ctl/lock.acquire', 'sessions/1/root', 'sessions/1/heartbeat',
                'graph/nodes/4/checklist.json', 'graph/nodes/1/edges.json', 'replies/inode-walk.json',
                'locks/2.json', 'tasks/1/steps.json', 'worktrees/2.json']:
        assert rel in paths, rel
    assert len(paths) > 80, len(paths)
    big = {p: ino for p, ino in paths.items() if ino >= 2 ** 53}
    assert not big, f'{len(big)} of {len(paths)} inode numbers are 2^53 or more, e.g. {sorted(big.items())[:3]}'
    by_ino = {}
    for p, ino in paths.items():
        by_ino.setdefault(ino, []).append(p)
    shared = [ps for ps in by_ino.values() if len(ps) > 1]
    assert not shared, f'paths sharing an inode number: {shared[:5]}'
    # readdir gives the same numbers (ls -i, find -inum).
    for root, dirs, files in os.walk(mount.path):
        with os.scandir(root) as it:
            for e in it:
                rel = os.path.relpath(e.path, mount.path)
                assert e.inode() == paths[rel], (rel, e.inode(), paths[rel])
    # The same number for the same path on a later lookup.
    assert os.lstat(mount.p('tasks', '1', 'task.json')).st_ino == paths['tasks/1/task.json']


NODE_WALK = r"""
const fs = require('fs'), path = require('path');
const top = process.argv[1], seen = new Map(), collisions = [];
let n = 0;
function visit(p) {
  const st = fs.lstatSync(p);
  n++;
  const rel = path.relative(top, p) || '.';
  if (seen.has(st.ino)) collisions.push([rel, seen.get(st.ino), st.ino]);
  else seen.set(st.ino, rel);
  if (st.isDirectory()) for (const name of fs.readdirSync(p)) visit(path.join(p, name));
}
visit(top);
console.log(JSON.stringify({n, collisions}));
"""


def test_node_sees_no_inode_collisions(mount):
    node = shutil.which('node') or shutil.which('nodejs')
    if not node:
        pytest.skip('node is not installed (scripts/install-deps --test installs it)')
    populate(mount)
    count = sum(len(d) + len(f) for _, d, f in os.walk(mount.path)) + 1
    r = subprocess.run([node, '-e', NODE_WALK, mount.path], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out['n'] == count, (out['n'], count)
    assert not out['collisions'], (f"Node saw {len(out['collisions'])} collisions among {out['n']} entries, e.g. "
                                   f"{out['collisions'][:3]}")


# ---- e. page-cache coherence with descriptors held open ----

def test_held_descriptor_and_new_opens_after_a_change(mount):
    sid = mount.ok('session.open', {})['session_context']['session']['id']
    mount.ok('task.create', {'level': 'case', 'title': 'held'})
    mount.ok('case.begin', {'case_id': 1}, session=sid)

    # A one-page file.
    p = mount.p('tasks', '1', 'task.json')
    old_fd = os.open(p, os.O_RDONLY)
    try:
        old = read_fd_all(old_fd)
        mount.ok('step.check', {'case_id': 1, 'step_title': 'first', 'result': 'pass'}, session=sid)
        mount.ok('case.complete', {'case_id': 1, 'summary': 'done'}, session=sid)
        new = read_bytes(p)
        assert json.loads(old)['status'] == 'in_progress' and json.loads(new)['status'] == 'done', (old, new)
        assert json.loads(new) == mount.ok('task.get', {'task_id': 1})
        os.lseek(old_fd, 0, os.SEEK_SET)
        again = read_fd_all(old_fd)
        assert again in (old, new), again
        json.loads(again)
        assert read_bytes(p) == new
        assert os.stat(p).st_size == len(new)
    finally:
        os.close(old_fd)


def test_multi_page_file_is_never_a_mix(mount):
    sid = mount.ok('session.open', {})['session_context']['session']['id']
    mount.ok('task.create', {'level': 'case', 'title': 'long'})
    mount.ok('case.begin', {'case_id': 1}, session=sid)
    artifacts = [f'build/artifact-{i:03}.log' for i in range(20)]
    for i in range(20):
        mount.ok('step.check', {'case_id': 1, 'step_title': f'step {i}', 'result': 'pass',
                                'artifacts': artifacts}, session=sid)
    p = mount.p('tasks', '1', 'steps.json')

    def step(i):
        mount.ok('step.check', {'case_id': 1, 'step_title': f'more {i}', 'result': 'fail',
                                'artifacts': artifacts[:i % 20]}, session=sid)

    for rnd in range(4):
        old_fd = os.open(p, os.O_RDONLY)
        try:
            old = read_fd_all(old_fd)
            assert len(old) > 3 * 4096, len(old)
            step(rnd)
            # A new open sees the change, even though it reads only the first bytes before
            # the old descriptor reads again.
            a_fd = os.open(p, os.O_RDONLY)
            try:
                head = os.read(a_fd, 100)
                os.lseek(old_fd, 0, os.SEEK_SET)
                again = read_fd_all(old_fd)
                new = head + read_fd_all(a_fd)
            finally:
                os.close(a_fd)
            steps = json.loads(new)
            assert len(steps) == len(json.loads(old)) + 1 and steps[-1]['title'] == f'more {rnd}', new[-300:]
            assert again in (old, new), f'the held descriptor read a mix of {len(old)} and {len(new)} bytes'
            # What the held descriptor read back did not stay behind for later opens.
            assert read_bytes(p) == new
            assert os.stat(p).st_size == len(new)
        finally:
            os.close(old_fd)


# ---- f. task.list and graph.node.list pages ----

def page_through(mount, method, params, limit):
    pages, after = [], None
    for _ in range(100):
        req = dict(params, limit=limit)
        if after is not None:
            req['after_id'] = after
        page = mount.ok(method, req)
        assert isinstance(page, list), page
        assert len(page) <= limit
        if not page:
            break
        pages.append(page)
        after = page[-1]['id']
    return pages


@pytest.mark.parametrize('method,create,filt', [
    ('task.list', lambda i: ('task.create', {'level': 'case' if i % 3 else 'epic', 'title': f't{i}'}),
     {'level': 'case'}),
    ('graph.node.list', lambda i: ('graph.node.create', {'node_type': 'note' if i % 3 else 'risk', 'title': f'n{i}'}),
     {'node_type': 'note'}),
])
def test_list_limit_and_after_id(mount, method, create, filt):
    for i in range(25):
        mount.ok(*create(i))
    full = mount.ok(method, {})
    assert len(full) == 25
    ids = [x['id'] for x in full]
    assert ids == sorted(ids)

    pages = page_through(mount, method, {}, 10)
    assert [len(pg) for pg in pages] == [10, 10, 5]
    flat = [x for pg in pages for x in pg]
    assert flat == full
    assert all(a['id'] < b['id'] for a, b in zip(flat, flat[1:]))
    # The other inputs still filter, pages or not.
    filtered = mount.ok(method, filt)
    assert 0 < len(filtered) < 25
    pages = page_through(mount, method, filt, 4)
    assert [x for pg in pages for x in pg] == filtered
    # One page from the middle, a page past the end, a limit larger than the list, null.
    assert mount.ok(method, {'after_id': ids[4], 'limit': 3}) == full[5:8]
    assert mount.ok(method, {'after_id': ids[4]}) == full[5:]
    assert mount.ok(method, {'after_id': ids[-1], 'limit': 10}) == []
    assert mount.ok(method, {'limit': 50}) == full
    assert mount.ok(method, {'limit': None, 'after_id': None}) == full
    for bad in [0, -1, 2.5, '10', True, [], {}]:
        e = mount.fails(method, {'limit': bad}, 'invalid_params', errno.EINVAL)
        assert 'limit' in e['message'], e
    for bad in [-1, 2.5, 'x', [], {}]:
        e = mount.fails(method, {'after_id': bad}, 'invalid_params', errno.EINVAL)
        assert 'after_id' in e['message'], e
    # The usage text and `orchfs methods --json` (what the every-field validation test is generated from) has them.
    methods = json.loads(subprocess.run([ORCHFS, 'methods', '--json'], capture_output=True, text=True,
                                        check=True).stdout)
    names = [p['name'] for m in methods if m['name'] == method for p in m['params']]
    assert 'limit' in names and 'after_id' in names, names
    usage = open(mount.p('ctl', method)).read()
    assert 'limit' in usage and 'after_id' in usage, usage


# ---- g. many concurrent readers and writers ----

def test_concurrent_readers_and_writers(mount):
    mount.ok('session.open', {})
    mount.ok('task.create', {'level': 'epic', 'title': 'seed'})
    duration = 5.0
    deadline = time.monotonic() + duration
    errors, creates, reads = [], [0] * 8, [0] * 8
    lock = threading.Lock()

    def fail(what):
        with lock:
            errors.append(what)

    def writer(i):
        n = 0
        try:
            while time.monotonic() < deadline:
                err, reply = mount.call('task.create', {'level': 'case', 'title': f'w{i}-{n}'})
                if err or 'result' not in reply:
                    fail(('task.create', err, reply))
                    return
                creates[i] += 1
                owner = f'writer-{i}'
                err, reply = mount.call('lock.acquire', {'scope_type': 'file', 'scope_path': f'w{i}/f{n}.c',
                                                         'owner_session': owner})
                if err or 'result' not in reply:
                    fail(('lock.acquire', err, reply))
                    return
                err, reply = mount.call('lock.release', {'lock_id': reply['result']['id'], 'owner_session': owner})
                if err or 'result' not in reply:
                    fail(('lock.release', err, reply))
                    return
                n += 1
        except Exception as e:   # noqa: BLE001 -- reported below with the others
            fail(('writer', i, repr(e)))

    def reader(i):
        rnd = random.Random(i)
        try:
            while time.monotonic() < deadline:
                tasks = os.listdir(mount.p('tasks'))
                t = rnd.choice(tasks)
                p = mount.p('tasks', t, 'task.json')
                data = read_bytes(p)
                task = json.loads(data)
                if str(task['id']) != t:
                    fail(('task id', t, data))
                if os.stat(p).st_size != len(data):      # a task does not change here
                    fail(('task size', t, os.stat(p).st_size, len(data)))
                for name in os.listdir(mount.p('locks')):
                    try:
                        json.loads(read_bytes(mount.p('locks', name)))
                    except FileNotFoundError:
                        pass                           # released between the listing and the open
                json.loads(read_bytes(mount.p('sessions', '1', 'context.json')))
                os.listdir(mount.p('graph', 'nodes'))
                reads[i] += 1
        except Exception as e:   # noqa: BLE001
            fail(('reader', i, repr(e)))

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    threads += [threading.Thread(target=reader, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=duration + 120)
    assert not any(t.is_alive() for t in threads), 'a thread is stuck'
    assert not errors, errors[:5]
    assert all(c > 0 for c in creates) and all(r > 0 for r in reads), (creates, reads)
    total = sum(creates) + 1
    assert len(mount.ok('task.list', {})) == total
    assert len(os.listdir(mount.p('tasks'))) == total
    assert os.listdir(mount.p('locks')) == []


# ---- h. one thread (-s): a write that changes a file never waits for a lookup it blocks ----

def test_single_thread_mount_does_not_deadlock(repo, tmp_path):
    """With one thread, dropping a dentry while a lookup in the same directory waits for
    that thread would hang both: -s drops them from the notifier instead."""
    from conftest import Mount
    mp = tmp_path / 'mnt1'
    mp.mkdir()
    m = Mount(repo, mp, tmp_path / 'state1', str(tmp_path / 'orchfs1.log'))
    proc = subprocess.Popen([ORCHFS, 'mount', '-f', '-s', '--repo', str(repo), '--state', m.state, m.path],
                            stdout=subprocess.DEVNULL, stderr=open(m.log, 'ab'))
    m.proc = proc
    try:
        deadline = time.time() + 20
        while not os.path.ismount(m.path):
            assert proc.poll() is None and time.time() < deadline, open(m.log).read()
            time.sleep(0.02)
        m.ok('session.open', {})
        os.stat(m.p('sessions', '1', 'session.json'))    # the kernel holds its dentry
        stop = time.time() + 3
        # stat of names in sessions/1 (lookups holding the directory) beside heartbeats that change session.json
        script = (f'end=$((SECONDS+3)); while [ $SECONDS -lt $end ]; do stat {m.p("sessions", "1", "nx")} '
                  f'{m.p("sessions", "1", "session.json")} >/dev/null 2>&1; done')
        statter = subprocess.Popen(['bash', '-c', script])
        n = 0
        while time.time() < stop:
            m.ok('session.heartbeat', {'session_id': 1})
            n += 1
        assert statter.wait(timeout=30) is not None
        assert n > 10
        assert json.loads(open(m.p('sessions', '1', 'session.json')).read())['status'] == 'active_new'
    finally:
        m.stop()
    log = open(m.log).read()
    assert not [line for line in log.splitlines() if 'WARNING' in line or 'Sanitizer' in line], log


# ---- i. group commit: calls committed together stay independent ----

def test_batched_calls_fail_and_succeed_independently(mount):
    """Sixteen agents write at once, so the writer commits their calls in batches; a call
    that fails inside a batch (a lock conflict, a bad parent, a taken call_id) must change
    nothing, and every success must count exactly once in db_version."""
    mount.ok('task.create', {'level': 'epic', 'title': 'root'})
    mount.ok('lock.acquire', {'scope_type': 'prefix', 'scope_path': 'held', 'owner_session': 'owner'})
    mount.ok('task.create', {'level': 'case', 'title': 'taken', 'call_id': 'taken-id'})
    v0 = mount.ok('mirror.status')['db_version']
    results = []
    lock = threading.Lock()

    def agent(i):
        for k in range(25):
            kind = (i + k) % 4
            if kind == 0:
                req = ('task.create', {'level': 'case', 'title': f'a{i}-{k}', 'parent_id': 1})
            elif kind == 1:
                req = ('lock.acquire', {'scope_type': 'file', 'scope_path': f'held/f{i}-{k}.c',
                                        'owner_session': f'o{i}'})       # conflict with "held"
            elif kind == 2:
                req = ('task.create', {'level': 'case', 'title': 'orphan', 'parent_id': 999999})
            else:
                req = ('task.create', {'level': 'case', 'title': 'other', 'call_id': 'taken-id'})
            err, reply = mount.call(*req)
            with lock:
                results.append((kind, err, reply))

    threads = [threading.Thread(target=agent, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    by_kind = {k: [r for r in results if r[0] == k] for k in range(4)}
    assert all(err == 0 and 'result' in reply for _, err, reply in by_kind[0]), by_kind[0][:3]
    assert all(reply['error']['code'] == 'conflict' for _, _, reply in by_kind[1])
    assert all(reply['error']['code'] == 'not_found' for _, _, reply in by_kind[2])
    assert all(reply['error']['code'] == 'exists' for _, _, reply in by_kind[3])
    created = len(by_kind[0])
    assert created == 100
    # Exactly the successes moved db_version, and exactly their tasks exist.
    assert mount.ok('mirror.status')['db_version'] == v0 + created
    tasks = mount.ok('task.list', {})
    assert len(tasks) == 2 + created
    assert sorted(t['title'] for t in tasks if t['title'].startswith('a')) == \
        sorted(f'a{i}-{k}' for i in range(16) for k in range(25) if (i + k) % 4 == 0)
    assert not [t for t in tasks if t['title'] in ('orphan', 'other')]
    assert [x['scope_path'] for x in map(json.loads, (open(mount.p('locks', n)).read()
                                                      for n in os.listdir(mount.p('locks'))))] == ['held']
