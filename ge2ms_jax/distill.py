"""Knowledge distillation from a trained teacher: the student also matches the teacher's soft labels.

    loss = (1 - weight) * CE(target, student) + weight * T^2 * KL(softmax(teacher / T) || softmax(student / T))

Used by spike-aware fine-tuning (`ge2ms_jax/sparsity.py`): the dense model the sparse one starts from
is also its teacher, so the student keeps the teacher's view of which classes look alike while the
sparsity term reshapes its activations. The `T^2` factor keeps the term's gradient on the scale of
the cross-entropy's as `T` grows (Hinton et al., 2015, "Distilling the knowledge in a neural network").

`config.distill` of an experiment:
  teacher: "" (off), or an export directory, an Orbax checkpoint or a training workdir of a model
    with the same `config.model` (loaded like `config.init_from`).
  weight: the KL term's share of the loss, in [0, 1].
  temperature: T > 0.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from ge2ms_jax.configs import common as configs_common


default_config = configs_common.distill_config


def check(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Returns `config.distill` (defaults where the config predates it), checked.

  Raises:
    ValueError: naming a weight outside [0, 1], a temperature that is not > 0, or a teacher that is
      not a string.
  """
  d = config.get("distill") or default_config()
  teacher, weight, temperature = d.get("teacher", ""), d.get("weight", 0.5), d.get("temperature", 2.0)
  if not isinstance(teacher, str):
    raise ValueError(f"config.distill.teacher={teacher!r}; use a path string ('' turns it off).")
  if not isinstance(weight, (int, float)) or not 0.0 <= weight <= 1.0:
    raise ValueError(f"config.distill.weight={weight!r}; use a number in [0, 1].")
  if not isinstance(temperature, (int, float)) or not temperature > 0:
    raise ValueError(f"config.distill.temperature={temperature!r}; use a number > 0.")
  return d


def enabled(config: ml_collections.ConfigDict) -> bool:
  """Whether the run distills from a teacher."""
  return bool(check(config).teacher)


def kl_term(student_logits: jax.Array, teacher_logits: jax.Array, temperature: float) -> jax.Array:
  """`T^2 * mean_batch KL(softmax(teacher / T) || softmax(student / T))`.

  Args:
    student_logits: f32 [B, K], differentiated.
    teacher_logits: f32 [B, K], treated as constants (no gradient flows into the teacher).
    temperature: T > 0.

  Returns:
    a float32 scalar >= 0; 0 exactly when the two softmaxes agree.
  """
  teacher_logits = jax.lax.stop_gradient(teacher_logits)
  t = float(temperature)
  log_p = jax.nn.log_softmax(teacher_logits.astype(jnp.float32) / t, axis=-1)
  log_q = jax.nn.log_softmax(student_logits.astype(jnp.float32) / t, axis=-1)
  kl = jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1)
  return (t * t) * jnp.mean(kl)
