"""Three dqlite nodes, one per network namespace, driven by the wire protocol client.

The test makes the namespaces itself: a hub namespace holding a bridge and one
veth pair per node namespace (10.77.0.N/24; nothing reaches another
network), and removes them at the end.  It needs root and a build with
-Ddqlite=enabled (scripts/test builds one); without either it fails, it does
not skip: a build without the replicated store must not pass as tested.

- race: two clients on different hosts take the same 300 keys in BEGIN
  IMMEDIATE transactions; every key has exactly one holder.
- partition: the leader's link is cut; a write through it fails within 2 s;
  the majority elects a leader and takes the lease the minority wanted; when
  the link is back there is one leader and the minority's write is nowhere.
- failover: a writer inserts sequential ids through the cluster; the leader is
  SIGKILLed; writes resume within 2 s on the new leader, no acknowledged id is
  missing, PRAGMA user_version set before is read on the new leader, both
  survivors still run; the killed node restarts from its directory, is a voter
  again and has caught up (a write needs its vote once a survivor is stopped).
"""
import os
import re
import signal
import subprocess
import threading
import time

import pytest

from conftest import ORCHFS
from netns import bridged, ip

TOOL = os.environ.get('ORCHFS_DQLITE_BIN', os.path.join(os.path.dirname(ORCHFS), 'orchfs-dqlite'))
NS = f'odq{os.getpid() % 100000}'
HUB = f'{NS}h'
PORT = 9001
SUBNET = '10.77.0'


def addr(i):
    return f'{SUBNET}.{i}:{PORT}'


def in_ns(i, argv):
    return ['ip', 'netns', 'exec', f'{NS}n{i}', *argv]


def tool_env():
    env = dict(os.environ)
    # The nodes are killed and stopped at will: LeakSanitizer's exit report would be noise there.
    env['ASAN_OPTIONS'] = env.get('ASAN_OPTIONS', '') + ':detect_leaks=0'
    return env


class Node:
    def __init__(self, i, tmp_path):
        self.i = i
        self.dir = tmp_path / f'node{i}'
        self.proc = None
        self.lines = []

    def start(self, peers):
        # 20 ms of expected latency: elections after 300 ms of silence (dqlite's default is 3 s).
        argv = [TOOL, 'node', '--id', str(self.i), '--addr', addr(self.i), '--dir', str(self.dir),
                '--latency-ms', '20']
        for p in peers:
            argv += ['--peer', p]
        self.proc = subprocess.Popen(in_ns(self.i, argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env=tool_env())
        line = self.proc.stdout.readline()
        assert line.startswith('ready'), f'node {self.i} did not start: {line!r} {self.proc.stderr.read()}'

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def run_tool(i, *args, timeout=60, peers=(1, 2, 3)):
    argv = [TOOL, *args]
    for n in peers:
        argv += ['--peer', addr(n)]
    return subprocess.run(in_ns(i, argv), capture_output=True, text=True, timeout=timeout, env=tool_env())


def cluster(i, peers=(1, 2, 3)):
    r = run_tool(i, 'cluster', peers=peers)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    leader = lines[0].split()[1]
    members = {int(l.split()[0]): l.split()[2] for l in lines[1:]}
    return leader, members


@pytest.fixture(scope='module')
def netns():
    if os.geteuid() != 0:
        pytest.fail('the dqlite cluster tests make network namespaces: run them as root')
    if not os.access(TOOL, os.X_OK):
        pytest.fail(f'{TOOL} is missing: build with meson -Ddqlite=enabled (scripts/test does)')
    with bridged(NS, SUBNET):
        yield


@pytest.fixture
def nodes(netns, tmp_path):
    ns = [Node(i, tmp_path) for i in (1, 2, 3)]
    try:
        ns[0].start([])
        ns[1].start([addr(1)])
        ns[2].start([addr(1)])
        yield ns
    finally:
        for n in ns:
            n.stop()


def test_three_voters_and_remembered_peers(nodes, tmp_path):
    leader, members = cluster(2)
    assert leader == addr(1)
    assert members == {1: 'voter', 2: 'voter', 3: 'voter'}
    # Node 3 was told only of node 1; it saved every member.
    peers = (tmp_path / 'node3' / 'peers').read_text().split()
    assert sorted(peers) == [addr(1), addr(2), addr(3)]


def test_race_for_keys_has_one_winner_each(nodes, tmp_path):
    go = tmp_path / 'go'
    argv = lambda i, name: in_ns(i, [TOOL, 'race', '--keys', '300', '--name', name, '--go', str(go)] +
                                 [a for n in (1, 2, 3) for a in ('--peer', addr(n))])
    env = dict(os.environ)
    procs = {name: subprocess.Popen(argv(i, name), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for i, name in ((2, 'A'), (3, 'B'))}
    # Both connected (each takes the keys in its own shuffled order): start them together.
    for p in procs.values():
        assert p.stdout.readline() == 'set\n'
    go.write_text('')
    won = {}
    for name, p in procs.items():
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        won[name] = {int(l.split()[1]) for l in out.splitlines() if l.startswith('won ')}
        lost = {int(l.split()[1]) for l in out.splitlines() if l.startswith('lost ')}
        assert won[name] | lost == set(range(300)) and not won[name] & lost
    print(f"A won {len(won['A'])} keys, B {len(won['B'])}")
    assert won['A'] & won['B'] == set()
    assert won['A'] | won['B'] == set(range(300))
    r = run_tool(1, 'query', 'SELECT holder, count(*) FROM lease GROUP BY holder ORDER BY holder')
    assert r.returncode == 0, r.stderr
    assert r.stdout == ''.join(f'{h}\t{len(won[h])}\n' for h in 'AB' if won[h])


def test_failover_loses_no_acknowledged_write(nodes):
    writer = subprocess.Popen(in_ns(2, [TOOL, 'writer', '--from', '1', '--to', '1000000'] +
                                    [a for n in (1, 2, 3) for a in ('--peer', addr(n))]),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=tool_env())
    acks = []   # (time, id)
    def read():
        for line in writer.stdout:
            m = re.match(r'ack (\d+)', line)
            if m:
                acks.append((time.monotonic(), int(m.group(1))))
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 60
        while len(acks) < 300 and time.monotonic() < deadline and writer.poll() is None:
            time.sleep(0.05)
        assert len(acks) >= 300, f'the writer did not get going: {writer.stderr.read() if writer.poll() is not None else ""}'
        gaps = sorted(t2 - t1 for (t1, _), (t2, _) in zip(acks[50:], acks[51:]))
        print(f'one-row autocommit INSERT through the cluster: p50 {gaps[len(gaps) // 2] * 1000:.2f} ms, '
              f'p99 {gaps[len(gaps) * 99 // 100] * 1000:.2f} ms')
        leader, _ = cluster(1)
        victim = next(n for n in nodes if addr(n.i) == leader)
        # Schema versioning may stay on PRAGMA user_version: it is replicated.
        assert run_tool(1, 'exec', 'PRAGMA user_version = 7').returncode == 0
        killed_at = time.monotonic()
        victim.kill()
        n_at_kill = len(acks)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any(t > killed_at for t, _ in acks[n_at_kill - 1:]):
            time.sleep(0.01)
        resumed = [t for t, _ in acks[max(0, n_at_kill - 5):] if t > killed_at]
        assert resumed, 'writes did not resume after the leader was killed'
        # Acks printed after the kill but for writes committed before it come at once;
        # wait for 200 more so the new leader has surely taken over.
        target = len(acks) + 200
        while len(acks) < target and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(acks) >= target
        gap = max(t2 - t1 for (t1, _), (t2, _) in zip(acks[n_at_kill - 1:], acks[n_at_kill:]))
        print(f'longest pause between acknowledgements after the kill: {gap:.3f} s')
        assert gap < 2.0
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        reader.join(timeout=10)
        print(writer.stderr.read())
    survivors = [n for n in nodes if n is not victim]
    assert run_tool(survivors[0].i, 'query', 'PRAGMA user_version').stdout == '7\n'
    assert all(n.proc.poll() is None for n in survivors), 'a survivor died with the leader'
    acked = {i for _, i in acks}
    r = run_tool(survivors[0].i, 'query', 'SELECT id FROM w ORDER BY id')
    assert r.returncode == 0, r.stderr
    stored = {int(x) for x in r.stdout.split()}
    assert acked - stored == set(), f'acknowledged but lost: {sorted(acked - stored)[:10]}'
    assert stored == set(range(1, max(stored) + 1)), 'ids are sequential with no hole'

    # The killed node restarts from its directory (no peers given: it remembers them) and is a voter again.
    victim.start([])
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        leader, members = cluster(survivors[0].i)
        if members.get(victim.i) == 'voter':
            break
        time.sleep(0.2)
    assert members == {1: 'voter', 2: 'voter', 3: 'voter'}
    assert all(n.proc.poll() is None for n in nodes)
    # It has caught up: with one survivor stopped, a write needs its vote, and the old rows are there.
    leader, _ = cluster(survivors[0].i)
    stopped = next(n for n in survivors if addr(n.i) != leader)
    stopped.stop()
    live = [n.i for n in nodes if n is not stopped]
    # (The leader may step down meanwhile, leaving the outcome unknown: the write is idempotent, retry it.)
    deadline = time.monotonic() + 20
    while (r := run_tool(victim.i, 'exec', 'INSERT OR IGNORE INTO w (id) VALUES (-1)', peers=live)).returncode:
        assert time.monotonic() < deadline, r.stderr
        time.sleep(0.2)
    r = run_tool(victim.i, 'query', 'SELECT count(*) FROM w WHERE id > 0', peers=live)
    assert r.returncode == 0 and int(r.stdout) == len(stored)


def test_partition_minority_cannot_write(nodes):
    assert run_tool(2, 'exec', 'CREATE TABLE p (key TEXT PRIMARY KEY, holder TEXT)').returncode == 0
    leader, _ = cluster(2)
    old = next(n for n in nodes if addr(n.i) == leader)
    others = [n for n in nodes if n is not old]
    ip('-n', HUB, 'link', 'set', f'v{old.i}', 'down')
    try:
        t0 = time.monotonic()
        r = run_tool(old.i, 'exec', '--connect-ms', '1500', '--timeout-ms', '1500',
                     "INSERT INTO p VALUES ('lease', 'minority')")
        took = time.monotonic() - t0
        print(f'write through the cut-off leader failed after {took:.3f} s: {r.stderr.strip()}')
        assert r.returncode != 0
        assert took < 2.0
        t0 = time.monotonic()
        r = run_tool(others[0].i, 'exec', "INSERT INTO p VALUES ('lease', 'majority')", peers=[n.i for n in others])
        print(f'majority write took {time.monotonic() - t0:.3f} s')
        assert r.returncode == 0, r.stderr
    finally:
        ip('-n', HUB, 'link', 'set', f'v{old.i}', 'up')
    # Every node, asked alone, names the same leader (one of the majority's, or the old one re-elected).
    deadline = time.monotonic() + 20
    while True:
        leaders = {cluster(n.i, peers=[n.i])[0] for n in nodes}
        if len(leaders) == 1 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    print(f'one leader after {time.monotonic() - deadline + 20:.3f} s: {leaders}')
    assert len(leaders) == 1
    r = run_tool(old.i, 'query', 'SELECT key, holder FROM p')
    assert r.returncode == 0, r.stderr
    assert r.stdout == 'lease\tmajority\n'
    assert all(n.proc.poll() is None for n in nodes)


def test_connection_left_open_while_its_node_loses_and_regains_the_leadership(nodes):
    """dqlite 1.11 closes the database of every connection to a node that loses the leadership; when
    that node leads again, a request on a connection that stayed open meanwhile fails with
    "no database opened" before it runs.  The client takes it for a request to a follower: it
    reconnects, opens the database again and runs the request."""
    shell = subprocess.Popen(in_ns(1, [TOOL, 'shell', '--peer', addr(1)]), stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=tool_env())

    def sql(text):
        shell.stdin.write(text + '\n')
        shell.stdin.flush()
        return shell.stdout.readline()
    try:
        assert shell.stdout.readline() == 'ready\n'
        assert sql('CREATE TABLE g (k INTEGER PRIMARY KEY)') == 'ok\n'
        leader, _ = cluster(2)
        assert leader == addr(1), 'the shell must be connected to the leader'
        # Stop the leader past an election until node 1 has lost the leadership and won it back.
        lost_by_1 = False
        deadline = time.monotonic() + 90
        while not (lost_by_1 and leader == addr(1)):
            assert time.monotonic() < deadline, 'node 1 did not lead again'
            victim = next(n for n in nodes if addr(n.i) == leader)
            others = [n.i for n in nodes if n is not victim]
            victim.proc.send_signal(signal.SIGSTOP)
            try:
                while cluster(others[0], peers=others)[0] == leader:
                    time.sleep(0.1)
            finally:
                victim.proc.send_signal(signal.SIGCONT)
            lost_by_1 = lost_by_1 or victim.i == 1
            # The old leader steps down when it hears of the new term; every node then names the same leader.
            while len({cluster(n.i, peers=[n.i])[0] for n in nodes}) != 1:
                time.sleep(0.1)
            leader, _ = cluster(2)
        assert sql('INSERT INTO g VALUES (1)') == 'ok\n'
        assert sql('INSERT INTO g VALUES (2)') == 'ok\n'
    finally:
        shell.stdin.close()
        shell.wait(timeout=30)
    r = run_tool(2, 'query', 'SELECT k FROM g ORDER BY k')
    assert r.returncode == 0 and r.stdout == '1\n2\n', (r.stdout, r.stderr)
