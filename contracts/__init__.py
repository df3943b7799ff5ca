"""galvatron document contracts, vendored from the repository's contracts/ and schemas/ (do not edit the copy)."""
