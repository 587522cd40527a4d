"""HSC-MAE: hierarchical semantic correlation-aware masked autoencoder for unsupervised
audio-visual representation learning. Modules: config, data, model, losses, metrics, cca, train,
protocol (the retrieval protocol; eval is the evaluation command), checkpoint, export."""
__version__ = "0.1.0"
