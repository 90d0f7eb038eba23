"""Fashion-MNIST (Xiao, Rasul & Vollgraf, Zalando 2017): 60,000 + 10,000 grey 28 x 28 clothes, in MNIST's format.

Search order inside ``root``: ``root`` itself if it is an ``.npz``; ``root/fashion_mnist.npz`` or
``root/fashion-mnist.npz``; torchvision's ``root/FashionMNIST/raw/*-ubyte[.gz]``; with
``download=True``, the four ``.gz`` files fetched into ``root/FashionMNIST/raw`` (MD5-checked).
Classes: 0 T-shirt/top, 1 Trouser, 2 Pullover, 3 Dress, 4 Coat, 5 Sandal, 6 Shirt, 7 Sneaker, 8 Bag, 9 Ankle boot.
"""

from __future__ import annotations

from pathlib import Path

from .dataset import ImageDataset
from .mnist import IDX_FILES, MnistStyle, download_mnist_style, load_mnist_style

__all__ = ["SOURCE", "download", "load"]

SOURCE = MnistStyle(
    name="fashion-mnist",
    folder="FashionMNIST",
    npz_names=("fashion_mnist.npz", "fashion-mnist.npz"),
    base_url="http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",  # Zalando's official bucket
    # MD5s as published by Zalando and used by torchvision
    files=tuple(zip(IDX_FILES, ("8d4fb7e6c68d591d4c3dfef9ec88bf0d", "25c81989df183df01b3e8a0aad5dffbe",
                                "bef4ecab320f06d8554ea6380940ec79", "bb300cfdad3c16e7a12a480ee83cd310"))),
    mean=(0.2860,),
    std=(0.3530,),
)


def load(root: Path, *, download: bool = False, base_url: str | None = None) -> ImageDataset:
    """Fashion-MNIST from ``root`` (see the search order above)."""
    return load_mnist_style(SOURCE, root, download=download, base_url=base_url)


def download(root: Path, *, base_url: str | None = None) -> Path:
    """Download Fashion-MNIST into ``root/FashionMNIST/raw`` and return that folder."""
    return download_mnist_style(SOURCE, root, base_url=base_url)
