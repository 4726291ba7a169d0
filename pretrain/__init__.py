"""Self-supervised pretraining of the three families: config, data, fbank cache and the training loop."""
