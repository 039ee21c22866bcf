"""Components: what one private training run produces, and how components combine into one model.

* ``component``: the component file (deltas + validated metadata, one safetensors file);
* ``manifest``: which records a component saw, as keyed commitments;
* ``compose``: Tangent Model Composition -- mean, sum, task arithmetic (and regmean);
* ``regmean``: the least-squares merge on public merge inputs, by conjugate gradients;
* ``centroid``: the centroid of public fine-tuned models as a new linearization point;
* ``rebuild``: a component's tangent model, rebuilt from its metadata.
"""

from ..lazy import lazy_package

_EXPORTS = {
    **dict.fromkeys(["Centroid", "CentroidRecord", "centroid_base", "save_centroid", "state_digest"], ".centroid"),
    **dict.fromkeys(["NON_PRIVATE_LABEL", "Component", "ComponentError", "ComponentMetadata", "Deltas",
                     "deltas_digest", "load_component", "read_metadata", "save_component"], ".component"),
    **dict.fromkeys(["METHODS", "ComposedPart", "Composition", "CompositionRecord", "check_compatible", "compose",
                     "weighted_sum"], ".compose"),
    **dict.fromkeys(["CompositionError", "PrivateMergeDataError"], ".errors"),
    "tangent_for": ".rebuild",
    **dict.fromkeys(["conjugate_gradients", "tensor_digest"], ".regmean"),
}
lazy_package(__name__, _EXPORTS)

__all__ = ["METHODS", "NON_PRIVATE_LABEL", "Centroid", "CentroidRecord", "Component", "ComponentError",
           "ComponentMetadata", "ComposedPart", "Composition", "CompositionError", "CompositionRecord", "Deltas",
           "PrivateMergeDataError", "centroid_base", "check_compatible", "compose", "conjugate_gradients",
           "deltas_digest", "load_component", "read_metadata", "save_centroid", "save_component", "state_digest",
           "tangent_for", "tensor_digest", "weighted_sum"]
