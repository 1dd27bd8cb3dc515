"""What every part of the package uses: one-line errors, atomic JSON, the hub and offline resources, the HTTP
client pool, figures, local processes, and the ASGI helpers (start-up errors, the stall watchdog)."""
