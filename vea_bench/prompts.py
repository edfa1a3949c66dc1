"""The paper's instruction texts, built from a label space (never empty: the reference's builder
forgot its `return` and sent an empty prompt)."""
from __future__ import annotations

from vea_bench.labels import LabelSpace

SYSTEM_MESSAGE = "You are an AI visual assistant, and you are seeing a single image."

CONVERSATION_INSTRUCTION = "Observe the image and describe key elements of the image."
REASONING_INSTRUCTION = "Observe the image and describe the process of inferring the emotions conveyed in the image."


def categorical_instruction(space: LabelSpace) -> str:
    """Stage-1 categorical question for this label space, in the paper's wording and answer form."""
    n = space.num_classes
    return (
        f"Observe the image and select the emotion category that best matches this image from the "
        f"following {n} categories: {space.prose_list()}. "
        f"Answer in dictionary form as follows: {{'emotion':'{space.labels[0]}'}}"
    )


def categorical_answer(label: str) -> str:
    """The target answer string for a label, as in the paper's example response."""
    return f"{{'emotion': '{label}'}}"


IMAGE_POSITIONS: tuple[str, ...] = ("first", "last")
"""Where the image goes in the user turn: "first" (ours, Qwen2-VL's own examples) or "last" (the
reference puts the question text before the image)."""


def check_image_position(position: str) -> str:
    """``position`` if it is one of `IMAGE_POSITIONS`; a one-line error otherwise."""
    from vea_bench.errors import ConfigError

    if position not in IMAGE_POSITIONS:
        raise ConfigError(f"image position '{position}' is not one of {', '.join(IMAGE_POSITIONS)}")
    return position


def user_content(question: str, image: object | None = None, *, with_image: bool = True,
                 image_position: str = "first") -> list[dict[str, object]]:
    """The user turn's content parts: the question and (``with_image``) the image, in the given order.

    ``image`` is the PIL image where the processor's template wants it inline (training), None
    for a bare placeholder (extraction renders the text first and passes images separately).
    """
    text: dict[str, object] = {"type": "text", "text": question}
    if not with_image:
        return [text]
    img: dict[str, object] = {"type": "image"} if image is None else {"type": "image", "image": image}
    return [img, text] if check_image_position(image_position) == "first" else [text, img]
