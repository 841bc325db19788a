"""Shipped scenario files (YAML). `files()` lists them; see docs/scenarios.md for the format."""

from pathlib import Path

HERE = Path(__file__).parent


def files() -> dict[str, Path]:
    """Scenario name (file stem) -> path."""
    return {p.stem: p for p in sorted(HERE.glob("*.yaml"))}
