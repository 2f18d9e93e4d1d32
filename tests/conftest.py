"""Test-session settings: with pytest-xdist's workers sharing the machine's cores, each worker's torch uses one
thread (several threads per worker oversubscribe the cores and slow the float model many times over)."""

import os

if os.environ.get("PYTEST_XDIST_WORKER"):
    try:
        import torch
    except ModuleNotFoundError:   # torch is an optional group
        pass
    else:
        torch.set_num_threads(1)
