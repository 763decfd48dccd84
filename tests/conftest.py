import numpy as np
import pytest
import torch

# the test problems are tiny: one thread avoids oversubscription on small CI machines
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)  # noqa: NPY002 - legacy global state used by some callers


def observed_orders(hs, errs):
    """Least-squares slope of log(err) against log(h), and the pairwise slopes."""
    hs, errs = np.asarray(hs, float), np.asarray(errs, float)
    slope = np.polyfit(np.log(hs), np.log(errs), 1)[0]
    pair = np.log(errs[:-1] / errs[1:]) / np.log(hs[:-1] / hs[1:])
    return slope, pair
