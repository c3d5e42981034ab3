"""Serving: the deployment (engines under a supervisor, the gateway), its fault drills, resource sampling,
performance analysis and the decoding check."""
