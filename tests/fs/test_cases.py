"""Case lifecycle, current refs and resume through the mount, with files only."""
import errno
import json
import os
import subprocess
import threading
import time

from conftest import ORCHFS


def sh(cmd):
    return subprocess.run(['bash', '-c', cmd], capture_output=True, text=True)


def write(path, obj):
    """An agent with a file tool: write the request in one open, nothing else."""
    with open(path, 'w') as f:
        f.write(json.dumps(obj))


def read_json(path):
    with open(path) as f:
        return json.load(f)


def make_cases(mount, n, priority=0):
    feature = mount.ok('task.create', {'level': 'feature', 'title': 'F'})['id']
    return [mount.ok('task.create', {'level': 'case', 'title': f'c{i}', 'parent_id': feature,
                                     'priority': priority})['id'] for i in range(n)]


def test_agent_killed_mid_case_is_replaced(mount):
    c1, c2 = make_cases(mount, 2)
    # Agent A: open, ask where to work, begin, three steps -- all with file writes and reads.
    # A's own heartbeat window is 1 s: silent longer, it may be taken over.
    write(mount.p('ctl', 'session.open'), {'agent_role': 'implementer', 'heartbeat_timeout_seconds': 1,
                                           'call_id': 'open-a'})
    a = read_json(mount.p('replies', 'open-a.json'))['result']['session_context']['session']['id']
    sctl = mount.p('sessions', str(a), 'ctl')
    write(os.path.join(sctl, 'work.current_ref'), {'mode': 'compact'})
    ref = read_json(os.path.join(sctl, 'work.current_ref'))['result']
    assert ref['source'] == 'resume.next' and ref['current_ref']['node_id'] == c1
    write(os.path.join(sctl, 'case.begin'), {'case_id': c1, 'input_contract': {'cmd': 'make test'},
                                             'fixtures': ['users.json'], 'required_files': ['src/a.c']})
    for i in range(1, 4):
        write(os.path.join(sctl, 'step.check'), {'case_id': c1, 'step_title': f'step {i}', 'result': 'pass',
                                                 'artifacts': [f'log{i}.txt']})
        assert read_json(os.path.join(sctl, 'step.check'))['result']['order_no'] == i
    steps = read_json(mount.p('tasks', str(c1), 'steps.json'))
    assert [s['order_no'] for s in steps] == [1, 2, 3]
    assert steps[2]['evidence'] == {'artifacts': ['log3.txt'], 'result': 'pass'}
    root_a = os.readlink(mount.p('sessions', str(a), 'root'))
    with open(os.path.join(root_a, 'work.txt'), 'w') as f:
        f.write('half done\n')
    # A dies: no more heartbeats.  B comes with intent resume_work.
    write(mount.p('ctl', 'session.open'), {'intent': 'resume_work', 'heartbeat_timeout_seconds': 1,
                                           'call_id': 'open-b'})
    b = read_json(mount.p('replies', 'open-b.json'))['result']['session']['id']
    time.sleep(1.2)
    bctl = mount.p('sessions', str(b), 'ctl')
    write(os.path.join(bctl, 'resume.candidates.list'), {})
    cands = read_json(os.path.join(bctl, 'resume.candidates.list'))['result']
    assert [c['session']['id'] for c in cands] == [a]
    write(os.path.join(bctl, 'resume.candidates.attach'), {'target_session_id': a})
    attached = read_json(os.path.join(bctl, 'resume.candidates.attach'))['result']
    assert attached['session']['status'] == 'active_resume'
    # B finds the same case, the last checkpoint and the same worktree.
    cur = read_json(mount.p('sessions', str(b), 'current_ref.json'))
    assert cur['node_id'] == c1 and cur['mode'] == 'resume' and cur['required_files'] == ['src/a.c']
    cps = read_json(mount.p('tasks', str(c1), 'checkpoints.json'))
    assert cur['checkpoint_id'] == cps[-1]['id'] and cps[-1]['step_title'] == 'step 3'
    assert os.readlink(mount.p('sessions', str(b), 'root')) == root_a
    assert open(os.path.join(mount.p('sessions', str(b), 'root'), 'work.txt')).read() == 'half done\n'
    assert read_json(mount.p('sessions', str(a), 'current_ref.json')) is None
    assert read_json(mount.p('sessions', str(a), 'session.json'))['status'] == 'handoff_attached'
    # B continues and completes; its next current_ref points to the next case.
    write(os.path.join(bctl, 'step.check'), {'case_id': c1, 'step_title': 'step 4', 'result': 'pass'})
    assert read_json(os.path.join(bctl, 'step.check'))['result']['order_no'] == 4
    write(os.path.join(bctl, 'case.complete'), {'case_id': c1, 'summary': 'done', 'next_action': 'review'})
    assert read_json(mount.p('tasks', str(c1), 'task.json'))['status'] == 'done'
    write(os.path.join(bctl, 'work.current_ref'), {})
    nxt = read_json(os.path.join(bctl, 'work.current_ref'))['result']
    assert nxt['current_ref']['node_id'] == c2 and nxt['source'] == 'resume.next'


def test_current_ref_json_is_a_pure_read(mount):
    make_cases(mount, 1)
    mount.ok('session.open')
    v = mount.db_version()
    assert read_json(mount.p('sessions', '1', 'current_ref.json')) is None
    assert read_json(mount.p('sessions', '1', 'context.json')).get('current_ref') is None
    assert mount.db_version() == v
    ref = mount.ok('work.current_ref', {}, session=1)
    assert read_json(mount.p('sessions', '1', 'current_ref.json')) == ref['current_ref']
    assert mount.db_version() == v + 1


def test_resume_next_order(mount):
    low, high = make_cases(mount, 1)[0], None
    high = mount.ok('task.create', {'level': 'case', 'title': 'hi', 'priority': 10})['id']
    blocked_later = mount.ok('task.create', {'level': 'case', 'title': 'b'})['id']
    assert mount.ok('resume.next')['task']['id'] == high
    # An in_progress case beats any todo case, whatever its priority.
    mount.ok('case.begin', {'case_id': low})
    nxt = mount.ok('resume.next')
    assert nxt['task']['id'] == low and nxt['checkpoint']['step_title'] == 'case.begin'
    # Least recently updated first among equals.
    mount.ok('case.begin', {'case_id': blocked_later})
    assert mount.ok('resume.next')['task']['id'] == low
    mount.ok('step.check', {'case_id': low, 'step_title': 's', 'result': 'ok'})
    assert mount.ok('resume.next')['task']['id'] == blocked_later
    for c in (low, blocked_later, high):
        if mount.read_json('tasks', str(c), 'task.json')['status'] == 'todo':
            mount.ok('case.begin', {'case_id': c})
        mount.ok('case.complete', {'case_id': c})
    assert mount.ok('resume.next') == {}


def test_concurrent_current_ref_never_hands_one_case_twice(mount):
    cases = make_cases(mount, 4)
    sessions = [mount.ok('session.open')['session_context']['session']['id'] for _ in range(6)]
    got = {}

    def ask_mount(sid):
        got[sid] = mount.ok('work.current_ref', {}, session=sid)

    threads = [threading.Thread(target=ask_mount, args=(s,)) for s in sessions[:3]]
    # The other three ask through `orchfs call` processes, truly in parallel with the daemon.
    procs = {s: subprocess.Popen([ORCHFS, 'call', '--repo', str(mount.repo), '--state', mount.state,
                                  'work.current_ref', json.dumps({'session_id': s})],
                                 stdout=subprocess.PIPE, text=True) for s in sessions[3:]}
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s, p in procs.items():
        out, _ = p.communicate()
        assert p.returncode == 0
        got[s] = json.loads(out)['result']
    handed = [r['current_ref']['node_id'] for r in got.values() if r['current_ref']]
    assert sorted(handed) == sorted(cases)
    assert sum(1 for r in got.values() if r['source'] == 'none') == 2


def test_two_sessions_race_resume_next(mount):
    for _ in range(10):
        mount.ok('task.create', {'level': 'case', 'title': 'x'})
    s1 = mount.ok('session.open')['session_context']['session']['id']
    s2 = mount.ok('session.open')['session_context']['session']['id']
    procs = [subprocess.Popen([ORCHFS, 'call', '--repo', str(mount.repo), '--state', mount.state,
                               'resume.next', json.dumps({'session_id': s})], stdout=subprocess.PIPE, text=True)
             for s in (s1, s2)]
    ids = [json.loads(p.communicate()[0])['result']['task']['id'] for p in procs]
    assert ids[0] != ids[1]


def test_guards_and_bad_input(mount):
    feature = mount.ok('task.create', {'level': 'feature', 'title': 'F'})['id']
    case = mount.ok('task.create', {'level': 'case', 'title': 'c', 'parent_id': feature})['id']
    mount.ok('session.open')
    mount.ok('session.open')
    v = mount.db_version()
    e = mount.fails('case.complete', {'case_id': case}, 'invalid_state', errno.EINVAL)
    assert f'case {case} is todo' in e['message'] and e['details']['state'] == 'todo'
    mount.fails('step.check', {'case_id': case, 'step_title': 's', 'result': 'r'}, 'invalid_state', errno.EINVAL)
    e = mount.fails('case.begin', {'case_id': feature}, 'invalid_state', errno.EINVAL)
    assert f'task {feature} has level feature' in e['message']
    mount.fails('case.begin', {'case_id': 999}, 'not_found', errno.ENOENT)
    mount.fails('case.begin', {'case_id': 'x'}, 'invalid_params', errno.EINVAL)
    mount.fails('case.begin', {'case_id': case, 'fixtures': 'f'}, 'invalid_params', errno.EINVAL)
    mount.fails('case.begin', {'case_id': case, 'required_files': ['../x']}, 'invalid_params', errno.EINVAL)
    mount.fails('case.begin', {'case_id': case, 'sesion_id': 1}, 'invalid_params', errno.EINVAL)
    mount.fails('step.check', {'case_id': case, 'step_title': 's', 'result': 'r', 'artifacts': [1]},
                'invalid_params', errno.EINVAL)
    mount.fails('step.check', {'case_id': case, 'step_title': ' ', 'result': 'r'}, 'invalid_params', errno.EINVAL)
    mount.fails('work.current_ref', {'mode': 'everything'}, 'invalid_params', errno.EINVAL, session=1)
    mount.fails('work.current_ref', {'session_id': 5}, 'not_found', errno.ENOENT)
    mount.fails('work.current_ref.ack', {'ref_id': 3}, 'not_found', errno.ENOENT, session=1)
    mount.fails('resume.candidates.attach', {'target_session_id': 1}, 'invalid_params', errno.EINVAL, session=1)
    mount.fails('resume.candidates.attach', {'target_session_id': 2}, 'invalid_state', errno.EINVAL, session=1)
    mount.fails('resume.candidates.attach', {'target_session_id': 7}, 'not_found', errno.ENOENT, session=1)
    mount.fails('resume.candidates.list', {'requester_session_id': 2}, 'invalid_params', errno.EINVAL, session=1)
    assert mount.db_version() == v
    assert not os.path.exists(mount.p('tasks', str(feature), 'steps.json'))
    assert read_json(mount.p('tasks', str(case), 'steps.json')) == []
    # A case held by session 1 cannot be driven by session 2.
    mount.ok('case.begin', {'case_id': case}, session=1)
    e = mount.fails('step.check', {'case_id': case, 'step_title': 's', 'result': 'r'}, 'conflict', errno.EBUSY,
                    session=2)
    assert 'held by session 1' in e['message']
    mount.ok('case.complete', {'case_id': case}, session=1)
    mount.fails('case.begin', {'case_id': case}, 'invalid_state', errno.EINVAL, session=1)


def test_attach_rules(mount):
    make_cases(mount, 2)
    a = mount.ok('session.open', {'heartbeat_timeout_seconds': 1})['session_context']['session']['id']
    mount.ok('work.current_ref', {}, session=a)
    b = mount.ok('session.open', {'intent': 'resume_work', 'heartbeat_timeout_seconds': 1})['session']['id']
    c = mount.ok('session.open', {'intent': 'resume_work', 'heartbeat_timeout_seconds': 1})['session']['id']
    # Fresh heartbeat: not a candidate yet.
    mount.fails('resume.candidates.attach', {'target_session_id': a}, 'invalid_state', errno.EINVAL, session=b)
    time.sleep(1.2)
    mount.ok('resume.candidates.attach', {'target_session_id': a}, session=b)
    v = mount.db_version()
    e = mount.fails('resume.candidates.attach', {'target_session_id': a}, 'conflict', errno.EBUSY, session=c)
    assert f'already attached by session {b}' in e['message']
    assert mount.db_version() == v
    # A closed session is never a candidate.
    d = mount.ok('session.open', {'heartbeat_timeout_seconds': 1})['session_context']['session']['id']
    mount.ok('work.current_ref', {}, session=d)
    mount.ok('session.close', {}, session=d)
    time.sleep(1.1)
    assert d not in [x['session']['id'] for x in mount.ok('resume.candidates.list', {}, session=c)]
    mount.fails('resume.candidates.attach', {'target_session_id': d}, 'invalid_state', errno.EINVAL, session=c)


def test_taken_over_session_is_told_and_stopped(mount):
    make_cases(mount, 2)
    a = mount.ok('session.open', {'heartbeat_timeout_seconds': 1})['session_context']['session']['id']
    mount.ok('work.current_ref', {}, session=a)
    b = mount.ok('session.open', {'intent': 'resume_work', 'heartbeat_timeout_seconds': 1})['session']['id']
    time.sleep(1.2)
    mount.ok('resume.candidates.attach', {'target_session_id': a}, session=b)
    # A comes back: every call says it was taken over, and its root link is gone.
    v = mount.db_version()
    e = mount.fails('work.current_ref', {}, 'invalid_state', errno.EINVAL, session=a)
    assert f'taken over by session {b}' in e['message'] and e['details']['state'] == 'handoff_attached'
    mount.fails('session.heartbeat', {}, 'invalid_state', errno.EINVAL, session=a)
    r = sh(f"touch {mount.p('sessions', str(a), 'heartbeat')}")
    assert r.returncode != 0
    assert mount.db_version() == v
    assert not os.path.lexists(mount.p('sessions', str(a), 'root'))
    assert os.path.islink(mount.p('sessions', str(b), 'root'))
    # It may still be closed, to tidy up.
    assert mount.ok('session.close', {}, session=a)['status'] == 'closed'


def test_held_case_refuses_anonymous_calls(mount):
    (case,) = make_cases(mount, 1)
    s = mount.ok('session.open')['session_context']['session']['id']
    mount.ok('case.begin', {'case_id': case}, session=s)
    v = mount.db_version()
    for method, params in [('case.begin', {'case_id': case}),
                           ('step.check', {'case_id': case, 'step_title': 'x', 'result': 'r'}),
                           ('case.complete', {'case_id': case})]:
        e = mount.fails(method, params, 'conflict', errno.EBUSY)
        assert f'held by session {s}' in e['message']
    assert mount.db_version() == v
    mount.ok('case.complete', {'case_id': case}, session=s)


def test_changes_through_session_ctl_count_as_heartbeats(mount):
    make_cases(mount, 1)
    mount.ok('session.open')
    before = mount.read_json('sessions', '1', 'session.json')['last_seen_at']
    time.sleep(0.01)
    mount.ok('task.get', {'task_id': 1})
    mount.ok('session.context', {}, session=1)
    assert mount.read_json('sessions', '1', 'session.json')['last_seen_at'] == before
    mount.ok('work.current_ref', {}, session=1)
    assert mount.read_json('sessions', '1', 'session.json')['last_seen_at'] > before


def test_session_usage_example_omits_implied_keys(mount):
    mount.ok('session.open')
    usage = open(mount.p('sessions', '1', 'ctl', 'case.begin')).read()
    assert 'from this directory' in usage and '"session_id"' not in usage.split('Example')[1].split('\n\n')[0]


def test_taken_over_session_cannot_lease_or_drive_cases(mount):
    (case,) = make_cases(mount, 1)
    a = mount.ok('session.open', {'heartbeat_timeout_seconds': 1})['session_context']['session']['id']
    mount.ok('case.begin', {'case_id': case}, session=a)
    b = mount.ok('session.open', {'intent': 'resume_work', 'heartbeat_timeout_seconds': 1})['session']['id']
    time.sleep(1.2)
    mount.ok('resume.candidates.attach', {'target_session_id': a}, session=b)
    mount.ok('case.complete', {'case_id': case}, session=b)
    v = mount.db_version()
    for method, params in [('lock.acquire', {'scope_type': 'file', 'scope_path': 'a.py'}),
                           ('case.complete', {'case_id': case}),
                           ('worktree.spawn', {'parent_worktree_id': 2})]:
        e = mount.fails(method, params, 'invalid_state', errno.EINVAL, session=a)
        assert f'taken over by session {b}' in e['message'], (method, e)
    assert mount.db_version() == v
    assert open(mount.p('sessions', str(a), 'heartbeat')).read().strip().endswith(f'(taken over by session {b})')


def test_attach_needs_a_free_requester_and_says_why_not(mount):
    make_cases(mount, 2)
    a = mount.ok('session.open')['session_context']['session']['id']
    mount.ok('work.current_ref', {}, session=a)
    worker = mount.ok('session.open')['session_context']['session']['id']
    e = mount.fails('resume.candidates.attach', {'target_session_id': a}, 'invalid_state', errno.EINVAL,
                    session=worker)
    assert 'has its own session root' in e['message']
    r = mount.ok('session.open', {'intent': 'resume_work', 'heartbeat_timeout_seconds': 30})['session']['id']
    e = mount.fails('resume.candidates.attach', {'target_session_id': a}, 'invalid_state', errno.EINVAL, session=r)
    assert 'it is live' in e['message'] and 'heartbeat window of 120s' in e['message']
    e = mount.fails('resume.candidates.attach', {'target_session_id': a, 'heartbeat_timeout_seconds': 300},
                    'invalid_state', errno.EINVAL, session=r)
    assert 'window of 300s, as lengthened by the requester' in e['message']
    idle = mount.ok('session.open')['session_context']['session']['id']
    e = mount.fails('resume.candidates.attach', {'target_session_id': idle, 'heartbeat_timeout_seconds': 1},
                    'invalid_state', errno.EINVAL, session=r)
    assert 'it is live' in e['message'] or 'no active current ref' in e['message']
