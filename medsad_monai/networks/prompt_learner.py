"""Learnable prompts (paper §3.3): normal/abnormal anchors + learnable token vectors."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from medsad_monai.networks.clip_backbone import run_transformer

__all__ = ["PromptLearner", "TextFeatures"]


@dataclass
class TextFeatures:
    """Text-side outputs of the prompt learner, all in CLIP's joint embedding space.

    Attributes:
        sentence: EOT embedding of every prompt (P, D).
        tokens: per-position embeddings of every prompt (P, L, D).
        token_mask: True at valid positions (start token … EOT), False on padding (P, L).
        is_abnormal: True for abnormal prompts (P,).
        prototypes: L2-normalised mean normal / mean abnormal sentence embedding (2, D).
    """

    sentence: torch.Tensor
    tokens: torch.Tensor
    token_mask: torch.Tensor
    is_abnormal: torch.Tensor
    prototypes: torch.Tensor

    def abnormal_tokens(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Token embeddings of the abnormal prompts, flattened: (Pa·L, D) and mask (Pa·L,)."""
        tokens = self.tokens[self.is_abnormal]
        mask = self.token_mask[self.is_abnormal]
        return tokens.reshape(-1, tokens.shape[-1]), mask.reshape(-1)


class PromptLearner(nn.Module):
    """Encodes ``template.format(category)`` prompts with ``n_ctx`` learnable vectors spliced in.

    Each prompt is tokenised as ``[SOT] words… [ctx_1 … ctx_n] [EOT] [pad…]``; the placeholder
    positions take the learnable vectors of the prompt's state (normal or abnormal, each
    ``N(0, 0.02)``). The frozen text transformer runs **with CLIP's causal mask**, then
    ``ln_final`` and ``text_projection`` are applied at *all* positions, so the EOT position gives
    the sentence embedding and the valid positions give per-token embeddings.

    The sequence is cut to the longest prompt: with a causal mask, positions after a prompt's
    EOT never influence it, so this equals running the full context length, only cheaper.

    Args:
        clip: an open_clip ``CLIP`` model (its text tower is used, not copied).
        tokenizer: the matching open_clip tokenizer.
        category: organ / object name.
        normal_templates, abnormal_templates: templates with one ``{}``.
        n_ctx: learnable vectors per state.
        learnable: when False no vectors are spliced in (fixed prompts, ablation ``adapt``).
    """

    def __init__(
        self,
        clip: nn.Module,
        tokenizer,
        category: str,
        normal_templates: list[str],
        abnormal_templates: list[str],
        n_ctx: int = 10,
        learnable: bool = True,
    ) -> None:
        super().__init__()
        self.clip = [clip]  # kept out of the module tree: the backbone owns it
        self.n_ctx = n_ctx if learnable else 0
        sentences = [t.format(category) for t in normal_templates + abnormal_templates]
        is_abnormal = [False] * len(normal_templates) + [True] * len(abnormal_templates)
        raw = tokenizer(sentences)  # (P, context_length)
        context_length = raw.shape[1]
        eot_id = int(getattr(tokenizer, "eot_token_id", raw.max()))
        rows, ctx_slots, eots = [], [], []
        for sentence, ids in zip(sentences, raw.tolist()):
            if eot_id not in ids:
                raise ValueError(f"prompt {sentence!r} does not fit CLIP's context of {context_length} tokens")
            body = ids[: ids.index(eot_id)]
            if len(body) + self.n_ctx + 1 > context_length:
                raise ValueError(
                    f"prompt {sentence!r} plus {self.n_ctx} learnable tokens exceeds the context "
                    f"length {context_length}; shorten the template or lower n_ctx"
                )
            ctx_slots.append(list(range(len(body), len(body) + self.n_ctx)))
            row = body + [0] * self.n_ctx + [eot_id]
            eots.append(len(row) - 1)
            rows.append(row)
        length = max(len(r) for r in rows)
        token_ids = torch.zeros(len(rows), length, dtype=torch.long)
        ctx_mask = torch.zeros(len(rows), length, dtype=torch.bool)
        for i, row in enumerate(rows):
            token_ids[i, : len(row)] = torch.tensor(row)
            ctx_mask[i, ctx_slots[i]] = True
        positions = torch.arange(length)
        eot_index = torch.tensor(eots)
        self.register_buffer("token_ids", token_ids, persistent=False)
        self.register_buffer("ctx_mask", ctx_mask, persistent=False)
        self.register_buffer("eot_index", eot_index, persistent=False)
        self.register_buffer("token_mask", positions[None, :] <= eot_index[:, None], persistent=False)
        self.register_buffer("is_abnormal", torch.tensor(is_abnormal), persistent=False)
        self.sentences = sentences
        width = clip.token_embedding.weight.shape[1]
        if self.n_ctx:
            self.ctx = nn.Parameter(torch.randn(2, self.n_ctx, width) * 0.02)  # (state, n_ctx, W)
        else:
            self.register_parameter("ctx", None)

    @property
    def seq_len(self) -> int:
        """Number of token positions every prompt is encoded with."""
        return int(self.token_ids.shape[1])

    @property
    def num_abnormal_tokens(self) -> int:
        """Rows of :meth:`TextFeatures.abnormal_tokens` (the TPCA query count)."""
        return int(self.is_abnormal.sum()) * self.seq_len

    def version(self) -> int:
        """Changes whenever the learnable vectors change (optimizer step, state-dict load)."""
        return -1 if self.ctx is None else self.ctx._version

    def embed_tokens(self) -> torch.Tensor:
        """Token embeddings with the learnable vectors spliced in: (P, L, W)."""
        clip = self.clip[0]
        x = clip.token_embedding(self.token_ids)
        if self.ctx is not None:
            ctx = self.ctx[self.is_abnormal.long()]  # (P, n_ctx, W)
            x = x.masked_scatter(self.ctx_mask[..., None], ctx.to(x.dtype))
        return x

    def encode(self, token_embeddings: torch.Tensor) -> torch.Tensor:
        """Causal text transformer + ``ln_final`` + projection at every position: (P, L, D)."""
        clip = self.clip[0]
        length = token_embeddings.shape[1]
        x = token_embeddings + clip.positional_embedding[:length].to(token_embeddings.dtype)
        attn_mask = clip.attn_mask[:length, :length]
        x = run_transformer(clip.transformer, x, attn_mask)  # batch-first attention: fast in bf16 too
        x = clip.ln_final(x)
        proj = clip.text_projection
        return proj(x) if isinstance(proj, nn.Linear) else x @ proj

    def forward(self) -> TextFeatures:
        """Encode all prompts."""
        tokens = self.encode(self.embed_tokens())
        sentence = tokens[torch.arange(tokens.shape[0], device=tokens.device), self.eot_index]
        unit = F.normalize(sentence, dim=-1)
        prototypes = torch.stack([unit[~self.is_abnormal].mean(0), unit[self.is_abnormal].mean(0)])
        return TextFeatures(
            sentence=sentence,
            tokens=tokens,
            token_mask=self.token_mask,
            is_abnormal=self.is_abnormal,
            prototypes=F.normalize(prototypes, dim=-1),
        )
