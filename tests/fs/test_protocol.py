"""The ctl protocol and the basic tree, driven the way clients drive it."""
import errno
import json
import os
import shutil
import subprocess
import time

import pytest

from conftest import ORCHFS, git


def sh(cmd, cwd=None):
    return subprocess.run(['bash', '-c', cmd], capture_output=True, text=True, cwd=cwd)


def test_echo_into_ctl_and_exec_readback(mount):
    r = sh(f"echo '{{\"level\": \"case\", \"title\": \"t1\"}}' > {mount.p('ctl', 'task.create')}")
    assert r.returncode == 0, r.stderr
    r = sh(f"exec 3<>{mount.p('ctl', 'task.create')}; echo '{{\"level\": \"epic\", \"title\": \"e\"}}' >&3; cat <&3")
    reply = json.loads(r.stdout)
    assert r.stdout.endswith('}\n') and r.stdout.count('\n') == 1
    assert reply['result']['id'] == 2 and reply['result']['level'] == 'epic'


def test_echo_error_sets_exit_status(mount):
    r = sh(f"echo '{{\"task_id\": 42}}' > {mount.p('ctl', 'task.get')}")
    assert r.returncode != 0
    assert 'No such file or directory' in r.stderr
    r = sh(f"echo '{{\"task_id\": \"x\"}}' > {mount.p('ctl', 'task.get')}")
    assert r.returncode != 0 and 'Invalid argument' in r.stderr


def test_python_r_plus_with_and_without_seek(mount):
    with open(mount.p('ctl', 'task.create'), 'r+') as f:
        f.write('{"level": "case", "title": "a"}')
        f.flush()
        reply = json.loads(f.read())
    assert reply['result']['title'] == 'a'
    with open(mount.p('ctl', 'task.create'), 'r+') as f:
        f.write('{"level": "case", "title": "b"}')
        f.seek(0)
        reply = json.loads(f.read())
        assert f.read() == ''
    assert reply['result']['title'] == 'b'


def test_request_in_pieces(mount):
    fd = os.open(mount.p('ctl', 'task.create'), os.O_RDWR)
    for piece in [b'{"lev', b'el": "case",', b' "title"', b': "pieces"}']:
        os.write(fd, piece)
    reply = json.loads(os.read(fd, 4096))
    os.close(fd)
    assert reply['result']['title'] == 'pieces'


def test_read_before_complete_is_einval_and_close_fails(mount):
    fd = os.open(mount.p('ctl', 'task.create'), os.O_RDWR)
    os.write(fd, b'{"level": ')
    with pytest.raises(OSError) as e:
        os.read(fd, 100)
    assert e.value.errno == errno.EINVAL
    with pytest.raises(OSError) as e:
        os.close(fd)
    assert e.value.errno == errno.EINVAL
    assert mount.db_version() == 0


def test_second_request_is_ebusy(mount):
    fd = os.open(mount.p('ctl', 'task.list'), os.O_RDWR)
    os.write(fd, b'{}')
    with pytest.raises(OSError) as e:
        os.write(fd, b'{"status": "todo"}')
    assert e.value.errno == errno.EBUSY
    os.close(fd)


def test_malformed_and_non_object(mount):
    e = mount.fails('task.create', '{"level": "case" "title": 1}', 'invalid_json', errno.EINVAL)
    assert 'JSON' in e['message']
    mount.fails('task.create', '[1]', 'invalid_params', errno.EINVAL)
    mount.fails('task.create', '"str"', 'invalid_params', errno.EINVAL)
    mount.fails('task.create', '42 ', 'invalid_params', errno.EINVAL)
    assert mount.db_version() == 0


def test_oversize_request_is_efbig(mount):
    fd = os.open(mount.p('ctl', 'task.create'), os.O_RDWR)
    os.write(fd, b'{"level": "case", "title": "')
    chunk = b'x' * 65536
    with pytest.raises(OSError) as e:
        for _ in range(20):
            os.write(fd, chunk)
    assert e.value.errno == errno.EFBIG
    with pytest.raises(OSError) as e:
        os.write(fd, b'"}')
    assert e.value.errno == errno.EFBIG
    reply = json.loads(os.read(fd, 4096))
    assert reply['error']['code'] == 'too_large'
    os.close(fd)
    assert mount.db_version() == 0


def test_usage_when_read_without_write(mount):
    r = sh(f"cat {mount.p('ctl', 'task.create')}")
    assert r.returncode == 0
    assert 'task.create' in r.stdout and 'level' in r.stdout and 'Example' in r.stdout
    assert 'call_id' in r.stdout


def test_unknown_key_rejected(mount):
    e = mount.fails('task.create', {'level': 'case', 'titel': 'x'}, 'invalid_params', errno.EINVAL)
    assert 'titel' in e['message'] and 'title' in e['details']['accepted']
    assert mount.db_version() == 0


def test_call_id_and_replies_file(mount):
    # A file tool: write in one open, read the reply file in another.
    with open(mount.p('ctl', 'task.create'), 'w') as f:
        f.write('{"level": "case", "title": "ft", "call_id": "ft-1"}')
    assert 'ft-1.json' in os.listdir(mount.p('replies'))
    reply = mount.read_json('replies', 'ft-1.json')
    assert reply['result']['title'] == 'ft' and reply['call_id'] == 'ft-1'
    # The repeat is not executed again.
    again = mount.ok('task.create', {'level': 'case', 'title': 'ft', 'call_id': 'ft-1'})
    assert again['id'] == reply['result']['id']
    assert mount.db_version() == 1
    mount.fails('task.create', {'level': 'case', 'title': 'other', 'call_id': 'ft-1'}, 'exists', errno.EEXIST)


def test_o_trunc_append_and_truncate_accepted(mount):
    ctl = mount.p('ctl', 'task.list')
    fd = os.open(ctl, os.O_RDWR | os.O_TRUNC | os.O_APPEND | os.O_CREAT)
    os.write(fd, b'{}')
    assert json.loads(os.read(fd, 4096))['result'] == []
    os.close(fd)
    os.truncate(ctl, 0)


def test_state_files_exact_and_tools(mount):
    mount.ok('session.open', {'agent_role': 'impl'})
    mount.ok('task.create', {'level': 'case', 'title': 'tools'})
    for rel in ['sessions/1/session.json', 'sessions/1/context.json', 'tasks/1/task.json', 'README.md']:
        p = mount.p(*rel.split('/'))
        with open(p, 'rb') as f:
            data = f.read()
        assert os.stat(p).st_size == len(data)
        if rel.endswith('.json'):
            assert data.endswith(b'\n') and json.loads(data)
        assert sh(f'cat {p}').stdout.encode() == data
        assert sh(f'tail -c 20 {p}').stdout.encode() == data[-20:]
        r = sh(f'cp {p} {mount.repo}/copy && cmp {p} {mount.repo}/copy')
        assert r.returncode == 0, r.stderr
        blob = subprocess.run(['git', 'hash-object', p], capture_output=True, text=True).stdout.strip()
        blob2 = subprocess.run(['git', 'hash-object', '--stdin'], input=data, capture_output=True).stdout.decode().strip()
        assert blob == blob2
        node = subprocess.run(['node', '-e', f"process.stdout.write(require('fs').readFileSync('{p}'))"],
                              capture_output=True)
        assert node.returncode == 0 and node.stdout == data


def test_effects_visible_immediately(mount):
    mount.ok('task.create', {'level': 'case', 'title': 'before'})
    assert sorted(os.listdir(mount.p('tasks'))) == ['1']
    st1 = os.stat(mount.p('tasks', '1', 'task.json'))
    mount.ok('task.create', {'level': 'case', 'title': 'after', 'parent_id': 1})
    assert sorted(os.listdir(mount.p('tasks')), key=int) == ['1', '2']
    assert mount.read_json('tasks', '2', 'task.json')['parent_id'] == 1
    # Changes made by another process (orchfs call) are served at once too.
    r = mount.orchfs_call('task.create', {'level': 'case', 'title': 'outside'})
    assert r.returncode == 0, r.stderr
    assert mount.read_json('tasks', '3', 'task.json')['title'] == 'outside'
    assert os.stat(mount.p('tasks', '1', 'task.json')).st_mtime_ns >= st1.st_mtime_ns


def test_open_is_a_snapshot(mount):
    mount.ok('session.open')
    p = mount.p('sessions', '1', 'session.json')
    with open(p, 'rb') as f:
        size = os.fstat(f.fileno()).st_size
        mount.ok('session.heartbeat', {'session_id': 1})
        mount.ok('session.close', {'session_id': 1})
        data = f.read()
    assert len(data) == size
    assert json.loads(data)['status'] == 'active_new'
    assert mount.read_json('sessions', '1', 'session.json')['status'] == 'closed'


def test_read_only_everywhere(mount):
    mount.ok('session.open')
    for target in ['README.md', 'tasks', 'sessions/1/session.json', 'sessions/1/context.json']:
        p = mount.p(*target.split('/'))
        r = sh(f'echo x > {p}')
        assert r.returncode != 0
        assert 'Read-only file system' in r.stderr or 'Is a directory' in r.stderr
    for op in [lambda: os.mkdir(mount.p('tasks', 'new')),
               lambda: os.unlink(mount.p('README.md')),
               lambda: os.rename(mount.p('README.md'), mount.p('x.md')),
               lambda: os.chmod(mount.p('README.md'), 0o644),
               lambda: os.symlink('/tmp', mount.p('link'))]:
        with pytest.raises(OSError) as e:
            op()
        assert e.value.errno == errno.EROFS
    # A name under ctl/ that is no method does not exist (SPEC 7.4), even with O_CREAT.
    with pytest.raises(FileNotFoundError):
        open(mount.p('ctl', 'new.method'), 'w')


def test_python_atomic_save_fails_erofs(mount):
    import tempfile
    with pytest.raises(OSError) as e:
        tempfile.NamedTemporaryFile(dir=mount.p('tasks'), delete=False)
    assert e.value.errno == errno.EROFS


def test_vim_save_fails_read_only(mount):
    mount.ok('task.create', {'level': 'case', 'title': 'v'})
    p = mount.p('tasks', '1', 'task.json')
    before = open(p).read()
    vim = shutil.which('vim') or shutil.which('vim.tiny')
    assert vim, 'scripts/install-deps --test installs a vim'
    r = subprocess.run([vim, '-Es', '-n', '-c', 'normal Gox', '-c', 'w!', '-c', 'qa!', p],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode != 0
    assert open(p).read() == before


def test_modes(mount):
    mount.ok('session.open')
    assert oct(os.stat(mount.p('README.md')).st_mode & 0o777) == '0o444'
    assert oct(os.stat(mount.p('ctl')).st_mode & 0o777) == '0o555'
    assert oct(os.stat(mount.p('ctl', 'task.create')).st_mode & 0o777) == '0o660'
    assert oct(os.stat(mount.p('sessions', '1', 'heartbeat')).st_mode & 0o777) == '0o660'
    assert oct(os.stat(mount.p('sessions', '1', 'ctl', 'session.heartbeat')).st_mode & 0o777) == '0o660'


def test_ctl_lists_methods_in_table(mount):
    names = os.listdir(mount.p('ctl'))
    r = subprocess.run([ORCHFS, 'methods'], capture_output=True, text=True)
    assert sorted(names) == sorted(r.stdout.split())
    for n in ['session.open', 'session.heartbeat', 'session.close', 'session.context',
              'task.create', 'task.list', 'task.get']:
        assert n in names


def test_generated_readme_covers_tree_and_methods(mount):
    text = open(mount.p('README.md')).read()
    for entry in os.listdir(mount.path):
        if entry != 'README.md':
            assert entry + ('/' if os.path.isdir(mount.p(entry)) else ' ') in text, entry
    for method in os.listdir(mount.p('ctl')):
        assert f'`{method}`' in text, method


def test_request_split_at_every_byte(mount):
    """stdio clients flush every 4 KiB, anywhere: inside a literal, a number, an escape, a character."""
    body = json.dumps({'level': 'case', 'title': 'caf\u00e9 \U0001F600 "q" \\ tab\t', 'priority': -15},
                      ensure_ascii=False).encode()
    body = body.replace(b'"priority": -15', b'"priority": -15, "assignee_session": "x\\u00e9"')
    fd = os.open(mount.p('ctl', 'task.create'), os.O_RDWR)
    for i in range(len(body)):
        os.write(fd, body[i:i + 1])
    reply = json.loads(os.read(fd, 4096))
    os.close(fd)
    t = reply['result']
    assert t['title'] == 'caf\u00e9 \U0001F600 "q" \\ tab\t' and t['priority'] == -15
    assert t['assignee_session'] == 'x\u00e9'
    mount.ok('case.begin', {'case_id': t['id'], 'input_contract': {'strict': True, 'n': None}})
    fd = os.open(mount.p('ctl', 'task.list'), os.O_RDWR)
    for piece in [b'{"level": "ca', b'se", "status": "in_pro', b'gress"', b'}']:
        os.write(fd, piece)
    assert json.loads(os.read(fd, 65536))['result'][0]['id'] == t['id']
    os.close(fd)


def test_jq_style_4k_chunks(mount, tmp_path):
    req = {'level': 'case', 'title': 't' * 9000 + '\u00e9' * 50}
    p = tmp_path / 'req.json'
    p.write_text(json.dumps(req, ensure_ascii=False))
    r = subprocess.run(['bash', '-c', f'dd if={p} bs=4093 status=none > {mount.p("ctl", "task.create")}'],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert mount.read_json('tasks', '1', 'task.json')['title'] == req['title']


def test_newline_after_request_is_not_a_second_request(mount):
    r = sh(f"exec 3<>{mount.p('ctl', 'task.create')}; printf '%s' '{{\"level\": \"case\", \"title\": \"n\"}}' >&3 "
           f"&& echo >&3 && cat <&3")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)['result']['title'] == 'n'


def test_einval_read_is_sticky(mount):
    fd = os.open(mount.p('ctl', 'task.list'), os.O_RDWR)
    os.write(fd, b'{"level": ')
    for _ in range(2):
        with pytest.raises(OSError) as e:
            os.read(fd, 100)
        assert e.value.errno == errno.EINVAL
    os.write(fd, b'"case"}')
    with pytest.raises(OSError) as e:
        os.read(fd, 100)
    assert e.value.errno == errno.EINVAL
    os.close(fd)


def test_long_message_keeps_valid_utf8(mount):
    e = mount.fails('task.create', {'level': 'case', 'title': 't', 'x' + '\u00e9' * 600: 1},
                    'invalid_params', errno.EINVAL)
    assert e['message'].startswith('unknown key') and e['message'].endswith('\u2026')


def test_unknown_key_named_even_under_used_call_id(mount):
    mount.ok('task.create', {'level': 'case', 'title': 't', 'call_id': 'k1'})
    e = mount.fails('task.create', {'level': 'case', 'titel': 't', 'call_id': 'k1'}, 'invalid_params', errno.EINVAL)
    assert 'titel' in e['message']
    # Normalised params are the same params.
    mount.ok('case.begin', {'case_id': 1, 'required_files': ['./a//b'], 'call_id': 'k2'})
    mount.ok('case.begin', {'case_id': 1, 'required_files': ['a/b'], 'call_id': 'k2'})


def test_duplicate_keys_rejected(mount):
    mount.fails('task.create', '{"level": "case", "title": "a", "title": "b"}', 'invalid_json', errno.EINVAL)
    assert mount.db_version() == 0


def test_directory_mtime_moves_with_a_write(mount):
    before = os.stat(mount.p('tasks')).st_mtime_ns
    time.sleep(0.01)
    mount.ok('task.create', {'level': 'case', 'title': 't'})
    assert os.stat(mount.p('tasks')).st_mtime_ns > before


def test_transient_error_under_call_id_is_retried(mount):
    mount.ok('session.open')
    mount.ok('session.open')
    mount.ok('lock.acquire', {'scope_type': 'file', 'scope_path': 'a.c'}, session=1)
    req = {'scope_type': 'file', 'scope_path': 'a.c', 'call_id': 'lk'}
    mount.fails('lock.acquire', req, 'conflict', errno.EBUSY, session=2)
    assert mount.read_json('replies', 'lk.json')['error']['code'] == 'conflict'
    mount.ok('session.close', {}, session=1)
    got = mount.ok('lock.acquire', req, session=2)
    assert mount.read_json('replies', 'lk.json')['result']['id'] == got['id']
    # A success is final: the repeat returns it without acquiring again.
    assert mount.ok('lock.acquire', req, session=2) == got


def test_timeouts_are_bounded(mount):
    mount.ok('session.open')
    for method, params in [('session.open', {'heartbeat_timeout_seconds': 2 ** 62}),
                           ('resume.candidates.list', {'requester_session_id': 1,
                                                       'heartbeat_timeout_seconds': 9223372036854775807}),
                           ('resume.candidates.list', {'requester_session_id': 1, 'heartbeat_timeout_seconds': -1}),
                           ('resume.candidates.attach', {'requester_session_id': 1, 'target_session_id': 2,
                                                         'heartbeat_timeout_seconds': 2 ** 40})]:
        e = mount.fails(method, params, 'invalid_params', errno.EINVAL)
        assert 'heartbeat_timeout_seconds' in e['message']


def test_truncate_to_nonzero_refused(mount):
    with pytest.raises(OSError) as e:
        os.truncate(mount.p('ctl', 'task.list'), 5)
    assert e.value.errno == errno.EINVAL


def test_python_buffered_text_file_reads_error_reply(mount):
    """Python keeps a failed write in its buffer and writes it again before reading."""
    f = open(mount.p('ctl', 'task.get'), 'r+')
    f.write(json.dumps({'task_id': 99}))
    with pytest.raises(OSError) as e:
        f.flush()
    assert e.value.errno == errno.ENOENT
    reply = json.loads(f.read())
    assert reply['error']['code'] == 'not_found'
    f.close()
    # A different second request is still refused.
    fd = os.open(mount.p('ctl', 'task.list'), os.O_RDWR)
    os.write(fd, b'{}')
    with pytest.raises(OSError) as e:
        os.write(fd, b'{"level": "case"}')
    assert e.value.errno == errno.EBUSY
    os.close(fd)


def test_ctl_stat_size_is_what_a_read_returns(mount):
    mount.ok('session.open')
    for p in [mount.p('ctl', 'task.get'), mount.p('sessions', '1', 'ctl', 'session.context')]:
        data = open(p, 'rb').read()
        assert os.stat(p).st_size == len(data) > 0
    mount.ok('session.context', {}, session=1)
    p = mount.p('sessions', '1', 'ctl', 'session.context')
    data = open(p, 'rb').read()
    assert json.loads(data)['result']['session']['id'] == 1 and os.stat(p).st_size == len(data)


def test_nul_and_invalid_utf8_are_invalid_json_at_once(mount):
    for junk in [b'\x00{', b'{"level": "\xc0\x80', b'{"level": \x00', b'\xff']:
        fd = os.open(mount.p('ctl', 'task.list'), os.O_RDWR)
        with pytest.raises(OSError) as e:
            os.write(fd, junk)
        assert e.value.errno == errno.EINVAL
        assert json.loads(os.read(fd, 4096))['error']['code'] == 'invalid_json'
        os.close(fd)


def test_short_write_of_failed_request_never_looks_like_success(mount):
    """About 1 MiB reaches the daemon as several FUSE writes; when the last fails, the
    writer sees a short write, and its loop re-sends the tail, which must fail too."""
    req = json.dumps({'level': 'case', 'title': 'x' * (1024 * 1024 - 100)}).encode()
    fd = os.open(mount.p('ctl', 'task.create'), os.O_RDWR)
    view, writes = memoryview(req), 0
    with pytest.raises(OSError) as e:
        while view:
            n = os.write(fd, view)
            view = view[n:]
            writes += 1
            assert writes < 100
    assert e.value.errno == errno.EINVAL
    reply = json.loads(os.read(fd, 65536))
    assert reply['error']['code'] == 'invalid_params' and 'title' in reply['error']['message']
    os.close(fd)
    assert os.listdir(mount.p("tasks")) == []
