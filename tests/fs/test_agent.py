"""Agents that cannot be misled (issue 11): liveness the session controls,
lock ownership without an owner key, replies that belong to their request,
ctl_errors "reply", ENOENT for names that are no method, the task lifecycle,
sessions without a checkout and their clean-up."""
import errno
import json
import os
import pathlib
import shutil
import subprocess
import time

import pytest

from conftest import git

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def sh(cmd, cwd=None, env=None):
    return subprocess.run(['bash', '-c', cmd], capture_output=True, text=True, cwd=cwd, env=env)


def session(mount, **params):
    params.setdefault('agent_role', 'implementer')
    params.setdefault('owner', 'alice')
    return mount.ok('session.open', params)['session_context']['session']['id']


def hold_a_case(mount, sid):
    case = mount.ok('task.create', {'level': 'case', 'title': 'c'})['id']
    mount.ok('case.begin', {'case_id': case}, session=sid)
    return case


def candidate_ids(mount, requester, **params):
    return [c['session']['id'] for c in
            mount.ok('resume.candidates.list', dict(params, requester_session_id=requester))]


# ---- 1. liveness belongs to the session ----

def test_live_session_with_long_window_is_never_a_candidate(mount):
    a = session(mount, heartbeat_timeout_seconds=600)
    hold_a_case(mount, a)
    b = mount.ok('session.open', {'intent': 'resume_work', 'heartbeat_timeout_seconds': 1})['session']['id']
    time.sleep(2)
    # Whatever the requester asks, a's own 600 s window decides.
    assert a not in candidate_ids(mount, b)
    assert a not in candidate_ids(mount, b, heartbeat_timeout_seconds=1)
    e = mount.fails('resume.candidates.attach', {'requester_session_id': b, 'target_session_id': a,
                                                 'heartbeat_timeout_seconds': 1}, 'invalid_state', errno.EINVAL)
    assert '600' in e['message'], e
    s = mount.read_json('sessions', str(a), 'session.json')
    assert s['heartbeat_timeout_seconds'] == 600 and s['stale'] is False
    assert s['heartbeat_age_seconds'] >= 2


def test_short_window_makes_a_candidate_and_a_requester_can_only_lengthen(mount):
    a = session(mount, heartbeat_timeout_seconds=1)
    hold_a_case(mount, a)
    b = mount.ok('session.open', {'intent': 'resume_work'})['session']['id']
    time.sleep(1.6)
    assert mount.read_json('sessions', str(a), 'session.json')['stale'] is True
    assert a in candidate_ids(mount, b)
    # A requester that wants to wait longer may.
    assert a not in candidate_ids(mount, b, heartbeat_timeout_seconds=600)
    # Reads are no heartbeat; a heartbeat is.
    mount.read_json('sessions', str(a), 'context.json')
    mount.ok('session.context', {}, session=a)
    assert a in candidate_ids(mount, b)
    assert sh(f'touch {mount.p("sessions", str(a), "heartbeat")}').returncode == 0
    assert a not in candidate_ids(mount, b)
    assert mount.read_json('sessions', str(a), 'session.json')['stale'] is False


def test_default_window_is_120_and_documented(mount):
    a = session(mount)
    assert mount.read_json('sessions', str(a), 'session.json')['heartbeat_timeout_seconds'] == 120
    usage = open(mount.p('ctl', 'session.open')).read()
    assert 'default 120' in usage and 'reads do not count' in usage
    readme = open(mount.p('README.md')).read()
    assert 'Reads do not count as heartbeats' in ' '.join(readme.split())


# ---- 2. lock ownership ----

def test_anonymous_global_release_and_heartbeat_refused(mount):
    a = session(mount)
    lock = mount.ok('lock.acquire', {'scope_type': 'file', 'scope_path': 'a.txt'}, session=a)
    for method in ('lock.release', 'lock.heartbeat'):
        e = mount.fails(method, {'lock_id': lock['id']}, 'invalid_params', errno.EINVAL)
        assert 'owner_session' in e['message'] and 'sessions/<id>/ctl/' in e['message']
    assert mount.read_json('locks', f'{lock["id"]}.json')['state'] == 'active'
    # A wrong owner is forbidden, and the lock is still active.
    b = session(mount, owner='bob')
    mount.fails('lock.release', {'lock_id': lock['id']}, 'forbidden', errno.EPERM, session=b)
    mount.fails('lock.release', {'lock_id': lock['id'], 'owner_session': str(b)}, 'forbidden', errno.EPERM)
    mount.fails('lock.heartbeat', {'lock_id': lock['id'], 'owner_session': b}, 'forbidden', errno.EPERM)
    assert mount.read_json('locks', f'{lock["id"]}.json')['state'] == 'active'
    # owner_session as a JSON integer is the session.
    assert mount.ok('lock.heartbeat', {'lock_id': lock['id'], 'owner_session': a})['owner_session'] == str(a)
    assert mount.ok('lock.release', {'lock_id': lock['id'], 'owner_session': a})['state'] == 'released'


def test_conflict_names_the_holder_in_words(mount):
    a = session(mount)
    b = session(mount, owner='bob')
    mount.ok('lock.acquire', {'scope_type': 'prefix', 'scope_path': 'src'}, session=a)
    e = mount.fails('lock.acquire', {'scope_type': 'file', 'scope_path': 'src/x.c'}, 'conflict', errno.EBUSY,
                    session=b)
    assert f'held by session {a} (implementer, alice) until' in e['message'], e
    assert 'held by "' not in e['message']


def test_forced_release_of_a_dead_owners_lock_is_recorded(mount):
    a = session(mount, heartbeat_timeout_seconds=600)
    b = session(mount, owner='bob')
    lock = mount.ok('lock.acquire', {'scope_type': 'file', 'scope_path': 'a.txt'}, session=a)['id']
    # a is live: force is refused, and force needs a reason.
    mount.fails('lock.release', {'lock_id': lock, 'force': True}, 'invalid_params', errno.EINVAL, session=b)
    e = mount.fails('lock.release', {'lock_id': lock, 'force': True, 'reason': 'stuck'}, 'forbidden', errno.EPERM,
                    session=b)
    assert 'live' in e['message']
    assert mount.read_json('locks', f'{lock}.json')['state'] == 'active'
    # Taken over or closed: not live.  (Closing would release it; a taken-over session keeps nothing,
    # so make the owner silent past its own window instead.)
    c = session(mount, heartbeat_timeout_seconds=1, owner='carol')
    lock2 = mount.ok('lock.acquire', {'scope_type': 'file', 'scope_path': 'b.txt', 'ttl_seconds': 3600},
                     session=c)['id']
    time.sleep(1.5)
    assert mount.read_json('sessions', str(c), 'session.json')['stale'] is True
    r = mount.ok('lock.release', {'lock_id': lock2, 'force': True, 'reason': 'carol went silent'}, session=b)
    assert r['state'] == 'released' and r['released_by'] == str(b) and r['release_forced'] is True
    assert r['release_reason'] == 'carol went silent' and 'released_at' in r
    assert not os.path.exists(mount.p('locks', f'{lock2}.json'))
    # The owner coming back is told who freed it and why.
    e = mount.fails('lock.heartbeat', {'lock_id': lock2}, 'not_found', errno.ENOENT, session=c)
    assert f'by force by session {b} (implementer, bob)' in e['message'] and 'carol went silent' in e['message']
    # A free-text owner is no session whose liveness is known.
    lock3 = mount.ok('lock.acquire', {'scope_type': 'file', 'scope_path': 'c.txt', 'owner_session': 'ci'})['id']
    mount.fails('lock.release', {'lock_id': lock3, 'force': True, 'reason': 'x'}, 'forbidden', errno.EPERM,
                session=b)


# ---- 3. a reply belongs to its request ----

def write_raw(path, data):
    """One open, one write, one close; errors of write and close returned, not raised."""
    fd = os.open(path, os.O_WRONLY)
    errs = []
    try:
        os.write(fd, data)
    except OSError as e:
        errs.append(e.errno)
    try:
        os.close(fd)
    except OSError as e:
        errs.append(e.errno)
    return errs


def test_truncated_write_never_reads_back_an_older_reply(mount):
    a = session(mount)
    ctl = mount.p('sessions', str(a), 'ctl', 'lock.acquire')
    assert write_raw(ctl, b'{"scope_type": "file", "scope_path": "one.txt"}') == []
    first = json.loads(open(ctl).read())
    assert first['result']['scope_path'] == 'one.txt'
    # Truncated: the close fails, and the file reads back this request's error, not one.txt's lock.
    assert write_raw(ctl, b'{"scope_type": "file", "scope_pa') == [errno.EINVAL]
    back = json.loads(open(ctl).read())
    assert back['error']['code'] == 'invalid_json' and 'incomplete request' in back['error']['message'], back
    # White space only: a note that nothing was run.
    assert write_raw(ctl, b'\n') == []
    back = json.loads(open(ctl).read())
    assert 'nothing was run' in back['note'] and 'result' not in back and 'error' not in back
    # Malformed JSON and a failed call replace it too.
    write_raw(ctl, b'{"scope_type": }')
    assert json.loads(open(ctl).read())['error']['code'] == 'invalid_json'
    write_raw(ctl, b'{"scope_type": "file"}')
    assert json.loads(open(ctl).read())['error']['code'] == 'invalid_params'
    # stat's size is what a read returns.
    assert os.stat(ctl).st_size == len(open(ctl, 'rb').read())
    # The global ctl/ file has no memory: its usage.
    assert open(mount.p('ctl', 'lock.acquire')).read().startswith('lock.acquire')


def test_remembered_replies_live_in_the_database(mount, tmp_path):
    a = session(mount)
    mount.ok('lock.acquire', {'scope_type': 'file', 'scope_path': 'kept.txt'}, session=a)
    ctl = mount.p('sessions', str(a), 'ctl', 'lock.acquire')
    assert json.loads(open(ctl).read())['result']['scope_path'] == 'kept.txt'
    # A second daemon on the same state shows the same remembered reply.
    from conftest import Mount
    mp2 = tmp_path / 'mnt2'
    mp2.mkdir()
    m2 = Mount(mount.repo, mp2, mount.state, str(tmp_path / 'orchfs2.log'))
    m2.start()
    try:
        assert json.loads(open(m2.p('sessions', str(a), 'ctl', 'lock.acquire')).read())['result'][
            'scope_path'] == 'kept.txt'
        # A read method through the session ctl is remembered too.
        m2.ok('session.context', {}, session=a)
        assert json.loads(open(mount.p('sessions', str(a), 'ctl', 'session.context')).read())['result'][
            'session']['id'] == a
    finally:
        m2.stop()
    # `orchfs call --session` is the same path.
    r = mount.orchfs_call('lock.acquire', {'scope_type': 'file', 'scope_path': 'cli.txt'}, session=a)
    assert r.returncode == 0, r.stderr
    assert json.loads(open(ctl).read())['result']['scope_path'] == 'cli.txt'
    r = mount.orchfs_call('lock.acquire', '{"scope_type": ', session=a)
    assert r.returncode == 1
    assert json.loads(open(ctl).read())['error']['code'] == 'invalid_json'
    assert mount.orchfs_call('task.create', {'level': 'x', 'title': 'y'}, session=a).returncode == 2


# ---- 4. ctl_errors: "reply" ----

def test_ctl_errors_reply_python_and_node(mount, tmp_path):
    a = session(mount, ctl_errors='reply')
    ctl = pathlib.Path(mount.p('sessions', str(a), 'ctl', 'case.begin'))
    # not_found would be ENOENT ("No such file or directory"): here the write succeeds.
    ctl.write_text('{"case_id": 99}')
    back = json.loads(ctl.read_text())
    assert back['error']['code'] == 'not_found' and '99' in back['error']['message']
    node = tmp_path / 'w.js'
    node.write_text(f'''
const fs = require('fs');
fs.writeFileSync({json.dumps(str(ctl))}, '{{"case_id": 77}}');
process.stdout.write(fs.readFileSync({json.dumps(str(ctl))}, 'utf8'));
''')
    r = subprocess.run(['node', str(node)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)['error']['code'] == 'not_found' and '77' in r.stdout
    # Under sh, no "I/O error": the write succeeds and the reply says what went wrong.
    r = sh(f"echo '{{\"case_id\": 5}}' > {ctl} && cat {ctl}")
    assert r.returncode == 0 and json.loads(r.stdout)['error']['code'] == 'not_found'
    # The default stays errno, and ctl/ is always errno.
    b = session(mount)
    with pytest.raises(FileNotFoundError):
        pathlib.Path(mount.p('sessions', str(b), 'ctl', 'case.begin')).write_text('{"case_id": 99}')
    with pytest.raises(FileNotFoundError):
        pathlib.Path(mount.p('ctl', 'task.get')).write_text('{"task_id": 99}')
    mount.fails('session.open', {'ctl_errors': 'never'}, 'invalid_params', errno.EINVAL)


# ---- 5. names that do not exist ----

def test_names_that_are_no_method_are_enoent(mount):
    a = session(mount)
    for d in (mount.p('ctl'), mount.p('sessions', str(a), 'ctl')):
        with pytest.raises(FileNotFoundError):
            os.open(os.path.join(d, 'task.creat'), os.O_WRONLY | os.O_CREAT, 0o644)
        with pytest.raises(FileNotFoundError):
            open(os.path.join(d, 'task.creat'), 'w')
        with pytest.raises(FileNotFoundError):
            os.open(os.path.join(d, 'task.creat'), os.O_RDONLY)
    # Elsewhere the tree stays read-only.
    with pytest.raises(OSError) as e:
        open(mount.p('tasks', 'x.json'), 'w')
    assert e.value.errno == errno.EROFS


def test_orchctl_help_and_unknown_method(mount):
    orchctl = os.path.join(ROOT, 'scripts', 'orchctl')
    r = subprocess.run([orchctl, '--help'], capture_output=True, text=True)
    assert r.returncode == 0 and 'usage: orchctl' in r.stdout
    r = subprocess.run([orchctl, '--mount', mount.path, 'task.creat', '{}'], capture_output=True, text=True)
    assert r.returncode != 0 and f'unknown method task.creat; ls {mount.path}/ctl' in r.stderr


# ---- 6. task lifecycle ----

def test_assigned_case_is_not_handed_to_another_session(mount):
    a = session(mount)
    b = session(mount, owner='bob')
    mine = mount.ok('task.create', {'level': ' Case ', 'title': 'for a', 'assignee_session': a,
                                    'priority': 5})['id']
    assert mount.ok('task.get', {'task_id': mine})['level'] == 'case'
    theirs = mount.ok('task.create', {'level': 'case', 'title': 'for b', 'assignee_session': str(b)})['id']
    # b never gets a's case, even though it has the higher priority.
    r = mount.ok('work.current_ref', {}, session=b)
    assert r['current_ref']['node_id'] == theirs
    # With b's case taken, b gets nothing more: a's case stays a's.
    mount.ok('task.update', {'task_id': theirs, 'status': 'done'}, session=b)
    assert mount.ok('resume.next', {}, session=b) == {}
    assert mount.ok('work.current_ref', {}, session=b)['source'] == 'none'
    r = mount.ok('resume.next', {}, session=a)
    assert r['task']['id'] == mine
    # An unassigned case is anyone's; the caller's own assigned case comes first.
    anyone = mount.ok('task.create', {'level': 'case', 'title': 'anyone', 'priority': 9})['id']
    c = session(mount, owner='carol')
    mount.ok('task.create', {'level': 'case', 'title': 'for c', 'assignee_session': c})
    assert mount.ok('work.current_ref', {}, session=c)['task']['title'] == 'for c'
    assert mount.ok('work.current_ref', {}, session=b)['current_ref']['node_id'] == anyone


def test_task_update_and_holding(mount):
    a = session(mount)
    b = session(mount, owner='bob')
    case = hold_a_case(mount, a)
    t = mount.read_json('tasks', str(case), 'task.json')
    assert t['held_by'] == a and t['status'] == 'in_progress'
    assert t['last_checkpoint_id'] == mount.read_json('tasks', str(case), 'checkpoints.json')[-1]['id']
    assert mount.read_json('tasks', str(case), 'checkpoints.json')[-1]['session_id'] == a
    # Another session, or none, cannot change a held case.
    v = mount.db_version()
    e = mount.fails('task.update', {'task_id': case, 'status': 'done'}, 'conflict', errno.EBUSY, session=b)
    assert f'held by session {a}' in e['message']
    mount.fails('task.update', {'task_id': case, 'priority': 3}, 'conflict', errno.EBUSY)
    mount.fails('task.update', {'task_id': case, 'status': 'paused'}, 'invalid_params', errno.EINVAL, session=a)
    mount.fails('task.update', {'task_id': case}, 'invalid_params', errno.EINVAL, session=a)
    mount.fails('task.update', {'task_id': 99, 'status': 'done'}, 'not_found', errno.ENOENT, session=a)
    assert mount.db_version() == v
    assert [x['id'] for x in mount.ok('task.list', {'ready': True})] == []
    # The holder blocks it: it lets go.
    t = mount.ok('task.update', {'task_id': case, 'status': 'blocked', 'title': 'waits for API'}, session=a)
    assert t['status'] == 'blocked' and t['title'] == 'waits for API' and 'held_by' not in t
    assert mount.read_json('sessions', str(a), 'current_ref.json') is None
    assert 'held_by' not in mount.read_json('tasks', str(case), 'task.json')
    assert mount.ok('task.list', {'ready': True}) == []
    # Back to todo by anyone: ready again.
    mount.ok('task.update', {'task_id': case, 'status': 'todo', 'priority': 2})
    assert [x['id'] for x in mount.ok('task.list', {'ready': True, 'level': 'CASE'})] == [case]


def test_failed_step_is_stored_as_failed(mount):
    a = session(mount)
    case = hold_a_case(mount, a)
    mount.ok('step.check', {'case_id': case, 'step_title': 'unit', 'result': 'fail: 2 tests'}, session=a)
    mount.ok('step.check', {'case_id': case, 'step_title': 'unit again', 'result': 'pass'}, session=a)
    steps = mount.read_json('tasks', str(case), 'steps.json')
    assert [s['status'] for s in steps] == ['failed', 'done']


# ---- 7. sessions without a checkout, and clean-up ----

def test_session_without_worktree(mount):
    r = mount.ok('session.open', {'agent_role': 'reviewer', 'worktree': False})['session_context']
    sid = r['session']['id']
    assert 'session_root_worktree' not in r and 'session_root_worktree_id' not in r['session']
    assert not os.path.lexists(mount.p('sessions', str(sid), 'root'))
    assert 'session/1' not in git(mount.repo, 'branch', '--list').stdout
    # It still works: tasks, locks, and it closes (remove_worktree has nothing to remove).
    mount.ok('lock.acquire', {'scope_type': 'file', 'scope_path': 'x'}, session=sid)
    assert mount.ok('session.close', {'remove_worktree': True}, session=sid)['status'] == 'closed'


def test_close_remove_worktree(mount):
    ctx = mount.ok('session.open')['session_context']
    sid, root = ctx['session']['id'], ctx['session_root_worktree']
    # Nothing new on the branch and clean: removed, the branch stays.
    assert mount.ok('session.close', {'remove_worktree': True}, session=sid)['status'] == 'closed'
    assert not os.path.exists(root['path'])
    assert 'session/1' in git(mount.repo, 'branch', '--list').stdout
    assert mount.read_json('worktrees', f'{root["id"]}.json')['status'] == 'closed'
    assert not os.path.lexists(mount.p('sessions', str(sid), 'root'))
    assert root['path'] not in git(mount.repo, 'worktree', 'list').stdout

    # Dirty: refused, naming the paths; nothing changed.
    ctx = mount.ok('session.open')['session_context']
    sid, root = ctx['session']['id'], ctx['session_root_worktree']
    pathlib.Path(root['path'], 'new.txt').write_text('x\n')
    v = mount.db_version()
    e = mount.fails('session.close', {'remove_worktree': True}, 'invalid_state', errno.EINVAL, session=sid)
    assert 'uncommitted' in e['message'] and e['details']['paths'] == ['new.txt']
    assert mount.db_version() == v and os.path.exists(root['path'])
    # Committed but not merged: refused.
    git(root['path'], 'add', 'new.txt')
    git(root['path'], 'commit', '-q', '-m', 'new')
    e = mount.fails('session.close', {'remove_worktree': True}, 'invalid_state', errno.EINVAL, session=sid)
    assert 'not merged' in e['message']
    assert mount.read_json('sessions', str(sid), 'session.json')['status'] != 'closed'
    # An unmerged child: refused, naming it.
    child = mount.ok('worktree.spawn', {'parent_worktree_id': root['id']}, session=sid)['id']
    e = mount.fails('session.close', {'remove_worktree': True}, 'invalid_state', errno.EINVAL, session=sid)
    assert e['details']['children'] == [child]
    mount.ok('worktree.abandon', {'worktree_id': child}, session=sid)
    # Merged into main (as the main-merge queue would): removed.
    git(mount.repo, 'merge', '-q', '--ff-only', f'session/{sid}')
    assert mount.ok('session.close', {'remove_worktree': True}, session=sid)['status'] == 'closed'
    assert not os.path.exists(root['path'])


def test_created_worktree_can_be_abandoned_by_any_session(mount):
    a = session(mount)
    w = mount.ok('worktree.create', {'branch': 'feature/x', 'create_on_disk': True})
    assert os.path.isdir(w['path'])
    r = mount.ok('worktree.abandon', {'worktree_id': w['id']}, session=a)
    assert r['status'] == 'abandoned' and not os.path.exists(w['path'])
    # A session root is not a task worktree.
    mount.fails('worktree.abandon', {'worktree_id': 2}, 'invalid_state', errno.EINVAL, session=a)


# ---- 9. fewer keys, decisions that say who made them ----

def test_spawn_defaults_to_the_session_root_and_decisions_record_the_session(mount):
    ctx = mount.ok('session.open')['session_context']
    sid, root = ctx['session']['id'], ctx['session_root_worktree']['id']
    child = mount.ok('worktree.spawn', {}, session=sid)
    assert child['parent_worktree_id'] == root and child['owner_session_id'] == sid
    planner = mount.ok('session.open', {'agent_role': 'planner', 'worktree': False})['session_context']
    e = mount.fails('worktree.spawn', {}, 'invalid_params', errno.EINVAL, session=planner['session']['id'])
    assert 'give parent_worktree_id' in e['message']
    mount.ok('plan.bootstrap', {'initiative_title': 'I', 'plan_title': 'P'})
    mount.ok('plan.rollup.submit', {'node_id': 2})
    n = mount.ok('plan.rollup.reject', {'node_id': 2, 'reason': 'tests missing'}, session=sid)
    assert n['decided_by_session'] == sid and n['decision_reason'] == 'tests missing'
    snaps = mount.read_json('graph', 'nodes', '2', 'snapshots.json')
    assert snaps[-1]['snapshot_type'] == 'rollup' and snaps[-1]['decision'] == 'rejected'
    assert snaps[-1]['decided_by_session'] == sid and snaps[-1]['decision_reason'] == 'tests missing'
    assert snaps[-1]['preview']['parent_node_id'] == 2
    r = mount.ok('plan.rollup.submit', {'node_id': 2})
    n = r['node']
    assert 'decided_by_session' not in n and 'decision_reason' not in n
    assert r['snapshot']['preview'] == r['preview'] == mount.read_json('graph', 'nodes', '2', 'snapshots.json')[-1][
        'preview']
    n = mount.ok('plan.rollup.approve', {'node_id': 2})
    assert n['approval_state'] == 'approved' and 'decided_by_session' not in n


# ---- 10. small things ----

def test_call_id_reused_for_another_method_says_so(mount):
    mount.ok('task.create', {'level': 'case', 'title': 'x', 'call_id': 'c1'})
    e = mount.fails('task.list', {'call_id': 'c1'}, 'exists', errno.EEXIST)
    assert 'for another method (task.create, not task.list)' in e['message']
    e = mount.fails('task.create', {'level': 'case', 'title': 'y', 'call_id': 'c1'}, 'exists', errno.EEXIST)
    assert 'with other params' in e['message']


def test_refused_mount_leaves_no_directory(repo, tmp_path):
    inside = repo / 'mnt-inside'
    r = subprocess.run([os.environ.get('ORCHFS_BIN', os.path.join(ROOT, 'build-test', 'orchfs')), 'mount', '-f',
                        '--repo', str(repo), '--state', str(tmp_path / 'state'), str(inside)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and 'outside the repository' in r.stderr
    assert not inside.exists()


def test_ctl_errors_reply_vim_writes_a_request_and_reads_the_error(mount):
    a = session(mount, ctl_errors='reply')
    ctl = mount.p('sessions', str(a), 'ctl', 'case.begin')
    vim = shutil.which('vim') or shutil.which('vim.tiny')
    # vim edits the file (it shows the usage), replaces it with a request and writes it back.
    r = subprocess.run([vim, '-Es', '-n', '-c', '%d', '-c', 'call setline(1, \'{"case_id": 42}\')', '-c', 'w',
                        '-c', 'qa!', ctl], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, (r.stdout, r.stderr)
    back = json.loads(open(ctl).read())
    assert back['error']['code'] == 'not_found' and '42' in back['error']['message']


def test_invalid_json_points_at_the_start_of_the_bad_token(mount):
    for body, place in [('{"level": "case",\n "title": tru }', 'line 2, column 11'),
                        ('{"é": nul}', 'line 1, column 7'),
                        ('{"a": "x\\q"}', 'line 1, column 7'),
                        ('{"a": }', 'line 1, column 7')]:
        e = mount.fails('task.create', body, 'invalid_json', errno.EINVAL)
        assert place in e['message'], (body, e)
