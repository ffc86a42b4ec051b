"""MedSAD web viewer: a trame page for a MedSAD MONAI Label server or ``medsad infer`` outputs."""
