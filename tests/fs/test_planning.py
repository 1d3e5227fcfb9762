"""The planning graph and plans through the mount, as a planning agent uses them: ctl writes in,
graph/nodes/<id>/*.json out, and every rejected call leaves the tree and db_version as they were."""
import errno
import json
import os
import subprocess

import pytest

NODE_FILES = ['checklist.json', 'edges.json', 'node.json', 'snapshots.json']


def sh(cmd):
    return subprocess.run(['bash', '-c', cmd], capture_output=True, text=True)


def node(mount, nid, name='node.json'):
    return mount.read_json('graph', 'nodes', str(nid), name)


def tree(mount):
    """Every file under graph/, name → content: the whole planning state as files."""
    out = {}
    for root, _dirs, files in os.walk(mount.p('graph')):
        for f in files:
            with open(os.path.join(root, f)) as fh:
                out[os.path.relpath(os.path.join(root, f), mount.path)] = fh.read()
    return out


def test_plan_lifecycle_with_files_only(mount):
    assert os.listdir(mount.p('graph')) == ['nodes']
    assert os.listdir(mount.p('graph', 'nodes')) == []
    v = mount.db_version()

    # Bootstrap: initiative → plan, one call, one db_version.
    r = sh(f"exec 3<>{mount.p('ctl', 'plan.bootstrap')}; "
           "echo '{\"initiative_title\": \"Faster login\", \"plan_title\": \"Login v2\", \"summary\": \"p95 < 200ms\"}' >&3;"
           " cat <&3")
    assert r.returncode == 0, r.stderr
    boot = json.loads(r.stdout)['result']
    assert mount.db_version() == v + 1
    ini, plan, edge = boot['initiative'], boot['plan'], boot['edge']
    assert (ini['id'], ini['node_type'], ini['status'], ini['summary']) == (1, 'initiative', 'in_progress', 'p95 < 200ms')
    assert (plan['id'], plan['node_type'], plan['status'], plan['parent_id']) == (2, 'plan', 'todo', 1)
    assert sorted(os.listdir(mount.p('graph', 'nodes')), key=int) == ['1', '2']
    assert sorted(os.listdir(mount.p('graph', 'nodes', '2'))) == NODE_FILES
    assert node(mount, 1) == ini and node(mount, 2) == plan
    assert node(mount, 1, 'edges.json') == [edge] == node(mount, 2, 'edges.json')
    assert edge == {'id': 1, 'from_node_id': 1, 'to_node_id': 2, 'edge_type': 'contains',
                    'created_at': edge['created_at']}
    assert node(mount, 2, 'checklist.json') == [] and node(mount, 2, 'snapshots.json') == []

    # Generate two slices.
    gen = mount.ok('plan.slice.generate', {'plan_node_id': 2, 'slice_specs': [
        {'title': 'parser', 'token_estimate': 4000, 'affected_files': ['./src//parse.c', 'src/lex.c']},
        {'title': 'docs', 'priority': 1, 'summary': 'user guide'}]})
    assert mount.db_version() == v + 2
    s1, s2 = gen['slices']
    assert gen['plan_node_id'] == 2
    assert (s1['id'], s1['node_type'], s1['parent_id'], s1['affected_files']) == (3, 'slice', 2, ['src/parse.c', 'src/lex.c'])
    assert 'affected_files_json' not in s1
    assert (s2['id'], s2['priority'], s2['summary'], s2['affected_files']) == (4, 1, 'user guide', [])
    assert sorted(os.listdir(mount.p('graph', 'nodes')), key=int) == ['1', '2', '3', '4']
    assert node(mount, 3) == s1 and node(mount, 4) == s2
    assert [e['id'] for e in node(mount, 2, 'edges.json')] == [1, 2, 3]
    assert node(mount, 3, 'edges.json') == [gen['edges'][0]]
    assert [(e['from_node_id'], e['to_node_id'], e['edge_type']) for e in gen['edges']] == [(2, 3, 'contains'), (2, 4, 'contains')]
    assert mount.ok('graph.node.list', {'parent_id': 2}) == [s2, s1]  # priority first

    # Checklist: append, update in place, another facet.
    mount.ok('graph.checklist.upsert', {'node_id': 3, 'item_text': 'tokenizer'})
    mount.ok('graph.checklist.upsert', {'node_id': 3, 'item_text': 'grammar'})
    done = mount.ok('graph.checklist.upsert', {'node_id': 3, 'item_text': 'tokenizer', 'order_no': 1, 'status': 'done'})
    mount.ok('graph.checklist.upsert', {'node_id': 3, 'item_text': 'benchmarks', 'order_no': 1, 'facet': 'perf'})
    assert mount.db_version() == v + 6
    items = node(mount, 3, 'checklist.json')
    assert [(i['facet'], i['order_no'], i['item_text'], i['status']) for i in items] == [
        ('perf', 1, 'benchmarks', 'todo'), ('planning', 1, 'tokenizer', 'done'), ('planning', 2, 'grammar', 'todo')]
    assert items[1] == done and done['id'] == 1

    # Replan: a snapshot; the slice itself is unchanged.
    rp = mount.ok('plan.slice.replan', {'node_id': 3, 'reason': 'scope_change', 'affected_files': ['src/parse.c'],
                                        'next_action': 'split grammar out'})
    assert (rp['snapshot_type'], rp['summary'], rp['next_action'], rp['affected_files']) == \
        ('replan', 'scope_change', 'split grammar out', ['src/parse.c'])
    assert node(mount, 3, 'snapshots.json') == [rp]
    assert node(mount, 3) == s1

    # Preview: direct children and the whole subtree.
    pv = mount.ok('plan.rollup.preview', {'parent_node_id': 1})
    assert (pv['parent_node_id'], pv['child_count'], pv['status_counts']) == (1, 1, {'todo': 1})
    assert (pv['descendant_count'], pv['descendant_status_counts']) == (3, {'todo': 3})
    assert pv['children'] == [plan]

    # Submit the plan: snapshot + pending + preview, one db_version.
    v2 = mount.db_version()
    sub = mount.ok('plan.rollup.submit', {'node_id': 2, 'summary': 'slices laid out', 'next_action': 'review'})
    assert mount.db_version() == v2 + 1
    assert (sub['node']['approval_state'], sub['node']['status']) == ('pending', 'in_review')
    assert sub['snapshot']['snapshot_type'] == 'rollup' and sub['snapshot']['summary'] == 'slices laid out'
    assert sub['preview']['child_count'] == 2 and sub['preview']['status_counts'] == {'todo': 2}
    assert node(mount, 2) == sub['node']
    assert node(mount, 2, 'snapshots.json') == [sub['snapshot']]

    # Reject, resubmit, approve: each visible in node.json at once.
    rej = mount.ok('plan.rollup.reject', {'node_id': 2})
    assert (rej['approval_state'], rej['status']) == ('rejected', 'blocked') and node(mount, 2) == rej
    again = mount.ok('plan.rollup.submit', {'node_id': 2})
    assert node(mount, 2)['approval_state'] == 'pending'
    assert len(node(mount, 2, 'snapshots.json')) == 2 and again['snapshot']['id'] == 3
    r = sh(f"echo '{{\"node_id\": 2}}' > {mount.p('ctl', 'plan.rollup.approve')}")
    assert r.returncode == 0, r.stderr
    appr = node(mount, 2)
    assert (appr['approval_state'], appr['status']) == ('approved', 'done')
    # Approved is final: the shell sees the refusal as the write's errno.
    v3 = mount.db_version()
    r = sh(f"echo '{{\"node_id\": 2}}' > {mount.p('ctl', 'plan.rollup.reject')}")
    assert r.returncode != 0 and 'Invalid argument' in r.stderr
    assert mount.db_version() == v3 and node(mount, 2) == appr


def test_graph_files_are_read_only_and_exact(mount):
    mount.ok('plan.bootstrap', {'initiative_title': 'I', 'plan_title': 'P'})
    for name in NODE_FILES:
        p = mount.p('graph', 'nodes', '2', name)
        with open(p, 'rb') as f:
            data = f.read()
        assert os.stat(p).st_size == len(data) and data.endswith(b'\n')
        assert oct(os.stat(p).st_mode & 0o777) == '0o444'
        with pytest.raises(OSError) as e:
            open(p, 'w')
        assert e.value.errno == errno.EROFS
    assert oct(os.stat(mount.p('graph', 'nodes', '2')).st_mode & 0o777) == '0o555'
    with pytest.raises(OSError) as e:
        os.mkdir(mount.p('graph', 'nodes', '9'))
    assert e.value.errno == errno.EROFS
    for missing in [('graph', 'nodes', '3'), ('graph', 'nodes', '3', 'node.json'), ('graph', 'nodes', '02'),
                    ('graph', 'nodes', 'x'), ('graph', 'edges')]:
        assert not os.path.exists(mount.p(*missing)), missing


# (method, params, code, errno) against the state made by `setup` below: initiative 1 → plan 2 →
# slices 3, 4; node 5 "task" with parent 3; slice 3 pending review, plan 2 approved.
REJECTED = [
    # Integrity: referenced nodes exist.
    ('graph.node.create', {'node_type': 'task', 'title': 't', 'parent_id': 99}, 'not_found', errno.ENOENT),
    ('graph.node.create', {'node_type': 'task', 'title': 't', 'owner_session_id': 99}, 'not_found', errno.ENOENT),
    ('graph.edge.create', {'from_node_id': 99, 'to_node_id': 1, 'edge_type': 'depends_on'}, 'not_found', errno.ENOENT),
    ('graph.edge.create', {'from_node_id': 1, 'to_node_id': 99, 'edge_type': 'depends_on'}, 'not_found', errno.ENOENT),
    ('graph.checklist.upsert', {'node_id': 99, 'item_text': 'x'}, 'not_found', errno.ENOENT),
    ('graph.snapshot.create', {'node_id': 99, 'snapshot_type': 'note'}, 'not_found', errno.ENOENT),
    ('plan.slice.generate', {'plan_node_id': 99, 'slice_specs': [{'title': 'a'}]}, 'not_found', errno.ENOENT),
    ('plan.slice.replan', {'node_id': 99, 'reason': 'r'}, 'not_found', errno.ENOENT),
    ('plan.rollup.preview', {'parent_node_id': 99}, 'not_found', errno.ENOENT),
    ('plan.rollup.submit', {'node_id': 99}, 'not_found', errno.ENOENT),
    ('plan.rollup.approve', {'node_id': 99}, 'not_found', errno.ENOENT),
    ('plan.rollup.reject', {'node_id': 99}, 'not_found', errno.ENOENT),
    # Edges: no duplicate of a type, no self-loop, no contains cycle (also through parent links).
    ('graph.edge.create', {'from_node_id': 2, 'to_node_id': 3, 'edge_type': 'contains'}, 'exists', errno.EEXIST),
    ('graph.edge.create', {'from_node_id': 3, 'to_node_id': 3, 'edge_type': 'contains'}, 'invalid_params', errno.EINVAL),
    ('graph.edge.create', {'from_node_id': 3, 'to_node_id': 1, 'edge_type': 'contains'}, 'invalid_params', errno.EINVAL),
    ('graph.edge.create', {'from_node_id': 5, 'to_node_id': 2, 'edge_type': 'contains'}, 'invalid_params', errno.EINVAL),
    # Slices: only under a plan, within the stored limits; a bad spec anywhere creates nothing.
    ('plan.slice.generate', {'plan_node_id': 3, 'slice_specs': [{'title': 'a'}]}, 'invalid_state', errno.EINVAL),
    ('plan.slice.generate', {'plan_node_id': 2, 'slice_specs': [{'title': 'a'}, {'title': 'b', 'token_estimate': 18001}]},
     'invalid_params', errno.EINVAL),
    ('plan.slice.generate', {'plan_node_id': 2, 'slice_specs': [{'title': 'a'}, {'title': 'b', 'affected_files':
                                                                                   [f'f{i}' for i in range(13)]}]},
     'invalid_params', errno.EINVAL),
    ('plan.slice.generate', {'plan_node_id': 2, 'slice_specs': [{'title': 'a'}, {'title': ''}]}, 'invalid_params', errno.EINVAL),
    ('plan.slice.generate', {'plan_node_id': 2, 'slice_specs': [{'title': 'a'}, {'title': 'b', 'owner': 1}]},
     'invalid_params', errno.EINVAL),
    ('plan.slice.generate', {'plan_node_id': 2, 'slice_specs': [{'title': 'a', 'affected_files': ['../x']}]},
     'invalid_params', errno.EINVAL),
    ('plan.slice.generate', {'plan_node_id': 2, 'slice_specs': []}, 'invalid_params', errno.EINVAL),
    ('graph.node.create', {'node_type': 'slice', 'title': 's', 'parent_id': 1}, 'invalid_state', errno.EINVAL),
    ('graph.node.create', {'node_type': 'slice', 'title': 's'}, 'invalid_params', errno.EINVAL),
    ('graph.node.create', {'node_type': 'task', 'title': 't', 'approval_state': 'approved'}, 'invalid_params', errno.EINVAL),
    ('graph.node.create', {'node_type': 'task', 'title': 't', 'affected_files': ['/etc/passwd']}, 'invalid_params', errno.EINVAL),
    ('graph.node.create', {'node_type': 'task', 'title': 't', 'token_estimate': 0}, 'invalid_params', errno.EINVAL),
    ('graph.checklist.upsert', {'node_id': 3, 'item_text': 'x', 'order_no': 0}, 'invalid_params', errno.EINVAL),
    # Approval: submit from none/rejected only; approve/reject from pending only.
    ('plan.rollup.submit', {'node_id': 3}, 'invalid_state', errno.EINVAL),
    ('plan.rollup.submit', {'node_id': 2}, 'invalid_state', errno.EINVAL),
    ('plan.rollup.approve', {'node_id': 4}, 'invalid_state', errno.EINVAL),
    ('plan.rollup.reject', {'node_id': 4}, 'invalid_state', errno.EINVAL),
    ('plan.rollup.approve', {'node_id': 2}, 'invalid_state', errno.EINVAL),
    ('plan.rollup.reject', {'node_id': 2}, 'invalid_state', errno.EINVAL),
]


@pytest.fixture
def planned(mount):
    mount.ok('plan.bootstrap', {'initiative_title': 'I', 'plan_title': 'P'})
    mount.ok('plan.slice.generate', {'plan_node_id': 2, 'slice_specs': [{'title': 'a'}, {'title': 'b'}]})
    mount.ok('graph.node.create', {'node_type': 'task', 'title': 't', 'parent_id': 3})
    mount.ok('graph.checklist.upsert', {'node_id': 3, 'item_text': 'x'})
    mount.ok('plan.rollup.submit', {'node_id': 3})
    mount.ok('plan.rollup.submit', {'node_id': 2})
    mount.ok('plan.rollup.approve', {'node_id': 2})
    return mount


def test_rejected_calls_change_nothing(planned):
    mount = planned
    before, v = tree(mount), mount.db_version()
    for method, params, code, errno_ in REJECTED:
        e = mount.fails(method, params, code, errno_)
        assert e['message'], (method, params)
        if code == 'invalid_state' and method.startswith('plan.rollup'):
            assert e['details']['state'] in ('pending', 'approved', 'none'), e
        assert mount.db_version() == v, (method, params, e)
    assert tree(mount) == before


def test_rejections_name_the_value(planned):
    mount = planned
    e = mount.fails('plan.slice.generate', {'plan_node_id': 2, 'slice_specs': [{'title': 'a'}, {'title': 'b', 'token_estimate': 20000}]},
                    'invalid_params', errno.EINVAL)
    assert 'slice_specs[1].token_estimate 20000' in e['message'] and 'max_token_per_slice 18000' in e['message']
    e = mount.fails('plan.slice.generate', {'plan_node_id': 2, 'slice_specs': [{'title': 'a', 'tokens': 1}]},
                    'invalid_params', errno.EINVAL)
    assert '"tokens"' in e['message'] and 'token_estimate' in e['details']['accepted']
    e = mount.fails('graph.edge.create', {'from_node_id': 5, 'to_node_id': 2, 'edge_type': 'contains'}, 'invalid_params', errno.EINVAL)
    assert 'cycle' in e['message'] and 'node 2 already contains node 5' in e['message']
    e = mount.fails('plan.rollup.approve', {'node_id': 4}, 'invalid_state', errno.EINVAL)
    assert e['details'] == {'state': 'none'} and 'node 4' in e['message']
    e = mount.fails('plan.rollup.preview', {'parent_node_id': 99}, 'not_found', errno.ENOENT)
    assert 'parent_node_id 99' in e['message']


def test_generate_is_one_transaction_for_other_processes(planned):
    """`orchfs call` on the same state: a bad last spec leaves the mount's tree untouched."""
    mount = planned
    before, v = tree(mount), mount.db_version()
    r = mount.orchfs_call('plan.slice.generate', {'plan_node_id': 2, 'slice_specs': [{'title': 'x'}, {'title': 'y'},
                                                                                     {'title': 'z', 'token_estimate': -1}]})
    assert r.returncode == 1 and 'slice_specs[2].token_estimate' in r.stderr
    assert tree(mount) == before and mount.db_version() == v
    r = mount.orchfs_call('plan.slice.generate', {'plan_node_id': 2, 'slice_specs': [{'title': 'x'}, {'title': 'y'}]})
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(mount.p('graph', 'nodes')), key=int) == ['1', '2', '3', '4', '5', '6', '7']
    assert mount.db_version() == v + 1


def test_planning_usage(mount):
    r = sh(f"cat {mount.p('ctl', 'plan.slice.generate')}")
    assert r.returncode == 0
    assert 'slice_specs' in r.stdout and 'token_estimate' in r.stdout and 'Example' in r.stdout
    for m in ['graph.node.create', 'graph.node.list', 'graph.edge.create', 'graph.checklist.upsert',
              'graph.snapshot.create', 'plan.bootstrap', 'plan.slice.generate', 'plan.slice.replan',
              'plan.rollup.preview', 'plan.rollup.submit', 'plan.rollup.approve', 'plan.rollup.reject']:
        assert m in os.listdir(mount.p('ctl'))
