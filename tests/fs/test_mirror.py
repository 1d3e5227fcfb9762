"""The markdown mirror: mirror.refresh, mirror/*.md, refs/orchfs/mirror, --mirror-refresh."""
import errno
import json
import os
import re
import shutil
import sqlite3
import subprocess
import threading
import time

import pytest

from conftest import ORCHFS, ROOT, Mount, git

ROLE = {'requester_role': 'doc-mirror-manager'}
FILES = ['index.md', 'tasks.md', 'plan.md', 'sessions.md', 'worktrees.md', 'locks.md', 'merges.md']
NODE_DIR = os.path.join(ROOT, 'tests', 'node')
MMDC = os.path.join(NODE_DIR, 'node_modules', '.bin', 'mmdc')


@pytest.fixture(scope='session')
def mmdc():
    """mermaid-cli as pinned by tests/node/package-lock.json (npm ci when missing or stale), and Debian's chromium.

    Missing tools fail the test: the mermaid block must be shown to render."""
    npm = shutil.which('npm')
    assert npm and os.access('/usr/bin/chromium', os.X_OK), \
        'the mermaid test needs npm and Debian\'s chromium (scripts/install-deps --test)'
    stamp = os.path.join(NODE_DIR, 'node_modules', '.package-lock.json')
    lock = os.path.join(NODE_DIR, 'package-lock.json')
    if not os.path.exists(stamp) or os.path.getmtime(stamp) < os.path.getmtime(lock) or not os.path.exists(MMDC):
        # puppeteer's own browser is never downloaded (tests/node/.puppeteerrc.cjs says so too).
        r = subprocess.run([npm, 'ci', '--prefer-offline', '--no-audit', '--no-fund', '--loglevel=error'], cwd=NODE_DIR,
                           capture_output=True, text=True, env=dict(os.environ, PUPPETEER_SKIP_DOWNLOAD='1'))
        assert r.returncode == 0, 'npm ci in tests/node failed:\n' + r.stdout + r.stderr
    return MMDC


def sh(cmd):
    return subprocess.run(['bash', '-c', cmd], capture_output=True, text=True)


def read(mount, name):
    with open(mount.p('mirror', name), 'rb') as f:
        return f.read()


def mirror_bytes(mount):
    return {name: read(mount, name) for name in FILES}


def mirror_log(repo):
    r = git(repo, 'rev-list', 'refs/orchfs/mirror', check=False)
    return r.stdout.split() if r.returncode == 0 else []


def refresh(mount, **params):
    return mount.ok('mirror.refresh', dict(ROLE, **params))


def test_role_rule(mount):
    sid = mount.ok('session.open', {'agent_role': 'coder', 'owner': 'a'})['session_context']['session']['id']
    doc = mount.ok('session.open', {'agent_role': 'doc-mirror-manager', 'owner': 'd'})['session_context']['session']['id']
    v = mount.db_version()
    # Through ctl/: the role given, trimmed and case-sensitive; none or another is forbidden (EPERM).
    assert 'mirror' in os.listdir(mount.path) and os.listdir(mount.p('mirror')) == ['status.json']
    e = mount.fails('mirror.refresh', {}, 'forbidden', errno.EPERM)
    assert 'doc-mirror-manager' in e['message']
    e = mount.fails('mirror.refresh', {'requester_role': 'coder'}, 'forbidden', errno.EPERM)
    assert '"coder"' in e['message']
    mount.fails('mirror.refresh', {'requester_role': 'Doc-Mirror-Manager'}, 'forbidden', errno.EPERM)
    assert os.listdir(mount.p('mirror')) == ['status.json']
    assert mirror_log(mount.repo) == []
    # Through a session's ctl the session's own agent_role is the role.
    mount.fails('mirror.refresh', {}, 'forbidden', errno.EPERM, session=sid)
    mount.fails('mirror.refresh', ROLE, 'invalid_params', errno.EINVAL, session=sid)  # not its role
    r = mount.ok('mirror.refresh', {}, session=doc)
    assert r['path'] == 'mirror/index.md'
    assert r['outdated_before_refresh'] is True
    st = r['mirror_status']
    assert (st['db_version'], st['md_version'], st['md_path'], st['outdated']) == (v, v, 'mirror/index.md', False)
    # A refresh is no mutating call of the state: db_version stays; status.json is live.
    assert mount.db_version() == v
    assert mount.read_json('mirror', 'status.json') == mount.ok('mirror.status')
    r = mount.ok('mirror.refresh', {'requester_role': ' doc-mirror-manager '})
    assert r['outdated_before_refresh'] is False and mount.db_version() == v
    assert os.listdir(mount.p('mirror')) == ['status.json'] + FILES
    # The CLI goes through the same rule.
    out = mount.orchfs_call('mirror.refresh', {'requester_role': 'coder'})
    assert out.returncode == 1 and '"forbidden"' in out.stdout
    mount.ok('task.create', {'level': 'case', 'title': 'x'})
    assert mount.read_json('mirror', 'status.json')['outdated'] is True
    # A refresh by another process is served at once.
    assert '<a id="task-1">' not in read(mount, 'tasks.md').decode()
    out = mount.orchfs_call('mirror.refresh', ROLE)
    assert out.returncode == 0, out.stdout + out.stderr
    assert '<a id="task-1"></a>#1 case: x' in read(mount, 'tasks.md').decode()
    assert mount.read_json('mirror', 'status.json')['outdated'] is False


def scenario(mount):
    """Sessions, a task tree with a held case, a plan, locks, merges: every kind of row the mirror shows."""
    coder = mount.ok('session.open', {'agent_role': 'implementer', 'owner': 'alice'})['session_context']['session']['id']
    gone = mount.ok('session.open', {'agent_role': 'reviewer', 'owner': 'bob'})['session_context']['session']['id']
    mount.ok('session.close', {}, session=gone)
    epic = mount.ok('task.create', {'level': 'epic', 'title': 'Dates everywhere'})['id']
    feat = mount.ok('task.create', {'level': 'feature', 'title': 'Parsing', 'parent_id': epic})['id']
    case1 = mount.ok('task.create', {'level': 'case', 'title': 'parse ISO | *dates*', 'parent_id': feat})['id']
    case2 = mount.ok('task.create', {'level': 'case', 'title': 'parse RFC 2822', 'parent_id': feat,
                                     'priority': 2})['id']
    ref = mount.ok('work.current_ref', {}, session=coder)
    assert ref['current_ref']['node_id'] == case2  # the higher priority first
    mount.ok('case.begin', {'case_id': case2}, session=coder)
    mount.ok('step.check', {'case_id': case2, 'step_title': 'write tests', 'result': 'pass'}, session=coder)
    mount.ok('step.check', {'case_id': case2, 'step_title': 'make them pass', 'result': 'pass'}, session=coder)
    boot = mount.ok('plan.bootstrap', {'initiative_title': 'Faster login', 'plan_title': 'Login "v2"'})
    plan = boot['plan']['id']
    gen = mount.ok('plan.slice.generate', {'plan_node_id': plan, 'slice_specs': [
        {'title': 'cache sessions', 'affected_files': ['src/login.c']}, {'title': 'docs'}]})
    s1 = gen['slices'][0]['id']
    mount.ok('graph.checklist.upsert', {'node_id': s1, 'item_text': 'measure p95'})
    mount.ok('graph.checklist.upsert', {'node_id': s1, 'item_text': 'add cache'})
    mount.ok('graph.checklist.upsert', {'node_id': s1, 'item_text': 'add cache', 'order_no': 2, 'status': 'done'})
    mount.ok('plan.rollup.submit', {'node_id': plan, 'summary': 'slices laid out'})
    lock = mount.ok('lock.acquire', {'scope_type': 'file', 'scope_path': 'src/login.c', 'ttl_seconds': 3600},
                    session=coder)
    root_wt = mount.read_json('sessions', str(coder), 'session.json')['session_root_worktree_id']
    mount.ok('merge.request', {'feature_task_id': feat, 'reviewer_session': 'rev-1', 'notes_json': {'risk': 'low'}})
    root = os.readlink(mount.p('sessions', str(coder), 'root'))
    with open(os.path.join(root, 'login.c'), 'w') as f:
        f.write('int login;\n')
    git(root, 'add', 'login.c')
    git(root, '-c', 'user.name=t', '-c', 'user.email=t@example.com', 'commit', '-q', '-m', 'login')
    mount.ok('merge.main.request', {'from_worktree_id': root_wt}, session=coder)
    mount.ok('merge.main.acquire_lock', {'ttl_seconds': 600}, session=coder)
    return dict(coder=coder, gone=gone, epic=epic, feat=feat, case1=case1, case2=case2, plan=plan, s1=s1,
                lock=lock['id'], root_wt=root_wt)


def anchors(text):
    return set(re.findall(r'<a id="([^"]+)"></a>', text))


def test_content_and_links(mount):
    ids = scenario(mount)
    refresh(mount)
    md = {name: read(mount, name).decode() for name in FILES}

    # Every relative link goes to a mirror file, and every #anchor to an anchor in it.
    links = 0
    for name, text in md.items():
        for target in re.findall(r'\]\(([^)]+)\)', text):
            file, _, anchor = target.partition('#')
            file = file or name
            assert file in FILES, (name, target)
            if anchor:
                assert anchor in anchors(md[file]), (name, target)
            links += 1
    assert links > 50

    idx = md['index.md']
    assert f'db_version {mount.db_version()}' in idx
    # Who is doing what: the live session with role, owner, heartbeat, the case it holds; not the closed one.
    row = next(line for line in idx.splitlines() if line.startswith(f'| [session {ids["coder"]}]'))
    assert '| implementer | alice |' in row and '(live)' in row and '| no |' in row
    assert f'[#{ids["case2"]}](tasks.md#task-{ids["case2"]}) parse RFC 2822 (in_progress)' in row
    assert 'make them pass' in row  # its last checkpoint
    assert f'[session {ids["gone"]}]' not in idx
    assert '| [Tasks](tasks.md) | 4 | in_progress 1, todo 3 |' in idx
    assert '| [Sessions](sessions.md) | 2 | active_new 1, closed 1 |' in idx
    assert f'[#{ids["lock"]}](locks.md#lock-{ids["lock"]}) | file `src/login.c` | [session {ids["coder"]}]' in idx
    assert '## Merge queue' in idx and '| [#1](merges.md#queue-1) |' in idx and '**queued**' in idx
    assert 'This is the first rendering.' in idx

    tasks = md['tasks.md']
    lines = tasks.splitlines()
    at = {i: next(n for n, line in enumerate(lines) if f'<a id="task-{i}"></a>' in line)
          for i in (ids['epic'], ids['feat'], ids['case1'], ids['case2'])}
    assert at[ids['epic']] < at[ids['feat']] < at[ids['case1']] < at[ids['case2']]  # the tree, depth first
    assert lines[at[ids['feat']]].startswith('  - ') and lines[at[ids['case1']]].startswith('    - ')
    assert r'parse ISO \| \*dates\*' in lines[at[ids['case1']]]  # markup of titles is escaped
    c2 = lines[at[ids['case2']]]
    assert '**in_progress**' in c2 and f'held by [session {ids["coder"]}](sessions.md#session-{ids["coder"]})' in c2
    assert lines[at[ids['case2']] + 1:at[ids['case2']] + 3] == ['      - [x] write tests', '      - [x] make them pass']
    assert 'last checkpoint: make them pass' in lines[at[ids['case2']] + 3]

    plan = md['plan.md']
    assert '```mermaid\nflowchart TD\n' in plan
    assert f'n{ids["plan"]} --> n{ids["s1"]}' in plan
    assert 'Login #34;v2#34;' in plan  # quotes cannot end the label
    node = next(line for line in plan.splitlines() if f'<a id="node-{ids["plan"]}"></a>' in line)
    assert 'approval **pending**' in node and 'in_review' in node
    assert '      - [x] add cache' in plan and '      - [ ] measure p95' in plan
    assert 'snapshot *rollup*' in plan and 'slices laid out' in plan
    assert "files: `[\"src/login.c\"]`" in plan

    sessions = md['sessions.md']
    assert f'<a id="session-{ids["gone"]}"></a>Session {ids["gone"]}: reviewer' in sessions
    assert '**closed**' in sessions and 'owner: bob' in sessions
    assert f'session root: [worktree {ids["root_wt"]}](worktrees.md#worktree-{ids["root_wt"]})' in sessions
    wts = md['worktrees.md']
    assert f'<a id="worktree-{ids["root_wt"]}"></a>' in wts and f'`session/{ids["coder"]}`' in wts
    assert '| `main` |' in wts
    locks = md['locks.md']
    assert f'<a id="lock-{ids["lock"]}"></a>#{ids["lock"]} | file `src/login.c`' in locks
    merges = md['merges.md']
    assert f'**locked** by [session {ids["coder"]}]' in merges
    assert '<a id="queue-1"></a>#1' in merges and '`main`' in merges
    assert f'<a id="merge-request-1"></a>#1 | [#{ids["feat"]}](tasks.md#task-{ids["feat"]}) Parsing' in merges
    assert 'rev-1' in merges

    # The next rendering says what changed since this one.
    mount.ok('case.complete', {'case_id': ids['case2'], 'summary': 'ok'}, session=ids['coder'])
    refresh(mount)
    idx2 = read(mount, 'index.md').decode()
    changes = idx2.split('## Changes since the previous refresh')[1]
    assert f'[#{ids["case2"]}](tasks.md#task-{ids["case2"]}) parse RFC 2822 (done)' in changes
    assert f'#{ids["case1"]}]' not in changes
    # ... and a refresh of the same state says the same.
    refresh(mount)
    assert read(mount, 'index.md').decode() == idx2


def test_determinism_sizes_mtimes_and_history(mount, repo):
    scenario(mount)
    assert mirror_log(repo) == []
    refresh(mount)
    first = mirror_bytes(mount)
    stats = {n: os.stat(mount.p('mirror', n)) for n in FILES}
    log = mirror_log(repo)
    assert len(log) == 1
    # Sizes are exact, and what git holds is what the mount serves.
    for n in FILES:
        assert stats[n].st_size == len(first[n])
        assert git(repo, 'show', f'refs/orchfs/mirror:{n}').stdout.encode() == first[n]
        assert sh(f"git -C {repo} hash-object {mount.p('mirror', n)}").stdout.strip() == \
            git(repo, 'rev-parse', f'refs/orchfs/mirror:{n}').stdout.strip()
    # The same state renders the same bytes, and an unchanged refresh commits nothing.
    time.sleep(0.05)
    r = refresh(mount)
    assert r['outdated_before_refresh'] is False
    assert mirror_bytes(mount) == first
    assert mirror_log(repo) == log
    assert {n: os.stat(mount.p('mirror', n)).st_mtime_ns for n in FILES} == {n: s.st_mtime_ns for n, s in stats.items()}
    # A change: one commit more, naming the version and the files that changed; only those get a new mtime.
    time.sleep(0.05)
    mount.ok('task.create', {'level': 'case', 'title': 'one more'})
    r = refresh(mount)
    log2 = mirror_log(repo)
    assert len(log2) == 2 and log2[1] == log[0]
    msg = git(repo, 'log', '-1', '--format=%B', 'refs/orchfs/mirror').stdout
    assert f'db_version {r["mirror_status"]["md_version"]}' in msg and 'tasks.md' in msg and 'locks.md' not in msg
    changed = git(repo, 'diff', '--name-only', log[0], log2[0]).stdout.split()
    assert 'tasks.md' in changed and 'index.md' in changed and 'locks.md' not in changed
    after = {n: os.stat(mount.p('mirror', n)) for n in FILES}
    assert after['tasks.md'].st_mtime_ns > stats['tasks.md'].st_mtime_ns
    assert after['locks.md'].st_mtime_ns == stats['locks.md'].st_mtime_ns
    assert read(mount, 'tasks.md') != first['tasks.md']
    # `git log -p refs/orchfs/mirror` is the history.
    assert '+  - <a id="task-' in git(repo, 'log', '-p', 'refs/orchfs/mirror').stdout
    # The user's branches, index and working tree are untouched.
    assert git(repo, 'status', '--porcelain').stdout == ''
    assert git(repo, 'rev-parse', '--abbrev-ref', 'HEAD').stdout.strip() == 'main'
    assert git(repo, 'log', '--format=%s', 'main').stdout.split('\n')[0] == 'initial'


def test_editors_are_refused(mount):
    refresh(mount)
    before = read(mount, 'index.md')
    p = mount.p('mirror', 'index.md')
    for flags in (os.O_WRONLY, os.O_RDWR, os.O_WRONLY | os.O_TRUNC, os.O_WRONLY | os.O_APPEND):
        with pytest.raises(OSError) as e:
            os.open(p, flags)
        assert e.value.errno == errno.EROFS
    for fn in (lambda: os.unlink(p), lambda: os.rename(p, p + '.bak'), lambda: os.chmod(p, 0o644),
               lambda: open(mount.p('mirror', 'new.md'), 'w'), lambda: os.mkdir(mount.p('mirror', 'd')),
               lambda: os.truncate(p, 0)):
        with pytest.raises(OSError) as e:
            fn()
        assert e.value.errno == errno.EROFS
    r = sh(f"echo x > {p}")
    assert r.returncode != 0 and 'Read-only file system' in r.stderr
    assert read(mount, 'index.md') == before
    assert oct(os.stat(p).st_mode & 0o777) == '0o444' and oct(os.stat(mount.p('mirror')).st_mode & 0o777) == '0o555'


def test_open_reader_keeps_its_version(mount):
    mount.ok('task.create', {'level': 'case', 'title': 'first'})
    add_tasks(mount, 5000, 'x' * 250)
    refresh(mount)
    old = read(mount, 'tasks.md')
    assert len(old) > 1024 * 1024  # past the kernel's readahead: the daemon serves the rest later
    dirs = set(os.listdir(os.path.join(mount.state, 'mirror')))
    with open(mount.p('mirror', 'tasks.md'), 'rb') as f:
        head = f.read(4096)
        # Three changed refreshes: the rendering this descriptor reads is gone from disk by then.
        for i in range(3):
            mount.ok('task.create', {'level': 'epic', 'title': f'new root {i}'})
            refresh(mount)
        assert not dirs & set(os.listdir(os.path.join(mount.state, 'mirror')))
        new = read(mount, 'tasks.md')
        assert new != old
        rest = f.read()
    assert head + rest == old
    # The same with mirror/index.md, opened by an editor.
    with open(mount.p('mirror', 'index.md'), 'rb') as f:
        before = read(mount, 'index.md')
        head = f.read(100)
        mount.ok('task.create', {'level': 'epic', 'title': 'another root'})
        refresh(mount)
        assert read(mount, 'index.md') != before
        assert head + f.read() == before
        f.seek(0)
        assert f.read() == before and os.fstat(f.fileno()).st_size == len(before)
    # A new open sees the latest version (as committed in git), whole, with its own size.
    latest = subprocess.run(['git', '-C', str(mount.repo), 'show', 'refs/orchfs/mirror:tasks.md'],
                            capture_output=True, check=True).stdout
    assert latest != new and b'another root' in latest
    with open(mount.p('mirror', 'tasks.md'), 'rb') as f:
        assert f.read() == latest
    assert os.stat(mount.p('mirror', 'tasks.md')).st_size == len(latest)


def add_tasks(mount, n, suffix=''):
    """n cases written straight into the database (as another process would), and their db_version."""
    db = sqlite3.connect(os.path.join(mount.state, 'state.db'), timeout=30)
    now = int(time.time() * 1000)
    with db:
        db.executemany("INSERT INTO tasks (level, title, status, created_at, updated_at) VALUES "
                       "('case', ?, 'todo', ?, ?)", [(f'case {i} {suffix}', now, now) for i in range(n)])
        db.execute("UPDATE mirror_meta SET db_version = db_version + 1, version_at = ?, updated_at = ?", (now, now))
    db.close()


def test_readers_and_writers_are_not_held_up(mount):
    """Readers of the mount, and writers, keep being served while a large state renders."""
    add_tasks(mount, 50000)
    mount.ok('mirror.status')
    rendering = threading.Event()
    done = threading.Event()
    slowest = {'read': 0.0, 'write': 0.0}
    counts = {'read': 0, 'write': 0}

    def loop(kind, op):
        rendering.wait()
        while not done.is_set():
            t = time.monotonic()
            op()
            slowest[kind] = max(slowest[kind], time.monotonic() - t)
            counts[kind] += 1

    threads = [threading.Thread(target=loop, args=('read', lambda: mount.read_json('mirror', 'status.json'))),
               threading.Thread(target=loop, args=('write', lambda: mount.ok('lock.acquire', {
                   'scope_type': 'file', 'scope_path': f'f{counts["write"]}', 'owner_session': 'x'})))]
    for th in threads:
        th.start()
    try:
        t = time.monotonic()
        rendering.set()
        refresh(mount)
        took = time.monotonic() - t
    finally:
        done.set()
        for th in threads:
            th.join()
    assert counts['read'] > 2 and counts['write'] > 2, (counts, took)
    assert slowest['read'] < took / 2 and slowest['write'] < took / 2, (slowest, took)
    assert '<a id="task-50000"></a>' in read(mount, 'tasks.md').decode()


def test_target_path(mount, repo):
    r = refresh(mount, target_path='./docs//state.md')
    assert r['path'] == 'docs/state.md' and r['mirror_status']['md_path'] == 'docs/state.md'
    assert (repo / 'docs' / 'state.md').read_bytes() == read(mount, 'index.md')
    assert mount.read_json('mirror', 'status.json')['md_path'] == 'docs/state.md'
    # Confined: outside the repository, not markdown, inside .git, through a symlink: invalid_params.
    (repo / 'out').symlink_to('/tmp')
    for bad in ['../x.md', '/tmp/x.md', 'docs/state.txt', '.git/x.md', 'out/x.md', 'docs/']:
        mount.fails('mirror.refresh', dict(ROLE, target_path=bad), 'invalid_params', errno.EINVAL)
    assert not os.path.exists('/tmp/x.md')
    # Without it, md_path goes back to mirror/index.md.
    assert refresh(mount)['path'] == 'mirror/index.md'


def test_mermaid_renders(mount, tmp_path, mmdc):
    """The plan's flowchart renders: mermaid-cli (tests/node) with Debian's chromium, as GitHub's and VS Code's previews would."""
    scenario(mount)
    mount.ok('graph.edge.create', {'from_node_id': 3, 'to_node_id': 4, 'edge_type': 'depends_on'})
    refresh(mount)
    src = tmp_path / 'plan.md'
    src.write_bytes(read(mount, 'plan.md'))
    cfg = tmp_path / 'puppeteer.json'
    cfg.write_text(json.dumps({'executablePath': '/usr/bin/chromium', 'args': ['--no-sandbox']}))
    out = tmp_path / 'plan.svg'
    r = subprocess.run([mmdc, '-p', str(cfg), '-i', str(src), '-o', str(out)], capture_output=True, text=True,
                       timeout=120, env=dict(os.environ, PUPPETEER_SKIP_DOWNLOAD='1'))
    assert r.returncode == 0, r.stdout + r.stderr
    svg = (tmp_path / 'plan-1.svg').read_text()
    assert 'Syntax error' not in svg
    assert 'Faster login' in svg and 'Login "v2"' in svg.replace('&quot;', '"') and 'cache sessions' in svg
    assert 'depends_on' in svg


def test_refresh_by_itself(repo, tmp_path):
    mp = tmp_path / 'mnt'
    mp.mkdir()
    m = Mount(repo, mp, tmp_path / 'state', str(tmp_path / 'orchfs.log'))
    m.proc = subprocess.Popen([ORCHFS, 'mount', '-f', '--mirror-refresh', '1', '--repo', str(repo), '--state',
                               m.state, m.path], stdout=subprocess.DEVNULL, stderr=open(m.log, 'ab'))
    try:
        deadline = time.time() + 20
        while not os.path.ismount(m.path):
            assert m.proc.poll() is None and time.time() < deadline
            time.sleep(0.02)
        m.ok('task.create', {'level': 'case', 'title': 'auto'})
        deadline = time.time() + 10
        while m.read_json('mirror', 'status.json')['outdated']:
            assert time.time() < deadline
            time.sleep(0.1)
        assert '<a id="task-1"></a>' in read(m, 'tasks.md').decode()
        n = len(mirror_log(repo))
        assert n == 1
        time.sleep(2.5)  # nothing changed: no refresh, no commit
        assert len(mirror_log(repo)) == n
        # The role rule still applies to calls.
        m.fails('mirror.refresh', {}, 'forbidden', errno.EPERM)
    finally:
        m.stop()
    log = open(m.log).read()
    assert not re.search(r'Sanitizer|runtime error:|WARNING', log), log
    bad = subprocess.run([ORCHFS, 'mount', '--mirror-refresh', '0', str(mp)], capture_output=True, text=True)
    assert bad.returncode != 0 and '--mirror-refresh' in bad.stderr
