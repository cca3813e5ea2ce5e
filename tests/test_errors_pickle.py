"""Every user-facing error survives pickling: Hydra's joblib and submitit launchers pickle a
failed job's exception back to the sweep's process, and an error that cannot be rebuilt there
breaks the whole sweep instead of reporting one job."""

import inspect
import pickle

import pytest

import bayescomp.errors as errors
from bayescomp.pruning import RuinousPruningError


def _examples():
    for name, cls in sorted(vars(errors).items()):
        if inspect.isclass(cls) and issubclass(cls, errors.BayescompError):
            if cls is errors.DiskFullError:
                yield cls("/runs/x", "metrics.json", "No space left on device",
                          kept="the checkpoint of epoch 3 is kept", advice="free space")
            else:
                yield cls(f"a {name} message")
    yield RuinousPruningError("fc3 keeps 0 of 100 units", emptied=["fc3"])


@pytest.mark.parametrize("error", list(_examples()), ids=lambda e: type(e).__name__)
def test_error_pickles_with_its_message(error):
    again = pickle.loads(pickle.dumps(error))
    assert type(again) is type(error)
    assert str(again) == str(error)
    if isinstance(error, errors.DiskFullError):
        assert (again.directory, again.kept, again.advice) == (error.directory, error.kept,
                                                               error.advice)
