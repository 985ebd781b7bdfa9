import torch

from dae_core.model import DenoisingAutoencoder, EncoderClassifier, encoder_surgery, l1_sparsity


def test_autoencoder_shapes_and_ranges():
    model = DenoisingAutoencoder(400)
    reconstruction, hidden = model(torch.rand(5, 784))
    assert reconstruction.shape == (5, 784) and hidden.shape == (5, 400)
    assert reconstruction.min() >= 0 and reconstruction.max() <= 1
    assert hidden.abs().max() <= 1


def test_l1_gradient_matches_its_definition():
    hidden = (torch.rand(6, 7, dtype=torch.float64) - 0.5).requires_grad_()
    assert torch.autograd.gradcheck(l1_sparsity, (hidden,))
    l1_sparsity(hidden).backward()
    # d/dh mean|h| = sign(h) / (B * H): weight w adds w * sign(h) / (B * H) per activation.
    assert torch.allclose(hidden.grad, torch.sign(hidden.detach()) / hidden.numel())


def test_surgery_keeps_the_trained_encoder_and_outputs_log_probabilities():
    autoencoder = DenoisingAutoencoder(32)
    with torch.no_grad():
        autoencoder.encoder[0].weight.add_(1.0)
    classifier = encoder_surgery(autoencoder)
    assert isinstance(classifier, EncoderClassifier)
    assert torch.equal(classifier.encoder[0].weight, autoencoder.encoder[0].weight)
    assert torch.equal(classifier.encoder[0].bias, autoencoder.encoder[0].bias)
    # A copy: training the classifier must not change the pretrained autoencoder.
    assert classifier.encoder[0].weight.data_ptr() != autoencoder.encoder[0].weight.data_ptr()
    assert not hasattr(classifier, "decoder")
    log_probabilities = classifier(torch.rand(4, 784))
    assert log_probabilities.shape == (4, 10)
    assert torch.allclose(log_probabilities.exp().sum(dim=1), torch.ones(4), atol=1e-6)
    assert (log_probabilities <= 0).all()
