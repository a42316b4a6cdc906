"""Loading multimodal processors without torchvision.

In transformers 5.x several processors (Qwen2.5-VL, LLaVA-OneVision, SmolVLM) hold a video
processor that cannot be built without torchvision, so ``AutoProcessor`` quietly returns the bare
tokenizer. vlminterp only needs images: :func:`image_only` drops the video part of such a class, and
:func:`image_only_loader` gives a family's ``load_processor``.

Example:
    >>> from transformers import LlavaOnevisionProcessor
    >>> image_only(LlavaOnevisionProcessor).get_attributes()
    ['image_processor', 'tokenizer']
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

__all__ = ["image_only", "image_only_loader"]


@functools.cache
def image_only(processor_cls: type) -> type:
    """A subclass of ``processor_cls`` with only an image processor and a tokenizer (no video)."""

    class ImageOnly(processor_cls):  # type: ignore[misc, valid-type]
        @classmethod
        def get_attributes(cls) -> list[str]:
            return ["image_processor", "tokenizer"]

        def __init__(self, image_processor: Any = None, tokenizer: Any = None, **kwargs: Any):
            super().__init__(
                image_processor=image_processor, tokenizer=tokenizer, video_processor=None, **kwargs
            )

        @classmethod
        def from_args_and_dict(cls, args: Any, processor_dict: dict[str, Any], **kwargs: Any) -> Any:
            # transformers keeps only the arguments named in __init__'s code object, which are
            # **kwargs here: pass the saved ones through to the parent's __init__ instead.
            dropped = {"auto_map", "processor_class", *cls.get_attributes()}
            saved = {k: v for k, v in processor_dict.items() if k not in dropped}
            return cls(*args, **{**saved, **kwargs})

    # save_pretrained stores the __init__ arguments it finds in the signature: keep the parent's.
    parent = inspect.signature(processor_cls.__init__)
    ImageOnly.__init__.__signature__ = parent.replace(  # type: ignore[attr-defined]
        parameters=[p for name, p in parent.parameters.items() if name != "video_processor"]
    )
    ImageOnly.__name__ = ImageOnly.__qualname__ = f"ImageOnly{processor_cls.__name__}"
    return ImageOnly


def image_only_loader(processor_class: str) -> Callable[[str], Any]:
    """A ``load_processor`` that loads ``transformers.<processor_class>`` without its video part."""

    def load(source: str) -> Any:
        import transformers

        return image_only(getattr(transformers, processor_class)).from_pretrained(source)

    return load
