"""HSC-MAE training: `fit()` and the `python -m hscmae.train` command.

    python -m hscmae.train --config config/hsc_mae.yaml [--data SRC] [--out DIR] [--set key=value ...]

One step: mask each input vector, encode and decode it (student), embed the clean input with the
EMA teacher (no gradient), then combine the active loss terms -- masked reconstruction (sample
level), DCCA (global level), teacher-mined soft top-k InfoNCE (local level), distillation -- with
learned or fixed weights; after the optimiser step the teacher moves towards the student.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from typing import Callable, Collection, Iterator

import torch

from hscmae import losses as L
from hscmae import schedule as S
from hscmae.checkpoint import CheckpointError, check_resumable, load_checkpoint, save_checkpoint, to_cpu
from hscmae.config import Config, ConfigError, active_terms, load_config, save_config
from hscmae.data import Dataset, DataError, load_data_for
from hscmae.device import resolve_device, setup_device
from hscmae.protocol import GRID, SKIP, EvalSchedule, embed_all, held_scored, protocol_scored
from hscmae.history import HISTORY, append_history, truncate_history, write_fig_training
from hscmae.io import atomic_write_json
from hscmae.model import HSCMAE, build_model


class TrainingDiverged(RuntimeError):
    """A loss became NaN or Inf."""


def _param_groups(model: HSCMAE, log_vars: dict, weight_decay: float):
    # decay matrices only; biases, LayerNorm gains, mask values and loss log-variances are not
    # magnitudes to shrink
    decay = [p for p in model.student_parameters() if p.ndim >= 2]
    other = [p for p in model.student_parameters() if p.ndim < 2] + list(log_vars.values())
    return [{"params": decay, "weight_decay": weight_decay}, {"params": other, "weight_decay": 0.0}]


def train_step(model: HSCMAE, cfg: Config, xa: torch.Tensor, xv: torch.Tensor, gen: torch.Generator,
               log_vars: dict | None, epoch: int | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor | float]]:
    """Forward pass of one batch; returns (total loss, {loss_<term>, w_<term>}). `epoch`
    (1-based) places the step in the schedules (warm-up); None: the last epoch, past any warm-up.
    The stats are detached 0-d tensors on the batch's device (fixed weights: floats), not Python
    floats: each read would be a host-device synchronisation (fit sums them on the device)."""
    terms = active_terms(cfg)
    epoch = cfg.epochs if epoch is None else epoch
    ma, hid_a = model.mask(xa, "a", cfg.mask_ratio, gen)
    mv, hid_v = model.mask(xv, "v", cfg.mask_ratio, gen)
    ha, hv = model.encoders["a"](ma), model.encoders["v"](mv)  # what the decoders read
    za, zv = model.project(ha, "a"), model.project(hv, "v")  # what the losses see (= ha, hv without a head)
    need_teacher = "infonce" in terms or "distill" in terms
    if need_teacher:
        ta, tv = model.teacher_embed(xa, "a"), model.teacher_embed(xv, "v")
    parts: dict[str, torch.Tensor] = {}
    if "recon" in terms:
        parts["recon"] = (L.masked_recon_loss(model.decoders["a"](ha), xa, hid_a)
                          + L.masked_recon_loss(model.decoders["v"](hv), xv, hid_v)) / 2
    if "dcca" in terms:
        if cfg.dcca_input == "clean":  # the official "CCA path": the student on the clean input, with gradient
            ca, cv = model.project(model.encoders["a"](xa), "a"), model.project(model.encoders["v"](xv), "v")
        else:
            ca, cv = za, zv
        parts["dcca"] = L.dcca_loss(ca, cv, cfg.cca_dim, cfg.cca_reg)
    if "infonce" in terms:
        parts["infonce"] = L.soft_infonce(za, zv, ta, tv, cfg.top_k, cfg.temperature, cfg.affinity, cfg.pair_positive)
    if "distill" in terms:
        parts["distill"] = (L.distill_loss(za, ta) + L.distill_loss(zv, tv)) / 2
    if "cross_recon" in terms:
        parts["cross_recon"] = L.cross_recon_loss(model.cross_decoders["a2v"](ha), xv,
                                                  model.cross_decoders["v2a"](hv), xa)
    # warm-up: the fixed weights, then the learned weighting (whose log-variances get no gradient,
    # so AdamW leaves them at 0, until it switches on)
    learned = None if S.in_warmup(cfg, epoch) else log_vars
    total, weights = L.weighted_total(parts, learned, S.fixed_weights(cfg, terms, epoch))
    stats: dict[str, torch.Tensor | float] = {f"loss_{k}": v.detach() for k, v in parts.items()}
    stats.update({f"w_{k}": w for k, w in weights.items()})
    return total, stats


def build_training(cfg: Config, data: Dataset, device: str | torch.device = "cpu"):
    """(model, log_vars, optimiser, generator) of a fresh run on `device`, seeded by cfg.seed."""
    device = torch.device(device)
    torch.manual_seed(cfg.seed)  # parameter init, on the CPU: the same initial weights on every device
    # every other random draw (order, masks) comes from a generator on the device, so no draw is a
    # host-to-device copy; a CUDA generator's stream differs from the CPU's (seed noise, not bits)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    model = build_model(cfg, data).to(device)
    log_vars = ({t: torch.zeros((), device=device, requires_grad=True) for t in active_terms(cfg)}
                if cfg.learned_weights else None)
    # fused: one kernel per step for all parameters (the unfused update was ~20% of a CPU step)
    opt = torch.optim.AdamW(_param_groups(model, log_vars or {}, cfg.weight_decay), lr=cfg.lr, fused=True)
    return model, log_vars, opt, gen


def optimizer_step(model: HSCMAE, cfg: Config, opt: torch.optim.Optimizer, log_vars: dict | None,
                   xa: torch.Tensor, xv: torch.Tensor, gen: torch.Generator, where: str = "",
                   epoch: int | None = None, forward: Callable | None = None) -> dict[str, torch.Tensor | float]:
    """One training step on a batch: forward, finiteness check, backward, gradient clipping (if
    grad_clip), AdamW, EMA teacher update. Returns the step's stats (loss terms, weights, total
    "loss"; device tensors, see train_step). `where` names the step in errors; `epoch` (1-based;
    None = the last) places it in the warm-up and EMA schedules; `forward` is train_step (default)
    or its compiled form (make_forward). (bench/bench_train.py times exactly this function.)"""
    epoch = cfg.epochs if epoch is None else epoch
    try:
        total, stats = (forward or train_step)(model, cfg, xa, xv, gen, log_vars, epoch)
    except torch.linalg.LinAlgError as e:  # NaN/Inf weights reach DCCA's Cholesky first
        raise TrainingDiverged(f"DCCA's Cholesky failed at {where}: the embeddings are NaN/Inf or their "
                               f"covariance is singular ({str(e).splitlines()[0][:160]})") from None
    # the step's one host read: a NaN/Inf is caught at the step it appears, before it reaches the weights
    loss = float(total.detach())
    if not math.isfinite(loss):
        raise TrainingDiverged(f"loss is {loss} at {where} "
                               f"({', '.join(f'{k}={float(v):.4g}' for k, v in stats.items())})")
    opt.zero_grad(set_to_none=True)
    total.backward()
    if cfg.grad_clip > 0:  # the networks' gradient norm, as the official clip_grad_norm_(model.parameters())
        torch.nn.utils.clip_grad_norm_(model.student_parameters(), cfg.grad_clip)
    opt.step()
    model.update_teacher(S.ema_momentum_at(cfg, epoch))
    stats["loss"] = total.detach()
    return stats


class EpochSums:
    """An epoch's per-step stats summed on the device and read on the host once, at its end.
    float64 sums of the float32 values: the same numbers as summing them as Python floats. Which
    stats are tensors is fixed within an epoch (warm-up, with its fixed float weights, is per epoch)."""

    def __init__(self):
        self.keys: list[str] = []  # every stat, in the steps' order
        self.tensor_keys: list[str] = []
        self.on_device: torch.Tensor | None = None  # one stacked add per step, not one per stat
        self.on_host: dict[str, float] = {}  # fixed weights: plain floats
        self.n = 0

    def add(self, stats: dict[str, torch.Tensor | float]) -> None:
        if self.on_device is None:
            self.keys = list(stats)
            self.tensor_keys = [k for k in self.keys if torch.is_tensor(stats[k])]
        vec = torch.stack([stats[k] for k in self.tensor_keys]).double()
        if self.on_device is None:
            self.on_device = vec
        else:
            self.on_device += vec
        for k in self.keys:
            if k not in self.tensor_keys:
                self.on_host[k] = self.on_host.get(k, 0.0) + stats[k]
        self.n += 1

    def means(self) -> dict[str, float]:
        if self.on_device is None:
            return {}
        sums = {**dict(zip(self.tensor_keys, self.on_device.tolist())), **self.on_host}
        return {k: sums[k] / self.n for k in self.keys}


def make_forward(cfg: Config, device: torch.device) -> Callable:
    """train_step, or with cfg.compile its torch.compile'd form. On CUDA "reduce-overhead" mode
    captures CUDA graphs (a batch-64 step is ~1,450 small kernels, bound by their launches); on the
    CPU the default mode (inductor's C++ kernels). Off by default: see README (Devices)."""
    if not cfg.compile:
        return train_step
    # each run compiles its own step: dynamo guards on the model objects, so the trials a reused
    # Ray worker runs one after another would pile up recompiles until its cache limit (8), after
    # which the step silently runs eager
    torch._dynamo.reset()
    return torch.compile(train_step, mode="reduce-overhead" if device.type == "cuda" else None)


def batches(audio: torch.Tensor, visual: torch.Tensor, train_idx: torch.Tensor, batch_size: int,
            gen: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch's (audio, visual) batches as fit trains on them: a permutation of the train
    indices drawn from the run's generator (on their device), cut into n // batch_size batches (the
    ragged last one dropped: DCCA needs batch > cca_dim), each gathered with index_select from the
    preloaded tensors (~3x faster than advanced indexing, x[idx]; no DataLoader, no per-sample
    Python). The permutation is drawn at the first batch."""
    n = len(train_idx)
    order = train_idx[torch.randperm(n, generator=gen, device=train_idx.device)]
    for i in range(n // batch_size):
        idx = order[i * batch_size:(i + 1) * batch_size]
        yield audio.index_select(0, idx), visual.index_select(0, idx)


def fit(cfg: Config, data: Dataset, *, on_epoch: Callable | None = None, resume_from: str | None = None,
        out_dir: str | None = None, log: Callable[[str], None] | None = print,
        grid_epochs: Collection[int] | None = None, schedule: EvalSchedule | None = None) -> dict:
    """Train for cfg.epochs epochs, evaluating on validation after each; return final metrics,
    test included.

    on_epoch(metrics, save_checkpoint) is called after every epoch with that epoch's metrics
    ("epoch" 1-based, val_map[_a2v|_v2a], the loss terms, the learned weights; the last epoch also
    has the test scores) and a function that writes a full checkpoint atomically to a path it is
    given; returning True stops training. resume_from: a checkpoint file; training continues from
    the epoch after it and ends bit-identical to an uninterrupted run. val_map is the final
    evaluation's protocol (test-time CCA chosen on validation) at the first and last epoch and at
    grid_epochs (a search passes its ASHA rungs; None: `choice_epochs`, the default space's rungs);
    the epochs between keep the latest choice (hscmae.protocol's docstring). schedule: an
    `EvalSchedule` saying what is scored when (grid_epochs is EvalSchedule(grid_epochs,
    every=cfg.val_every); give one of the two). Every epoch's metrics also have train_s (its
    training steps) and eval_s (embedding and scoring; 0 when skipped); epoch_time_s spans both."""
    if schedule is not None and grid_epochs is not None:
        raise ValueError("fit: give grid_epochs or schedule, not both")
    schedule = schedule if schedule is not None else EvalSchedule(grid_epochs, every=cfg.val_every)
    n_train = len(data.splits["train"])
    cfg.validate(n_train=n_train)
    device = resolve_device(cfg)  # "auto" is resolved here, in the process that trains
    setup_device(cfg, device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    model, log_vars, opt, gen = build_training(cfg, data, device)
    start_epoch = 0
    held = None  # the test-time CCA choice the epochs between choice epochs keep: (reg, dim)
    if resume_from:
        state = load_checkpoint(resume_from, map_location=device)
        check_resumable(state, cfg, resume_from)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        for k, v in (log_vars or {}).items():
            v.data.copy_(state["log_vars"][k])
        start_epoch = state["epoch"]
        held = state.get("val_choice")  # older checkpoints: none, so the next epoch chooses
        saved_on = state.get("generator_device", "cpu")  # checkpoints before this key: CPU runs
        if saved_on == device.type:
            gen.set_state(state["generator"].cpu())
        else:
            # a CPU generator's state (Mersenne Twister) means nothing to a CUDA one (Philox) and
            # back: the rest of the run draws a fresh, seeded stream (seed noise, not the same bits)
            gen.manual_seed(cfg.seed * 1_000_003 + start_epoch)
            if log:
                log(f"resuming a {saved_on} checkpoint on {device}: weights and optimiser state carried over; "
                    f"data order and masks reseeded from seed {cfg.seed} and epoch {start_epoch}")

    def checkpoint_state(epoch: int) -> dict:
        return {"model": to_cpu(model.state_dict()), "optimizer": to_cpu(opt.state_dict()),
                "log_vars": {k: v.detach().cpu().clone() for k, v in (log_vars or {}).items()},
                "epoch": epoch, "generator": gen.get_state(), "generator_device": device.type,
                "config": cfg.to_dict(), "val_choice": held}

    forward = make_forward(cfg, device)
    # moved to the device once per run (a no-op on the CPU); every batch is gathered there
    audio, visual = torch.from_numpy(data.audio).to(device), torch.from_numpy(data.visual).to(device)
    train_idx = torch.from_numpy(data.splits["train"]).to(device)
    metrics: dict = {}
    scored = None
    for epoch in range(start_epoch + 1, cfg.epochs + 1):
        t0 = time.perf_counter()
        sums = EpochSums()
        for g in opt.param_groups:  # the schedule is a function of the epoch: nothing to checkpoint
            g["lr"] = S.lr_at(cfg, epoch)
        for i, (xa, xv) in enumerate(batches(audio, visual, train_idx, cfg.batch_size, gen)):
            sums.add(optimizer_step(model, cfg, opt, log_vars, xa, xv, gen, where=f"epoch {epoch}, step {i + 1}",
                                    epoch=epoch, forward=forward))
        t1 = time.perf_counter()
        kind = schedule.at(epoch, cfg.epochs)
        scores: dict = {}
        scored = None  # this epoch's evaluation (its choice and scores)
        if kind != SKIP:
            za, zv = embed_all(model, data, cfg.eval_encoder, tensors=(audio, visual))
            # the last epoch's report carries the test scores too: a scheduler may stop the trial
            # right at that report, so nothing after it is guaranteed to be seen
            splits = ("val", "test") if epoch == cfg.epochs else ("val",)
            if kind == GRID or held is None:
                scored = protocol_scored(za, zv, data, cfg, splits)
                held = [scored.scores["test_cca_reg"], int(scored.scores["test_cca_dim"])]
            else:
                scored = held_scored(za, zv, data, cfg, held, splits)
            scores = scored.scores
        t2 = time.perf_counter() if kind != SKIP else t1
        metrics = {"epoch": epoch, **sums.means(), **scores, "epoch_time_s": t2 - t0, "train_s": t1 - t0,
                   "eval_s": t2 - t1}
        if schedule.extra is not None and kind != SKIP:
            metrics.update(schedule.extra(epoch, za, zv))
        if log:
            val = (f"val_map {metrics['val_map']:.4f} (a2v {metrics['val_map_a2v']:.4f}, "
                   f"v2a {metrics['val_map_v2a']:.4f})" if "val_map" in metrics else "val skipped")
            log(f"epoch {epoch:3d}/{cfg.epochs}  loss {metrics['loss']:.4f}  {val}  {metrics['epoch_time_s']:.1f}s")

        def save(path: str, epoch=epoch) -> None:
            save_checkpoint(path, checkpoint_state(epoch))
        if out_dir:
            save(os.path.join(out_dir, "checkpoint.pt"))
        if on_epoch is not None and on_epoch(dict(metrics), save):
            break
    if "test_map" not in metrics and scored is not None:
        # stopped right after a scored epoch (the model unchanged since): its choice and val
        # scores are the final evaluation's, with the test scores of that same projection added
        metrics = {**metrics, **scored.on(data, ("val", "test"))}
    elif "test_map" not in metrics:  # stopped after a skipped epoch, or resumed with no epoch left
        za, zv = embed_all(model, data, cfg.eval_encoder, tensors=(audio, visual))
        metrics = {**metrics, "epoch": metrics.get("epoch", start_epoch),
                   **protocol_scored(za, zv, data, cfg, splits=("val", "test")).scores}
    return metrics


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m hscmae.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None, help="YAML config (default: built-in defaults)")
    p.add_argument("--data", default=None, help="folder or synthetic:ave / synthetic:vegas (default: the config's)")
    p.add_argument("--out", default="runs/train", help="folder for checkpoint.pt, config.yaml, metrics.json, "
                   "history.jsonl (one line per epoch), fig_training.png")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override config keys")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt if it exists")
    args = p.parse_args(argv)
    try:
        cfg = load_config(args.config, list(args.set) + ([f"data={args.data}"] if args.data else []))
        resolve_device(cfg)  # device: cuda on a machine without it is refused before loading data
        data = load_data_for(cfg)
        cfg.validate(n_train=len(data.splits["train"]))
        ckpt = os.path.join(args.out, "checkpoint.pt")
        resume = ckpt if args.resume and os.path.exists(ckpt) else None
        os.makedirs(args.out, exist_ok=True)
        save_config(cfg, os.path.join(args.out, "config.yaml"))
        print(f"data {data.name}: {len(data)} clips, {data.audio.shape[1]}-d audio, {data.visual.shape[1]}-d "
              f"visual; train/val/test {[len(data.splits[k]) for k in ('train', 'val', 'test')]}"
              + (f"; resuming from {resume}" if resume else ""))
        # history.jsonl: an epoch's line goes in before its checkpoint, and a resume first cuts the
        # log back to the checkpoint's epoch, so a kill anywhere leaves each epoch exactly once
        history = os.path.join(args.out, HISTORY)
        truncate_history(history, load_checkpoint(resume)["epoch"] if resume else 0)

        def on_epoch(metrics: dict, save) -> None:
            append_history(history, metrics)
            save(ckpt)
        final = fit(cfg, data, resume_from=resume, on_epoch=on_epoch)
    except (ConfigError, DataError, CheckpointError, TrainingDiverged) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    fig = write_fig_training(args.out)
    atomic_write_json(os.path.join(args.out, "metrics.json"), final)
    print(f"test_map {final['test_map']:.4f} (a2v {final['test_map_a2v']:.4f}, v2a {final['test_map_v2a']:.4f}), "
          f"val_map {final['val_map']:.4f}, test-time CCA {'on' if final['test_cca'] else 'off'}")
    print(f"wrote {os.path.join(args.out, 'metrics.json')}, {ckpt}, {history}"
          + (f" and {fig}" if fig else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
