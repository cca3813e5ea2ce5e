"""The KL warm-up given as fractions of the run: the published 200-epoch recipes unchanged, short
runs warmed up over the same share, and resume checks that treat both spellings as one."""

import pytest

from bayescomp import objectives, runs


@pytest.mark.parametrize("value,epochs,expected", [
    (0.025, 200, 5.0), (0.1, 200, 20.0), (0.1, 20, 2.0), (5, 200, 5.0), (0, 10, 0.0),
    (1, 10, 1.0), (20.0, 10, 20.0)])
def test_fractions_of_the_run_and_epochs(value, epochs, expected):
    assert objectives.warmup_epoch(value, epochs) == expected


def test_the_default_fractions_give_the_published_epochs_bit_for_bit(compose):
    cfg = compose(["+experiment=lenet5_ghs"])
    warmup, epochs = cfg.trainer.kl_warmup, int(cfg.trainer.epochs)
    assert epochs == 200
    start = objectives.warmup_epoch(warmup.start_epoch, epochs)
    end = objectives.warmup_epoch(warmup.end_epoch, epochs)
    # Every epoch's β equals that of the (5, 20) recipe the published runs were trained with.
    assert [objectives.kl_weight(e, start, end) for e in range(epochs)] == [
        objectives.kl_weight(e, 5, 20) for e in range(epochs)]


def test_a_short_run_warms_up_over_the_same_share(compose):
    cfg = compose(["+experiment=lenet300_svd", "trainer.epochs=20"])
    warmup = cfg.trainer.kl_warmup
    betas = [objectives.kl_weight(e, objectives.warmup_epoch(warmup.start_epoch, 20),
                                  objectives.warmup_epoch(warmup.end_epoch, 20))
             for e in range(20)]
    assert betas[0] == 0.0 and betas[1] == pytest.approx(0.5 / 1.5) and betas[2:] == [1.0] * 18


def test_epochs_and_fractions_are_one_trajectory(compose):
    as_epochs = compose(["+experiment=lenet300_svd", "trainer.kl_warmup.start_epoch=5",
                         "trainer.kl_warmup.end_epoch=20"])
    as_fractions = compose(["+experiment=lenet300_svd"])
    assert runs.trajectory_config(as_epochs) == runs.trajectory_config(as_fractions)
    # Trained for longer: the warm-up resolved with the checkpoint's run length still matches.
    longer = compose(["+experiment=lenet300_svd", "trainer.epochs=300"])
    assert runs.trajectory_config(longer, warmup_run_epochs=200) == runs.trajectory_config(
        as_epochs)
    changed = compose(["+experiment=lenet300_svd", "trainer.kl_warmup.end_epoch=0.2"])
    assert runs.trajectory_config(changed) != runs.trajectory_config(as_fractions)
