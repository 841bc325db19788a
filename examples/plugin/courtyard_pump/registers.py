"""The controller's register map, shared by the driver and the simulator (holding registers)."""

from __future__ import annotations

ADDRESS = 0
COUNT = 4
#: Register 0 bits.
RUNNING = 0x1
OVERHEAT = 0x2
# Registers 1..3: outlet pressure in centibar, flow in L/min, motor temperature in 0.1 degC.
