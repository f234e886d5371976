"""fastwam: Fast-WAM, a World Action Model that trains with video and acts without imagining it."""

__version__ = "0.1.0"
