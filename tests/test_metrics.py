import math

import torch

from dae_core.metrics import confusion_matrix, per_class_accuracy


def test_confusion_rows_are_true_classes():
    labels = torch.tensor([0, 0, 1, 1, 1, 2])
    predicted = torch.tensor([0, 1, 1, 1, 0, 2])
    confusion = confusion_matrix(predicted, labels)
    assert confusion.shape == (10, 10)
    assert confusion[0].tolist()[:3] == [1, 1, 0]
    assert confusion[1].tolist()[:3] == [1, 2, 0]
    assert confusion.sum() == 6
    accuracy = per_class_accuracy(confusion)
    assert accuracy[:3] == [50.0, 200.0 / 3, 100.0]
    assert math.isnan(accuracy[3])
