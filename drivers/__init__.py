"""Built-in drivers, listed explicitly (third-party ones come from the `courtyard.drivers` entry points)."""

BUILTIN: tuple[str, ...] = (
    "drivers.modbus_elevator:DRIVER",
)
