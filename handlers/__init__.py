"""HTTP handlers: thin layers over the api schema's functions."""
