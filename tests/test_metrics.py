"""Metrics agree with scikit-learn computed directly, edge cases included."""
import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from mmcore.metrics import accuracy, auroc, compute_metrics, f1_macro, f1_micro, metric_for


def _softmax(x: np.ndarray) -> np.ndarray:
    z = np.exp(x - x.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def test_multiclass_metrics_match_sklearn(rng):
    logits = rng.normal(size=(200, 5))
    labels = rng.integers(0, 5, size=200)
    pred = logits.argmax(1)
    assert accuracy(logits, labels) == pytest.approx(skm.accuracy_score(labels, pred))
    assert f1_macro(logits, labels) == pytest.approx(skm.f1_score(labels, pred, average="macro"))
    assert f1_micro(logits, labels) == pytest.approx(skm.f1_score(labels, pred, average="micro"))
    expected = skm.roc_auc_score(labels, _softmax(logits), multi_class="ovr", average="macro")
    assert auroc(logits, labels) == pytest.approx(expected)


def test_multiclass_class_never_seen_counts_zero_in_f1_macro(rng):
    logits = rng.normal(size=(60, 4))
    logits[:, 3] = -10.0  # class 3 never predicted
    labels = rng.integers(0, 3, size=60)  # and never true
    expected = skm.f1_score(labels, logits.argmax(1), average="macro", labels=[0, 1, 2, 3],
                            zero_division=0)
    assert f1_macro(logits, labels) == pytest.approx(expected)
    assert f1_macro(logits, labels) < skm.f1_score(labels, logits.argmax(1), average="macro")


def test_multilabel_metrics_match_sklearn_with_an_empty_class(rng):
    logits = rng.normal(size=(100, 6))
    labels = (rng.random((100, 6)) < 0.3).astype(np.int64)
    labels[:, 2] = 0  # a genre with no positives
    pred = (logits > 0).astype(np.int64)  # sigmoid > 0.5
    for fn, average in ((f1_macro, "macro"), (f1_micro, "micro")):
        assert fn(logits, labels) == pytest.approx(
            skm.f1_score(labels, pred, average=average, zero_division=0))
    defined = [c for c in range(6) if c != 2]
    with pytest.warns(UserWarning, match="1 of 6"):
        value = auroc(logits, labels)
    assert value == pytest.approx(
        np.mean([skm.roc_auc_score(labels[:, c], logits[:, c]) for c in defined]))


@pytest.mark.parametrize("task_type", ["multiclass", "multilabel", "binary"])
def test_tied_and_quantised_scores_match_sklearn(rng, task_type):
    """Ties (scores rounded to one decimal, e.g. a constant fill's logits) are where a rank-sum
    AUROC and a threshold-sweep AUROC could part: each tie counts one half in both."""
    logits = np.round(rng.normal(size=(300, 4)), 1)
    if task_type == "multilabel":
        labels = (rng.random((300, 4)) < 0.3).astype(np.int64)
        pred = (logits > 0).astype(np.int64)
        aucs = [skm.roc_auc_score(labels[:, c], logits[:, c]) for c in range(4)]
        expected = {"f1_macro": skm.f1_score(labels, pred, average="macro", zero_division=0),
                    "f1_micro": skm.f1_score(labels, pred, average="micro", zero_division=0),
                    "auroc": np.mean(aucs)}
    elif task_type == "binary":
        logits = logits[:, :2]
        labels = rng.integers(0, 2, size=300)
        pred = logits.argmax(1)
        expected = {"auroc": skm.roc_auc_score(labels, _softmax(logits)[:, 1]),
                    "accuracy": skm.accuracy_score(labels, pred),
                    "f1_macro": skm.f1_score(labels, pred, average="macro")}
    else:
        labels = rng.integers(0, 4, size=300)
        pred = logits.argmax(1)
        expected = {"accuracy": skm.accuracy_score(labels, pred),
                    "f1_macro": skm.f1_score(labels, pred, average="macro"),
                    "auroc": skm.roc_auc_score(labels, _softmax(logits), multi_class="ovr")}
    got = compute_metrics(logits, torch.from_numpy(labels), task_type)
    assert got == pytest.approx(expected, rel=1e-6)


def test_binary_auroc_for_two_logits_and_for_one(rng):
    labels = rng.integers(0, 2, size=150)
    two = rng.normal(size=(150, 2))
    one = rng.normal(size=150)
    assert auroc(two, labels) == pytest.approx(skm.roc_auc_score(labels, _softmax(two)[:, 1]))
    assert auroc(one, labels) == pytest.approx(skm.roc_auc_score(labels, one))
    assert auroc(one[:, None], labels) == pytest.approx(skm.roc_auc_score(labels, one))
    assert accuracy(one, labels) == pytest.approx(skm.accuracy_score(labels, one > 0))


def test_auroc_is_nan_when_only_one_class_is_present(rng):
    with pytest.warns(UserWarning):
        assert np.isnan(auroc(rng.normal(size=(10, 2)), np.ones(10, dtype=np.int64)))


def test_torch_bf16_inputs_give_the_numpy_answer(rng):
    logits = rng.normal(size=(64, 3)).astype(np.float32)
    labels = rng.integers(0, 3, size=64)
    as_bf16 = torch.from_numpy(logits).bfloat16()
    expected = accuracy(as_bf16.float().numpy(), labels)
    assert accuracy(as_bf16, torch.from_numpy(labels)) == pytest.approx(expected)


@pytest.mark.parametrize("task, name", [("multiclass", "accuracy"), ("multilabel", "f1_macro"),
                                        ("binary", "auroc")])
def test_metric_for_gives_the_protocol_headline(task, name, rng):
    metric = metric_for(task)
    assert metric.name == name
    if task == "multilabel":
        logits, labels = rng.normal(size=(40, 3)), (rng.random((40, 3)) < 0.5).astype(int)
    else:
        logits, labels = rng.normal(size=(40, 2)), rng.integers(0, 2, size=40)
    result = compute_metrics(logits, labels, task)
    assert next(iter(result)) == name
    assert result[name] == pytest.approx(metric.fn(logits, labels))


def test_unknown_task_and_shape_mismatches_are_errors(rng):
    with pytest.raises(ValueError, match="unknown task type 'regression'"):
        metric_for("regression")
    with pytest.raises(ValueError, match="rows"):
        accuracy(rng.normal(size=(5, 2)), np.zeros(4, dtype=int))
    with pytest.raises(ValueError, match="multi-hot"):
        compute_metrics(rng.normal(size=(5, 3)), np.zeros(5, dtype=int), "multilabel")


def test_unlabelled_rows_are_refused():
    labels = np.array([0, 1, -100, 1])
    with pytest.raises(ValueError, match="unlabelled"):
        compute_metrics(np.zeros((4, 2)), labels, "binary")
