"""Small helpers shared by the adapters and the daemon (ground floor: no labelcast imports)."""
