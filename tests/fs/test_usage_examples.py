"""Every method's usage example works when run literally, in order, on a fresh
mount (issue 11, item 8).  The example is taken from the usage text a ctl
file shows (`cat ctl/<method>`), run with bash in the mount's directory, and
must reply with a result.  Where a usage text names a precondition that
only time or git provides (a commit in a child's checkout, a session silent
past its window, a node pending again), the test provides it the way an
agent would, and says so."""
import json
import os
import sqlite3
import subprocess

from conftest import ORCHFS, git

# The order an agent meets them in; every method of the table must be here.
ORDER = [
    'session.open', 'session.heartbeat', 'session.context',
    'task.create', 'task.list', 'task.get',
    'work.current_ref', 'work.current_ref.ack', 'case.begin', 'step.check', 'case.complete',
    'task.update', 'resume.next',
    'scheduler.decide_worktree', 'worktree.spawn', 'worktree.create', 'worktree.merge_to_parent',
    'worktree.abandon',
    'lock.acquire', 'lock.heartbeat', 'lock.release',
    'plan.bootstrap', 'plan.slice.generate', 'graph.node.create', 'graph.node.list', 'graph.edge.create',
    'graph.checklist.upsert', 'graph.snapshot.create', 'plan.slice.replan', 'plan.rollup.preview',
    'plan.rollup.submit', 'plan.rollup.reject', 'plan.rollup.approve',
    'mirror.status',
    'resume.candidates.list', 'resume.candidates.attach', 'session.close',
]
LATER = {'mirror.refresh', 'merge.main.request', 'merge.main.next', 'merge.main.status', 'merge.main.acquire_lock',
         'merge.main.release_lock', 'merge.main.run', 'merge.main.cancel', 'merge.request', 'merge.review_context',
         'wait'}


def example(mount, method):
    usage = open(mount.p('ctl', method)).read()
    lines = usage.split('\nExample:\n', 1)[1].splitlines()
    return lines[0].strip()


def before(mount, method):
    """What a usage text says must be true before its example."""
    if method == 'worktree.merge_to_parent':
        # "commit in the child's checkout first"
        path = mount.read_json('worktrees', '3.json')['path']
        with open(os.path.join(path, 'parser.c'), 'w') as f:
            f.write('int parse(void);\n')
        git(path, 'add', 'parser.c')
        git(path, 'commit', '-q', '-m', 'parser')
    elif method == 'plan.rollup.approve':
        # "a pending node": the rejected rollup is submitted again.
        mount.ok('plan.rollup.submit', {'node_id': 2, 'summary': 'tests added'})
    elif method == 'resume.candidates.list':
        # Session 1 has been silent past its window (time passing, as the unit tests age a session),
        # and session 2 is a session opened with intent resume_work.
        db = sqlite3.connect(os.path.join(mount.state, 'state.db'))
        db.execute('UPDATE sessions SET last_seen_at = last_seen_at - 121000 WHERE id = 1')
        db.commit()
        db.close()
        assert mount.ok('session.open', {'intent': 'resume_work'})['session']['id'] == 2


def test_usage_examples_run_literally_in_order(mount):
    methods = json.loads(subprocess.run([ORCHFS, 'methods', '--json'], capture_output=True, text=True,
                                        check=True).stdout)
    names = {m['name'] for m in methods}
    assert names - set(ORDER) <= LATER, f'methods missing from ORDER: {sorted(names - set(ORDER) - LATER)}'
    for method in ORDER:
        before(mount, method)
        line = example(mount, method)
        assert line.startswith(f'exec 3<>ctl/{method}; echo '), line
        r = subprocess.run(['bash', '-c', line], cwd=mount.path, capture_output=True, text=True)
        reply = json.loads(r.stdout)
        assert "result" in reply, (method, line, reply)
    assert mount.read_json('sessions', '1', 'session.json')['status'] == 'closed'
    assert mount.read_json('sessions', '2', 'session.json')['status'] == 'active_resume'


def test_session_usage_examples_omit_implied_keys_and_say_where_replies_are(mount):
    mount.ok('session.open')
    for name in os.listdir(mount.p('sessions', '1', 'ctl')):
        usage = open(mount.p('sessions', '1', 'ctl', name)).read()
        ex = usage.split('\nExample (from this directory):\n', 1)[1].splitlines()[0]
        body = ex.split("echo '", 1)[1].split("' >&3", 1)[0]
        assert not {'session_id', 'requester_session_id', 'owner_session'} & set(json.loads(body)), (name, ex)
        assert 'without writing shows the last reply' in usage and 'touch ../heartbeat' in usage
