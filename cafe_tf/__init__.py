"""cafe-tf: slim convolutional networks to a hardware budget and ship them to the edge."""

__version__ = "0.1.0"
