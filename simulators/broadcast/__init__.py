"""Deprecated alias of `simulators.pa` (the PA simulator's name before families had one name).

`simulators.broadcast`, `.model` and `.server` are the `simulators.pa` modules themselves, not
copies: the server patches asyncua once at import, and a second copy would patch it twice.
`BroadcastSimulator` is `PaSimulator`. Import `simulators.pa` instead; this alias goes with the
next incompatible release.
"""

from __future__ import annotations

import sys
import warnings

from simulators.pa import PaModel, PaSimulator, add_arguments, model, serve, server

BroadcastSimulator = PaSimulator

__all__ = ["BroadcastSimulator", "PaModel", "PaSimulator", "add_arguments", "serve"]

sys.modules[f"{__name__}.model"] = model
sys.modules[f"{__name__}.server"] = server
warnings.warn("simulators.broadcast is deprecated: import simulators.pa", DeprecationWarning, stacklevel=2)
