"""The digit classifier: held-out accuracy, cache round trip, stacked labelling."""
import torch

from shrinkscope.reference.classifier import classify_stacked, load_classifier, train_classifier
from shrinkscope.reference.data import stacked_digits


def test_accuracy_and_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SHRINKSCOPE_CACHE", str(tmp_path))
    model = load_classifier()
    assert model.held_out_accuracy >= 0.97
    assert (tmp_path / "digit_classifier_v1.pt").exists()
    again = load_classifier()  # from the cache: same weights
    for p, q in zip(model.parameters(), again.parameters()):
        assert torch.equal(p, q)
    d = stacked_digits(n_train=10, n_test=300, seed=0)
    modes, feats = classify_stacked(again, d.test)
    assert feats.shape == (300, 192)
    # three digits right at ~98% each: most stacked modes are exact
    assert float((modes == d.test_modes).float().mean()) > 0.9


def test_training_is_deterministic():
    (m1, a1), (m2, a2) = train_classifier(epochs=2), train_classifier(epochs=2)
    assert a1 == a2
    assert all(torch.equal(p, q) for p, q in zip(m1.parameters(), m2.parameters()))
