"""Isolation through the mount: locks (rules, races, expiry), worktrees (spawn, merge, abandon,
reconciliation) and bad input, with every git effect checked with git itself."""
import errno
import hashlib
import json
import os
import subprocess
import threading
import time

import pytest

from conftest import ORCHFS, git


def tip(repo, branch):
    r = git(repo, 'rev-parse', '-q', '--verify', f'refs/heads/{branch}', check=False)
    return r.stdout.strip() or None


def commit(path, name, content, msg=None):
    with open(os.path.join(path, name), 'w') as f:
        f.write(content)
    git(path, 'add', name)
    git(path, '-c', 'user.name=t', '-c', 'user.email=t@e', 'commit', '-q', '-m', msg or f'change {name}')


def tree_digest(path):
    """Hash of every file (name and bytes) in a checkout, .git excluded."""
    h = hashlib.sha256()
    for root, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if d != '.git')
        for name in sorted(files):
            p = os.path.join(root, name)
            h.update(os.path.relpath(p, path).encode() + b'\0')
            with open(p, 'rb') as f:
                h.update(f.read())
    return h.hexdigest()


def open_session(mount):
    ctx = mount.ok('session.open', {})['session_context']
    return ctx['session']['id'], ctx['session_root_worktree']


def acquire(mount, scope_type, path, owner, **kw):
    return mount.call('lock.acquire', dict(scope_type=scope_type, scope_path=path, owner_session=owner, **kw))


# ---- tree ----

def test_tree_lists_worktrees_and_active_locks(mount):
    sid, root = open_session(mount)
    assert sorted(os.listdir(mount.p('worktrees'))) == ['1.json', '2.json']
    assert mount.read_json('worktrees', '2.json') == root
    assert mount.read_json('worktrees', '1.json')['kind'] == 'main'
    child = mount.ok('worktree.spawn', {'parent_worktree_id': root['id']}, session=sid)
    assert mount.read_json('worktrees', f"{child['id']}.json") == child
    assert os.listdir(mount.p('locks')) == []
    lock = mount.ok('lock.acquire', {'scope_type': 'file', 'scope_path': 'a.c'}, session=sid)
    assert lock['owner_session'] == str(sid)
    assert os.listdir(mount.p('locks')) == ['1.json']
    assert mount.read_json('locks', '1.json') == lock
    st = os.stat(mount.p('locks', '1.json'))
    assert st.st_size == len(open(mount.p('locks', '1.json'), 'rb').read())
    released = mount.ok('lock.release', {'lock_id': 1}, session=sid)
    assert released['state'] == 'released'
    assert os.listdir(mount.p('locks')) == []
    assert not os.path.exists(mount.p('locks', '1.json'))
    # Read-only like every state file.
    with pytest.raises(OSError) as e:
        open(mount.p('worktrees', '1.json'), 'w')
    assert e.value.errno == errno.EROFS
    assert 'worktree.spawn' in os.listdir(mount.p('sessions', str(sid), 'ctl'))
    assert 'lock.acquire' in os.listdir(mount.p('sessions', str(sid), 'ctl'))
    assert 'scheduler.decide_worktree' not in os.listdir(mount.p('sessions', str(sid), 'ctl'))
    assert 'worktrees/<id>.json' in open(mount.p('README.md')).read()


def test_scheduler_through_ctl(mount):
    r = mount.ok('scheduler.decide_worktree', {'changed_files': 3, 'estimate_minutes': 16, 'risk': 2,
                                               'parallel_workers': 0, 'conflicting_paths': -4})
    assert r == {'mode': 'shared', 'score': 11,
                 'reasons': ['changed_files=3', 'estimate_minutes=16(+2)', 'risk=2(+6)']}
    usage = open(mount.p('ctl', 'scheduler.decide_worktree')).read()
    assert 'conflicting_paths' in usage and 'Example' in usage
    assert mount.db_version() == 0


# ---- lock rules ----

# (held, requested, conflict?) with different owners.
RULES = [
    (('file', 'src/a.c'), ('file', 'src/a.c'), True),
    (('file', 'src/a.c'), ('file', 'src/b.c'), False),
    (('file', 'src/a.c'), ('prefix', 'src'), True),
    (('prefix', 'src'), ('file', 'src/a.c'), True),
    (('prefix', 'src/api'), ('file', 'src/api/users.go'), True),
    (('prefix', 'src/api'), ('file', 'src/apix/users.go'), False),
    (('prefix', 'src/api'), ('prefix', 'src/apix'), False),
    (('prefix', 'src/apix'), ('prefix', 'src/api'), False),
    (('prefix', 'src/api'), ('prefix', 'src'), True),
    (('prefix', 'src'), ('prefix', 'src/api/v1'), True),
    (('prefix', 'src/api'), ('prefix', 'src/api'), True),
    (('prefix', '.'), ('file', 'deep/in/the/tree.txt'), True),
    (('file', 'top.txt'), ('prefix', '.'), True),
    (('prefix', 'docs'), ('prefix', '.'), True),
    (('prefix', 'a/b'), ('prefix', 'a/c'), False),
    (('file', 'src/api'), ('file', 'src/api/x'), False),
    (('prefix', './src//api/'), ('file', 'src/api/x'), True),
]


@pytest.mark.parametrize('held,req,conflict', RULES,
                         ids=[f'{h[0]}:{h[1]}-{r[0]}:{r[1]}' for h, r, _ in RULES])
def test_lock_conflict_rule(mount, held, req, conflict):
    err, reply = acquire(mount, held[0], held[1], 'alice')
    assert err == 0, reply
    held_id = reply['result']['id']
    v = mount.db_version()
    err, reply = acquire(mount, req[0], req[1], 'bob')
    if conflict:
        assert err == errno.EBUSY and reply['error']['code'] == 'conflict', reply
        assert reply['error']['details']['lock']['id'] == held_id
        assert reply['error']['details']['lock']['owner_session'] == 'alice'
        assert mount.db_version() == v
        assert os.listdir(mount.p('locks')) == [f'{held_id}.json']
        # The same owner never conflicts with itself.
        err, reply = acquire(mount, req[0], req[1], 'alice')
        assert err == 0, reply
    else:
        assert err == 0, reply
        assert mount.db_version() == v + 1


def test_lock_bad_scopes_rejected(mount):
    for path in ['/etc', '/etc/passwd', '../x', 'a/../../x', '']:
        mount.fails('lock.acquire', {'scope_type': 'prefix', 'scope_path': path, 'owner_session': 'a'},
                    'invalid_params', errno.EINVAL)
    mount.fails('lock.acquire', {'scope_type': 'file', 'scope_path': '.', 'owner_session': 'a'},
                'invalid_params', errno.EINVAL)
    mount.fails('lock.acquire', {'scope_type': 'folder', 'scope_path': 'x', 'owner_session': 'a'},
                'invalid_params', errno.EINVAL)
    mount.fails('lock.acquire', {'scope_type': 'file', 'scope_path': 'x', 'owner_session': 'a', 'ttl_seconds': -1},
                'invalid_params', errno.EINVAL)
    mount.fails('lock.acquire', {'scope_type': 'file', 'scope_path': 'x'}, 'invalid_params', errno.EINVAL)
    assert mount.db_version() == 0
    assert os.listdir(mount.p('locks')) == []


def test_lock_owner_checks_through_session_ctl(mount):
    s1, _ = open_session(mount)
    s2, _ = open_session(mount)
    lock = mount.ok('lock.acquire', {'scope_type': 'prefix', 'scope_path': 'src'}, session=s1)
    v = mount.db_version()
    mount.fails('lock.heartbeat', {'lock_id': lock['id']}, 'forbidden', errno.EPERM, session=s2)
    mount.fails('lock.release', {'lock_id': lock['id']}, 'forbidden', errno.EPERM, session=s2)
    mount.fails('lock.release', {'lock_id': lock['id'], 'owner_session': '1'}, 'invalid_params', errno.EINVAL,
                session=s2)
    mount.fails('lock.acquire', {'scope_type': 'file', 'scope_path': 'src/x'}, 'conflict', errno.EBUSY, session=s2)
    assert mount.db_version() == v
    hb = mount.ok('lock.heartbeat', {'lock_id': lock['id'], 'ttl_seconds': 900}, session=s1)
    assert hb['lease_until'] > lock['lease_until']
    mount.ok('lock.release', {'lock_id': lock['id']}, session=s1)
    mount.fails('lock.release', {'lock_id': lock['id']}, 'not_found', errno.ENOENT, session=s1)
    mount.fails('lock.heartbeat', {'lock_id': lock['id']}, 'not_found', errno.ENOENT, session=s1)
    mount.ok('lock.acquire', {'scope_type': 'file', 'scope_path': 'src/x'}, session=s2)


def test_lock_expiry_with_one_second_ttl(mount):
    s1, _ = open_session(mount)
    s2, _ = open_session(mount)
    lock = mount.ok('lock.acquire', {'scope_type': 'prefix', 'scope_path': 'src', 'ttl_seconds': 1}, session=s1)
    assert os.listdir(mount.p('locks')) == [f"{lock['id']}.json"]
    mount.fails('lock.acquire', {'scope_type': 'file', 'scope_path': 'src/a.c'}, 'conflict', errno.EBUSY, session=s2)
    time.sleep(1.2)
    # Gone without anyone calling anything.
    v = mount.db_version()
    assert os.listdir(mount.p('locks')) == []
    assert not os.path.exists(mount.p('locks', f"{lock['id']}.json"))
    # Cannot be revived, cannot be released.
    e = mount.fails('lock.heartbeat', {'lock_id': lock['id']}, 'invalid_state', errno.EINVAL, session=s1)
    assert e['details']['state'] == 'expired'
    mount.fails('lock.release', {'lock_id': lock['id']}, 'not_found', errno.ENOENT, session=s1)
    assert mount.db_version() == v
    # And never conflicts.
    other = mount.ok('lock.acquire', {'scope_type': 'file', 'scope_path': 'src/a.c'}, session=s2)
    assert os.listdir(mount.p('locks')) == [f"{other['id']}.json"]


# ---- races ----

# Every pair of these scopes overlaps: a chain of prefixes and one file at the bottom.
def chain(r):
    base = f'race{r}'
    return ([('prefix', base), ('prefix', f'{base}/a'), ('prefix', f'{base}/a/b'), ('prefix', f'{base}/a/b/c'),
             ('prefix', f'{base}/a/b/c/d'), ('prefix', f'{base}/a/b/c/d/e')] +
            [('file', f'{base}/a/b/c/d/e/f.txt')] * 2)


def active_locks(mount):
    return [mount.read_json('locks', n) for n in os.listdir(mount.p('locks'))]


def test_race_eight_agents_one_file_through_mount(mount):
    rounds = 40
    for r in range(rounds):
        path = f'race/{r}.txt'
        barrier = threading.Barrier(8)
        results = [None] * 8

        def agent(i):
            barrier.wait()
            results[i] = acquire(mount, 'file', path, f'agent{i}')

        threads = [threading.Thread(target=agent, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        winners = [res for err, res in results if err == 0]
        losers = [res for err, res in results if err != 0]
        assert len(winners) == 1, results
        assert all(err == errno.EBUSY and res['error']['code'] == 'conflict' for err, res in results if err), results
        assert all(res['error']['details']['lock']['id'] == winners[0]['result']['id'] for res in losers)
    holders = [(l['scope_path'], l['owner_session']) for l in active_locks(mount)]
    assert len(holders) == rounds and len({p for p, _ in holders}) == rounds


def test_race_overlapping_scopes_through_mount(mount):
    for r in range(20):
        scopes = chain(r)
        barrier = threading.Barrier(len(scopes))
        results = [None] * len(scopes)

        def agent(i):
            barrier.wait()
            results[i] = acquire(mount, scopes[i][0], scopes[i][1], f'agent{i}')

        threads = [threading.Thread(target=agent, args=(i,)) for i in range(len(scopes))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sum(1 for err, _ in results if err == 0) == 1, results
    assert len(active_locks(mount)) == 20


def test_race_eight_processes_orchfs_call(mount):
    """`orchfs call` processes truly run in parallel; BEGIN IMMEDIATE serialises them."""
    rounds = 12
    for r in range(rounds):
        scopes = [('file', f'proc/{r}.txt')] * 8 if r % 2 == 0 else chain(100 + r)
        procs = [subprocess.Popen([ORCHFS, 'call', '--repo', str(mount.repo), '--state', mount.state,
                                   'lock.acquire', json.dumps({'scope_type': t, 'scope_path': p,
                                                               'owner_session': f'proc{i}'})],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for i, (t, p) in enumerate(scopes)]
        outs = [(p.wait(), json.loads(p.communicate()[0])) for p in procs]
        winners = [o for rc, o in outs if rc == 0]
        assert len(winners) == 1, outs
        assert all(o['error']['code'] == 'conflict' for rc, o in outs if rc != 0), outs
    assert len(active_locks(mount)) == rounds
    # Mount and processes racing together.
    path = 'mixed.txt'
    barrier = threading.Barrier(4)
    results = []

    def agent(i):
        barrier.wait()
        results.append(acquire(mount, 'file', path, f'm{i}')[0] == 0)

    threads = [threading.Thread(target=agent, args=(i,)) for i in range(4)]
    procs = [subprocess.Popen([ORCHFS, 'call', '--repo', str(mount.repo), '--state', mount.state, 'lock.acquire',
                               json.dumps({'scope_type': 'file', 'scope_path': path, 'owner_session': f'p{i}'})],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    results += [p.wait() == 0 for p in procs]
    for p in procs:
        p.communicate()
    assert results.count(True) == 1, results
    assert [l['scope_path'] for l in active_locks(mount)].count(path) == 1


# ---- worktrees ----

def test_spawn_commit_merge_to_parent(mount):
    sid, root = open_session(mount)
    child = mount.ok('worktree.spawn', {'parent_worktree_id': root['id']}, session=sid)
    assert child['branch'] == f"task/{sid}/{child['id']}"
    assert child['path'] == os.path.join(mount.state, 'worktrees', f"task-{sid}-{child['id']}")
    wl = git(mount.repo, 'worktree', 'list', '--porcelain').stdout
    assert f"worktree {child['path']}" in wl and f"branch refs/heads/{child['branch']}" in wl
    # The agent works in the child with plain git.
    commit(child['path'], 'feature.txt', 'new feature\n')
    child_tip = tip(mount.repo, child['branch'])
    parent_before = tip(mount.repo, root['branch'])
    v = mount.db_version()
    r = mount.ok('worktree.merge_to_parent', {'worktree_id': child['id']}, session=sid)
    assert r['result'] == 'merged_to_parent'
    assert r['child_worktree']['status'] == 'closed'
    assert r['child_worktree']['merge_state'] == 'merged_to_parent'
    assert mount.db_version() == v + 1
    parent_after = tip(mount.repo, root['branch'])
    assert r['merge_commit'] == parent_after
    parents = git(mount.repo, 'rev-list', '--parents', '-n', '1', parent_after).stdout.split()
    assert parents == [parent_after, parent_before, child_tip]
    assert git(mount.repo, 'show', f"{root['branch']}:feature.txt").stdout == 'new feature\n'
    # The parent's checkout follows, clean.
    assert open(os.path.join(root['path'], 'feature.txt')).read() == 'new feature\n'
    assert git(root['path'], 'status', '--porcelain').stdout == ''
    assert mount.read_json('worktrees', f"{child['id']}.json")['status'] == 'closed'
    e = mount.fails('worktree.merge_to_parent', {'worktree_id': child['id']}, 'invalid_state', errno.EINVAL,
                    session=sid)
    assert e['details']['state'] == 'merged_to_parent'
    assert git(mount.repo, 'fsck', '--no-progress').returncode == 0


def test_conflicting_merge_leaves_parent_identical(mount):
    sid, root = open_session(mount)
    child = mount.ok('worktree.spawn', {'parent_worktree_id': root['id']}, session=sid)
    commit(root['path'], 'README', 'parent version\n')
    commit(child['path'], 'README', 'child version\n')
    commit(child['path'], 'clean.txt', 'no conflict here\n')
    before_tip = tip(mount.repo, root['branch'])
    before_files = tree_digest(root['path'])
    before_index = open(os.path.join(git(root['path'], 'rev-parse', '--git-dir').stdout.strip(), 'index'),
                        'rb').read()
    v = mount.db_version()
    e = mount.fails('worktree.merge_to_parent', {'worktree_id': child['id']}, 'conflict', errno.EBUSY, session=sid)
    assert e['details']['paths'] == ['README']
    assert 'README' in e['message']
    assert tip(mount.repo, root['branch']) == before_tip
    assert tree_digest(root['path']) == before_files
    gitdir = git(root['path'], 'rev-parse', '--git-dir').stdout.strip()
    assert open(os.path.join(gitdir, 'index'), 'rb').read() == before_index
    assert not os.path.exists(os.path.join(gitdir, 'MERGE_HEAD'))
    assert git(root['path'], 'status', '--porcelain').stdout == ''
    assert mount.db_version() == v
    assert mount.read_json('worktrees', f"{child['id']}.json")['status'] == 'active'


def test_dirty_parent_is_invalid_state(mount):
    sid, root = open_session(mount)
    child = mount.ok('worktree.spawn', {'parent_worktree_id': root['id']}, session=sid)
    commit(child['path'], 'x.txt', 'x\n')
    with open(os.path.join(root['path'], 'README'), 'a') as f:
        f.write('uncommitted\n')
    before = tip(mount.repo, root['branch'])
    e = mount.fails('worktree.merge_to_parent', {'worktree_id': child['id']}, 'invalid_state', errno.EINVAL,
                    session=sid)
    assert e['details']['paths'] == ['README']
    assert tip(mount.repo, root['branch']) == before
    assert not os.path.exists(os.path.join(root['path'], 'x.txt'))


def test_abandon(mount):
    sid, root = open_session(mount)
    s2, _ = open_session(mount)
    child = mount.ok('worktree.spawn', {'parent_worktree_id': root['id']}, session=sid)
    planned = mount.ok('worktree.spawn', {'parent_worktree_id': root['id'], 'create_on_disk': False}, session=sid)
    assert planned['status'] == 'planned' and tip(mount.repo, planned['branch']) is None
    commit(child['path'], 'work.txt', 'committed work\n')
    with open(os.path.join(child['path'], 'scratch.txt'), 'w') as f:
        f.write('not committed\n')
    v = mount.db_version()
    mount.fails('worktree.abandon', {'worktree_id': child['id']}, 'forbidden', errno.EPERM, session=s2)
    e = mount.fails('worktree.abandon', {'worktree_id': child['id']}, 'invalid_state', errno.EINVAL, session=sid)
    assert e['details']['paths'] == ['scratch.txt']
    assert os.path.exists(os.path.join(child['path'], 'scratch.txt'))
    mount.fails('worktree.abandon', {'worktree_id': root['id']}, 'invalid_state', errno.EINVAL, session=sid)
    assert mount.db_version() == v
    os.unlink(os.path.join(child['path'], 'scratch.txt'))
    branch_tip = tip(mount.repo, child['branch'])
    r = mount.ok('worktree.abandon', {'worktree_id': child['id']}, session=sid)
    assert r['status'] == 'abandoned'
    assert not os.path.exists(child['path'])
    assert child['path'] not in git(mount.repo, 'worktree', 'list', '--porcelain').stdout
    assert tip(mount.repo, child['branch']) == branch_tip  # the branch is kept
    assert sorted(os.listdir(os.path.join(mount.state, 'worktrees'))) == ['session-1', 'session-2']
    assert mount.ok('worktree.abandon', {'worktree_id': planned['id']}, session=sid)['status'] == 'abandoned'
    assert mount.read_json('worktrees', f"{child['id']}.json")['status'] == 'abandoned'
    mount.fails('worktree.abandon', {'worktree_id': child['id']}, 'invalid_state', errno.EINVAL, session=sid)
    assert mount.db_version() == v + 2


def test_reconcile_after_deleting_worktree_while_unmounted(mount):
    sid, root = open_session(mount)
    child = mount.ok('worktree.spawn', {'parent_worktree_id': root['id']}, session=sid)
    keep = mount.ok('worktree.spawn', {'parent_worktree_id': root['id']}, session=sid)
    mount.stop()
    subprocess.run(['rm', '-rf', child['path']], check=True)
    assert 'prunable' in git(mount.repo, 'worktree', 'list', '--porcelain').stdout
    mount.start()
    assert mount.read_json('worktrees', f"{child['id']}.json")['status'] == 'missing'
    assert mount.read_json('worktrees', f"{keep['id']}.json")['status'] == 'active'
    wl = git(mount.repo, 'worktree', 'list', '--porcelain').stdout
    assert 'prunable' not in wl and child['path'] not in wl and keep['path'] in wl
    log = open(mount.log).read()
    assert f"reconcile: worktree {child['id']} ({child['path']}) missing" in log
    assert f"reconcile: pruned git metadata orchfs-{os.path.basename(child['path'])}" in log
    assert 'reconcile: 2 worktrees ok, 1 changed' in log
    # The missing child no longer blocks: it can be abandoned.
    assert mount.ok('worktree.abandon', {'worktree_id': child['id']}, session=sid)['status'] == 'abandoned'
    # A restart with nothing new says so and changes nothing.
    v = mount.db_version()
    mount.stop()
    mount.start()
    assert mount.db_version() == v
    assert open(mount.log).read().count('reconcile: 2 worktrees ok, 0 changed') == 1


def test_bad_paths_and_branch_names_create_nothing(mount):
    sid, root = open_session(mount)
    v = mount.db_version()
    branches_before = git(mount.repo, 'branch', '--list', '--format=%(refname)').stdout
    entries_before = sorted(os.listdir(os.path.join(mount.state, 'worktrees')))
    for path in ['/etc', '../x', '', '..', 'a/../../x', '/tmp/elsewhere']:
        for method, params in [('worktree.create', {'branch': 'ok-branch', 'create_on_disk': True}),
                               ('worktree.spawn', {'session_id': sid, 'parent_worktree_id': root['id']})]:
            e = mount.fails(method, dict(params, path=path), 'invalid_params', errno.EINVAL)
            assert 'path' in e['message']
    for branch in ['a..b', 'bad branch', '-x', 'x.lock', 'a/', '@', 'HEAD', 'a:b', 'x~1', '']:
        for method, params in [('worktree.create', {'create_on_disk': True}),
                               ('worktree.spawn', {'session_id': sid, 'parent_worktree_id': root['id']})]:
            e = mount.fails(method, dict(params, branch=branch), 'invalid_params', errno.EINVAL)
            assert 'branch' in e['message']
    mount.fails('worktree.create', {'branch': 'main', 'create_on_disk': True}, 'exists', errno.EEXIST)
    mount.fails('worktree.spawn', {'session_id': sid, 'parent_worktree_id': 99}, 'not_found', errno.ENOENT)
    mount.fails('worktree.spawn', {'session_id': sid, 'parent_worktree_id': root['id'], 'base_ref': 'no-such-ref'},
                'not_found', errno.ENOENT)
    assert mount.db_version() == v
    assert git(mount.repo, 'branch', '--list', '--format=%(refname)').stdout == branches_before
    assert sorted(os.listdir(os.path.join(mount.state, 'worktrees'))) == entries_before
    assert not os.path.exists('/tmp/elsewhere')
    assert sorted(os.listdir(mount.p('worktrees'))) == ['1.json', '2.json']


def test_worktree_create_planned_then_on_disk(mount):
    w = mount.ok('worktree.create', {'branch': 'feature/login'})
    assert w['status'] == 'planned' and w['kind'] == 'task_branch'
    assert w['path'] == os.path.join(mount.state, 'worktrees', 'feature-login')
    assert tip(mount.repo, 'feature/login') is None and not os.path.exists(w['path'])
    mount.fails('worktree.create', {'branch': 'feature/login'}, 'exists', errno.EEXIST)
    d = mount.ok('worktree.create', {'branch': 'feature/signup', 'path': 'team/signup', 'create_on_disk': True})
    assert d['status'] == 'active'
    assert d['path'] == os.path.join(mount.state, 'worktrees', 'team', 'signup')
    assert git(d['path'], 'rev-parse', '--abbrev-ref', 'HEAD').stdout.strip() == 'feature/signup'
    assert open(os.path.join(d['path'], 'README')).read() == 'hello\n'
    assert not d['path'].startswith(mount.path)


def test_reserved_names_keep_session_open_and_spawn_working(mount):
    v = mount.db_version()
    for params in [{'branch': 'session/2', 'create_on_disk': True},
                   {'branch': 'task/1/3'},
                   {'branch': 'b3', 'path': 'session-1', 'create_on_disk': True},
                   {'branch': 'b3', 'path': 'task-1-3/x'},
                   {'branch': 'session-2', 'create_on_disk': True}]:
        e = mount.fails('worktree.create', params, 'invalid_params', errno.EINVAL)
        assert 'reserved for orchfs' in e['message']
    assert mount.db_version() == v
    assert not os.path.exists(os.path.join(mount.state, 'worktrees', 'session-1'))
    sid, root = open_session(mount)
    s2, root2 = open_session(mount)
    assert root['branch'] == 'session/1' and root2['branch'] == 'session/2'
    child = mount.ok('worktree.spawn', {'parent_worktree_id': root['id']}, session=sid)
    assert child['branch'] == f"task/{sid}/{child['id']}"
    e = mount.fails('worktree.spawn', {'parent_worktree_id': root['id'], 'branch': 'task/1/99'}, 'invalid_params',
                    errno.EINVAL, session=sid)
    assert 'reserved for orchfs' in e['message']


def test_same_last_component_in_two_paths(mount):
    a = mount.ok('worktree.create', {'branch': 'one', 'path': 'a/x', 'create_on_disk': True})
    b = mount.ok('worktree.create', {'branch': 'two', 'path': 'b/x', 'create_on_disk': True})
    wl = git(mount.repo, 'worktree', 'list', '--porcelain').stdout
    assert f"worktree {a['path']}\n" in wl and f"worktree {b['path']}\n" in wl and 'prunable' not in wl
    assert git(a['path'], 'rev-parse', '--abbrev-ref', 'HEAD').stdout.strip() == 'one'
    assert git(b['path'], 'rev-parse', '--abbrev-ref', 'HEAD').stdout.strip() == 'two'


def make_leftover(repo, state, rel, branch, base):
    """A checkout and branch as a call killed before its commit leaves them (metadata named orchfs-*)."""
    path = os.path.join(state, 'worktrees', rel)
    git(repo, 'worktree', 'add', '-q', '-b', branch, path, base)
    name = os.path.basename(path)
    os.rename(os.path.join(repo, '.git', 'worktrees', name), os.path.join(repo, '.git', 'worktrees', 'orchfs-' + name))
    with open(os.path.join(path, '.git'), 'w') as f:
        f.write(f"gitdir: {os.path.join(repo, '.git', 'worktrees', 'orchfs-' + name)}\n")
    assert git(path, 'status', '--porcelain').stdout == ''
    return path


def test_leftovers_of_interrupted_spawns_are_reclaimed(mount):
    sid, root = open_session(mount)
    commit(root['path'], 'root.txt', 'root work\n')
    # Killed before its commit while the daemon runs: the next default spawn reuses the id and takes it back.
    make_leftover(mount.repo, mount.state, f'task-{sid}-3', f'task/{sid}/3', f'session/{sid}')
    child = mount.ok('worktree.spawn', {'parent_worktree_id': root['id']}, session=sid)
    assert child['id'] == 3 and child['branch'] == f'task/{sid}/3'
    assert open(os.path.join(child['path'], 'root.txt')).read() == 'root work\n'
    # Left while unmounted: start-up removes it and says so; one with work of its own stays.
    mount.stop()
    gone = make_leftover(mount.repo, mount.state, f'task-{sid}-4', f'task/{sid}/4', f'session/{sid}')
    kept = make_leftover(mount.repo, mount.state, 'feature', 'feature', 'main')
    commit(kept, 'mine.txt', 'precious\n')
    mount.start()
    log = open(mount.log).read()
    assert f'reconcile: took back branch task/{sid}/4 ({gone})' in log
    assert 'removed orchfs-feature' not in log
    assert not os.path.exists(gone) and tip(mount.repo, f'task/{sid}/4') is None
    assert open(os.path.join(kept, 'mine.txt')).read() == 'precious\n'
    assert mount.ok('worktree.spawn', {'parent_worktree_id': root['id']}, session=sid)['branch'] == f'task/{sid}/4'
