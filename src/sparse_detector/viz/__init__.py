"""Pictures: detections, attention maps, curves."""
