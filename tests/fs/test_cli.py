"""The orchfs command line: mount/umount, signals, orchctl, the background daemon."""
import json
import os
import signal
import subprocess
import time

from conftest import ORCHFS, ROOT, Mount, make_repo


def test_sigterm_unmounts_cleanly(mount):
    mount.ok('task.create', {'level': 'epic', 'title': 'x'})
    mount.proc.send_signal(signal.SIGTERM)
    assert mount.proc.wait(timeout=20) == 0
    mount.proc = None
    assert not os.path.ismount(mount.path)


def test_sigint_unmounts_cleanly(mount):
    mount.proc.send_signal(signal.SIGINT)
    assert mount.proc.wait(timeout=20) == 0
    mount.proc = None
    assert not os.path.ismount(mount.path)


def test_orchfs_umount(mount):
    r = subprocess.run([ORCHFS, 'umount', mount.path], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert mount.proc.wait(timeout=20) == 0
    mount.proc = None
    assert not os.path.ismount(mount.path)


def test_background_mount_logs_to_state(tmp_path):
    repo = make_repo(tmp_path / 'repo')
    mnt = tmp_path / 'mnt'
    r = subprocess.run([ORCHFS, 'mount', mnt.as_posix()], cwd=repo, capture_output=True, text=True)
    try:
        assert r.returncode == 0, r.stderr
        # Returns only when the mount is usable; the default state is <repo>/.orchfs.
        assert os.path.ismount(mnt)
        assert 'session.open' in os.listdir(mnt / 'ctl')
        assert os.path.exists(repo / '.orchfs' / 'state.db')
        assert '/.orchfs/' in (repo / '.git' / 'info' / 'exclude').read_text().split('\n')
        r2 = subprocess.run([ORCHFS, 'mount', mnt.as_posix()], cwd=repo, capture_output=True, text=True)
        assert r2.returncode != 0 and 'already mounted' in r2.stderr
    finally:
        subprocess.run([ORCHFS, 'umount', mnt.as_posix()])
    for _ in range(200):
        if 'unmounted' in (repo / '.orchfs' / 'orchfs.log').read_text():
            break
        time.sleep(0.05)
    log = (repo / '.orchfs' / 'orchfs.log').read_text()
    assert 'unmounted' in log and 'Sanitizer' not in log


def test_mount_point_outside_repo_and_state(tmp_path):
    repo = make_repo(tmp_path / 'repo')
    for mp in [repo, repo / 'sub', tmp_path]:
        r = subprocess.run([ORCHFS, 'mount', '-f', '--repo', str(repo), str(mp)], capture_output=True, text=True)
        assert r.returncode != 0 and 'must be outside the repository' in r.stderr, mp
        assert not os.path.ismount(mp)


def test_mount_outside_git_repo_fails(tmp_path):
    (tmp_path / 'plain').mkdir()
    r = subprocess.run([ORCHFS, 'mount', '-f', str(tmp_path / 'mnt')], cwd=tmp_path / 'plain',
                       capture_output=True, text=True)
    assert r.returncode != 0 and 'not inside a git repository' in r.stderr


def test_orchctl(mount):
    orchctl = os.path.join(ROOT, 'scripts', 'orchctl')
    r = subprocess.run([orchctl, '--mount', mount.path, 'task.create', '{"level": "epic", "title": "o"}'],
                       capture_output=True, text=True)
    assert r.returncode == 0 and json.loads(r.stdout)['result']['title'] == 'o'
    r = subprocess.run([orchctl, '--mount', mount.path, 'task.get', '{"task_id": 5}'], capture_output=True, text=True)
    assert r.returncode == 1 and json.loads(r.stdout)['error']['code'] == 'not_found'
    mount.ok('session.open')
    r = subprocess.run([orchctl, '--session', '1', 'session.heartbeat'], capture_output=True, text=True,
                       env={**os.environ, 'ORCHFS_MOUNT': mount.path})
    assert r.returncode == 0 and json.loads(r.stdout)['result']['id'] == 1


def test_two_daemons_one_state(mount, tmp_path):
    other = Mount(mount.repo, tmp_path / 'mnt2', mount.state, str(tmp_path / 'orchfs2.log'))
    os.mkdir(other.path)
    other.start()
    try:
        mount.ok('task.create', {'level': 'epic', 'title': 'from one'})
        assert other.read_json('tasks', '1', 'task.json')['title'] == 'from one'
        other.ok('task.create', {'level': 'epic', 'title': 'from two'})
        assert mount.read_json('tasks', '2', 'task.json')['title'] == 'from two'
        assert mount.db_version() == other.db_version() == 2
    finally:
        other.stop()


def test_concurrent_first_use_of_a_state_dir(tmp_path):
    """Several processes creating and migrating one new state directory at once."""
    repo = make_repo(tmp_path / 'repo')
    procs = [subprocess.Popen([ORCHFS, 'call', '--repo', str(repo), 'task.create',
                               json.dumps({'level': 'epic', 'title': f't{i}'})],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(6)]
    outs = [p.communicate() for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    ids = sorted(json.loads(o)['result']['id'] for o, _ in outs)
    assert ids == [1, 2, 3, 4, 5, 6]
    r = subprocess.run([ORCHFS, 'call', '--repo', str(repo), 'mirror.status'], capture_output=True, text=True)
    assert json.loads(r.stdout)['result']['db_version'] == 6
