"""The man page orchfs(1): installed by meson, well-formed, and naming every command of the usage."""
import json
import os
import re
import subprocess

from conftest import ORCHFS, ROOT

PAGE = os.path.join(ROOT, 'doc', 'orchfs.1')


def test_meson_installs_the_man_page():
    build = os.path.dirname(os.path.abspath(ORCHFS))
    r = subprocess.run(['meson', 'introspect', build, '--installed'], capture_output=True, text=True, check=True)
    installed = json.loads(r.stdout)
    assert installed.get(PAGE, '').endswith('/share/man/man1/orchfs.1'), installed


def test_man_page_renders_without_warnings_and_covers_the_usage():
    r = subprocess.run(['groff', '-man', '-Tutf8', '-ww', PAGE], capture_output=True, text=True)
    assert r.returncode == 0 and r.stderr == '', r.stderr
    text = re.sub(r'.\x08', '', r.stdout)  # drop overstriking (bold, underline)
    usage = subprocess.run([ORCHFS, '--help'], capture_output=True, text=True).stdout
    commands = [line.split()[1] for line in usage.splitlines() if line.startswith('  orchfs ')]
    assert {'mount', 'umount', 'call', 'serve', 'mcp', 'methods', '--version'} <= set(commands), usage
    for line in usage.splitlines():
        if line.startswith('  orchfs '):
            # The synopsis line of each command says what the usage says.
            assert ' '.join(line.split()) in ' '.join(text.split()), line
    version = subprocess.run([ORCHFS, '--version'], capture_output=True, text=True).stdout.split()[-1]
    assert f'orchfs {version}' in text
