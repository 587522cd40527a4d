"""HSC-MAE: hierarchical semantic correlation-aware masked autoencoder for unsupervised
audio-visual representation learning. Modules: config, data, model, losses, metrics, cca, train,
evaluate (plus eval, the evaluation command)."""
__version__ = "0.1.0"
