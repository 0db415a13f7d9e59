"""PyTorch interop: pathfm ViT backbones to and from timm `VisionTransformer` state dicts.

`key_map` holds the one mapping between the two layouts (used in both directions),
`timm_names` the timm model name and kwargs of an architecture, `timm_export` / `timm_import`
the files (`pathfm.runs.export` is the `export` mode of the command line). Nothing here imports
torch except inside the functions that write or read `.pth` files (the `export` extra).
"""
