"""The change feed (events, events-since/<N>), ctl/wait and sessions/<id>/alive, through the mount.

Latencies are measured with CLOCK_MONOTONIC, which is the same clock in every process: a writer
process prints the time just before its write, the reader notes when the line arrives.  The
assertions are generous (the machine is shared); the figures are printed (pytest -s).
"""
import json
import os
import select
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

from conftest import ORCHFS

# A writer in another process: prints CLOCK_MONOTONIC just before its write to the ctl file.
WRITER = r'''
import os, sys, time
path, body = sys.argv[1], sys.argv[2].encode()
fd = os.open(path, os.O_RDWR)
t = time.monotonic()
os.write(fd, body)
os.read(fd, 65536)
os.close(fd)
print(t)
'''


def write_from_other_process(mount, method, params):
    """Write ctl/<method> from another process; returns the monotonic time its write started."""
    out = subprocess.run([sys.executable, '-c', WRITER, mount.p('ctl', method), json.dumps(params)],
                         capture_output=True, text=True, check=True)
    return float(out.stdout)


def readable(fd, timeout):
    return select.select([fd], [], [], timeout)[0] != []


def event_lines(data):
    return [json.loads(line) for line in data.decode().splitlines()]


def test_events_lines_one_per_successful_call(mount):
    fd = os.open(mount.p('events'), os.O_RDONLY | os.O_NONBLOCK)
    try:
        with pytest.raises(BlockingIOError):
            os.read(fd, 4096)          # a fresh open starts at the current version
        v0 = mount.db_version()
        sid = mount.ok('session.open', {'agent_role': 'implementer', 'intent': 'new_work'})['session_context'][
            'session']['id']
        task = mount.ok('task.create', {'level': 'case', 'title': 'feed'})
        mount.fails('task.get', {'task_id': 999}, 'not_found', 2)                   # a read: no event
        mount.fails('lock.release', {'lock_id': 999, 'owner_session': '1'}, 'not_found', 2)  # failed: none
        lock = mount.ok('lock.acquire', {'scope_type': 'file', 'scope_path': 'a.c'}, session=sid)
        lines = []
        while True:
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                break
            assert chunk.endswith(b'\n'), chunk   # whole lines only
            lines += event_lines(chunk)
    finally:
        os.close(fd)
    assert [e['method'] for e in lines] == ['session.open', 'task.create', 'lock.acquire']
    assert [e['db_version'] for e in lines] == [v0 + 1, v0 + 2, v0 + 3]
    assert lines[0]['session_id'] == sid and sid in lines[0]['ids']['sessions']
    assert lines[0]['ids']['worktrees']
    assert lines[1]['ids'] == {'tasks': [task['id']]} and 'session_id' not in lines[1]
    assert lines[2]['session_id'] == sid and lines[2]['ids']['locks'] == [lock['id']]
    assert lines[2]['at'].endswith('Z') and len(lines[2]['at']) == 24
    assert mount.db_version() == v0 + 3


def test_blocked_cat_wakes_on_write_by_another_process(mount):
    mount.ok('task.create', {'level': 'epic', 'title': 'warm up'})
    cat = subprocess.Popen(['cat', mount.p('events')], stdout=subprocess.PIPE)
    try:
        time.sleep(0.3)
        assert not readable(cat.stdout, 0), 'cat returned something before any change'
        figures = []
        for i in range(5):
            t0 = write_from_other_process(mount, 'task.create', {'level': 'case', 'title': f'c{i}'})
            assert readable(cat.stdout, 5), 'cat did not wake'
            t1 = time.monotonic()
            line = json.loads(cat.stdout.readline())
            assert line['method'] == 'task.create'
            figures.append(t1 - t0)
        print(f'\nblocked cat events woke {max(figures) * 1000:.1f} ms (worst of 5, median '
              f'{sorted(figures)[2] * 1000:.1f} ms) after a ctl write by another process')
        assert max(figures) < 1.0
        assert cat.poll() is None
    finally:
        cat.kill()
        cat.wait()


def test_poll_waiter_wakes_and_reports_pollin_correctly(mount):
    fd = os.open(mount.p('events'), os.O_RDONLY | os.O_NONBLOCK)
    ep = select.epoll()
    try:
        po = select.poll()
        po.register(fd, select.POLLIN)
        assert po.poll(100) == []
        ep.register(fd, select.EPOLLIN)
        assert ep.poll(0.1) == []
        figures = []
        for i in range(3):
            result = {}

            def waiter():
                result['events'] = po.poll(10000)
                result['t'] = time.monotonic()
            th = threading.Thread(target=waiter)
            th.start()
            time.sleep(0.2)
            t0 = write_from_other_process(mount, 'task.create', {'level': 'case', 'title': f'p{i}'})
            th.join(10)
            assert result['events'] == [(fd, select.POLLIN)]
            figures.append(result['t'] - t0)
            assert ep.poll(1) == [(fd, select.EPOLLIN)]
            assert json.loads(os.read(fd, 4096))['method'] == 'task.create'
            assert po.poll(50) == [] and ep.poll(0.05) == []     # read to the end: not readable
        print(f'\npoll() woke {max(figures) * 1000:.1f} ms (worst of 3) after a ctl write by another process')
        assert max(figures) < 1.0
    finally:
        ep.close()
        os.close(fd)


def test_sigint_interrupts_a_blocked_read(mount):
    for _ in range(3):
        cat = subprocess.Popen(['cat', mount.p('events')], stdout=subprocess.PIPE)
        time.sleep(0.3)
        t0 = time.monotonic()
        cat.send_signal(signal.SIGINT)
        assert cat.wait(timeout=5) == -signal.SIGINT
        print(f'\nSIGINT ended a blocked cat events in {(time.monotonic() - t0) * 1000:.1f} ms')
    # A read interrupted in Python sees EINTR when its handler raises.
    fd = os.open(mount.p('events'), os.O_RDONLY)
    old = signal.signal(signal.SIGALRM, lambda *a: (_ for _ in ()).throw(InterruptedError()))
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.3)
        with pytest.raises(InterruptedError):
            os.read(fd, 4096)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        os.close(fd)
    # The daemon is fine and the next change still reaches a new reader.
    fd = os.open(mount.p('events'), os.O_RDONLY)
    try:
        mount.ok('task.create', {'level': 'case', 'title': 'after'})
        assert json.loads(os.read(fd, 4096))['method'] == 'task.create'
    finally:
        os.close(fd)


def test_shell_read_head_and_tail(mount):
    def later(method, params, delay=0.3):
        threading.Timer(delay, lambda: mount.ok(method, params)).start()

    later('task.create', {'level': 'case', 'title': 'for read'})
    out = subprocess.run(['bash', '-c', 'read -r line < "$1" && echo "$line"', 'bash', mount.p('events')],
                         capture_output=True, text=True, timeout=10)
    assert out.returncode == 0 and json.loads(out.stdout)['method'] == 'task.create', out
    later('task.create', {'level': 'case', 'title': 'for head'})
    out = subprocess.run(['head', '-1', mount.p('events')], capture_output=True, text=True, timeout=10)
    assert out.returncode == 0 and out.stderr == '' and json.loads(out.stdout)['method'] == 'task.create', out
    # Readers that read past a line and seek back (bash's read, head) lose nothing, also when
    # they share a descriptor: offsets count the descriptor's own bytes.
    v = mount.db_version()
    for i in range(4):
        mount.ok('task.create', {'level': 'case', 'title': f'shared {i}'})
    out = subprocess.run(['bash', '-c', '{ head -1; head -1; } < "$1"', 'bash', mount.p('events-since', str(v))],
                         capture_output=True, text=True, timeout=10)
    assert [json.loads(x)['db_version'] for x in out.stdout.splitlines()] == [v + 1, v + 2], out
    out = subprocess.run(['bash', '-c', 'n=0; while ((n < 4)) && read -r l; do echo "$l"; n=$((n + 1)); done < "$1"',
                          'bash', mount.p('events-since', str(v))], capture_output=True, text=True, timeout=10)
    assert [json.loads(x)['db_version'] for x in out.stdout.splitlines()] == [v + 1, v + 2, v + 3, v + 4], out
    fd = os.open(mount.p('events-since', str(v)), os.O_RDONLY)
    try:
        first = os.read(fd, 65536)
        assert first.count(b'\n') == 4            # one read takes every line there is
        os.lseek(fd, len(first) // 2, os.SEEK_SET)
        assert os.read(fd, 65536) == first[len(first) // 2:]
    finally:
        os.close(fd)
    # tail follows the feed from its start (-n +1); plain tail -f waits for an end of file first.
    import pty
    master, slave = pty.openpty()
    tail = subprocess.Popen(['tail', '-n', '+1', '-f', mount.p('events')], stdout=slave, stderr=slave)
    os.close(slave)
    try:
        time.sleep(0.3)
        mount.ok('task.create', {'level': 'case', 'title': 'for tail'})
        assert readable(master, 5)
        assert json.loads(os.read(master, 4096).decode().strip())['method'] == 'task.create'
    finally:
        tail.kill()
        tail.wait()
        os.close(master)


def test_events_from_orchfs_call_and_events_since(mount):
    v0 = mount.db_version()
    fd = os.open(mount.p('events'), os.O_RDONLY)
    try:
        t0 = time.monotonic()
        r = mount.orchfs_call('task.create', {'level': 'epic', 'title': 'from call'})
        assert r.returncode == 0, r.stderr
        assert readable(fd, 5)
        print(f'\nan `orchfs call` reached a blocked reader in {(time.monotonic() - t0) * 1000:.1f} ms '
              f'(process start included)')
        e = json.loads(os.read(fd, 4096))
        assert e['method'] == 'task.create' and e['db_version'] == v0 + 1
    finally:
        os.close(fd)
    for i in range(3):
        mount.ok('task.create', {'level': 'case', 'title': f's{i}'})
    # events-since/<N>: the events after N, then blocks like events.
    fd = os.open(mount.p('events-since', str(v0 + 1)), os.O_RDONLY | os.O_NONBLOCK)
    try:
        got = [e['db_version'] for e in event_lines(os.read(fd, 4096))]
        assert got == [v0 + 2, v0 + 3, v0 + 4]
        with pytest.raises(BlockingIOError):
            os.read(fd, 4096)
    finally:
        os.close(fd)
    with open(mount.p('events-since', '0'), 'rb') as f:
        assert json.loads(f.readline())['db_version'] == 1
    assert os.listdir(mount.p('events-since')) == []
    for bad in ['x', '-1', '01', '1.5']:
        with pytest.raises(FileNotFoundError):
            open(mount.p('events-since', bad))
    with pytest.raises(OSError) as e:
        open(mount.p('events'), 'w')
    assert e.value.errno == 30   # EROFS
    # History older than what is kept: the open fails (the oldest rows deleted as the writer prunes them).
    db = sqlite3.connect(os.path.join(mount.state, 'state.db'))
    db.execute('DELETE FROM events WHERE db_version <= ?', (v0 + 2,))
    db.commit()
    db.close()
    with pytest.raises(FileNotFoundError):
        open(mount.p('events-since', str(v0)))
    with open(mount.p('events-since', str(v0 + 2)), 'rb') as f:
        assert json.loads(f.readline())['db_version'] == v0 + 3
    # A reader that falls behind the kept history gets one error line, then end of file (a fresh
    # daemon: the newest events it has in memory are not the ones the reader is after).
    mount.stop()
    mount.start()
    fd = os.open(mount.p('events-since', str(v0 + 2)), os.O_RDONLY)
    try:
        db = sqlite3.connect(os.path.join(mount.state, 'state.db'))
        db.execute('DELETE FROM events WHERE db_version <= ?', (v0 + 3,))
        db.commit()
        db.close()
        data = b''
        while True:
            chunk = os.read(fd, 10)   # short reads: the error line comes whole all the same
            if not chunk:
                break
            data += chunk
        err = json.loads(data)['error']
        assert err['code'] == 'not_found' and 'no longer kept' in err['message'], err
    finally:
        os.close(fd)


def test_small_reads_continue_a_line(mount):
    v = mount.db_version()
    mount.ok('task.create', {'level': 'case', 'title': 'x' * 300})
    mount.ok('task.create', {'level': 'case', 'title': 'y'})
    fd = os.open(mount.p('events-since', str(v)), os.O_RDONLY | os.O_NONBLOCK)
    data = b''
    try:
        while True:
            try:
                chunk = os.read(fd, 7)
            except BlockingIOError:
                break
            assert 0 < len(chunk) <= 7
            data += chunk
    finally:
        os.close(fd)
    assert [e['db_version'] for e in event_lines(data)] == [v + 1, v + 2]


def eventually(pred, timeout=5):
    """The kernel sends a close's RELEASE after close() returned: give the daemon a moment."""
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, 'timed out'
        time.sleep(0.01)


def open_session(mount, **kw):
    return mount.ok('session.open', dict(agent_role='implementer', intent='new_work', **kw))[
        'session_context']['session']['id']


def test_wait_on_a_lock_wakes_at_release_and_returns_at_timeout(mount):
    a = open_session(mount)
    lock = mount.ok('lock.acquire', {'scope_type': 'prefix', 'scope_path': 'src'}, session=a)
    v = mount.db_version()
    # Nothing happens: the timeout.
    t0 = time.monotonic()
    r = mount.ok('wait', {'on': {'lock_id': lock['id']}, 'db_version_after': v, 'timeout_ms': 400})
    took = time.monotonic() - t0
    assert r['changed'] is False and r['timed_out'] is True and r['lock']['state'] == 'active', r
    assert 0.35 < took < 5, took
    # Another lock changing is not this one.
    result = {}

    def waiter():
        result['reply'] = mount.ok('wait', {'on': {'lock_id': lock['id']}, 'db_version_after': v,
                                            'timeout_ms': 20000})
        result['t'] = time.monotonic()
    th = threading.Thread(target=waiter)
    th.start()
    time.sleep(0.3)
    mount.ok('lock.acquire', {'scope_type': 'file', 'scope_path': 'other.c'}, session=a)
    mount.ok('task.create', {'level': 'case', 'title': 'noise'})
    time.sleep(0.3)
    assert th.is_alive()
    # Other requests go on meanwhile.
    assert mount.read_json('locks', f"{lock['id']}.json")['state'] == 'active'
    t0 = write_from_other_process(mount, 'lock.release', {'lock_id': lock['id'], 'owner_session': str(a)})
    th.join(10)
    assert not th.is_alive()
    r = result['reply']
    assert r['changed'] is True and r['timed_out'] is False and r['lock']['state'] == 'released', r
    print(f"\nctl/wait on a lock woke {(result['t'] - t0) * 1000:.1f} ms after its release by another process")
    assert result['t'] - t0 < 1.0
    # Already changed after db_version_after: at once.
    r = mount.ok('wait', {'on': {'lock_id': lock['id']}, 'db_version_after': v, 'timeout_ms': 20000})
    assert r['changed'] is True
    # A lease that runs out wakes the waiter.
    short = mount.ok('lock.acquire', {'scope_type': 'file', 'scope_path': 'short.c', 'ttl_seconds': 1},
                     session=a)
    t0 = time.monotonic()
    r = mount.ok('wait', {'on': {'lock_id': short['id']}, 'timeout_ms': 20000})
    assert r['changed'] is True and r['lock']['state'] == 'expired' and time.monotonic() - t0 < 5, r
    # Through `orchfs call` (no daemon to tell it: it looks every 50 ms).
    task = mount.ok('task.create', {'level': 'case', 'title': 'watched'})
    v = mount.db_version()
    p = subprocess.Popen([ORCHFS, 'call', '--repo', str(mount.repo), '--state', mount.state, 'wait',
                          json.dumps({'on': {'task_id': task['id']}, 'db_version_after': v, 'timeout_ms': 20000})],
                         stdout=subprocess.PIPE, text=True)
    time.sleep(0.5)
    assert p.poll() is None
    mount.ok('case.begin', {'case_id': task['id'], 'input_contract': {}, 'fixtures': []})
    out, _ = p.communicate(timeout=10)
    r = json.loads(out)['result']
    assert r['changed'] is True and r['task']['status'] == 'in_progress', r


def test_wait_interrupted_by_a_signal(mount):
    task = mount.ok('task.create', {'level': 'case', 'title': 'never changes'})
    body = json.dumps({'on': {'task_id': task['id']}, 'timeout_ms': 60000})
    p = subprocess.Popen(['bash', '-c', 'echo "$1" > "$2"', 'bash', body, mount.p('ctl', 'wait')],
                         stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)
    assert p.poll() is None
    t0 = time.monotonic()
    p.send_signal(signal.SIGINT)
    p.wait(timeout=10)
    took = time.monotonic() - t0
    print(f'\nSIGINT ended a blocked write of ctl/wait in {took * 1000:.0f} ms')
    assert took < 5
    assert mount.ok('task.get', {'task_id': task['id']})['status'] == 'todo'


def test_parked_waits_hold_no_thread(mount):
    """100 writes of ctl/wait blocked at once: the daemon keeps its threads; one change answers them all,
    and waits with a deadline return at it."""
    task = mount.ok('task.create', {'level': 'case', 'title': 'watched by many'})
    threads_before = len(os.listdir(f'/proc/{mount.proc.pid}/task'))
    body = json.dumps({'on': {'task_id': task['id']}, 'timeout_ms': 60000})
    waiters = [subprocess.Popen(['bash', '-c', 'exec 3<>"$2"; echo "$1" >&3; cat <&3', 'bash', body,
                                 mount.p('ctl', 'wait')], stdout=subprocess.PIPE, text=True) for _ in range(100)]
    short = [subprocess.Popen(['bash', '-c', 'exec 3<>"$2"; echo "$1" >&3; cat <&3', 'bash',
                               json.dumps({'on': {'task_id': task['id']}, 'timeout_ms': 700 + 100 * i}),
                               mount.p('ctl', 'wait')], stdout=subprocess.PIPE, text=True) for i in range(5)]
    try:
        time.sleep(2)
        threads_now = len(os.listdir(f'/proc/{mount.proc.pid}/task'))
        assert all(w.poll() is None for w in waiters)
        for w in short:
            assert json.loads(w.communicate(timeout=10)[0])['result']['timed_out'] is True
        t0 = time.monotonic()
        mount.ok('case.begin', {'case_id': task['id'], 'input_contract': {}, 'fixtures': []})
        for w in waiters:
            r = json.loads(w.communicate(timeout=30)[0])['result']
            assert r['changed'] is True and r['task']['status'] == 'in_progress', r
        print(f'\n100 parked writes of ctl/wait: daemon threads {threads_before} before, {threads_now} while '
              f'they waited; one change answered all of them in {(time.monotonic() - t0) * 1000:.0f} ms')
        assert threads_now < threads_before + 20
    finally:
        for w in waiters + short:
            w.kill()
            w.wait()


def test_wait_bad_input(mount):
    mount.fails('wait', {'on': {'lock_id': 99}, 'timeout_ms': 10}, 'not_found', 2)
    mount.fails('wait', {'on': {}}, 'invalid_params', 22)
    mount.fails('wait', {'on': {'lock_id': 1, 'task_id': 2}}, 'invalid_params', 22)
    mount.fails('wait', {'on': {'session_id': 1}}, 'invalid_params', 22)
    mount.fails('wait', {'on': {'task_id': 0}}, 'invalid_params', 22)
    mount.fails('wait', {'on': {'task_id': 1}, 'timeout_ms': -1}, 'invalid_params', 22)
    mount.fails('wait', {'on': {'task_id': 1}, 'call_id': 'w1'}, 'invalid_params', 22)
    assert 'lock_id' in open(mount.p('ctl', 'wait')).read()


def candidates(mount, requester, timeout=None):
    params = {'requester_session_id': requester}
    if timeout:
        params['heartbeat_timeout_seconds'] = timeout
    return [c['session']['id'] for c in mount.ok('resume.candidates.list', params)]


def test_alive_held_then_kill_9_frees_locks_and_makes_a_candidate(mount):
    target = open_session(mount)
    requester = open_session(mount)
    case = mount.ok('task.create', {'level': 'case', 'title': 'held work'})
    mount.ok('case.begin', {'case_id': case['id'], 'input_contract': {}, 'fixtures': []}, session=target)
    lock = mount.ok('lock.acquire', {'scope_type': 'prefix', 'scope_path': 'src'}, session=target)
    alive = mount.p('sessions', str(target), 'alive')
    assert os.stat(alive).st_size == 0
    holder = subprocess.Popen(['bash', '-c', 'exec 3<>"$1"; echo held; exec sleep 1000', 'bash', alive],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == 'held\n'
    # Held: live past its heartbeat window, whatever the requester asks.
    time.sleep(1.2)
    assert target not in candidates(mount, requester, timeout=1)
    fd = os.open(mount.p('events'), os.O_RDONLY)
    try:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        t0 = time.monotonic()
        e = json.loads(os.read(fd, 4096))
        print(f'\nthe alive release event came {(time.monotonic() - t0) * 1000:.1f} ms after the holder died')
    finally:
        os.close(fd)
    assert e['method'] == 'session.alive.release' and e['session_id'] == target, e
    assert lock['id'] in e['ids']['locks']
    # At once: the lock is released and the session is a candidate with any window.
    assert mount.ok('task.get', {'task_id': case['id']})['status'] == 'in_progress'
    assert not os.path.exists(mount.p('locks', f"{lock['id']}.json"))
    assert target in candidates(mount, requester, timeout=3600)
    other = mount.ok('lock.acquire', {'scope_type': 'file', 'scope_path': 'src/a.c'}, session=requester)
    assert other['state'] == 'active'
    # A sign of life after the drop makes it live again (its own window counts).
    mount.ok('session.heartbeat', {}, session=target)
    assert target not in candidates(mount, requester, timeout=3600)


def test_alive_open_close_counts_holders(mount):
    sid = open_session(mount)
    lock = mount.ok('lock.acquire', {'scope_type': 'file', 'scope_path': 'x.c'}, session=sid)
    a = open(mount.p('sessions', str(sid), 'alive'))
    b = open(mount.p('sessions', str(sid), 'alive'), 'w')
    b.write('anything')
    b.flush()
    assert a.read() == ''
    assert mount.read_json('sessions', str(sid), 'session.json')['alive_held'] is True
    b.close()      # one holder left: still held
    time.sleep(0.2)
    assert mount.read_json('locks', f"{lock['id']}.json")['state'] == 'active'
    assert mount.read_json('sessions', str(sid), 'session.json')['alive_held'] is True
    a.close()      # the last one: dropped
    eventually(lambda: not os.path.exists(mount.p('locks', f"{lock['id']}.json")))
    assert mount.read_json('sessions', str(sid), 'session.json')['alive_held'] is False
    closed = open_session(mount)
    mount.ok('session.close', {}, session=closed)
    with pytest.raises(OSError) as e:
        open(mount.p('sessions', str(closed), 'alive'))
    assert e.value.errno == 22
    with pytest.raises(FileNotFoundError):
        open(mount.p('sessions', '999', 'alive'))


def test_alive_of_a_killed_daemon_is_not_held(mount):
    sid = open_session(mount)
    requester = open_session(mount)
    case = mount.ok('task.create', {'level': 'case', 'title': 'w'})
    mount.ok('case.begin', {'case_id': case['id'], 'input_contract': {}, 'fixtures': []}, session=sid)
    lock = mount.ok('lock.acquire', {'scope_type': 'file', 'scope_path': 'k.c'}, session=sid)
    f = open(mount.p('sessions', str(sid), 'alive'))
    assert sid not in candidates(mount, requester, timeout=3600)
    mount.kill()
    f.close()
    # Its row names a daemon that is gone: `orchfs call` (and any daemon) sees the session dropped.
    r = mount.orchfs_call('resume.candidates.list', {'requester_session_id': requester})
    assert r.returncode == 0, r.stderr
    assert sid in [c['session']['id'] for c in json.loads(r.stdout)['result']]
    # The next writer, whatever process it is, first releases what the dead daemon held.
    other = mount.orchfs_call('lock.acquire', {'scope_type': 'file', 'scope_path': 'k.c',
                                               'owner_session': str(requester)})
    assert other.returncode == 0, other.stderr
    mount.start()
    assert not os.path.exists(mount.p('locks', f"{lock['id']}.json"))
    fd = os.open(mount.p('events-since', '0'), os.O_RDONLY | os.O_NONBLOCK)
    data = b''
    try:
        while True:
            data += os.read(fd, 65536)
    except BlockingIOError:
        pass
    finally:
        os.close(fd)
    released = [e for e in map(json.loads, data.decode().splitlines()) if e['method'] == 'session.alive.reap']
    assert len(released) == 1 and lock['id'] in released[0]['ids']['locks'], released


def test_a_daemon_starting_releases_what_a_killed_one_held(mount):
    sid = open_session(mount)
    lock = mount.ok('lock.acquire', {'scope_type': 'file', 'scope_path': 'k.c'}, session=sid)
    f = open(mount.p('sessions', str(sid), 'alive'))
    mount.kill()
    f.close()
    mount.start()
    eventually(lambda: not os.path.exists(mount.p('locks', f"{lock['id']}.json")))
    assert 'held by a daemon that is gone' in open(mount.log).read()


def test_blocked_readers_cost_nothing_and_do_not_slow_writers(mount):
    """200 blocked readers (`cat events` processes) while 16 writer processes create tasks: the
    writers' throughput with and without them (a figure, not an assertion: on a shared 2-core
    machine the readers' own work competes for the CPU), and the daemon's CPU time and thread
    count while nothing happens (parked reads hold no thread and never wake)."""
    duration = float(os.environ.get('EVENTS_BENCH_SECONDS', '3'))
    writer = r"""
import json, os, sys, time
path, stop, n = sys.argv[1], time.monotonic() + float(sys.argv[2]), 0
while time.monotonic() < stop:
    fd = os.open(path, os.O_RDWR)
    os.write(fd, b'{"level": "case", "title": "w"}')
    assert b'result' in os.read(fd, 65536)
    os.close(fd)
    n += 1
print(n)
"""

    def writers_rate():
        ws = [subprocess.Popen([sys.executable, '-c', writer, mount.p('ctl', 'task.create'), str(duration)],
                               stdout=subprocess.PIPE, text=True) for _ in range(16)]
        return sum(int(w.communicate(timeout=duration + 120)[0]) for w in ws) / duration

    def cpu():
        f = open(f'/proc/{mount.proc.pid}/stat').read().rsplit(')', 1)[1].split()
        return (int(f[11]) + int(f[12])) / os.sysconf('SC_CLK_TCK')

    base = writers_rate()
    v = mount.db_version()
    readers = [subprocess.Popen(['cat', mount.p('events')], stdout=subprocess.PIPE) for _ in range(200)]
    try:
        time.sleep(1)
        c0 = cpu()
        time.sleep(2)
        idle_cpu = cpu() - c0
        threads_now = len(os.listdir(f'/proc/{mount.proc.pid}/task'))
        c0 = cpu()
        loaded = writers_rate()
        busy_cpu = cpu() - c0
        made = mount.db_version() - v
        print(f'\nwriters (16 processes, task.create): {base:.0f}/s alone, {loaded:.0f}/s with 200 blocked '
              f'`cat events` readers ({loaded / base * 100:.0f}%), each reader getting all {made} events; daemon CPU '
              f'{busy_cpu:.2f} s for them; with 200 blocked readers and no writes: {idle_cpu * 1000:.0f} ms CPU in '
              f'2 s, {threads_now} threads')
        assert idle_cpu < 0.5, idle_cpu
        assert threads_now < 150, threads_now   # parked reads hold no thread
    finally:
        for r in readers:
            r.kill()
        for r in readers:
            r.wait()
