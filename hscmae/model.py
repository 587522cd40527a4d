"""HSC-MAE's networks: a student masked autoencoder per modality and its EMA teacher.

The student encodes a masked input and decodes it back (sample level); its embeddings are the
shared space where DCCA (global level) and soft InfoNCE (local level) act. The teacher is a copy
of the encoders, updated as an exponential moving average of the student and run on clean inputs
without gradient (MoCo's momentum encoder, `moco/builder.py`), to give stable neighbourhoods.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from hscmae.config import Config


def mlp(d_in: int, d_hidden: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, d_hidden), nn.LayerNorm(d_hidden), nn.GELU(), nn.Linear(d_hidden, d_out))


class HSCMAE(nn.Module):
    def __init__(self, cfg: Config, audio_dim: int, visual_dim: int):
        super().__init__()
        self.encoders = nn.ModuleDict({"a": mlp(audio_dim, cfg.hidden_dim, cfg.embed_dim),
                                       "v": mlp(visual_dim, cfg.hidden_dim, cfg.embed_dim)})
        self.decoders = nn.ModuleDict({"a": mlp(cfg.embed_dim, cfg.hidden_dim, audio_dim),
                                       "v": mlp(cfg.embed_dim, cfg.hidden_dim, visual_dim)})
        # A learned value for masked entries (else zero = the train mean after standardisation).
        self.mask_tokens = nn.ParameterDict({
            "a": nn.Parameter(torch.zeros(audio_dim), requires_grad=cfg.mask_value == "learned"),
            "v": nn.Parameter(torch.zeros(visual_dim), requires_grad=cfg.mask_value == "learned")})
        self.teacher = copy.deepcopy(self.encoders) if cfg.use_ema else None
        if self.teacher is not None:
            self.teacher.requires_grad_(False)

    def mask(self, x: torch.Tensor, m: str, ratio: float, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Replace a random `ratio` of each vector's entries; returns (masked x, float mask: 1.0 where
        replaced). The mask is float, not bool: multiplying by a bool tensor converts it to float
        first, once per use, which was ~1.5% of a batch-256 step."""
        hidden = torch.rand(x.shape, generator=gen).lt_(ratio)  # in place: 1.0 / 0.0
        if not self.mask_tokens[m].requires_grad:  # the fixed zero value: x - x*h is exact and cheaper than where
            return torch.addcmul(x, x, hidden, value=-1.0), hidden
        return torch.where(hidden.bool(), self.mask_tokens[m], x), hidden

    @torch.no_grad()
    def teacher_embed(self, x: torch.Tensor, m: str) -> torch.Tensor:
        """Clean-input embedding from the teacher (the student itself when the EMA teacher is off)."""
        enc = self.teacher if self.teacher is not None else self.encoders
        return enc[m](x)

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        """t <- m t + (1 - m) s for every teacher parameter, in one fused foreach call."""
        if self.teacher is None:
            return
        t = list(self.teacher.parameters())
        s = list(self.encoders.parameters())
        torch._foreach_lerp_(t, s, 1.0 - momentum)

    def student_parameters(self):
        """What the optimiser trains: everything but the teacher."""
        return [p for n, p in self.named_parameters() if not n.startswith("teacher.") and p.requires_grad]
