"""Training: sharded state creation (`state`), the jitted step (`step`) and the loop (`loop`)."""
