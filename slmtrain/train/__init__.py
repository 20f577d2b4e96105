"""Pretraining with PyTorch Lightning: config, data order, module, callbacks, checkpoints, parallelism."""
