"""Adversarial examples, adversarial training and poison detection, through the Adversarial Robustness
Toolbox.

Nothing here is hand-written attack code: ``fgsm`` is ART's ``FastGradientMethod`` (one signed-gradient step
of size ε, Goodfellow et al. 2015), ``pgd`` its ``ProjectedGradientDescent`` (Madry et al. 2018: ``steps``
steps of 2.5 ε / steps inside the L∞ ball, one random start), ``adversarial_fit`` ART's ``AdversarialTrainer``
(FGSM, half clean and half adversarial batches, as Goodfellow et al.) or ``AdversarialTrainerMadryPGD`` (PGD,
every batch adversarial), and ``detect_poison`` ART's ``ActivationDefence`` (Chen et al. 2018: 2-means per
class on the last hidden layer's activations, reduced by PCA to 10 dimensions; the smaller cluster of each
class flagged — ART's default heuristic) or ``SpectralSignatureDefense`` (Tran et al. 2018, on the layer ART
takes: the logits). This module supplies what ART needs: a ``PyTorchClassifier`` around a ``torch.nn.Module``
with the data's clip range, and seeds for the random parts (ART draws from ``numpy.random``).

ε is given in the model's input units (the caller converts from pixel units). What this module does not know:
the store, datasets or how models were trained.
"""

from __future__ import annotations

import numpy as np
import torch


def classifier(
    module: torch.nn.Module, num_features: int, num_classes: int, clip: tuple[float, float], lr: float = 1e-3
):
    from art.estimators.classification import PyTorchClassifier

    gpu = next(module.parameters()).is_cuda  # ART keeps the model on its device: a GPU model stays there
    return PyTorchClassifier(
        module,
        loss=torch.nn.CrossEntropyLoss(),
        input_shape=(num_features,),
        nb_classes=num_classes,
        clip_values=clip,
        optimizer=torch.optim.Adam(module.parameters(), lr=lr),
        device_type="gpu" if gpu else "cpu",
    )


def _onehot(y: np.ndarray, k: int) -> np.ndarray:
    return np.eye(k, dtype=np.float32)[np.asarray(y)]


def fgsm(clf, x: np.ndarray, y: np.ndarray, eps: float) -> np.ndarray:
    from art.attacks.evasion import FastGradientMethod

    if eps == 0:
        return np.asarray(x, np.float32).copy()
    return FastGradientMethod(clf, eps=eps, norm=np.inf, batch_size=512).generate(
        np.asarray(x, np.float32), y=_onehot(y, clf.nb_classes)
    )


def pgd(clf, x: np.ndarray, y: np.ndarray, eps: float, steps: int = 10, seed: int = 0) -> np.ndarray:
    from art.attacks.evasion import ProjectedGradientDescent

    if eps == 0:
        return np.asarray(x, np.float32).copy()
    np.random.seed(seed)
    return ProjectedGradientDescent(
        clf,
        norm=np.inf,
        eps=eps,
        eps_step=2.5 * eps / steps,
        max_iter=steps,
        num_random_init=1,
        batch_size=512,
        verbose=False,
    ).generate(np.asarray(x, np.float32), y=_onehot(y, clf.nb_classes))


def adversarial_fit(
    clf,
    x: np.ndarray,
    y: np.ndarray,
    kind: str,
    eps: float,
    epochs: int,
    batch: int,
    steps: int = 10,
    seed: int = 0,
) -> None:
    """Train ``clf`` in place on adversarial examples made against itself as it trains."""
    from art.attacks.evasion import FastGradientMethod
    from art.defences.trainer import AdversarialTrainer, AdversarialTrainerMadryPGD

    np.random.seed(seed)
    torch.manual_seed(seed)
    x, yy = np.asarray(x, np.float32), _onehot(y, clf.nb_classes)
    if kind == "fgsm":
        AdversarialTrainer(clf, FastGradientMethod(clf, eps=eps, norm=np.inf), ratio=0.5).fit(
            x, yy, nb_epochs=epochs, batch_size=batch
        )
    elif kind == "pgd":
        AdversarialTrainerMadryPGD(
            clf,
            nb_epochs=epochs,
            batch_size=batch,
            eps=eps,
            eps_step=2.5 * eps / steps,
            max_iter=steps,
            num_random_init=1,
        ).fit(x, yy)
    else:
        raise ValueError(f"adversarial training is 'fgsm' or 'pgd', not {kind!r}")


def detect_poison(clf, x: np.ndarray, y: np.ndarray, method: str, expected: float = 0.1) -> np.ndarray:
    """Which training rows the defence flags as poison (bool [N]). ``expected``: the spectral defence's prior
    share of poison (fixed by the caller, never the true share)."""
    from art.defences.detector.poison import ActivationDefence, SpectralSignatureDefense

    class LastHidden(ActivationDefence):
        """ART's activation clustering on the last hidden layer, as Chen et al. 2018 cluster (ART takes the
        classifier's last layer, here the logits)."""

        def _get_activations(self, x_train=None):
            a = self.classifier.get_activations(
                self.x_train, layer=len(self.classifier.layer_names) - 2, batch_size=128
            )
            return np.reshape(a, (len(a), -1))

    x, yy = np.asarray(x, np.float32), _onehot(y, clf.nb_classes)
    np.random.seed(0)
    if method == "activation_clustering":
        _, clean = LastHidden(clf, x, yy).detect_poison(nb_clusters=2, nb_dims=10, reduce="PCA")
    elif method == "spectral_signature":
        _, clean = SpectralSignatureDefense(clf, x, yy, expected_pp_poison=expected).detect_poison()
    else:
        raise ValueError(
            f"poison detection is 'activation_clustering' or 'spectral_signature', not {method!r}"
        )
    return np.asarray(clean) == 0
