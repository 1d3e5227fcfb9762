"""The merge pipeline through the mount, on real repositories.

Feature merge requests and their review context; the main-merge queue: sessions commit in their
roots, queue (merge.main.request), take the main merge lock in turn and run (merge.main.run);
fast-forward, merge commit, conflicts, a dirty main checkout, cancel, order, lock expiry and
takeover; main reached only through the queue; typed errors that change nothing; and kill -9 of
the daemon during merge.main.run, at random points, again and again: main is always before or
after the merge, never between, and a retry finishes it.
"""
import errno
import hashlib
import json
import os
import random
import threading
import time

import pytest

from conftest import git


def tip(repo, branch):
    r = git(repo, 'rev-parse', '-q', '--verify', f'refs/heads/{branch}', check=False)
    return r.stdout.strip() or None


def commit(path, name, content, msg=None):
    full = os.path.join(path, name)
    os.makedirs(os.path.dirname(full), exist_ok=True)
    with open(full, 'w') as f:
        f.write(content)
    git(path, 'add', name)
    git(path, '-c', 'user.name=t', '-c', 'user.email=t@e', 'commit', '-q', '-m', msg or f'change {name}')


def main_state(repo):
    """Everything of main a merge could touch: the ref, the index bytes, every file (name and bytes)."""
    h = hashlib.sha256()
    for root, dirs, files in os.walk(repo):
        dirs[:] = sorted(d for d in dirs if d != '.git')
        for name in sorted(files):
            p = os.path.join(root, name)
            h.update(os.path.relpath(p, repo).encode() + b'\0')
            with open(p, 'rb') as f:
                h.update(f.read())
    with open(os.path.join(repo, '.git', 'index'), 'rb') as f:
        index = f.read()
    return tip(repo, 'main'), hashlib.sha256(index).hexdigest(), h.hexdigest()


def open_session(mount):
    ctx = mount.ok('session.open', {})['session_context']
    return ctx['session']['id'], ctx['session_root_worktree']


def status(repo):
    return git(repo, 'status', '--porcelain').stdout


# ---- the whole path: two sessions into main ----

def test_two_sessions_queue_lock_and_run_into_main(mount):
    a, ra = open_session(mount)
    b, rb = open_session(mount)
    commit(ra['path'], 'a.txt', 'from a\n', msg='session a work')
    commit(rb['path'], 'b.txt', 'from b\n', msg='session b work')
    start = tip(mount.repo, 'main')
    qa = mount.ok('merge.main.request', {'from_worktree_id': ra['id']}, session=a)
    qb = mount.ok('merge.main.request', {'from_worktree_id': rb['id']}, session=b)
    assert qa['state'] == qb['state'] == 'queued'
    assert qa['target_branch'] == 'main' and qa['uncommitted'] == []
    # The tree shows the queue in order, each item, and the free lock.
    assert [i['id'] for i in mount.read_json('merge', 'main', 'queue.json')] == [qa['id'], qb['id']]
    assert mount.read_json('merge', 'main', f"{qa['id']}.json")['state'] == 'queued'
    assert mount.read_json('merge', 'main', 'lock.json') is None
    assert sorted(os.listdir(mount.p('merge', 'main'))) == sorted([f"{qa['id']}.json", f"{qb['id']}.json",
                                                                   'queue.json', 'lock.json'])
    assert mount.ok('merge.main.next')['id'] == qa['id']

    # a takes the lock and runs its item: main had not moved, a fast-forward.
    lock = mount.ok('merge.main.acquire_lock', {'ttl_seconds': 60}, session=a)
    assert lock['state'] == 'locked' and lock['holder_session_id'] == a
    assert mount.read_json('merge', 'main', 'lock.json')['holder_session_id'] == a
    e = mount.fails('merge.main.acquire_lock', {}, 'conflict', errno.EBUSY, session=b)
    assert e['details']['lock']['holder_session_id'] == a
    mount.fails('merge.main.run', {}, 'forbidden', errno.EPERM, session=b)
    r = mount.ok('merge.main.run', {}, session=a)
    assert r['id'] == qa['id'] and r['state'] == 'merged' and r['fast_forward'] is True
    assert r['merged_commit'] == tip(mount.repo, 'main') == tip(mount.repo, ra['branch'])
    assert open(os.path.join(mount.repo, 'a.txt')).read() == 'from a\n'
    assert status(mount.repo) == ''
    mount.ok('merge.main.release_lock', {}, session=a)
    assert mount.read_json('merge', 'main', 'lock.json') is None

    # b in turn: main moved on, so a merge commit with two parents.
    mount.ok('merge.main.acquire_lock', {}, session=b)
    r = mount.ok('merge.main.run', {}, session=b)
    assert r['id'] == qb['id'] and r['fast_forward'] is False
    head = tip(mount.repo, 'main')
    assert r['merged_commit'] == head
    parents = git(mount.repo, 'rev-list', '--parents', '-n', '1', head).stdout.split()
    assert parents == [head, tip(mount.repo, ra['branch']), tip(mount.repo, rb['branch'])]
    assert open(os.path.join(mount.repo, 'b.txt')).read() == 'from b\n'
    assert open(os.path.join(mount.repo, 'a.txt')).read() == 'from a\n'
    assert status(mount.repo) == ''
    log = git(mount.repo, 'log', '--format=%s', f'{start}..main').stdout
    assert 'session a work' in log and 'session b work' in log
    assert mount.read_json('merge', 'main', 'queue.json') == []
    assert mount.read_json('merge', 'main', f"{qb['id']}.json")['merged_commit'] == head
    assert mount.ok('merge.main.next') is None
    assert mount.ok('merge.main.status', {'request_id': qa['id']})['state'] == 'merged'
    assert git(mount.repo, 'fsck', '--no-progress').returncode == 0


def test_fast_forward_when_main_has_not_moved(mount):
    sid, root = open_session(mount)
    commit(root['path'], 'x.txt', 'x\n')
    commit(root['path'], 'y.txt', 'y\n')
    q = mount.ok('merge.main.request', {'from_worktree_id': root['id']}, session=sid)
    mount.ok('merge.main.acquire_lock', {}, session=sid)
    r = mount.ok('merge.main.run', {'request_id': q['id']}, session=sid)
    assert r['fast_forward'] is True
    assert tip(mount.repo, 'main') == tip(mount.repo, root['branch']) == r['merged_commit']
    # No merge commit: main's tip is the root's own commit.
    assert len(git(mount.repo, 'rev-list', '--parents', '-n', '1', 'main').stdout.split()) == 2
    assert status(mount.repo) == ''


def test_conflicting_item_fails_and_main_is_byte_identical(mount):
    sid, root = open_session(mount)
    commit(root['path'], 'README', 'root version\n')
    commit(root['path'], 'fine.txt', 'no conflict\n')
    commit(mount.repo, 'README', 'main version\n')
    q = mount.ok('merge.main.request', {'from_worktree_id': root['id']}, session=sid)
    mount.ok('merge.main.acquire_lock', {}, session=sid)
    before = main_state(mount.repo)
    v = mount.db_version()
    e = mount.fails('merge.main.run', {}, 'conflict', errno.EBUSY, session=sid)
    assert e['details']['paths'] == ['README']
    # The message says how to resolve it.
    assert 'git merge main' in e['message'] and 'merge.main.request' in e['message']
    assert main_state(mount.repo) == before
    assert not os.path.exists(os.path.join(mount.repo, '.git', 'MERGE_HEAD'))
    assert not os.path.exists(os.path.join(mount.repo, 'fine.txt'))
    item = mount.ok('merge.main.status', {'request_id': q['id']})
    assert item['state'] == 'failed' and 'README' in item['error_message']
    assert mount.read_json('merge', 'main', f"{q['id']}.json")['state'] == 'failed'
    assert mount.db_version() == v + 1  # the failure is recorded, as one change
    mount.fails('merge.main.run', {'request_id': q['id']}, 'invalid_state', errno.EINVAL, session=sid)
    # Resolving as told: merge main into the root, commit, queue again, run.
    r = git(root['path'], '-c', 'user.name=t', '-c', 'user.email=t@e', 'merge', '-q', 'main', check=False)
    assert r.returncode != 0
    with open(os.path.join(root['path'], 'README'), 'w') as f:
        f.write('both\n')
    git(root['path'], 'add', 'README')
    git(root['path'], '-c', 'user.name=t', '-c', 'user.email=t@e', 'commit', '-q', '--no-edit')
    q2 = mount.ok('merge.main.request', {'from_worktree_id': root['id']}, session=sid)
    assert mount.ok('merge.main.run', {}, session=sid)['id'] == q2['id']
    assert open(os.path.join(mount.repo, 'README')).read() == 'both\n'
    assert status(mount.repo) == ''


def test_dirty_main_checkout_blocks_and_nothing_moves(mount):
    sid, root = open_session(mount)
    commit(root['path'], 'new.txt', 'from root\n')
    commit(mount.repo, 'other.txt', 'main moved\n')
    q = mount.ok('merge.main.request', {'from_worktree_id': root['id']}, session=sid)
    mount.ok('merge.main.acquire_lock', {}, session=sid)
    with open(os.path.join(mount.repo, 'README'), 'a') as f:
        f.write('unsaved human edit\n')
    with open(os.path.join(root['path'], 'wip.txt'), 'w') as f:
        f.write('agent scratch\n')
    before = main_state(mount.repo)
    v = mount.db_version()
    e = mount.fails('merge.main.run', {}, 'invalid_state', errno.EINVAL, session=sid)
    assert e['details']['state'] == 'dirty' and e['details']['paths'] == ['README']
    assert e['details']['uncommitted'] == ['wip.txt']  # the source's, told with any error
    assert main_state(mount.repo) == before
    assert mount.db_version() == v
    assert mount.ok('merge.main.status', {'request_id': q['id']})['state'] == 'queued'
    # An untracked file the merge would overwrite blocks too, and is kept.
    git(mount.repo, 'checkout', '-q', 'README')
    with open(os.path.join(mount.repo, 'new.txt'), 'w') as f:
        f.write('human notes\n')
    before = main_state(mount.repo)
    e = mount.fails('merge.main.run', {}, 'invalid_state', errno.EINVAL, session=sid)
    assert e['details']['paths'] == ['new.txt']
    assert main_state(mount.repo) == before
    assert open(os.path.join(mount.repo, 'new.txt')).read() == 'human notes\n'
    # Out of the way, it merges and the untracked file stays.
    os.rename(os.path.join(mount.repo, 'new.txt'), os.path.join(mount.repo, 'notes.txt'))
    assert mount.ok('merge.main.run', {}, session=sid)['state'] == 'merged'
    assert open(os.path.join(mount.repo, 'notes.txt')).read() == 'human notes\n'
    assert open(os.path.join(mount.repo, 'new.txt')).read() == 'from root\n'


def test_cancel(mount):
    a, ra = open_session(mount)
    b, rb = open_session(mount)
    commit(ra['path'], 'a.txt', 'a\n')
    q = mount.ok('merge.main.request', {'from_worktree_id': ra['id']}, session=a)
    mount.fails('merge.main.cancel', {'request_id': q['id']}, 'forbidden', errno.EPERM, session=b)
    mount.fails('merge.main.cancel', {'request_id': 99}, 'not_found', errno.ENOENT, session=a)
    c = mount.ok('merge.main.cancel', {'request_id': q['id']}, session=a)
    assert c['state'] == 'cancelled' and 'completed_at' in c
    e = mount.fails('merge.main.cancel', {'request_id': q['id']}, 'invalid_state', errno.EINVAL, session=a)
    assert e['details']['state'] == 'cancelled'
    assert mount.read_json('merge', 'main', 'queue.json') == []
    mount.ok('merge.main.acquire_lock', {}, session=a)
    mount.fails('merge.main.run', {'request_id': q['id']}, 'invalid_state', errno.EINVAL, session=a)
    mount.fails('merge.main.run', {}, 'not_found', errno.ENOENT, session=a)
    # Cancelled, the worktree can be queued again.
    q2 = mount.ok('merge.main.request', {'from_worktree_id': ra['id']}, session=a)
    assert q2['id'] != q['id']


def test_order_oldest_first_unless_named(mount):
    sessions = [open_session(mount) for _ in range(3)]
    items = []
    for i, (sid, root) in enumerate(sessions):
        commit(root['path'], f'f{i}.txt', f'{i}\n')
        items.append(mount.ok('merge.main.request', {'from_worktree_id': root['id']}, session=sid)['id'])
    (s0, _), (s1, _), (s2, _) = sessions
    # The third session holds the lock: it may run its own item by name, ahead of the queue.
    mount.ok('merge.main.acquire_lock', {}, session=s2)
    assert mount.ok('merge.main.run', {'request_id': items[2]}, session=s2)['id'] == items[2]
    assert [i['id'] for i in mount.read_json('merge', 'main', 'queue.json')] == items[:2]
    # Unnamed, it is the oldest queued: another session's, so not for it to run.
    v = mount.db_version()
    e = mount.fails('merge.main.run', {}, 'forbidden', errno.EPERM, session=s2)
    assert f'request {items[0]}' in e['message']
    mount.fails('merge.main.run', {'request_id': items[1]}, 'forbidden', errno.EPERM, session=s2)
    assert mount.db_version() == v
    mount.ok('merge.main.release_lock', {}, session=s2)
    for sid, item in ((s0, items[0]), (s1, items[1])):
        mount.ok('merge.main.acquire_lock', {}, session=sid)
        assert mount.ok('merge.main.next')['id'] == item
        assert mount.ok('merge.main.run', {}, session=sid)['id'] == item
        mount.ok('merge.main.release_lock', {}, session=sid)
    for i in range(3):
        assert os.path.exists(os.path.join(mount.repo, f'f{i}.txt'))
    assert status(mount.repo) == ''


def test_lock_expiry_and_takeover(mount):
    a, ra = open_session(mount)
    b, rb = open_session(mount)
    commit(rb['path'], 'b.txt', 'b\n')
    mount.ok('merge.main.request', {'from_worktree_id': rb['id']}, session=b)
    lock = mount.ok('merge.main.acquire_lock', {'ttl_seconds': 1}, session=a)
    assert lock['holder_session_id'] == a
    # Renewing by acquiring again moves the lease.
    renewed = mount.ok('merge.main.acquire_lock', {'ttl_seconds': 2}, session=a)
    assert renewed['lease_until'] > lock['lease_until']
    mount.fails('merge.main.acquire_lock', {}, 'conflict', errno.EBUSY, session=b)
    mount.fails('merge.main.release_lock', {}, 'forbidden', errno.EPERM, session=b)
    assert mount.read_json('merge', 'main', 'lock.json')['holder_session_id'] == a
    with open(mount.p('merge', 'main', 'lock.json'), 'rb') as f:
        assert os.fstat(f.fileno()).st_size == len(f.read())
    v = mount.db_version()
    time.sleep(2.3)
    # Expiry is real time: lock.json shows it with no write in between.
    assert mount.db_version() == v
    assert mount.read_json('merge', 'main', 'lock.json') is None
    # The expired holder cannot run; anyone may release an expired lease, or take it over.
    e = mount.fails('merge.main.run', {}, 'forbidden', errno.EPERM, session=a)
    assert 'merge.main.acquire_lock' in e['message']
    assert mount.ok('merge.main.release_lock', {}, session=b)['state'] == 'unlocked'
    mount.ok('merge.main.acquire_lock', {'ttl_seconds': 1}, session=a)
    time.sleep(1.3)
    taken = mount.ok('merge.main.acquire_lock', {}, session=b)
    assert taken['holder_session_id'] == b
    assert mount.ok('merge.main.run', {}, session=b)['state'] == 'merged'
    # session.close releases it.
    mount.ok('session.close', {}, session=b)
    assert mount.read_json('merge', 'main', 'lock.json') is None
    assert mount.ok('merge.main.acquire_lock', {}, session=a)['holder_session_id'] == a


def test_main_only_through_the_queue(mount):
    sid, root = open_session(mount)
    commit(root['path'], 'f.txt', 'f\n')
    main_id = mount.read_json('worktrees', '1.json')
    assert main_id['kind'] == 'main'
    before = main_state(mount.repo)
    v = mount.db_version()
    e = mount.fails('worktree.spawn', {'parent_worktree_id': 1}, 'forbidden', errno.EPERM, session=sid)
    assert 'merge.main.request' in e['message']
    e = mount.fails('worktree.spawn', {'parent_worktree_id': 1, 'create_on_disk': False}, 'forbidden',
                    errno.EPERM, session=sid)
    e = mount.fails('worktree.merge_to_parent', {'worktree_id': root['id']}, 'forbidden', errno.EPERM,
                    session=sid)
    assert 'merge.main.request' in e['message']
    # A worktree of main's branch is main too.
    e = mount.fails('worktree.spawn', {'parent_worktree_id': 1, 'branch': 'side'}, 'forbidden', errno.EPERM,
                    session=sid)
    assert main_state(mount.repo) == before
    assert mount.db_version() == v
    assert tip(mount.repo, 'side') is None


def test_every_rule_typed_error_changes_nothing(mount):
    a, ra = open_session(mount)
    b, rb = open_session(mount)
    before = main_state(mount.repo)
    v = mount.db_version()
    # Nothing to merge yet.
    e = mount.fails('merge.main.request', {'from_worktree_id': ra['id']}, 'invalid_state', errno.EINVAL, session=a)
    assert e['details']['state'] == 'nothing_to_merge'
    commit(ra['path'], 'a.txt', 'a\n')
    # Another session's root; not a session root; no such worktree; bad or missing target.
    mount.fails('merge.main.request', {'from_worktree_id': ra['id']}, 'forbidden', errno.EPERM, session=b)
    e = mount.fails('merge.main.request', {'from_worktree_id': 1}, 'invalid_state', errno.EINVAL, session=a)
    assert e['details']['state'] == 'main'
    mount.fails('merge.main.request', {'from_worktree_id': 99}, 'not_found', errno.ENOENT, session=a)
    mount.fails('merge.main.request', {'from_worktree_id': ra['id'], 'target_branch': 'nope'}, 'not_found',
                errno.ENOENT, session=a)
    mount.fails('merge.main.request', {'from_worktree_id': ra['id'], 'target_branch': 'a..b'}, 'invalid_params',
                errno.EINVAL, session=a)
    mount.fails('merge.main.request', {'from_worktree_id': ra['id'], 'bogus': 1}, 'invalid_params', errno.EINVAL,
                session=a)
    # Uncommitted changes to tracked files refuse, naming them (untracked ones too).
    with open(os.path.join(ra['path'], 'a.txt'), 'a') as f:
        f.write('more\n')
    with open(os.path.join(ra['path'], 'scratch.txt'), 'w') as f:
        f.write('untracked\n')
    e = mount.fails('merge.main.request', {'from_worktree_id': ra['id']}, 'invalid_state', errno.EINVAL, session=a)
    assert e['details']['state'] == 'dirty' and e['details']['paths'] == ['a.txt']
    assert sorted(e['details']['uncommitted']) == ['a.txt', 'scratch.txt']
    assert mount.db_version() == v and main_state(mount.repo) == before
    git(ra['path'], 'checkout', '-q', 'a.txt')
    # A live child blocks.
    child = mount.ok('worktree.spawn', {'parent_worktree_id': ra['id'], 'create_on_disk': False}, session=a)
    v = mount.db_version()
    e = mount.fails('merge.main.request', {'from_worktree_id': ra['id']}, 'invalid_state', errno.EINVAL, session=a)
    assert e['details']['children'] == [child['id']]
    mount.ok('worktree.abandon', {'worktree_id': child['id']}, session=a)
    # Untracked files do not refuse; they are told.
    q = mount.ok('merge.main.request', {'from_worktree_id': ra['id']}, session=a)
    assert q['uncommitted'] == ['scratch.txt']
    v = mount.db_version()
    mount.fails('merge.main.request', {'from_worktree_id': ra['id']}, 'exists', errno.EEXIST, session=a)
    mount.fails('merge.main.status', {'request_id': 42}, 'not_found', errno.ENOENT)
    mount.fails('merge.main.run', {}, 'forbidden', errno.EPERM, session=a)
    mount.fails('merge.main.acquire_lock', {'ttl_seconds': -1}, 'invalid_params', errno.EINVAL, session=a)
    mount.fails('merge.main.acquire_lock', {'session_id': 77}, 'not_found', errno.ENOENT)
    mount.fails('merge.request', {'feature_task_id': 5}, 'not_found', errno.ENOENT)
    mount.fails('merge.review_context', {'merge_request_id': 5}, 'not_found', errno.ENOENT)
    # Releasing a free lock changes nothing.
    assert mount.ok('merge.main.release_lock', {}, session=a)['state'] == 'unlocked'
    assert mount.db_version() == v
    assert main_state(mount.repo) == before
    # The run reports the uncommitted paths it leaves behind.
    mount.ok('merge.main.acquire_lock', {}, session=a)
    r = mount.ok('merge.main.run', {}, session=a)
    assert r['uncommitted'] == ['scratch.txt']
    assert not os.path.exists(os.path.join(mount.repo, 'scratch.txt'))


# ---- child merges: what the issue adds to worktree.merge_to_parent ----

def test_merge_to_parent_keeps_commit_reports_uncommitted_and_nothing_to_merge(mount):
    sid, root = open_session(mount)
    child = mount.ok('worktree.spawn', {'parent_worktree_id': root['id']}, session=sid)
    e = mount.fails('worktree.merge_to_parent', {'worktree_id': child['id']}, 'invalid_state', errno.EINVAL,
                    session=sid)
    assert e['details']['state'] == 'nothing_to_merge'
    commit(child['path'], 'c.txt', 'c\n')
    with open(os.path.join(child['path'], 'left.txt'), 'w') as f:
        f.write('not committed\n')
    r = mount.ok('worktree.merge_to_parent', {'worktree_id': child['id']}, session=sid)
    assert r['uncommitted'] == ['left.txt']
    assert r['child_worktree']['merge_commit'] == r['merge_commit'] == tip(mount.repo, root['branch'])
    assert mount.read_json('worktrees', f"{child['id']}.json")['merge_commit'] == r['merge_commit']
    # A conflict says how to resolve it, and carries the child's uncommitted paths.
    c2 = mount.ok('worktree.spawn', {'parent_worktree_id': root['id']}, session=sid)
    commit(c2['path'], 'c.txt', 'other\n')
    with open(os.path.join(c2['path'], 'wip.txt'), 'w') as f:
        f.write('wip\n')
    commit(root['path'], 'c.txt', 'root\n')
    e = mount.fails('worktree.merge_to_parent', {'worktree_id': c2['id']}, 'conflict', errno.EBUSY, session=sid)
    assert e['details']['paths'] == ['c.txt'] and e['details']['uncommitted'] == ['wip.txt']
    assert f"git merge {root['branch']}" in e['message']


def test_attach_reports_uncommitted_of_the_root(mount):
    sid, root = open_session(mount)
    case = mount.ok('task.create', {'level': 'case', 'title': 'c'})
    mount.ok('case.begin', {'case_id': case['id']}, session=sid)
    with open(os.path.join(root['path'], 'half.txt'), 'w') as f:
        f.write('half done\n')
    with open(os.path.join(root['path'], 'README'), 'a') as f:
        f.write('edited\n')
    b = mount.ok('session.open', {'intent': 'resume_work', 'heartbeat_timeout_seconds': 1})['session']['id']
    time.sleep(1.2)
    r = mount.ok('resume.candidates.attach', {'target_session_id': sid}, session=b)
    assert sorted(r['uncommitted']) == ['README', 'half.txt']


# ---- feature merge requests and the review context ----

def test_merge_request_and_review_context(mount):
    sid, root = open_session(mount)
    feature = mount.ok('task.create', {'level': 'feature', 'title': 'login'})
    group = mount.ok('task.create', {'level': 'test_group', 'title': 'forms', 'parent_id': feature['id']})
    case = mount.ok('task.create', {'level': 'case', 'title': 'empty password', 'parent_id': group['id']})
    direct = mount.ok('task.create', {'level': 'Case', 'title': 'direct', 'parent_id': feature['id']})
    other = mount.ok('task.create', {'level': 'feature', 'title': 'unrelated'})
    mount.ok('case.begin', {'case_id': case['id'], 'input_contract': {'in': 1}}, session=sid)
    mount.ok('step.check', {'case_id': case['id'], 'step_title': 'write test', 'result': 'pass'}, session=sid)
    mount.ok('case.complete', {'case_id': case['id'], 'summary': 'done', 'next_action': 'none'}, session=sid)
    wt = mount.ok('worktree.spawn', {'parent_worktree_id': root['id'], 'task_id': case['id']}, session=sid)
    commit(wt['path'], 'login/form.py', 'x = 1\n', msg='add the form')
    commit(wt['path'], 'login/test_form.py', 'assert True\n', msg='test the form')
    mount.ok('worktree.spawn', {'parent_worktree_id': root['id'], 'task_id': other['id']}, session=sid)
    mr = mount.ok('merge.request', {'feature_task_id': feature['id'], 'reviewer_session': '  rev-1 ',
                                    'notes_json': {'risk': 'low'}})
    assert mr['status'] == 'requested' and mr['reviewer_session'] == 'rev-1' and mr['notes'] == {'risk': 'low'}
    mr2 = mount.ok('merge.request', {'feature_task_id': feature['id']})
    assert mount.read_json('merge', 'requests', f"{mr['id']}.json") == mr
    assert sorted(os.listdir(mount.p('merge', 'requests'))) == [f"{mr['id']}.json", f"{mr2['id']}.json"]

    ctx = mount.ok('merge.review_context', {'merge_request_id': mr['id']})
    assert ctx['merge_request'] == mr and ctx['feature']['id'] == feature['id']
    # Every descendant, the case under the test group too.
    assert [t['id'] for t in ctx['children']] == [group['id'], case['id'], direct['id']]
    c = next(t for t in ctx['children'] if t['id'] == case['id'])
    assert [s['title'] for s in c['steps']] == ['write test']
    assert c['latest_checkpoint'] is not None
    d = next(t for t in ctx['children'] if t['id'] == direct['id'])
    assert d['latest_checkpoint'] is None and d['steps'] == []
    assert ctx['checkpoints'][str(case['id'])] == c['latest_checkpoint']
    assert ctx['checkpoints'][str(direct['id'])] is None and str(group['id']) not in ctx['checkpoints']
    assert [m['id'] for m in ctx['merge_requests']] == [mr['id'], mr2['id']]
    # The worktrees of the feature's tasks only, with what they would bring.
    assert [w['id'] for w in ctx['worktrees']] == [wt['id']]
    w = ctx['worktrees'][0]
    assert w['head'] == tip(mount.repo, wt['branch']) and w['base'] == root['branch']
    assert [x['subject'] for x in w['commits']] == ['test the form', 'add the form']
    assert sorted(w['paths']) == ['login/form.py', 'login/test_form.py']


# ---- kill -9 during merge.main.run ----

def run_in_thread(mount, params, session):
    out = {}

    def go():
        try:
            out['reply'] = mount.call('merge.main.run', params, session=session)
        except Exception as e:  # the daemon died under the call
            out['error'] = e
    t = threading.Thread(target=go)
    t.start()
    return t, out


def test_kill_during_run_leaves_main_before_or_after_and_retry_finishes(repo, tmp_path):
    from conftest import Mount
    seed = int(os.environ.get('CHAOS_SEED', random.randrange(1 << 30)))
    rnd = random.Random(seed)
    mp = tmp_path / 'mnt'
    mp.mkdir()
    mount = Mount(repo, mp, tmp_path / 'state', str(tmp_path / 'orchfs.log'))
    mount.start()
    outcomes = {'before': 0, 'after': 0, 'checkout_left_dirty': 0, 'moved_not_recorded': 0}
    try:
        sid, root = open_session(mount)
        for it in range(8):
            # Enough files that the checkout takes a while: the kill lands in it, or around it.
            os.makedirs(os.path.join(root['path'], f'd{it}'))
            for k in range(150):
                with open(os.path.join(root['path'], f'd{it}', f'f{k}.txt'), 'w') as f:
                    f.write(f'{it} {k}\n' * 20)
            git(root['path'], 'add', '-A')
            git(root['path'], '-c', 'user.name=t', '-c', 'user.email=t@e', 'commit', '-q', '-m', f'batch {it}')
            if it % 2:
                commit(mount.repo, f'main{it}.txt', 'main moves\n')  # so this one is a merge commit
            old = tip(mount.repo, 'main')
            src = tip(mount.repo, root['branch'])
            q = mount.ok('merge.main.request', {'from_worktree_id': root['id']}, session=sid)
            mount.ok('merge.main.acquire_lock', {'ttl_seconds': 600}, session=sid)
            t, out = run_in_thread(mount, {'request_id': q['id']}, sid)
            time.sleep(rnd.uniform(0, 0.25))
            mount.kill()
            t.join()
            now = tip(mount.repo, 'main')
            # Never between: main is where it was, or a complete merge of src.
            if now == old:
                outcomes['before'] += 1
                outcomes['checkout_left_dirty'] += status(mount.repo) != ''
            else:
                outcomes['after'] += 1
                parents = git(mount.repo, 'rev-list', '--parents', '-n', '1', now).stdout.split()
                assert now == src or parents == [now, old, src], (seed, it, parents)
            mount.start()
            item = mount.ok('merge.main.status', {'request_id': q['id']})
            if item['state'] == 'queued':
                outcomes['moved_not_recorded'] += now != old
                err, rr = mount.call('merge.main.run', {'request_id': q['id']}, session=sid)
                assert 'result' in rr, (rr['error']['message'], status(mount.repo)[:3000])
                r = rr['result']
                assert r['state'] == 'merged'
                if now != old:
                    assert r['merged_commit'] == now, (seed, it)  # recognised, not merged twice
            else:
                assert item['state'] == 'merged', (seed, item)
            final = tip(mount.repo, 'main')
            item = mount.ok('merge.main.status', {'request_id': q['id']})
            assert item['merged_commit'] == final
            assert git(mount.repo, 'merge-base', '--is-ancestor', src, final).returncode == 0
            assert status(mount.repo) == '', (seed, it, status(mount.repo))
            assert git(mount.repo, 'diff', '--quiet', 'HEAD').returncode == 0
        assert git(mount.repo, 'fsck', '--no-progress').returncode == 0, seed
    finally:
        mount.stop()
    log = open(mount.log).read()
    assert 'AddressSanitizer' not in log and 'runtime error:' not in log, log
    print('outcomes', outcomes, 'seed', seed)



def test_retry_records_a_merge_whose_ref_moved_before_the_kill(repo, tmp_path):
    """The narrowest window, made by hand: the killed call had updated main's checkout and moved the
    ref (with its reflog mark, as merge.main.run writes it) but had not committed.  The retry records
    the merge without merging again."""
    from conftest import Mount
    mp = tmp_path / 'mnt'
    mp.mkdir()
    mount = Mount(repo, mp, tmp_path / 'state', str(tmp_path / 'orchfs.log'))
    mount.start()
    try:
        sid, root = open_session(mount)
        commit(root['path'], 'r.txt', 'r\n')
        commit(mount.repo, 'm.txt', 'm\n')
        q = mount.ok('merge.main.request', {'from_worktree_id': root['id']}, session=sid)
        mount.ok('merge.main.acquire_lock', {}, session=sid)
        mount.kill()
        src = tip(mount.repo, root['branch'])
        old = tip(mount.repo, 'main')
        # The merge commit the call made, the checkout, then the ref with its mark.
        tree = git(mount.repo, 'merge-tree', '--write-tree', 'main', root['branch']).stdout.split()
        merged = git(mount.repo, '-c', 'user.name=t', '-c', 'user.email=t@e', 'commit-tree', tree[0], '-p', old,
                     '-p', src, '-m', 'merge').stdout.strip()
        git(mount.repo, 'read-tree', '-u', '-m', old, merged)
        git(mount.repo, 'update-ref', '-m', f"orchfs merge.main.run #{q['id']} ({root['branch']} at {src})",
            'refs/heads/main', merged, old)
        mount.start()
        assert mount.ok('merge.main.status', {'request_id': q['id']})['state'] == 'queued'
        r = mount.ok('merge.main.run', {}, session=sid)
        assert r['state'] == 'merged' and r['merged_commit'] == merged == tip(mount.repo, 'main')
        assert status(mount.repo) == ''
        # Without the mark, a branch already in main is nothing to merge: the item stays queued.
        commit(root['path'], 'r2.txt', 'r2\n')
        q2 = mount.ok('merge.main.request', {'from_worktree_id': root['id']}, session=sid)
        git(mount.repo, 'merge', '-q', '--no-edit', root['branch'])  # the human merged it by hand
        e = mount.fails('merge.main.run', {}, 'invalid_state', errno.EINVAL, session=sid)
        assert e['details']['state'] == 'nothing_to_merge'
        assert mount.ok('merge.main.status', {'request_id': q2['id']})['state'] == 'queued'
    finally:
        mount.stop()
