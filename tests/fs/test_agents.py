"""Stress harness (issue 13): 16 agents, each doing AGENT_OPS mixed operations (1,000 from
scripts/stress; fewer in CI), 12 through the mount and 4 through `orchfs call` processes, with no
kill: sessions, cases (work.current_ref / resume.next, begin, steps, complete), leases on
overlapping scopes, tasks, spawns with commits merged into the session root.

Checked throughout (a monitor samples the database, one snapshot at a time) and at the end:
never two conflicting active leases of different owners at once, never one case held by two
sessions; no error an agent did not expect (busy, locked, internal: anything but the conflict
and not_found the rules give) ever reaches a client; task and lock ids unique; db_version
between the successful calls of methods that always change the database and all successful
calls of writing methods (some, like work.current_ref, change nothing when repeated); and
`orchfs check` clean.
"""
import json
import os
import random
import subprocess
import threading
import time

from conftest import ORCHFS, check_sanitizers
from test_chaos import MUTATING, CliAgent, MountAgent, World, open_db, snapshot_violations

OPS = int(os.environ.get('AGENT_OPS') or 40)
MOUNT_AGENTS, CLI_AGENTS = 12, 4


def bounded(cls):
    """An agent that stops once it has made OPS calls."""
    class Bounded(cls):
        def run(self):
            try:
                while self.n < OPS and not self.w.stop.is_set():
                    self.cycle()
            except Exception as e:  # noqa: BLE001 -- reported by the test
                import traceback
                with self.w.guard:
                    self.w.exceptions.append(f'{self.name}: {e!r}\n{traceback.format_exc()}')
    return Bounded


def test_sixteen_agents(mount, repo):
    seed = int(os.environ.get('AGENTS_SEED') or random.randrange(1 << 30))
    rng = random.Random(seed)
    why = f'(AGENTS_SEED={seed})'
    w = World(mount, seed)
    feature = mount.ok('task.create', {'level': 'feature', 'title': 'stress'})['id']
    for i in range(100):
        mount.ok('task.create', {'level': 'case', 'title': f'case {i}', 'parent_id': feature, 'priority': i % 3})
    base = mount.db_version()

    agents = [bounded(MountAgent)(w, f'm{i}', random.Random(rng.random())) for i in range(MOUNT_AGENTS)]
    agents += [bounded(CliAgent)(w, f'c{i}', random.Random(rng.random())) for i in range(CLI_AGENTS)]
    threads = [threading.Thread(target=a.run, name=a.name) for a in agents]
    violations, samples, stop = [], [0], threading.Event()

    def monitor():
        while not stop.is_set():
            db = open_db(mount.state)
            try:
                violations.extend(snapshot_violations(db))
                samples[0] += 1
            finally:
                db.close()
            time.sleep(0.02)

    mon = threading.Thread(target=monitor)
    t0 = time.time()
    mon.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=OPS * 5 + 300)
    stop.set()
    mon.join()
    took = time.time() - t0
    assert not any(t.is_alive() for t in threads), f'{why} agents still running after the bound'
    calls = sum(a.n for a in agents)
    stats = (f'{why} {len(agents)} agents, {calls} calls in {took:.1f} s ({calls / took:.0f}/s), '
             f'{len(w.successes)} successes, {samples[0]} monitor samples')
    print(stats)
    assert not w.exceptions, f'{stats}\n' + '\n'.join(w.exceptions)
    assert not w.unexpected, f'{stats}\nunexpected replies:\n' + '\n'.join(map(repr, w.unexpected[:20]))
    assert not w.own_name_taken, (stats, w.own_name_taken)
    assert not violations, f'{stats}\n' + '\n'.join(violations[:20])
    assert w.retries == 0, (stats, w.retries)   # no kill: a transport failure is a bug

    # Ids are unique: every task and lease an agent was given is its own.
    tasks = [s[3]['id'] for s in w.successes if s[1] == 'task.create']
    locks = [s[3]['id'] for s in w.successes if s[1] == 'lock.acquire']
    assert len(tasks) == len(set(tasks)) and len(locks) == len(set(locks)), stats
    seen = {s[1] for s in w.successes}
    assert {'case.complete', 'lock.acquire', 'worktree.merge_to_parent', 'task.create'} <= seen, (stats, seen)

    # db_version: one bump per call that changed the database, none for the others.
    always = len([s for s in w.successes if s[1] in MUTATING])
    writes = len([s for s in w.successes if s[1] in MUTATING | {'work.current_ref', 'resume.next'}])
    version = mount.db_version() - base
    assert always <= version <= writes, (stats, always, version, writes)

    p = subprocess.run([ORCHFS, 'check', '--repo', str(repo), '--state', mount.state], capture_output=True,
                       text=True, timeout=300)
    check_sanitizers(p, 'orchfs check')
    assert p.returncode == 0, (stats, p.stdout)
    json.loads(p.stdout)
