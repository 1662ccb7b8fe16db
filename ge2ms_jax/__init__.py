"""ge2ms_jax: Ge2mS-T, a spiking vision transformer in JAX/Flax.

Trains as a quantized ANN (cost independent of the number of time steps), converts losslessly to a
spiking network of ExpG-IF neurons, and runs multiplication-free group-wise spiking self-attention.
"""

__version__ = "0.1.0"
