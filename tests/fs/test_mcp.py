"""`orchfs mcp`: an MCP server over stdio.

The official MCP TypeScript SDK client (tests/node, installed here with npm
from tests/node/package-lock.json) drives it: initialize, tools/list (every
method a tool, every input schema valid JSON Schema, checked by Ajv), a
whole session through tools/call, errors as isError results.  A raw
JSON-RPC client checks the protocol's corners (version negotiation,
notifications, batches, parse errors).  Last, the method table's four
faces agree: the ctl usage texts, the MCP tool schemas, `orchfs methods
--json` and the README's method list.
"""
import json
import os
import re
import shutil
import signal
import subprocess
import time

import pytest

from conftest import BAD_OUTPUT, ORCHFS, ROOT

NODE_DIR = os.path.join(ROOT, 'tests', 'node')
DRIVER = os.path.join(NODE_DIR, 'mcp_driver.mjs')
VERSIONS = ['2024-11-05', '2025-03-26', '2025-06-18', '2025-11-25']


def methods_json():
    r = subprocess.run([ORCHFS, 'methods', '--json'], capture_output=True, text=True, check=True)
    return json.loads(r.stdout)


def tool_name(method):
    return method.replace('.', '_')


@pytest.fixture(scope='session')
def node_modules():
    """The SDK and Ajv, as pinned by tests/node/package-lock.json (npm ci when missing or stale)."""
    node, npm = shutil.which('node'), shutil.which('npm')
    assert node and npm, 'the MCP tests need Node and npm from Debian (scripts/install-deps --test)'
    stamp = os.path.join(NODE_DIR, 'node_modules', '.package-lock.json')
    lock = os.path.join(NODE_DIR, 'package-lock.json')
    if not os.path.exists(stamp) or os.path.getmtime(stamp) < os.path.getmtime(lock):
        r = subprocess.run([npm, 'ci', '--prefer-offline', '--no-audit', '--no-fund', '--loglevel=error'], cwd=NODE_DIR,
                           capture_output=True, text=True)
        assert r.returncode == 0, 'npm ci in tests/node failed:\n' + r.stdout + r.stderr
    return node


class Driver:
    """tests/node/mcp_driver.mjs: the SDK client, one command per line."""

    def __init__(self, node):
        self.proc = subprocess.Popen([node, DRIVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, cwd=NODE_DIR)

    def cmd(self, op, **kw):
        self.proc.stdin.write(json.dumps({'op': op, **kw}) + '\n')
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, 'the driver died: ' + self.proc.stderr.read()
        return json.loads(line)

    def call(self, name, arguments):
        """A tool call that must succeed: its result (the orchfs reply's "result")."""
        r = self.cmd('callTool', name=name, arguments=arguments)
        assert r.get('isError') is False, r
        assert json.loads(r['content'][0]['text']) == r['structuredContent'], r
        return r['structuredContent']['result']

    def close(self):
        assert self.cmd('close') == {}
        self.proc.stdin.close()
        assert self.proc.wait(timeout=30) == 0
        err = self.proc.stderr.read()  # the server's stderr too (inherited)
        assert not BAD_OUTPUT.search(err), err


def test_sdk_client_full_session(mount, node_modules):
    d = Driver(node_modules)
    hello = d.cmd('connect', command=ORCHFS, args=['mcp', '--repo', str(mount.repo), '--state', mount.state])
    assert hello['serverVersion']['name'] == 'orchfs', hello
    assert hello['capabilities'] == {'tools': {'listChanged': False}}
    assert str(mount.repo) in hello['instructions']
    assert d.cmd('ping') == {}

    listed = d.cmd('listTools')
    assert 'thrown' not in listed, listed
    assert listed['schemaErrors'] == {}
    assert listed.get('nextCursor') is None
    methods = methods_json()
    tools = {t['name']: t for t in listed['tools']}
    assert sorted(tools) == sorted(tool_name(m['name']) for m in methods)
    for m in methods:
        t = tools[tool_name(m['name'])]
        assert t['title'] == m['name'] and t['annotations']['readOnlyHint'] == (not m['write'])
        assert t['description'].startswith(m['summary'])

    opened = d.call('session_open', {'agent_role': 'implementer', 'owner': 'mcp'})
    sid = opened['session_context']['session']['id']
    assert mount.read_json('sessions', str(sid), 'session.json')['owner'] == 'mcp'
    feature = d.call('task_create', {'level': 'feature', 'title': 'login'})
    case = d.call('task_create', {'level': 'case', 'title': 'bad password', 'parent_id': feature['id']})
    assert mount.read_json('tasks', str(case['id']), 'task.json') == case
    assert d.call('case_begin', {'case_id': case['id'], 'session_id': sid})['status'] == 'in_progress'
    step = d.call('step_check', {'case_id': case['id'], 'session_id': sid, 'step_title': 'unit',
                                 'result': 'pass'})
    assert mount.read_json('tasks', str(case['id']), 'steps.json') == [step]
    assert d.call('case_complete', {'case_id': case['id'], 'session_id': sid})['status'] == 'done'
    # A read-only tool; the dotted method name is accepted as the tool name too.
    assert d.call('task.get', {'task_id': case['id']})['status'] == 'done'

    lock = d.call('lock_acquire', {'scope_type': 'prefix', 'scope_path': 'src', 'owner_session': str(sid)})
    assert mount.read_json('locks', f'{lock["id"]}.json') == lock
    # Errors are tool results: isError, the orchfs error object as text and structuredContent.
    r = d.cmd('callTool', name='lock_acquire', arguments={'scope_type': 'file', 'scope_path': 'src/a.c',
                                                           'owner_session': 'other'})
    assert r['isError'] is True, r
    err = r['structuredContent']['error']
    assert err['code'] == 'conflict' and err['details']['lock']['id'] == lock['id']
    assert json.loads(r['content'][0]['text']) == {'error': err}
    r = d.cmd('callTool', name='task_create', arguments={'level': 'epic', 'titel': 'typo'})
    assert r['isError'] is True and r['structuredContent']['error']['code'] == 'invalid_params', r
    r = d.cmd('callTool', name='task_get', arguments={'task_id': 999})
    assert r['isError'] is True and r['structuredContent']['error']['code'] == 'not_found', r
    # An unknown tool is a protocol error.
    r = d.cmd('callTool', name='no_such_tool', arguments={})
    assert r.get('code') == -32602 and 'no_such_tool' in r['thrown'], r

    assert d.call('lock_release', {'lock_id': lock['id'], 'owner_session': str(sid)})['state'] == 'released'
    assert f'{lock["id"]}.json' not in os.listdir(mount.p('locks'))
    assert d.call('session_close', {'session_id': sid})['status'] == 'closed'
    assert mount.read_json('sessions', str(sid), 'session.json')['status'] == 'closed'
    d.close()


class Raw:
    """`orchfs mcp` spoken to directly, one JSON-RPC message per line."""

    def __init__(self, repo, state):
        self.proc = subprocess.Popen([ORCHFS, 'mcp', '--repo', str(repo), '--state', str(state)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def send(self, data):
        self.proc.stdin.write((data if isinstance(data, str) else json.dumps(data)).encode() + b'\n')
        self.proc.stdin.flush()

    def recv(self):
        line = self.proc.stdout.readline()
        assert line.endswith(b'\n'), line
        return json.loads(line)

    def request(self, id_, method, params=None):
        msg = {'jsonrpc': '2.0', 'id': id_, 'method': method}
        if params is not None:
            msg['params'] = params
        self.send(msg)
        r = self.recv()
        assert r['jsonrpc'] == '2.0' and r['id'] == id_, r
        return r

    def initialize(self, version):
        return self.request(0, 'initialize', {'protocolVersion': version, 'capabilities': {},
                                              'clientInfo': {'name': 'raw', 'version': '0'}})

    def close(self):
        self.proc.stdin.close()
        rest = self.proc.stdout.read()
        assert self.proc.wait(timeout=30) == 0 and rest == b''
        err = self.proc.stderr.read().decode(errors='replace')
        assert not BAD_OUTPUT.search(err), err


@pytest.fixture
def raw(mount):
    r = Raw(mount.repo, mount.state)
    yield r
    if r.proc.poll() is None:
        r.close()


@pytest.mark.parametrize('asked, got', [(v, v) for v in VERSIONS] + [('2099-01-01', '2025-11-25'),
                                                                      ('2024-10-07', '2025-11-25')])
def test_version_negotiation(mount, asked, got):
    raw = Raw(mount.repo, mount.state)
    r = raw.initialize(asked)['result']
    assert r['protocolVersion'] == got and r['serverInfo']['name'] == 'orchfs'
    assert r['capabilities'] == {'tools': {'listChanged': False}}
    raw.send({'jsonrpc': '2.0', 'method': 'notifications/initialized'})
    tool = next(t for t in raw.request(1, 'tools/list')['result']['tools'] if t['name'] == 'task_get')
    # Fields of later versions only where they exist.
    assert ('annotations' in tool) == (got >= '2025-03-26')
    assert ('title' in tool) == (got >= '2025-06-18')
    res = raw.request(2, 'tools/call', {'name': 'task_get', 'arguments': {'task_id': 1}})['result']
    assert res['isError'] is True
    assert ('structuredContent' in res) == (got >= '2025-06-18')
    assert json.loads(res['content'][0]['text'])['error']['code'] == 'not_found'
    raw.close()


def test_protocol_corners(raw):
    r = raw.request(0, 'initialize', {'capabilities': {}})
    assert r['error']['code'] == -32602 and 'protocolVersion' in r['error']['message']
    raw.initialize('2025-06-18')
    # Notifications get no reply, whatever they are; the next line is the ping's.
    raw.send({'jsonrpc': '2.0', 'method': 'notifications/initialized'})
    raw.send({'jsonrpc': '2.0', 'method': 'notifications/cancelled', 'params': {'requestId': 5}})
    raw.send({'jsonrpc': '2.0', 'method': 'no/such/notification', 'params': [1]})
    raw.send({'jsonrpc': '2.0', 'method': 'tools/call', 'params': {'name': 'task_create',
                                                                   'arguments': {'level': 'epic', 'title': 'n'}}})
    # A response from the client (this server sends no requests) is ignored.
    raw.send({'jsonrpc': '2.0', 'id': 'x', 'result': {}})
    assert raw.request('p', 'ping') == {'jsonrpc': '2.0', 'id': 'p', 'result': {}}
    # A request sent as a notification (no id) is not run: nobody would get its reply.
    res = raw.request(1, 'tools/call', {'name': 'task_list', 'arguments': {}})['result']
    assert res['structuredContent']['result'] == []
    assert raw.request(2, 'resources/list')['error']['code'] == -32601
    assert raw.request(3, 'tools/call', {'arguments': {}})['error']['code'] == -32602
    assert raw.request(4, 'tools/call', [1])['error']['code'] == -32602
    # Arguments that are no object, or missing: the method says so (or runs with {}).
    res = raw.request(5, 'tools/call', {'name': 'task_get', 'arguments': [1]})['result']
    assert res['isError'] and res['structuredContent']['error']['code'] == 'invalid_params'
    res = raw.request(6, 'tools/call', {'name': 'mirror_status'})['result']
    assert not res['isError'] and res['structuredContent']['result']['db_version'] == 0
    # Parse errors and invalid requests: id null where the id is unknown.
    raw.send('{"jsonrpc": "2.0", "id": 7, "method": "ping"')
    assert raw.recv()['error']['code'] == -32700
    raw.send('"just a string"')
    r = raw.recv()
    assert r['id'] is None and r['error']['code'] == -32600
    raw.send({'jsonrpc': '1.0', 'id': 8, 'method': 'ping'})
    assert raw.recv() == {'jsonrpc': '2.0', 'id': 8, 'error': raw_error(-32600)}
    raw.send({'jsonrpc': '2.0', 'id': None, 'method': 'ping'})
    r = raw.recv()
    assert r['id'] is None and r['error']['code'] == -32600
    # Batches: one reply per request, none for notifications; an empty batch is invalid.
    raw.send([{'jsonrpc': '2.0', 'id': 9, 'method': 'ping'}, {'jsonrpc': '2.0', 'method': 'notifications/x'},
              {'jsonrpc': '2.0', 'id': 10, 'method': 'nope'}])
    r = raw.recv()
    assert [x['id'] for x in r] == [9, 10] and r[1]['error']['code'] == -32601
    raw.send([])
    assert raw.recv()['error']['code'] == -32600
    raw.send([{'jsonrpc': '2.0', 'method': 'notifications/x'}])
    # A message over 1 MiB is refused once (id null) and skipped; serving goes on.
    raw.send({'jsonrpc': '2.0', 'id': 11, 'method': 'tools/call',
              'params': {'name': 'task_create', 'arguments': {'level': 'epic', 'title': 'x' * (2 << 20)}}})
    r = raw.recv()
    assert r['id'] is None and r['error']['code'] == -32600 and '1048576' in r['error']['message'], r
    assert raw.request(12, 'ping')['result'] == {}


def tool(raw, id_, name, arguments):
    """tools/call; the orchfs reply ({"result"} or {"error"})."""
    res = raw.request(id_, 'tools/call', {'name': name, 'arguments': arguments})['result']
    return json.loads(res['content'][0]['text'])


def test_kill_9_of_mcp_frees_the_session_opened_through_it(mount, raw):
    raw.initialize('2025-06-18')
    sid = tool(raw, 1, 'session_open', {'agent_role': 'implementer', 'heartbeat_timeout_seconds': 1})[
        'result']['session_context']['session']['id']
    case = tool(raw, 2, 'task_create', {'level': 'case', 'title': 'c'})['result']
    tool(raw, 3, 'case_begin', {'case_id': case['id'], 'session_id': sid, 'input_contract': {}})
    lock = tool(raw, 4, 'lock_acquire', {'scope_type': 'file', 'scope_path': 'm.c', 'owner_session': str(sid)})[
        'result']
    requester = mount.ok('session.open', {'agent_role': 'reviewer', 'worktree': False})[
        'session_context']['session']['id']
    time.sleep(1.3)
    listed = lambda t: [c['session']['id'] for c in mount.ok(
        'resume.candidates.list', {'requester_session_id': requester, 'heartbeat_timeout_seconds': t})]
    assert sid not in listed(1)   # held by the mcp process, no heartbeats
    raw.proc.send_signal(signal.SIGKILL)
    raw.proc.wait()
    assert sid in listed(3600)    # at once
    r = mount.orchfs_call('lock.acquire', {'scope_type': 'file', 'scope_path': 'm.c',
                                           'owner_session': str(requester)})
    assert r.returncode == 0, r.stderr
    assert not os.path.exists(mount.p('locks', f"{lock['id']}.json"))


def test_wait_runs_beside_other_calls_and_cancelled_ends_it(mount, raw):
    raw.initialize('2025-06-18')
    holder = mount.ok('session.open', {'agent_role': 'implementer', 'worktree': False})[
        'session_context']['session']['id']
    lock = mount.ok('lock.acquire', {'scope_type': 'file', 'scope_path': 'w.c'}, session=holder)
    wait = {'name': 'wait', 'arguments': {'on': {'lock_id': lock['id']}, 'timeout_ms': 30000}}
    raw.send({'jsonrpc': '2.0', 'id': 'w1', 'method': 'tools/call', 'params': wait})
    raw.send({'jsonrpc': '2.0', 'id': 'w2', 'method': 'tools/call', 'params': wait})
    # Other requests are answered while both wait.
    assert raw.request('p', 'ping')['result'] == {}
    assert tool(raw, 't', 'task_list', {})['result'] == []
    # The client gives w1 up: it ends, and no response ever comes for it.
    raw.send({'jsonrpc': '2.0', 'method': 'notifications/cancelled', 'params': {'requestId': 'w1'}})
    time.sleep(0.3)
    t0 = time.monotonic()
    mount.ok('lock.release', {'lock_id': lock['id']}, session=holder)
    r = raw.recv()
    assert time.monotonic() - t0 < 1.0
    assert r['id'] == 'w2' and r['result']['isError'] is False, r
    assert r['result']['structuredContent']['result']['lock']['state'] == 'released'
    raw.close()   # nothing more on stdout: w1 got no response


def raw_error(code):
    """Matches any JSON-RPC error object with this code."""
    class AnyMessage(dict):
        def __eq__(self, other):
            return isinstance(other, dict) and other.get('code') == code and isinstance(other.get('message'), str)
    return AnyMessage(code=code)


# ---------------------------------------------------------------- one table, four faces

JSON_TYPES = {'id': 'integer', 'int': 'integer', 'string': 'string', 'bool': 'boolean', 'json': None,
              'strings': 'array', 'paths': 'array', 'path': 'string', 'objects': 'array',
              'owner': None}
USAGE_PARAM = re.compile(r'^( +)(\S+) +(.+?), (required|optional)\. ?(.*)$')


def usage_sections(text):
    """The parts of a ctl usage text: summary, params {name: (type text, required, doc, indent)}, ..."""
    head, _, rest = text.partition('\n')
    name, _, summary = head.partition(' — ')
    params = []
    inp = rest.split('Input: one JSON object with these keys.\n', 1)[1].split('\n\n', 1)[0]
    for line in inp.splitlines():
        if line == '  (none)':
            continue
        m = USAGE_PARAM.match(line)
        assert m, line
        params.append((len(m[1]), m[2], m[3], m[4] == 'required', m[5]))
    output = re.search(r'\nOutput: (.*?)\n\nExample', rest, re.S)[1]
    example = re.search(r"\n  exec 3<>ctl/\S+; echo '(.*)' >&3; cat <&3\n", rest)[1]
    errors = re.search(r'\nErrors \(.*?\):\n  (.*?)\n  invalid_json', rest, re.S)[1]
    return dict(name=name, summary=summary, params=params, output=output, example=json.loads(example),
                errors=errors)


def nest(flat, indent=2):
    """Usage param lines (indent, name, type, required, doc) as a tree {name: {..., items}}."""
    out, i = {}, 0
    while i < len(flat):
        ind, name, typ, req, doc = flat[i]
        assert ind == indent, flat[i]
        j = i + 1
        while j < len(flat) and flat[j][0] > indent:
            j += 1
        out[name] = dict(type_text=typ, required=req, doc=doc, items=nest(flat[i + 1:j], indent + 4) or None)
        i = j
    return out


def readme_methods():
    """`- \\`name {a, b?, c: [{d, e?}]}\\`` entries of the README's Methods section: {name: {key: ...}}."""
    text = open(os.path.join(ROOT, 'README.md')).read()
    section = text.split('\n## Methods\n', 1)[1].split('\n## ', 1)[0]
    found = {}
    for m in re.finditer(r'^- `([a-z_.]+) \{([^`"]*)\}`', section, re.M):
        assert m[1] not in found, 'listed twice in the README: ' + m[1]
        found[m[1]] = readme_keys(' '.join(m[2].split()))
    return found


def readme_keys(text):
    items, depth, cur = [], 0, ''
    for ch in text:
        depth += ch in '[{'
        depth -= ch in ']}'
        if ch == ',' and depth == 0:
            items.append(cur)
            cur = ''
        else:
            cur += ch
    items.append(cur)
    keys = {}
    for it in (x.strip() for x in items):
        if not it:
            continue
        m = re.fullmatch(r'([a-z_]+)(\?)?(?::\s*\[\{(.*)\}(?:,\s*…)?\])?', it)
        assert m, 'README key not understood: ' + it
        keys[m[1]] = dict(required=not m[2], items=readme_keys(m[3]) if m[3] else None)
    return keys


def check_params(method, params, usage, schema, readme, where):
    """One level of parameters: table vs usage vs JSON Schema vs README."""
    names = [p['name'] for p in params]
    assert list(usage) == names, (method, where, 'usage', list(usage), names)
    assert sorted(readme) == sorted(names), (method, where, 'README', sorted(readme), sorted(names))
    props = dict(schema['properties'])
    if where == '':
        assert props.pop('call_id')['pattern'] == '^[A-Za-z0-9._:-]{1,64}$'
    assert list(props) == names, (method, where, 'schema', list(props), names)
    assert sorted(schema.get('required', [])) == sorted(p['name'] for p in params if p['required'])
    assert schema['additionalProperties'] is False
    for p in params:
        u, s, r = usage[p['name']], props[p['name']], readme[p['name']]
        at = (method, where + p['name'])
        assert u['required'] == p['required'] == r['required'], at
        assert u['doc'] == p['doc'], at
        assert s['description'] == (f"{u['type_text']}. {p['doc']}" if p['doc'] else u['type_text']), at
        assert s.get('type') == JSON_TYPES[p['type']], at
        if p['type'] == 'id':
            assert s['minimum'] == 1, at
        if p['type'] == 'owner':  # a session as its id's string or the id itself
            assert [a['type'] for a in s['anyOf']] == ['string', 'integer'], at
        if p['type'] in ('strings', 'paths'):
            assert s['items'] == {'type': 'string'}, at
        if p['type'] == 'objects':
            check_params(method, p['items'], u['items'], s['items'], r['items'], where + p['name'] + '[].')
        else:
            assert u['items'] is None and r['items'] is None, at


def test_one_table_agreement(mount):
    methods = methods_json()
    names = [m['name'] for m in methods]
    assert len(set(names)) == len(names)
    assert sorted(os.listdir(mount.p('ctl'))) == sorted(names)
    readme = readme_methods()
    assert sorted(readme) == sorted(names), ('README vs table', sorted(set(readme) ^ set(names)))

    raw = Raw(mount.repo, mount.state)
    raw.initialize('2025-11-25')
    tools = raw.request(1, 'tools/list')['result']['tools']
    raw.close()
    assert [t['title'] for t in tools] == names
    assert len({t['name'] for t in tools}) == len(names)
    by_title = {t['title']: t for t in tools}

    for m in methods:
        with open(mount.p('ctl', m['name'])) as f:
            usage = usage_sections(f.read())
        tool = by_title[m['name']]
        assert tool['name'] == tool_name(m['name'])
        assert usage['name'] == m['name']
        assert usage['summary'] == m['summary']
        assert usage['output'] == m['output']
        assert usage['errors'] == m['errors']
        assert usage['example'] == m['example'] == tool['inputSchema']['examples'][0], m['name']
        desc = tool['description']
        assert desc.startswith(m['summary'] + '\n\nOutput: ' + m['output'] + '\n\nErrors: ' + m['errors'])
        assert json.loads(desc.split('\n\nExample arguments: ', 1)[1].split('\n', 1)[0]) == m['example']
        assert tool['annotations']['readOnlyHint'] == (not m['write'])
        usage_params = nest(usage['params'])
        assert usage_params.pop('call_id')['type_text'] == 'string'
        check_params(m['name'], m['params'], usage_params, tool['inputSchema'], readme[m['name']], '')
        # The example uses only keys the schema knows and gives the required ones.
        schema = tool['inputSchema']
        assert set(m['example']) <= set(schema['properties']), m['name']
        assert set(schema.get('required', [])) <= set(m['example']), m['name']
