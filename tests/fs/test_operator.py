"""Tools for operators (issue 13): `orchfs backup` while the mount serves, `orchfs check`."""
import json
import os
import sqlite3
import stat
import subprocess
import threading

from conftest import ORCHFS, check_sanitizers


def run(*args):
    r = subprocess.run([ORCHFS, *args], capture_output=True, text=True, timeout=120)
    check_sanitizers(r, ' '.join(args))
    return r


def test_backup_is_a_consistent_copy_while_writes_go_on(mount, tmp_path):
    for i in range(20):
        mount.ok('task.create', {'level': 'case', 'title': f'before {i}'})
    stop = threading.Event()
    made = []

    def writer():
        while not stop.is_set():
            made.append(mount.ok('task.create', {'level': 'case', 'title': 'during'})['id'])

    t = threading.Thread(target=writer)
    t.start()
    try:
        copies = []
        for k in range(3):
            dest = tmp_path / f'copy{k}.db'
            r = run('backup', '--repo', str(mount.repo), '--state', mount.state, str(dest))
            assert r.returncode == 0, r.stderr
            copies.append(dest)
    finally:
        stop.set()
        t.join(timeout=60)
    assert made, 'the writer made nothing while the backups ran'
    for dest in copies:
        assert stat.S_IMODE(os.stat(dest).st_mode) == 0o600
        db = sqlite3.connect(dest)
        assert db.execute('PRAGMA integrity_check').fetchone()[0] == 'ok'
        titles = [t for (t,) in db.execute('SELECT title FROM tasks ORDER BY id')]
        ids = [i for (i,) in db.execute('SELECT id FROM tasks ORDER BY id')]
        # Every task made before the backup, and a prefix of the ones made during it: one snapshot.
        assert titles[:20] == [f'before {i}' for i in range(20)]
        assert ids == list(range(1, len(ids) + 1))
        version = db.execute('SELECT db_version FROM mirror_meta WHERE id = 1').fetchone()[0]
        assert version == len(ids)
        db.close()
    # An existing file is never overwritten.
    r = run('backup', '--repo', str(mount.repo), '--state', mount.state, str(copies[0]))
    assert r.returncode == 1 and 'exists' in r.stderr.lower()


def test_check_beside_the_mount(mount):
    mount.ok('session.open', {})
    r = run('check', '--repo', str(mount.repo), '--state', mount.state)
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads(r.stdout)
    assert report['integrity'] == 'ok' and report['problems'] == [] and report['leftovers'] == []
    # A checkout no record names is a problem; the check changes nothing.
    subprocess.run(['git', '-C', str(mount.repo), 'worktree', 'add', '-q', '-b', 'stray',
                    os.path.join(mount.state, 'worktrees', 'orchfs-stray')], check=True, capture_output=True)
    before = mount.db_version()
    r = run('check', '--repo', str(mount.repo), '--state', mount.state)
    assert r.returncode == 1
    assert any('orchfs-stray' in p for p in json.loads(r.stdout)['problems'])
    assert mount.db_version() == before
    assert os.path.isdir(os.path.join(mount.state, 'worktrees', 'orchfs-stray'))
