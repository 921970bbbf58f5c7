"""Data attacks and uncertainty on digit classifiers: what a model inherits from poisoned data, from its
initialization and from its siblings, and whether it knows when it does not know.

Methods (the models are ``subliminal-digits``' MLPs, in → w → w → classes, trained as stacked seeds):

0. Data: scikit-learn's 8×8 digits (or MNIST with ``data``), pixels scaled to [−1, 1]; ε is quoted in pixel
   units of [0, 1] (the literature's), i.e. 2ε in the model's units.
1. **Poisoning** — every poisoned set is a ``poison-digits`` step (its lineage records the attack and its
   parameters; the rows it changed are marked): random label flips at ``flip_rates``; a targeted flip (a share of
   the ``source`` digits relabelled ``target``); a BadNets trigger (a bright corner square → label
   ``patch_target``) at absolute ``counts`` and at several hidden ``widths``. Per model: clean test accuracy and
   attack success (triggered test images of other classes classified as the target). A detection defence from
   ART (activation clustering, spectral signatures) on each trigger-poisoned training set, scored by the
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
   In distribution: the test images of those classes (accuracy, NLL, ECE). Out of distribution: the other digits,
   uniform noise, and the in-distribution test images rotated by each of ``angles`` (a shift sweep); AUROC and
   FPR at 95% TPR of each score. Also: does max softmax flag PGD inputs and triggered inputs?

Unit of replication: training seeds for every interval (t intervals over the seeds' values, clipped to the
quantity's range; a rate that does not vary over seeds gets each seed's Wilson interval over its own test images,
the widest, and says so — an image is never counted once per seed); the ensembles are the unit for ensemble
scores. The planned contrasts and their two Holm families are declared from the config before the run
(``planned``): claims about training (paired t over seeds, interval clipped to [−1, 1]; the exact sign test over
seeds where every seed's difference is the same), and claims about the trained models (each poisoned model against
its unpoisoned twin on the same test images, McNemar per model, the largest p: every model). Arms compared differ
in one thing: MC dropout against the same dropout models in one pass, those against max softmax, an ensemble
against its own members, temperature scaling against the same models unscaled.
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
from heredity.store import Store, read_table, write_table
from heredity.store.ops import op

NUM_CLASSES = 10
DETECTORS = ("activation_clustering", "spectral_signature")
OOD_SETS = ("other digits", "uniform noise")  # what the uncertainty step scores out of distribution
DROPOUT_ONE_PASS = "dropout model, one pass"


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
    """A stack of small ResNets (``hidden`` = the first stage's channels; stages hidden, 2·hidden, 4·hidden), each
    model trained on its own (no stacking), from ``torch.manual_seed(init_seed · 7919 + i)``."""

    model: str = "resnet"


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
            # CIFAR-10 with small ResNets (give cifar-10-batches-py with --data DIR; a GPU is used if there is one)
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


@op("poison-digits", 1)
def poison_step(store: Store, data_id: str, attack: dict) -> str:
    """A poisoned copy of the digits (train rows only; test rows untouched), rows changed marked ``poisoned``."""
    import pyarrow as pa

    from heredity.data import poison

    def fn(ctx):
        a = _arrays(store, data_id)
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
        out = ctx.output(
            "data",
            "dataset",
            f"digits-{kind}",
            meta={"scale": a["scale"], "attack": attack, "poisoned_rows": int(mark.sum())},
        )
        pixels = pa.FixedSizeListArray.from_arrays(pa.array(raw.reshape(-1), pa.uint8()), raw.shape[1])
        write_table(
            out, pa.table({"pixels": pixels, "label": lab, "split": a["split"].tolist(), "poisoned": mark})
        )
        return {"poisoned_rows": int(mark.sum())}

    return store.run_step("poison-digits", attack, [data_id], fn)["data"]


def unit(raw: np.ndarray, scale: float) -> np.ndarray:
    from heredity.data.digits import to_unit_range

    return to_unit_range(raw, scale).astype(np.float32)


# ---- models -------------------------------------------------------------------------------------


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
    """A basic residual block: two 3×3 convolutions with batch norm, a 1×1 projection when the shape changes."""

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
    """The n models of one ``train-digit-mlps`` step: stacked MLP weights (one batched matmul per layer) or a list
    of modules (ResNets). Everything the evaluations need: logits, argmax predictions, one model, a module for ART."""

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


def _train_resnets(
    x: torch.Tensor, y: torch.Tensor, spec: TrainSpec, progress: bool
) -> list[torch.nn.Module]:
    """One ResNet per seed: the same initialization for the same (init_seed, i), minibatches in one order for all."""
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


def _class_rows(a: dict, classes: int) -> np.ndarray:
    return np.flatnonzero((a["split"] == "train") & (a["y"] < classes))


def _train_rows(a: dict, spec: TrainSpec) -> np.ndarray:
    tr = _class_rows(a, spec.classes)
    return np.delete(tr, np.s_[::5]) if spec.holdout else tr  # without holdout_rows'


def holdout_rows(a: dict, classes: int) -> np.ndarray:
    """Every fifth training row of the classes: held out of training when ``holdout``, for the temperature fit."""
    return _class_rows(a, classes)[::5]


@op("train-digit-mlps", 1)
def train_step(store: Store, data_id: str, spec: TrainSpec, progress: bool = True) -> str:
    """A ``train-digit-mlps`` step: ``spec.seeds`` MLPs from ``digits.init_mlps(init_seed)`` (the same init for the
    same seed, whatever the data), minibatches in the order of ``order_seed``; adversarial training through ART,
    one model at a time. The artifact holds the stacked weights (``mlps.safetensors``)."""
    from safetensors.torch import save_file

    def fn(ctx):
        from tqdm.auto import tqdm

        a = _arrays(store, data_id)
        rows = _train_rows(a, spec)
        x, y = torch.from_numpy(unit(a["raw"][rows], a["scale"])), torch.from_numpy(a["y"][rows])
        sizes = [x.shape[1], spec.hidden, spec.hidden, spec.classes]
        t0 = time.perf_counter()
        if getattr(spec, "model", "mlp") == "resnet":
            from heredity.data.poison import image_shape

            ms = _train_resnets(x, y, spec, progress)
            out = ctx.output(
                "model",
                "model",
                f"resnets-w{spec.hidden}",
                meta={
                    "type": "resnets",
                    "shape": list(image_shape(x.shape[1])),
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
            return {"seconds": round(time.perf_counter() - t0, 2), "rows": len(rows)}
        params = digits.init_mlps(spec.seeds, sizes, seed=spec.init_seed)
        if spec.adversarial is None:
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
            params = [p.detach() for p in params]
        else:
            from heredity.evals.adversarial import adversarial_fit, classifier

            ms = []
            for i in tqdm(
                range(spec.seeds), desc=f"{spec.adversarial} training", disable=not progress, leave=False
            ):
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
            params = stack(ms)
        out = ctx.output(
            "model",
            "model",
            f"digit-mlps-w{spec.hidden}",
            meta={"type": "stacked_mlps", "sizes": sizes, "seeds": spec.seeds, "dropout": spec.dropout},
        )
        save_file({f"p{j}": p.contiguous() for j, p in enumerate(params)}, str(out / "mlps.safetensors"))
        return {"seconds": round(time.perf_counter() - t0, 2), "rows": len(rows)}

    return store.run_step("train-digit-mlps", spec, [data_id], fn, seed=spec.init_seed)["model"]


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


# ---- statistics ---------------------------------------------------------------------------------


def seed_rate(k: list[int], n: list[int]) -> dict:
    """Mean over seeds of per-seed rates with a t interval over the seeds (unit: training seeds), clipped to
    [0, 1]. When every seed has the same rate there is no spread for a t interval: each seed's Wilson interval
    over its own test items (each item counted once, never the same item under every seed as independent
    items), and the widest of them, marked ``wilson``."""
    from heredity.reports.stats import mean_ci, rate_ci

    rates = [a / b for a, b in zip(k, n, strict=True)]
    ci = mean_ci(rates, bounds=(0.0, 1.0), allow_binary=True)
    if not (ci["lo"] == ci["lo"]):  # NaN: no variance over seeds
        ws = [rate_ci(a, b) for a, b in zip(k, n, strict=True)]
        ci = {
            **ci,
            "lo": min(w["lo"] for w in ws),
            "hi": max(w["hi"] for w in ws),
            "method": f"wilson over the {max(n)} test items of each seed, each item counted once (every seed "
            "scored the same rate; the widest seed's interval)",
        }
    return {
        **ci,
        "per_seed": rates,
        "k": [int(v) for v in k],
        "of": [int(v) for v in n],
        "unit": f"training seeds, n = {len(rates)}",
    }


def seed_mean(values: list[float], bounds: tuple[float, float] | None = (0.0, 1.0)) -> dict:
    """Mean with a t interval over seeds, clipped to the quantity's range (a rate, an AUROC: [0, 1])."""
    from heredity.reports.stats import mean_ci

    return {
        **mean_ci(values, bounds=bounds, allow_binary=True),
        "per_seed": [float(v) for v in values],
        "unit": f"training seeds, n = {len(values)}",
    }


def sign_test_p(diffs: list[float]) -> float:
    """Two-sided exact sign test of a zero median difference over matched seeds (zero differences dropped; none
    left: p = 1). With n seeds its smallest p is 2 / 2^n (0.0625 at n = 5)."""
    from scipy import stats

    pos, neg = sum(d > 0 for d in diffs), sum(d < 0 for d in diffs)
    return float(stats.binomtest(pos, pos + neg, 0.5).pvalue) if pos + neg else 1.0


def seed_contrast(a: dict, b: dict, unit: str) -> dict:
    """Two arms scored per seed (``seed_rate`` / ``seed_mean`` dicts, matched by seed): a claim about training,
    with the training seed as the unit. A paired t test over the seeds, its interval clipped to a difference's
    range [−1, 1] (a rate or an AUROC minus another). Where every seed's difference is the same (every seed 100%
    against every seed 0%), a t test is undefined: the exact sign test over the seeds (at n = 5 its p is never
    below 0.0625), with, for rates, the widest of the seeds' Newcombe intervals over their own test items (each
    item counted once per seed)."""
    from heredity.reports.stats import paired_test, rate_diff_test

    t = paired_test(a["per_seed"], b["per_seed"], unit)
    if t["lo"] == t["lo"]:
        t["lo"], t["hi"] = max(-1.0, t["lo"]), min(1.0, t["hi"])
    if t["p"] == t["p"]:
        return {**t, "interval": "t over seeds, clipped to [−1, 1]"}
    diffs = [x - y for x, y in zip(a["per_seed"], b["per_seed"], strict=True)]
    lo = hi = float("nan")
    if "k" in a and "k" in b:
        per = [
            rate_diff_test(ka, na, kb, nb, unit)
            for ka, na, kb, nb in zip(a["k"], a["of"], b["k"], b["of"], strict=True)
        ]
        lo, hi = max(-1.0, min(x["lo"] for x in per)), min(1.0, max(x["hi"] for x in per))
    return {
        **t,
        "test": "exact sign test over seeds (every seed's difference the same: no t test); interval: Newcombe "
        "over each seed's test images, the widest",
        "lo": lo,
        "hi": hi,
        "p": sign_test_p(diffs),
        "interval": "Newcombe per seed, the widest",
    }


def outcomes(table: list[int]) -> tuple[list[int], list[int]]:
    """The paired 0/1 outcomes behind a 2×2 table [both, a only, b only, neither]."""
    a11, a10, a01, a00 = table
    return [1] * (a11 + a10) + [0] * (a01 + a00), [1] * a11 + [0] * a10 + [1] * a01 + [0] * a00


def every_model(tables: list[list[int]], unit: str) -> dict:
    """A claim about the trained models (not about training): each seed's model against its twin on the same
    items (McNemar's exact test, Newcombe's paired interval), one test per model, never pooling the same item
    under several models. The p is the largest of the models' (an intersection–union test: significant means
    every model shows the effect, whatever the dependence between them); the difference and interval are that
    model's."""
    from heredity.reports.stats import paired_rate_test

    per = [paired_rate_test(*outcomes(t), unit) for t in tables]
    worst = max(range(len(per)), key=lambda i: (per[i]["p"], -abs(per[i]["diff"])))
    w = per[worst]
    return {
        **w,
        "test": f"McNemar exact, each of {len(per)} models; p: the largest (every model)",
        "models": len(per),
        "weakest": worst,
        "per_model": [{k: x[k] for k in ("diff", "lo", "hi", "p", "discordant")} for x in per],
    }


def _predict(models: Models, x: np.ndarray) -> np.ndarray:
    return models.predict(x)  # [n, N]


# ---- part 1: poisoning ---------------------------------------------------------------------------


def poisoning(store: Store, data_id: str, config: Config, progress: bool) -> dict:
    from heredity.data.poison import apply_trigger

    base = {"seed": config.seed}
    out: dict = {"flips": [], "targeted": None, "badnets": [], "detection": [], "models": []}
    clean = _arrays(store, data_id)
    te = clean["split"] == "test"
    xt, yt = unit(clean["raw"][te], clean["scale"]), clean["y"][te]
    others = yt != config.patch_target
    xtrig = unit(
        apply_trigger(clean["raw"][te][others].astype(np.int64), config.patch_size, int(clean["scale"])),
        clean["scale"],
    )

    def accuracy(params):
        return [int(v) for v in (_predict(params, xt) == yt).sum(-1)]

    hits: dict[tuple[int, int], np.ndarray] = {}

    for rate in config.flip_rates:
        did = poison_step(store, data_id, {**base, "attack": "label_flip", "rate": rate})
        mid = train_step(store, did, config.spec(), progress)
        out["models"].append(mid)
        out["flips"].append(
            {
                "rate": rate,
                "model": mid,
                "dataset": did,
                "clean_accuracy": seed_rate(accuracy(load_models(store, mid)), [len(yt)] * config.seeds),
            }
        )
    did = poison_step(
        store,
        data_id,
        {
            **base,
            "attack": "targeted_flip",
            "source": config.targeted_source,
            "target": config.targeted_target,
            "fraction": config.targeted_fraction,
        },
    )
    mid = train_step(store, did, config.spec(), progress)
    out["models"].append(mid)
    p = load_models(store, mid)
    src = yt == config.targeted_source
    pred = _predict(p, xt[src])
    out["targeted"] = {
        "model": mid,
        "dataset": did,
        "clean_accuracy": seed_rate(accuracy(p), [len(yt)] * config.seeds),
        "source_accuracy": seed_rate(
            [int(v) for v in (pred == config.targeted_source).sum(-1)], [int(src.sum())] * config.seeds
        ),
        "source_to_target": seed_rate(
            [int(v) for v in (pred == config.targeted_target).sum(-1)], [int(src.sum())] * config.seeds
        ),
    }
    for width in config.widths:
        for count in config.counts:
            did = poison_step(
                store,
                data_id,
                {
                    **base,
                    "attack": "badnets",
                    "count": count,
                    "target": config.patch_target,
                    "size": config.patch_size,
                },
            )
            mid = train_step(store, did, config.spec(hidden=width), progress)
            out["models"].append(mid)
            p = load_models(store, mid)
            hits[(width, count)] = _predict(p, xtrig) == config.patch_target  # [seeds, images]
            hit = [int(v) for v in hits[(width, count)].sum(-1)]
            out["badnets"].append(
                {
                    "width": width,
                    "count": count,
                    "model": mid,
                    "dataset": did,
                    "clean_accuracy": seed_rate(accuracy(p), [len(yt)] * config.seeds),
                    "attack_success": seed_rate(hit, [int(others.sum())] * config.seeds),
                }
            )
            if width == config.hidden and count > 0 and config.detectors:
                out["detection"].append({"count": count, **detection(store, did, mid, config)})
    for b in out[
        "badnets"
    ]:  # each seed's model against its unpoisoned twin (same initialization), image by image
        if b["count"] > 0 and (b["width"], 0) in hits:
            b["vs_none"] = [
                paired_table(h, h0)
                for h, h0 in zip(hits[(b["width"], b["count"])], hits[(b["width"], 0)], strict=True)
            ]
    return out


def paired_table(a: np.ndarray, b: np.ndarray) -> list[int]:
    """[both, a only, b only, neither] of two 0/1 outcome vectors over the same items."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    return [int((a & b).sum()), int((a & ~b).sum()), int((~a & b).sum()), int((~a & ~b).sum())]


@op("detect-poison", 2, note="v2: activation clustering on the last hidden layer")
def detection(store: Store, data_id: str, model_id: str, config: Config) -> dict:
    """ART's poison detectors on the poisoned training set, per seed's model: precision and recall of the rows
    flagged (a memoized step on the dataset and the model)."""
    cfg = {"detectors": config.detectors, "expected": config.detect_expected}

    def fn(ctx):
        from heredity.evals.adversarial import classifier, detect_poison

        a = _arrays(store, data_id)
        tr = a["split"] == "train"
        x, y, truth = unit(a["raw"][tr], a["scale"]), a["y"][tr], a["poisoned"][tr]
        models = load_models(store, model_id)
        res = {}
        for method in cfg["detectors"]:
            tp, fp, fn_ = [], [], []
            for i in range(models.n):
                flagged = detect_poison(
                    classifier(models.member(i), x.shape[1], NUM_CLASSES, (-1.0, 1.0)),
                    x,
                    y,
                    method,
                    cfg["expected"],
                )
                tp.append(int((flagged & truth).sum()))
                fp.append(int((flagged & ~truth).sum()))
                fn_.append(int((~flagged & truth).sum()))
            res[method] = {"tp": tp, "fp": fp, "fn": fn_}
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
        from heredity.evals.adversarial import classifier, fgsm, pgd

        a = _arrays(store, data_id)
        te = a["split"] == "test"
        x, y = unit(a["raw"][te], a["scale"]), a["y"][te]
        ids = dict(zip(cfg["kinds"], inputs[1:4], strict=True))
        ids.update({"B": inputs[4], "C": inputs[5]})
        params = {k: load_models(store, v) for k, v in ids.items()}
        params["A"] = params["standard"]
        res: dict = {"robust": {}, "transfer": {}}
        for kind in cfg["kinds"]:
            for attack in ("fgsm", "pgd"):
                right = []
                for e in cfg["eps"]:
                    per = []
                    for i in range(params[kind].n):
                        clf = classifier(params[kind].member(i), x.shape[1], NUM_CLASSES, (-1.0, 1.0))
                        adv = (
                            fgsm(clf, x, y, 2 * e)
                            if attack == "fgsm"
                            else pgd(clf, x, y, 2 * e, cfg["pgd_steps"], cfg["seed"] + i)
                        )
                        per.append(int((clf.predict(adv).argmax(-1) == y).sum()))
                    right.append(per)
                res["robust"][f"{kind}/{attack}"] = right
        for e in cfg["eps"]:
            if e == 0:
                continue
            m = {}
            for src in cfg["siblings"]:
                advs = [
                    pgd(
                        classifier(params[src].member(i), x.shape[1], NUM_CLASSES, (-1.0, 1.0)),
                        x,
                        y,
                        2 * e,
                        cfg["pgd_steps"],
                        cfg["seed"] + i,
                    )
                    for i in range(params[src].n)
                ]
                m[src] = {
                    dst: [
                        int((_predict(params[dst].subset(i), adv)[0] != y).sum())
                        for i, adv in enumerate(advs)
                    ]
                    for dst in cfg["siblings"]
                }
            res["transfer"][str(e)] = m
        res["n"] = int(len(y))
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


# ---- part 3: uncertainty -------------------------------------------------------------------------


def _rotate(raw: np.ndarray, angle: int) -> np.ndarray:
    from scipy.ndimage import rotate

    from heredity.data.poison import image_shape

    c, h, w = image_shape(raw.shape[1])
    imgs = raw.reshape(-1, h, w).astype(np.float64)  # every channel of every image, each rotated in its plane
    return np.stack(
        [rotate(im, angle, reshape=False, order=1, mode="constant", cval=0.0) for im in imgs]
    ).reshape(len(raw), -1)


@op(
    "eval-uncertainty-digits",
    3,
    note="v2: tie-free confidence for AUROC/FPR; accuracy as counts; v3: the dropout model scored in one pass, every member's AUROC",
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
        from heredity.data.poison import apply_trigger
        from heredity.evals import uncertainty as U
        from heredity.evals.adversarial import classifier, pgd

        a = _arrays(store, data_id)
        kk, seeds = cfg["in_classes"], cfg["seeds"]
        te = a["split"] == "test"
        raw_te, y_te = a["raw"][te], a["y"][te]
        ind = y_te < kk
        xin, yin = unit(raw_te[ind], a["scale"]), y_te[ind]
        hold = holdout_rows(a, kk)
        xh, yh = unit(a["raw"][hold], a["scale"]), a["y"][hold]
        rng = np.random.default_rng(cfg["seed"])
        sets = {
            OOD_SETS[0]: unit(raw_te[~ind], a["scale"]),
            OOD_SETS[1]: rng.uniform(-1, 1, (cfg["noise_images"], xin.shape[1])).astype(np.float32),
        }
        rotated = {
            ang: unit(np.clip(_rotate(raw_te[ind], ang), 0, a["scale"]), a["scale"]) for ang in cfg["angles"]
        }
        P, D = load_models(store, inputs[1]), load_models(store, inputs[2])

        def mc(xx):
            torch.manual_seed(cfg["seed"])
            return U.mc_dropout_probs(
                np.stack([U.softmax(D.logits(xx, True)) for _ in range(cfg["mc_passes"])])
            )  # [seeds, N, C]

        temps = [
            U.fit_temperature(lg, yh) for lg in P.logits(xh)[:seeds]
        ]  # per single model, on held-out rows
        E, S = cfg["ensembles"], cfg["ensemble_size"]

        def methods(xx) -> dict[str, np.ndarray]:
            """Per method, [replicates, N, C] probabilities (replicates: seeds, or ensembles of seeds)."""
            lg = P.logits(xx)
            single = U.softmax(lg[:seeds])
            return {
                "max softmax": single,
                "temperature scaling": np.stack([U.softmax(lg[i], temps[i]) for i in range(seeds)]),
                # the dropout-trained models scored like max softmax: differs from max softmax in training
                # only, from MC dropout in inference only
                DROPOUT_ONE_PASS: U.softmax(D.logits(xx)),
                "MC dropout": mc(xx),
                "ensemble": np.stack(
                    [U.ensemble_probs(U.softmax(lg[e * S : (e + 1) * S])) for e in range(E)]
                ),
            }

        res: dict = {
            "in_distribution": {},
            "ood": {},
            "shift": {},
            "flags": {},
            "temperatures": temps,
            "reliability": {},
            "n_in": int(len(yin)),
        }
        pin = methods(xin)
        cin = {
            name: [U.confidence(p) for p in pr] for name, pr in pin.items()
        }  # in-distribution scores, once
        # every plain model on its own (max softmax), so each ensemble is compared with its own members
        cmem = [U.confidence(p) for p in U.softmax(P.logits(xin))]
        res["members_auroc"] = {}

        def against(name: str, probs: np.ndarray, metric) -> list[float]:
            """``metric`` (AUROC or FPR) of each replicate's in-distribution scores against its scores on ``probs``."""
            return [metric(ci, U.confidence(p)) for ci, p in zip(cin[name], probs, strict=True)]

        for name, pr in pin.items():
            res["in_distribution"][name] = {
                "accuracy": [int((p.argmax(-1) == yin).sum()) for p in pr],
                "nll": [U.nll(p, yin) for p in pr],
                "ece": [U.ece(p, yin) for p in pr],
            }
            res["reliability"][name] = U.reliability(pr[0], yin)
        for sname, xo in sets.items():
            po = methods(xo)
            res["ood"][sname] = {
                name: {
                    "auroc": against(name, po[name], U.auroc),
                    "fpr95": against(name, po[name], U.fpr_at_tpr),
                }
                for name in pin
            }
            res["members_auroc"][sname] = [
                U.auroc(ci, U.confidence(p)) for ci, p in zip(cmem, U.softmax(P.logits(xo)), strict=True)
            ]
            if sname == "other digits":
                from sklearn.metrics import roc_curve

                f, t, _ = roc_curve(
                    np.r_[np.ones(len(yin)), np.zeros(len(xo))],
                    np.r_[cin["ensemble"][0], U.confidence(po["ensemble"][0])],
                )
                res["roc"] = {"fpr": f.tolist(), "tpr": t.tolist(), "method": "ensemble 1", "ood": sname}
        mid = min(
            cfg["angles"], key=lambda g: abs(g - 30)
        )  # the reliability diagram under shift (few errors unrotated)
        for ang, xr in rotated.items():
            pr = methods(xr)
            if ang == mid:
                res["reliability_shift"] = {
                    "angle": ang,
                    **{name: U.reliability(pr[name][0], yin) for name in pr},
                }
            res["shift"][str(ang)] = {
                name: {
                    "accuracy": [int((p.argmax(-1) == yin).sum()) for p in pr[name]],
                    "ece": [U.ece(p, yin) for p in pr[name]],
                    "auroc": against(name, pr[name], U.auroc),
                }
                for name in pr
            }
        # does max softmax flag attacked inputs? (10-class models: the standard one and the trigger-poisoned one)
        xall, yall = unit(raw_te, a["scale"]), y_te
        std, trig = load_models(store, inputs[3]), load_models(store, inputs[4])
        au_adv, au_trig = [], []
        others = yall != cfg["patch_target"]
        xtrig = unit(
            apply_trigger(raw_te[others].astype(np.int64), cfg["patch_size"], int(a["scale"])), a["scale"]
        )
        for i in range(std.n):
            clf = classifier(std.member(i), xall.shape[1], NUM_CLASSES, (-1.0, 1.0))
            adv = pgd(clf, xall, yall, 2 * cfg["flag_eps"], cfg["pgd_steps"], cfg["seed"] + i)
            one = std.subset(i)
            au_adv.append(
                U.auroc(
                    U.confidence(U.softmax(one.logits(xall)[0])), U.confidence(U.softmax(one.logits(adv)[0]))
                )
            )
            t1 = trig.subset(i)
            au_trig.append(
                U.auroc(
                    U.confidence(U.softmax(t1.logits(xall[others])[0])),
                    U.confidence(U.softmax(t1.logits(xtrig)[0])),
                )
            )
        res["flags"] = {"pgd": au_adv, "trigger": au_trig}
        (ctx.output("uncertainty", "report", "uncertainty-digits") / "uncertainty.json").write_text(
            json.dumps(res)
        )
        return {}

    r = store.run_step("eval-uncertainty-digits", cfg, inputs, fn)
    raw = json.loads((store.path(r["uncertainty"]) / "uncertainty.json").read_text())

    n_in = raw["n_in"]

    def one(k2, v):
        if k2 == "accuracy":  # counts of n_in: a rate (Wilson over pooled images when the seeds agree)
            return seed_rate(v, [n_in] * len(v))
        return seed_mean(v, (0.0, math.inf) if k2 == "nll" else (0.0, 1.0))

    def summ(d):
        return {m: {k2: one(k2, v) for k2, v in x.items()} for m, x in d.items()}

    E, S = config.ensembles, config.ensemble_size
    members = {
        s: {"per_model": v, "per_ensemble": [float(np.mean(v[e * S : (e + 1) * S])) for e in range(E)]}
        for s, v in raw["members_auroc"].items()
    }
    return {
        "models": {"plain": plain, "dropout": drop},
        "members_auroc": members,
        "in_distribution": summ(raw["in_distribution"]),
        "ood": {s: summ(d) for s, d in raw["ood"].items()},
        "shift": {a_: summ(d) for a_, d in raw["shift"].items()},
        "flags": {k2: seed_mean(v) for k2, v in raw["flags"].items()},
        "temperatures": raw["temperatures"],
        "reliability": raw["reliability"],
        "reliability_shift": raw.get("reliability_shift"),
        "roc": raw.get("roc"),
    }


# ---- the experiment ----------------------------------------------------------------------------


TRAINING, MODELS = "training (unit: training seeds)", "trained models (unit: test images, per model)"


def planned(config: Config) -> list[dict]:
    """The planned contrasts and their Holm families, from the config alone (fixed before any model is trained;
    the report tests exactly these, a test checks it). Two families, one per unit:

    * ``TRAINING`` — claims about a training method, the training seed (or an ensemble of seeds) as the unit;
    * ``MODELS`` — claims about the trained models themselves, the test image as the unit, each model on its own.
    """
    cs, ws = config.counts, config.widths
    rows: list[dict] = []
    if 0 in cs:
        for w in ws:
            for c in cs:
                if c > 0:
                    rows.append(
                        {
                            "id": f"trigger/w{w}/c{c}",
                            "family": TRAINING,
                            "kind": "trigger",
                            "width": w,
                            "count": c,
                            "what": f"attack success, {c} triggered rows vs none (width {w})",
                        }
                    )
    nonzero = [c for c in cs if c > 0]
    if (
        nonzero and len(ws) > 1
    ):  # does the count a trigger needs grow with width? the smallest count, every width
        c = min(nonzero)  # against the narrowest (larger counts saturate on the quick grid)
        for w in ws[1:]:
            rows.append(
                {
                    "id": f"width/c{c}/w{w}",
                    "family": TRAINING,
                    "kind": "width",
                    "width": w,
                    "base": ws[0],
                    "count": c,
                    "what": f"attack success with {c} triggered rows: width {w} vs width {ws[0]}",
                }
            )
    for r in config.flip_rates[1:]:
        rows.append(
            {
                "id": f"flip/{r}",
                "family": TRAINING,
                "kind": "flip",
                "rate": r,
                "what": f"clean accuracy, {r:.0%} labels flipped vs {config.flip_rates[0]:.0%}",
            }
        )
    e = config.train_eps if config.train_eps in config.eps else config.eps[-1]
    for kind in ("fgsm-trained", "pgd-trained"):
        for attack in ("fgsm", "pgd"):
            rows.append(
                {
                    "id": f"adversarial/{kind}/{attack}",
                    "family": TRAINING,
                    "kind": "adversarial",
                    "model": kind,
                    "attack": attack,
                    "eps": e,
                    "what": f"accuracy under {attack.upper()} at ε = {e}: {kind} vs standard",
                }
            )
    for e in config.eps:
        if e > 0:
            rows.append(
                {
                    "id": f"transfer/{e}",
                    "family": TRAINING,
                    "kind": "transfer",
                    "eps": e,
                    "what": f"transfer of A's PGD examples (ε = {e}): error of B (A's init) vs C (another init)",
                }
            )
    for s in OOD_SETS:
        rows += [
            {
                "id": f"ood/{s}/ensemble",
                "family": TRAINING,
                "kind": "ensemble",
                "set": s,
                "what": f"AUROC vs {s}: ensemble vs its own {config.ensemble_size} members (max softmax, mean)",
            },
            {
                "id": f"ood/{s}/mc",
                "family": TRAINING,
                "kind": "mc",
                "set": s,
                "what": f"AUROC vs {s}: MC dropout vs the same dropout models in one pass (inference only)",
            },
            {
                "id": f"ood/{s}/dropout",
                "family": TRAINING,
                "kind": "dropout",
                "set": s,
                "what": f"AUROC vs {s}: dropout models in one pass vs max softmax (training only)",
            },
            {
                "id": f"ood/{s}/temperature",
                "family": TRAINING,
                "kind": "temperature",
                "set": s,
                "what": f"AUROC vs {s}: temperature scaling vs max softmax (the same models)",
            },
        ]
    if 0 in cs:
        for w in ws:
            for c in cs:
                if c > 0:
                    rows.append(
                        {
                            "id": f"models/w{w}/c{c}",
                            "family": MODELS,
                            "kind": "models",
                            "width": w,
                            "count": c,
                            "what": f"attack success, {c} triggered rows vs none (width {w}): every trained model "
                            "against its unpoisoned twin",
                        }
                    )
    return rows


def families(config: Config) -> dict[str, list[str]]:
    """Each Holm family's contrasts (ids), declared before the run."""
    out: dict[str, list[str]] = {}
    for r in planned(config):
        out.setdefault(r["family"], []).append(r["id"])
    return out


def compare(report: dict, config: Config) -> list[dict]:
    """Exactly the planned contrasts (``planned``), each tested at its unit, Holm within each declared family;
    a null's smallest detectable effect at the level its verdict uses (α over the family, t quantiles)."""
    from heredity.reports.stats import holm, min_detectable

    P, A, U = report["poisoning"], report["adversarial"], report["uncertainty"]
    bad = {(b["width"], b["count"]): b for b in P["badnets"]}
    flips = {f["rate"]: f for f in P["flips"]}
    n = A["n"]
    seeds = "training seeds (same initializations and data order)"
    rows = []
    for d in planned(config):
        k = d["kind"]
        if k == "trigger":
            t = seed_contrast(
                bad[(d["width"], d["count"])]["attack_success"], bad[(d["width"], 0)]["attack_success"], seeds
            )
        elif k == "width":
            t = seed_contrast(
                bad[(d["width"], d["count"])]["attack_success"],
                bad[(d["base"], d["count"])]["attack_success"],
                "training seeds (paired by index: same data order and poisoned rows, another width)",
            )
        elif k == "flip":
            t = seed_contrast(
                flips[d["rate"]]["clean_accuracy"], flips[config.flip_rates[0]]["clean_accuracy"], seeds
            )
        elif k == "adversarial":
            j = config.eps.index(d["eps"])
            t = seed_contrast(
                A["robust"][f"{d['model']}/{d['attack']}"][j],
                A["robust"][f"standard/{d['attack']}"][j],
                "training seeds (same initializations)",
            )
        elif k == "transfer":
            m = A["raw_transfer"][str(d["eps"])]
            t = seed_contrast(
                seed_rate(m["A"]["B"], [n] * len(m["A"]["B"])),
                seed_rate(m["A"]["C"], [n] * len(m["A"]["C"])),
                "training seeds (one A, B, C triple each)",
            )
        elif k == "ensemble":
            o = U["ood"][d["set"]]
            t = seed_contrast(
                o["ensemble"]["auroc"],
                {"per_seed": U["members_auroc"][d["set"]]["per_ensemble"]},
                "ensembles (each against the mean of its own members)",
            )
        elif k in ("mc", "dropout", "temperature"):
            o = U["ood"][d["set"]]
            a, b = {
                "mc": ("MC dropout", DROPOUT_ONE_PASS),
                "dropout": (DROPOUT_ONE_PASS, "max softmax"),
                "temperature": ("temperature scaling", "max softmax"),
            }[k]
            t = seed_contrast(
                o[a]["auroc"],
                o[b]["auroc"],
                "training seeds (the same models)"
                if k != "dropout"
                else "training seeds (paired by index: same data order; another stack of models)",
            )
        elif k == "models":
            t = every_model(
                bad[(d["width"], d["count"])]["vs_none"],
                f"the {n_trig(report)} triggered test images, each trained model on its own",
            )
        else:
            raise ValueError(f"unknown contrast kind {k!r}")
        rows.append({"id": d["id"], "what": d["what"], "family": d["family"], "test": t})
    for fam, ids in families(config).items():
        mine = [r for r in rows if r["family"] == fam]
        assert [r["id"] for r in mine] == ids, "the report tests exactly the declared family"
        for r, p in zip(mine, holm([r["test"]["p"] for r in mine]), strict=True):
            r["p_holm"] = p
            sd, n_ = r["test"].get("sd"), r["test"]["n"]
            t_test = (
                r["test"]["test"] == "paired t"
                and isinstance(n_, int)
                and n_ >= 2
                and sd is not None
                and sd == sd
            )
            r["mde"] = min_detectable(sd, n_, family=len(ids)) if t_test else None
            r["family_size"] = len(ids)
    return rows


def n_trig(report: dict) -> int:
    """How many triggered test images attack success is scored on (the other classes' test images)."""
    b = report["poisoning"]["badnets"][0]["attack_success"]
    return int(b["of"][0])


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
        "[2] adversarial examples: FGSM and PGD against standard, FGSM- and PGD-trained models; sibling transfer"
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


def _ci(x: dict, d: int = 3) -> str:
    from heredity.reports.stats import fmt_ci

    return fmt_ci(x, d)


def needed_count(report: dict, width: int, level: float = 0.9) -> int | None:
    """The smallest trigger count whose mean attack success reaches ``level`` at ``width`` (None: none did)."""
    hits = [
        b["count"]
        for b in report["poisoning"]["badnets"]
        if b["width"] == width and b["attack_success"]["mean"] >= level
    ]
    return min(hits) if hits else None


def outcome(r: dict, config: Config | None = None) -> str:
    from heredity.reports.stats import fmt_test, verdict

    cfg = r["config"]
    need = {w: needed_count(r, w) for w in cfg["widths"]}
    parts = [
        f"smallest trigger count on the grid {cfg['counts']} with ≥ 90% mean attack success, by width "
        "(descriptive, untested): "
        + ", ".join(
            f"w{w}: {c if c is not None else '> ' + str(max(cfg['counts']))}" for w, c in need.items()
        )
    ]
    for c in r["comparisons"]:
        if c["id"].startswith("width/"):
            parts.append(
                f"{c['what']}: {fmt_test(c['test'], 3, p=c['p_holm'])} — {verdict(c['test'], 0, p=c['p_holm'])['words']}"
            )
    models = [c for c in r["comparisons"] if c["family"] == MODELS]
    if models:
        first = {}
        for c in models:
            w = int(c["id"].split("/")[1][1:])
            if verdict(c["test"], 0, p=c["p_holm"])["significant"] and c["test"]["diff"] > 0:
                first.setdefault(w, int(c["id"].split("/")[2][1:]))
        parts.append(
            "fewest triggered rows at which every trained model is fooled significantly more than its "
            f"unpoisoned twin (McNemar per model, unit: the {n_trig(r)} triggered test images, Holm over "
            f"{len(models)}): " + ", ".join(f"w{w}: {first.get(w, 'none')}" for w in cfg["widths"])
        )
    # the primary transfer contrast is fixed in advance: the budget of flag_eps (never the largest of the sweep)
    tr = [c for c in r["comparisons"] if c["id"] == f"transfer/{cfg['flag_eps']}"]
    if tr:
        c = tr[0]
        v = verdict(c["test"], 0, p=c["p_holm"])
        parts.append(
            f"sibling transfer: {c['what']}: {fmt_test(c['test'], 3, p=c['p_holm'])} — "
            + (
                "a shared initialization transmits vulnerability"
                if v["significant"] and c["test"]["diff"] > 0
                else "the shared-init sibling is significantly LESS fooled"
                if v["significant"]
                else v["words"]
            )
        )
    o = r["uncertainty"]["ood"].get("other digits")
    if o:
        parts.append(
            f"AUROC, held-out digits (unit: training seeds; ensembles: groups of seeds): max softmax "
            f"{_ci(o['max softmax']['auroc'])}, ensemble {_ci(o['ensemble']['auroc'])}, dropout model in "
            f"one pass {_ci(o[DROPOUT_ONE_PASS]['auroc'])}, MC dropout {_ci(o['MC dropout']['auroc'])}"
        )
    return "; ".join(parts)


ANCHORS = [
    ("BadNets (Gu et al. 2017)", "> 99% attack success, clean accuracy about unchanged"),
    ("Souly et al. 2025 (LMs, 600M–13B)", "~250 poisoned documents suffice regardless of model size"),
    ("FGSM on MNIST, ε = 0.25, shallow softmax (Goodfellow et al. 2015)", "99.9% error"),
    ("PGD adversarial training on MNIST, ε = 0.3 (Madry et al. 2018)", "~89% robust accuracy"),
    (
        "max softmax baseline (Hendrycks & Gimpel 2017)",
        "detects OOD above chance; ensembles (Lakshminarayanan et al. 2017) and MC dropout (Gal & Ghahramani 2016) better; all degrade under shift (Ovadia et al. 2019)",
    ),
]


def markdown(r: dict) -> str:
    from heredity.reports.stats import fmt_test, spread_note, verdict

    c = r["config"]
    P, A, U = r["poisoning"], r["adversarial"], r["uncertainty"]
    L = [
        "# data-attacks",
        "",
        f"Data: {c['data']} (pixels in [−1, 1]; every ε below in [0, 1] pixel units); MLPs in → w → w → classes "
        f"(default w = {c['hidden']}), {c['epochs']} epochs of Adam (lr {c['lr']}, batch {c['batch']}); {c['seeds']} "
        "training seeds per model, the unit of replication of every interval (t over seeds, clipped to the "
        "quantity's range; a rate equal on every seed has no spread for a t interval and gets each seed's Wilson "
        "interval over its own test images, the widest, marked † — an image is never counted once per seed).",
        "",
        "## 1. Poisoning",
        "",
        "### Random label flips and a targeted flip",
        "",
        "| poisoned training set | clean test accuracy |",
        "|---|---|",
    ]

    def mark(x):
        return _ci(x, 3) + (" †" if str(x.get("method", "")).startswith("wilson") else "")

    for f in P["flips"]:
        L.append(f"| {f['rate']:.0%} of labels flipped | {mark(f['clean_accuracy'])} |")
    t = P["targeted"]
    L += [
        f"| {c['targeted_fraction']:.0%} of the {c['targeted_source']}s labelled {c['targeted_target']} | "
        f"{mark(t['clean_accuracy'])} (test {c['targeted_source']}s right: {mark(t['source_accuracy'])}, called "
        f"{c['targeted_target']}: {mark(t['source_to_target'])}) |",
        "",
        f"### A trigger ({c['patch_size']}×{c['patch_size']} bright corner) → label {c['patch_target']}, by count and width",
        "",
        "| width | triggered rows | share of training set | clean accuracy | attack success |",
        "|---|---|---|---|---|",
    ]
    for b in P["badnets"]:
        L.append(
            f"| {b['width']} | {b['count']} | {b['count'] / r['train_rows']:.1%} | {mark(b['clean_accuracy'])} | "
            f"{mark(b['attack_success'])} |"
        )
    L += [
        "",
        "Attack success: triggered test images of the other classes classified as the target (count 0: the "
        "trigger on a clean model — the base rate).",
        "",
    ]
    if P["detection"]:
        L += [
            f"### Detection (ART; width {c['hidden']}; spectral prior {c['detect_expected']})",
            "",
            "| triggered rows | defence | recall | precision | rows flagged (per seed) |",
            "|---|---|---|---|---|",
        ]
        for d in P["detection"]:
            for m in c["detectors"]:
                x = d[m]
                L.append(
                    f"| {d['count']} | {m.replace('_', ' ')} | {mark(x['recall'])} | "
                    f"{mark(x['precision']) if x['precision'] else 'undetermined (a seed flagged nothing)'} | {x['flagged']} |"
                )
        L.append("")
    L += [
        "## 2. Adversarial examples",
        "",
        "| model | attack | " + " | ".join(f"ε = {e}" for e in c["eps"]) + " |",
        "|---|---|" + "---|" * len(c["eps"]),
    ]
    for k, per in A["robust"].items():
        kind, attack = k.split("/")
        L.append(f"| {kind} | {attack.upper()} | " + " | ".join(mark(x) for x in per) + " |")
    L += [
        "",
        f"Accuracy on the {A['n']} test images under attack (ART; PGD: {c['pgd_steps']} steps of 2.5ε/steps, one "
        f"random start; adversarial training at ε = {c['train_eps']}).",
        "",
        "### Transfer between siblings (error rate on PGD examples crafted on the row's model)",
        "",
        "A: the standard model; B: A's initialization, the data in another order; C: another initialization, B's "
        "order (B and C differ only in the initialization).",
        "",
    ]
    for e, m in A["transfer"].items():
        L += [f"ε = {e}:", "", "| crafted on \\ tested on | A | B | C |", "|---|---|---|---|"]
        for s_, row in m.items():
            L.append(f"| {s_} | " + " | ".join(mark(row[d]) for d in ("A", "B", "C")) + " |")
        L.append("")
    L += [
        "## 3. Uncertainty",
        "",
        f"Models see digits 0–{c['in_classes'] - 1}; temperature fitted on every fifth "
        f"training row (held out); MC dropout rate {c['dropout']}, {c['mc_passes']} passes; {c['ensembles']} "
        f"ensembles of {c['ensemble_size']}. The {DROPOUT_ONE_PASS} is MC dropout's models scored like max softmax "
        "(no sampling): it differs from max softmax in training only, from MC dropout in inference only. Max "
        "softmax and temperature scaling score the first ensemble's members, so each arm is compared with the one "
        "it differs from in one thing, paired (see the planned comparisons).",
        "",
        "| method | accuracy | NLL | ECE | AUROC: "
        + " | AUROC: ".join(U["ood"])
        + " | FPR@95%TPR: "
        + " | FPR@95%TPR: ".join(U["ood"])
        + " |",
        "|---|---|---|---|" + "---|" * (2 * len(U["ood"])),
    ]
    for m, x in U["in_distribution"].items():
        L.append(
            f"| {m} | {_ci(x['accuracy'], 3)} | {_ci(x['nll'], 3)} | {_ci(x['ece'], 3)} | "
            + " | ".join(_ci(U["ood"][s][m]["auroc"], 3) for s in U["ood"])
            + " | "
            + " | ".join(_ci(U["ood"][s][m]["fpr95"], 3) for s in U["ood"])
            + " |"
        )
    temps = U.get("temperatures") or []
    L += [
        "",
        "Fitted temperatures (per seed, on the held-out fifth): "
        + ", ".join(f"{t:.3g}" for t in temps)
        + (
            ". A temperature at the search's lower bound (0.05) means the held-out rows were all classified right, "
            "so sharper is always better there: temperature scaling then over-sharpens."
            if temps and min(temps) < 0.051
            else "."
        ),
        "",
        "AUROC and FPR use −log(1 − max softmax) computed from the other classes' mass (the same ranking as max "
        "softmax, without ties where the top probability rounds to 1).",
        "",
        "Rotation (shift sweep): accuracy / ECE / AUROC against the unrotated test images.",
        "",
        "| angle | " + " | ".join(U["in_distribution"]) + " |",
        "|---|" + "---|" * len(U["in_distribution"]),
    ]
    for ang, x in U["shift"].items():
        L.append(
            f"| {ang}° | "
            + " | ".join(
                f"{x[m]['accuracy']['mean']:.2f} / {x[m]['ece']['mean']:.3f} / {x[m]['auroc']['mean']:.2f}"
                for m in U["in_distribution"]
            )
            + " |"
        )
    L += [
        "",
        f"Does max softmax flag attacked inputs (AUROC, clean vs attacked; 10-class models)? PGD at ε = "
        f"{c['flag_eps']} on the standard model: {_ci(U['flags']['pgd'], 3)}; the trigger on the model trained with "
        f"{c['flag_count']} triggered rows: {_ci(U['flags']['trigger'], 3)} (0.5 = no signal; below 0.5 = the attack "
        "makes the model *more* confident).",
        "",
        "## Planned comparisons",
        "",
        "Two-sided tests, in two Holm families declared from the config before the run (`families` in the JSON; "
        "the report tests exactly those): one per unit, never one family mixing them.",
        "",
    ]
    fams = r.get("families") or {}
    for fam, ids in fams.items():
        rows = [x for x in r["comparisons"] if x["family"] == fam]
        m = len(ids)
        if fam == TRAINING:
            L += [
                f"### Claims about training: unit training seeds (n = {c['seeds']}), {m} tests, Holm across them",
                "",
                "Paired t over the seeds (the models of a contrast share their seeds' initialization, or are paired "
                "by index where they cannot), the interval clipped to a difference's range [−1, 1]. Where every "
                "seed's difference is the same a t test is undefined: the exact sign test over the seeds (with "
                f"{c['seeds']} seeds its smallest two-sided p is {2 * 0.5 ** c['seeds']:.4g}, so such a contrast "
                f"cannot pass Holm here), with the widest of the seeds' Newcombe intervals. A null's smallest "
                f"detectable effect (80% power) is at the level the verdict uses: α = 0.05/{m}, t quantiles.",
                "",
            ]
        else:
            L += [
                f"### Claims about the trained models: unit test images, each model on its own, {m} tests, Holm "
                "across them",
                "",
                f"Each of the {c['seeds']} poisoned models against its unpoisoned twin (same initialization) on the "
                "same triggered test images: McNemar's exact test per model, never pooling an image across models. "
                "The p is the largest of the models' (an intersection–union test: significant means every one of "
                "these models), the difference and Newcombe's paired interval are that model's. This says what the "
                "trained models do, not how a new training run would go.",
                "",
            ]
        L += ["| contrast | result | reading |", "|---|---|---|"]
        for x in rows:
            v = verdict(x["test"], 0, p=x["p_holm"])
            mde = (
                f"; could have seen ±{x['mde']:.3f} (α = 0.05/{m})"
                if v["result"] == "null" and x.get("mde")
                else ""
            )
            note = (
                spread_note(x["test"]["n"])
                if v["result"] == "null" and isinstance(x["test"]["n"], int)
                else ""
            )
            L.append(
                f"| {x['what']} | {fmt_test(x['test'], 3, p=x['p_holm'])} | {v['words']}{mde}"
                + (f" ({note})" if note else "")
                + " |"
            )
        L.append("")
    L.pop()
    L += ["", "## Beside the published figures", "", "| published | their figure | ours |", "|---|---|---|"]
    need = {w: needed_count(r, w) for w in c["widths"]}
    full = next(
        (b for b in P["badnets"] if b["width"] == c["hidden"] and b["count"] == max(c["counts"])), None
    )
    clean0 = next((b for b in P["badnets"] if b["width"] == c["hidden"] and b["count"] == 0), None)
    ours = [
        f"{max(c['counts'])} rows at w{c['hidden']}: success {_ci(full['attack_success'])}, clean accuracy "
        f"{_ci(full['clean_accuracy'])} vs {_ci(clean0['clean_accuracy'])} unpoisoned"
        if full and clean0
        else "—",
        f"count for ≥ 90% mean success on the grid {c['counts']} (descriptive): "
        + ", ".join(f"w{w}: {v if v is not None else 'none'}" for w, v in need.items()),
        f"standard MLP under FGSM at ε = 0.3: accuracy {_ci(A['robust']['standard/fgsm'][-1])}"
        if c["eps"][-1] == 0.3
        else "—",
        f"PGD-trained under PGD at ε = 0.3: {_ci(A['robust']['pgd-trained/pgd'][-1])} (trained at ε = {c['train_eps']})"
        if c["eps"][-1] == 0.3
        else "—",
        f"held-out digits AUROC: max softmax {_ci(U['ood']['other digits']['max softmax']['auroc'])}, ensemble "
        f"{_ci(U['ood']['other digits']['ensemble']['auroc'])}"
        if "other digits" in U["ood"]
        else "—",
    ]
    for (what, fig), o in zip(ANCHORS, ours, strict=True):
        L.append(f"| {what} | {fig} | {o} |")
    L += ["", f"**Outcome.** {r['outcome']}.", "", f"Run time {r['seconds']:.0f} s.", ""]
    return "\n".join(L)


def plot(r: dict, path) -> None:
    """Attack success vs count per width; accuracy vs ε per training; the transfer matrix; reliability; OOD ROC."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from heredity.reports.card import yerr

    c = r["config"]
    fig, ax = plt.subplots(1, 5, figsize=(22, 4))
    for w in c["widths"]:
        bs = [b for b in r["poisoning"]["badnets"] if b["width"] == w]
        xs = [max(b["count"], 1) for b in bs]
        ax[0].errorbar(
            xs,
            [b["attack_success"]["mean"] for b in bs],
            yerr=yerr([b["attack_success"] for b in bs]),
            marker="o",
            capsize=3,
            label=f"width {w}",
        )
    ax[0].set(
        xscale="log",
        xlabel="triggered training rows (0 plotted at 1)",
        ylabel="attack success",
        ylim=(0, 1.02),
        title="poisoning: count × width",
    )
    for k, per in r["adversarial"]["robust"].items():
        ax[1].errorbar(c["eps"], [x["mean"] for x in per], yerr=yerr(per), marker="o", capsize=3, label=k)
    ax[1].set(
        xlabel="ε (pixel units)", ylabel="accuracy under attack", ylim=(0, 1.02), title="adversarial examples"
    )
    e = (
        str(c["flag_eps"])
        if str(c["flag_eps"]) in r["adversarial"]["transfer"]
        else next(iter(r["adversarial"]["transfer"]))
    )
    m = r["adversarial"]["transfer"][e]
    names = list(m)
    mat = np.array([[m[s][d]["mean"] for d in names] for s in names])
    im = ax[2].imshow(mat, vmin=0, vmax=1, cmap="viridis")
    for i in range(len(names)):
        for j in range(len(names)):
            ax[2].text(
                j, i, f"{mat[i, j]:.2f}", ha="center", va="center", color="w" if mat[i, j] < 0.6 else "k"
            )
    ax[2].set(
        xticks=range(len(names)),
        xticklabels=names,
        yticks=range(len(names)),
        yticklabels=names,
        xlabel="tested on",
        ylabel="crafted on",
        title=f"PGD transfer, error (ε = {e})",
    )
    fig.colorbar(im, ax=ax[2], fraction=0.046)
    shift = r["uncertainty"].get("reliability_shift") or {}
    rels = {k: v for k, v in shift.items() if k != "angle"} or r["uncertainty"]["reliability"]
    for name, rel in rels.items():
        conf, acc = np.array(rel["confidence"], float), np.array(rel["accuracy"], float)
        ok = np.isfinite(conf) & np.isfinite(acc)
        ax[3].plot(conf[ok], acc[ok], marker="o", label=name)
    ax[3].plot([0, 1], [0, 1], "k--", lw=0.8)
    where = f"digits rotated {shift['angle']}°" if shift else "in distribution"
    ax[3].set(xlabel="confidence", ylabel="accuracy", title=f"reliability ({where}, replicate 1)")
    roc = r["uncertainty"].get("roc")
    if roc:
        ax[4].plot(roc["fpr"], roc["tpr"], label=roc["method"])
        ax[4].plot([0, 1], [0, 1], "k--", lw=0.8)
        ax[4].set(
            xlabel="false positive rate (OOD accepted)",
            ylabel="true positive rate",
            title=f"ROC vs {roc['ood']}",
        )
    for a in ax:
        if a.get_legend_handles_labels()[0]:
            a.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
