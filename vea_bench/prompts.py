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
