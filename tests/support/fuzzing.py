"""How long the property tests search: a short run in `make test`, a longer one with `make fuzz`.

`SWITCHPOINT_FUZZ_SCALE` multiplies every property test's example count (1 by default); a failure
prints the shrunk example and a `@seed` to replay it.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

SCALE = max(1, int(os.environ.get("SWITCHPOINT_FUZZ_SCALE", "1")))


def search(examples: int) -> settings:
    """Settings for a property test that tries `examples` inputs per unit of scale; module-scoped
    fixtures (an engine built once) are shared across examples on purpose."""
    return settings(
        max_examples=examples * SCALE,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )
