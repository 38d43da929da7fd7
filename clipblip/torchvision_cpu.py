"""``import torchvision`` beside the CPU build of torch (stdlib only; installs an import hook, imports nothing).

open_clip and timm import torchvision, for its image transforms and a few layers. PyPI's torchvision (0.28.0 pairs
with torch 2.13) is built for the CUDA build of torch: its compiled operators (``_C.so``, which links
``libtorch_cuda.so``) do not load beside the CPU wheel that clipblip pins, so torchvision has no ``torchvision::nms``
and the rest, and its import then fails where it registers fake (meta) and autograd kernels for those missing
operators (``RuntimeError: operator torchvision::nms does not exist``). Its Python parts need none of them.

:func:`install` puts a finder first on ``sys.meta_path`` that, only when torchvision's compiled operators did not
load (``torchvision.extension._has_ops()`` is false), gives ``torchvision._meta_registrations`` and
``torchvision._autograd_registrations`` as empty modules: torchvision, open_clip and timm import, their transforms
and models work, and torchvision's own C++ operators (nms, roi_align, deform_conv2d), which no exported model uses,
stay unusable, as they already were. With a torchvision whose operators load (a CPU build, or CUDA torch), the
finder does nothing. See docs/openclip.md for why this rather than another torch.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys

__all__ = ["install", "SKIPPED"]

SKIPPED = ("torchvision._meta_registrations", "torchvision._autograd_registrations")


class _SkipRegistrations(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Empty modules for torchvision's kernel registrations when its compiled operators are absent."""

    def find_spec(self, name, path=None, target=None):
        if name not in SKIPPED:
            return None
        extension = sys.modules.get("torchvision.extension")  # imported by torchvision before these two
        if extension is None or extension._has_ops():
            return None
        return importlib.machinery.ModuleSpec(name, self)

    def create_module(self, spec):
        return None  # the default module

    def exec_module(self, module) -> None:
        module.__doc__ = "Left empty by clipblip.torchvision_cpu: torchvision's compiled operators are absent."


def install() -> None:
    """Put the finder first on ``sys.meta_path`` (once)."""
    if not any(isinstance(finder, _SkipRegistrations) for finder in sys.meta_path):
        sys.meta_path.insert(0, _SkipRegistrations())
