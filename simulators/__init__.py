"""Protocol-true device simulators with fault injection, one module per device kind.

Each module exposes `add_arguments(parser)` and `async serve(args)` for `courtyard simulate`.
"""

SIMULATORS: dict[str, str] = {
    "elevator": "simulators.elevator",
    "access_gate": "simulators.access_gate",
    "broadcast": "simulators.broadcast",
    "plate_reader": "simulators.plate_reader",
    "camera": "simulators.camera",
}
