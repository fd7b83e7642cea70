"""HTTP routes of the example platform, one module per area of the API."""
