"""MedSAD's MONAI Label app: configs, infer/train tasks, scoring and active learning."""
