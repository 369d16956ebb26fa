"""API models: the single source of the FineTuneJob CRD and the trainer config."""

from .job import API_VERSION, GROUP, KIND, PLURAL, VERSION, FineTuneJob, ObjectMeta
from .spec import FineTuneJobSpec
from .status import Condition, FineTuneJobStatus

__all__ = [
    "API_VERSION", "GROUP", "KIND", "PLURAL", "VERSION", "Condition", "FineTuneJob",
    "FineTuneJobSpec", "FineTuneJobStatus", "ObjectMeta",
]
