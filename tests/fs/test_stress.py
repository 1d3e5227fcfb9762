"""A stress test through the mount: many readers and writers, in threads and in other
processes, for STRESS_SECONDS (20 by default).

scripts/test runs it twice: with the ASan/UBSan build, like every test, and with a
ThreadSanitizer build (ORCHFS_BIN=build-tsan/orchfs).  The mount fixture fails the test when
the daemon's stderr holds a sanitizer report ("WARNING: ThreadSanitizer: data race", …); the
`orchfs call` processes started here are checked the same way.  Every reply must be a
result, every read valid JSON, and the tasks counted at the end must be the ones created.
"""
import json
import os
import random
import select
import signal
import subprocess
import threading
import time

import pytest

from conftest import BAD_OUTPUT, ORCHFS

pytestmark = pytest.mark.stress

DURATION = float(os.environ.get('STRESS_SECONDS', '20'))
SESSIONS = 4

BASH_WORKER = r'''
M=$1 sid=$2 end=$((SECONDS + $3)) ok=0 bad=0 created=0
while ((SECONDS < end)); do
	cat "$M/tasks/1/task.json" "$M/sessions/$sid/context.json" "$M/sessions/$sid/session.json" >/dev/null || bad=$((bad + 1))
	ls "$M/tasks" "$M/locks" "$M/graph/nodes" "$M/sessions/$sid/ctl" >/dev/null || bad=$((bad + 1))
	touch "$M/sessions/$sid/heartbeat" || bad=$((bad + 1))
	if echo '{"level": "case", "title": "from bash"}' >"$M/ctl/task.create"; then
		created=$((created + 1))
	else
		bad=$((bad + 1))
	fi
	cat "$M/sessions/$sid/ctl/lock.acquire" >/dev/null || bad=$((bad + 1))
	ok=$((ok + 1))
done
echo "$ok $bad $created"
'''

CALL_WORKER = r'''
ORCHFS=$1 repo=$2 state=$3 end=$((SECONDS + $4)) ok=0 bad=0 created=0
while ((SECONDS < end)); do
	if "$ORCHFS" call --repo "$repo" --state "$state" task.create '{"level": "epic", "title": "from orchfs call"}' >/dev/null; then
		created=$((created + 1))
	else
		bad=$((bad + 1))
	fi
	"$ORCHFS" call --repo "$repo" --state "$state" lock.acquire \
		'{"scope_type": "prefix", "scope_path": "call", "owner_session": "call", "ttl_seconds": 1}' >/dev/null \
		|| bad=$((bad + 1))
	"$ORCHFS" call --repo "$repo" --state "$state" task.list '{"level": "epic"}' >/dev/null || bad=$((bad + 1))
	ok=$((ok + 1))
done
echo "$ok $bad $created"
'''


def test_stress_readers_and_writers(mount):
    sids = [mount.ok('session.open', {'agent_role': 'implementer'})['session_context']['session']['id']
            for _ in range(SESSIONS)]
    mount.ok('task.create', {'level': 'epic', 'title': 'seed'})
    mount.ok('plan.bootstrap', {'initiative_title': 'stress', 'plan_title': 'p'})
    created = [1]
    errors = []
    stats = {}
    guard = threading.Lock()
    deadline = time.monotonic() + DURATION

    def fail(*what):
        with guard:
            errors.append(what)

    def count(name, n=1):
        with guard:
            stats[name] = stats.get(name, 0) + n

    def ok(method, params, session=None):
        err, reply = mount.call(method, params, session)
        if err or 'result' not in reply:
            raise AssertionError((method, params, session, err, reply))
        count(method)
        return reply['result']

    def worker(fn, *args):
        def run():
            try:
                fn(*args)
            except Exception as e:  # noqa: BLE001 -- every failure is reported at the end
                fail(fn.__name__, args, repr(e))
        return threading.Thread(target=run, name=fn.__name__)

    def session_agent(sid):
        """Cases, steps, locks and heartbeats through sessions/<sid>/ctl/, and its last replies."""
        n = 0
        while time.monotonic() < deadline:
            case = ok('task.create', {'level': 'case', 'title': f's{sid}-{n}'})
            with guard:
                created[0] += 1
            ok('case.begin', {'case_id': case['id']}, sid)
            ok('step.check', {'case_id': case['id'], 'step_title': 'build', 'result': 'pass'}, sid)
            lock = ok('lock.acquire', {'scope_type': 'file', 'scope_path': f'src/s{sid}/{n}.c'}, sid)
            last = json.loads(open(mount.p('sessions', str(sid), 'ctl', 'lock.acquire')).read())
            if 'result' not in last:
                raise AssertionError(('last reply', last))
            ok('lock.heartbeat', {'lock_id': lock['id']}, sid)
            ok('lock.release', {'lock_id': lock['id']}, sid)
            ok('session.heartbeat', {}, sid)
            ok('case.complete', {'case_id': case['id'], 'summary': 'ok'}, sid)
            json.loads(open(mount.p('sessions', str(sid), 'ctl', 'case.complete')).read())
            n += 1

    def planner():
        n = 0
        while time.monotonic() < deadline:
            node = ok('graph.node.create', {'node_type': 'note', 'title': f'n{n}', 'parent_id': 2})
            ok('graph.checklist.upsert', {'node_id': node['id'], 'item_text': 'check'})
            ok('graph.snapshot.create', {'node_id': node['id'], 'snapshot_type': 'note', 'summary': 's'})
            ok('graph.edge.create', {'from_node_id': 1, 'to_node_id': node['id'], 'edge_type': 'depends_on'})
            ok('plan.rollup.preview', {'parent_node_id': 1})
            n += 1

    def opener():
        """Sessions opened (a branch and a checkout made with libgit2) and closed again."""
        while time.monotonic() < deadline:
            ctx = ok('session.open', {'agent_role': 'reviewer'})['session_context']
            sid = ctx['session']['id']
            json.loads(open(mount.p('sessions', str(sid), 'context.json')).read())
            ok('session.close', {}, sid)

    def reader(seed):
        rnd = random.Random(seed)
        while time.monotonic() < deadline:
            for top in ['tasks', 'sessions', 'locks', 'worktrees', 'graph/nodes', 'replies']:
                names = os.listdir(mount.p(top))
                for name in rnd.sample(names, min(3, len(names))):
                    p = mount.p(top, name)
                    try:
                        if os.path.isdir(p):
                            for child in os.listdir(p):
                                q = os.path.join(p, child)
                                if child.endswith('.json'):
                                    json.loads(open(q, 'rb').read())
                                elif child == 'root':
                                    os.readlink(q)
                        else:
                            json.loads(open(p, 'rb').read())
                    except FileNotFoundError:
                        if top != 'locks':        # a lock vanishes when released; nothing else does
                            raise
                    count('read')
            os.stat(mount.p('tasks', '1', 'task.json'))

    def heartbeater():
        while time.monotonic() < deadline:
            for sid in sids:
                hb = mount.p('sessions', str(sid), 'heartbeat')
                os.utime(hb)
                with open(hb, 'w') as f:
                    f.write('alive\n')
                open(hb).read()
                count('heartbeat')
            time.sleep(0.05)

    threads = [worker(session_agent, sid) for sid in sids]
    threads += [worker(planner), worker(opener), worker(heartbeater)]
    threads += [worker(reader, i) for i in range(4)]
    procs = [subprocess.Popen(['bash', '-c', BASH_WORKER, 'bash', mount.path, str(sid), str(int(DURATION))],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for sid in sids[:2]]
    procs.append(subprocess.Popen(['bash', '-c', CALL_WORKER, 'bash', ORCHFS, str(mount.repo), mount.state,
                                   str(int(DURATION))], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for t in threads:
        t.start()
    outs = [p.communicate(timeout=DURATION + 300) for p in procs]
    for t in threads:
        t.join(timeout=DURATION + 300)
    assert not any(t.is_alive() for t in threads), 'a thread is stuck'
    assert not errors, errors[:5]

    for (out, err), p in zip(outs, procs):
        assert p.returncode == 0, err
        bad = [line for line in err.splitlines() if BAD_OUTPUT.search(line)]
        assert not bad, err
        loops, failures, made = map(int, out.split())
        assert loops > 0 and failures == 0, (out, err)
        created[0] += made
    for what in ['task.create', 'case.complete', 'graph.node.create', 'session.open', 'read', 'heartbeat']:
        assert stats.get(what, 0) > 0, stats
    tasks = mount.ok('task.list', {})
    assert len(tasks) == created[0] == len(os.listdir(mount.p('tasks')))
    print('stress:', json.dumps(stats, sort_keys=True))


def test_stress_blocked_readers_and_interrupts(mount):
    """Readers of events blocked, woken, polled and interrupted (SIGINT, SIGKILL) while writers
    run, alive files are opened and closed and calls of wait come and go.  Every reader sees
    strictly increasing db_versions; the last one sees every event of the run."""
    duration = max(5.0, DURATION / 2)
    sids = [mount.ok('session.open', {'agent_role': 'implementer'})['session_context']['session']['id']
            for _ in range(2)]
    mount.ok('task.create', {'level': 'case', 'title': 'waited on'})
    v0 = mount.db_version()
    deadline = time.monotonic() + duration
    errors = []
    stats = {}
    guard = threading.Lock()

    def count(name):
        with guard:
            stats[name] = stats.get(name, 0) + 1

    def run(fn, *args):
        def body():
            try:
                fn(*args)
            except Exception as e:  # noqa: BLE001
                with guard:
                    errors.append((fn.__name__, repr(e)))
        return threading.Thread(target=body, name=fn.__name__)

    def writer(i):
        n = 0
        while time.monotonic() < deadline:
            fd = os.open(mount.p('ctl', 'task.create'), os.O_RDWR)
            try:
                os.write(fd, json.dumps({'level': 'case', 'title': f'ev{i}-{n}'}).encode())
                assert b'result' in os.read(fd, 65536)
            finally:
                os.close(fd)
            n += 1
            count('write')

    def interrupted_readers():
        """cat events started and killed by a signal at random moments, blocked or not."""
        rnd = random.Random(1)
        while time.monotonic() < deadline:
            p = subprocess.Popen(['cat', mount.p('events')], stdout=subprocess.DEVNULL)
            time.sleep(rnd.random() * 0.05)
            p.send_signal(rnd.choice([signal.SIGINT, signal.SIGKILL, signal.SIGTERM]))
            p.wait(timeout=30)
            count('interrupted')

    def interrupted_waits():
        """Writes of ctl/wait parked, then signalled, answered or timed out."""
        rnd = random.Random(2)
        body = json.dumps({'on': {'task_id': 1}, 'timeout_ms': 200})
        while time.monotonic() < deadline:
            p = subprocess.Popen(['bash', '-c', 'echo "$1" > "$2"', 'bash', body, mount.p('ctl', 'wait')],
                                 stderr=subprocess.DEVNULL)
            time.sleep(rnd.random() * 0.3)
            p.send_signal(rnd.choice([signal.SIGINT, signal.SIGKILL]))
            p.wait(timeout=30)
            count('wait_interrupted')

    def poller():
        fd = os.open(mount.p('events'), os.O_RDONLY | os.O_NONBLOCK)
        last = v0
        try:
            po = select.poll()
            po.register(fd, select.POLLIN)
            while time.monotonic() < deadline:
                if not po.poll(200):
                    continue
                while True:
                    try:
                        data = os.read(fd, 65536)
                    except BlockingIOError:
                        break
                    assert data.endswith(b'\n'), data     # whole lines only
                    for raw in data.splitlines():
                        line = json.loads(raw)
                        assert line['db_version'] > last, (line, last)
                        last = line['db_version']
                        count('polled')
        finally:
            os.close(fd)

    def alive_and_wait(sid):
        while time.monotonic() < deadline:
            with open(mount.p('sessions', str(sid), 'alive')):
                lock = mount.ok('lock.acquire', {'scope_type': 'file', 'scope_path': f'f{sid}.c'}, session=sid)
                r = mount.ok('wait', {'on': {'lock_id': lock['id']}, 'timeout_ms': 20})
                assert r['timed_out'] is True
            count('alive')

    follower = subprocess.Popen(['cat', mount.p('events-since', str(v0))], stdout=subprocess.PIPE)
    got = []

    def follow():
        for line in follower.stdout:
            got.append(json.loads(line)['db_version'])
    following = threading.Thread(target=follow, daemon=True)
    following.start()
    threads = [run(writer, i) for i in range(4)] + [run(interrupted_readers), run(interrupted_readers)]
    threads += [run(poller), run(poller), run(interrupted_waits)] + [run(alive_and_wait, sid) for sid in sids]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=duration + 300)
    assert not any(t.is_alive() for t in threads), 'a thread is stuck'
    assert not errors, errors[:5]
    last = mount.db_version()
    stop = time.monotonic() + 60
    while (not got or got[-1] < last) and time.monotonic() < stop:
        time.sleep(0.05)
    follower.kill()
    follower.wait()
    # Every event, once, in order (an alive file's release may still add some after `last`).
    assert got[:last - v0] == list(range(v0 + 1, last + 1)), (len(got), last - v0)
    assert got == list(range(v0 + 1, v0 + 1 + len(got)))
    for what in ['write', 'interrupted', 'polled', 'alive', 'wait_interrupted']:
        assert stats.get(what, 0) > 0, stats
    print('events stress:', json.dumps(stats, sort_keys=True))
