"""Hosts for the cluster tests: network namespaces on one bridge, made and removed by the test.

`bridged(prefix, subnet, n)` makes a hub namespace `<prefix>h` holding a bridge and one veth pair
per host namespace `<prefix>n1..n` (address `<subnet>.i/24`), yields, and removes them all, even
when the test fails.  Nothing reaches another network.
"""
import contextlib
import subprocess


def ip(*args):
    subprocess.run(['ip', *args], check=True, capture_output=True, text=True)


@contextlib.contextmanager
def bridged(prefix, subnet, n=3):
    hub = f'{prefix}h'
    try:
        ip('netns', 'add', hub)
        ip('-n', hub, 'link', 'add', 'br0', 'type', 'bridge')
        ip('-n', hub, 'link', 'set', 'br0', 'up')
        for i in range(1, n + 1):
            ns = f'{prefix}n{i}'
            ip('netns', 'add', ns)
            ip('-n', hub, 'link', 'add', f'v{i}', 'type', 'veth', 'peer', 'name', 'eth0', 'netns', ns)
            ip('-n', hub, 'link', 'set', f'v{i}', 'master', 'br0', 'up')
            ip('-n', ns, 'addr', 'add', f'{subnet}.{i}/24', 'dev', 'eth0')
            ip('-n', ns, 'link', 'set', 'eth0', 'up')
            ip('-n', ns, 'link', 'set', 'lo', 'up')
        yield
    finally:
        for i in range(1, n + 1):
            subprocess.run(['ip', 'netns', 'del', f'{prefix}n{i}'], capture_output=True)
        subprocess.run(['ip', 'netns', 'del', hub], capture_output=True)
