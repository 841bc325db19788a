"""Built-in drivers, listed explicitly (third-party ones come from the `courtyard.drivers` entry points)."""

BUILTIN: tuple[str, ...] = (
    "drivers.modbus_elevator:DRIVER",
    "drivers.http_plate_reader:DRIVER",
    "drivers.opcua_pa:DRIVER",
    "drivers.ble_access_gate:DRIVER",
    "drivers.camera:DRIVER",
)
