"""The BentoML service (``service``), its request and response schemas, and the request recorder."""
