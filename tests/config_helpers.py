"""The default config for tests, with overrides (shipped to every Bazel test target through :support)."""

import os

from cafe_tf import config as cfg

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def demo_config(**overrides):
    """configs/fashion_mnist_resnet20.py's config, with ``{"section.key": value}`` overrides."""
    config = cfg.sibling_config(os.path.join(REPO, "configs", "fashion_mnist_resnet20.py"), "fashion_mnist_resnet20.py")
    for key, value in overrides.items():
        section, name = key.split(".")
        config[section][name] = value
    return config
