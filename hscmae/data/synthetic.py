"""An embedded, seeded generator of paired clips with the structure HSC-MAE targets (not i.i.d.
blobs), so that nothing needs a download: "synthetic:ave" / "synthetic:vegas" / "synthetic:tiny",
optionally with overrides such as "synthetic:ave,n=2000,classes=10,seed=3"."""
from __future__ import annotations

import numpy as np

from hscmae.data.common import DataError

PRESETS = {
    # sized like AVE (4,143 clips, 28 event classes) and VEGAS (28k clips, 10 classes);
    # audio 128-d like VGGish, visual 1024-d like Inception pool features.
    "ave": dict(n=4143, classes=28, audio_dim=128, visual_dim=1024, seed=0),
    "vegas": dict(n=28000, classes=10, audio_dim=128, visual_dim=1024, seed=1),
    "tiny": dict(n=600, classes=6, audio_dim=32, visual_dim=64, seed=2),  # for tests and smoke runs
    # the presets above carry every structure the method targets (multi-event clips, events seen or
    # heard only, a class-unrelated nuisance shared by both views, mismatched pairs); real two-view
    # sets such as the digits halves have none of them. "plain" keeps only what such a set has:
    # one class per item, both views of every item, no shared nuisance, no mismatch; sized like
    # the digits sets (1,797 items, 10 classes, 32 + 32 values). Chosen by structure, not by score.
    "plain": dict(n=1797, classes=10, audio_dim=32, visual_dim=32, seed=3, p_both=1.0, mismatch=0.0,
                  max_events=1, spurious_std=0.0),
}


def _random_mlp(rng: np.random.Generator, d_in: int, d_hidden: int, d_out: int):
    """A fixed random two-layer non-linear map: what a feature extractor does to event content."""
    w1 = rng.normal(0, 1 / np.sqrt(d_in), (d_in, d_hidden))
    b1 = rng.normal(0, 0.5, d_hidden)
    w2 = rng.normal(0, 1 / np.sqrt(d_hidden), (d_hidden, d_out))
    return lambda h: np.tanh(1.5 * (h @ w1 + b1)) @ w2


def make_synthetic(n: int, classes: int, audio_dim: int, visual_dim: int, seed: int = 0,
                   latent_dim: int = 32, p_both: float = 0.7, mismatch: float = 0.1, max_events: int = 3,
                   spurious_std: float = 1.5):
    """Generate (audio, visual, labels) for `n` clips.

    Each clip holds one to three events (the first is its label). An event is heard and seen with
    probability p_both, otherwise only heard or only seen (partial observation). Each modality is a
    different random non-linear map of the content it observes plus its own nuisance; a nuisance
    shared by both modalities but unrelated to the class (spurious co-occurrence, e.g. the recording
    setting) is strongly correlated across modalities, which pulls plain CCA towards it; a fraction
    `mismatch` of the pairs have their visual vector swapped with another clip's (weak pairing).
    `max_events` < 3 caps the events per clip and `spurious_std` scales the shared nuisance (0: none);
    every random number is still drawn, so the defaults give the same data as before they existed.
    """
    rng = np.random.default_rng(seed)
    prototypes = rng.normal(0, 1, (classes, latent_dim))
    # mildly imbalanced classes, as in real event data sets
    class_p = rng.dirichlet(np.full(classes, 5.0))
    labels = rng.choice(classes, size=n, p=class_p)
    n_events = np.minimum(rng.choice([1, 2, 3], size=n, p=[0.5, 0.3, 0.2]), max_events)

    content = {"a": np.zeros((n, latent_dim)), "v": np.zeros((n, latent_dim))}
    for slot in range(3):
        active = n_events > slot
        if slot == 0:
            ev, weight = labels, np.ones(n)
        else:  # a co-occurring event of another class, weaker than the labelled one
            ev = (labels + rng.integers(1, classes, size=n)) % classes
            weight = rng.uniform(0.3, 0.8, size=n)
        instance = prototypes[ev] + 0.6 * rng.normal(0, 1, (n, latent_dim))  # intra-class variety
        u = rng.uniform(size=n)
        heard = u < p_both + (1 - p_both) / 2
        seen = (u < p_both) | (u >= p_both + (1 - p_both) / 2)
        contrib = (active * weight)[:, None] * instance
        content["a"] += heard[:, None] * contrib
        content["v"] += seen[:, None] * contrib

    spurious = spurious_std * rng.normal(0, 1, (n, 8))  # shared by both modalities, independent of the class
    audio_in = np.hstack([content["a"], spurious, rng.normal(0, 1, (n, 16))])
    visual_in = np.hstack([content["v"], spurious, rng.normal(0, 1, (n, 16))])
    audio = _random_mlp(rng, audio_in.shape[1], 256, audio_dim)(audio_in)
    # Inception pool features are non-negative: a softplus keeps that shape
    audio += 0.1 * rng.normal(0, 1, audio.shape)  # sensor noise
    visual_pre = _random_mlp(rng, visual_in.shape[1], 256, visual_dim)(visual_in)
    visual = np.logaddexp(0, visual_pre + 0.1 * rng.normal(0, 1, visual_pre.shape))

    swap = np.flatnonzero(rng.uniform(size=n) < mismatch)
    visual[swap] = visual[rng.permutation(swap)]
    return audio.astype(np.float32), visual.astype(np.float32), labels.astype(np.int64)


def parse_synthetic(source: str) -> dict:
    name, *opts = source.split(":", 1)[1].split(",")
    if name not in PRESETS:
        raise DataError(f"data source {source!r}: unknown synthetic preset {name!r}; "
                        f"expected one of {sorted(PRESETS)}")
    params = dict(PRESETS[name])
    for opt in opts:
        key, _, value = opt.partition("=")
        if key not in params:
            raise DataError(f"data source {source!r}: unknown option {key!r}; expected one of {sorted(params)}")
        kind = float if isinstance(params[key], float) else int
        try:
            params[key] = kind(value)
        except ValueError:
            raise DataError(f"data source {source!r}: option {key!r} must be {'a number' if kind is float else 'an integer'}, "
                            f"got {value!r}") from None
    return params
