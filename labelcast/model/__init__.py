"""The model: checkpoint resolution, preprocessing, staging and the inference backends."""
