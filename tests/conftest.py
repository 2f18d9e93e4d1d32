"""Test-session settings: with pytest-xdist's workers sharing the machine's cores, each worker's torch uses one
thread (several threads per worker oversubscribe the cores and slow the float model many times over); and the
tests marked `long(seconds)` run first, longest first. `pdm run test` hands the workers tests two at a time
(`--maxschedchunk 2`), so each takes the longest left when it is free and both end together (with xdist's
default chunks of a quarter of the suite, one worker could be left alone with the longest tests at the end)."""

import os

if os.environ.get("PYTEST_XDIST_WORKER"):
    try:
        import torch
    except ModuleNotFoundError:   # torch is an optional group
        pass
    else:
        torch.set_num_threads(1)


def pytest_collection_modifyitems(items):
    def seconds(item):
        mark = item.get_closest_marker("long")
        return mark.args[0] if mark else 0
    items.sort(key=seconds, reverse=True)      # stable: the others keep their order, module by module
