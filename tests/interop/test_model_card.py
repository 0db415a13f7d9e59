"""The model card of a hand-made export description: the name is called timm's closest family,
the kwargs that differ from the name's defaults are named, and every hash and number is there."""

from pathfm.interop.model_card import model_card, name_defaults


def test_card_names_what_differs_from_the_timm_name_and_the_hashes():
    kwargs = dict(img_size=48, patch_size=8, embed_dim=64, depth=2, num_heads=2, qkv_bias=True)
    description = {
        "timm_name": "vit_tiny_patch16_224",
        "timm_kwargs": kwargs,
        "timm_class_kwargs": {},
        "files": {"safetensors": "vit_tiny_patch16_224.safetensors"},
        "patch_size": 8,
        "embed_dim": 64,
        "image_size": 48,
        "num_registers": 0,
        "pos_interp": "official",
        "mean": [0.7, 0.6, 0.5],
        "std": [0.2, 0.2, 0.2],
        "mpps": [0.5, 1.0],
        "mpp_weights": [],
        "train_crop_size": 48,
        "method": "dino",
        "backbone": "teacher",
        "step": 300,
        "checkpoint": "/runs/tiny",
        "slides": "/data/slides.csv",
        "pathfm_version": "0.1.0",
    }
    card = model_card(description, {"vit_tiny_patch16_224.safetensors": "ab" * 32}, 64)
    assert name_defaults("vit_large_patch14_reg4_dinov2")["img_size"] == 518
    assert "only timm's closest registered family" in card
    for part in ("`img_size=48` (name: 224)", "`patch_size=8` (name: 16)", "`embed_dim=64`"):
        assert part in card
    assert "num_heads=2," in card and "qkv_bias=True," in card  # Python, not JSON, in the code
    assert "| `vit_tiny_patch16_224.safetensors` | `" + "ab" * 32 + "` |" in card
    assert "19,200 (300 steps x batch 64)" in card and "0.5, 1 um/px" in card
    assert "[0.7, 0.6, 0.5]" in card and 'pos_interp="official"' in card
    assert "not for diagnosis" in card and "`eva/bach.yaml`" in card
    assert "**Patches seen**: unknown\n" in model_card(description, {}, None)
