"""Collaborative fine-tuning cores: split LoRA, wire codecs, federated adapters, the domain set and byte ledger."""
