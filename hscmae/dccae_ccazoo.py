"""One cca-zoo DCCAE run (a baseline, beside hscmae/baselines.py), in the interpreter that has cca-zoo.

    PYTHONPATH=<repo> <python with cca-zoo[deep]> -m hscmae.dccae_ccazoo '<json spec>'

cca-zoo is not a dependency of this project, and this module imports it only inside main(), so
importing the module needs no cca-zoo: bench/bench_quality.py runs it with the Python given by
--ccazoo-python (a separate virtual environment with `cca-zoo[deep]`, which reuses our torch 2.13),
and reads one JSON line from its stdout.

spec: {"data": source, "seed": int, "lr": float, "n_components": int, "hidden_dim": int,
"batch_size": int, "epochs": int, "lam": float}. The model is cca-zoo's `DCCAE` (its MCCA loss,
its reconstruction loss, its Adam from configure_optimizers) with our MLP shape
(`hscmae.model.mlp`: Linear-LayerNorm-GELU-Linear) for the encoders and decoders, trained by a plain
loop over shuffled batches (Lightning's Trainer adds nothing on one CPU); the embeddings are scored
with our protocol (`hscmae.protocol.protocol_scores`), raw and with test-time CCA chosen on val.
"""
from __future__ import annotations

import json
import sys

import torch


def main(spec: dict) -> dict:
    from cca_zoo.deep import DCCAE

    from hscmae.config import config_from_dict
    from hscmae.data import load_data
    from hscmae.protocol import protocol_scores
    from hscmae.model import mlp

    torch.set_num_threads(1)
    data = load_data(spec["data"])
    da, dv = data.audio.shape[1], data.visual.shape[1]
    h, k = spec["hidden_dim"], spec["n_components"]
    torch.manual_seed(spec["seed"])
    model = DCCAE(n_components=k, encoders=[mlp(da, h, k), mlp(dv, h, k)], decoders=[mlp(k, h, da), mlp(k, h, dv)],
                  lam=spec["lam"], learning_rate=spec["lr"])
    opt = model.configure_optimizers()
    gen = torch.Generator().manual_seed(spec["seed"])
    audio, visual = torch.from_numpy(data.audio), torch.from_numpy(data.visual)
    train = torch.from_numpy(data.splits["train"])
    b = spec["batch_size"]
    model.train()
    for _ in range(spec["epochs"]):
        order = train[torch.randperm(len(train), generator=gen)]
        for i in range(len(train) // b):
            idx = order[i * b:(i + 1) * b]
            loss = model.loss({"views": [audio[idx], visual[idx]]})["objective"]
            if not torch.isfinite(loss):
                raise RuntimeError(f"cca-zoo DCCAE: loss {float(loss)}")
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        za, zv = (z.numpy() for z in model([audio, visual]))
    out = {}
    for mode in ("off", "auto"):
        cfg = config_from_dict({"data": spec["data"], "embed_dim": k, "cca_dim": min(k, 8), "test_cca": mode})
        out[mode] = protocol_scores(za, zv, data, cfg, splits=("val", "test"))
    return out


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))))
