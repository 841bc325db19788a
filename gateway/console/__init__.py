"""The duty console: one screen in the browser, served by the gateway (docs/console.md)."""
