"""Bad input for every method and every field: a typed error, the right errno,
and nothing changed.  The fields come from tests/fs/contract.py, a list kept by
hand apart from the code; `orchfs methods --json` must agree with it."""
import errno
import json
import subprocess

import pytest

from conftest import ORCHFS
from contract import CONTRACT


def as_table(params):
    out = []
    for name, ptype, required, *items in params:
        p = {'name': name, 'type': ptype, 'required': required}
        if items:
            p['items'] = as_table(items[0])
        out.append(p)
    return out


# The methods as the contract lists them (not as the code under test says).
METHODS = [{'name': name, 'params': as_table(params)} for name, params in CONTRACT.items()]
TABLE = json.loads(subprocess.run([ORCHFS, 'methods', '--json'], capture_output=True, text=True,
                                  check=True).stdout)


def strip(params):
    return [{k: (strip(v) if k == 'items' else v) for k, v in p.items() if k in ('name', 'type', 'required', 'items')}
            for p in params]


def test_method_table_matches_the_contract():
    code = {m['name']: strip(m['params']) for m in TABLE}
    missing = sorted(set(CONTRACT) - set(code))
    unlisted = sorted(set(code) - set(CONTRACT))
    assert not missing, f'methods of the contract the daemon lacks: {missing}'
    assert not unlisted, f'methods not in tests/fs/contract.py (add them there): {unlisted}'
    for m in METHODS:
        assert code[m['name']] == m['params'], m['name']

GOOD = {'id': 1, 'int': 1, 'string': 'x', 'bool': True, 'json': {}, 'strings': ['a'], 'paths': ['a'],
        'path': 'a', 'objects': [], 'owner': 'x'}
BAD = {
    'id': ['1', 0, -1, 1.5, True, [1]],
    'int': ['1', 1.5, {}, False],
    'string': [1, [], {}, True],
    'bool': ['true', 1, []],
    'json': [],
    'strings': ['a', [1], {}, [None]],
    'paths': ['a', [1], ['/etc'], ['../x'], [''], ['a/../../b']],
    'path': [1, '/etc', '../x', '', ['a']],
    'objects': ['x', [1], {}],
    'owner': [0, -1, 1.5, True, [], {}],
}


def baseline(params):
    """A request whose every required key has a well-typed value."""
    req = {}
    for p in params:
        if p['required']:
            if p['type'] == 'objects':
                req[p['name']] = [baseline(p['items'])]
            else:
                req[p['name']] = GOOD[p['type']]
    return req


def cases():
    for m in METHODS:
        for p in m['params']:
            for bad in BAD[p['type']]:
                yield pytest.param(m['name'], p['name'], bad, id=f"{m['name']}-{p['name']}-{json.dumps(bad)}")
            if p['required']:
                yield pytest.param(m['name'], p['name'], KeyError, id=f"{m['name']}-{p['name']}-missing")
        yield pytest.param(m['name'], 'no_such_key', 1, id=f"{m['name']}-unknown-key")


@pytest.fixture(scope='module')
def shared_mount(tmp_path_factory):
    from conftest import Mount, make_repo
    tmp = tmp_path_factory.mktemp('validation')
    m = Mount(make_repo(tmp / 'repo'), tmp / 'mnt', tmp / 'state', str(tmp / 'orchfs.log'))
    (tmp / 'mnt').mkdir()
    m.start()
    m.ok('session.open')
    m.ok('task.create', {'level': 'case', 'title': 'c'})
    yield m
    m.stop()
    assert 'Sanitizer' not in open(m.log).read()


@pytest.mark.parametrize('method,field,value', list(cases()))
def test_bad_field(shared_mount, method, field, value):
    m = next(x for x in METHODS if x['name'] == method)
    req = baseline(m['params'])
    if value is KeyError:
        del req[field]
    else:
        req[field] = value
    v = shared_mount.db_version()
    e = shared_mount.fails(method, req, 'invalid_params', errno.EINVAL)
    assert field in e['message'], e
    assert shared_mount.db_version() == v


@pytest.mark.parametrize('method', [m['name'] for m in METHODS])
def test_not_an_object_and_malformed(shared_mount, method):
    v = shared_mount.db_version()
    for body in ['[]', '"x"', '1 ', 'null ', 'true ']:
        shared_mount.fails(method, body, 'invalid_params', errno.EINVAL)
    for body in ['{"a": }', '{]', '{"a" 1}', '{} {}']:
        shared_mount.fails(method, body, 'invalid_json', errno.EINVAL)
    assert shared_mount.db_version() == v


def test_project_readme_documents_every_method():
    import os
    from conftest import ROOT
    text = open(os.path.join(ROOT, 'README.md')).read()
    missing = [m['name'] for m in METHODS if f"`{m['name']} " not in text and f"`{m['name']}`" not in text]
    assert not missing, f'README.md does not document {missing}'
