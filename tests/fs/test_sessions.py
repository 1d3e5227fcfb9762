"""Sessions and tasks through the mount, as an agent uses them with files only."""
import errno
import json
import os
import subprocess
import time

import pytest

from conftest import git


def sh(cmd):
    return subprocess.run(['bash', '-c', cmd], capture_output=True, text=True)


def test_agent_loop_with_files_only(mount):
    opened = mount.ok('session.open', {'agent_role': 'implementer', 'owner': 'alice', 'intent': 'new_work'})
    ctx = opened['session_context']
    sid = ctx['session']['id']
    root = ctx['session_root_worktree']['path']
    # The session root is a real checkout git knows, and root links to it.
    assert os.readlink(mount.p('sessions', str(sid), 'root')) == root
    assert open(os.path.join(mount.p('sessions', str(sid), 'root'), 'README')).read() == 'hello\n'
    wl = git(mount.repo, 'worktree', 'list', '--porcelain').stdout
    assert f'worktree {root}' in wl and 'branch refs/heads/session/1' in wl
    assert not root.startswith(mount.path)
    # context.json is session.context.
    assert mount.read_json('sessions', str(sid), 'context.json') == mount.ok('session.context', {'session_id': sid})
    assert mount.read_json('sessions', str(sid), 'current_ref.json') is None
    # Tasks.
    t = mount.ok('task.create', {'level': 'case', 'title': 'c1'})
    assert mount.ok('task.list', {'level': 'case'})[0]['id'] == t['id']
    assert mount.read_json('tasks', str(t['id']), 'task.json') == mount.ok('task.get', {'task_id': t['id']})
    # Heartbeat with the session ctl (session_id implied), then close.
    hb = mount.ok('session.heartbeat', {}, session=sid)
    assert hb['id'] == sid
    closed = mount.ok('session.close', {}, session=sid)
    assert closed['status'] == 'closed'
    assert mount.read_json('sessions', str(sid), 'session.json')['status'] == 'closed'


def test_heartbeat_file(mount):
    mount.ok('session.open')
    hb = mount.p('sessions', '1', 'heartbeat')
    v0 = mount.db_version()
    before = mount.read_json('sessions', '1', 'session.json')['last_seen_at']
    time.sleep(0.01)
    assert sh(f'touch {hb}').returncode == 0
    after = mount.read_json('sessions', '1', 'session.json')['last_seen_at']
    assert after > before
    assert mount.db_version() > v0
    assert open(hb).read().strip() == after
    assert sh(f'echo alive > {hb}').returncode == 0
    # One gesture is one heartbeat: echo (open + write) and touch (open + set times).
    for cmd in [f'echo alive > {hb}', f'touch {hb}', f'printf x >> {hb}']:
        time.sleep(1.05)
        v = mount.db_version()
        assert sh(cmd).returncode == 0
        assert mount.db_version() == v + 1, cmd
    # A descriptor kept open beats on each write a second or more apart.
    time.sleep(1.05)
    fd = os.open(hb, os.O_WRONLY)
    v = mount.db_version()
    os.write(fd, b'x')
    time.sleep(1.05)
    os.write(fd, b'x')
    os.close(fd)
    assert mount.db_version() == v + 1
    time.sleep(1.05)
    # A closed session refuses heartbeats: the open for writing fails.
    mount.ok('session.close', {'session_id': 1})
    v1 = mount.db_version()
    r = sh(f'echo alive > {hb}')
    assert r.returncode != 0 and 'Invalid argument' in r.stderr
    assert sh(f'touch {hb}').returncode != 0
    assert mount.db_version() == v1


def test_session_ctl_implied_keys_and_last_reply(mount):
    mount.ok('session.open')
    mount.ok('session.open')
    sctl = mount.p('sessions', '1', 'ctl')
    assert 'session.open' not in os.listdir(sctl)
    assert 'session.heartbeat' in os.listdir(sctl)
    assert 'task.create' not in os.listdir(sctl)
    e = mount.fails('session.heartbeat', {'session_id': 2}, 'invalid_params', errno.EINVAL, session=1)
    assert 'implied' in e['message']
    mount.ok('session.heartbeat', {'session_id': 1}, session=1)
    # A file tool writes in one open and reads the reply in another.
    with open(os.path.join(sctl, 'session.context'), 'w') as f:
        f.write('{}')
    with open(os.path.join(sctl, 'session.context')) as f:
        last = json.loads(f.read())
    assert last['result']['session']['id'] == 1
    # Another session's ctl has its own last reply (none yet: usage).
    usage = open(mount.p('sessions', '2', 'ctl', 'session.context')).read()
    assert 'session.context' in usage and 'implied' in usage


def test_session_bad_input(mount):
    mount.ok('session.open')
    v = mount.db_version()
    mount.fails('session.heartbeat', {'session_id': 99}, 'not_found', errno.ENOENT)
    mount.fails('session.heartbeat', {'session_id': 0}, 'invalid_params', errno.EINVAL)
    mount.fails('session.heartbeat', {'session_id': 1.5}, 'invalid_params', errno.EINVAL)
    mount.fails('session.heartbeat', {'session_id': '1'}, 'invalid_params', errno.EINVAL)
    mount.fails('session.heartbeat', {}, 'invalid_params', errno.EINVAL)
    mount.fails('session.close', {'session_id': -3}, 'invalid_params', errno.EINVAL)
    mount.fails('session.context', {'session_id': 42}, 'not_found', errno.ENOENT)
    mount.fails('session.open', {'intent': 'dance'}, 'invalid_params', errno.EINVAL)
    mount.fails('session.open', {'agent_role': 7}, 'invalid_params', errno.EINVAL)
    mount.fails('session.open', {'heartbeat_timeout_seconds': 'x'}, 'invalid_params', errno.EINVAL)
    mount.fails('task.create', {'level': 'case'}, 'invalid_params', errno.EINVAL)
    mount.fails('task.create', {'level': 'case', 'title': 'x', 'parent_id': 5}, 'not_found', errno.ENOENT)
    mount.fails('task.list', {'status': 3}, 'invalid_params', errno.EINVAL)
    mount.fails('task.get', {'task_id': 1}, 'not_found', errno.ENOENT)
    assert mount.db_version() == v
    assert not os.path.exists(mount.p('sessions', '99'))
    assert not os.path.exists(mount.p('sessions', '01'))
    assert os.listdir(mount.p('sessions')) == ['1']


def test_session_open_git_failure_is_atomic(mount):
    # Branch session/1 exists with work of its own (a bare leftover at HEAD would be taken back).
    git(mount.repo, 'checkout', '-q', '-b', 'session/1')
    git(mount.repo, 'commit', '-q', '--allow-empty', '-m', 'work')
    git(mount.repo, 'checkout', '-q', 'main')
    e = mount.fails('session.open', {}, 'exists', errno.EEXIST)
    assert 'session/1' in e['message']
    assert os.listdir(mount.p('sessions')) == []
    assert mount.db_version() == 0
    assert not os.path.exists(os.path.join(mount.state, 'worktrees', 'session-1'))


def test_orchfs_call_cli(mount):
    r = mount.orchfs_call('task.create', {'level': 'epic', 'title': 'cli'})
    assert r.returncode == 0 and json.loads(r.stdout)['result']['title'] == 'cli'
    r = mount.orchfs_call('task.get', {'task_id': 9})
    assert r.returncode == 1 and json.loads(r.stdout)['error']['code'] == 'not_found'
    assert 'not found' in r.stderr
    assert mount.read_json('tasks', '1', 'task.json')['title'] == 'cli'


def test_kill_9_keeps_committed_state(mount):
    mount.ok('task.create', {'level': 'case', 'title': 'durable'})
    mount.kill()
    mount.start()
    assert mount.read_json('tasks', '1', 'task.json')['title'] == 'durable'


def test_stale_mount_reported(mount):
    mount.proc.kill()
    mount.proc.wait()
    mount.proc = None
    from conftest import ORCHFS
    r = subprocess.run([ORCHFS, 'mount', '--repo', str(mount.repo), '--state', mount.state, mount.path],
                       capture_output=True, text=True)
    assert r.returncode != 0
    assert 'stale' in r.stderr and f'fusermount3 -u {mount.path}' in r.stderr
    subprocess.run(['fusermount3', '-u', mount.path])
    mount.start()
    assert os.listdir(mount.p('ctl'))
