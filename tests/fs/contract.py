"""The contract's parameters and types, kept by hand apart from the code under test (issue 13):
test_validation.py drives every field from this list, and checks that `orchfs methods --json`
agrees with it, so a parameter dropped, renamed, retyped or made optional in the method table
fails instead of silently leaving the validation tests. Names and required keys follow
/work/shared/method-contracts.md and the README. A new method adds its entry here.

Each entry: (name, type, required), and for type "objects" the items' own list."""

CONTRACT = {
    'session.open': [
        ('agent_role', 'string', False),
        ('owner', 'string', False),
        ('terminal_fingerprint', 'string', False),
        ('intent', 'string', False),
        ('heartbeat_timeout_seconds', 'int', False),
        ('worktree', 'bool', False),
        ('ctl_errors', 'string', False),
    ],
    'session.heartbeat': [
        ('session_id', 'id', True),
    ],
    'session.close': [
        ('session_id', 'id', True),
        ('remove_worktree', 'bool', False),
    ],
    'session.context': [
        ('session_id', 'id', True),
    ],
    'resume.candidates.list': [
        ('requester_session_id', 'id', True),
        ('heartbeat_timeout_seconds', 'int', False),
    ],
    'task.create': [
        ('level', 'string', True),
        ('title', 'string', True),
        ('parent_id', 'id', False),
        ('priority', 'int', False),
        ('assignee_session', 'owner', False),
    ],
    'task.list': [
        ('level', 'string', False),
        ('status', 'string', False),
        ('parent_id', 'id', False),
        ('limit', 'id', False),
        ('after_id', 'id', False),
        ('ready', 'bool', False),
    ],
    'task.get': [
        ('task_id', 'id', True),
    ],
    'case.begin': [
        ('case_id', 'id', True),
        ('session_id', 'id', False),
        ('input_contract', 'json', False),
        ('fixtures', 'strings', False),
        ('required_files', 'paths', False),
    ],
    'step.check': [
        ('case_id', 'id', True),
        ('session_id', 'id', False),
        ('step_title', 'string', True),
        ('result', 'string', True),
        ('artifacts', 'strings', False),
        ('required_files', 'paths', False),
    ],
    'case.complete': [
        ('case_id', 'id', True),
        ('session_id', 'id', False),
        ('summary', 'string', False),
        ('next_action', 'string', False),
        ('required_files', 'paths', False),
    ],
    'resume.next': [
        ('session_id', 'id', False),
    ],
    'work.current_ref': [
        ('session_id', 'id', True),
        ('mode', 'string', False),
        ('required_files', 'paths', False),
    ],
    'work.current_ref.ack': [
        ('session_id', 'id', True),
        ('ref_id', 'id', True),
    ],
    'resume.candidates.attach': [
        ('requester_session_id', 'id', True),
        ('target_session_id', 'id', True),
        ('heartbeat_timeout_seconds', 'int', False),
    ],
    'scheduler.decide_worktree': [
        ('changed_files', 'int', False),
        ('estimate_minutes', 'int', False),
        ('risk', 'int', False),
        ('parallel_workers', 'int', False),
        ('conflicting_paths', 'int', False),
    ],
    'worktree.create': [
        ('task_id', 'id', False),
        ('branch', 'string', True),
        ('path', 'path', False),
        ('base_ref', 'string', False),
        ('create_on_disk', 'bool', False),
    ],
    'worktree.spawn': [
        ('session_id', 'id', True),
        ('parent_worktree_id', 'id', False),
        ('task_id', 'id', False),
        ('branch', 'string', False),
        ('path', 'path', False),
        ('base_ref', 'string', False),
        ('create_on_disk', 'bool', False),
    ],
    'worktree.merge_to_parent': [
        ('session_id', 'id', True),
        ('worktree_id', 'id', True),
    ],
    'worktree.abandon': [
        ('session_id', 'id', True),
        ('worktree_id', 'id', True),
    ],
    'lock.acquire': [
        ('scope_type', 'string', True),
        ('scope_path', 'path', True),
        ('owner_session', 'owner', True),
        ('ttl_seconds', 'int', False),
    ],
    'lock.heartbeat': [
        ('lock_id', 'id', True),
        ('ttl_seconds', 'int', False),
        ('owner_session', 'owner', False),
    ],
    'lock.release': [
        ('lock_id', 'id', True),
        ('owner_session', 'owner', False),
        ('force', 'bool', False),
        ('reason', 'string', False),
    ],
    'graph.node.create': [
        ('node_type', 'string', True),
        ('facet', 'string', False),
        ('title', 'string', True),
        ('status', 'string', False),
        ('priority', 'int', False),
        ('parent_id', 'id', False),
        ('worktree_id', 'id', False),
        ('owner_session_id', 'id', False),
        ('summary', 'string', False),
        ('risk_level', 'int', False),
        ('token_estimate', 'int', False),
        ('affected_files', 'paths', False),
        ('approval_state', 'string', False),
    ],
    'graph.node.list': [
        ('node_type', 'string', False),
        ('facet', 'string', False),
        ('status', 'string', False),
        ('parent_id', 'id', False),
        ('limit', 'id', False),
        ('after_id', 'id', False),
    ],
    'graph.edge.create': [
        ('from_node_id', 'id', True),
        ('to_node_id', 'id', True),
        ('edge_type', 'string', True),
    ],
    'graph.checklist.upsert': [
        ('node_id', 'id', True),
        ('item_text', 'string', True),
        ('status', 'string', False),
        ('order_no', 'int', False),
        ('facet', 'string', False),
    ],
    'graph.snapshot.create': [
        ('node_id', 'id', True),
        ('snapshot_type', 'string', True),
        ('summary', 'string', False),
        ('affected_files', 'paths', False),
        ('next_action', 'string', False),
    ],
    'plan.bootstrap': [
        ('initiative_title', 'string', True),
        ('plan_title', 'string', True),
        ('priority', 'int', False),
        ('owner_session_id', 'id', False),
        ('summary', 'string', False),
    ],
    'plan.slice.generate': [
        ('plan_node_id', 'id', True),
        ('owner_session_id', 'id', False),
        ('slice_specs', 'objects', True, [
            ('title', 'string', True),
            ('priority', 'int', False),
            ('token_estimate', 'int', False),
            ('affected_files', 'paths', False),
            ('summary', 'string', False),
        ]),
    ],
    'plan.slice.replan': [
        ('node_id', 'id', True),
        ('reason', 'string', True),
        ('affected_files', 'paths', False),
        ('next_action', 'string', False),
    ],
    'plan.rollup.preview': [
        ('parent_node_id', 'id', True),
    ],
    'plan.rollup.submit': [
        ('node_id', 'id', True),
        ('summary', 'string', False),
        ('affected_files', 'paths', False),
        ('next_action', 'string', False),
    ],
    'plan.rollup.approve': [
        ('node_id', 'id', True),
        ('session_id', 'id', False),
        ('reason', 'string', False),
    ],
    'plan.rollup.reject': [
        ('node_id', 'id', True),
        ('session_id', 'id', False),
        ('reason', 'string', False),
    ],
    'mirror.status': [
    ],
    'task.update': [
        ('task_id', 'id', True),
        ('session_id', 'id', False),
        ('status', 'string', False),
        ('priority', 'int', False),
        ('title', 'string', False),
        ('assignee_session', 'owner', False),
    ],
    'merge.request': [
        ('feature_task_id', 'id', True),
        ('reviewer_session', 'string', False),
        ('notes_json', 'json', False),
    ],
    'merge.review_context': [
        ('merge_request_id', 'id', True),
    ],
    'merge.main.request': [
        ('session_id', 'id', True),
        ('from_worktree_id', 'id', True),
        ('target_branch', 'string', False),
    ],
    'merge.main.next': [
    ],
    'merge.main.status': [
        ('request_id', 'id', True),
    ],
    'merge.main.acquire_lock': [
        ('session_id', 'id', True),
        ('ttl_seconds', 'int', False),
    ],
    'merge.main.release_lock': [
        ('session_id', 'id', True),
    ],
    'merge.main.run': [
        ('session_id', 'id', True),
        ('request_id', 'id', False),
    ],
    'merge.main.cancel': [
        ('session_id', 'id', True),
        ('request_id', 'id', True),
    ],
    'mirror.refresh': [
        ('requester_role', 'string', False),
        ('target_path', 'path', False),
        ('requester_session_id', 'id', False),
    ],
    'wait': [
        ('on', 'json', True),
        ('db_version_after', 'int', False),
        ('timeout_ms', 'int', False),
    ],
}
