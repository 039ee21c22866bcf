"""One front door for pretrained backbones: ``create_backbone(name, pretrained=...)``.

* ``timm_family``: :func:`create_backbone` for timm models, with the weight sources below;
* ``weights``: packaged weights, checkpoint files and :func:`weights_digest` (theta0's identity);
* ``spec``: :class:`BackboneSpec`, a backbone as a value that rebuilds theta0 exactly.

Weight sources: ``pretrained="packaged"`` (ImageNet weights shipped inside a package from the
registry, no download at run time), ``pretrained=True`` (timm's own hub weights, needs internet),
``checkpoint=PATH`` (a local state dict, loaded strictly) or ``pretrained=False`` (random
initialisation, seeded by ``head_seed``). With ``pretrained``, a ``num_classes`` different from the
pretrained head replaces the classifier by a seeded random one (``head_seed``): data-independent,
so choosing it costs no privacy. A ``checkpoint`` must match the whole architecture, head included.
"""

from .spec import BackboneSpec
from .timm_family import create_backbone
from .weights import PACKAGED, PackagedWeights, load_weights, map_state_dict, read_state_dict, weights_digest

__all__ = ["PACKAGED", "BackboneSpec", "PackagedWeights", "create_backbone", "load_weights", "map_state_dict",
           "read_state_dict", "weights_digest"]
