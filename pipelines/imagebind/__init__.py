"""Start from ImageBind: import its released checkpoint, all six branches, into an AnchorBind model.

``anchorbind import-imagebind imagebind_huge.pth --out models/imagebind`` (or
``BindModel.from_imagebind(path_or_state_dict, out)``) maps every tensor of ImageBind's
``imagebind_huge.pth`` onto AnchorBind's modules: the vision branch becomes the frozen anchor
(timm's OpenCLIP ViT-H/14 with its projection head), the text branch the text plugin's backbone
(a transformers ``CLIPTextModel`` read with CLIP's BPE), and audio, depth, thermal and IMU the
built-in plugins with ImageBind's trunk options. Sizes come from the checkpoint's shapes, so a
reduced checkpoint of the same architecture imports the same way. The weights are CC-BY-NC 4.0.
See ``docs/imagebind.md``.
"""

from anchorbind.pipelines.imagebind.convert import DEPTH_PRESET, IMAGEBIND_LICENSE, from_imagebind, read_checkpoint
from anchorbind.pipelines.imagebind.plan import BRANCHES, TO_ANCHORBIND, plan_import

__all__ = ["BRANCHES", "DEPTH_PRESET", "IMAGEBIND_LICENSE", "TO_ANCHORBIND", "from_imagebind", "plan_import",
           "read_checkpoint"]
