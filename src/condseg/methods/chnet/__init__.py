"""CHNet (Wei et al.): a Res2Net encoder and a pixel classification head, its recipe and the
import of the authors' checkpoints. Documented in docs/models.md, "CHNet"."""

from __future__ import annotations

from condseg.methods.chnet import convert, model, recipe  # noqa: F401  (registrations)
