"""Prompt learner (causal text encoding, learnable vectors) and TPCA."""

from __future__ import annotations

import torch

from medsad_monai.networks import MedSADCLIP, TokenPatchCrossAttention


def test_prompt_tokens_are_spliced_before_eot(tiny_config):
    model = MedSADCLIP(tiny_config)
    prompt = model.prompt
    assert prompt.sentences == ["a photo of a normal brain.", "a photo of a damaged brain."]
    for row in range(prompt.token_ids.shape[0]):
        ctx_positions = prompt.ctx_mask[row].nonzero().flatten()
        assert len(ctx_positions) == tiny_config.n_ctx
        assert int(ctx_positions.max()) + 1 == int(prompt.eot_index[row])
        # padding after EOT is masked out, everything up to EOT is valid
        assert prompt.token_mask[row].sum() == prompt.eot_index[row] + 1


def test_causal_mask_later_token_does_not_change_earlier_outputs(tiny_config):
    torch.manual_seed(0)
    model = MedSADCLIP(tiny_config)
    prompt = model.prompt
    with torch.no_grad():
        emb = prompt.embed_tokens()
        base = prompt.encode(emb)
        j = 6
        changed = emb.clone()
        changed[:, j] += torch.randn_like(changed[:, j])
        out = prompt.encode(changed)
    assert torch.allclose(base[:, :j], out[:, :j], atol=1e-6)
    assert not torch.allclose(base[:, j:], out[:, j:], atol=1e-3)


def test_learnable_vectors_change_the_sentence_embedding(tiny_config):
    model = MedSADCLIP(tiny_config)
    with torch.no_grad():
        before = model.prompt().sentence.clone()
        model.prompt.ctx.add_(torch.randn_like(model.prompt.ctx))
        after = model.prompt().sentence
    assert not torch.allclose(before, after)


def test_fixed_prompts_have_no_learnable_vectors(tiny_config):
    model = MedSADCLIP(tiny_config.replace(learnable_prompt=False))
    assert model.prompt.ctx is None
    assert not model.prompt.ctx_mask.any()


def test_tpca_output_is_unchanged_when_padding_token_embeddings_change():
    torch.manual_seed(0)
    tpca = TokenPatchCrossAttention(dim=32, num_tokens=6, heads=4)
    tokens = torch.randn(6, 32)
    mask = torch.tensor([True, True, True, True, False, False])
    patches = torch.randn(2, 16, 32)
    out = tpca(tokens, mask, patches, (4, 4))
    tokens2 = tokens.clone()
    tokens2[4:] = torch.randn(2, 32) * 100
    out2 = tpca(tokens2, mask, patches, (4, 4))
    assert out.shape == (2, 32 + 6, 4, 4)
    assert torch.equal(out, out2)
    # and a change to a valid token does change it
    tokens3 = tokens.clone()
    tokens3[0] += 1.0
    assert not torch.allclose(out, tpca(tokens3, mask, patches, (4, 4)))


def test_tpca_map_is_head_averaged_softmax_over_patches_transposed():
    torch.manual_seed(0)
    tpca = TokenPatchCrossAttention(dim=8, num_tokens=3, heads=2)
    tokens, patches = torch.randn(3, 8), torch.randn(1, 4, 8)
    mask = torch.ones(3, dtype=torch.bool)
    attn = tpca.attention_map(tokens, mask, patches)  # (1, N, T)
    q = tpca.q(tokens).reshape(3, 2, 4)
    k = tpca.k(patches[0]).reshape(4, 2, 4)
    expected = torch.stack([torch.softmax(q[:, h] @ k[:, h].T / 2.0, dim=-1) for h in range(2)]).mean(0)  # (T, N)
    assert torch.allclose(attn[0], expected.T * 4, atol=1e-5)
    assert torch.allclose(attn[0].sum(0), torch.full((3,), 4.0), atol=1e-5)  # each token sums to N


def test_tpca_rows_follow_patch_major_grid_order():
    torch.manual_seed(0)
    tpca = TokenPatchCrossAttention(dim=8, num_tokens=2, heads=2)
    patches = torch.randn(1, 6, 8)
    out = tpca(torch.randn(2, 8), torch.ones(2, dtype=torch.bool), patches, (2, 3))
    assert torch.equal(out[0, :8, 1, 2], patches[0, 5])
