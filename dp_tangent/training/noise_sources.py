"""What a run draws its noise and Poisson batches from, by name, as each component records it.

Kept apart from the generators themselves (:mod:`.secure_random`, which loads Opacus for its sampler) so
that the driver, which writes the components, loads neither."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .config import TrainConfig

SECURE_NOISE_GENERATOR = ("ChaCha20 keystreams (pyca/cryptography, OpenSSL) under fresh 256-bit OS keys per run, "
                          "never stored; noise = std/2 x (sum of the 4 float64 normals of 2 Box-Muller pairs, each "
                          "pair's sum drawn as one normal of std sqrt(2): 2 rounded draws from 4 x 53 bits); Poisson "
                          "sampling from the same source")
SEEDED_NOISE_GENERATOR = ("torch.Generator (Mersenne Twister) seeded from the public config.seed, Poisson sampling "
                          "from torch's global generator seeded likewise: reproducible, not a CSPRNG")


def noise_generator_name(config: "TrainConfig") -> str:
    """What a private run with ``config`` draws its noise and Poisson batches from."""
    return SECURE_NOISE_GENERATOR if config.noise == "secure" else SEEDED_NOISE_GENERATOR
