"""The networks. Importing this package registers the packaged families (one folder each)."""

from __future__ import annotations

# condseg: condseg, condseg-pvt, condseg-net0; baselines: unet, unetplusplus, deeplabv3plus
from condseg.models import baselines, condseg  # noqa: F401  (registrations)
