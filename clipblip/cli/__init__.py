"""`clipblip` command line: export, embed, similarity, classify, caption, vqa, match, viz, demo."""

from .main import build_parser, main

__all__ = ["build_parser", "main"]
