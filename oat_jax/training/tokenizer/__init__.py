"""Training of OAT tokenizers: the trainer (`trainer.train_and_evaluate`), its step (`step`), the objective
(`objective`), chunk augmentation (`augment`), held-out evaluation (`evaluation`) and the export of a checkpoint as a
tokenizer directory (`export`)."""
