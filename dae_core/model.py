"""The lecture's networks: a one-hidden-layer denoising autoencoder and the classifier
made from its encoder by surgery."""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
from torch import nn

from dae_core.shapes import INPUT_DIM, NUM_CLASSES


class DenoisingAutoencoder(nn.Module):
    """Encoder Linear(784, H) + Tanh, decoder Linear(H, 784) + Sigmoid."""

    def __init__(self, hidden_units: int = 400) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(INPUT_DIM, hidden_units), nn.Tanh())
        self.decoder = nn.Sequential(nn.Linear(hidden_units, INPUT_DIM), nn.Sigmoid())

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 784) -> reconstruction (B, 784) and hidden code (B, H)."""
        hidden = self.encoder(pixels)
        return self.decoder(hidden), hidden


def l1_sparsity(hidden: torch.Tensor) -> torch.Tensor:
    """Mean absolute hidden activation over the batch and the units.

    With weight w the penalty adds w * sign(h) / (B * H) to the gradient of each
    activation, the same normalisation as the MSE term's 2 * (y - x) / (B * 784).
    A per-unit sum (w * sign(h) on every unit) swamps the reconstruction term and holds
    the MSE near the blank-image level; see docs/reproduction.md.
    """
    return hidden.abs().mean()


class EncoderClassifier(nn.Module):
    """A pretrained (or fresh) encoder followed by Linear(H, 10) + LogSoftmax."""

    def __init__(self, encoder: nn.Sequential) -> None:
        super().__init__()
        hidden_units = encoder[0].out_features
        self.encoder = encoder
        self.head = nn.Sequential(nn.Linear(hidden_units, NUM_CLASSES), nn.LogSoftmax(dim=1))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 784) -> log-probabilities (B, 10)."""
        return self.head(self.encoder(pixels))


def encoder_surgery(autoencoder: DenoisingAutoencoder) -> EncoderClassifier:
    """Drop the decoder and put a fresh classification head on a copy of the encoder."""
    return EncoderClassifier(copy.deepcopy(autoencoder.encoder))


class ClassProbabilities(nn.Module):
    """What is registered and served: the classifier's per-class probabilities,
    (B, 784) pixels in [0, 1] -> (B, 10), each row summing to 1."""

    def __init__(self, classifier: EncoderClassifier) -> None:
        super().__init__()
        self.classifier = classifier

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.classifier(pixels).exp()


def probabilities_from_weights(weights: Mapping[str, torch.Tensor]) -> ClassProbabilities:
    """The served module rebuilt from its weights (``ClassProbabilities.state_dict()``, the
    names a torch.export program of it keeps): the hidden width is read off the encoder;
    any other key or shape is refused by ``load_state_dict``."""
    hidden_units = weights["classifier.encoder.0.weight"].shape[0]
    served = ClassProbabilities(EncoderClassifier(nn.Sequential(nn.Linear(INPUT_DIM, hidden_units), nn.Tanh())))
    served.load_state_dict(weights, strict=True)
    return served.eval()
