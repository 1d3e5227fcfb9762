"""`orchfs serve`: the reference's newline-delimited JSON on stdin/stdout.

A line-JSON client drives a whole session through it while a mount serves
the same state: what one front end changes, the other shows.
"""
import json
import os
import signal
import subprocess
import threading
import time

import pytest

from conftest import BAD_OUTPUT, ORCHFS

MIB = 1024 * 1024
AUTO = object()


class Serve:
    """A running `orchfs serve` and a client of its wire format."""

    def __init__(self, repo, state, cwd=None, session=None):
        args = [ORCHFS, 'serve'] + (['--session', str(session)] if session else [])
        if repo is not None:
            args += ['--repo', str(repo)]
        if state is not None:
            args += ['--state', str(state)]
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, cwd=cwd)
        self.next_id = 0

    def send(self, data):
        self.proc.stdin.write(data if isinstance(data, bytes) else data.encode())
        self.proc.stdin.flush()

    def reply(self):
        line = self.proc.stdout.readline()
        assert line.endswith(b'\n'), (line, self.proc.stderr.read() if self.proc.poll() is not None else b'')
        return json.loads(line)

    def request(self, method, params=None, id_=AUTO, **extra):
        """One request, its reply (the id is checked)."""
        if id_ is AUTO:
            self.next_id += 1
            id_ = self.next_id
        req = {'id': id_, 'method': method, **extra}
        if params is not None:
            req['params'] = params
        self.send(json.dumps(req) + '\n')
        r = self.reply()
        assert r['id'] == id_, r
        return r

    def ok(self, method, params=None):
        r = self.request(method, params)
        assert set(r) == {'id', 'result'}, r
        return r['result']

    def fails(self, method, params, code):
        r = self.request(method, params)
        assert set(r) == {'id', 'error'} and r['error']['code'] == code, r
        return r['error']

    def close(self):
        """End of input: serve exits 0 and wrote nothing bad on stderr."""
        self.proc.stdin.close()
        rest = self.proc.stdout.read()
        rc = self.proc.wait(timeout=30)
        err = self.proc.stderr.read().decode(errors='replace')
        assert rest == b'' and rc == 0, (rest, rc, err)
        assert not BAD_OUTPUT.search(err), err
        return err


@pytest.fixture
def serve(mount):
    s = Serve(mount.repo, mount.state)
    yield s
    if s.proc.poll() is None:
        s.close()


def test_full_session_beside_a_mount(mount, serve):
    opened = serve.ok('session.open', {'agent_role': 'implementer', 'owner': 'serve'})
    sid = opened['session_context']['session']['id']
    root = opened['session_context']['session_root_worktree']
    # The mount shows the session and its worktree at once.
    assert mount.read_json('sessions', str(sid), 'session.json')['owner'] == 'serve'
    assert os.path.isdir(os.readlink(mount.p('sessions', str(sid), 'root')))
    assert mount.read_json('worktrees', f'{root["id"]}.json')['branch'] == root['branch']

    feature = serve.ok('task.create', {'level': 'feature', 'title': 'login'})
    case = serve.ok('task.create', {'level': 'case', 'title': 'bad password', 'parent_id': feature['id']})
    assert mount.read_json('tasks', str(case['id']), 'task.json') == case
    begun = serve.ok('case.begin', {'case_id': case['id'], 'session_id': sid, 'input_contract': {'cmd': 't'}})
    assert begun['status'] == 'in_progress'
    step = serve.ok('step.check', {'case_id': case['id'], 'session_id': sid, 'step_title': 'unit',
                                   'result': 'pass', 'artifacts': ['log']})
    assert step['order_no'] == 1 and step['evidence'] == {'artifacts': ['log'], 'result': 'pass'}
    assert mount.read_json('tasks', str(case['id']), 'steps.json') == [step]
    ref = mount.read_json('sessions', str(sid), 'current_ref.json')
    assert ref['node_id'] == case['id'] and ref['status'] == 'active'
    done = serve.ok('case.complete', {'case_id': case['id'], 'session_id': sid, 'summary': 'green'})
    assert done['status'] == 'done'
    assert mount.read_json('tasks', str(case['id']), 'task.json')['status'] == 'done'

    lock = serve.ok('lock.acquire', {'scope_type': 'prefix', 'scope_path': 'src/api', 'owner_session': str(sid)})
    assert mount.read_json('locks', f'{lock["id"]}.json') == lock
    # The mount's agents see the lease: another owner conflicts, through the mount.
    err = mount.fails('lock.acquire', {'scope_type': 'file', 'scope_path': 'src/api/x.c', 'owner_session': 'other'},
                      'conflict', 16)
    assert err['details']['lock']['id'] == lock['id']
    released = serve.ok('lock.release', {'lock_id': lock['id'], 'owner_session': str(sid)})
    assert released['state'] == 'released'
    assert f'{lock["id"]}.json' not in os.listdir(mount.p('locks'))

    closed = serve.ok('session.close', {'session_id': sid})
    assert closed['status'] == 'closed'
    assert mount.read_json('sessions', str(sid), 'session.json')['status'] == 'closed'
    serve.close()


def test_changes_through_the_mount_reach_serve(mount, serve):
    t = mount.ok('task.create', {'level': 'epic', 'title': 'from the mount'})
    assert serve.ok('task.get', {'task_id': t['id']}) == t
    v = serve.ok('mirror.status')['db_version']
    mount.ok('task.create', {'level': 'epic', 'title': 'again'})
    assert serve.ok('mirror.status')['db_version'] == v + 1


def test_replies_are_the_ctl_replies_with_the_id(mount, serve):
    t = mount.ok('task.create', {'level': 'epic', 'title': 'e'})
    for method, params in [('task.get', {'task_id': t['id']}), ('task.get', {'task_id': 99}),
                           ('task.list', {}), ('task.create', {'level': 'epic', 'titel': 'typo'}),
                           ('lock.release', {'lock_id': 0})]:
        _, ctl_reply = mount.call(method, params)
        r = serve.request(method, params)
        del r['id']
        assert r == ctl_reply, (method, params)


def test_envelope(serve):
    # Any JSON id comes back as it was; missing and null params are {}; unknown envelope keys are ignored.
    for id_ in ['a', 0, -7, 1.5, {'k': [1]}, None, True]:
        r = serve.request('mirror.status', id_=id_)
        assert 'result' in r and r['id'] == id_, r
    r = serve.request('task.list', None, jsonrpc='2.0')
    assert r['result'] == []
    serve.send('{"id": 9, "method": "task.list", "params": null}\n')
    assert serve.reply() == {'id': 9, 'result': []}
    serve.send('{"method": "task.list"}\n')
    assert serve.reply() == {'id': None, 'result': []}
    # Blank lines are ignored, CRLF is a line end.
    serve.send('\n   \n\r\n{"id": 10, "method": "task.list"}\r\n')
    assert serve.reply() == {'id': 10, 'result': []}
    # call_id: the call is idempotent, the reply echoes it beside the id.
    first = serve.request('task.create', {'level': 'epic', 'title': 'once', 'call_id': 'c-1'})
    again = serve.request('task.create', {'level': 'epic', 'title': 'once', 'call_id': 'c-1'})
    assert first['call_id'] == again['call_id'] == 'c-1' and first['result'] == again['result']
    assert len(serve.ok('task.list')) == 1


def test_errors(serve):
    def raw(line):
        serve.send(line + '\n')
        return serve.reply()

    r = raw('{"id": 1, "method": "task.get", "params": {"task_id": 1}')
    assert r['id'] is None and r['error']['code'] == 'invalid_json', r
    r = raw('not json')
    assert r['id'] is None and r['error']['code'] == 'invalid_json', r
    assert 'not valid JSON' in r['error']['message']
    r = raw('[{"id": 1, "method": "task.list"}]')
    assert r['id'] is None and r['error']['code'] == 'invalid_params', r
    r = raw('{"id": 1, "method": "task.list", "id": 2}')
    assert r['id'] is None and r['error']['code'] == 'invalid_json', r  # duplicate keys are refused
    for bad in ['{"id": 3}', '{"id": 3, "method": ""}', '{"id": 3, "method": 7}']:
        r = raw(bad)
        assert r == {'id': 3, 'error': {'code': 'invalid_params', 'message': r['error']['message']}}, r
        assert 'method' in r['error']['message']
    err = serve.fails('no.such.method', {}, 'not_found')
    assert 'no.such.method' in err['message']
    err = serve.fails('task.get', [], 'invalid_params')
    assert 'must be a JSON object' in err['message']
    err = serve.fails('task.create', {'level': 'epic', 'titel': 'x'}, 'invalid_params')
    assert 'titel' in err['message'] and 'title' in err['details']['accepted']
    serve.fails('task.get', {'task_id': 1}, 'not_found')
    serve.fails('task.get', {'task_id': '1'}, 'invalid_params')
    serve.fails('session.close', {'session_id': 4}, 'not_found')
    # After all that, serving goes on.
    assert serve.ok('task.list') == []


def test_too_long_line_is_skipped(serve):
    # Exactly 1 MiB is served (here: a string over the 64 KiB limit, so invalid_params).
    head = '{"id": 1, "method": "task.create", "params": {"level": "epic", "title": "'
    tail = '"}}'
    line = head + 'x' * (MIB - len(head) - len(tail)) + tail
    assert len(line) == MIB
    serve.send(line + '\n')
    r = serve.reply()
    assert r['id'] == 1 and r['error']['code'] == 'invalid_params' and 'longer than' in r['error']['message']
    # A longer line is too_large, answered once with id null; the line's rest is skipped.
    big = head + 'x' * (3 * MIB) + tail
    serve.send(big + '\n{"id": 2, "method": "task.list"}\n')
    r = serve.reply()
    assert r['id'] is None and r['error']['code'] == 'too_large' and '1048576' in r['error']['message'], r
    r = serve.reply()
    assert r == {'id': 2, 'result': []}, r
    over = head + 'y' * (MIB + 1 - len(head) - len(tail)) + tail
    assert len(over) == MIB + 1
    serve.send(over + '\n')
    r = serve.reply()
    assert r['id'] is None and r['error']['code'] == 'too_large', r
    assert serve.ok('task.list') == []


def test_pipelined_requests_reply_in_order(serve):
    n = 300
    lines = ''.join(json.dumps({'id': i, 'method': 'task.create' if i % 3 == 0 else 'mirror.status',
                                'params': {'level': 'epic', 'title': f't{i}'} if i % 3 == 0 else {}}) + '\n'
                    for i in range(n))
    writer = threading.Thread(target=serve.send, args=(lines,))
    writer.start()
    got = [serve.reply() for _ in range(n)]
    writer.join()
    assert [r['id'] for r in got] == list(range(n))
    assert all('result' in r for r in got)
    assert [r['result']['title'] for r in got if r['id'] % 3 == 0] == [f't{i}' for i in range(0, n, 3)]


def test_lines_across_read_chunks(serve):
    # About 5 MB of requests written at once: lines of 60 B to 20 KB cross the reader's 64 KiB
    # chunks at every kind of offset; each reply carries its request's (long) id back.
    ids = [f'{i}:' + 'x' * ((i * 7919) % 20000) for i in range(500)]
    lines = ''.join(json.dumps({'id': id_, 'method': 'mirror.status'}) + '\n' for id_ in ids)
    writer = threading.Thread(target=serve.send, args=(lines,))
    writer.start()
    got = [serve.reply() for _ in ids]
    writer.join()
    assert [r['id'] for r in got] == ids
    assert all(r['result']['db_version'] == 0 for r in got)


def test_last_line_without_newline_and_eof(mount):
    s = Serve(mount.repo, mount.state)
    out, err = s.proc.communicate(b'{"id": 1, "method": "task.create", "params": {"level": "epic", "title": "z"}}',
                                  timeout=30)
    assert s.proc.returncode == 0 and not BAD_OUTPUT.search(err.decode()), err
    r = json.loads(out)
    assert r['id'] == 1 and r['result']['title'] == 'z'
    assert mount.read_json('tasks', str(r['result']['id']), 'task.json')['title'] == 'z'
    # Empty input: nothing written, exit 0.
    s = Serve(mount.repo, mount.state)
    out, err = s.proc.communicate(b'', timeout=30)
    assert (out, s.proc.returncode) == (b'', 0)


def test_writers_through_serve_and_the_mount_at_once(mount):
    v = mount.db_version()
    servers = [Serve(mount.repo, mount.state) for _ in range(2)]
    n = 60

    def through_serve(s, k):
        for i in range(n):
            assert s.ok('task.create', {'level': 'epic', 'title': f's{k}-{i}'})['title'] == f's{k}-{i}'

    def through_mount():
        for i in range(n):
            mount.ok('task.create', {'level': 'epic', 'title': f'm-{i}'})

    threads = [threading.Thread(target=through_serve, args=(s, k)) for k, s in enumerate(servers)]
    threads.append(threading.Thread(target=through_mount))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s in servers:
        s.close()
    assert mount.db_version() == v + 3 * n
    titles = {mount.read_json('tasks', t, 'task.json')['title'] for t in os.listdir(mount.p('tasks'))}
    assert len(titles) == 3 * n


def test_serve_needs_a_repository(tmp_path):
    (tmp_path / 'plain').mkdir()
    r = subprocess.run([ORCHFS, 'serve'], cwd=tmp_path / 'plain', input=b'', capture_output=True)
    assert r.returncode == 1 and b'not inside a git repository' in r.stderr
    r = subprocess.run([ORCHFS, 'serve', 'extra'], input=b'', capture_output=True)
    assert r.returncode == 2 and b'usage' in r.stderr


# ---- a serve process holds the sessions opened through it alive ----

def eventually(pred, timeout=5):
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, 'timed out'
        time.sleep(0.01)


def candidates(mount, requester, timeout=None):
    params = {'requester_session_id': requester}
    if timeout:
        params['heartbeat_timeout_seconds'] = timeout
    return [c['session']['id'] for c in mount.ok('resume.candidates.list', params)]


def serve_session_with_work(mount, serve):
    """A session opened through serve (window 1 s), with a case begun (a current ref) and a lock."""
    sid = serve.ok('session.open', {'agent_role': 'implementer', 'intent': 'new_work',
                                    'heartbeat_timeout_seconds': 1})['session_context']['session']['id']
    case = serve.ok('task.create', {'level': 'case', 'title': 'held through serve'})
    serve.ok('case.begin', {'case_id': case['id'], 'session_id': sid, 'input_contract': {}})
    lock = serve.ok('lock.acquire', {'scope_type': 'prefix', 'scope_path': 'src', 'owner_session': str(sid)})
    requester = mount.ok('session.open', {'agent_role': 'reviewer', 'intent': 'new_work', 'worktree': False})[
        'session_context']['session']['id']
    # Held by the serve process: live past its heartbeat window, without heartbeats.
    time.sleep(1.3)
    assert sid not in candidates(mount, requester)
    assert sid not in candidates(mount, requester, timeout=1)
    return sid, lock, requester


@pytest.mark.parametrize('next_writer', ['mount', 'orchfs call'])
def test_kill_9_of_serve_frees_its_session_at_once(mount, serve, next_writer):
    sid, lock, requester = serve_session_with_work(mount, serve)
    serve.proc.send_signal(signal.SIGKILL)
    serve.proc.wait()
    # The liveness rule alone: a candidate at once, through the mount and through `orchfs call`.
    assert sid in candidates(mount, requester, timeout=3600)
    r = mount.orchfs_call('resume.candidates.list', {'requester_session_id': requester,
                                                     'heartbeat_timeout_seconds': 3600})
    assert r.returncode == 0, r.stderr
    assert sid in [c['session']['id'] for c in json.loads(r.stdout)['result']]
    # Its lock is free for the next writer, whichever process it is: that call drops the dead holds first.
    want = {'scope_type': 'file', 'scope_path': 'src/a.c', 'owner_session': str(requester)}
    if next_writer == 'mount':
        got = mount.ok('lock.acquire', want)
    else:
        r = mount.orchfs_call('lock.acquire', want)
        assert r.returncode == 0, r.stderr
        got = json.loads(r.stdout)['result']
    assert got['state'] == 'active'
    eventually(lambda: not os.path.exists(mount.p('locks', f"{lock['id']}.json")))


def test_end_of_input_releases_its_sessions(mount, serve):
    sid, lock, requester = serve_session_with_work(mount, serve)
    fd = os.open(mount.p('events'), os.O_RDONLY)
    try:
        serve.close()
        e = json.loads(os.read(fd, 65536).split(b'\n')[0])
    finally:
        os.close(fd)
    assert e['method'] == 'session.alive.release' and e['session_id'] == sid, e
    assert lock['id'] in e['ids']['locks']
    assert not os.path.exists(mount.p('locks', f"{lock['id']}.json"))
    assert sid in candidates(mount, requester, timeout=3600)


@pytest.mark.parametrize('sig', [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_sigint_release_its_sessions(mount, serve, sig):
    sid, lock, requester = serve_session_with_work(mount, serve)
    # A wait in flight does not keep it from ending.
    serve.send(json.dumps({'id': 'w', 'method': 'wait', 'params': {'on': {'lock_id': lock['id']},
                                                                   'timeout_ms': 60000}}) + '\n')
    time.sleep(0.2)
    serve.proc.send_signal(sig)
    assert serve.proc.wait(timeout=10) == 0, serve.proc.stderr.read()
    assert not os.path.exists(mount.p('locks', f"{lock['id']}.json"))
    assert sid in candidates(mount, requester, timeout=3600)


def test_session_option_holds_a_session_opened_elsewhere(mount):
    sid = mount.ok('session.open', {'agent_role': 'implementer', 'intent': 'new_work',
                                    'heartbeat_timeout_seconds': 1})['session_context']['session']['id']
    case = mount.ok('task.create', {'level': 'case', 'title': 'c'})
    mount.ok('case.begin', {'case_id': case['id'], 'input_contract': {}}, session=sid)
    requester = mount.ok('session.open', {'agent_role': 'reviewer', 'worktree': False})[
        'session_context']['session']['id']
    s = Serve(mount.repo, mount.state, session=sid)
    assert s.ok('session.context', {'session_id': sid})['session']['id'] == sid
    time.sleep(1.3)
    assert sid not in candidates(mount, requester, timeout=1)
    s.close()
    assert sid in candidates(mount, requester, timeout=3600)
    # A closed session cannot be held: serve says so and exits 1.
    mount.ok('session.close', {}, session=requester)
    r = subprocess.run([ORCHFS, 'serve', '--repo', str(mount.repo), '--state', str(mount.state),
                        '--session', str(requester)], input=b'', capture_output=True)
    assert r.returncode == 1 and b'session.alive.hold' in r.stderr, r


def test_wait_wakes_on_a_release_through_the_mount_and_blocks_nothing(mount, serve):
    holder = mount.ok('session.open', {'agent_role': 'implementer', 'worktree': False})[
        'session_context']['session']['id']
    lock = mount.ok('lock.acquire', {'scope_type': 'file', 'scope_path': 'w.c'}, session=holder)
    t = mount.ok('task.create', {'level': 'epic', 'title': 'e'})
    serve.send(json.dumps({'id': 'w', 'method': 'wait', 'params': {'on': {'lock_id': lock['id']},
                                                                   'timeout_ms': 20000}}) + '\n')
    # Requests after the wait are answered while it blocks (replies carry their ids).
    for i in range(3):
        assert serve.request('task.get', {'task_id': t['id']}, id_=i)['result'] == t
    time.sleep(0.3)
    t0 = time.monotonic()
    mount.ok('lock.release', {'lock_id': lock['id']}, session=holder)
    r = serve.reply()
    took = time.monotonic() - t0
    print(f'\nwait through serve woke {took * 1000:.1f} ms after the release through the mount')
    assert r['id'] == 'w' and r['result']['changed'] is True, r
    assert r['result']['lock']['state'] == 'released'
    assert took < 1.0
    # A timeout, and an error, come back as replies too.
    assert serve.request('wait', {'on': {'task_id': t['id']}, 'timeout_ms': 50}, id_='t')['result'][
        'timed_out'] is True
    assert serve.request('wait', {'on': {'lock_id': 999}}, id_='e')['error']['code'] == 'not_found'
    serve.close()
