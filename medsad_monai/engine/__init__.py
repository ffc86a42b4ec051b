"""Training, evaluation and inference engines for MedSAD (metrics, reports, train, inference)."""
