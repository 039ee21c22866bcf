"""One front door for pretrained backbones: ``create_backbone(name, pretrained=...)``.

* ``timm_family``: :func:`create_backbone` for timm models, with the weight sources below;
* ``weights``: packaged weights, checkpoint files and :func:`weights_digest` (theta0's identity);
* ``spec``: :class:`BackboneSpec`, a backbone as a value that rebuilds theta0 exactly;
* ``families``: how a spec is built, by registration (``timm``; ``mlp`` in ``mlp_family``: tabular MLPs
  with a random or publicly pretrained theta0; ``transformers`` in ``hf_family``: Hugging Face text
  encoders with a linear head, e.g. the packaged all-MiniLM-L6-v2).

Weight sources: ``pretrained="packaged"`` (ImageNet weights shipped inside a package from the
registry, no download at run time), ``pretrained=True`` (timm's own hub weights, needs internet),
``checkpoint=PATH`` (a local state dict, loaded strictly) or ``pretrained=False`` (random
initialisation, seeded by ``head_seed``). With ``pretrained``, a ``num_classes`` different from the
pretrained head replaces the classifier by a seeded random one (``head_seed``): data-independent,
so choosing it costs no privacy. A ``checkpoint`` must match the whole architecture, head included.
"""

from ..lazy import lazy_package

# imported on first use, a family's module when the family is first named (``families.BUILT_IN``): a table's
# MLP never imports timm
_LAZY = {
    **dict.fromkeys(("BackboneFamily", "family", "family_names", "register_family"), ".families"),
    "BackboneSpec": ".spec",
    "create_backbone": ".timm_family",
    **dict.fromkeys(("PACKAGED", "PackagedWeights", "load_weights", "map_state_dict", "read_state_dict",
                     "weights_digest"), ".weights"),
}

__all__ = ["PACKAGED", "BackboneFamily", "BackboneSpec", "family", "family_names", "register_family", "PackagedWeights",
           "create_backbone", "load_weights", "map_state_dict", "read_state_dict", "weights_digest"]

lazy_package(__name__, _LAZY)
