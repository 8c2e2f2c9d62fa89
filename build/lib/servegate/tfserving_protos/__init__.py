"""Generated protobuf modules for TF Serving's batching and monitoring configuration (see
README.md here: how they were generated, and why they are ours)."""
