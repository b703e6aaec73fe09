"""The building blocks of every config section: a strict base model and checked number types."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
NonNegativeFloat = Annotated[float, Field(ge=0)]
Units = Annotated[list[PositiveInt], Field(min_length=1)]


class Strict(BaseModel):
    """A config section, validated strictly.

    No silent coercion ("4" is not an int, 4.0 is not an int), an unknown key is an error, and
    a loaded section never changes.
    """

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)
