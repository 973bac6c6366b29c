"""The Ray layer: replay actors and clients (Ray is imported only here and lazily)."""
