"""Several machines, one state: worktrees stay on the host that made them.

Two daemons serve the same repository and state directory with different
--host names (SQLite lets several processes share the database), standing in
for two machines sharing a replicated store.  A worktree made through host
a's mount is recorded as on "a": its checkout and branch are touched only
through a daemon of host a (else invalid_state naming the host, EINVAL), its
record reads anywhere, and host b's start-up never marks it missing.
"""
import errno
import json
import os
import shutil
import subprocess

import pytest

from conftest import BAD_OUTPUT, ORCHFS, Mount, check_sanitizers, git


def stop_and_check(m):
    m.stop()
    log = open(m.log).read()
    bad = [line for line in log.splitlines() if BAD_OUTPUT.search(line)]
    assert not bad, 'daemon reported:\n' + log
    assert m.stop_problem is None, m.stop_problem + ':\n' + log


@pytest.fixture
def hosts(repo, tmp_path):
    """Daemons of hosts "a" and "b" on one repository and state."""
    ms = []
    for name in ('a', 'b'):
        mp = tmp_path / f'mnt-{name}'
        mp.mkdir()
        m = Mount(repo, mp, tmp_path / 'state', str(tmp_path / f'orchfs-{name}.log'), ['--host', name])
        m.start()
        ms.append(m)
    yield ms
    for m in ms:
        stop_and_check(m)


def commit_in(path, name):
    with open(os.path.join(path, name), 'w') as f:
        f.write(name + '\n')
    git(path, 'add', name)
    git(path, 'commit', '-q', '-m', 'add ' + name)


def refused(m, method, params, wt_id, host='a', session=None):
    e = m.fails(method, params, 'invalid_state', errno.EINVAL, session=session)
    assert f'worktree {wt_id} is on host "{host}"; call this through a daemon on that host' in e['message'], e
    assert e['details']['state'] == 'other_host', e
    return e


def test_another_hosts_worktree_is_refused_and_reads_work(hosts):
    a, b = hosts
    sid = a.ok('session.open', {})['session_context']['session']['id']
    root = a.read_json('sessions', str(sid), 'context.json')['session_root_worktree']
    assert root['host'] == 'a'
    child = a.ok('worktree.spawn', {}, session=sid)
    assert child['host'] == 'a' and child['parent_worktree_id'] == root['id']
    commit_in(child['path'], 'c.txt')
    before = b.db_version()
    refused(b, 'worktree.merge_to_parent', {'session_id': sid, 'worktree_id': child['id']}, child['id'])
    refused(b, 'worktree.abandon', {'session_id': sid, 'worktree_id': child['id']}, child['id'])
    refused(b, 'worktree.spawn', {'session_id': sid, 'parent_worktree_id': root['id']}, root['id'])
    refused(b, 'session.close', {'session_id': sid, 'remove_worktree': True}, root['id'])
    # Through host b's sessions/<id>/ctl/ too (the session is implied).
    refused(b, 'worktree.merge_to_parent', {'worktree_id': child['id']}, child['id'], session=sid)
    # `echo > ctl` in a shell sees the errno.
    r = subprocess.run(['bash', '-c', f'echo \'{{"session_id": {sid}, "worktree_id": {child["id"]}}}\' > '
                        + b.p('ctl', 'worktree.abandon')], capture_output=True, text=True)
    assert r.returncode != 0 and 'Invalid argument' in r.stderr, r
    assert b.db_version() == before
    # Reads of the records work through b, and show the host.
    assert b.read_json('worktrees', f'{child["id"]}.json')['host'] == 'a'
    assert b.read_json('worktrees', f'{child["id"]}.json')['status'] == 'active'
    ctx = b.ok('session.context', {'session_id': sid})
    assert ctx['session_root_worktree']['host'] == 'a' and ctx['main_worktree']['host'] == 'a'
    assert b.read_json('sessions', str(sid), 'context.json')['main_worktree']['host'] == 'a'
    # Host a does it.
    r = a.ok('worktree.merge_to_parent', {'worktree_id': child['id']}, session=sid)
    assert r['child_worktree']['status'] == 'closed'
    # Queueing the root for main reads its checkout and branch: host a's too.
    refused(b, 'merge.main.request', {'session_id': sid, 'from_worktree_id': root['id']}, root['id'])


def test_each_host_has_its_own_main_and_the_queue_runs_where_the_root_is(hosts):
    a, b = hosts
    ca = a.ok('session.open', {})['session_context']
    cb = b.ok('session.open', {})['session_context']
    assert ca['main_worktree']['host'] == 'a' and cb['main_worktree']['host'] == 'b'
    assert ca['main_worktree']['id'] != cb['main_worktree']['id']
    assert ca['main_worktree']['path'] == cb['main_worktree']['path']
    assert b.ok('session.open', {'worktree': False})['session_context']['main_worktree']['id'] == \
        cb['main_worktree']['id']
    # b's own worktrees are b's to use.
    sid_b = cb['session']['id']
    kid = b.ok('worktree.spawn', {}, session=sid_b)
    assert kid['host'] == 'b'
    refused(a, 'worktree.abandon', {'session_id': sid_b, 'worktree_id': kid['id']}, kid['id'], 'b')
    assert b.ok('worktree.abandon', {'worktree_id': kid['id']}, session=sid_b)['status'] == 'abandoned'
    # a's session root goes to main through a.
    sid = ca['session']['id']
    root = ca['session_root_worktree']
    commit_in(root['path'], 'r.txt')
    item = a.ok('merge.main.request', {'from_worktree_id': root['id']}, session=sid)
    b.ok('merge.main.acquire_lock', {}, session=sid)
    refused(b, 'merge.main.run', {'session_id': sid}, root['id'])
    assert b.ok('merge.main.status', {'request_id': item['id']})['state'] == 'queued'
    assert a.ok('merge.main.run', {}, session=sid)['state'] == 'merged'
    assert os.path.exists(os.path.join(str(a.repo), 'r.txt'))


def test_restarting_b_never_marks_as_worktrees_missing(hosts):
    a, b = hosts
    sid = a.ok('session.open', {})['session_context']['session']['id']
    child = a.ok('worktree.spawn', {}, session=sid)
    stop_and_check(a)
    # As if b were another machine: a's checkout is not on its disk.
    aside = child['path'] + '.elsewhere'
    os.rename(child['path'], aside)
    before = b.db_version()
    b.stop()
    b.start()
    assert b.read_json('worktrees', f'{child["id"]}.json')['status'] == 'active'
    assert b.db_version() == before
    assert f'worktree {child["id"]} (' not in open(b.log).read()
    # orchfs check for host b finds no problem with it; for host a it does.
    r = subprocess.run([ORCHFS, 'check', '--repo', str(b.repo), '--state', b.state, '--host', 'b'],
                       capture_output=True, text=True)
    check_sanitizers(r, 'orchfs check')
    assert 'is not a checkout' not in r.stdout, r.stdout
    r = subprocess.run([ORCHFS, 'check', '--repo', str(b.repo), '--state', b.state, '--host', 'a'],
                       capture_output=True, text=True)
    check_sanitizers(r, 'orchfs check')
    assert f'worktree {child["id"]} is active but' in r.stdout, r.stdout
    # Host a's own start-up does mark it: the check is only scoped, not gone.
    a.start()
    assert a.read_json('worktrees', f'{child["id"]}.json')['status'] == 'missing'
    shutil.rmtree(aside)


def test_orchfs_call_takes_host_and_bad_names_are_usage_errors(hosts, tmp_path):
    a, b = hosts
    sid = a.ok('session.open', {})['session_context']['session']['id']
    child = a.ok('worktree.spawn', {}, session=sid)
    base = [ORCHFS, 'call', '--repo', str(a.repo), '--state', a.state]
    body = json.dumps({'session_id': sid, 'worktree_id': child['id']})
    r = subprocess.run(base + ['--host', 'b', 'worktree.abandon', body], capture_output=True, text=True)
    check_sanitizers(r, 'orchfs call')
    assert r.returncode == 1 and json.loads(r.stdout)['error']['code'] == 'invalid_state', r
    assert f'worktree {child["id"]} is on host "a"' in r.stderr
    # Without --host the call is the unnamed host's: not a's either.
    r = subprocess.run(base + ['worktree.abandon', body], capture_output=True, text=True)
    assert r.returncode == 1 and 'is on host "a"' in r.stderr, r
    r = subprocess.run(base + ['--host', 'a', 'worktree.abandon', body], capture_output=True, text=True)
    check_sanitizers(r, 'orchfs call')
    assert r.returncode == 0 and json.loads(r.stdout)['result']['status'] == 'abandoned', r
    for bad in ('', 'a b', 'x' * 65, 'a/b', 'h\u00e9'):
        for cmd in (['mount', '-f', '--repo', str(a.repo), '--host', bad, str(tmp_path / 'never')],
                    ['call', '--repo', str(a.repo), '--host', bad, 'mirror.status']):
            r = subprocess.run([ORCHFS, *cmd], capture_output=True, text=True)
            check_sanitizers(r, 'orchfs ' + cmd[0])
            assert r.returncode == 2 and '--host takes a name of 1 to 64 characters' in r.stderr, (bad, r)
    assert not os.path.exists(tmp_path / 'never')
    # The longest name is fine.
    r = subprocess.run(base + ['--host', 'x' * 64, 'mirror.status'], capture_output=True, text=True)
    assert r.returncode == 0, r


def test_mirror_shows_hosts_only_once_one_is_named(hosts):
    a, b = hosts
    # The unnamed host (orchfs call without --host): no host in the record or the mirror.
    r = subprocess.run([ORCHFS, 'call', '--repo', str(a.repo), '--state', a.state, 'session.open', '{}'],
                       capture_output=True, text=True)
    assert r.returncode == 0, r
    root = json.loads(r.stdout)['result']['session_context']['session_root_worktree']
    assert 'host' not in root and 'host' not in b.read_json('worktrees', f'{root["id"]}.json')
    b.ok('mirror.refresh', {'requester_role': 'doc-mirror-manager'})
    with open(b.p('mirror', 'worktrees.md')) as f:
        text = f.read()
    assert '| path |\n' in text and '| host |' not in text, text
    a.ok('session.open', {})
    b.ok('mirror.refresh', {'requester_role': 'doc-mirror-manager'})
    with open(b.p('mirror', 'worktrees.md')) as f:
        text = f.read()
    assert '| path | host |\n' in text and ' | `a` |\n' in text and ' | \u2014 |\n' in text, text
