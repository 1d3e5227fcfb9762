"""Promises of the README that nothing tested before (issue 13): size-limit boundaries, null as an
absent key, write offsets, white-space-only requests, git errors as EIO and run again on repeat,
kill -9 of an `orchfs call` process."""
import errno
import json
import os
import signal
import subprocess
import time

import pytest

from conftest import ORCHFS, check_sanitizers

MIB = 1024 * 1024


def write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def test_request_size_boundary(mount):
    """Exactly 1 MiB is a request; one byte more is too_large."""
    head = b'{"level": "case", "title": "t", "x": "'
    for size, code in [(MIB, 'invalid_params'), (MIB + 1, 'too_large')]:
        req = head + b'y' * (size - len(head) - 2) + b'"}'
        assert len(req) == size
        fd = os.open(mount.p('ctl', 'task.create'), os.O_RDWR)
        with pytest.raises(OSError) as e:
            write_all(fd, req)
        assert e.value.errno == (errno.EFBIG if code == 'too_large' else errno.EINVAL)
        reply = json.loads(os.read(fd, 65536))
        assert reply['error']['code'] == code, reply
        os.close(fd)
    assert mount.db_version() == 0


def test_string_size_boundary(mount):
    """A string of 65,536 bytes is accepted; 65,537 is invalid_params naming the key."""
    t = mount.ok('task.create', {'level': 'case', 'title': 'x' * 65536})
    assert len(t['title']) == 65536
    e = mount.fails('task.create', {'level': 'case', 'title': 'x' * 65537}, 'invalid_params', errno.EINVAL)
    assert 'title' in e['message']


def test_null_means_an_absent_key(mount):
    a = mount.ok('task.create', {'level': 'case', 'title': 'a', 'parent_id': None, 'priority': None})
    b = mount.ok('task.create', {'level': 'case', 'title': 'a'})
    assert {k: v for k, v in a.items() if k not in ('id', 'created_at', 'updated_at')} == \
        {k: v for k, v in b.items() if k not in ('id', 'created_at', 'updated_at')}
    # A required key given as null is missing.
    mount.fails('task.create', {'level': 'case', 'title': None}, 'invalid_params', errno.EINVAL)


def test_write_offsets_are_ignored(mount):
    fd = os.open(mount.p('ctl', 'task.create'), os.O_RDWR)
    os.pwrite(fd, b'{"level": "case", ', 5000)
    os.pwrite(fd, b'"title": "off"}', 3)
    reply = json.loads(os.pread(fd, 65536, 0))
    os.close(fd)
    assert reply['result']['title'] == 'off'


def test_white_space_only_request_is_nothing(mount):
    """Only white space: no call, the usage on read, and a close that succeeds."""
    fd = os.open(mount.p('ctl', 'task.create'), os.O_RDWR)
    try:
        os.write(fd, b' \n\t\r\n')
        assert os.pread(fd, 65536, 0).decode().startswith('task.create')
    finally:
        os.close(fd)
    r = subprocess.run(['bash', '-c', f"printf '  \\n' > {mount.p('ctl', 'task.create')}"], capture_output=True)
    assert r.returncode == 0, r.stderr
    assert mount.db_version() == 0


def test_git_error_is_eio_and_runs_again_on_repeat(mount, repo):
    """A git failure (a checkout on a full filesystem) is EIO; its call_id does not keep the error."""
    subprocess.run(f'cd {repo} && head -c 3000000 /dev/urandom > big && git add big && git commit -qm big',
                   shell=True, check=True)
    wt = os.path.join(mount.state, 'worktrees')
    os.makedirs(wt, exist_ok=True)
    subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=1m', 'orchfs-test', wt], check=True)
    try:
        req = {'branch': 'feat', 'create_on_disk': True, 'call_id': 'g1'}
        e = mount.fails('worktree.create', req, 'git', errno.EIO)
        assert mount.read_json('replies', 'g1.json')['error']['code'] == 'git'
        mount.fails('worktree.create', req, 'git', errno.EIO)
    finally:
        subprocess.run(['umount', wt], check=True)
    # Room again: the same call_id runs the method again, and succeeds.
    got = mount.ok('worktree.create', req)
    assert got['branch'] == 'feat' and os.path.exists(os.path.join(got['path'], 'big'))
    assert mount.ok('worktree.create', req) == got
    assert e['code'] == 'git'


def test_kill_9_of_orchfs_call(mount, repo):
    """`orchfs call` killed at any moment of a session.open (a checkout): nothing half-done stays."""
    subprocess.run(f'cd {repo} && seq 1 200000 > nums && git add nums && git commit -qm nums', shell=True, check=True)
    killed = 0
    for i in range(12):
        p = subprocess.Popen([ORCHFS, 'call', '--repo', str(repo), '--state', mount.state, 'session.open',
                              json.dumps({'call_id': f'k{i}'})], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        time.sleep(0.02 * i)
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
            killed += 1
        p.communicate(timeout=60)
    assert killed
    # The next calls get on; start-up leaves records and disk in agreement.
    for i in range(12):
        r = mount.orchfs_call('session.open', {'call_id': f'k{i}'})
        assert r.returncode == 0, r.stdout + r.stderr
    mount.stop()
    mount.start()
    r = subprocess.run([ORCHFS, 'check', '--repo', str(repo), '--state', mount.state], capture_output=True,
                       text=True, timeout=300)
    check_sanitizers(r, 'orchfs check')
    assert r.returncode == 0, r.stdout
