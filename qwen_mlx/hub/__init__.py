"""From what a user types to a local MLX folder: aliases and hub ids, downloads, the cache of
conversions (converting on first use) and the ModelSpec every command resolves to. Imports
quant (to convert) and everything below it."""
