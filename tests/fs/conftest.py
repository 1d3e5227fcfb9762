"""Fixtures for tests through a real orchfs mount.

Each test gets a fresh git repository and a mount of it served by a daemon
in the foreground (so its stderr is ours).  The fixture waits for the mount,
unmounts lazily if the test broke something, and fails the test when the
daemon wrote a sanitizer report or an unexpected warning.
"""
import json
import os
import re
import subprocess
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ORCHFS = os.environ.get('ORCHFS_BIN', os.path.join(ROOT, 'build-test', 'orchfs'))
BAD_OUTPUT = re.compile(r'AddressSanitizer|LeakSanitizer|UndefinedBehaviorSanitizer|ThreadSanitizer|'
                        r'runtime error:|warning|WARNING|Assertion')
SANITIZER = re.compile(r'AddressSanitizer|LeakSanitizer|UndefinedBehaviorSanitizer|ThreadSanitizer|runtime error:')
# scripts/test makes the sanitizers exit with this status, so a report never passes for an error reply (1).
SANITIZER_EXIT = 86


def check_sanitizers(proc_result, what):
    """Fail when a process we ran reported a sanitizer finding, whatever status a test expects."""
    err = proc_result.stderr if isinstance(proc_result.stderr, str) else (proc_result.stderr or b'').decode(errors='replace')
    assert proc_result.returncode != SANITIZER_EXIT and not SANITIZER.search(err), f'{what}:\n{err}'


def pytest_configure(config):
    config.addinivalue_line('markers', 'stress: many readers and writers for a while (test_stress.py; '
                                       'scripts/test also runs it against a ThreadSanitizer build)')


def git(repo, *args, check=True):
    return subprocess.run(['git', '-C', str(repo), *args], check=check, capture_output=True, text=True)


def make_repo(path):
    path.mkdir(parents=True, exist_ok=True)
    git(path, 'init', '-q', '-b', 'main')
    git(path, 'config', 'user.email', 'test@example.com')
    git(path, 'config', 'user.name', 'test')
    (path / 'README').write_text('hello\n')
    git(path, 'add', 'README')
    git(path, 'commit', '-q', '-m', 'initial')
    return path


class Mount:
    """A running orchfs daemon and its mount point."""

    def __init__(self, repo, mountpoint, state, log, args=()):
        self.repo = repo
        self.path = str(mountpoint)
        self.state = str(state)
        self.log = log
        self.args = list(args)  # more options of `orchfs mount` (e.g. --host NAME)
        self.proc = None
        self.stop_problem = None  # set by stop(): the daemon had to be killed, or exited non-zero

    def start(self):
        self.proc = subprocess.Popen([ORCHFS, 'mount', '-f', '--repo', str(self.repo), '--state', self.state,
                                      *self.args, self.path], stdout=subprocess.DEVNULL, stderr=open(self.log, 'ab'))
        deadline = time.time() + 20
        while not os.path.ismount(self.path):
            if self.proc.poll() is not None:
                raise RuntimeError('orchfs exited: ' + open(self.log).read())
            if time.time() > deadline:
                raise RuntimeError('mount did not appear')
            time.sleep(0.02)

    def stop(self):
        if self.proc is None:
            return
        if subprocess.run(['fusermount3', '-u', self.path], capture_output=True).returncode != 0:
            subprocess.run(['fusermount3', '-u', '-z', self.path], capture_output=True)
        try:
            status = self.proc.wait(timeout=20)
            if status != 0:
                self.stop_problem = f'the daemon exited with status {status}'
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            self.stop_problem = 'the daemon did not exit within 20 s of its unmount and was killed'
        self.proc = None

    def kill(self):
        """kill -9 the daemon and clear the dead mount."""
        self.proc.kill()
        self.proc.wait()
        self.proc = None
        subprocess.run(['fusermount3', '-u', '-z', self.path], capture_output=True)

    def p(self, *parts):
        return os.path.join(self.path, *parts)

    def read_json(self, *parts):
        with open(self.p(*parts)) as f:
            return json.load(f)

    def call(self, method, params=None, session=None):
        """Open ctl/<method> (or sessions/<id>/ctl/<method>) r+, write, read the reply."""
        path = self.p('sessions', str(session), 'ctl', method) if session else self.p('ctl', method)
        body = params if isinstance(params, (str, bytes)) else json.dumps(params if params is not None else {})
        if isinstance(body, str):
            body = body.encode()
        fd = os.open(path, os.O_RDWR)
        try:
            err = 0
            try:
                os.write(fd, body)
            except OSError as e:
                err = e.errno
            data = b''
            while True:
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                data += chunk
        finally:
            os.close(fd)
        reply = json.loads(data)
        return err, reply

    def ok(self, method, params=None, session=None):
        err, reply = self.call(method, params, session)
        assert err == 0 and 'result' in reply, reply
        return reply['result']

    def fails(self, method, params, code, errno_, session=None):
        err, reply = self.call(method, params, session)
        assert 'error' in reply, reply
        assert reply['error']['code'] == code, reply
        assert err == errno_, (err, reply)
        return reply['error']

    def db_version(self):
        return self.ok('mirror.status')['db_version']

    def orchfs_call(self, method, params=None, session=None):
        """`orchfs call` against the same state, without the mount (--session: as sessions/<id>/ctl/)."""
        args = [ORCHFS, 'call', '--repo', str(self.repo), '--state', self.state]
        if session:
            args += ['--session', str(session)]
        args.append(method)
        if params is not None:
            args.append(params if isinstance(params, str) else json.dumps(params))
        r = subprocess.run(args, capture_output=True, text=True, timeout=120)
        check_sanitizers(r, f'orchfs call {method}')
        return r


@pytest.fixture
def repo(tmp_path):
    return make_repo(tmp_path / 'repo')


@pytest.fixture
def mount(repo, tmp_path):
    mp = tmp_path / 'mnt'
    mp.mkdir()
    m = Mount(repo, mp, tmp_path / 'state', str(tmp_path / 'orchfs.log'))
    m.start()
    yield m
    m.stop()
    log = open(m.log).read()
    bad = [line for line in log.splitlines() if BAD_OUTPUT.search(line)]
    assert not bad, 'daemon reported:\n' + log
    assert m.stop_problem is None, m.stop_problem + ':\n' + log
