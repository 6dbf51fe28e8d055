"""What is embedded: the image towers of CLIP (open_clip) and of the offline EfficientNet-Lite, with
their weights (finding and fetching them) and preprocessing."""
