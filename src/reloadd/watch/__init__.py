"""Watch backends: they turn file-system activity into batches of changed paths."""
