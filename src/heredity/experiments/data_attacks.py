"""Data attacks and uncertainty on digit classifiers: what a model inherits from poisoned data, from its
initialization and from its siblings, and whether it knows when it does not know.

Methods (the models are ``subliminal-digits``' MLPs, in → w → w → classes, trained as stacked seeds):

0. Data: scikit-learn's 8×8 digits (or MNIST with ``data``), pixels scaled to [−1, 1]; ε is quoted in pixel
   units of [0, 1] (the literature's), i.e. 2ε in the model's units.
1. **Poisoning** — every poisoned set is a ``poison-digits`` step (its lineage records the attack and its
   parameters; the rows it changed are marked): random label flips at ``flip_rates``; a targeted flip (a share
   of the ``source`` digits relabelled ``target``); a BadNets trigger (a bright corner square → label
   ``patch_target``) at absolute ``counts`` and at several hidden ``widths``. Per model: clean test accuracy
   and attack success (triggered test images of other classes classified as the target). A detection defence
   from ART (activation clustering, spectral signatures) on each trigger-poisoned training set, scored by the
   precision and recall of the rows it flags.
2. **Adversarial examples** (ART's FGSM and PGD) at ``eps`` against standard, FGSM-trained and PGD-trained
   models. **Transfer between siblings**: PGD examples crafted on model A are tested on B (A's initialization,
   the same data in another order) and on C (another initialization, B's data order): B and C differ in the
   initialization only.
3. **Uncertainty**: models trained on digits 0..``in_classes``−1 (every fifth training row held out to fit a
   temperature); scores: max softmax, temperature-scaled max softmax, MC dropout (``mc_passes`` passes of a
   dropout-trained model), the dropout-trained models in one pass without sampling (the arm that differs from
   max softmax in training only and from MC dropout in inference only), and ensembles of ``ensemble_size``
   (``ensembles`` disjoint groups of stacked seeds; max softmax scores the first group's members).
   In distribution: the test images of those classes (accuracy, NLL, ECE). Out of distribution: the other
   digits, uniform noise, and the in-distribution test images rotated by each of ``angles`` (a shift sweep);
   AUROC and FPR at 95% TPR of each score. Also: does max softmax flag PGD inputs and triggered inputs?

Unit of replication: training seeds for every interval (t intervals over the seeds' values, clipped to the
quantity's range; a rate that does not vary over seeds gets each seed's Wilson interval over its own test
images, the widest, and says so — an image is never counted once per seed); the ensembles are the unit for
ensemble scores. The planned contrasts and their two Holm families are declared from the config before the
run (``planned``): claims about training (paired t over seeds, interval clipped to [−1, 1]; the exact sign
test over seeds where every seed's difference is the same), and claims about the trained models (each
poisoned model against its unpoisoned twin on the same test images, McNemar per model, the largest p: every
model). Arms compared differ in one thing: MC dropout against the same dropout models in one pass, those
against max softmax, an ensemble against its own members, temperature scaling against the same models
unscaled.

The statistics are in ``data_attacks_stats``, the report's rendering in ``data_attacks_render``.
"""

from __future__ import annotations

import json
import math
import time

import numpy as np
import torch
from pydantic import BaseModel, Field, model_validator

from heredity.experiments import experiment
from heredity.experiments import subliminal_digits as digits
from heredity.experiments.data_attacks_render import markdown, outcome, plot
from heredity.experiments.data_attacks_stats import (
    DETECTORS,
    DROPOUT_ONE_PASS,
    NUM_CLASSES,
    OOD_SETS,
    compare,
    families,
    paired_table,
    seed_mean,
    seed_rate,
)

# re-exported: the statistics a caller (and the tests) reach through the experiment module
from heredity.experiments.data_attacks_stats import MODELS as MODELS
from heredity.experiments.data_attacks_stats import TRAINING as TRAINING
from heredity.experiments.data_attacks_stats import every_model as every_model
from heredity.experiments.data_attacks_stats import n_trig as n_trig
from heredity.experiments.data_attacks_stats import needed_count as needed_count
from heredity.experiments.data_attacks_stats import outcomes as outcomes
from heredity.experiments.data_attacks_stats import planned as planned
from heredity.experiments.data_attacks_stats import seed_contrast as seed_contrast
from heredity.store import Store, read_table, write_table
from heredity.store.ops import op


class Config(BaseModel):
    data: str = Field(
        "digits", description="'digits' (scikit-learn 8x8), an MNIST IDX directory or an .npz file"
    )
    seeds: int = Field(5, ge=2, description="training seeds per model (the unit of replication)")
    hidden: int = Field(256, ge=2)
    epochs: int = Field(20, ge=1)
    batch: int = Field(64, ge=1)
    lr: float = Field(1e-3, gt=0)
    flip_rates: list[float] = Field(default_factory=lambda: [0.0, 0.05, 0.1, 0.2, 0.4])
    targeted_source: int = 7
    targeted_target: int = 1
    targeted_fraction: float = Field(0.5, ge=0, le=1)
    counts: list[int] = Field(
        default_factory=lambda: [0, 10, 50, 100, 250, 500], description="trigger-poisoned rows"
    )
    widths: list[int] = Field(default_factory=lambda: [64, 256, 1024])
    patch_size: int = Field(2, ge=1)
    patch_target: int = 0
    detectors: list[str] = Field(default_factory=lambda: list(DETECTORS))
    detect_expected: float = Field(
        0.1, gt=0, lt=1, description="the spectral defence's prior share of poison (fixed)"
    )
    eps: list[float] = Field(
        default_factory=lambda: [0.0, 0.05, 0.1, 0.2, 0.3], description="L∞ budgets, [0, 1] pixel units"
    )
    train_eps: float = Field(0.2, gt=0, description="adversarial training's ε (pixel units)")
    pgd_steps: int = Field(10, ge=1)
    in_classes: int = Field(5, ge=2, le=9, description="uncertainty models see digits 0..in_classes-1")
    ensembles: int = Field(5, ge=2)
    ensemble_size: int = Field(5, ge=2)
    dropout: float = Field(0.1, gt=0, lt=1)
    mc_passes: int = Field(30, ge=2)
    angles: list[int] = Field(default_factory=lambda: [0, 15, 30, 45, 60, 90])
    noise_images: int = Field(500, ge=10)
    flag_eps: float = Field(0.1, gt=0, description="the PGD budget of the inputs uncertainty should flag")
    flag_count: int = Field(
        250, ge=1, description="the trigger count of the model whose triggered inputs are scored"
    )
    model: str = Field(
        "mlp",
        description="mlp (stacked, fast on a CPU) or resnet (a small ResNet per model, for "
        "CIFAR-10; hidden/widths are then its channels)",
    )
    seed: int = 0

    @model_validator(mode="after")
    def _check(self):
        if self.model not in ("mlp", "resnet"):
            raise ValueError(f"model must be mlp or resnet, not {self.model!r}")
        bad = sorted(set(self.detectors) - set(DETECTORS))
        if bad:
            raise ValueError(f"unknown detector {bad[0]!r}; detectors are {', '.join(DETECTORS)}")
        if self.flag_count not in self.counts:
            raise ValueError(f"flag_count {self.flag_count} must be one of counts {self.counts}")
        if self.hidden not in self.widths:
            raise ValueError(
                f"hidden {self.hidden} must be one of widths {self.widths} (detection runs at it)"
            )
        if self.flag_eps not in self.eps:
            raise ValueError(f"flag_eps {self.flag_eps} must be one of eps {self.eps}")
        return self

    @classmethod
    def presets(cls) -> dict[str, Config]:
        return {
            "quick": cls(),
            # MNIST scale: give the IDX files with --data DIR
            "paper": cls(
                epochs=10, batch=128, counts=[0, 50, 100, 250, 500, 1000], widths=[64, 256, 1024, 2048]
            ),
            # CIFAR-10 with small ResNets (give cifar-10-batches-py with --data DIR; a GPU is used if there
            # is one)
            "paper-cifar": cls(
                model="resnet",
                hidden=16,
                widths=[8, 16, 32],
                epochs=30,
                batch=128,
                lr=1e-3,
                counts=[0, 50, 100, 250, 500, 1000],
                train_eps=8 / 255,
                eps=[0.0, 2 / 255, 4 / 255, 8 / 255],
                flag_eps=4 / 255,
                patch_size=3,
                noise_images=1000,
            ),
        }

    def spec(self, **kw) -> TrainSpec:
        kind = ResNetSpec if self.model == "resnet" else TrainSpec
        return kind(
            **{
                "hidden": self.hidden,
                "seeds": self.seeds,
                "init_seed": 2 * self.seed,
                "order_seed": self.seed,
                "epochs": self.epochs,
                "batch": self.batch,
                "lr": self.lr,
                "pgd_steps": self.pgd_steps,
                **kw,
            }
        )


# ---- the recipe ---------------------------------------------------------------------------------


@experiment(
    "data-attacks", question="Poisoned rows, adversarial examples between siblings, knowing when not to know"
)
def run(store: Store, config: Config, progress: bool = True) -> dict:
    from heredity.reports.card import save_card

    t0 = time.perf_counter()
    declared = families(config)  # the Holm families, fixed from the config before any model is trained
    log = (lambda *a: print(*a, flush=True)) if progress else (lambda *a: None)
    data_id = digits.data_step(store, config.data)
    log("[1] poisoning: label flips, a targeted flip, a trigger at counts × widths; detection")
    pois = poisoning(store, data_id, config, progress)
    log(
        "[2] adversarial examples: FGSM and PGD against standard, FGSM- and PGD-trained models; "
        "sibling transfer"
    )
    adv = adversarial(store, data_id, config, progress)
    trig = next(
        b["model"] for b in pois["badnets"] if b["width"] == config.hidden and b["count"] == config.flag_count
    )
    log("[3] uncertainty: max softmax, temperature, MC dropout, ensembles; OOD and rotation")
    unc = uncertainty(
        store, data_id, config, {"standard": adv["models"]["standard"], "triggered": trig}, progress
    )
    report = {
        "experiment": "data-attacks",
        "config": config.model_dump(),
        "families": declared,
        "data": data_id,
        "train_rows": int(store.step_of(data_id).metrics["train"]),
        "poisoning": pois,
        "adversarial": adv,
        "uncertainty": unc,
    }
    report["comparisons"] = compare(report, config)
    report["seconds"] = round(time.perf_counter() - t0, 1)
    report["outcome"] = outcome(report, config)
    models = (
        pois["models"]
        + list(adv["models"].values())
        + [adv["siblings"]["B"], adv["siblings"]["C"]]
        + list(unc["models"].values())
    )
    card = save_card(store, "data-attacks", report, list(dict.fromkeys(models)), markdown, plot)
    return {**card, "lineage_of": trig}


# ---- data ---------------------------------------------------------------------------------------


def _arrays(store: Store, data_id: str) -> dict:
    t = read_table(store.path(data_id))
    col = t.column("pixels").combine_chunks()
    return {
        "raw": col.flatten().to_numpy().reshape(len(col), -1),
        "y": t.column("label").to_numpy().astype(np.int64),
        "split": np.asarray(t.column("split").to_pylist()),
        "poisoned": (
            np.asarray(t.column("poisoned").to_pylist())
            if "poisoned" in t.column_names
            else np.zeros(len(col), bool)
        ),
        "scale": float(store.get(data_id).meta["scale"]),
    }


def unit(raw: np.ndarray, scale: float) -> np.ndarray:
    from heredity.data.digits import to_unit_range

    return to_unit_range(raw, scale).astype(np.float32)


@op("poison-digits", 1)
def poison_step(store: Store, data_id: str, attack: dict) -> str:
    """A poisoned copy of the digits (train rows only; test rows untouched), the rows changed marked
    ``poisoned``."""

    def fn(ctx):
        a = _arrays(store, data_id)
        raw, labels, marked = _poisoned_copy(a, attack)
        out = ctx.output(
            "data",
            "dataset",
            f"digits-{attack['attack']}",
            meta={"scale": a["scale"], "attack": attack, "poisoned_rows": int(marked.sum())},
        )
        write_table(out, _digits_table(raw, labels, a["split"], marked))
        return {"poisoned_rows": int(marked.sum())}

    return store.run_step("poison-digits", attack, [data_id], fn)["data"]


def _poisoned_copy(a: dict, attack: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The dataset's pixels and labels with ``attack`` applied to its training rows, and which rows it
    changed."""
    from heredity.data import poison

    tr = np.flatnonzero(a["split"] == "train")
    x, y = a["raw"][tr].astype(np.int64), a["y"][tr]
    kind = attack["attack"]
    if kind == "label_flip":
        x2, y2, rows = poison.label_flip(x, y, attack["rate"], NUM_CLASSES, attack["seed"])
    elif kind == "targeted_flip":
        x2, y2, rows = poison.targeted_flip(
            x, y, attack["source"], attack["target"], attack["fraction"], attack["seed"]
        )
    elif kind == "badnets":
        x2, y2, rows = poison.badnets(
            x, y, attack["count"], attack["target"], attack["size"], int(a["scale"]), attack["seed"]
        )
    else:
        raise ValueError(f"unknown attack {kind!r}")
    raw, lab, mark = a["raw"].copy(), a["y"].copy(), np.zeros(len(a["y"]), bool)
    raw[tr], lab[tr] = x2.astype(raw.dtype), y2
    mark[tr[rows]] = True
    return raw, lab, mark


def _digits_table(raw: np.ndarray, labels: np.ndarray, split: np.ndarray, poisoned: np.ndarray):
    """The dataset as an arrow table (pixels as fixed-size uint8 lists), with the ``poisoned`` marks."""
    import pyarrow as pa

    pixels = pa.FixedSizeListArray.from_arrays(pa.array(raw.reshape(-1), pa.uint8()), raw.shape[1])
    return pa.table({"pixels": pixels, "label": labels, "split": split.tolist(), "poisoned": poisoned})


# ---- models -------------------------------------------------------------------------------------


class TrainSpec(BaseModel):
    """One stack of MLPs: what a ``train-digit-mlps`` step trains (every field can change the weights)."""

    hidden: int = 256
    seeds: int = 5
    init_seed: int = 0
    order_seed: int = 0
    epochs: int = 20
    batch: int = 64
    lr: float = 1e-3
    dropout: float = 0.0
    classes: int = NUM_CLASSES  # train on the labels < classes (a head of that size)
    holdout: bool = False  # leave out every fifth training row (for fitting a temperature)
    adversarial: str | None = None  # None, "fgsm" or "pgd" (through ART)
    eps: float = 0.0  # adversarial training's ε, in model units
    pgd_steps: int = 10


class ResNetSpec(TrainSpec):
    """A stack of small ResNets (``hidden`` = the first stage's channels; stages hidden, 2·hidden, 4·hidden),
    each model trained on its own (no stacking), from ``torch.manual_seed(init_seed · 7919 + i)``."""

    model: str = "resnet"


forward = digits.mlp_forward  # stacked MLP logits [n, B, out], optional train-mode dropout


def member(params: list[torch.Tensor], i: int, dropout: float = 0.0) -> torch.nn.Sequential:
    """Stacked model ``i`` as a plain ``nn.Sequential`` (what ART wraps)."""
    k = len(params) // 2
    layers: list[torch.nn.Module] = []
    for j in range(k):
        w, b = params[j][i], params[k + j][i, 0]
        lin = torch.nn.Linear(w.shape[0], w.shape[1])
        with torch.no_grad():
            lin.weight.copy_(w.T)
            lin.bias.copy_(b)
        layers.append(lin)
        if j < k - 1:
            layers += [torch.nn.ReLU()] + ([torch.nn.Dropout(dropout)] if dropout else [])
    return torch.nn.Sequential(*layers)


def stack(members: list[torch.nn.Sequential]) -> list[torch.Tensor]:
    lins = [[m for m in s if isinstance(m, torch.nn.Linear)] for s in members]
    ws = [torch.stack([ls[j].weight.detach().T for ls in lins]) for j in range(len(lins[0]))]
    bs = [torch.stack([ls[j].bias.detach()[None] for ls in lins]) for j in range(len(lins[0]))]
    return ws + bs


class _Image(torch.nn.Module):
    """Flat pixels [B, C·H·W] -> images [B, C, H, W] (attacks and data stay flat)."""

    def __init__(self, shape: tuple[int, int, int]):
        super().__init__()
        self.shape = tuple(shape)

    def forward(self, x):
        return x.reshape(len(x), *self.shape)


class _Block(torch.nn.Module):
    """A basic residual block: two 3×3 convolutions with batch norm, a 1×1 projection when the shape
    changes."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        nn = torch.nn
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(),
            nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
            nn.BatchNorm2d(cout),
        )
        self.skip = (
            nn.Identity()
            if stride == 1 and cin == cout
            else nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        )

    def forward(self, x):
        return torch.relu(self.body(x) + self.skip(x))


def resnet(
    shape: tuple[int, int, int], classes: int, width: int, dropout: float = 0.0
) -> torch.nn.Sequential:
    """A ResNet-8 (stem + three blocks at width, 2·width, 4·width; global average pool) as a Sequential whose
    second-to-last layer is the pooled features (what activation clustering reads) and last the class head."""
    nn = torch.nn
    return nn.Sequential(
        _Image(shape),
        nn.Conv2d(shape[0], width, 3, 1, 1, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        _Block(width, width, 1),
        _Block(width, 2 * width, 2),
        _Block(2 * width, 4 * width, 2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Dropout(dropout),
        nn.Linear(4 * width, classes),
    )


class Models:
    """The n models of one ``train-digit-mlps`` step: stacked MLP weights (one batched matmul per layer) or a
    list of modules (ResNets). Everything the evaluations need: logits, argmax predictions, one model, a
    module for ART."""

    def __init__(
        self,
        params: list[torch.Tensor] | None = None,
        modules: list[torch.nn.Module] | None = None,
        dropout: float = 0.0,
    ):
        self.params, self.modules, self.dropout = params, modules, dropout

    @property
    def n(self) -> int:
        return self.params[0].shape[0] if self.params is not None else len(self.modules)

    def subset(self, i: int) -> Models:
        if self.params is not None:
            return Models(params=[p[i : i + 1] for p in self.params], dropout=self.dropout)
        return Models(modules=[self.modules[i]], dropout=self.dropout)

    def member(self, i: int) -> torch.nn.Module:
        return member(self.params, i) if self.params is not None else self.modules[i]

    def logits(self, x: np.ndarray, dropout: bool = False) -> np.ndarray:
        """[n, N, classes]; ``dropout``: sampled masks (MC dropout), from torch's global generator."""
        with torch.no_grad():
            if self.params is not None:
                return forward(self.params, torch.from_numpy(x), self.dropout if dropout else 0.0).numpy()
            out = []
            for m in self.modules:
                m.eval()
                if dropout:
                    for mod in m.modules():
                        if isinstance(mod, torch.nn.Dropout):
                            mod.train()
                dev = next(m.parameters()).device
                out.append(
                    torch.cat(
                        [m(torch.from_numpy(x[i : i + 1024]).to(dev)).cpu() for i in range(0, len(x), 1024)]
                    ).numpy()
                )
                m.eval()
            return np.stack(out)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Argmax class per model, [n, N]."""
        if self.params is not None:
            with torch.no_grad():
                return forward(self.params, torch.from_numpy(x)).argmax(-1).numpy()
        return self.logits(x).argmax(-1)


def _gpu() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _art_classifier(model: torch.nn.Module, dim: int):
    """ART's classifier around one 10-class model on ``dim`` pixels in [−1, 1]."""
    from heredity.evals.adversarial import classifier

    return classifier(model, dim, NUM_CLASSES, (-1.0, 1.0))


def _predict(models: Models, x: np.ndarray) -> np.ndarray:
    return models.predict(x)  # [n, N]


def load_mlps(store: Store, model_id: str) -> list[torch.Tensor]:
    from safetensors.torch import load_file

    t = load_file(str(store.path(model_id) / "mlps.safetensors"))
    return [t[f"p{j}"] for j in range(len(t))]


def load_models(store: Store, model_id: str) -> Models:
    meta = store.get(model_id).meta
    if meta.get("type") != "resnets":
        return Models(params=load_mlps(store, model_id), dropout=float(meta.get("dropout", 0.0)))
    from safetensors.torch import load_file

    t = load_file(str(store.path(model_id) / "resnets.safetensors"))
    ms = []
    for i in range(int(meta["seeds"])):
        m = resnet(tuple(meta["shape"]), int(meta["classes"]), int(meta["width"]), float(meta["dropout"]))
        m.load_state_dict({k[len(f"m{i}.") :]: v for k, v in t.items() if k.startswith(f"m{i}.")})
        ms.append(m.to(_gpu()).eval())
    return Models(modules=ms, dropout=float(meta["dropout"]))


# ---- training -----------------------------------------------------------------------------------


def _class_rows(a: dict, classes: int) -> np.ndarray:
    return np.flatnonzero((a["split"] == "train") & (a["y"] < classes))


def _train_rows(a: dict, spec: TrainSpec) -> np.ndarray:
    tr = _class_rows(a, spec.classes)
    return np.delete(tr, np.s_[::5]) if spec.holdout else tr  # without holdout_rows'


def holdout_rows(a: dict, classes: int) -> np.ndarray:
    """Every fifth training row of the classes: held out of training when ``holdout``, for the temperature
    fit."""
    return _class_rows(a, classes)[::5]


@op("train-digit-mlps", 1)
def train_step(store: Store, data_id: str, spec: TrainSpec, progress: bool = True) -> str:
    """A ``train-digit-mlps`` step: ``spec.seeds`` MLPs from ``digits.init_mlps(init_seed)`` (the same init
    for the same seed, whatever the data), minibatches in the order of ``order_seed``; adversarial training
    through ART, one model at a time. The artifact holds the stacked weights (``mlps.safetensors``)."""

    def fn(ctx):
        a = _arrays(store, data_id)
        rows = _train_rows(a, spec)
        x, y = torch.from_numpy(unit(a["raw"][rows], a["scale"])), torch.from_numpy(a["y"][rows])
        sizes = [x.shape[1], spec.hidden, spec.hidden, spec.classes]
        t0 = time.perf_counter()
        if getattr(spec, "model", "mlp") == "resnet":
            _save_resnets(ctx, _train_resnets(x, y, spec, progress), spec, x.shape[1])
        else:
            _save_mlps(ctx, _fit_mlps(x, y, spec, sizes, progress), spec, sizes)
        return {"seconds": round(time.perf_counter() - t0, 2), "rows": len(rows)}

    return store.run_step("train-digit-mlps", spec, [data_id], fn, seed=spec.init_seed)["model"]


def _fit_mlps(
    x: torch.Tensor, y: torch.Tensor, spec: TrainSpec, sizes: list[int], progress: bool
) -> list[torch.Tensor]:
    """``spec.seeds`` MLPs of ``sizes`` from ``digits.init_mlps(init_seed)``, trained as one stack (or, for
    adversarial training, one at a time through ART): the stacked weights."""
    params = digits.init_mlps(spec.seeds, sizes, seed=spec.init_seed)
    if spec.adversarial is None:
        return _fit_stacked(params, x, y, spec, progress)
    return _fit_adversarially(params, x, y, spec, progress)


def _fit_stacked(
    params: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor, spec: TrainSpec, progress: bool
) -> list[torch.Tensor]:
    """Adam on the stacked models at once, minibatches in the order of ``order_seed`` (the same for every
    model), dropout masks from ``torch.manual_seed(order_seed)``."""
    from tqdm.auto import tqdm

    params = [p.clone().requires_grad_() for p in params]
    opt = torch.optim.Adam(params, lr=spec.lr)
    g = torch.Generator().manual_seed(spec.order_seed)
    torch.manual_seed(spec.order_seed)  # dropout masks
    bar = tqdm(total=spec.epochs, desc=f"train w={spec.hidden}", disable=not progress, leave=False)
    for _ in range(spec.epochs):
        order = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), spec.batch):
            idx = order[i : i + spec.batch]
            logits = forward(params, x[idx], spec.dropout)
            # the sum over models of each one's mean loss: Adam keeps the models independent
            loss = torch.nn.functional.cross_entropy(
                logits.reshape(-1, spec.classes), y[idx].repeat(spec.seeds)
            )
            opt.zero_grad(set_to_none=True)
            (loss * spec.seeds).backward()
            opt.step()
        bar.update()
    bar.close()
    return [p.detach() for p in params]


def _fit_adversarially(
    params: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor, spec: TrainSpec, progress: bool
) -> list[torch.Tensor]:
    """FGSM or PGD adversarial training through ART, one model at a time; the models stacked again."""
    from tqdm.auto import tqdm

    from heredity.evals.adversarial import adversarial_fit, classifier

    ms = []
    for i in tqdm(range(spec.seeds), desc=f"{spec.adversarial} training", disable=not progress, leave=False):
        m = member(params, i)
        clf = classifier(m, x.shape[1], spec.classes, (-1.0, 1.0), spec.lr)
        adversarial_fit(
            clf,
            x.numpy(),
            y.numpy(),
            spec.adversarial,
            spec.eps,
            spec.epochs,
            spec.batch,
            spec.pgd_steps,
            seed=spec.order_seed,
        )
        ms.append(m)
    return stack(ms)


def _save_mlps(ctx, params: list[torch.Tensor], spec: TrainSpec, sizes: list[int]) -> None:
    """The step's model artifact: the stacked weights in ``mlps.safetensors``."""
    from safetensors.torch import save_file

    out = ctx.output(
        "model",
        "model",
        f"digit-mlps-w{spec.hidden}",
        meta={"type": "stacked_mlps", "sizes": sizes, "seeds": spec.seeds, "dropout": spec.dropout},
    )
    save_file({f"p{j}": p.contiguous() for j, p in enumerate(params)}, str(out / "mlps.safetensors"))


def _save_resnets(ctx, ms: list[torch.nn.Module], spec: TrainSpec, dim: int) -> None:
    """The step's model artifact: the ResNets' state dicts in ``resnets.safetensors`` (keys ``m{i}.``)."""
    from safetensors.torch import save_file

    from heredity.data.poison import image_shape

    out = ctx.output(
        "model",
        "model",
        f"resnets-w{spec.hidden}",
        meta={
            "type": "resnets",
            "shape": list(image_shape(dim)),
            "classes": spec.classes,
            "width": spec.hidden,
            "seeds": spec.seeds,
            "dropout": spec.dropout,
        },
    )
    save_file(
        {
            f"m{i}.{k}": v.detach().cpu().contiguous()
            for i, m in enumerate(ms)
            for k, v in m.state_dict().items()
        },
        str(out / "resnets.safetensors"),
    )


def _train_resnets(
    x: torch.Tensor, y: torch.Tensor, spec: TrainSpec, progress: bool
) -> list[torch.nn.Module]:
    """One ResNet per seed: the same initialization for the same (init_seed, i), minibatches in one order for
    all."""
    from tqdm.auto import tqdm

    from heredity.data.poison import image_shape

    dev, shape = _gpu(), image_shape(x.shape[1])
    g = torch.Generator().manual_seed(spec.order_seed)
    orders = [torch.randperm(len(x), generator=g) for _ in range(spec.epochs)]
    out = []
    for i in tqdm(range(spec.seeds), desc=f"resnets w={spec.hidden}", disable=not progress, leave=False):
        torch.manual_seed(spec.init_seed * 7919 + i)
        m = resnet(shape, spec.classes, spec.hidden, spec.dropout).to(dev)
        if spec.adversarial is None:
            _fit_resnet(m, x, y, orders, spec, dev)
        else:
            from heredity.evals.adversarial import adversarial_fit, classifier

            adversarial_fit(
                classifier(m, x.shape[1], spec.classes, (-1.0, 1.0), spec.lr),
                x.numpy(),
                y.numpy(),
                spec.adversarial,
                spec.eps,
                spec.epochs,
                spec.batch,
                spec.pgd_steps,
                seed=spec.order_seed,
            )
        out.append(m.eval())
    return out


def _fit_resnet(m: torch.nn.Module, x, y, orders: list[torch.Tensor], spec: TrainSpec, dev) -> None:
    """Adam on one ResNet, one epoch per minibatch order; dropout masks from
    ``torch.manual_seed(order_seed)``."""
    opt = torch.optim.Adam(m.parameters(), lr=spec.lr)
    torch.manual_seed(spec.order_seed)  # dropout masks
    m.train()
    for order in orders:
        for k in range(0, len(x), spec.batch):
            idx = order[k : k + spec.batch]
            loss = torch.nn.functional.cross_entropy(m(x[idx].to(dev)), y[idx].to(dev))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()


# ---- part 1: poisoning ---------------------------------------------------------------------------


def poisoning(store: Store, data_id: str, config: Config, progress: bool) -> dict:
    """Part 1: a model stack per poisoned training set (label flips, the targeted flip, the trigger at every
    count × width), scored on the clean test images and the triggered ones; detection at ``hidden``; each
    trigger-poisoned model paired image by image with its unpoisoned twin."""
    out: dict = {"flips": [], "targeted": None, "badnets": [], "detection": [], "models": []}
    test = _poisoning_test_set(store, data_id, config)
    for rate in config.flip_rates:
        arm = _flip_arm(store, data_id, config, rate, test, progress)
        out["models"].append(arm["model"])
        out["flips"].append(arm)
    out["targeted"] = _targeted_arm(store, data_id, config, test, progress)
    out["models"].append(out["targeted"]["model"])
    hits: dict[tuple[int, int], np.ndarray] = {}  # (width, count) -> [seeds, triggered images] fooled
    for width in config.widths:
        for count in config.counts:
            arm, hits[(width, count)] = _trigger_arm(store, data_id, config, width, count, test, progress)
            out["models"].append(arm["model"])
            out["badnets"].append(arm)
            if width == config.hidden and count > 0 and config.detectors:
                out["detection"].append(
                    {"count": count, **detection(store, arm["dataset"], arm["model"], config)}
                )
    # each seed's model against its unpoisoned twin (same initialization), image by image
    for b in out["badnets"]:
        if b["count"] > 0 and (b["width"], 0) in hits:
            b["vs_none"] = [
                paired_table(h, h0)
                for h, h0 in zip(hits[(b["width"], b["count"])], hits[(b["width"], 0)], strict=True)
            ]
    return out


def _poisoning_test_set(store: Store, data_id: str, config: Config) -> dict:
    """The clean test images (model units) and labels, and the test images of the classes other than the
    trigger's target with the trigger stamped on (``others`` marks them among the test images)."""
    from heredity.data.poison import apply_trigger

    clean = _arrays(store, data_id)
    te = clean["split"] == "test"
    xt, yt = unit(clean["raw"][te], clean["scale"]), clean["y"][te]
    others = yt != config.patch_target
    triggered = unit(
        apply_trigger(clean["raw"][te][others].astype(np.int64), config.patch_size, int(clean["scale"])),
        clean["scale"],
    )
    return {"x": xt, "y": yt, "others": others, "triggered": triggered}


def _attack(config: Config, kind: str, **params) -> dict:
    """A ``poison-digits`` step's config: the attack, its parameters and the experiment's seed."""
    return {"seed": config.seed, "attack": kind, **params}


def _counts(right: np.ndarray) -> list[int]:
    """Per model, how many items of a [models, items] 0/1 array are 1."""
    return [int(v) for v in right.sum(-1)]


def _clean_accuracy(models: Models, test: dict, seeds: int) -> dict:
    """Accuracy on the clean test images, per seed (``seed_rate``)."""
    return seed_rate(_counts(_predict(models, test["x"]) == test["y"]), [len(test["y"])] * seeds)


def _flip_arm(store: Store, data_id: str, config: Config, rate: float, test: dict, progress: bool) -> dict:
    """Models trained with a share ``rate`` of the labels flipped at random: their clean accuracy."""
    did = poison_step(store, data_id, _attack(config, "label_flip", rate=rate))
    mid = train_step(store, did, config.spec(), progress)
    return {
        "rate": rate,
        "model": mid,
        "dataset": did,
        "clean_accuracy": _clean_accuracy(load_models(store, mid), test, config.seeds),
    }


def _targeted_arm(store: Store, data_id: str, config: Config, test: dict, progress: bool) -> dict:
    """Models trained with a share of the source digits labelled as the target: clean accuracy, and how the
    test images of the source digit are classified (right, or as the target)."""
    attack = _attack(
        config,
        "targeted_flip",
        source=config.targeted_source,
        target=config.targeted_target,
        fraction=config.targeted_fraction,
    )
    did = poison_step(store, data_id, attack)
    mid = train_step(store, did, config.spec(), progress)
    models = load_models(store, mid)
    src = test["y"] == config.targeted_source
    pred = _predict(models, test["x"][src])
    n_src = [int(src.sum())] * config.seeds
    return {
        "model": mid,
        "dataset": did,
        "clean_accuracy": _clean_accuracy(models, test, config.seeds),
        "source_accuracy": seed_rate(_counts(pred == config.targeted_source), n_src),
        "source_to_target": seed_rate(_counts(pred == config.targeted_target), n_src),
    }


def _trigger_arm(
    store: Store, data_id: str, config: Config, width: int, count: int, test: dict, progress: bool
) -> tuple[dict, np.ndarray]:
    """Models of ``width`` trained with ``count`` triggered rows: clean accuracy and attack success, and which
    triggered test images each model classifies as the target ([seeds, images])."""
    attack = _attack(config, "badnets", count=count, target=config.patch_target, size=config.patch_size)
    did = poison_step(store, data_id, attack)
    mid = train_step(store, did, config.spec(hidden=width), progress)
    models = load_models(store, mid)
    hits = _predict(models, test["triggered"]) == config.patch_target  # [seeds, images]
    arm = {
        "width": width,
        "count": count,
        "model": mid,
        "dataset": did,
        "clean_accuracy": _clean_accuracy(models, test, config.seeds),
        "attack_success": seed_rate(_counts(hits), [int(test["others"].sum())] * config.seeds),
    }
    return arm, hits


@op("detect-poison", 2, note="v2: activation clustering on the last hidden layer")
def detection(store: Store, data_id: str, model_id: str, config: Config) -> dict:
    """ART's poison detectors on the poisoned training set, per seed's model: precision and recall of the rows
    flagged (a memoized step on the dataset and the model)."""
    cfg = {"detectors": config.detectors, "expected": config.detect_expected}

    def fn(ctx):
        res = _detection_counts(store, data_id, model_id, cfg)
        (ctx.output("detection", "report", "poison-detection") / "detection.json").write_text(json.dumps(res))
        return {}

    r = store.run_step("detect-poison", cfg, [data_id, model_id], fn)
    raw = json.loads((store.path(r["detection"]) / "detection.json").read_text())
    out = {}
    for method, d in raw.items():
        flagged = [a + b for a, b in zip(d["tp"], d["fp"], strict=True)]
        poisoned = [a + b for a, b in zip(d["tp"], d["fn"], strict=True)]
        out[method] = {
            "recall": seed_rate(d["tp"], poisoned),
            "precision": seed_rate(d["tp"], flagged) if all(flagged) else None,
            "flagged": flagged,
            "poisoned": poisoned[0],
        }
    return out


def _detection_counts(store: Store, data_id: str, model_id: str, cfg: dict) -> dict:
    """Per detector and seed's model: the poisoned rows flagged (tp), clean rows flagged (fp) and poisoned
    rows missed (fn) on the training set."""
    from heredity.evals.adversarial import detect_poison

    a = _arrays(store, data_id)
    tr = a["split"] == "train"
    x, y, truth = unit(a["raw"][tr], a["scale"]), a["y"][tr], a["poisoned"][tr]
    models = load_models(store, model_id)
    res = {}
    for method in cfg["detectors"]:
        tp, fp, missed = [], [], []
        for i in range(models.n):
            flagged = detect_poison(
                _art_classifier(models.member(i), x.shape[1]), x, y, method, cfg["expected"]
            )
            tp.append(int((flagged & truth).sum()))
            fp.append(int((flagged & ~truth).sum()))
            missed.append(int((~flagged & truth).sum()))
        res[method] = {"tp": tp, "fp": fp, "fn": missed}
    return res


# ---- part 2: adversarial examples ----------------------------------------------------------------


@op("eval-adversarial-digits", 1)
def adversarial(store: Store, data_id: str, config: Config, progress: bool) -> dict:
    """Accuracy under FGSM and PGD per training kind; the sibling transfer of PGD examples."""
    train_eps = 2 * config.train_eps
    models = {
        "standard": train_step(store, data_id, config.spec(), progress),
        "fgsm-trained": train_step(store, data_id, config.spec(adversarial="fgsm", eps=train_eps), progress),
        "pgd-trained": train_step(store, data_id, config.spec(adversarial="pgd", eps=train_eps), progress),
    }
    # siblings: A = the standard model; B = A's init, another data order; C = another init, B's data order
    sib = {
        "A": models["standard"],
        "B": train_step(store, data_id, config.spec(order_seed=config.seed + 1), progress),
        "C": train_step(
            store, data_id, config.spec(order_seed=config.seed + 1, init_seed=2 * config.seed + 1), progress
        ),
    }
    cfg = {
        "eps": config.eps,
        "pgd_steps": config.pgd_steps,
        "seed": config.seed,
        "kinds": list(models),
        "siblings": list(sib),
    }
    inputs = [data_id, *models.values(), sib["B"], sib["C"]]

    def fn(ctx):
        res = _attack_counts(store, data_id, inputs, cfg)
        (ctx.output("adversarial", "report", "adversarial-digits") / "adversarial.json").write_text(
            json.dumps(res)
        )
        return {}

    r = store.run_step("eval-adversarial-digits", cfg, inputs, fn)
    raw = json.loads((store.path(r["adversarial"]) / "adversarial.json").read_text())
    n = raw["n"]
    robust = {k: [seed_rate(v, [n] * len(v)) for v in per_eps] for k, per_eps in raw["robust"].items()}
    transfer = {
        e: {s: {d: seed_rate(v, [n] * len(v)) for d, v in row.items()} for s, row in m.items()}
        for e, m in raw["transfer"].items()
    }
    return {
        "models": models,
        "siblings": sib,
        "robust": robust,
        "transfer": transfer,
        "raw_transfer": raw["transfer"],
        "n": n,
    }


def _attack_counts(store: Store, data_id: str, inputs: list[str], cfg: dict) -> dict:
    """What the ``eval-adversarial-digits`` step writes: per seed, the test images each training kind still
    classifies right under each attack and ε (``robust``), and the sibling transfer errors (``transfer``)."""
    a = _arrays(store, data_id)
    te = a["split"] == "test"
    x, y = unit(a["raw"][te], a["scale"]), a["y"][te]
    ids = dict(zip(cfg["kinds"], inputs[1:4], strict=True))
    ids.update({"B": inputs[4], "C": inputs[5]})
    models = {k: load_models(store, v) for k, v in ids.items()}
    models["A"] = models["standard"]
    res: dict = {"robust": {}, "transfer": {}}
    for kind in cfg["kinds"]:
        for attack in ("fgsm", "pgd"):
            res["robust"][f"{kind}/{attack}"] = [
                _right_under_attack(models[kind], x, y, attack, e, cfg) for e in cfg["eps"]
            ]
    for e in cfg["eps"]:
        if e != 0:
            res["transfer"][str(e)] = _transfer_errors(models, x, y, e, cfg)
    res["n"] = int(len(y))
    return res


def _right_under_attack(models: Models, x: np.ndarray, y: np.ndarray, attack: str, eps: float, cfg: dict):
    """Per model, how many images it still classifies right after ``attack`` (FGSM, or PGD seeded per model)
    at ``eps`` pixel units (2·eps in model units)."""
    from heredity.evals.adversarial import fgsm, pgd

    per = []
    for i in range(models.n):
        clf = _art_classifier(models.member(i), x.shape[1])
        adv = (
            fgsm(clf, x, y, 2 * eps)
            if attack == "fgsm"
            else pgd(clf, x, y, 2 * eps, cfg["pgd_steps"], cfg["seed"] + i)
        )
        per.append(int((clf.predict(adv).argmax(-1) == y).sum()))
    return per


def _transfer_errors(models: dict[str, Models], x: np.ndarray, y: np.ndarray, eps: float, cfg: dict) -> dict:
    """PGD examples crafted on each sibling's model i, tested on every sibling's model i: the errors, as
    {crafted on: {tested on: [per model]}}."""
    from heredity.evals.adversarial import pgd

    out = {}
    for src in cfg["siblings"]:
        advs = [
            pgd(
                _art_classifier(models[src].member(i), x.shape[1]),
                x,
                y,
                2 * eps,
                cfg["pgd_steps"],
                cfg["seed"] + i,
            )
            for i in range(models[src].n)
        ]
        out[src] = {
            dst: [int((_predict(models[dst].subset(i), adv)[0] != y).sum()) for i, adv in enumerate(advs)]
            for dst in cfg["siblings"]
        }
    return out


# ---- part 3: uncertainty -------------------------------------------------------------------------


@op(
    "eval-uncertainty-digits",
    3,
    note="v2: tie-free confidence for AUROC/FPR; accuracy as counts; v3: the dropout model scored in one "
    "pass, every member's AUROC",
)
def uncertainty(store: Store, data_id: str, config: Config, flag_models: dict, progress: bool) -> dict:
    """In-distribution calibration and OOD detection for max softmax, temperature scaling, MC dropout and
    ensembles; whether max softmax flags PGD and triggered inputs."""
    k = config.in_classes
    n_ens = config.ensembles * config.ensemble_size
    plain = train_step(store, data_id, config.spec(classes=k, holdout=True, seeds=n_ens), progress)
    drop = train_step(store, data_id, config.spec(classes=k, holdout=True, dropout=config.dropout), progress)
    cfg = {
        "in_classes": k,
        "ensembles": config.ensembles,
        "ensemble_size": config.ensemble_size,
        "mc_passes": config.mc_passes,
        "angles": config.angles,
        "noise_images": config.noise_images,
        "seed": config.seed,
        "seeds": config.seeds,
        "flag_eps": config.flag_eps,
        "pgd_steps": config.pgd_steps,
        "patch_size": config.patch_size,
        "patch_target": config.patch_target,
    }
    inputs = [data_id, plain, drop, flag_models["standard"], flag_models["triggered"]]

    def fn(ctx):
        res = _uncertainty_scores(store, data_id, inputs, cfg)
        (ctx.output("uncertainty", "report", "uncertainty-digits") / "uncertainty.json").write_text(
            json.dumps(res)
        )
        return {}

    r = store.run_step("eval-uncertainty-digits", cfg, inputs, fn)
    raw = json.loads((store.path(r["uncertainty"]) / "uncertainty.json").read_text())
    return {"models": {"plain": plain, "dropout": drop}, **_uncertainty_summary(raw, config)}


def _rotate(raw: np.ndarray, angle: int) -> np.ndarray:
    from scipy.ndimage import rotate

    from heredity.data.poison import image_shape

    c, h, w = image_shape(raw.shape[1])
    imgs = raw.reshape(-1, h, w).astype(np.float64)  # every channel of every image, each rotated in its plane
    return np.stack(
        [rotate(im, angle, reshape=False, order=1, mode="constant", cval=0.0) for im in imgs]
    ).reshape(len(raw), -1)


class _Arms:
    """The uncertainty arms of one ``eval-uncertainty-digits`` step, built inside the step from its inputs and
    config: the plain models (max softmax, temperature scaling, ensembles) and the dropout-trained ones (one
    pass, MC dropout)."""

    def __init__(self, plain: Models, dropout: Models, temperatures: list[float], cfg: dict):
        self.plain, self.dropout, self.temperatures, self.cfg = plain, dropout, temperatures, cfg

    def mc_dropout(self, x: np.ndarray) -> np.ndarray:
        """MC dropout's probabilities [seeds, N, C]: ``mc_passes`` sampled passes, masks from
        ``torch.manual_seed(seed)`` (the same masks on every call)."""
        from heredity.evals import uncertainty as U

        torch.manual_seed(self.cfg["seed"])
        return U.mc_dropout_probs(
            np.stack([U.softmax(self.dropout.logits(x, True)) for _ in range(self.cfg["mc_passes"])])
        )

    def probs(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Per method, [replicates, N, C] probabilities (replicates: seeds, or ensembles of seeds)."""
        from heredity.evals import uncertainty as U

        seeds, size = self.cfg["seeds"], self.cfg["ensemble_size"]
        lg = self.plain.logits(x)
        return {
            "max softmax": U.softmax(lg[:seeds]),
            "temperature scaling": np.stack([U.softmax(lg[i], self.temperatures[i]) for i in range(seeds)]),
            # the dropout-trained models scored like max softmax: differs from max softmax in training
            # only, from MC dropout in inference only
            DROPOUT_ONE_PASS: U.softmax(self.dropout.logits(x)),
            "MC dropout": self.mc_dropout(x),
            "ensemble": np.stack(
                [
                    U.ensemble_probs(U.softmax(lg[e * size : (e + 1) * size]))
                    for e in range(self.cfg["ensembles"])
                ]
            ),
        }


def _uncertainty_data(a: dict, cfg: dict) -> dict:
    """The step's images (model units): in distribution (test images of the first ``in_classes`` digits), the
    held-out training rows for the temperature, each out-of-distribution set and each rotation."""
    kk = cfg["in_classes"]
    te = a["split"] == "test"
    raw_te, y_te = a["raw"][te], a["y"][te]
    ind = y_te < kk
    xin = unit(raw_te[ind], a["scale"])
    hold = holdout_rows(a, kk)
    rng = np.random.default_rng(cfg["seed"])
    return {
        "raw_test": raw_te,
        "y_test": y_te,
        "x_in": xin,
        "y_in": y_te[ind],
        "x_hold": unit(a["raw"][hold], a["scale"]),
        "y_hold": a["y"][hold],
        "ood": {
            OOD_SETS[0]: unit(raw_te[~ind], a["scale"]),
            OOD_SETS[1]: rng.uniform(-1, 1, (cfg["noise_images"], xin.shape[1])).astype(np.float32),
        },
        "rotated": {
            ang: unit(np.clip(_rotate(raw_te[ind], ang), 0, a["scale"]), a["scale"]) for ang in cfg["angles"]
        },
    }


def _uncertainty_scores(store: Store, data_id: str, inputs: list[str], cfg: dict) -> dict:
    """What the ``eval-uncertainty-digits`` step writes: per method and replicate, in-distribution accuracy,
    NLL, ECE and reliability; AUROC and FPR against each OOD set; the rotation sweep; the flags of attacked
    inputs."""
    from heredity.evals import uncertainty as U

    a = _arrays(store, data_id)
    data = _uncertainty_data(a, cfg)
    plain, dropout = load_models(store, inputs[1]), load_models(store, inputs[2])
    # per single model, on held-out rows
    temps = [U.fit_temperature(lg, data["y_hold"]) for lg in plain.logits(data["x_hold"])[: cfg["seeds"]]]
    arms = _Arms(plain, dropout, temps, cfg)
    y_in = data["y_in"]
    res: dict = {
        "in_distribution": {},
        "ood": {},
        "shift": {},
        "flags": {},
        "temperatures": temps,
        "reliability": {},
        "n_in": int(len(y_in)),
    }
    probs_in = arms.probs(data["x_in"])
    reference = {  # in-distribution scores, once
        "y": y_in,
        "scores": {name: [U.confidence(p) for p in pr] for name, pr in probs_in.items()},
        # every plain model on its own (max softmax), so each ensemble is compared with its own members
        "members": [U.confidence(p) for p in U.softmax(plain.logits(data["x_in"]))],
    }
    res["in_distribution"] = {
        name: {
            "accuracy": [int((p.argmax(-1) == y_in).sum()) for p in pr],
            "nll": [U.nll(p, y_in) for p in pr],
            "ece": [U.ece(p, y_in) for p in pr],
        }
        for name, pr in probs_in.items()
    }
    res["reliability"] = {name: U.reliability(pr[0], y_in) for name, pr in probs_in.items()}
    res["ood"], res["members_auroc"], roc = _score_ood(arms, reference, data["ood"])
    if roc is not None:
        res["roc"] = roc
    res["shift"], reliability_shift = _score_shift(arms, reference, data["rotated"], cfg["angles"])
    if reliability_shift is not None:
        res["reliability_shift"] = reliability_shift
    res["flags"] = _flag_attacked(store, inputs, a, data, cfg)
    return res


def _against(in_scores: list[np.ndarray], probs: np.ndarray, metric) -> list[float]:
    """``metric`` (AUROC or FPR) of each replicate's in-distribution scores against its scores on
    ``probs``."""
    from heredity.evals import uncertainty as U

    return [metric(ci, U.confidence(p)) for ci, p in zip(in_scores, probs, strict=True)]


def _score_ood(arms: _Arms, reference: dict, sets: dict[str, np.ndarray]) -> tuple[dict, dict, dict | None]:
    """Per OOD set: each method's AUROC and FPR at 95% TPR, every plain model's AUROC on its own, and the ROC
    curve of the first ensemble against the other digits."""
    from heredity.evals import uncertainty as U

    ood, members, roc = {}, {}, None
    scores = reference["scores"]
    for sname, xo in sets.items():
        po = arms.probs(xo)
        ood[sname] = {
            name: {
                "auroc": _against(scores[name], po[name], U.auroc),
                "fpr95": _against(scores[name], po[name], U.fpr_at_tpr),
            }
            for name in scores
        }
        members[sname] = [
            U.auroc(ci, U.confidence(p))
            for ci, p in zip(reference["members"], U.softmax(arms.plain.logits(xo)), strict=True)
        ]
        if sname == "other digits":
            from sklearn.metrics import roc_curve

            out_scores = U.confidence(po["ensemble"][0])
            f, t, _ = roc_curve(
                np.r_[np.ones(len(reference["y"])), np.zeros(len(xo))],
                np.r_[scores["ensemble"][0], out_scores],
            )
            roc = {"fpr": f.tolist(), "tpr": t.tolist(), "method": "ensemble 1", "ood": sname}
    return ood, members, roc


def _score_shift(
    arms: _Arms, reference: dict, rotated: dict[int, np.ndarray], angles: list[int]
) -> tuple[dict, dict | None]:
    """Per rotation angle and method: accuracy, ECE and AUROC against the unrotated images; the reliability
    diagrams at the angle nearest 30° (few errors unrotated)."""
    from heredity.evals import uncertainty as U

    y, scores = reference["y"], reference["scores"]
    mid = min(angles, key=lambda g: abs(g - 30))
    shift, reliability = {}, None
    for ang, xr in rotated.items():
        pr = arms.probs(xr)
        if ang == mid:
            reliability = {"angle": ang, **{name: U.reliability(pr[name][0], y) for name in pr}}
        shift[str(ang)] = {
            name: {
                "accuracy": [int((p.argmax(-1) == y).sum()) for p in pr[name]],
                "ece": [U.ece(p, y) for p in pr[name]],
                "auroc": _against(scores[name], pr[name], U.auroc),
            }
            for name in pr
        }
    return shift, reliability


def _flag_attacked(store: Store, inputs: list[str], a: dict, data: dict, cfg: dict) -> dict:
    """Does max softmax flag attacked inputs? Per seed (10-class models), the AUROC of the clean test images
    against their PGD examples on the standard model, and against the triggered images on the
    trigger-poisoned model."""
    from heredity.data.poison import apply_trigger
    from heredity.evals.adversarial import pgd

    raw_te, yall = data["raw_test"], data["y_test"]
    xall = unit(raw_te, a["scale"])
    std, trig = load_models(store, inputs[3]), load_models(store, inputs[4])
    au_adv, au_trig = [], []
    others = yall != cfg["patch_target"]
    xtrig = unit(
        apply_trigger(raw_te[others].astype(np.int64), cfg["patch_size"], int(a["scale"])), a["scale"]
    )
    for i in range(std.n):
        clf = _art_classifier(std.member(i), xall.shape[1])
        adv = pgd(clf, xall, yall, 2 * cfg["flag_eps"], cfg["pgd_steps"], cfg["seed"] + i)
        au_adv.append(_max_softmax_auroc(std.subset(i), xall, adv))
        au_trig.append(_max_softmax_auroc(trig.subset(i), xall[others], xtrig))
    return {"pgd": au_adv, "trigger": au_trig}


def _max_softmax_auroc(one: Models, clean: np.ndarray, attacked: np.ndarray) -> float:
    """One model's max-softmax AUROC of ``clean`` against ``attacked`` inputs (0.5: no signal)."""
    from heredity.evals import uncertainty as U

    return U.auroc(
        U.confidence(U.softmax(one.logits(clean)[0])), U.confidence(U.softmax(one.logits(attacked)[0]))
    )


def _seed_summary(metric: str, values: list, n_in: int) -> dict:
    """One metric's interval over replicates: accuracy counts of ``n_in`` as a rate (Wilson over each seed's
    images when the seeds agree), NLL in [0, ∞), the rest in [0, 1]."""
    if metric == "accuracy":
        return seed_rate(values, [n_in] * len(values))
    return seed_mean(values, (0.0, math.inf) if metric == "nll" else (0.0, 1.0))


def _summarize(per_method: dict, n_in: int) -> dict:
    return {m: {k: _seed_summary(k, v, n_in) for k, v in x.items()} for m, x in per_method.items()}


def _uncertainty_summary(raw: dict, config: Config) -> dict:
    """The step's per-replicate scores as intervals over replicates; each member's AUROC also averaged per
    ensemble (what an ensemble is compared with)."""
    n_in = raw["n_in"]
    E, S = config.ensembles, config.ensemble_size
    members = {
        s: {"per_model": v, "per_ensemble": [float(np.mean(v[e * S : (e + 1) * S])) for e in range(E)]}
        for s, v in raw["members_auroc"].items()
    }
    return {
        "members_auroc": members,
        "in_distribution": _summarize(raw["in_distribution"], n_in),
        "ood": {s: _summarize(d, n_in) for s, d in raw["ood"].items()},
        "shift": {angle: _summarize(d, n_in) for angle, d in raw["shift"].items()},
        "flags": {k: seed_mean(v) for k, v in raw["flags"].items()},
        "temperatures": raw["temperatures"],
        "reliability": raw["reliability"],
        "reliability_shift": raw.get("reliability_shift"),
        "roc": raw.get("roc"),
    }
