"""The networks. Importing this package registers the packaged families (one folder each)."""

from __future__ import annotations

from condseg.models import condseg  # noqa: F401  (registers condseg, condseg-pvt, condseg-net0)
