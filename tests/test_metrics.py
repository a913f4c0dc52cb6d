"""ACC, ASR and RA from ``evaluate`` on hand-built classifiers whose answers are known in advance."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nad.attacks import BadNets
from nad.data.dataset import ImageData
from nad.metrics import Scores, accuracy, defense_effectiveness, evaluate, predict
from nad.models.checkpoint import Classifier, ModelInfo

K = 4
N = 20


class PixelOracle(nn.Module):
    """Predicts the label written in pixel (0, 0) of channel 0, unless the image carries the BadNets grid
    (its bottom-right pixel is 255) and is marked 'susceptible' in pixel (0, 1): then it predicts class 0."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        encoded = torch.round(x[:, 0, 0, 0] * 255).long() % self.num_classes
        triggered = x[:, 0, -1, -1] > 0.99
        susceptible = x[:, 0, 0, 1] > 0.5
        pred = torch.where(triggered & susceptible, torch.zeros_like(encoded), encoded)
        return nn.functional.one_hot(pred, self.num_classes).float()


class AlwaysZero(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(len(x), K)
        logits[:, 0] = 1.0
        return logits


def oracle_data() -> ImageData:
    """20 images of 4 balanced classes (y = i % 4). Pixel (0, 0) holds the label for images 0-14 and a wrong
    label (y + 1) % 4 for images 15-19; images 0-9 are marked susceptible to the trigger."""
    y = torch.arange(N) % K
    x = torch.zeros(N, 1, 32, 32, dtype=torch.uint8)
    encoded = torch.where(torch.arange(N) < 15, y, (y + 1) % K)
    x[:, 0, 0, 0] = encoded.to(torch.uint8)
    x[:10, 0, 0, 1] = 255
    return ImageData(x, y, K, "oracle")


def classifier(module: nn.Module) -> Classifier:
    return Classifier(module, ModelInfo("custom", K, (1, 32, 32)))


def test_oracle_predictions_on_clean_images():
    data = oracle_data()
    preds = predict(classifier(PixelOracle(K)), data.x, batch_size=7)  # several batches
    expected = torch.where(torch.arange(N) < 15, data.y, (data.y + 1) % K)
    assert torch.equal(preds, expected)


def test_evaluate_counts_acc_asr_and_ra_exactly():
    data = oracle_data()
    clf = classifier(PixelOracle(K))
    scores = evaluate(clf, data, BadNets(target=0))
    # ACC: images 0-14 are classified correctly, 15-19 are not: 15 / 20.
    assert scores.acc == pytest.approx(75.0)
    # The ASR set is the 15 non-target images (target 0 = indices 0, 4, 8, 12, 16 are left out).
    # Of those, the susceptible ones (indices < 10: 1, 2, 3, 5, 6, 7, 9) go to class 0, and so do
    # 15 and 19, whose pixel encodes the wrong label (3 + 1) % 4 = 0: 9 / 15.
    # (Were the target class counted, 0, 4, 8 and 12 would add to it: 13 / 20 = 65%.)
    assert scores.asr == pytest.approx(100 * 9 / 15)
    # RA: triggered non-target images still given their true label: 10, 11, 13, 14 -> 4 / 15.
    assert scores.ra == pytest.approx(100 * 4 / 15)


def test_evaluate_with_another_target():
    data = oracle_data()
    # Target 1: the model never sends triggered images to class 1 except where pixel (0, 0) says 1
    # for a non-susceptible non-target image: index 16 (y = 0, encoded 1). Non-target images: 15.
    scores = evaluate(classifier(PixelOracle(K)), data, BadNets(target=1))
    assert scores.asr == pytest.approx(100 * 1 / 15)


def test_always_target_model():
    data = oracle_data()
    clf = classifier(AlwaysZero())
    scores = evaluate(clf, data, BadNets(target=0))
    assert scores.acc == pytest.approx(25.0)  # 5 of the 20 images are class 0
    assert scores.asr == pytest.approx(100.0)
    assert scores.ra == pytest.approx(0.0)
    assert evaluate(clf, data, BadNets(target=2)).asr == pytest.approx(0.0)


def test_all2all_asr():
    data = oracle_data()
    # Triggered images go to class 0 when susceptible; all2all wants (y + 1) % 4, which is 0 for y = 3.
    # Susceptible images with y = 3: indices 3 and 7. Non-susceptible with encoded label == (y + 1) % 4:
    # indices 15-19 (they encode exactly (y + 1) % 4). So 2 + 5 of 20.
    scores = evaluate(classifier(PixelOracle(K)), data, BadNets(target=0, mode="all2all"))
    assert scores.asr == pytest.approx(100 * 7 / 20)


def test_test_set_excludes_target_class_images():
    data = oracle_data()
    triggered = BadNets(target=0).test_set(data)
    assert len(triggered) == 15
    source_labels = triggered.x[:, 0, 0, 0].long()  # the pixel still holds the (possibly wrong) encoded label
    expected = torch.where(torch.arange(N) < 15, data.y, (data.y + 1) % K)[data.y != 0]
    assert torch.equal(source_labels, expected)
    assert (triggered.x[:, 0, -1, -1] == 255).all()
    assert (triggered.y == 0).all()


def test_evaluate_without_attack_and_empty_data():
    data = oracle_data()
    scores = evaluate(classifier(PixelOracle(K)), data)
    assert scores == Scores(75.0)
    assert scores.asr is None
    empty = ImageData(torch.zeros(0, 1, 32, 32, dtype=torch.uint8), torch.zeros(0, dtype=torch.long), K)
    assert accuracy(classifier(PixelOracle(K)), empty) != accuracy(classifier(PixelOracle(K)), empty)  # nan


def test_predict_puts_the_module_in_eval_mode():
    module = PixelOracle(K).train()
    predict(classifier(module), oracle_data().x)
    assert not module.training


def test_scores_to_json_rounds_and_drops_missing_ra():
    assert Scores(12.3456, 7.891, None).to_json() == {"acc": 12.35, "asr": 7.89}
    assert Scores(1.0, 2.0, 3.004).to_json() == {"acc": 1.0, "asr": 2.0, "ra": 3.0}
    assert Scores(50.0).to_json() == {"acc": 50.0, "asr": None}


def test_defense_effectiveness():
    before, after = Scores(90.0, 100.0), Scores(85.0, 10.0)
    assert defense_effectiveness(before, after) == pytest.approx((0.90 - 0.05 + 1) / 2)
    # An ASR rise or an ACC gain counts as zero change.
    assert defense_effectiveness(Scores(80.0, 10.0), Scores(90.0, 20.0)) == pytest.approx(0.5)
    assert defense_effectiveness(Scores(80.0), Scores(90.0, 20.0)) is None
