"""HSC-MAE's networks: a student masked autoencoder per modality and its EMA teacher.

The student encodes a masked input and decodes it back (sample level); its embeddings are the
shared space where DCCA (global level) and soft InfoNCE (local level) act. The teacher is a copy
of the encoders (and of the projection heads, when there are any), updated as an exponential
moving average of the student and run on clean inputs without gradient (MoCo's momentum encoder,
`moco/builder.py`), to give stable neighbourhoods.

Optional parts of the official recipe (config keys, all off by default so that the default model
has exactly today's modules, parameter names and initialisation order): deeper MLPs
(`enc_layers`, `dec_layers`), tanh/relu, dropout, an input BatchNorm, cross-modal decoders
(`use_cross_recon`: audio embedding -> visual input and back) and a linear projection head with L2
normalisation (`proj_head`, the official proj_a / proj_v). With a head the losses and retrieval
see the normalised projection, the decoders the encoder output (as in the official code).
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from hscmae.config import Config

ACTIVATIONS = {"gelu": nn.GELU, "tanh": nn.Tanh, "relu": nn.ReLU}


def mlp(d_in: int, d_hidden: int, d_out: int, layers: int = 2, activation: str = "gelu",
        dropout: float = 0.0, input_batchnorm: bool = False) -> nn.Sequential:
    """`layers` Linear layers d_in -> d_hidden (-> d_hidden ...) -> d_out, each hidden one followed by
    LayerNorm, the activation and (if dropout > 0) Dropout. Modules that do nothing are left out, so
    the default (2 layers, GELU, no dropout, no input norm) is Linear, LayerNorm, GELU, Linear with
    the same state_dict keys as before these options existed."""
    mods: list[nn.Module] = [nn.BatchNorm1d(d_in)] if input_batchnorm else []
    d = d_in
    for _ in range(layers - 1):
        mods += [nn.Linear(d, d_hidden), nn.LayerNorm(d_hidden), ACTIVATIONS[activation]()]
        if dropout > 0:
            mods.append(nn.Dropout(dropout))
        d = d_hidden
    mods.append(nn.Linear(d, d_out))
    return nn.Sequential(*mods)


class HSCMAE(nn.Module):
    def __init__(self, cfg: Config, audio_dim: int, visual_dim: int):
        super().__init__()
        dims = {"a": audio_dim, "v": visual_dim}

        def encoder(d_in):
            return mlp(d_in, cfg.hidden_dim, cfg.embed_dim, cfg.enc_layers, cfg.activation, cfg.enc_dropout,
                       cfg.input_batchnorm)

        def decoder(d_out):
            return mlp(cfg.embed_dim, cfg.hidden_dim, d_out, cfg.dec_layers, cfg.activation, cfg.dec_dropout)

        # construction order = parameter-initialisation order: optional parts come after today's
        self.encoders = nn.ModuleDict({m: encoder(d) for m, d in dims.items()})
        self.decoders = nn.ModuleDict({m: decoder(d) for m, d in dims.items()})
        # A learned value for masked entries (else zero = the train mean after standardisation).
        self.mask_tokens = nn.ParameterDict({
            "a": nn.Parameter(torch.zeros(audio_dim), requires_grad=cfg.mask_value == "learned"),
            "v": nn.Parameter(torch.zeros(visual_dim), requires_grad=cfg.mask_value == "learned")})
        # cross-modal decoders: "a2v" decodes the visual input from the audio embedding
        self.cross_decoders = (nn.ModuleDict({"a2v": decoder(visual_dim), "v2a": decoder(audio_dim)})
                               if cfg.use_cross_recon else None)
        self.heads = (nn.ModuleDict({m: nn.Linear(cfg.embed_dim, cfg.proj_dim) for m in dims})
                      if cfg.proj_head else None)
        self.teacher = copy.deepcopy(self.encoders) if cfg.use_ema else None
        self.teacher_heads = copy.deepcopy(self.heads) if cfg.use_ema and self.heads is not None else None
        for t in (self.teacher, self.teacher_heads):
            if t is not None:
                t.requires_grad_(False)
        self.train()

    def train(self, mode: bool = True) -> "HSCMAE":
        # the teacher always runs as at evaluation: no dropout, BatchNorm on its running statistics
        super().train(mode)
        for t in (self.teacher, self.teacher_heads):
            if t is not None:
                t.eval()
        return self

    def mask(self, x: torch.Tensor, m: str, ratio: float, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Replace a random `ratio` of each vector's entries; returns (masked x, float mask: 1.0 where
        replaced). The mask is float, not bool: multiplying by a bool tensor converts it to float
        first, once per use, which was ~1.5% of a batch-256 step."""
        # drawn where x lives, from `gen` on that device (no host-to-device copy per step)
        hidden = torch.rand(x.shape, generator=gen, device=x.device).lt_(ratio)  # in place: 1.0 / 0.0
        if not self.mask_tokens[m].requires_grad:  # the fixed zero value: x - x*h is exact and cheaper than where
            return torch.addcmul(x, x, hidden, value=-1.0), hidden
        return torch.where(hidden.bool(), self.mask_tokens[m], x), hidden

    def project(self, h: torch.Tensor, m: str, teacher: bool = False) -> torch.Tensor:
        """Encoder output -> the embedding the losses and retrieval use: the L2-normalised linear
        projection with a head, else the encoder output itself."""
        if self.heads is None:
            return h
        heads = self.teacher_heads if teacher and self.teacher_heads is not None else self.heads
        return F.normalize(heads[m](h), dim=1)

    @torch.no_grad()
    def embed(self, x: torch.Tensor, m: str, teacher: bool = True) -> torch.Tensor:
        """Clean-input embedding (no gradient) from the teacher, or from the student when
        teacher=False or the EMA teacher is off; the student is run in eval mode for it."""
        if teacher and self.teacher is not None:
            return self.project(self.teacher[m](x), m, teacher=True)
        was = self.training
        self.eval()
        try:
            return self.project(self.encoders[m](x), m)
        finally:
            self.train(was)

    def teacher_embed(self, x: torch.Tensor, m: str) -> torch.Tensor:
        """Clean-input embedding from the teacher (the student itself when the EMA teacher is off)."""
        return self.embed(x, m, teacher=True)

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        """t <- m t + (1 - m) s for every teacher parameter, in one fused foreach call. BatchNorm's
        running statistics (already moving averages) are copied from the student."""
        if self.teacher is None:
            return
        t = list(self.teacher.parameters())
        s = list(self.encoders.parameters())
        if self.teacher_heads is not None:
            t += list(self.teacher_heads.parameters())
            s += list(self.heads.parameters())
        torch._foreach_lerp_(t, s, 1.0 - momentum)
        for tb, sb in zip(self.teacher.buffers(), self.encoders.buffers()):
            tb.copy_(sb)

    def student_parameters(self):
        """What the optimiser trains: everything but the teacher."""
        return [p for n, p in self.named_parameters() if not n.startswith("teacher") and p.requires_grad]


def build_model(cfg: Config, data) -> HSCMAE:
    """The networks for cfg on `data`'s feature sizes (an hscmae.data.Dataset)."""
    return HSCMAE(cfg, data.audio.shape[1], data.visual.shape[1])
