"""The synthetic dataset: shapes, determinism, learnability."""

import numpy as np

from bayescomp.data import load_dataset
from bayescomp.data.synthetic import make_synthetic


def test_shapes_dtypes_and_balanced_labels():
    data = load_dataset("synthetic", seed=0)
    assert data.source == "synthetic" and data.num_classes == 10
    assert data.x_train.shape == (512, 28, 28, 1) and data.x_test.shape == (256, 28, 28, 1)
    assert data.x_train.dtype == data.x_test.dtype == np.float32
    assert data.y_train.dtype == data.y_test.dtype == np.int32
    assert set(np.bincount(data.y_train, minlength=10)) <= {51, 52}
    np.testing.assert_allclose(data.x_train.mean(axis=0, dtype=np.float64), 0.0, atol=1e-6)


def test_same_seed_same_data_other_seed_other_samples():
    first, again, other = make_synthetic(3), make_synthetic(3), make_synthetic(4)
    for field in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(first, field), getattr(again, field))
    assert not np.array_equal(first.x_train, other.x_train)


def test_learnable_by_a_linear_model_in_few_steps():
    # Full-batch softmax regression, 50 gradient steps: a stand-in for the smoke-run MLP.
    data = load_dataset("synthetic", seed=1)
    features = data.x_train.reshape(len(data.x_train), -1)
    weights = np.zeros((features.shape[1], 10), np.float32)
    one_hot = np.eye(10, dtype=np.float32)[data.y_train]
    for _ in range(50):
        logits = features @ weights
        probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))
        probabilities /= probabilities.sum(axis=1, keepdims=True)
        weights -= 0.01 * features.T @ (probabilities - one_hot) / len(features)
    predictions = (data.x_test.reshape(len(data.x_test), -1) @ weights).argmax(axis=1)
    accuracy = (predictions == data.y_test).mean()
    assert accuracy > 0.5, accuracy  # chance is 0.1
