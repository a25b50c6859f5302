"""Stage 3: label SAE concepts with masks and embed the labels with word vectors."""
