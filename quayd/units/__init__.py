"""The unit file format: TOML in, validated models out. Knows nothing of containers or hosts."""
