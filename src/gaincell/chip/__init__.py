"""What the chip is: the frozen config tree and presets, cell models, periphery (SPEC §3.2-3.5)."""
