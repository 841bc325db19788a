"""Scenarios: site layouts plus timelines of behaviour and faults, played over real protocols."""

#: Device kind -> "module:KindAdapter class".
ADAPTERS: dict[str, str] = {
    "elevator": "simulators.scenario.elevator:ElevatorAdapter",
    "access_gate": "simulators.scenario.access_gate:AccessGateAdapter",
    "pa": "simulators.scenario.pa:PaAdapter",
    "plate_reader": "simulators.scenario.plate_reader:PlateReaderAdapter",
    "camera": "simulators.scenario.camera:CameraAdapter",
}
