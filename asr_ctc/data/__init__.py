"""Data: speech synthesis, text grammar, audio loading, manifests and the synthetic corpus."""
