"""The feature store: point-in-time features declared once (``features.yaml``), joined offline as of each
row's time (``offline``), served online by key (``online``)."""
