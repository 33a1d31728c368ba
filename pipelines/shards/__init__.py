"""Writing WebDataset shards: the procedural world, and users' folders or manifests."""
